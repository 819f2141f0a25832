//! Changing the dynamic configuration (the `config` key): `PATCH /config` merges a JSON object into
//! it (`null` deletes a key) with compare-and-set on the revision read, retried a few times when
//! another writer got in between; `PUT /config` replaces it. Both answer with the new configuration,
//! or 422 with the rule a timing change would break.

use super::cluster::config_of;
use super::{parse_body, ApiError, ApiState};
use axum::body::Bytes;
use axum::extract::State;
use axum::Json;
use consensus::cluster::DynamicConfig;
use consensus::dcs::{ClusterKey, DcsError, Expected};
use serde_json::Value;

/// How many times a PATCH re-reads and re-applies after losing a compare-and-set.
const PATCH_ATTEMPTS: usize = 4;

/// Merges `patch` into `target` as Patroni's `patch_config`: objects merge recursively, `null`
/// removes a key, anything else replaces. Returns whether `target` changed.
pub(crate) fn merge_patch(target: &mut serde_json::Map<String, Value>, patch: &serde_json::Map<String, Value>) -> bool {
    let mut changed = false;
    for (key, value) in patch {
        match value {
            Value::Null => changed |= target.remove(key).is_some(),
            Value::Object(inner) => match target.get_mut(key) {
                Some(Value::Object(existing)) => changed |= merge_patch(existing, inner),
                _ => {
                    // A new section: merged into an empty one, so nulls inside it vanish.
                    let mut fresh = serde_json::Map::new();
                    merge_patch(&mut fresh, inner);
                    changed |= target.insert(key.clone(), Value::Object(fresh.clone())) != Some(Value::Object(fresh));
                }
            },
            other => changed |= target.insert(key.clone(), other.clone()).as_ref() != Some(other),
        }
    }
    changed
}

fn object_body(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match parse_body::<Value>(body)? {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::BadRequest("the configuration must be a JSON object".into())),
    }
}

/// Refuses (422) a configuration whose timing would make failover unsafe, with the rule it breaks;
/// a value it does not set is taken as this node runs it.
fn validate(state: &ApiState, config: &Value) -> Result<(), ApiError> {
    let Value::Object(map) = config else { return Ok(()) };
    let dynamic = DynamicConfig(map.clone());
    let node = state.node();
    let secs = |key: &str, current: f64| {
        crate::dynamic::seconds(&dynamic, key).map(|v| v.unwrap_or(current)).map_err(ApiError::Unprocessable)
    };
    let loop_wait = secs("loop_wait", node.loop_wait_ms as f64 / 1000.0)?;
    let retry_timeout = secs("retry_timeout", node.retry_timeout_ms as f64 / 1000.0)?;
    let unsafe_timing = |e: String| ApiError::Unprocessable(format!("configuration refused: {e}"));
    let ttl = secs("ttl", node.ttl_secs as f64)?;
    crate::dynamic::check_timing(ttl, loop_wait, retry_timeout).map_err(unsafe_timing)?;
    if let Some(lag) = map.get("maximum_lag_on_failover") {
        if lag.as_u64().is_none() && lag.as_str().and_then(|s| s.trim().parse::<u64>().ok()).is_none() {
            return Err(ApiError::Unprocessable(format!("maximum_lag_on_failover = {lag} is not a number of bytes")));
        }
    }
    Ok(())
}

fn encode(config: &Value) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(config).map_err(|e| ApiError::Corrupt(format!("could not encode the configuration: {e}")))
}

/// `PATCH /config`.
pub(crate) async fn patch_config(State(state): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let patch = object_body(&body)?;
    for _ in 0..PATCH_ATTEMPTS {
        let snap = state.snapshot().await?;
        let expected = match snap.get(&ClusterKey::Config) {
            Some(kv) => Expected::Revision(kv.mod_revision),
            None => Expected::Absent,
        };
        let mut config = config_of(&snap)?;
        let Value::Object(map) = &mut config else {
            return Err(ApiError::Corrupt("the DCS key config does not hold a JSON object".into()));
        };
        if !merge_patch(map, &patch) {
            return Ok(Json(config));
        }
        validate(&state, &config)?;
        let bytes = encode(&config)?;
        match state.dcs_call(state.dcs.write(ClusterKey::Config, &bytes, expected)).await {
            Ok(_) => {
                tracing::info!("dynamic configuration patched through the REST API");
                return Ok(Json(config));
            }
            Err(ApiError::Dcs(DcsError::Conflict { .. })) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(ApiError::Conflict(format!(
        "the configuration changed concurrently {PATCH_ATTEMPTS} times while applying this patch; retry"
    )))
}

/// `PUT /config`: replaces the whole configuration unconditionally.
pub(crate) async fn put_config(State(state): State<ApiState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let config = Value::Object(object_body(&body)?);
    validate(&state, &config)?;
    let bytes = encode(&config)?;
    state.dcs_call(state.dcs.write(ClusterKey::Config, &bytes, Expected::Any)).await?;
    tracing::info!("dynamic configuration replaced through the REST API");
    Ok(Json(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(target: Value, patch: Value) -> (Value, bool) {
        let (Value::Object(mut t), Value::Object(p)) = (target, patch) else { panic!("objects only") };
        let changed = merge_patch(&mut t, &p);
        (Value::Object(t), changed)
    }

    #[test]
    fn merges_recursively_and_deletes_with_null() {
        let base = json!({"ttl": 30, "postgresql": {"parameters": {"max_connections": "100", "work_mem": "4MB"}}});
        let (v, changed) = merged(
            base.clone(),
            json!({"ttl": 20, "postgresql": {"parameters": {"max_connections": null, "shared_buffers": "1GB"}}}),
        );
        assert!(changed);
        assert_eq!(v, json!({"ttl": 20, "postgresql": {"parameters": {"work_mem": "4MB", "shared_buffers": "1GB"}}}));
        let (v, changed) = merged(base.clone(), json!({"ttl": 30, "absent": null}));
        assert!(!changed);
        assert_eq!(v, base);
        let (v, _) = merged(json!({"pause": true}), json!({"new": {"a": 1, "b": null}, "pause": null}));
        assert_eq!(v, json!({"new": {"a": 1}}));
    }
}
