//! The pooler process: the state every client task shares ([`Shared`]: config, server list,
//! pools, cancel keys, counters, shutdown), the multi-threaded tokio runtime, listeners and
//! signal handling. `pgha pooler` calls [`main`].

use crate::auth::Credentials;
use crate::cancel::CancelRegistry;
use crate::config::PoolerConfig;
use crate::listener::{ListenError, Listeners};
use crate::pool::Registry;
use crate::shutdown::{self, Shutdown};
use crate::stats::GlobalStats;
use crate::topology::{StaticTopology, Topology};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum PoolerError {
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error(transparent)]
    AuthFile(crate::auth::UserlistError),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
}

/// What every client task reads.
pub struct Shared {
    config: RwLock<Arc<PoolerConfig>>,
    topology: RwLock<Arc<dyn Topology>>,
    credentials: RwLock<Arc<Credentials>>,
    pub config_path: Option<PathBuf>,
    pub pools: Registry,
    pub cancels: CancelRegistry,
    pub stats: GlobalStats,
    pub shutdown: Shutdown,
    pub started: Instant,
}

impl Shared {
    pub fn new(config: PoolerConfig, config_path: Option<PathBuf>) -> Result<Shared, PoolerError> {
        let credentials = Credentials::from_config(&config, None).map_err(PoolerError::AuthFile)?;
        Ok(Shared {
            topology: RwLock::new(Arc::new(StaticTopology::from_config(&config))),
            config: RwLock::new(Arc::new(config)),
            credentials: RwLock::new(Arc::new(credentials)),
            config_path,
            pools: Registry::default(),
            cancels: CancelRegistry::default(),
            stats: GlobalStats::default(),
            shutdown: Shutdown::default(),
            started: Instant::now(),
        })
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn topology(&self) -> Arc<dyn Topology> {
        self.topology.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the server list (a DCS feed calls this when the primary moves).
    pub fn set_topology(&self, topology: Arc<dyn Topology>) {
        *self.topology.write().unwrap_or_else(|p| p.into_inner()) = topology;
    }

    /// RELOAD: the new configuration, server list and auth file take effect for new clients
    /// and checkouts; connected clients stay.
    pub fn reload(&self, config: PoolerConfig) -> Result<(), PoolerError> {
        let credentials = Credentials::from_config(&config, None).map_err(PoolerError::AuthFile)?;
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(credentials);
        self.set_topology(Arc::new(StaticTopology::from_config(&config)));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `pgha pooler`: builds a runtime with one worker per core and serves until SIGTERM (drain)
/// or SIGINT (now).
pub fn main(config: PoolerConfig, config_path: &Path) -> Result<(), PoolerError> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .map_err(PoolerError::Runtime)?;
    runtime.block_on(async {
        let shared = Arc::new(Shared::new(config, Some(config_path.to_owned()))?);
        run(shared, shutdown::signal()).await
    })
}

/// Serves until `stop` resolves, then drains.
pub async fn run(
    shared: Arc<Shared>,
    stop: impl std::future::Future<Output = shutdown::Signal>,
) -> Result<(), PoolerError> {
    let config = shared.config();
    let listeners = Listeners::bind(&config.listen_addr, config.listen_port, &config.unix_socket_dir).await?;
    tracing::info!(
        listen = %format!("{}:{}", config.listen_addr, config.listen_port),
        unix_socket_dir = %config.unix_socket_dir,
        pool_mode = ?config.pool_mode,
        "pooler listening"
    );
    let serving = tokio::spawn(listeners.serve(shared.clone()));
    tokio::pin!(stop);
    let mut signal = tokio::select! {
        s = &mut stop => s,
        s = shared.shutdown.requested() => s,
    };
    if signal == shutdown::Signal::WaitForClients {
        tracing::info!("SHUTDOWN WAIT_FOR_CLIENTS: refusing new clients until the connected ones have left");
        let pool_clients = || shared.pools.all().iter().map(|p| p.stats.clients.load(Ordering::Relaxed)).sum::<u32>();
        while pool_clients() > 0 {
            tokio::select! {
                s = &mut stop => { signal = s; break; }
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    tracing::info!(?signal, "pooler stopping: no new connections");
    shared.shutdown.begin();
    let _ = serving.await;
    if signal == shutdown::Signal::Graceful {
        let deadline = Instant::now() + shutdown::DRAIN_TIMEOUT;
        while shared.stats.client_connections.load(Ordering::Relaxed) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = shared.stats.client_connections.load(Ordering::Relaxed);
        if left > 0 {
            tracing::warn!(clients = left, "drain timeout: closing clients still in a transaction");
        }
    }
    tracing::info!("pooler stopped");
    Ok(())
}
