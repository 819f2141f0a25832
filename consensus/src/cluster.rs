//! The cluster state as Patroni lays it out in the DCS: key paths under `/<namespace>/<scope>/`
//! and the JSON value of each key, with Patroni's field names, so patronictl, HAProxy checks and
//! dashboards keep working. Pure data: parsing, building and the assembled `ClusterView`.
//!
//! Values written by Patroni must parse: unknown fields are kept (and written back), a known field
//! of the wrong type reads as absent (Patroni's `parse_int`/`parse_bool` leniency), and a value
//! that cannot be read at all becomes a typed `BadValue` in the view, never a panic.

mod dynamic_config;
mod leadership;
mod member;
mod timeline;
pub mod timestamp;

pub use dynamic_config::{DynamicConfig, SynchronousMode};
pub use leadership::{FailoverValue, SyncValue};
pub use member::{conn_host_port, split_host_port, MemberRole, MemberValue, Tags};
pub use timeline::{HistoryEntry, StatusValue, TimelineHistory};

use crate::dcs::{ClusterKey, ClusterSnapshot};
use crate::kv::Revision;
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Patroni's default namespace.
pub const DEFAULT_NAMESPACE: &str = "/service";

/// Every key Patroni keeps under a cluster prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum KeyName {
    /// One of the keys pgha reads and writes.
    Cluster(ClusterKey),
    /// `failsafe`: name -> api_url of the members a primary must reach in failsafe mode.
    Failsafe,
    /// `optime/leader`: the leader's LSN as Patroni before 2.1 wrote it (read only).
    LegacyLeaderOptime,
}

impl KeyName {
    /// The path below the cluster prefix, e.g. `members/pg1`.
    pub fn path(&self) -> String {
        match self {
            KeyName::Cluster(key) => key.path(),
            KeyName::Failsafe => "failsafe".into(),
            KeyName::LegacyLeaderOptime => "optime/leader".into(),
        }
    }

    /// Recognises a path below the cluster prefix; `None` for anything else (such as a Citus
    /// group's sub-cluster `1/leader`, or `members/a/b`, which Patroni ignores too).
    pub fn parse(relative: &str) -> Option<KeyName> {
        let key = match relative {
            "initialize" => ClusterKey::Initialize,
            "leader" => ClusterKey::Leader,
            "config" => ClusterKey::Config,
            "failover" => ClusterKey::Failover,
            "sync" => ClusterKey::Sync,
            "history" => ClusterKey::History,
            "status" => ClusterKey::Status,
            "failsafe" => return Some(KeyName::Failsafe),
            "optime/leader" => return Some(KeyName::LegacyLeaderOptime),
            other => {
                let name = other.strip_prefix("members/")?;
                if name.is_empty() || name.contains('/') {
                    return None;
                }
                ClusterKey::Member(name.to_string())
            }
        };
        Some(KeyName::Cluster(key))
    }
}

/// A scope that cannot name a cluster.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cluster scope {scope:?}: it must be non-empty and contain no '/'")]
pub struct InvalidScope {
    pub scope: String,
}

/// Where one cluster's keys live: `/<namespace>/<scope>/<key>`, with slashes collapsed as
/// Patroni does (`service`, `/service` and `/service/` are the same namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyLayout {
    namespace: String,
    scope: String,
    prefix: String,
}

impl KeyLayout {
    pub fn new(namespace: &str, scope: &str) -> Result<KeyLayout, InvalidScope> {
        if scope.is_empty() || scope.contains('/') {
            return Err(InvalidScope { scope: scope.to_string() });
        }
        let namespace = collapse_slashes(&format!("/{namespace}"));
        let namespace = namespace.trim_end_matches('/').to_string();
        let prefix = format!("{namespace}/{scope}/");
        Ok(KeyLayout { namespace, scope: scope.to_string(), prefix })
    }

    /// The normalised namespace, e.g. `/service` (empty for the root namespace).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The prefix every key of the cluster starts with, e.g. `/service/batman/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The full key, e.g. `/service/batman/members/pg1`.
    pub fn key(&self, key: &ClusterKey) -> String {
        format!("{}{}", self.prefix, key.path())
    }

    /// The full key of any key name, including `failsafe` and the legacy `optime/leader`.
    pub fn key_of(&self, name: &KeyName) -> String {
        format!("{}{}", self.prefix, name.path())
    }

    /// Recognises a full key of this cluster; `None` for other clusters' and unknown keys.
    pub fn parse(&self, full_key: &str) -> Option<KeyName> {
        KeyName::parse(full_key.strip_prefix(&self.prefix)?)
    }
}

fn collapse_slashes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

/// Why a stored value could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("the value is not UTF-8 text")]
    NotUtf8,
    #[error("the value is empty")]
    Empty,
    #[error("the value is not valid JSON: {0}")]
    Json(String),
    #[error("expected {expected}, found {found}")]
    Shape { expected: &'static str, found: &'static str },
}

/// A key whose value could not be read; the view treats the key as unreadable, not absent:
/// `mod_revision` still lets a writer replace it with a compare-and-set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} (revision {mod_revision}): {error}")]
pub struct BadValue {
    /// The key below the cluster prefix.
    pub key: String,
    pub mod_revision: Revision,
    pub error: ValueError,
}

fn text(bytes: &[u8]) -> Result<&str, ValueError> {
    std::str::from_utf8(bytes).map(str::trim).map_err(|_| ValueError::NotUtf8)
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn json(bytes: &[u8]) -> Result<Value, ValueError> {
    let s = text(bytes)?;
    if s.is_empty() {
        return Err(ValueError::Empty);
    }
    serde_json::from_str(s).map_err(|e| ValueError::Json(e.to_string()))
}

/// Parses a JSON object into `T`; every `T` here accepts any object, so only the shape can fail.
fn object<T: serde::de::DeserializeOwned>(v: Value) -> Result<T, ValueError> {
    if !v.is_object() {
        return Err(ValueError::Shape { expected: "a JSON object", found: kind(&v) });
    }
    serde_json::from_value(v).map_err(|e| ValueError::Json(e.to_string()))
}

fn to_bytes<T: Serialize>(v: &T) -> Vec<u8> {
    // Our values hold only strings, integers, booleans and JSON maps with string keys, for which
    // serde_json cannot fail.
    serde_json::to_vec(v).expect("cluster values always serialise to JSON")
}

/// Patroni's lenient readings of loosely typed JSON (`parse_int`, `parse_bool`).
mod lenient {
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    pub fn int_of(v: &Value) -> Option<i64> {
        match v {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64)),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub fn bool_of(v: &Value) -> Option<bool> {
        match v {
            Value::Bool(b) => Some(*b),
            Value::Number(n) => n.as_i64().and_then(|i| match i {
                0 => Some(false),
                1 => Some(true),
                _ => None,
            }),
            Value::String(s) => match s.trim().to_ascii_lowercase().as_str() {
                "on" | "true" | "yes" | "1" => Some(true),
                "off" | "false" | "no" | "0" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }

    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        Ok(int_of(&Value::deserialize(d)?))
    }

    pub fn uint_of(v: &Value) -> Option<u64> {
        v.as_u64().or_else(|| int_of(v).and_then(|i| u64::try_from(i).ok()))
    }

    pub fn uint<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        Ok(uint_of(&Value::deserialize(d)?))
    }

    pub fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
        Ok(bool_of(&Value::deserialize(d)?))
    }

    /// Any other type: a value that does not fit reads as absent.
    pub fn any<'de, D: Deserializer<'de>, T: serde::de::DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
        Ok(serde_json::from_value(Value::deserialize(d)?).ok())
    }
}

/// A value with the revision it was read at (the `mod_revision` a compare-and-set guards on).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: Revision,
}

/// Everything one cluster keeps in the DCS, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// The `initialize` value: the system identifier in decimal (Patroni first creates the key
    /// empty and fills it in after bootstrap).
    pub initialize: Option<Versioned<String>>,
    /// The leader lock holder's member name.
    pub leader: Option<Versioned<String>>,
    pub members: BTreeMap<String, Versioned<MemberValue>>,
    pub config: Option<Versioned<DynamicConfig>>,
    pub failover: Option<Versioned<FailoverValue>>,
    pub sync: Option<Versioned<SyncValue>>,
    pub history: Option<Versioned<TimelineHistory>>,
    /// From `status`, or from the legacy `optime/leader` when there is no `status`.
    pub status: Option<Versioned<StatusValue>>,
    pub failsafe: Option<Versioned<BTreeMap<String, String>>>,
    /// Keys present but unreadable; each is absent from the fields above.
    pub bad_values: Vec<BadValue>,
}

impl ClusterView {
    /// Assembles the view from full keys (`/service/batman/leader`), their values and
    /// mod_revisions. Keys of other clusters and unknown keys are ignored.
    pub fn from_entries<'a>(
        layout: &KeyLayout,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8], Revision)>,
    ) -> ClusterView {
        let relative = entries.into_iter().filter_map(|(k, v, r)| Some((k.strip_prefix(layout.prefix())?, v, r)));
        ClusterView::from_relative_entries(relative)
    }

    /// As `from_entries`, with keys relative to the cluster prefix (`leader`, `members/pg1`).
    pub fn from_relative_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8], Revision)>) -> ClusterView {
        let mut view = ClusterView::default();
        let mut legacy_optime = None;
        for (key, bytes, rev) in entries {
            let Some(name) = KeyName::parse(key) else { continue };
            if let Err(error) = view.add(&name, bytes, rev, &mut legacy_optime) {
                view.bad_values.push(BadValue { key: key.to_string(), mod_revision: rev, error });
            }
        }
        if view.status.is_none() {
            view.status = legacy_optime;
        }
        view
    }

    fn add(
        &mut self,
        name: &KeyName,
        bytes: &[u8],
        rev: Revision,
        legacy_optime: &mut Option<Versioned<StatusValue>>,
    ) -> Result<(), ValueError> {
        let at = |value| Versioned { value, mod_revision: rev };
        match name {
            KeyName::Cluster(ClusterKey::Initialize) => self.initialize = Some(at(text(bytes)?.to_string())),
            KeyName::Cluster(ClusterKey::Leader) => match text(bytes)? {
                "" => return Err(ValueError::Empty),
                holder => self.leader = Some(at(holder.to_string())),
            },
            KeyName::Cluster(ClusterKey::Member(member)) => {
                let value = MemberValue::parse(bytes)?;
                self.members.insert(member.clone(), Versioned { value, mod_revision: rev });
            }
            KeyName::Cluster(ClusterKey::Config) => {
                self.config = Some(Versioned { value: DynamicConfig::parse(bytes)?, mod_revision: rev })
            }
            KeyName::Cluster(ClusterKey::Failover) => {
                self.failover = Some(Versioned { value: FailoverValue::parse(bytes)?, mod_revision: rev })
            }
            KeyName::Cluster(ClusterKey::Sync) => {
                self.sync = Some(Versioned { value: SyncValue::parse(bytes)?, mod_revision: rev })
            }
            KeyName::Cluster(ClusterKey::History) => {
                self.history = Some(Versioned { value: TimelineHistory::parse(bytes)?, mod_revision: rev })
            }
            KeyName::Cluster(ClusterKey::Status) => {
                self.status = Some(Versioned { value: StatusValue::parse(bytes)?, mod_revision: rev })
            }
            KeyName::LegacyLeaderOptime => {
                *legacy_optime = Some(Versioned { value: StatusValue::parse(bytes)?, mod_revision: rev })
            }
            KeyName::Failsafe => self.failsafe = Some(Versioned { value: object(json(bytes)?)?, mod_revision: rev }),
        }
        Ok(())
    }

    /// From a `Dcs::snapshot` (keys already relative to the cluster prefix).
    pub fn from_snapshot(snapshot: &ClusterSnapshot) -> ClusterView {
        ClusterView::from_relative_entries(
            snapshot.keys.iter().map(|kv| (kv.key.as_str(), kv.value.as_slice(), kv.mod_revision)),
        )
    }

    /// The leader lock holder's name, if the lock is held.
    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.value.as_str())
    }
    /// The leader lock holder's member value, if it has published one.
    pub fn leader_member(&self) -> Option<&MemberValue> {
        self.members.get(self.leader_name()?).map(|m| &m.value)
    }
    pub fn member(&self, name: &str) -> Option<&MemberValue> {
        self.members.get(name).map(|m| &m.value)
    }
    /// The system identifier from `initialize`, if it holds one.
    pub fn system_identifier(&self) -> Option<u64> {
        self.initialize.as_ref()?.value.parse().ok()
    }
    /// The leader's last WAL position recorded in the DCS (`status.optime`).
    pub fn last_leader_lsn(&self) -> Option<u64> {
        self.status.as_ref()?.value.optime
    }
    /// A pending switchover/failover request, if there is a non-empty one.
    pub fn pending_failover(&self) -> Option<&FailoverValue> {
        self.failover.as_ref().map(|f| &f.value).filter(|f| !f.is_empty())
    }
    /// The dynamic configuration, or the defaults when there is none (or it is unreadable).
    pub fn dynamic_config(&self) -> DynamicConfig {
        self.config.as_ref().map(|c| c.value.clone()).unwrap_or_default()
    }
}

impl fmt::Display for KeyName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.path())
    }
}

#[cfg(test)]
mod tests;
