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
use crate::tls::{ClientTls, ServerTls};
use crate::topology::{ServerAddr, StaticTopology, Topology};
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
    #[error(transparent)]
    HbaFile(#[from] crate::auth::hba::HbaError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("cannot install the SIGTERM/SIGINT/SIGQUIT handlers: {0}")]
    Signals(std::io::Error),
    #[error("cannot serve /metrics: {0}")]
    Metrics(std::io::Error),
    #[error("cannot start the runtime: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Takeover(#[from] crate::takeover::TakeoverError),
    #[error("track_extra_parameters: {0}")]
    TrackExtraParameters(String),
    #[error(
        "cannot create the takeover socket {path}: {source} (check its directory, or set takeover_socket = \"off\")"
    )]
    TakeoverSocket { path: PathBuf, source: std::io::Error },
}

/// What every client task reads.
pub struct Shared {
    config: RwLock<Arc<PoolerConfig>>,
    topology: RwLock<Arc<dyn Topology>>,
    credentials: RwLock<Arc<Credentials>>,
    /// auth_hba_file's rules when auth_type = "hba".
    hba: RwLock<Option<Arc<crate::auth::hba::HbaRules>>>,
    client_tls: RwLock<Arc<ClientTls>>,
    server_tls: RwLock<Arc<ServerTls>>,
    pub config_path: Option<PathBuf>,
    pub pools: Registry,
    /// Idle clients parked without a task.
    pub parking: crate::client::Parking,
    pub cancels: CancelRegistry,
    pub stats: GlobalStats,
    /// auth_user's connections for auth_query, kept between lookups.
    pub auth_connections: Arc<crate::server::auth_query::AuthConnections>,
    pub shutdown: Shutdown,
    /// The listening sockets a `--takeover` successor may ask for.
    pub handover: crate::takeover::Handover,
    pub started: Instant,
    /// client_login_timeout of the logins in progress.
    pub login_deadlines: crate::client::LoginDeadlines,
    /// The io_uring relaying thread (relay_engine = io_uring), once `run` started it.
    pub ring: std::sync::OnceLock<Arc<crate::ring::engine::Engine>>,
    /// `[cluster]`: what the feed said last.
    cluster: std::sync::Mutex<ClusterFollow>,
}

/// The members last read from the cluster's DCS, and the pools paused because their role had
/// none.
#[derive(Default)]
struct ClusterFollow {
    servers: Option<crate::topology::ClusterServers>,
    held: Vec<std::sync::Weak<crate::pool::Pool>>,
}

impl Shared {
    pub fn new(config: PoolerConfig, config_path: Option<PathBuf>) -> Result<Shared, PoolerError> {
        crate::session::track_extra_parameters(&config.track_extra_parameters)
            .map_err(PoolerError::TrackExtraParameters)?;
        let credentials = Credentials::from_config(&config, None).map_err(PoolerError::AuthFile)?;
        let client_tls = ClientTls::from_config(&config)?;
        let server_tls = ServerTls::from_config(&config)?;
        let hba = load_hba(&config)?;
        Ok(Shared {
            hba: RwLock::new(hba),
            client_tls: RwLock::new(Arc::new(client_tls)),
            server_tls: RwLock::new(Arc::new(server_tls)),
            topology: RwLock::new(Arc::new(StaticTopology::from_config(&config))),
            config: RwLock::new(Arc::new(config)),
            credentials: RwLock::new(Arc::new(credentials)),
            config_path,
            pools: Registry::default(),
            parking: Default::default(),
            cancels: CancelRegistry::default(),
            stats: GlobalStats::default(),
            auth_connections: Default::default(),
            shutdown: Shutdown::default(),
            handover: Default::default(),
            started: Instant::now(),
            login_deadlines: Default::default(),
            ring: std::sync::OnceLock::new(),
            cluster: Default::default(),
        })
    }

    pub fn config(&self) -> Arc<PoolerConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// client_login_timeout (None when 0), read without taking a copy of the configuration.
    pub fn login_timeout(&self) -> Option<std::time::Duration> {
        crate::pool::secs(self.config.read().unwrap_or_else(|p| p.into_inner()).client_login_timeout)
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
    pub fn reload(&self, mut config: PoolerConfig) -> Result<(), PoolerError> {
        if !crate::session::tracks_extra_parameters(&config.track_extra_parameters) {
            tracing::warn!(
                "track_extra_parameters changed: it is read at start only, so the list in force stays until the \
                 pooler restarts"
            );
            config.track_extra_parameters = self.config().track_extra_parameters.clone();
        }
        let credentials = Credentials::from_config(&config, None).map_err(PoolerError::AuthFile)?;
        let client_tls = ClientTls::from_config(&config)?;
        let server_tls = ServerTls::from_config(&config)?;
        let hba = load_hba(&config)?;
        *self.hba.write().unwrap_or_else(|p| p.into_inner()) = hba;
        *self.client_tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(client_tls);
        *self.server_tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(server_tls);
        *self.credentials.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(credentials);
        let servers = self.cluster.lock().unwrap_or_else(|p| p.into_inner()).servers.clone();
        self.set_topology(Arc::new(StaticTopology::following(&config, servers.as_ref())));
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
        Ok(())
    }

    /// Every pool takes the settings and server its database's entry has now (RELOAD, SET, a
    /// new primary): connected clients at their next transaction.
    pub fn retarget_pools(&self) {
        let config = self.config();
        let topology = self.topology();
        for pool in self.pools.all() {
            let Some(target) = topology.target(&pool.key.database) else {
                // Gone from pooler.toml (not a cluster database waiting for a member): as
                // PgBouncer, its clients are told and the pool goes.
                if config.cluster_role_of(&pool.key.database).is_none() && pool.orphan() {
                    let clients = self
                        .pools
                        .connections
                        .kill_clients(Some(&pool.key.database), crate::connections::KillReason::DatabaseRemoved);
                    tracing::info!(
                        database = &*pool.key.database,
                        user = &*pool.key.user,
                        clients,
                        "the database was removed from the configuration: its clients are closed, its pool dropped"
                    );
                }
                continue;
            };
            pool.adopt();
            let settings = crate::pool::PoolSettings::new(&config, &target, config.users.get(&*pool.key.user));
            if let Some(old) = pool.update_settings(settings, &target.servers, &target.dbname, self.server_tls()) {
                tracing::info!(
                    database = &*pool.key.database,
                    user = &*pool.key.user,
                    from = %old,
                    to = %crate::topology::ServerList(&target.servers),
                    "the database moved to another server; its clients follow at their next transaction"
                );
            }
        }
    }

    /// The cluster feed's news: the primary (None while no member holds the leader lock, or a
    /// switchover is under way) and the healthy standbys. The databases with a `cluster_role`
    /// go to the members in that role (as a RELOAD that changes their host); a database whose
    /// role has no member now has its pools paused (transactions wait, bounded by
    /// query_wait_timeout) until one is there again.
    pub fn follow_cluster(&self, servers: crate::topology::ClusterServers) {
        let config = self.config();
        let mut cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        let before = cluster.servers.replace(servers.clone());
        if before.as_ref() != Some(&servers) {
            let had_primary = before.as_ref().is_some_and(|b| b.primary.is_some());
            match &servers.primary {
                _ if before.as_ref().map(|b| &b.primary) == Some(&servers.primary) => {}
                Some(primary) => tracing::info!(primary = %primary, "following the cluster's primary"),
                None if had_primary => tracing::warn!(
                    "the cluster has no leader, or a switchover is under way: new transactions on its primary wait"
                ),
                None => tracing::info!("no primary known yet: the cluster has no leader"),
            }
            // The standbys within [cluster] max_replica_lag; their lag itself changes with
            // every reading and is not news.
            let cluster_lag = config.cluster.as_ref().map_or(0, |c| c.max_replica_lag);
            let standbys = |s: &crate::topology::ClusterServers| s.standbys(cluster_lag).cloned().collect::<Vec<_>>();
            let now = standbys(&servers);
            if before.as_ref().map(standbys) != Some(now.clone()) {
                tracing::info!(standbys = %crate::topology::ServerList(&now), "the cluster's healthy standbys");
            }
            // Where each database goes: only a change there moves pools.
            let topology = StaticTopology::following(&config, Some(&servers));
            if routes(&topology) != routes(&*self.topology()) {
                self.set_topology(Arc::new(topology));
                self.retarget_pools();
            }
        }
        // Hold the pools whose role has no member now; let go of those that have one again.
        let topology = self.topology();
        let mut held = Vec::new();
        let mut resumed = 0;
        for weak in std::mem::take(&mut cluster.held) {
            let Some(pool) = weak.upgrade() else { continue };
            if topology.target(&pool.key.database).is_some() {
                pool.resume();
                resumed += 1;
            } else {
                held.push(weak);
            }
        }
        for pool in self.pools.all() {
            let database = &*pool.key.database;
            if config.follows_cluster(database) && topology.target(database).is_none() && !pool.is_paused() {
                pool.pause();
                tracing::warn!(
                    database,
                    user = &*pool.key.user,
                    "no member of the cluster in this database's role: new transactions wait"
                );
                held.push(Arc::downgrade(&pool));
            }
        }
        if resumed > 0 {
            tracing::info!(pools = resumed, "the cluster has members in their role again: waiting transactions go on");
        }
        cluster.held = held;
    }

    /// What the pooler follows of its `[cluster]`, for /metrics: (a primary in use, healthy
    /// standbys, pools held because their role has no member); None before the first reading.
    pub fn cluster_state(&self) -> Option<(bool, usize, usize)> {
        let cluster = self.cluster.lock().unwrap_or_else(|p| p.into_inner());
        let servers = cluster.servers.as_ref()?;
        let held = cluster.held.iter().filter(|w| w.strong_count() > 0).count();
        let cluster_lag = self.config().cluster.as_ref().map_or(0, |c| c.max_replica_lag);
        Some((servers.primary.is_some(), servers.standbys(cluster_lag).count(), held))
    }

    /// client_tls_*: the answer to SSLRequest and whether plain-text clients may stay.
    pub fn client_tls(&self) -> Arc<ClientTls> {
        self.client_tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// server_tls_*: how new server connections are opened.
    pub fn server_tls(&self) -> Arc<ServerTls> {
        self.server_tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// auth_hba_file's rules (None unless auth_type = "hba").
    pub fn hba(&self) -> Option<Arc<crate::auth::hba::HbaRules>> {
        self.hba.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn credentials(&self) -> Arc<Credentials> {
        self.credentials.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Each database's servers, in name order.
fn routes(topology: &dyn Topology) -> Vec<(String, Arc<[ServerAddr]>)> {
    let mut routes: Vec<_> = topology.databases().iter().map(|t| (t.name.clone(), t.servers.clone())).collect();
    routes.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    routes
}

/// auth_hba_file, read when auth_type = "hba" (a broken file stops the start or the RELOAD).
fn load_hba(config: &PoolerConfig) -> Result<Option<Arc<crate::auth::hba::HbaRules>>, PoolerError> {
    match (&config.auth_type, &config.auth_hba_file) {
        (crate::config::AuthType::Hba, Some(path)) => Ok(Some(Arc::new(crate::auth::hba::HbaRules::load(path)?))),
        _ => Ok(None),
    }
}

/// `pgha pooler`: builds the runtime (worker_threads) and serves until SIGTERM or SIGINT
/// (drain, bounded by shutdown_timeout) or SIGQUIT (now). With `takeover`, first asks the
/// pooler running with this config for its listening sockets (`crate::takeover`).
pub fn main(config: PoolerConfig, config_path: &Path, takeover: bool) -> Result<(), PoolerError> {
    let taken = if takeover { take_over(&config)? } else { None };
    let threads = match config.worker_threads {
        0 => default_worker_threads(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
        n => n as usize,
    };
    // One thread: the current-thread scheduler, which skips the work-stealing machinery
    // (no wake-ups of a second worker, no atomics on the run queue).
    let mut builder = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(threads);
        b
    };
    // No time driver: the relaying runtime waits for I/O only, timers are on `crate::clock`.
    crate::clock::init().map_err(PoolerError::Runtime)?;
    let runtime = builder.enable_io().build().map_err(PoolerError::Runtime)?;
    let result = runtime.block_on(async {
        let mut signals = shutdown::Signals::install().map_err(PoolerError::Signals)?;
        let shared = Arc::new(Shared::new(config, Some(config_path.to_owned()))?);
        run(shared, &mut signals, taken).await
    });
    // Client tasks still running after the drain are dropped with their sockets.
    runtime.shutdown_timeout(Duration::from_millis(100));
    result
}

/// `--takeover`: the running pooler's sockets; None (a fresh start, with a warning) when no
/// pooler runs there, as HAProxy's `-x` does, so that one service definition with
/// `--takeover` both starts and replaces the pooler.
fn take_over(config: &PoolerConfig) -> Result<Option<crate::takeover::Taken>, PoolerError> {
    use crate::takeover::TakeoverError;
    let path = crate::takeover::socket_path(config).ok_or(TakeoverError::NoSocket)?;
    match crate::takeover::take_over(&path) {
        Ok(taken) => {
            tracing::info!(old_pid = taken.old_pid, "takeover: got the running pooler's listening sockets");
            Ok(Some(taken))
        }
        Err(TakeoverError::Connect { path, source })
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            tracing::warn!(
                socket = %path.display(),
                "takeover: no pooler runs with this config ({source}); starting without one"
            );
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// worker_threads = 0: half the cores, at least one. The pooler shares its machine with
/// PostgreSQL or the application; on 2 cores one thread (the current-thread scheduler) spent
/// 0.9–1.2 × PgBouncer's CPU per transaction where two spent 1.2–1.3 × (scripts/bench-pooler).
pub fn default_worker_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// Where [`run`] learns that it must stop: [`shutdown::Signals`], or a test's channel.
pub trait StopSource {
    fn next(&mut self) -> impl std::future::Future<Output = shutdown::Signal> + Send;
}

impl StopSource for shutdown::Signals {
    fn next(&mut self) -> impl std::future::Future<Output = shutdown::Signal> + Send {
        shutdown::Signals::next(self)
    }
}

/// log_stats: at the end of each stats_period, one line with the rates and average times of
/// the period over every pool, as PgBouncer writes it.
async fn log_stats(shared: Arc<Shared>) {
    loop {
        let period = crate::pool::secs(shared.config().stats_period).unwrap_or(Duration::from_secs(60));
        crate::clock::sleep(period).await;
        if !shared.config().log_stats || shared.shutdown.is_stopping() {
            continue;
        }
        let rows: Vec<crate::admin::rows::StatsRow> = shared
            .pools
            .all()
            .iter()
            .map(|pool| crate::admin::rows::StatsRow {
                database: String::new(),
                totals: pool.stats.totals(),
                averages: pool.stats.averages(),
            })
            .collect();
        tracing::info!("{}", crate::admin::rows::stats_line(&crate::admin::rows::averages_over(&rows)));
    }
}

/// Serves until `stop` says so, then drains: no new connections, clients leave at their next
/// transaction boundary, until none is left, shutdown_timeout passes, or a second signal.
///
/// `taken`: the sockets of the process this one takes over from; it is told once they are
/// served here.
pub async fn run(
    shared: Arc<Shared>,
    stop: &mut impl StopSource,
    mut taken: Option<crate::takeover::Taken>,
) -> Result<(), PoolerError> {
    let config = shared.config();
    let listeners = Listeners::bind(&config, taken.as_mut(), &shared.handover).await?;
    let mut metrics = crate::metrics::serve(&config.metrics_listen, shared.clone(), taken.as_mut())
        .await
        .map_err(PoolerError::Metrics)?;
    let takeover_listener = match crate::takeover::socket_path(&config) {
        Some(path) => Some(
            crate::takeover::listen(&path, taken.as_mut(), &shared.handover)
                .map_err(|source| PoolerError::TakeoverSocket { path, source })?,
        ),
        None => None,
    };
    tracing::info!(
        listen = %format!("{}:{}", config.listen_addr, config.listen_port),
        unix_socket_dir = %config.unix_socket_dir,
        pool_mode = ?config.pool_mode,
        "pooler listening"
    );
    if let Some(section) = config.cluster.clone() {
        crate::cluster_feed::start(section, shared.clone(), tokio::runtime::Handle::current())
            .map_err(PoolerError::Runtime)?;
        if taken.is_some() {
            // Until its first reading of the DCS this process would refuse the cluster's
            // databases (57P03); the old one goes on accepting meanwhile.
            let deadline = Instant::now() + crate::takeover::CLUSTER_READ_TIMEOUT;
            while shared.cluster_state().is_none() {
                if Instant::now() >= deadline {
                    return Err(crate::takeover::TakeoverError::ClusterNotRead.into());
                }
                crate::clock::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if config.relay_engine == crate::config::RelayEngine::IoUring {
        match crate::ring::engine::Engine::start(tokio::runtime::Handle::current()) {
            Ok(engine) => {
                let _ = shared.ring.set(Arc::new(engine));
            }
            Err(e) => tracing::warn!("relay_engine = io_uring: the kernel refused the ring ({e}); relaying on epoll"),
        }
    }
    let serving = tokio::spawn(listeners.serve(shared.clone()));
    let parked = tokio::spawn(crate::client::serve_parked(shared.clone()));
    tokio::spawn(log_stats(shared.clone()));
    if let Some(listener) = takeover_listener {
        tokio::spawn(crate::takeover::serve(listener, shared.clone()));
    }
    if let Some(taken) = taken {
        let old_pid = taken.old_pid;
        match taken.ready(&shared) {
            Ok(()) => {
                tracing::info!(old_pid, "takeover: serving the listening sockets; the old pooler stops accepting")
            }
            // The old process goes on accepting too: nothing is refused, it just does not stop.
            Err(e) => tracing::error!(
                old_pid,
                "{e}: the old pooler was not told and keeps accepting too; stop it with SIGTERM"
            ),
        }
    }
    let mut signal = tokio::select! {
        s = stop.next() => s,
        // SHUTDOWN on the console.
        s = shared.shutdown.requested() => s,
    };
    if signal == shutdown::Signal::TakenOver {
        // The successor serves /metrics on the same listener now.
        if let Some(metrics) = metrics.take() {
            metrics.abort();
        }
        let new_pid = shared.handover.handed_to().unwrap_or(0);
        tracing::info!(new_pid, "taken over: serving the connected clients until they leave");
    } else if signal == shutdown::Signal::WaitForClients {
        tracing::info!("SHUTDOWN WAIT_FOR_CLIENTS: refusing new clients until the connected ones have left");
    }
    if matches!(signal, shutdown::Signal::WaitForClients | shutdown::Signal::TakenOver) {
        // WAIT_FOR_CLIENTS waits for the pools' clients; after a takeover every accepted
        // connection counts, a login in progress and the console too: none is dropped.
        let left = || match signal {
            shutdown::Signal::TakenOver => shared.stats.client_connections.load(Ordering::Relaxed),
            _ => shared.pools.all().iter().map(|p| p.stats.clients.load(Ordering::Relaxed)).sum::<u32>(),
        };
        while left() > 0 {
            tokio::select! {
                s = stop.next() => { signal = s; break; }
                _ = crate::clock::sleep(Duration::from_millis(20)) => {}
            }
        }
    }
    tracing::info!(?signal, "pooler stopping: no new connections");
    shared.shutdown.begin();
    // After the flag: idle clients are woken by the kill, busy ones see the flag when done.
    shared.pools.connections.kill_idle_clients();
    let _ = serving.await;
    if signal == shutdown::Signal::Graceful {
        let timeout = crate::pool::secs(shared.config().shutdown_timeout);
        let deadline = timeout.map(|t| Instant::now() + t);
        let drained = async {
            while shared.stats.client_connections.load(Ordering::Relaxed) > 0 {
                crate::clock::sleep(Duration::from_millis(20)).await;
            }
        };
        let bounded = async {
            match deadline {
                Some(d) => crate::clock::timeout_at(d.into(), drained).await.is_ok(),
                None => {
                    drained.await;
                    true
                }
            }
        };
        tokio::select! {
            done = bounded => {
                if !done {
                    let left = shared.stats.client_connections.load(Ordering::Relaxed);
                    tracing::warn!(clients = left, "shutdown_timeout: closing clients still in a transaction");
                }
            }
            again = stop.next() => tracing::warn!(signal = ?again, "second signal: closing every client now"),
        }
    }
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    parked.abort();
    if let Some(engine) = shared.ring.get().cloned() {
        // Relays still on the ring thread are dropped there, with their sockets.
        let _ = tokio::task::spawn_blocking(move || engine.stop()).await;
    }
    tracing::info!("pooler stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn worker_threads_default_to_half_the_cores() {
        let picked: Vec<usize> = [1, 2, 3, 4, 8].into_iter().map(super::default_worker_threads).collect();
        assert_eq!(picked, [1, 1, 1, 2, 4]);
    }
}
