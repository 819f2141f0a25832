//! The cluster-wide read endpoints, answered from one DCS snapshot: `GET /cluster` (members with
//! roles, lag and the leader marked, a scheduled switchover), `GET /history` (timeline history) and
//! `GET /config` (dynamic configuration). Member values that are not JSON are skipped, not fatal.

use super::{ApiError, ApiState};
use crate::cluster_view::host_port;
use crate::ha::Lsn;
use axum::extract::State;
use axum::Json;
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
    match key_json(snap, &ClusterKey::Config)? {
        None => Ok(json!({})),
        Some(v @ Value::Object(_)) => Ok(v),
        Some(_) => Err(ApiError::Corrupt("the DCS key config does not hold a JSON object".into())),
    }
}

/// `host:port` -> (host, port), brackets of an IPv6 literal removed.
fn split_host_port(hp: &str) -> (String, Option<u16>) {
    match hp.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host.trim_start_matches('[').trim_end_matches(']').to_string(), port.parse().ok())
        }
        _ => (hp.to_string(), None),
    }
}

/// A member position as Patroni writes it: a number (bytes) or PostgreSQL's `X/Y`.
fn position(v: Option<&Value>) -> Option<Lsn> {
    match v? {
        Value::Number(n) => n.as_u64().map(Lsn),
        Value::String(s) => Lsn::parse(s),
        _ => None,
    }
}

/// The `/cluster` document, as Patroni's `cluster_as_json`.
pub(crate) fn cluster_document(snap: &ClusterSnapshot, scope: &str) -> Result<Value, ApiError> {
    let leader = snap.leader();
    let config = config_of(snap)?;
    let sync_mode = config.get("synchronous_mode").is_some_and(|m| m == &json!(true) || m == "on" || m == "quorum");
    let sync_standbys: Vec<String> = key_json(snap, &ClusterKey::Sync)
        .ok()
        .flatten()
        .and_then(|s| s.get("sync_standby").and_then(Value::as_str).map(str::to_string))
        .map(|s| s.split(',').map(|n| n.trim().to_string()).collect())
        .unwrap_or_default();
    let cluster_lsn =
        key_json(snap, &ClusterKey::Status).ok().flatten().and_then(|s| position(s.get("optime"))).or_else(|| {
            // Patroni's older `leader/optime` layout has no place here; fall back to the leader's own key.
            let name = leader.as_deref()?;
            let kv = snap.get(&ClusterKey::Member(name.to_string()))?;
            position(serde_json::from_slice::<Value>(&kv.value).ok()?.get("xlog_location"))
        });
    let mut members = Vec::new();
    for kv in &snap.keys {
        let Some(name) = kv.key.strip_prefix("members/") else { continue };
        let Ok(data) = serde_json::from_slice::<Value>(&kv.value) else {
            tracing::warn!(member = name, "member key is not valid JSON; leaving it out of /cluster");
            continue;
        };
        let is_leader = leader.as_deref() == Some(name);
        let role = if is_leader {
            "leader"
        } else if sync_mode && sync_standbys.iter().any(|s| s == name) {
            "sync_standby"
        } else {
            "replica"
        };
        let field = |k: &str| data.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
        let state = if is_leader { field("state") } else { field("replication_state").or_else(|| field("state")) };
        let mut m = Map::new();
        m.insert("name".into(), json!(name));
        m.insert("role".into(), json!(role));
        m.insert("state".into(), json!(state.unwrap_or("")));
        m.insert("api_url".into(), data.get("api_url").cloned().unwrap_or(Value::Null));
        if let Some(hp) = field("conn_url").and_then(host_port) {
            let (host, port) = split_host_port(&hp);
            m.insert("host".into(), json!(host));
            if let Some(port) = port {
                m.insert("port".into(), json!(port));
            }
        }
        for k in ["timeline", "pending_restart", "scheduled_restart", "tags"] {
            if let Some(v) = data.get(k) {
                m.insert(k.into(), v.clone());
            }
        }
        if !is_leader {
            for (prefix, source) in [("receive_", "receive_lsn"), ("replay_", "replay_lsn"), ("", "xlog_location")] {
                let (lsn_key, lag_key) = (format!("{prefix}lsn"), format!("{prefix}lag"));
                match position(data.get(source)) {
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
    members.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    let mut doc = Map::new();
    doc.insert("members".into(), Value::Array(members));
    doc.insert("scope".into(), json!(scope));
    if config.get("pause") == Some(&json!(true)) {
        doc.insert("pause".into(), json!(true));
    }
    if let Some(f) = key_json(snap, &ClusterKey::Failover).ok().flatten() {
        if let Some(at) = f.get("scheduled_at").and_then(Value::as_str).filter(|s| !s.is_empty()) {
            let mut s = Map::new();
            s.insert("at".into(), json!(at));
            if let Some(from) = f.get("leader").and_then(Value::as_str) {
                s.insert("from".into(), json!(from));
            }
            if let Some(to) = f.get("member").or_else(|| f.get("candidate")).and_then(Value::as_str) {
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
