//! What the decision engine reads: the cluster as the DCS shows it, this node's PostgreSQL, the
//! answers of the other members when a leader race needs them, and the timing configuration.

use super::Lsn;
use std::time::{Duration, Instant};

/// A member's role as its agent published it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    Unknown,
}

/// One member key (alive: its lease has not expired).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub role: Role,
    pub running: bool,
    pub timeline: Option<u32>,
    pub wal_position: Option<Lsn>,
    pub nofailover: bool,
    /// Tagged `nosync`: never made a synchronous standby.
    pub nosync: bool,
    pub failover_priority: i32,
}

/// The `sync` key: the leader that wrote it and the standbys it named synchronous (synchronous
/// mode). Only a named standby has every transaction that leader acknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncKey {
    pub leader: Option<String>,
    pub standbys: Vec<String>,
    /// The key's revision, for a compare-and-set.
    pub revision: i64,
}

/// Whether `standbys` (of a `sync` key) holds `name`, case-insensitively as PostgreSQL and
/// Patroni compare member names.
pub fn is_named(standbys: &[String], name: &str) -> bool {
    standbys.iter().any(|s| s.eq_ignore_ascii_case(name))
}

/// A pending switchover (leader set) or failover (candidate only) from the `failover` key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FailoverRequest {
    pub leader: Option<String>,
    pub candidate: Option<String>,
    /// Set for a scheduled switchover whose time has come.
    pub scheduled: Option<ScheduledAt>,
    /// The `failover` key's revision, to delete exactly this request.
    pub revision: i64,
}

/// When a scheduled switchover was due, and how late it is when this tick reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledAt {
    /// The time as written in the `failover` key.
    pub at: String,
    pub late_by: Duration,
}

impl FailoverRequest {
    /// Patroni's rule: a scheduled action found more than 1.5 x loop_wait after its time is stale
    /// (the loop was held up, or the request sat unseen) and is dropped rather than run late.
    pub fn stale(&self, loop_wait: Duration) -> Option<&ScheduledAt> {
        self.scheduled.as_ref().filter(|s| s.late_by > loop_wait * 3 / 2)
    }
}

/// The cluster as read from the DCS in this tick.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    /// False when the DCS could not be read this tick (the rest is then the last known state).
    pub reachable: bool,
    /// The system identifier in the `initialize` key; None while the cluster is not bootstrapped.
    pub initialized: Option<u64>,
    /// Holder of the leader lock.
    pub leader: Option<String>,
    pub members: Vec<MemberView>,
    /// Timeline and WAL position of the last leader (from the `status` key).
    pub leader_timeline: Option<u32>,
    pub leader_lsn: Option<Lsn>,
    pub failover: Option<FailoverRequest>,
    /// Maintenance mode: no automatic failover.
    pub paused: bool,
    /// The members' slots the last leader kept (`retain_slots` of the `status` key).
    pub retain_slots: Vec<String>,
    /// The primary's positions of its physical slots (`slots` of the `status` key).
    pub slot_positions: std::collections::BTreeMap<String, Lsn>,
    /// The `sync` key, when there is one.
    pub sync: Option<SyncKey>,
}

impl ClusterView {
    pub fn member(&self, name: &str) -> Option<&MemberView> {
        self.members.iter().find(|m| m.name == name)
    }

    /// In synchronous mode, the standbys that alone may take over: those the `sync` key names.
    /// None when any member may (synchronous mode off, no key, or a key naming no standby: the
    /// leader had no synchronous standby, so its transactions were acknowledged without one).
    pub fn sync_standbys(&self, config: &HaConfig) -> Option<&[String]> {
        if !config.synchronous_mode {
            return None;
        }
        self.sync.as_ref().filter(|k| k.leader.is_some() && !k.standbys.is_empty()).map(|k| k.standbys.as_slice())
    }

    /// Whether `name` may take over as synchronous mode stands (always when it does not apply).
    pub fn may_take_over(&self, config: &HaConfig, name: &str) -> bool {
        self.sync_standbys(config).is_none_or(|s| is_named(s, name))
    }
}

/// Where this node's WAL receiver last streamed from (kept by the runtime across ticks, since
/// pg_stat_wal_receiver forgets it when the receiver stops).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamPoint {
    pub timeline: u32,
    pub lsn: Lsn,
}

/// The local PostgreSQL as probed this tick (every probe has a timeout).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgState {
    /// No data directory (or an empty one).
    NoData,
    /// A data directory, no postmaster.
    Stopped,
    /// Running and answering.
    Running { role: Role, timeline: u32, wal_position: Lsn },
    /// A postmaster exists but does not answer probes in time (hung, SIGSTOPped, overloaded).
    Unresponsive,
}

/// Another member's answer to "what is your state" during a leader race (its REST API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerProbe {
    pub name: String,
    /// None when the member did not answer in time.
    pub in_recovery: Option<bool>,
    pub timeline: Option<u32>,
    pub wal_position: Option<Lsn>,
    pub failover_priority: i32,
}

/// Everything about this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalState {
    pub name: String,
    pub postgres: PgState,
    /// System identifier of the local data directory, when there is one.
    pub system_identifier: Option<u64>,
    /// Until when our hold of the leader lock is guaranteed (from the last successful refresh).
    pub lease_valid_until: Option<Instant>,
    /// Whether the last attempt to refresh our leader lock failed for a reason other than loss
    /// (DCS unreachable).
    pub refresh_failed: bool,
    /// Since when PostgreSQL has been down while we hold the lock.
    pub down_since: Option<Instant>,
    pub last_streamed: Option<StreamPoint>,
    /// How long this replica's WAL receiver has not been streaming (None: streaming, or primary).
    pub not_streaming_for: Option<Duration>,
    /// Answers of the other members, once asked during a race.
    pub peer_probes: Option<Vec<PeerProbe>>,
    pub nofailover: bool,
    pub failover_priority: i32,
}

/// Timing and safety settings (Patroni's names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaConfig {
    pub ttl: Duration,
    pub loop_wait: Duration,
    pub retry_timeout: Duration,
    pub maximum_lag_on_failover: u64,
    pub primary_start_timeout: Duration,
    /// How long the primary keeps the replication slot of a member gone from the DCS before
    /// dropping it (Patroni 4's name and default, 30 minutes; 0: at the next tick).
    pub member_slots_ttl: Duration,
    /// Patroni's `synchronous_mode` (dynamic configuration): the primary keeps
    /// `synchronous_node_count` standbys synchronous and names them in the `sync` key; only
    /// those may take over from it.
    pub synchronous_mode: bool,
    pub synchronous_node_count: usize,
    /// `synchronous_mode_strict`: with no standby to name, commits wait for any standby
    /// (synchronous_standby_names = '*') rather than go on without one.
    pub synchronous_mode_strict: bool,
    /// `maximum_lag_on_syncnode` (bytes): a standby whose flushed WAL is further behind is not
    /// kept or made synchronous. None (Patroni's -1): no limit.
    pub maximum_lag_on_syncnode: Option<u64>,
}

impl Default for HaConfig {
    fn default() -> Self {
        HaConfig {
            ttl: Duration::from_secs(6),
            loop_wait: Duration::from_secs(1),
            retry_timeout: Duration::from_secs(2),
            maximum_lag_on_failover: 1 << 20,
            primary_start_timeout: Duration::from_secs(20),
            member_slots_ttl: Duration::from_secs(1800),
            synchronous_mode: false,
            synchronous_node_count: 1,
            synchronous_mode_strict: false,
            maximum_lag_on_syncnode: None,
        }
    }
}

impl HaConfig {
    /// The rule that keeps a partitioned primary from outliving its lease:
    /// `loop_wait + 2 * retry_timeout < ttl`. Returns the broken rule as a sentence.
    pub fn check(&self) -> Result<(), String> {
        if self.loop_wait + self.retry_timeout * 2 >= self.ttl {
            return Err(format!(
                "ttl ({:?}) must be larger than loop_wait + 2 x retry_timeout ({:?} + 2 x {:?}), \
                 or a primary cut off from the DCS could still accept writes after its lock expired",
                self.ttl, self.loop_wait, self.retry_timeout
            ));
        }
        if self.loop_wait.is_zero() {
            return Err("loop_wait must be at least 1 ms".into());
        }
        Ok(())
    }
}
