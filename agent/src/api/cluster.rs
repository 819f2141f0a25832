//! The cluster-wide read endpoints, answered from one DCS snapshot: `GET /cluster` (members with
//! roles, lag and the leader marked, a scheduled switchover), `GET /history` (timeline history) and
//! `GET /config` (dynamic configuration). Values are read through the typed `consensus::cluster`
//! values; member values that are unreadable are skipped, not fatal.

use super::{ApiError, ApiState};
use crate::ha::Lsn;
use axum::extract::State;
use axum::Json;
use consensus::cluster::{conn_host_port, split_host_port};
use consensus::cluster::{ClusterView as DcsView, DynamicConfig, SynchronousMode};
use consensus::dcs::{ClusterKey, ClusterSnapshot};
use serde_json::{json, Map, Value};

/// The JSON value of `key`, `None` when absent; a value that is not JSON is an error.
pub(crate) fn key_json(snap: &ClusterSnapshot, key: &ClusterKey) -> Result<Option<Value>, ApiError> {
    let Some(kv) = snap.get(key) else { return Ok(None) };
    serde_json::from_slice(&kv.value)
        .map(Some)
        .map_err(|e| ApiError::Corrupt(format!("the DCS key {} does not hold JSON: {e}", key.path())))
}

/// The dynamic configuration (an empty object when the key is absent: every setting at its default).
pub(crate) fn config_of(snap: &ClusterSnapshot) -> Result<Value, ApiError> {
    match snap.get(&ClusterKey::Config) {
        None => Ok(json!({})),
        Some(kv) => DynamicConfig::parse(&kv.value)
            .map(|c| Value::Object(c.0))
            .map_err(|e| ApiError::Corrupt(format!("the DCS key config does not hold a JSON object: {e}"))),
    }
}

/// The `/cluster` document, as Patroni's `cluster_as_json`, from the typed DCS values.
pub(crate) fn cluster_document(snap: &ClusterSnapshot, scope: &str) -> Result<Value, ApiError> {
    let dcs = DcsView::from_snapshot(snap);
    if let Some(bad) = dcs.bad_values.iter().find(|b| b.key == "config") {
        return Err(ApiError::Corrupt(format!("the DCS key config is unreadable: {}", bad.error)));
    }
    for bad in dcs.bad_values.iter().filter(|b| b.key.starts_with("members/")) {
        tracing::warn!(key = %bad.key, error = %bad.error, "unreadable member value; leaving it out of /cluster");
    }
    let leader = dcs.leader_name();
    let config = dcs.dynamic_config();
    let sync_mode = config.synchronous_mode() != SynchronousMode::Off;
    let sync_standbys: Vec<&str> = dcs.sync.as_ref().map(|s| s.value.voters()).unwrap_or_default();
    let cluster_lsn = dcs.last_leader_lsn().or_else(|| dcs.leader_member().and_then(|m| m.xlog_location)).map(Lsn);
    let mut members = Vec::new();
    for (name, m) in &dcs.members {
        let data = &m.value;
        let is_leader = leader == Some(name.as_str());
        let role = if is_leader {
            "leader"
        } else if sync_mode && sync_standbys.contains(&name.as_str()) {
            "sync_standby"
        } else {
            "replica"
        };
        let nonempty = |s: &Option<String>| s.clone().filter(|s| !s.is_empty());
        let state =
            if is_leader { nonempty(&data.state) } else { nonempty(&data.replication_state).or(nonempty(&data.state)) };
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("role".into(), json!(role));
        m.insert("state".into(), json!(state.unwrap_or_default()));
        m.insert("api_url".into(), json!(data.api_url));
        if let Some(hp) = data.conn_url.as_deref().and_then(conn_host_port) {
            let (host, port) = split_host_port(hp);
            m.insert("host".into(), json!(host));
            if let Some(port) = port {
                m.insert("port".into(), json!(port));
            }
        }
        if let Some(tl) = data.timeline {
            m.insert("timeline".into(), json!(tl));
        }
        if let Some(p) = data.pending_restart {
            m.insert("pending_restart".into(), json!(p));
        }
        if let Some(r) = data.extra.get("scheduled_restart") {
            m.insert("scheduled_restart".into(), r.clone());
        }
        if !data.tags.is_empty() {
            m.insert("tags".into(), serde_json::to_value(&data.tags).unwrap_or(Value::Null));
        }
        if !is_leader {
            for (prefix, source) in
                [("receive_", data.receive_lsn), ("replay_", data.replay_lsn), ("", data.xlog_location)]
            {
                let (lsn_key, lag_key) = (format!("{prefix}lsn"), format!("{prefix}lag"));
                match source.map(Lsn) {
                    None => {
                        m.insert(lsn_key, json!("unknown"));
                        m.insert(lag_key, json!("unknown"));
                    }
                    Some(lsn) => {
                        m.insert(lsn_key, json!(lsn.to_string()));
                        m.insert(lag_key, json!(cluster_lsn.map_or(0, |c| lsn.bytes_behind(c))));
                    }
                }
            }
        }
        members.push(Value::Object(m));
    }
    let mut doc = Map::new();
    doc.insert("members".into(), Value::Array(members));
    doc.insert("scope".into(), json!(scope));
    if config.pause() {
        doc.insert("pause".into(), json!(true));
    }
    if let Some(f) = dcs.pending_failover() {
        if let Some(at) = f.scheduled_at.as_deref().filter(|s| !s.is_empty()) {
            let mut s = Map::new();
            s.insert("at".into(), json!(at));
            if let Some(from) = &f.leader {
                s.insert("from".into(), json!(from));
            }
            if let Some(to) = &f.candidate {
                s.insert("to".into(), json!(to));
            }
            doc.insert("scheduled_switchover".into(), Value::Object(s));
        }
    }
    Ok(Value::Object(doc))
}

/// `GET /cluster`.
pub(crate) async fn get_cluster(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot().await?;
    let scope = state.status.borrow().scope.clone();
    Ok(Json(cluster_document(&snap, &scope)?))
}

/// `GET /history`: the `history` key's list of [timeline, lsn, reason, timestamp, new_leader]
/// (an empty list before the first failover).
pub(crate) async fn get_history(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot().await?;
    match key_json(&snap, &ClusterKey::History)? {
        None => Ok(Json(json!([]))),
        Some(v @ Value::Array(_)) => Ok(Json(v)),
        Some(_) => Err(ApiError::Corrupt("the DCS key history does not hold a JSON list".into())),
    }
}

/// `GET /config`: the dynamic configuration.
pub(crate) async fn get_config(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let snap = state.snapshot().await?;
    Ok(Json(config_of(&snap)?))
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
    fn cluster_document_marks_the_leader_and_computes_lag() {
        let snap = ClusterSnapshot {
            revision: 5,
            keys: vec![
                kv("leader", "pg1"),
                kv(
                    "members/pg2",
                    r#"{"conn_url":"postgres://10.0.0.2:5433/postgres","api_url":"http://10.0.0.2:8008/patroni","state":"running","role":"replica","xlog_location":1000,"timeline":2,"tags":{"nofailover":true}}"#,
                ),
                kv(
                    "members/pg1",
                    r#"{"conn_url":"postgres://[::1]:5432/postgres","api_url":"http://10.0.0.1:8008/patroni","state":"running","role":"primary","xlog_location":1500,"timeline":2}"#,
                ),
                kv("members/junk", "not json"),
                kv("status", r#"{"optime":1500}"#),
                kv("config", r#"{"pause":true}"#),
                kv("failover", r#"{"leader":"pg1","member":"pg2","scheduled_at":"2030-01-01T00:00:00+00:00"}"#),
            ],
        };
        let d = cluster_document(&snap, "demo").unwrap();
        let members = d["members"].as_array().unwrap();
        assert_eq!(members.len(), 2);
        assert_eq!(members[0]["name"], "pg1");
        assert_eq!(members[0]["role"], "leader");
        assert_eq!(members[0]["host"], "::1");
        assert_eq!(members[0]["port"], 5432);
        assert!(members[0].get("lag").is_none());
        assert_eq!(members[1]["role"], "replica");
        assert_eq!(members[1]["state"], "running");
        assert_eq!(members[1]["lag"], 500);
        assert_eq!(members[1]["lsn"], "0/3E8");
        assert_eq!(members[1]["replay_lsn"], "unknown");
        assert_eq!(members[1]["tags"]["nofailover"], true);
        assert_eq!(d["scope"], "demo");
        assert_eq!(d["pause"], true);
        assert_eq!(d["scheduled_switchover"], json!({"at": "2030-01-01T00:00:00+00:00", "from": "pg1", "to": "pg2"}));
    }
}
