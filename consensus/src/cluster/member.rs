//! The `members/<name>` value: what each node publishes about its PostgreSQL every loop
//! (addresses, state, role, WAL position, timeline, tags), with Patroni's field names.

use super::{json, lenient, object, text, to_bytes, ValueError};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// PostgreSQL's role as a member publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum MemberRole {
    Primary,
    /// Patroni before 3.0 wrote `master`.
    Master,
    StandbyLeader,
    Replica,
    Demoted,
    Uninitialized,
    Promoted,
    Other(String),
}

impl MemberRole {
    pub fn is_primary(&self) -> bool {
        matches!(self, MemberRole::Primary | MemberRole::Master)
    }
}

impl From<String> for MemberRole {
    fn from(s: String) -> Self {
        match s.as_str() {
            "primary" => MemberRole::Primary,
            "master" => MemberRole::Master,
            "standby_leader" => MemberRole::StandbyLeader,
            "replica" => MemberRole::Replica,
            "demoted" => MemberRole::Demoted,
            "uninitialized" => MemberRole::Uninitialized,
            "promoted" => MemberRole::Promoted,
            _ => MemberRole::Other(s),
        }
    }
}

impl From<MemberRole> for String {
    fn from(r: MemberRole) -> String {
        match r {
            MemberRole::Primary => "primary".into(),
            MemberRole::Master => "master".into(),
            MemberRole::StandbyLeader => "standby_leader".into(),
            MemberRole::Replica => "replica".into(),
            MemberRole::Demoted => "demoted".into(),
            MemberRole::Uninitialized => "uninitialized".into(),
            MemberRole::Promoted => "promoted".into(),
            MemberRole::Other(s) => s,
        }
    }
}

/// A member's tags. Patroni writes the boolean tags only when true, except that `nofailover`
/// (`nosync`) is also written when `failover_priority` (`sync_priority`) is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub nofailover: Option<bool>,
    #[serde(default, deserialize_with = "lenient::int", skip_serializing_if = "Option::is_none")]
    pub failover_priority: Option<i64>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub clonefrom: Option<bool>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub noloadbalance: Option<bool>,
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub replicatefrom: Option<String>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub nosync: Option<bool>,
    #[serde(default, deserialize_with = "lenient::int", skip_serializing_if = "Option::is_none")]
    pub sync_priority: Option<i64>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub nostream: Option<bool>,
    /// Custom tags (usable as `/replica?key=value` filters).
    #[serde(flatten)]
    pub custom: BTreeMap<String, Value>,
}

impl Tags {
    pub fn is_empty(&self) -> bool {
        *self == Tags::default()
    }
    /// Patroni's rule: an explicit `nofailover` wins, else a `failover_priority` <= 0 means no.
    pub fn nofailover(&self) -> bool {
        self.nofailover.unwrap_or_else(|| self.failover_priority.is_some_and(|p| p <= 0))
    }
    /// 0 when `nofailover`, else `failover_priority`, default 1.
    pub fn failover_priority(&self) -> i64 {
        if self.nofailover == Some(true) {
            0
        } else {
            self.failover_priority.unwrap_or(1)
        }
    }
    pub fn nosync(&self) -> bool {
        self.nosync.unwrap_or_else(|| self.sync_priority.is_some_and(|p| p <= 0))
    }
    pub fn sync_priority(&self) -> i64 {
        if self.nosync == Some(true) {
            0
        } else {
            self.sync_priority.unwrap_or(1)
        }
    }
    pub fn noloadbalance(&self) -> bool {
        self.noloadbalance.unwrap_or(false)
    }
    pub fn clonefrom(&self) -> bool {
        self.clonefrom.unwrap_or(false)
    }
    pub fn nostream(&self) -> bool {
        self.nostream.unwrap_or(false)
    }
}

/// The value of `members/<name>`, as Patroni's `Ha.touch_member` writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemberValue {
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub conn_url: Option<String>,
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub api_url: Option<String>,
    /// `running`, `stopped`, `starting`, `crashed`, `creating replica`, ...
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub role: Option<MemberRole>,
    /// The software version (Patroni writes its own, e.g. `4.0.4`).
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// WAL position in bytes: the primary's write position, a replica's received/replayed one.
    #[serde(default, deserialize_with = "lenient::uint", skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, deserialize_with = "lenient::uint", skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, deserialize_with = "lenient::uint", skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    /// A replica's WAL receiver state, e.g. `streaming`.
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, deserialize_with = "lenient::uint", skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u64>,
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub proxy_url: Option<String>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub pending_restart: Option<bool>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub checkpoint_after_promote: Option<bool>,
    #[serde(default, deserialize_with = "lenient::flag", skip_serializing_if = "Option::is_none")]
    pub pause: Option<bool>,
    #[serde(default, deserialize_with = "tags_or_empty", skip_serializing_if = "Tags::is_empty")]
    pub tags: Tags,
    /// Fields we do not interpret (`pending_restart_reason`, `scheduled_restart`, ...), kept.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `postgres://[user[:password]@]host:port/db?...` -> `host:port` as written; None without a
/// scheme or a host.
pub fn conn_host_port(conn_url: &str) -> Option<&str> {
    let rest = conn_url.split_once("://")?.1;
    let rest = rest.rsplit('@').next()?;
    rest.split(['/', '?']).next().filter(|hp| !hp.is_empty())
}

/// `host:port` -> (host, port), the brackets of an IPv6 literal removed; no port when there is
/// none (or it is not a number).
pub fn split_host_port(hp: &str) -> (&str, Option<u16>) {
    match hp.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
            (host.trim_start_matches('[').trim_end_matches(']'), port.parse().ok())
        }
        _ => (hp, None),
    }
}

fn tags_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Tags, D::Error> {
    Ok(lenient::any(d)?.unwrap_or_default())
}

impl MemberValue {
    /// Reads a member value: a JSON object, or the legacy Governor form
    /// `postgres://user:pw@host:port/db?application_name=<api_url>`.
    pub fn parse(bytes: &[u8]) -> Result<MemberValue, ValueError> {
        let s = text(bytes)?;
        if s.starts_with("postgres") {
            let (conn, query) = s.split_once('?').unwrap_or((s, ""));
            let api = query.split('&').find_map(|kv| kv.strip_prefix("application_name="));
            return Ok(MemberValue {
                conn_url: Some(conn.to_string()),
                api_url: api.map(str::to_string),
                ..MemberValue::default()
            });
        }
        object(json(bytes)?)
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
    pub fn is_running(&self) -> bool {
        self.state.as_deref() == Some("running")
    }
}
