//! The `failover` and `sync` values: a requested switchover/failover, and the synchronous
//! standbys that may take over without losing a commit.

use super::{json, lenient, object, text, to_bytes, ValueError};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;

/// The value of `failover`: a pending switchover (`leader` set) or failover to `candidate`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FailoverValue {
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Patroni stores the candidate as `member`; `candidate` (the REST API's word) is accepted.
    #[serde(
        rename = "member",
        alias = "candidate",
        default,
        deserialize_with = "lenient::any",
        skip_serializing_if = "Option::is_none"
    )]
    pub candidate: Option<String>,
    /// ISO 8601 with a time zone, e.g. `2016-01-14T10:09:57.1394+00:00`, kept as written.
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl FailoverValue {
    /// Reads a failover value as Patroni does: empty or `null` is an empty request, and text that
    /// is not JSON is the legacy `leader:candidate` form (unless it is broken JSON: `{...`).
    pub fn parse(bytes: &[u8]) -> Result<FailoverValue, ValueError> {
        let s = text(bytes)?;
        if s.is_empty() {
            return Ok(FailoverValue::default());
        }
        match serde_json::from_str::<Value>(s) {
            Ok(Value::Null) => Ok(FailoverValue::default()),
            Ok(v) => object(v),
            Err(e) if s.starts_with(['{', '[', '"']) => Err(ValueError::Json(e.to_string())),
            Err(_) => {
                let mut parts = s.split(':').map(str::trim);
                let leader = parts.next().filter(|p| !p.is_empty()).map(str::to_string);
                let candidate = parts.next().filter(|p| !p.is_empty()).map(str::to_string);
                Ok(FailoverValue { leader, candidate, ..FailoverValue::default() })
            }
        }
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
    /// Neither a leader nor a candidate: no request (Patroni's `len(failover) == 0`).
    pub fn is_empty(&self) -> bool {
        self.leader.as_deref().unwrap_or("").is_empty() && self.candidate.as_deref().unwrap_or("").is_empty()
    }
}

/// The value of `sync`: the leader and its synchronous standbys for synchronous mode.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncValue {
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// Comma-separated member names, sorted (Patroni's format).
    #[serde(default, deserialize_with = "lenient::any", skip_serializing_if = "Option::is_none")]
    pub sync_standby: Option<String>,
    /// Quorum commit mode: how many of the voters a racing node must see.
    #[serde(default, deserialize_with = "lenient::int", skip_serializing_if = "Option::is_none")]
    pub quorum: Option<i64>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

impl SyncValue {
    pub fn new<S: AsRef<str>>(leader: &str, standbys: &[S], quorum: Option<i64>) -> SyncValue {
        let mut names: Vec<&str> = standbys.iter().map(AsRef::as_ref).collect();
        names.sort_unstable();
        let sync_standby = (!names.is_empty()).then(|| names.join(","));
        SyncValue { leader: Some(leader.to_string()), sync_standby, quorum, extra: BTreeMap::new() }
    }
    pub fn parse(bytes: &[u8]) -> Result<SyncValue, ValueError> {
        object(json(bytes)?)
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
    /// The synchronous standbys; none while the key names no leader.
    pub fn voters(&self) -> Vec<&str> {
        match (&self.leader, &self.sync_standby) {
            (Some(l), Some(s)) if !l.is_empty() => s.split(',').map(str::trim).filter(|n| !n.is_empty()).collect(),
            _ => Vec::new(),
        }
    }
    /// Whether `name` is a synchronous standby, case-insensitively as PostgreSQL compares names.
    pub fn is_sync_standby(&self, name: &str) -> bool {
        self.voters().iter().any(|v| v.eq_ignore_ascii_case(name))
    }
}
