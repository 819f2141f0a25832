//! Turning a DCS snapshot into the decision engine's `ClusterView`, and this node's status into
//! its Patroni-compatible member key value. Unparseable member values are skipped and logged,
//! never fatal.

use crate::ha::{ClusterView, FailoverRequest, Lsn, MemberView, Role};
use consensus::dcs::{ClusterKey, ClusterSnapshot};
use serde_json::{json, Value};

/// A member as published in `members/<name>`, with the addresses the agent needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberAddress {
    pub name: String,
    /// host:port of its PostgreSQL, from conn_url.
    pub postgres: Option<String>,
    pub api_url: Option<String>,
}

fn parse_json(bytes: &[u8]) -> Option<Value> {
    serde_json::from_slice(bytes).ok()
}

/// `postgres://host:port/db` -> `host:port`.
pub fn host_port(conn_url: &str) -> Option<String> {
    let rest = conn_url.split("://").nth(1)?;
    let rest = rest.rsplit('@').next()?;
    Some(rest.split('/').next()?.to_string()).filter(|s| !s.is_empty())
}

/// Builds the engine's view of the cluster from a snapshot.
pub fn view_from_snapshot(snap: &ClusterSnapshot) -> (ClusterView, Vec<MemberAddress>) {
    let mut view = ClusterView { reachable: true, ..ClusterView::default() };
    let mut addresses = Vec::new();
    view.initialized = snap
        .get(&ClusterKey::Initialize)
        .and_then(|kv| std::str::from_utf8(&kv.value).ok().and_then(|s| s.trim().parse::<u64>().ok()));
    view.leader = snap.leader();
    for kv in &snap.keys {
        let Some(name) = kv.key.strip_prefix("members/") else { continue };
        let Some(v) = parse_json(&kv.value) else {
            tracing::warn!(member = name, "member key is not valid JSON; ignoring it");
            continue;
        };
        let tags = v.get("tags").cloned().unwrap_or(Value::Null);
        view.members.push(MemberView {
            name: name.to_string(),
            role: match v.get("role").and_then(Value::as_str) {
                Some("primary") | Some("master") => Role::Primary,
                Some("replica") | Some("standby_leader") => Role::Replica,
                _ => Role::Unknown,
            },
            running: v.get("state").and_then(Value::as_str) == Some("running"),
            timeline: v.get("timeline").and_then(Value::as_u64).map(|t| t as u32),
            wal_position: v.get("xlog_location").and_then(Value::as_u64).map(Lsn),
            nofailover: tags.get("nofailover").and_then(Value::as_bool).unwrap_or(false),
            failover_priority: tags.get("failover_priority").and_then(Value::as_i64).unwrap_or(1) as i32,
        });
        addresses.push(MemberAddress {
            name: name.to_string(),
            postgres: v.get("conn_url").and_then(Value::as_str).and_then(host_port),
            api_url: v.get("api_url").and_then(Value::as_str).map(str::to_string),
        });
    }
    if let Some(status) = snap.get(&ClusterKey::Status).and_then(|kv| parse_json(&kv.value)) {
        view.leader_lsn = status.get("optime").and_then(Value::as_u64).map(Lsn);
        view.leader_timeline = status.get("timeline").and_then(Value::as_u64).map(|t| t as u32);
    }
    if let Some(f) = snap.get(&ClusterKey::Failover).and_then(|kv| parse_json(&kv.value)) {
        let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
        // A scheduled switchover waits until its time; pgha does not run scheduled ones yet, so it
        // is left pending rather than run early.
        if s("scheduled_at").is_none() {
            view.failover =
                Some(FailoverRequest { leader: s("leader"), candidate: s("member").or_else(|| s("candidate")) });
        }
    }
    if let Some(c) = snap.get(&ClusterKey::Config).and_then(|kv| parse_json(&kv.value)) {
        view.paused = c.get("pause").and_then(Value::as_bool).unwrap_or(false);
    }
    (view, addresses)
}

/// The `members/<name>` value, with Patroni's field names.
#[allow(clippy::too_many_arguments)]
pub fn member_value(
    conn_addr: &str,
    api_addr: &str,
    running: bool,
    role: &str,
    position: Option<Lsn>,
    timeline: Option<u32>,
    tags: &crate::config::TagsConfig,
) -> Vec<u8> {
    let mut t = serde_json::Map::new();
    if tags.nofailover {
        t.insert("nofailover".into(), json!(true));
    }
    if tags.noloadbalance {
        t.insert("noloadbalance".into(), json!(true));
    }
    if tags.nosync {
        t.insert("nosync".into(), json!(true));
    }
    if tags.clonefrom {
        t.insert("clonefrom".into(), json!(true));
    }
    if let Some(p) = tags.failover_priority {
        t.insert("failover_priority".into(), json!(p));
    }
    let mut v = json!({
        "conn_url": format!("postgres://{conn_addr}/postgres"),
        "api_url": format!("http://{api_addr}/patroni"),
        "state": if running { "running" } else { "stopped" },
        "role": role,
        "version": concat!("pgha ", env!("CARGO_PKG_VERSION")),
    });
    if let Some(p) = position {
        v["xlog_location"] = json!(p.0);
    }
    if let Some(tl) = timeline {
        v["timeline"] = json!(tl);
    }
    if !t.is_empty() {
        v["tags"] = Value::Object(t);
    }
    serde_json::to_vec(&v).unwrap_or_default()
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
        assert_eq!(view.failover.as_ref().and_then(|f| f.candidate.as_deref()), Some("pg2"));
        assert_eq!(addrs[1].postgres.as_deref(), Some("10.0.0.2:5432"));
    }

    #[test]
    fn member_value_round_trips_through_the_view() {
        let tags = crate::config::TagsConfig { nofailover: true, ..Default::default() };
        let value = member_value("127.0.0.1:5433", "127.0.0.1:8009", true, "replica", Some(Lsn(77)), Some(2), &tags);
        let snap = ClusterSnapshot { revision: 1, keys: vec![kv("members/n2", std::str::from_utf8(&value).unwrap())] };
        let (view, addrs) = view_from_snapshot(&snap);
        assert_eq!(view.members[0].wal_position, Some(Lsn(77)));
        assert_eq!(view.members[0].timeline, Some(2));
        assert!(view.members[0].nofailover && view.members[0].running);
        assert_eq!(addrs[0].postgres.as_deref(), Some("127.0.0.1:5433"));
    }
}
