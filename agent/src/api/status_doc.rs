//! The node status document of `GET /patroni` (also the body of every health check), built from the
//! runtime's `NodeStatus` with Patroni's field names, plus our `last_decision`. Pure formatting.

use super::ApiState;
use crate::status::{NodeRole, NodeStatus, Tags};
use axum::extract::State;
use axum::Json;
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// The version `patroni.version` reports: pgha's own.
pub(crate) const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Seconds since the Unix epoch (0 for a time before it).
pub(crate) fn epoch_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The node's tags as Patroni shows them: flags only when set, `failover_priority` only when it is
/// not the default 1, custom tags as strings.
pub(crate) fn tag_map(tags: &Tags) -> Map<String, Value> {
    let mut m = Map::new();
    for (name, set) in [
        ("nofailover", tags.nofailover),
        ("noloadbalance", tags.noloadbalance),
        ("nosync", tags.nosync),
        ("clonefrom", tags.clonefrom),
    ] {
        if set {
            m.insert(name.into(), Value::Bool(true));
        }
    }
    if tags.failover_priority != 1 {
        m.insert("failover_priority".into(), json!(tags.failover_priority));
    }
    for (k, v) in &tags.custom {
        m.insert(k.clone(), Value::String(v.clone()));
    }
    m
}

/// `streaming` while the replica's WAL receiver streams; Patroni's `replication_state`.
pub(crate) fn replication_state(s: &NodeStatus) -> Option<&'static str> {
    (s.role == NodeRole::Replica && s.pg_running && s.streaming).then_some("streaming")
}

/// The `/patroni` document.
pub(crate) fn node_document(s: &NodeStatus) -> Value {
    let mut d = Map::new();
    d.insert("state".into(), json!(s.state.0));
    if let Some(t) = &s.postmaster_start_time {
        d.insert("postmaster_start_time".into(), json!(t));
    }
    d.insert("role".into(), json!(s.role.as_str()));
    if let Some(v) = s.server_version {
        d.insert("server_version".into(), json!(v));
    }
    match s.role {
        NodeRole::Primary => {
            if let Some(p) = s.wal_position {
                d.insert("xlog".into(), json!({ "location": p.0 }));
            }
        }
        NodeRole::Replica => {
            let received = s.received_position.or(s.replayed_position).map(|p| p.0);
            d.insert(
                "xlog".into(),
                json!({
                    "received_location": received,
                    "replayed_location": s.replayed_position.map(|p| p.0),
                    "replayed_timestamp": s.replayed_xact_ms.map(timestamp_ms),
                    "paused": s.replay_paused,
                }),
            );
        }
        NodeRole::Unknown => {}
    }
    if let Some(tl) = s.timeline {
        d.insert("timeline".into(), json!(tl));
    }
    if let Some(state) = replication_state(s) {
        d.insert("replication_state".into(), json!(state));
    }
    if !s.replication.is_empty() {
        let rows: Vec<Value> = s
            .replication
            .iter()
            .map(|r| {
                json!({
                    "usename": r.usename,
                    "application_name": r.application_name,
                    "client_addr": r.client_addr,
                    "state": r.state,
                    "sync_state": r.sync_state,
                    "sync_priority": r.sync_priority,
                })
            })
            .collect();
        d.insert("replication".into(), Value::Array(rows));
    }
    if s.paused {
        d.insert("pause".into(), json!(true));
    }
    d.insert("cluster_unlocked".into(), json!(s.leader.is_none()));
    if let Some(seen) = s.dcs_last_seen {
        d.insert("dcs_last_seen".into(), json!(epoch_secs(seen)));
    }
    let tags = tag_map(&s.tags);
    if !tags.is_empty() {
        d.insert("tags".into(), Value::Object(tags));
    }
    if let Some(id) = s.system_identifier {
        d.insert("database_system_identifier".into(), json!(id.to_string()));
    }
    if s.pending_restart {
        d.insert("pending_restart".into(), json!(true));
    }
    d.insert("patroni".into(), json!({ "version": VERSION, "scope": s.scope, "name": s.name }));
    d.insert("last_decision".into(), json!(s.last_decision));
    if let Some(b) = &s.backup {
        d.insert("backup".into(), json!({ "type": b.kind, "state": b.state, "detail": b.detail }));
    }
    if let Some(r) = &s.restore {
        d.insert(
            "restore".into(),
            json!({
                "target": r.target,
                "state": r.state,
                "detail": r.detail,
                "data_before_restore": r.data_before_restore,
            }),
        );
    }
    Value::Object(d)
}

/// Milliseconds since the epoch as Patroni prints a replay timestamp (`2026-12-06
/// 23:09:31.646+00:00`).
fn timestamp_ms(ms: i64) -> String {
    let (y, mo, d, h, mi, s) = super::timestamp::Timestamp(ms.div_euclid(1000)).utc();
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{:03}+00:00", ms.rem_euclid(1000))
}

/// `GET /patroni`: always 200 with the node status.
pub(crate) async fn get_patroni(State(state): State<ApiState>) -> Json<Value> {
    Json(node_document(&state.node()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ha::Lsn;
    use crate::status::{PgRunState, ReplicationRow};
    use std::time::Duration;

    #[test]
    fn primary_document_has_patroni_field_names() {
        let mut s = NodeStatus::starting("pg1", "demo");
        s.role = NodeRole::Primary;
        s.state = PgRunState("running".into());
        s.pg_running = true;
        s.server_version = Some(150004);
        s.timeline = Some(3);
        s.wal_position = Some(Lsn(67395656));
        s.system_identifier = Some(7268616322854375442);
        s.leader = Some("pg1".into());
        s.dcs_last_seen = Some(UNIX_EPOCH + Duration::from_secs(1692356718));
        s.tags.clonefrom = true;
        s.tags.failover_priority = 1;
        s.replication.push(ReplicationRow {
            usename: "replicator".into(),
            application_name: "pg2".into(),
            client_addr: Some("10.0.0.2".into()),
            state: "streaming".into(),
            sync_state: "async".into(),
            sync_priority: 0,
            flush: None,
        });
        let d = node_document(&s);
        assert_eq!(d["state"], "running");
        assert_eq!(d["role"], "primary");
        assert_eq!(d["server_version"], 150004);
        assert_eq!(d["xlog"], json!({ "location": 67395656 }));
        assert_eq!(d["timeline"], 3);
        assert_eq!(d["replication"][0]["application_name"], "pg2");
        assert_eq!(d["cluster_unlocked"], false);
        assert_eq!(d["dcs_last_seen"], 1692356718);
        assert_eq!(d["tags"], json!({ "clonefrom": true }));
        assert_eq!(d["database_system_identifier"], "7268616322854375442");
        assert_eq!(d["patroni"]["scope"], "demo");
        assert_eq!(d["patroni"]["name"], "pg1");
        assert!(d.get("pause").is_none() && d.get("pending_restart").is_none());
        assert!(d["last_decision"].is_string());
    }

    #[test]
    fn replica_document_shows_received_and_replayed_positions() {
        let mut s = NodeStatus::starting("pg2", "demo");
        s.role = NodeRole::Replica;
        s.pg_running = true;
        s.streaming = true;
        s.received_position = Some(Lsn(200));
        s.replayed_position = Some(Lsn(150));
        s.paused = true;
        s.pending_restart = true;
        let d = node_document(&s);
        assert_eq!(
            d["xlog"],
            json!({ "received_location": 200, "replayed_location": 150, "replayed_timestamp": null, "paused": false })
        );
        s.replayed_xact_ms = Some(1_765_062_571_646);
        assert_eq!(node_document(&s)["xlog"]["replayed_timestamp"], "2025-12-06 23:09:31.646+00:00");
        assert_eq!(d["replication_state"], "streaming");
        assert_eq!(d["cluster_unlocked"], true);
        assert_eq!(d["pause"], true);
        assert_eq!(d["pending_restart"], true);
    }
}
