//! One member of the built-in Raft DCS: the on-disk log, the key-space state machine, the TCP
//! listener shared by peers and DCS clients, the leader's lease task, and the client API that
//! forwards writes to the Raft leader. `RaftMember::start` assembles them; the parts are public so
//! a simulation can drive them over an in-memory network (see `KeyspaceStateMachine`, `Shared`,
//! `lease_task::run`, `MemberApi::serve`).

pub mod lease_task;
mod member_api;
pub mod protocol;
mod routes;
mod state_machine;
mod types;
mod watch_hub;

#[cfg(test)]
mod tests;

pub use member_api::{initial_nodes, MemberApi};
pub use routes::RoutedNetwork;
pub use state_machine::{AppliedState, KeyspaceStateMachine, Shared};
pub use types::{node_id, MemberNode, TypeConfig};
pub use watch_hub::{Poll, WatchHub, HISTORY_EVENTS};

use crate::raft::{serve, LogStore, LogStoreOptions, NetworkConfig, ServerHandle, SharedSecret, TcpNetwork};
use openraft::Raft;
use protocol::MemberStatus;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;

/// Raft timing. Writes stop for about one election timeout when the leader dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
}

impl Default for RaftTiming {
    fn default() -> Self {
        RaftTiming {
            heartbeat: Duration::from_millis(100),
            election_min: Duration::from_millis(300),
            election_max: Duration::from_millis(375),
        }
    }
}

/// Everything a member needs to start.
#[derive(Debug, Clone)]
pub struct RaftMemberConfig {
    /// This member's name: a key of `peers`.
    pub name: String,
    /// Address to bind (may differ from the advertised `peers[name]`, e.g. 0.0.0.0:7204).
    pub listen: String,
    /// Log, vote and snapshot live here.
    pub data_dir: PathBuf,
    /// Every initial member: name -> `host:port` this member reaches it at (its own entry: where
    /// others reach it). These addresses win over those in the replicated membership.
    pub peers: BTreeMap<String, String>,
    pub secret: SharedSecret,
    pub timing: RaftTiming,
    /// Bound on one Raft write or read barrier.
    pub op_timeout: Duration,
    /// A member joining a running group: it does not propose an initial membership and waits
    /// for the group to add it (`RaftStore::join`).
    pub join: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RaftMemberError {
    #[error("raft member {name:?} is not in the peer list ({known}); add it under [dcs.raft.peers]")]
    NotAPeer { name: String, known: String },
    #[error("raft: {0}")]
    Storage(String),
    #[error("raft: cannot listen on {addr}: {source}; is another process using the port?")]
    Listen { addr: String, source: std::io::Error },
    #[error("raft: invalid timing: {0}")]
    Config(String),
    #[error("raft: cannot start: {0}")]
    Start(String),
}

/// A running member; dropping it stops its tasks (call `shutdown` to also stop Raft cleanly).
pub struct RaftMember {
    raft: Raft<TypeConfig>,
    api: Arc<MemberApi>,
    shared: Arc<Shared>,
    server: ServerHandle,
    lease_task: JoinHandle<()>,
}

impl RaftMember {
    /// Opens the member's disk state, binds its listener, joins or initializes the group.
    pub async fn start(config: RaftMemberConfig) -> Result<RaftMember, RaftMemberError> {
        if !config.peers.contains_key(&config.name) {
            let known = config.peers.keys().cloned().collect::<Vec<_>>().join(", ");
            return Err(RaftMemberError::NotAPeer { name: config.name, known });
        }
        let id = node_id(&config.name);
        let shared = Shared::new();
        let (log_dir, sm_dir, sm_shared) = (config.data_dir.join("log"), config.data_dir.join("state"), shared.clone());
        let (log, sm) = tokio::task::spawn_blocking(move || {
            let log = LogStore::<TypeConfig>::open(log_dir, LogStoreOptions::default()).map_err(|e| e.to_string())?;
            let sm = KeyspaceStateMachine::open(&sm_dir, sm_shared)?;
            Ok::<_, String>((log, sm))
        })
        .await
        .map_err(|e| RaftMemberError::Storage(e.to_string()))?
        .map_err(RaftMemberError::Storage)?;

        let ms = |d: Duration| d.as_millis() as u64;
        let raft_config = openraft::Config {
            cluster_name: "pgha".to_string(),
            heartbeat_interval: ms(config.timing.heartbeat),
            election_timeout_min: ms(config.timing.election_min),
            election_timeout_max: ms(config.timing.election_max),
            install_snapshot_timeout: ms(config.op_timeout).max(1000) * 5,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| RaftMemberError::Config(e.to_string()))?;
        let network = NetworkConfig::default();
        let routes: BTreeMap<u64, String> =
            config.peers.iter().map(|(name, addr)| (node_id(name), addr.clone())).collect();
        let transport = RoutedNetwork::new(
            TcpNetwork::<TypeConfig>::new(id, config.secret.clone(), network.clone()),
            routes.clone(),
        );
        let raft = Raft::new(id, Arc::new(raft_config), transport, log, sm)
            .await
            .map_err(|e| RaftMemberError::Start(e.to_string()))?;
        let listener = tokio::net::TcpListener::bind(&config.listen)
            .await
            .map_err(|source| RaftMemberError::Listen { addr: config.listen.clone(), source })?;
        let api = Arc::new(MemberApi::new(
            raft.clone(),
            shared.clone(),
            &config.name,
            config.secret.clone(),
            network.clone(),
            config.op_timeout,
            routes,
        ));
        let server = serve(listener, raft.clone(), config.secret.clone(), network, Some(api.clone()))
            .map_err(|source| RaftMemberError::Listen { addr: config.listen.clone(), source })?;
        // Every member of a fresh group proposes the same initial membership (identical log entry
        // at index 0, so it does not matter who goes first); a member with a log skips this.
        let initialized = raft.is_initialized().await.map_err(|e| RaftMemberError::Start(e.to_string()))?;
        if !initialized && config.join {
            tracing::info!(member = %config.name, "raft: waiting to be added to the running group");
        } else if !initialized {
            match raft.initialize(initial_nodes(&config.peers)).await {
                Ok(()) => {
                    tracing::info!(member = %config.name, peers = config.peers.len(), "raft: initialized a new group")
                }
                Err(e) => tracing::debug!(error = %e, "raft: not initializing (already part of a group)"),
            }
        }
        let lease_task = tokio::spawn(lease_task::run(raft.clone(), shared.clone(), id, config.op_timeout));
        tracing::info!(member = %config.name, listen = %server.local_addr(), "raft member started");
        Ok(RaftMember { raft, api, shared, server, lease_task })
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.server.local_addr()
    }

    pub fn raft(&self) -> &Raft<TypeConfig> {
        &self.raft
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    pub fn status(&self) -> MemberStatus {
        self.api.status()
    }

    /// Stops serving and shuts Raft down.
    pub async fn shutdown(self) {
        self.server.shutdown();
        self.lease_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.raft.shutdown()).await;
    }
}

impl Drop for RaftMember {
    fn drop(&mut self) {
        self.lease_task.abort();
        self.server.shutdown();
    }
}
