//! The `config` value: Patroni's dynamic configuration (ttl, loop_wait, retry_timeout,
//! maximum_lag_on_failover, synchronous_mode, postgresql.parameters, ...), kept as JSON so a
//! read-modify-write never loses a setting, with typed getters that apply Patroni's defaults.

use super::{json, lenient, object, to_bytes, ValueError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `synchronous_mode` of the dynamic configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynchronousMode {
    Off,
    On,
    Quorum,
}

/// The value of `config`: Patroni's dynamic configuration. Kept as the JSON object it is, so that
/// a read-modify-write (PATCH /config) never drops a setting we do not know; typed getters apply
/// Patroni's defaults and lenient parsing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DynamicConfig(pub Map<String, Value>);

impl DynamicConfig {
    pub fn parse(bytes: &[u8]) -> Result<DynamicConfig, ValueError> {
        object(json(bytes)?)
    }
    pub fn to_json(&self) -> Vec<u8> {
        to_bytes(self)
    }
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name)
    }
    fn int(&self, name: &str) -> Option<i64> {
        self.0.get(name).and_then(lenient::int_of)
    }
    fn flag(&self, name: &str) -> bool {
        self.0.get(name).and_then(lenient::bool_of).unwrap_or(false)
    }
    fn uint_or(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).and_then(lenient::uint_of).unwrap_or(default)
    }

    /// Leader lock TTL in seconds (default 30).
    pub fn ttl(&self) -> u64 {
        self.uint_or("ttl", 30)
    }
    pub fn loop_wait(&self) -> u64 {
        self.uint_or("loop_wait", 10)
    }
    pub fn retry_timeout(&self) -> u64 {
        self.uint_or("retry_timeout", 10)
    }
    /// Bytes (default 1 MiB).
    pub fn maximum_lag_on_failover(&self) -> u64 {
        self.uint_or("maximum_lag_on_failover", 1_048_576)
    }
    pub fn maximum_lag_on_syncnode(&self) -> i64 {
        self.int("maximum_lag_on_syncnode").unwrap_or(-1)
    }
    /// Seconds; `master_start_timeout` is the pre-3.0 name.
    pub fn primary_start_timeout(&self) -> u64 {
        let name =
            if self.0.contains_key("primary_start_timeout") { "primary_start_timeout" } else { "master_start_timeout" };
        self.uint_or(name, 300)
    }
    pub fn max_timelines_history(&self) -> u64 {
        self.uint_or("max_timelines_history", 0)
    }
    pub fn synchronous_mode(&self) -> SynchronousMode {
        let value = self.0.get("synchronous_mode");
        match value.and_then(lenient::bool_of) {
            Some(true) => SynchronousMode::On,
            _ if value.and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("quorum")) => {
                SynchronousMode::Quorum
            }
            _ => SynchronousMode::Off,
        }
    }
    pub fn synchronous_mode_strict(&self) -> bool {
        self.flag("synchronous_mode_strict")
    }
    pub fn synchronous_node_count(&self) -> u64 {
        self.uint_or("synchronous_node_count", 1)
    }
    pub fn failsafe_mode(&self) -> bool {
        self.flag("failsafe_mode")
    }
    /// Maintenance mode: no automatic failover.
    pub fn pause(&self) -> bool {
        self.flag("pause")
    }
    /// `postgresql.parameters`: GUC name -> value (a string or a number, as written).
    pub fn postgresql_parameters(&self) -> Option<&Map<String, Value>> {
        self.0.get("postgresql")?.get("parameters")?.as_object()
    }
    pub fn use_pg_rewind(&self) -> bool {
        self.postgresql_flag("use_pg_rewind").unwrap_or(false)
    }
    pub fn use_slots(&self) -> bool {
        self.postgresql_flag("use_slots").unwrap_or(true)
    }
    fn postgresql_flag(&self, name: &str) -> Option<bool> {
        self.0.get("postgresql")?.get(name).and_then(lenient::bool_of)
    }

    /// Applies a PATCH /config body as Patroni's `patch_config` does: objects merge recursively,
    /// `null` removes a key, anything else replaces. Returns whether anything changed.
    pub fn apply_patch(&mut self, patch: &Map<String, Value>) -> bool {
        patch_map(&mut self.0, patch)
    }
}

fn patch_map(target: &mut Map<String, Value>, patch: &Map<String, Value>) -> bool {
    let mut changed = false;
    for (name, value) in patch {
        match (value, target.get_mut(name)) {
            (Value::Null, _) => changed |= target.remove(name).is_some_and(|old| !old.is_null()),
            (Value::Object(p), Some(Value::Object(t))) => changed |= patch_map(t, p),
            (v, Some(old)) if old == v => {}
            (v, _) => {
                target.insert(name.clone(), v.clone());
                changed = true;
            }
        }
    }
    changed
}
