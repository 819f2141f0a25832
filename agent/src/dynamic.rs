//! The dynamic configuration (the DCS `config` key, Patroni's semantics) turned into what this
//! node runs with: HA timing from the DCS over the agent file's `[ha]`, and PostgreSQL parameters
//! from the DCS `postgresql.parameters` with the file's `[postgresql] parameters` winning.
//! Pure functions; the runtime applies their results (reload, pending_restart) and the API
//! validates a PATCH /config with the same safety rule.

use crate::ha::HaConfig;
use consensus::cluster::DynamicConfig;
use serde_json::Value;
use std::time::Duration;

/// Parameters the agent manages itself; a value for them in the DCS is ignored.
pub const PROTECTED_PARAMETERS: [&str; 6] =
    ["listen_addresses", "port", "unix_socket_directories", "primary_conninfo", "primary_slot_name", "hot_standby"];

/// The rule that lets a primary cut off from the DCS demote itself before its lock expires.
pub fn check_timing(ttl: f64, loop_wait: f64, retry_timeout: f64) -> Result<(), String> {
    if ttl > loop_wait + 2.0 * retry_timeout {
        Ok(())
    } else {
        Err(format!(
            "ttl ({ttl}s) must be larger than loop_wait + 2 x retry_timeout ({loop_wait}s + 2 x {retry_timeout}s), \
             or a primary cut off from the DCS could still accept writes after its lock expired"
        ))
    }
}

/// Seconds from a JSON number or numeric string; an error names the key.
pub fn seconds(config: &DynamicConfig, key: &str) -> Result<Option<f64>, String> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().filter(|s| *s > 0.0).map(Some).ok_or(format!("{key} must be positive")),
        Some(Value::String(s)) => match s.trim().parse::<f64>() {
            Ok(v) if v > 0.0 => Ok(Some(v)),
            _ => Err(format!("{key} = {s:?} is not a positive number of seconds")),
        },
        Some(other) => Err(format!("{key} = {other} is not a number of seconds")),
    }
}

/// The HA settings in effect: the agent file's `[ha]`, overridden by the DCS where it sets ttl,
/// loop_wait, retry_timeout, maximum_lag_on_failover, primary_start_timeout or member_slots_ttl. A new ttl is the
/// length of the leader and member leases from the next refresh on (as in Patroni). An unsafe or
/// unreadable combination is refused as a whole (Err says why) and the caller keeps what it runs.
pub fn effective_ha(base: &HaConfig, config: &DynamicConfig) -> Result<HaConfig, String> {
    let mut ha = base.clone();
    if let Some(v) = seconds(config, "ttl")? {
        ha.ttl = Duration::from_secs_f64(v);
    }
    if let Some(v) = seconds(config, "loop_wait")? {
        ha.loop_wait = Duration::from_secs_f64(v);
    }
    if let Some(v) = seconds(config, "retry_timeout")? {
        ha.retry_timeout = Duration::from_secs_f64(v);
    }
    if let Some(v) = seconds(config, "primary_start_timeout")? {
        ha.primary_start_timeout = Duration::from_secs_f64(v);
    }
    if let Some(v) = config.get("member_slots_ttl").filter(|v| !v.is_null()) {
        ha.member_slots_ttl = duration_with_unit(v).ok_or(format!(
            "member_slots_ttl = {v} is not a duration (seconds, or a number with ms, s, min, h or d)"
        ))?;
    }
    if let Some(v) = config.get("maximum_lag_on_failover") {
        ha.maximum_lag_on_failover = v
            .as_u64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .ok_or(format!("maximum_lag_on_failover = {v} is not a number of bytes"))?;
    }
    // "quorum" is run as "on": the first synchronous_node_count standbys (a stricter rule
    // than any-of-them, never a weaker one).
    ha.synchronous_mode = config.synchronous_mode() != consensus::cluster::SynchronousMode::Off;
    ha.synchronous_node_count = usize::try_from(config.synchronous_node_count()).unwrap_or(1).clamp(1, 32);
    ha.synchronous_mode_strict = ha.synchronous_mode && config.synchronous_mode_strict();
    ha.maximum_lag_on_syncnode = u64::try_from(config.maximum_lag_on_syncnode()).ok();
    check_timing(ha.ttl.as_secs_f64(), ha.loop_wait.as_secs_f64(), ha.retry_timeout.as_secs_f64())?;
    Ok(ha)
}

/// A duration as Patroni takes it: a number of seconds, or a string of a number with an optional
/// unit (`ms`, `s`, `min`, `h`, `d`), e.g. `"30min"`. Zero is allowed; negative is not.
pub fn duration_with_unit(v: &Value) -> Option<Duration> {
    let seconds = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
            let (number, unit) = s.split_at(split);
            let factor = match unit.trim() {
                "ms" => 0.001,
                "" | "s" => 1.0,
                "min" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                _ => return None,
            };
            number.parse::<f64>().ok()? * factor
        }
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

/// A parameter value as it goes into pgha.conf: strings quoted, booleans on/off.
pub fn conf_value(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(format!("'{}'", s.replace('\'', "''"))),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(if *b { "on" } else { "off" }.to_string()),
        _ => None,
    }
}

/// PostgreSQL parameters to run with: the DCS `postgresql.parameters` (protected ones left out),
/// then the local ones, which win; sorted by name.
pub fn merged_parameters(config: &DynamicConfig, local: &[(String, String)]) -> Vec<(String, String)> {
    let mut out = std::collections::BTreeMap::new();
    if let Some(params) = config.postgresql_parameters() {
        for (k, v) in params {
            if PROTECTED_PARAMETERS.contains(&k.as_str()) || !valid_name(k) {
                continue;
            }
            if let Some(v) = conf_value(v) {
                out.insert(k.clone(), v);
            }
        }
    }
    for (k, v) in local {
        out.insert(k.clone(), v.clone());
    }
    out.into_iter().collect()
}

/// A PostgreSQL parameter name: letters, digits, `_` and `.` (custom classes), nothing that could
/// break out of the config line.
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

/// The permanent slots of the dynamic configuration (`slots`, Patroni's format: `{"name":
/// {"type": "physical"}}`): the physical ones to keep on every member, and a sentence for each
/// entry that is not kept. `members`: the members' slot names, which a permanent slot may not take.
pub fn permanent_slots(config: &DynamicConfig, members: &[String]) -> (Vec<String>, Vec<String>) {
    let mut keep = Vec::new();
    let mut refused = Vec::new();
    let Some(slots) = config.get("slots") else { return (keep, refused) };
    let Some(slots) = slots.as_object() else {
        if !slots.is_null() {
            refused.push(format!("slots = {slots} is not an object of slot names"));
        }
        return (keep, refused);
    };
    for (name, spec) in slots {
        if spec.is_null() {
            continue;
        }
        let kind = spec.get("type").and_then(Value::as_str).unwrap_or("");
        if !crate::ha::member_slots::is_slot_name(name) {
            refused.push(format!("slot {name:?}: a slot name is lower-case letters, digits and _, at most 63 bytes"));
        } else if members.contains(name) {
            refused.push(format!("slot {name}: that is the slot of the member {name}"));
        } else if kind == "physical" {
            keep.push(name.clone());
        } else if kind == "logical" {
            refused.push(format!(
                "slot {name}: permanent logical slots are not supported (PostgreSQL 15 cannot carry them to a \
                 standby); create it on the primary by hand"
            ));
        } else {
            refused.push(format!("slot {name}: type must be \"physical\" (it is {spec})"));
        }
    }
    (keep, refused)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(v: Value) -> DynamicConfig {
        DynamicConfig::parse(v.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn member_slots_ttl_takes_seconds_or_patroni_units_and_zero() {
        let base = HaConfig::default();
        assert_eq!(base.member_slots_ttl, Duration::from_secs(1800));
        let ttl = |v: Value| effective_ha(&base, &config(json!({ "member_slots_ttl": v }))).map(|h| h.member_slots_ttl);
        assert_eq!(ttl(json!(90)), Ok(Duration::from_secs(90)));
        assert_eq!(ttl(json!("30min")), Ok(Duration::from_secs(1800)));
        assert_eq!(ttl(json!("2h")), Ok(Duration::from_secs(7200)));
        assert_eq!(ttl(json!("1.5 s")), Ok(Duration::from_millis(1500)));
        assert_eq!(ttl(json!("500ms")), Ok(Duration::from_millis(500)));
        assert_eq!(ttl(json!(0)), Ok(Duration::ZERO));
        for bad in [json!(-1), json!("soon"), json!("10 weeks"), json!(true), json!("")] {
            let err = ttl(bad.clone()).unwrap_err();
            assert!(err.contains("member_slots_ttl"), "{bad}: {err}");
        }
    }

    #[test]
    fn dcs_timing_overrides_the_file_and_unsafe_values_are_refused() {
        let base = HaConfig::default(); // ttl 6, loop_wait 1, retry_timeout 2
        let ha = effective_ha(&base, &config(json!({"loop_wait": 0.5, "maximum_lag_on_failover": "2048", "ttl": 30})))
            .unwrap();
        assert_eq!(
            (ha.ttl, ha.loop_wait, ha.maximum_lag_on_failover),
            (Duration::from_secs(30), Duration::from_millis(500), 2048)
        );
        assert_eq!(effective_ha(&base, &config(json!({"ttl": "7.5"}))).unwrap().ttl, Duration::from_millis(7500));
        let err = effective_ha(&base, &config(json!({"retry_timeout": 3}))).unwrap_err();
        assert!(err.contains("ttl (6s) must be larger than loop_wait + 2 x retry_timeout"), "{err}");
        // A ttl that breaks the rule with the file's timing is refused, and one that fixes it is taken.
        let err = effective_ha(&base, &config(json!({"ttl": 5}))).unwrap_err();
        assert!(err.contains("ttl (5s) must be larger than loop_wait + 2 x retry_timeout (1s + 2 x 2s)"), "{err}");
        assert!(effective_ha(&base, &config(json!({"ttl": 5, "retry_timeout": 1.5}))).is_ok());
        assert!(effective_ha(&base, &config(json!({"ttl": 0}))).is_err());
        assert!(effective_ha(&base, &config(json!({"loop_wait": "soon"}))).is_err());
        assert!(effective_ha(&base, &config(json!({"loop_wait": -1}))).is_err());
    }

    #[test]
    fn local_parameters_win_and_protected_or_odd_names_are_ignored() {
        let c = config(json!({"postgresql": {"parameters": {
            "work_mem": "8MB", "max_connections": 100, "port": 1, "hot_standby": false,
            "bad name = 1\nx": 1, "jit": false, "shared_buffers": "64MB"
        }}}));
        let local = vec![("shared_buffers".to_string(), "'16MB'".to_string())];
        assert_eq!(
            merged_parameters(&c, &local),
            vec![
                ("jit".into(), "off".into()),
                ("max_connections".into(), "100".into()),
                ("shared_buffers".into(), "'16MB'".into()),
                ("work_mem".into(), "'8MB'".into()),
            ]
        );
    }

    #[test]
    fn the_timing_rule_is_strict() {
        assert!(check_timing(30.0, 10.0, 10.0).is_err());
        assert!(check_timing(31.0, 10.0, 10.0).is_ok());
    }

    #[test]
    fn permanent_slots_keep_physical_ones_and_say_why_others_are_not_kept() {
        let config = DynamicConfig::parse(
            br#"{"slots": {"keeper": {"type": "physical"}, "cdc": {"type": "logical", "database": "app", "plugin": "pgoutput"},
                 "node2": {"type": "physical"}, "Bad-Name": {"type": "physical"}, "odd": {}, "gone": null}}"#,
        )
        .unwrap();
        let (keep, refused) = permanent_slots(&config, &["node1".into(), "node2".into()]);
        assert_eq!(keep, vec!["keeper".to_string()]);
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(
            refused.iter().any(|r| r.starts_with("slot cdc: permanent logical slots are not supported")),
            "{refused:?}"
        );
        assert!(refused.iter().any(|r| r.contains("slot of the member node2")), "{refused:?}");
        assert!(refused.iter().any(|r| r.contains("Bad-Name")), "{refused:?}");
        assert!(refused.iter().any(|r| r.starts_with("slot odd: type must be")), "{refused:?}");
        let (keep, refused) = permanent_slots(&DynamicConfig::parse(br#"{"slots": [1]}"#).unwrap(), &[]);
        assert!(keep.is_empty() && refused.len() == 1, "{refused:?}");
        assert_eq!(permanent_slots(&DynamicConfig::default(), &[]), (vec![], vec![]));
    }
}
