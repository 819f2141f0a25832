//! Follows the cluster through its DCS (`[cluster]`): the member holding the leader lock is where
//! the `cluster_role = "primary"` databases go. A new primary moves their clients as a RELOAD
//! that changes a host does; while no member holds the lock, or a switchover or failover asked
//! for now is under way, their pools are paused, so new transactions wait instead of failing,
//! until the new primary has promoted. Runs on its own thread and runtime (the DCS clients need tokio's timers, which the
//! relaying runtime does not run); the pools are changed on the relaying runtime.

use crate::config::ClusterSection;
use crate::runtime::Shared;
use crate::topology::ServerAddr;
use consensus::cluster::ClusterView;
use consensus::dcs::{Dcs, KvDcs};
use std::sync::Arc;
use std::time::Duration;

/// A resync even without a watch event (a watch that ended quietly, a missed event).
const RESYNC: Duration = Duration::from_secs(10);

/// What the feed read last: None before the first read; then the primary to use, if any.
type Reading = Option<Option<ServerAddr>>;

/// Starts the feed: a thread that reads the DCS, and a task on `relaying` that applies each new
/// reading to `shared` in order (the latest wins if several came meanwhile).
pub fn start(section: ClusterSection, shared: Arc<Shared>, relaying: tokio::runtime::Handle) -> std::io::Result<()> {
    let (readings, mut applied) = tokio::sync::watch::channel::<Reading>(None);
    relaying.spawn(async move {
        while applied.changed().await.is_ok() {
            let reading = applied.borrow_and_update().clone();
            if let Some(primary) = reading {
                shared.follow_cluster(primary);
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
        let store = consensus::etcd::EtcdStore::connect(&section.etcd_endpoints, Default::default())
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
    let hostport = consensus::cluster::conn_host_port(view.leader_member()?.conn_url.as_deref()?)?;
    let (host, port) = consensus::cluster::split_host_port(hostport);
    (!host.is_empty()).then(|| ServerAddr { host: host.to_owned(), port: port.unwrap_or(5432) })
}

/// Where the primary's clients go now: nowhere (their pools wait) while no member holds the
/// leader lock, or while a switchover or failover asked for now is under way (the `failover`
/// key is there until the new primary has promoted); else the primary.
pub fn primary_to_use(view: &ClusterView) -> Option<ServerAddr> {
    let switching = view.failover.as_ref().is_some_and(|f| f.value.scheduled_at.is_none());
    if switching {
        return None;
    }
    primary_of(view)
}

async fn follow(section: ClusterSection, readings: tokio::sync::watch::Sender<Reading>) {
    let tell = |primary: Option<ServerAddr>| {
        readings.send_if_modified(|last| {
            let new = Some(primary);
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
            tell(primary_to_use(&ClusterView::from_snapshot(&snapshot)));
            match dcs.watch(snapshot.revision).await {
                Ok(mut events) => {
                    let _ = tokio::time::timeout(RESYNC, events.recv()).await;
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
    fn a_switchover_under_way_holds_the_clients_and_a_scheduled_one_does_not() {
        let member = br#"{"conn_url":"postgres://10.0.0.1:5433/postgres","role":"primary"}"#;
        let with = |failover: &[u8]| {
            ClusterView::from_relative_entries(vec![
                ("members/pg1", &member[..], 1),
                ("leader", &b"pg1"[..], 2),
                ("failover", failover, 3),
            ])
        };
        assert_eq!(primary_to_use(&with(br#"{"leader":"pg1","member":"pg2"}"#)), None);
        let later = with(br#"{"leader":"pg1","member":"pg2","scheduled_at":"2099-01-01T00:00:00+00:00"}"#);
        assert_eq!(primary_to_use(&later), Some(ServerAddr { host: "10.0.0.1".into(), port: 5433 }));
    }
}
