//! What the agent knows about its node right now, published by the runtime after every tick and
//! read by the REST API (health checks, /patroni, /metrics). Plain data, cheap to clone.

use crate::ha::Lsn;
use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

/// PostgreSQL's role as the agent last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    Primary,
    Replica,
    /// Not running or not probed yet.
    Unknown,
}

impl NodeRole {
    /// The word Patroni's API uses.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Primary => "primary",
            NodeRole::Replica => "replica",
            NodeRole::Unknown => "uninitialized",
        }
    }
}

/// PostgreSQL's state as Patroni names it (`running`, `stopped`, `starting`, `crashed`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgRunState(pub String);

/// A row of pg_stat_replication (on the primary).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicationRow {
    pub usename: String,
    pub application_name: String,
    /// None for a standby connected over a Unix socket (Patroni shows null).
    pub client_addr: Option<String>,
    pub state: String,
    pub sync_state: String,
    pub sync_priority: i32,
    /// flush_lsn: what synchronous mode checks before naming the standby (not in `/patroni`).
    pub flush: Option<Lsn>,
}

/// Tags from the agent config (Patroni's names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags {
    pub nofailover: bool,
    pub noloadbalance: bool,
    pub nosync: bool,
    pub failover_priority: i32,
    pub clonefrom: bool,
    /// Any other tag, as key = value strings (usable as `/replica?key=value` filters).
    pub custom: BTreeMap<String, String>,
}

/// One node's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeStatus {
    pub name: String,
    pub scope: String,
    pub role: NodeRole,
    pub state: PgRunState,
    /// PostgreSQL answers queries.
    pub pg_running: bool,
    pub server_version: Option<u32>,
    pub system_identifier: Option<u64>,
    pub postmaster_start_time: Option<String>,
    /// The same, in milliseconds since the epoch (`patroni_postmaster_start_time`).
    pub postmaster_start_ms: Option<i64>,
    /// A standby: commit time of the last replayed transaction, milliseconds since the epoch.
    pub replayed_xact_ms: Option<i64>,
    pub timeline: Option<u32>,
    /// Primary: pg_current_wal_lsn().
    pub wal_position: Option<Lsn>,
    /// Replica: pg_last_wal_receive_lsn() / pg_last_wal_replay_lsn().
    pub received_position: Option<Lsn>,
    pub replayed_position: Option<Lsn>,
    pub replay_paused: bool,
    /// Replica: the WAL receiver is in state `streaming`.
    pub streaming: bool,
    /// Primary: its standbys.
    pub replication: Vec<ReplicationRow>,
    /// This node holds the leader lock.
    pub holds_lock: bool,
    /// Synchronous mode is on and the `sync` key names this node (/sync, /async).
    pub sync_standby: bool,
    /// The current leader's name (None: the lock is free).
    pub leader: Option<String>,
    /// The last leader position known in the DCS (for `?lag=` checks).
    pub leader_position: Option<Lsn>,
    pub paused: bool,
    pub pending_restart: bool,
    pub tags: Tags,
    /// When the HA loop last completed a tick (for /liveness).
    pub last_tick: Option<Instant>,
    /// When the DCS last answered (for `dcs_last_seen`).
    pub dcs_last_seen: Option<SystemTime>,
    /// The last decision's reason (`pgha ctl list`, /patroni).
    pub last_decision: String,
    /// HA timing, for /liveness (`ttl` for a primary, `2 x ttl` for a replica).
    pub ttl_secs: u64,
    /// maximum_lag_on_failover, the default lag for /readiness.
    pub maximum_lag_on_failover: u64,
    /// The loop_wait and retry_timeout in effect (milliseconds), for validating PATCH /config.
    pub loop_wait_ms: u64,
    pub retry_timeout_ms: u64,
    /// The last restore of the running cluster this agent carried out as leader (`POST
    /// /restore`), while it runs and after it ended; `/patroni` shows it as `restore`.
    pub restore: Option<RestoreStatus>,
    /// The last base backup this agent took on request (`POST /backup`), while it runs and
    /// after; `/patroni` shows it as `backup`.
    pub backup: Option<BackupStatus>,
}

/// A base backup taken through the agent, as `/patroni` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupStatus {
    /// `full` or `incr`.
    pub kind: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    /// `pgha backup create`'s report, or why it failed.
    pub detail: String,
}

/// A restore of the running cluster to a point in time, as `/patroni` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreStatus {
    /// The recovery target (`target_time 2026-05-01 14:03:27+00`).
    pub target: String,
    /// `archiving` (the WAL written so far goes to the repository; nothing touched yet),
    /// `restoring` (the backup is being copied), `recovering` (PostgreSQL replays WAL to the
    /// target), `done` (promoted there), `failed` (abandoned, or the data directory from before
    /// is back).
    pub state: &'static str,
    /// What happened last, in a sentence.
    pub detail: String,
    /// Where the data directory from before the restore is kept.
    pub data_before_restore: String,
}

impl NodeStatus {
    /// A node that has not run a tick yet.
    pub fn starting(name: &str, scope: &str) -> NodeStatus {
        NodeStatus {
            name: name.to_string(),
            scope: scope.to_string(),
            role: NodeRole::Unknown,
            state: PgRunState("starting".into()),
            pg_running: false,
            server_version: None,
            system_identifier: None,
            postmaster_start_time: None,
            postmaster_start_ms: None,
            replayed_xact_ms: None,
            timeline: None,
            wal_position: None,
            received_position: None,
            replayed_position: None,
            replay_paused: false,
            streaming: false,
            replication: Vec::new(),
            holds_lock: false,
            sync_standby: false,
            leader: None,
            leader_position: None,
            paused: false,
            pending_restart: false,
            tags: Tags::default(),
            last_tick: None,
            dcs_last_seen: None,
            last_decision: "agent starting".into(),
            ttl_secs: 10,
            maximum_lag_on_failover: 1 << 20,
            loop_wait_ms: 1000,
            retry_timeout_ms: 2000,
            restore: None,
            backup: None,
        }
    }

    /// Replication lag in bytes behind the last known leader position (replicas).
    pub fn lag_bytes(&self) -> Option<u64> {
        let mine = self.replayed_position.or(self.received_position)?;
        Some(mine.bytes_behind(self.leader_position?))
    }
}
