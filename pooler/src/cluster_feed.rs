//! Follows the cluster through its DCS (`[cluster]`): the member holding the leader lock is where
//! the `cluster_role = "primary"` databases go, the healthy standbys are where the `"replica"`
//! and `"read-only"` ones go. A new primary moves their clients as a RELOAD that changes a host
//! does; while no member holds the lock, or a switchover or failover asked for now is under way,
//! the primary's pools are paused, so new transactions wait instead of failing, until the new
//! primary has promoted. Runs on its own thread and runtime (the DCS clients need tokio's
//! timers, which the relaying runtime does not run); the pools are changed on the relaying
//! runtime.

use crate::config::ClusterSection;
use crate::runtime::Shared;
use crate::topology::{ClusterServers, ServerAddr, Standby};
use consensus::cluster::{ClusterView, MemberRole, MemberValue};
use consensus::dcs::{Dcs, KvDcs};
use std::sync::Arc;
use std::time::Duration;

/// A resync even without a watch event (a watch that ended quietly, a missed event).
const RESYNC: Duration = Duration::from_secs(10);

/// What the feed read last: None before the first read.
type Reading = Option<ClusterServers>;

/// Starts the feed: a thread that reads the DCS, and a task on `relaying` that applies each new
/// reading to `shared` in order (the latest wins if several came meanwhile).
pub fn start(section: ClusterSection, shared: Arc<Shared>, relaying: tokio::runtime::Handle) -> std::io::Result<()> {
    let (readings, mut applied) = tokio::sync::watch::channel::<Reading>(None);
    relaying.spawn(async move {
        while applied.changed().await.is_ok() {
            let reading = applied.borrow_and_update().clone();
            if let Some(servers) = reading {
                shared.follow_cluster(servers);
            }
        }
    });
    std::thread::Builder::new().name("pgha-cluster".into()).spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("cluster feed: cannot start its runtime: {e}; the primary is not followed");
                return;
            }
        };
        runtime.block_on(follow(section, readings));
    })?;
    Ok(())
}

async fn connect(section: &ClusterSection) -> Result<Arc<dyn Dcs>, String> {
    // The member name is only used for writes, which the feed never makes.
    let reader = "pgha-pooler";
    let ttl = Duration::from_secs(30);
    if !section.etcd_endpoints.is_empty() {
        let options = section.etcd_security().options(Default::default());
        let store = consensus::etcd::EtcdStore::connect(&section.etcd_endpoints, options)
            .await
            .map_err(|e| format!("connecting to etcd: {e}"))?;
        return Ok(Arc::new(KvDcs::new(Arc::new(store), &section.namespace, &section.scope, reader, ttl)));
    }
    let secret = consensus::raft::SharedSecret::from_config(
        section.raft_secret.as_deref(),
        section.raft_secret_file.as_deref(),
        ("cluster.raft_secret", "cluster.raft_secret_file"),
    )?;
    let store = consensus::raft_store::RaftStore::new(section.raft_members.clone(), secret, Default::default())
        .map_err(|e| format!("the Raft group: {e}"))?;
    Ok(Arc::new(KvDcs::new(Arc::new(store), &section.namespace, &section.scope, reader, ttl)))
}

/// The primary's address from the leader's member key (`conn_url`), if a member holds the lock.
pub fn primary_of(view: &ClusterView) -> Option<ServerAddr> {
    server_of(view.leader_member()?)
}

/// A member's PostgreSQL address, from its `conn_url`.
fn server_of(member: &MemberValue) -> Option<ServerAddr> {
    let hostport = consensus::cluster::conn_host_port(member.conn_url.as_deref()?)?;
    let (host, port) = consensus::cluster::split_host_port(hostport);
    (!host.is_empty()).then(|| ServerAddr { host: host.to_owned(), port: port.unwrap_or(5432) })
}

/// The standbys that take read-only clients, as Patroni's `/replica` check picks them: a member
/// other than the lock holder, in the replica role, running (Patroni 3.0.4 and later say
/// `streaming` or `in archive recovery`) and not tagged `noloadbalance`; each with how far its
/// replayed position is behind the leader's last one (the databases' `max_replica_lag` leave
/// out those too far behind). In member-name order.
pub fn healthy_standbys(view: &ClusterView) -> Vec<Standby> {
    let leader = view.leader.as_ref().map(|l| l.value.as_str());
    let leader_position =
        view.leader_member().and_then(|m| m.xlog_location).or_else(|| view.status.as_ref()?.value.optime);
    view.members
        .iter()
        .filter(|(name, _)| Some(name.as_str()) != leader)
        .map(|(_, m)| &m.value)
        .filter(|m| m.role == Some(MemberRole::Replica))
        .filter(|m| matches!(m.state.as_deref(), Some("running" | "streaming" | "in archive recovery")))
        .filter(|m| !m.tags.noloadbalance())
        .filter_map(|m| {
            let position = m.replay_lsn.or(m.xlog_location);
            let lag = leader_position.zip(position).map(|(leader, mine)| leader.saturating_sub(mine));
            Some(Standby { addr: server_of(m)?, lag })
        })
        .collect()
}

/// What the cluster's `cluster_role` databases are sent to now.
pub fn servers_of(view: &ClusterView, now: i64) -> ClusterServers {
    ClusterServers { primary: primary_to_use(view, now), replicas: healthy_standbys(view) }
}

/// How long before a scheduled switchover's time the primary's clients are held: the leader
/// acts at its first loop from that second on, and the hold has to come first.
const HOLD_BEFORE_SCHEDULED: Duration = Duration::from_millis(500);

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// When the hold for the `failover` key starts, in ms since the epoch: at once for a switchover
/// or failover asked for now, half a second before the time of a scheduled one; never for a
/// scheduled time that cannot be read (the agents never run such a request).
fn hold_from(view: &ClusterView) -> Option<i64> {
    // An empty key (Patroni writes one after some requests) asks for nothing.
    let failover = view.pending_failover()?;
    match failover.scheduled_at.as_deref().filter(|s| !s.is_empty()) {
        None => Some(i64::MIN),
        Some(text) => {
            let at = consensus::cluster::timestamp::Timestamp::parse(text).ok()?;
            Some(at.0.saturating_mul(1000).saturating_sub(HOLD_BEFORE_SCHEDULED.as_millis() as i64))
        }
    }
}

/// Where the primary's clients go at `now` (ms since the epoch): nowhere (their pools wait)
/// while no member holds the leader lock, or while a switchover or failover is under way (the
/// `failover` key is there until the new primary has promoted; a scheduled one from just before
/// its time); else the primary.
pub fn primary_to_use(view: &ClusterView, now: i64) -> Option<ServerAddr> {
    if hold_from(view).is_some_and(|from| from <= now) {
        return None;
    }
    primary_of(view)
}

/// How long until a scheduled switchover's hold starts, if one is ahead.
fn until_hold(view: &ClusterView, now: i64) -> Option<Duration> {
    let from = hold_from(view)?;
    (from > now).then(|| Duration::from_millis(u64::try_from(from - now).unwrap_or(0)))
}

async fn follow(section: ClusterSection, readings: tokio::sync::watch::Sender<Reading>) {
    let tell = |servers: ClusterServers| {
        readings.send_if_modified(|last| {
            let new = Some(servers);
            let changed = *last != new;
            *last = new;
            changed
        });
    };
    loop {
        let dcs = match connect(&section).await {
            Ok(dcs) => dcs,
            Err(e) => {
                tracing::warn!("cluster feed: {e}; trying again in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        loop {
            let snapshot = match dcs.snapshot().await {
                Ok(s) => s,
                Err(e) => {
                    // The last known primary stays: the DCS being away says nothing about it.
                    tracing::warn!("cluster feed: reading the DCS: {e}; trying again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    break;
                }
            };
            let view = ClusterView::from_snapshot(&snapshot);
            let now = now_ms();
            tell(servers_of(&view, now));
            // A scheduled switchover's hold starts with no DCS event: read again then.
            let wait = until_hold(&view, now).map_or(RESYNC, |until| until.min(RESYNC));
            match dcs.watch(snapshot.revision).await {
                Ok(mut events) => {
                    let _ = tokio::time::timeout(wait, events.recv()).await;
                }
                Err(e) => {
                    tracing::warn!("cluster feed: watching the DCS: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(leader: Option<&str>, conn_url: &str) -> ClusterView {
        let member = format!(r#"{{"conn_url":"{conn_url}","role":"primary","state":"running"}}"#);
        let mut entries: Vec<(&str, &[u8], i64)> = vec![("members/pg1", member.as_bytes(), 1)];
        if let Some(l) = leader {
            entries.push(("leader", l.as_bytes(), 2));
        }
        ClusterView::from_relative_entries(entries)
    }

    #[test]
    fn the_primary_is_the_leaders_conn_url() {
        let at = |host: &str, port| Some(ServerAddr { host: host.into(), port });
        assert_eq!(primary_of(&view(Some("pg1"), "postgres://10.0.0.1:5433/postgres")), at("10.0.0.1", 5433));
        assert_eq!(primary_of(&view(Some("pg1"), "postgresql://db1.example/postgres")), at("db1.example", 5432));
        assert_eq!(primary_of(&view(Some("pg1"), "postgres://[::1]:6432/postgres")), at("::1", 6432));
        assert_eq!(primary_of(&view(Some("pg1"), "postgres://u:p@10.0.0.2:5432/postgres")), at("10.0.0.2", 5432));
        // No lock holder, a leader without a member key, or a URL that is not one: no primary.
        assert_eq!(primary_of(&view(None, "postgres://10.0.0.1:5433/postgres")), None);
        assert_eq!(primary_of(&view(Some("pg2"), "postgres://10.0.0.1:5433/postgres")), None);
        assert_eq!(primary_of(&view(Some("pg1"), "10.0.0.1:5433")), None);
    }

    #[test]
    fn standbys_are_the_running_replicas_that_take_load_and_keep_up() {
        let member = |port: u16, role: &str, state: &str, extra: &str| {
            format!(r#"{{"conn_url":"postgres://10.0.0.1:{port}/postgres","role":"{role}","state":"{state}"{extra}}}"#)
        };
        let members = [
            ("members/pg1", member(5431, "primary", "running", r#","xlog_location":100000"#)),
            ("members/pg2", member(5432, "replica", "running", r#","replay_lsn":99000"#)),
            ("members/pg3", member(5433, "replica", "streaming", r#","xlog_location":50000"#)),
            ("members/pg4", member(5434, "replica", "stopped", "")),
            ("members/pg5", member(5435, "replica", "running", r#","tags":{"noloadbalance":true}"#)),
            ("members/pg6", member(5436, "replica", "creating replica", "")),
            ("members/pg7", member(5437, "replica", "in archive recovery", "")),
            ("members/pg8", r#"{"role":"replica","state":"running"}"#.to_owned()),
        ];
        let mut entries: Vec<(&str, &[u8], i64)> = members.iter().map(|(k, v)| (*k, v.as_bytes(), 1)).collect();
        entries.push(("leader", b"pg1", 2));
        let view = ClusterView::from_relative_entries(entries);
        let standbys = healthy_standbys(&view);
        let ports = |max_lag| standbys.iter().filter(|s| s.keeps_up(max_lag)).map(|s| s.addr.port).collect::<Vec<_>>();
        // Stopped, tagged noloadbalance, being cloned, or without an address: not used.
        assert_eq!(ports(0), vec![5432, 5433, 5437]);
        // 50,000 bytes behind is too far at a 10,000-byte limit; an unknown position is not lag.
        assert_eq!(ports(10_000), vec![5432, 5437]);
        let lags: Vec<Option<u64>> = standbys.iter().map(|s| s.lag).collect();
        assert_eq!(lags, [Some(1_000), Some(50_000), None]);
        let servers = servers_of(&view, now_ms());
        assert_eq!(servers.primary.map(|p| p.port), Some(5431));
        // The lock holder is never a standby, whatever its member key still says.
        let promoting = ClusterView::from_relative_entries(vec![
            ("members/pg2", member(5432, "replica", "running", "").as_bytes(), 1),
            ("leader", &b"pg2"[..], 2),
        ]);
        assert!(healthy_standbys(&promoting).is_empty());
    }

    #[test]
    fn a_switchover_under_way_holds_the_clients_and_a_scheduled_one_from_just_before_its_time() {
        let member = br#"{"conn_url":"postgres://10.0.0.1:5433/postgres","role":"primary"}"#;
        let with = |failover: &[u8]| {
            ClusterView::from_relative_entries(vec![
                ("members/pg1", &member[..], 1),
                ("leader", &b"pg1"[..], 2),
                ("failover", failover, 3),
            ])
        };
        let primary = Some(ServerAddr { host: "10.0.0.1".into(), port: 5433 });
        let now = now_ms();
        assert_eq!(primary_to_use(&with(br#"{"leader":"pg1","member":"pg2"}"#), now), None);
        let later = with(br#"{"leader":"pg1","member":"pg2","scheduled_at":"2099-01-01T00:00:00+00:00"}"#);
        assert_eq!(primary_to_use(&later, now), primary);
        // 2099-01-01T00:00:00Z is 4,070,908,800 s after the epoch: held from half a second before.
        let at = 4_070_908_800_000;
        assert_eq!(until_hold(&later, at - 10_000), Some(Duration::from_millis(9_500)));
        assert_eq!(primary_to_use(&later, at - 501), primary);
        assert_eq!(primary_to_use(&later, at - 500), None);
        assert_eq!(until_hold(&later, at - 500), None);
        // A time the agents cannot read is never run, so it holds nothing.
        let unreadable = with(br#"{"leader":"pg1","member":"pg2","scheduled_at":"tomorrow"}"#);
        assert_eq!((primary_to_use(&unreadable, now), until_hold(&unreadable, now)), (primary.clone(), None));
        assert_eq!(primary_to_use(&with(b""), now), primary);
    }
}
