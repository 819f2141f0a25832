//! Turning a DCS snapshot into the decision engine's `ClusterView`, and this node's status into
//! its Patroni-compatible member key value. Unparseable member values are skipped and logged,
//! never fatal.

use crate::api::timestamp::Timestamp;
use crate::ha::{ClusterView, FailoverRequest, Lsn, MemberView, Role, ScheduledAt, SyncKey};
use consensus::cluster::{ClusterView as DcsView, MemberRole, MemberValue, Tags};
use consensus::dcs::ClusterSnapshot;
use std::time::Duration;

/// A member as published in `members/<name>`, with the addresses the agent needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberAddress {
    pub name: String,
    /// host:port of its PostgreSQL, from conn_url.
    pub postgres: Option<String>,
    pub api_url: Option<String>,
}

/// The engine's role for a published member role.
fn role_of(role: Option<&MemberRole>) -> Role {
    match role {
        Some(r) if r.is_primary() => Role::Primary,
        Some(MemberRole::Replica) | Some(MemberRole::StandbyLeader) => Role::Replica,
        _ => Role::Unknown,
    }
}

/// Builds the engine's view of the cluster from a snapshot, through the typed DCS values.
pub fn view_from_snapshot(snap: &ClusterSnapshot) -> (ClusterView, Vec<MemberAddress>) {
    view_from_dcs(&DcsView::from_snapshot(snap), Timestamp::now().0)
}

/// Builds the engine's view from the parsed DCS values at `now` (Unix seconds); unreadable values
/// are logged and left out.
pub fn view_from_dcs(dcs: &DcsView, now: i64) -> (ClusterView, Vec<MemberAddress>) {
    for bad in &dcs.bad_values {
        tracing::warn!(key = %bad.key, error = %bad.error, "unreadable DCS value; ignoring it");
    }
    let mut view = ClusterView { reachable: true, ..ClusterView::default() };
    view.initialized = dcs.system_identifier();
    view.leader = dcs.leader_name().map(str::to_string);
    let mut addresses = Vec::new();
    for (name, m) in &dcs.members {
        let v = &m.value;
        view.members.push(MemberView {
            name: name.clone(),
            role: role_of(v.role.as_ref()),
            running: v.is_running(),
            timeline: v.timeline.and_then(|t| u32::try_from(t).ok()),
            wal_position: v.xlog_location.map(Lsn),
            nofailover: v.tags.nofailover(),
            nosync: v.tags.nosync(),
            failover_priority: i32::try_from(v.tags.failover_priority()).unwrap_or(i32::MAX),
        });
        addresses.push(MemberAddress {
            name: name.clone(),
            postgres: v.conn_url.as_deref().and_then(consensus::cluster::conn_host_port).map(str::to_owned),
            api_url: v.api_url.clone(),
        });
    }
    view.leader_lsn = dcs.last_leader_lsn().map(Lsn);
    view.leader_timeline = dcs
        .status
        .as_ref()
        .and_then(|s| s.value.extra.get("timeline"))
        .and_then(serde_json::Value::as_u64)
        .and_then(|t| u32::try_from(t).ok());
    if let Some(f) = dcs.pending_failover() {
        // A scheduled switchover is handed to the engine once its time has come, with how late it
        // is; one whose time cannot be read (not written by pgha's API, which refuses such times)
        // is never run.
        let scheduled = match f.scheduled_at.as_deref().filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(text) => match Timestamp::parse(text) {
                Ok(at) if at.0 <= now => Ok(Some(ScheduledAt {
                    at: text.to_string(),
                    late_by: Duration::from_secs(u64::try_from(now - at.0).unwrap_or(0)),
                })),
                _ => Err(()),
            },
        };
        if let Ok(scheduled) = scheduled {
            view.failover = Some(FailoverRequest {
                leader: f.leader.clone(),
                candidate: f.candidate.clone(),
                scheduled,
                revision: dcs.failover.as_ref().map_or(0, |v| v.mod_revision),
            });
        }
    }
    view.paused = dcs.dynamic_config().pause();
    view.retain_slots = dcs.status.as_ref().and_then(|s| s.value.retain_slots.clone()).unwrap_or_default();
    view.slot_positions = dcs
        .status
        .as_ref()
        .and_then(|s| s.value.slots.as_ref())
        .map(|slots| slots.iter().map(|(name, lsn)| (name.clone(), Lsn(*lsn))).collect())
        .unwrap_or_default();
    view.sync = dcs.sync.as_ref().map(|s| SyncKey {
        leader: s.value.leader.clone().filter(|l| !l.is_empty()),
        standbys: s.value.voters().into_iter().map(str::to_string).collect(),
        revision: s.mod_revision,
    });
    (view, addresses)
}

/// What a running replica reports besides its position, as Patroni 4 does in its member key:
/// `/cluster` (and `pgha ctl list`) show the replica `streaming` and its receive and replay
/// lag from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReplicaProgress {
    /// pg_last_wal_receive_lsn(): none before the WAL receiver has received anything.
    pub receive_lsn: Option<Lsn>,
    /// pg_last_wal_replay_lsn().
    pub replay_lsn: Lsn,
    /// The WAL receiver streams (pg_stat_wal_receiver.status).
    pub streaming: bool,
}

/// The `members/<name>` value, with Patroni's field names.
#[allow(clippy::too_many_arguments)]
pub fn member_value(
    conn_addr: &str,
    api_base: &str,
    state: &str,
    role: &str,
    position: Option<Lsn>,
    timeline: Option<u32>,
    pending_restart: bool,
    tags: &crate::config::TagsConfig,
    replica: Option<ReplicaProgress>,
) -> Vec<u8> {
    MemberValue {
        receive_lsn: replica.and_then(|r| r.receive_lsn).map(|l| l.0),
        replay_lsn: replica.map(|r| r.replay_lsn.0),
        replication_state: replica.filter(|r| r.streaming).map(|_| "streaming".to_string()),
        conn_url: Some(format!("postgres://{conn_addr}/postgres")),
        api_url: Some(format!("{api_base}/patroni")),
        state: Some(state.to_string()),
        role: Some(MemberRole::from(role.to_string())),
        version: Some(concat!("pgha ", env!("CARGO_PKG_VERSION")).to_string()),
        xlog_location: position.map(|p| p.0),
        timeline: timeline.map(u64::from),
        pending_restart: pending_restart.then_some(true),
        tags: Tags {
            // Patroni writes the boolean tags only when true.
            nofailover: tags.nofailover.then_some(true),
            noloadbalance: tags.noloadbalance.then_some(true),
            nosync: tags.nosync.then_some(true),
            clonefrom: tags.clonefrom.then_some(true),
            failover_priority: tags.failover_priority.map(i64::from),
            ..Tags::default()
        },
        ..MemberValue::default()
    }
    .to_json()
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::kv::KeyValue;

    fn kv(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.as_bytes().to_vec(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn reads_a_patroni_written_cluster() {
        let snap = ClusterSnapshot {
            revision: 9,
            keys: vec![
                kv("initialize", "7340596209946584341"),
                kv("leader", "pg1"),
                kv(
                    "members/pg1",
                    r#"{"conn_url":"postgres://10.0.0.1:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"master","version":"3.0.2","xlog_location":50331808,"timeline":1}"#,
                ),
                kv(
                    "members/pg2",
                    r#"{"conn_url":"postgres://10.0.0.2:5432/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","xlog_location":50331808,"timeline":1,"tags":{"nofailover":true}}"#,
                ),
                kv("members/broken", "not json"),
                kv("status", r#"{"optime":50331808,"slots":{"pg2":50331808}}"#),
                kv("failover", r#"{"leader":"pg1","member":"pg2"}"#),
            ],
        };
        let (view, addrs) = view_from_snapshot(&snap);
        assert_eq!(view.initialized, Some(7340596209946584341));
        assert_eq!(view.leader.as_deref(), Some("pg1"));
        assert_eq!(view.members.len(), 2);
        assert_eq!(view.members[0].role, Role::Primary);
        assert!(view.members[1].nofailover);
        assert_eq!(view.leader_lsn, Some(Lsn(50331808)));
        assert_eq!(view.slot_positions.get("pg2"), Some(&Lsn(50331808)));
        assert_eq!(view.failover.as_ref().and_then(|f| f.candidate.as_deref()), Some("pg2"));
        assert_eq!(addrs[1].postgres.as_deref(), Some("10.0.0.2:5432"));
    }

    #[test]
    fn a_scheduled_switchover_reaches_the_engine_only_when_due() {
        let snap = ClusterSnapshot {
            revision: 1,
            keys: vec![kv("failover", r#"{"leader":"pg1","member":"pg2","scheduled_at":"2030-01-01T00:00:00+00:00"}"#)],
        };
        let at = Timestamp::parse("2030-01-01T00:00:00+00:00").unwrap().0;
        let dcs = DcsView::from_snapshot(&snap);
        assert_eq!(view_from_dcs(&dcs, at - 1).0.failover, None);
        let due = view_from_dcs(&dcs, at).0.failover.unwrap();
        assert_eq!((due.leader.as_deref(), due.candidate.as_deref()), (Some("pg1"), Some("pg2")));
        assert_eq!(due.scheduled.map(|s| s.late_by), Some(Duration::ZERO));
        let late = view_from_dcs(&dcs, at + 20).0.failover.unwrap();
        assert_eq!(
            late.scheduled.map(|s| (s.at, s.late_by)),
            Some(("2030-01-01T00:00:00+00:00".into(), Duration::from_secs(20)))
        );
        let garbled = ClusterSnapshot {
            revision: 1,
            keys: vec![kv("failover", r#"{"leader":"pg1","member":"pg2","scheduled_at":"tomorrow"}"#)],
        };
        assert_eq!(view_from_dcs(&DcsView::from_snapshot(&garbled), i64::MAX).0.failover, None);
    }

    #[test]
    fn member_value_round_trips_through_the_view() {
        let tags = crate::config::TagsConfig { nofailover: true, ..Default::default() };
        let value = member_value(
            "127.0.0.1:5433",
            "https://127.0.0.1:8009",
            "running",
            "replica",
            Some(Lsn(77)),
            Some(2),
            false,
            &tags,
            Some(ReplicaProgress { receive_lsn: Some(Lsn(80)), replay_lsn: Lsn(77), streaming: true }),
        );
        let member: MemberValue = serde_json::from_slice(&value).unwrap();
        assert_eq!((member.receive_lsn, member.replay_lsn), (Some(80), Some(77)));
        assert_eq!(member.replication_state.as_deref(), Some("streaming"));
        assert_eq!(member.api_url.as_deref(), Some("https://127.0.0.1:8009/patroni"));
        let primary = member_value(
            "127.0.0.1:5432",
            "http://127.0.0.1:8008",
            "running",
            "primary",
            None,
            None,
            false,
            &tags,
            None,
        );
        let primary: MemberValue = serde_json::from_slice(&primary).unwrap();
        assert_eq!((primary.receive_lsn, primary.replay_lsn, primary.replication_state), (None, None, None));
        let snap = ClusterSnapshot { revision: 1, keys: vec![kv("members/n2", std::str::from_utf8(&value).unwrap())] };
        let (view, addrs) = view_from_snapshot(&snap);
        assert_eq!(view.members[0].wal_position, Some(Lsn(77)));
        assert_eq!(view.members[0].timeline, Some(2));
        assert!(view.members[0].nofailover && view.members[0].running);
        assert_eq!(addrs[0].postgres.as_deref(), Some("127.0.0.1:5433"));
    }
}
