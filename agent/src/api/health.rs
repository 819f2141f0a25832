//! Health checks for load balancers and probes (`/primary`, `/replica?lag=`, `/read-only`,
//! `/liveness`, ...), with Patroni's semantics: 200 when the condition holds, 503 otherwise; GET
//! carries the node document, HEAD and OPTIONS (what HAProxy sends) only the status. They read the
//! published `NodeStatus` only, so they answer at once even when the DCS or PostgreSQL hangs.

use super::status_doc::{node_document, replication_state, tag_map};
use super::ApiState;
use crate::status::{NodeRole, NodeStatus};
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Json;
use serde_json::Value;
use std::time::{Duration, Instant};

/// One health-check condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HealthCheck {
    /// Running as primary and holding the leader lock.
    Primary,
    /// Holding the leader lock.
    Leader,
    /// A running replica without `noloadbalance`, within `?lag=`, in `?replication_state=`.
    Replica,
    /// `Primary` or `Replica`.
    ReadOnly,
    /// A `Replica` that the `sync` key names (synchronous mode).
    Synchronous,
    /// A `Replica` that the `sync` key does not name.
    Asynchronous,
    /// `Primary` or `Synchronous`: where a read sees every acknowledged commit.
    ReadOnlySync,
    /// The leader of a standby cluster: never, pgha runs no standby clusters.
    StandbyLeader,
    /// PostgreSQL is running.
    Health,
    /// The HA loop ticked within `ttl` (primary) or `2 x ttl` (replica), or the cluster is paused.
    Liveness,
    /// The leader, or a streaming replica within `?lag=` (default maximum_lag_on_failover).
    Readiness,
}

/// Paths and the condition each answers, as Patroni names them.
pub(crate) const ROUTES: &[(&str, HealthCheck)] = &[
    ("/", HealthCheck::Primary),
    ("/primary", HealthCheck::Primary),
    ("/master", HealthCheck::Primary),
    ("/read-write", HealthCheck::Primary),
    ("/leader", HealthCheck::Leader),
    ("/replica", HealthCheck::Replica),
    ("/read-only", HealthCheck::ReadOnly),
    ("/synchronous", HealthCheck::Synchronous),
    ("/sync", HealthCheck::Synchronous),
    ("/asynchronous", HealthCheck::Asynchronous),
    ("/async", HealthCheck::Asynchronous),
    ("/read-only-sync", HealthCheck::ReadOnlySync),
    ("/standby-leader", HealthCheck::StandbyLeader),
    ("/standby_leader", HealthCheck::StandbyLeader),
    ("/health", HealthCheck::Health),
    ("/liveness", HealthCheck::Liveness),
    ("/readiness", HealthCheck::Readiness),
];

/// The query parameters a health check understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HealthQuery {
    /// `?lag=`: the largest acceptable replication lag in bytes.
    pub lag: Option<u64>,
    /// `?replication_state=`: e.g. `streaming`.
    pub replication_state: Option<String>,
    /// `?mode=write` (readiness): judge lag by received rather than replayed WAL.
    pub mode_write: bool,
    /// `?tag_<name>=<value>`: the node must carry tag `name` with that value.
    pub tags: Vec<(String, String)>,
}

impl HealthQuery {
    /// Parses the query pairs; other parameters are ignored, as Patroni does.
    pub(crate) fn parse(pairs: &[(String, String)]) -> Result<HealthQuery, String> {
        let mut q = HealthQuery::default();
        for (key, value) in pairs {
            match key.as_str() {
                "lag" => {
                    q.lag = Some(parse_size(value).ok_or_else(|| {
                        format!("lag={value:?} is not a size: give bytes (1048576) or a unit (16kB, 64MB, 1GB)")
                    })?)
                }
                "replication_state" => q.replication_state = Some(value.clone()),
                "mode" => {
                    q.mode_write = match value.as_str() {
                        "write" => true,
                        "apply" => false,
                        other => return Err(format!("mode={other:?} must be \"apply\" or \"write\"")),
                    }
                }
                other => {
                    if let Some(tag) = other.strip_prefix("tag_") {
                        q.tags.push((tag.to_string(), value.clone()));
                    }
                }
            }
        }
        Ok(q)
    }
}

/// A size in bytes: `1048576`, `1024kB`, `64MB`, `1GB`, `1 TB` (units are powers of 1024, case
/// does not matter, a fraction is rounded down).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1 << 10,
        "mb" => 1 << 20,
        "gb" => 1 << 30,
        "tb" => 1 << 40,
        _ => return None,
    };
    if let Ok(n) = number.parse::<u64>() {
        return n.checked_mul(factor);
    }
    let n: f64 = number.parse().ok()?;
    let bytes = n * factor as f64;
    (bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64).then_some(bytes as u64)
}

fn running(s: &NodeStatus) -> bool {
    s.state.0 == "running"
}

fn primary_with_lock(s: &NodeStatus) -> bool {
    s.role == NodeRole::Primary && s.holds_lock
}

/// Patroni's replica check: running replica, not `noloadbalance`, not lagging past `?lag=`
/// (against the last leader position; unknown positions do not count as lag), and in the
/// requested replication state.
fn usable_replica(s: &NodeStatus, q: &HealthQuery) -> bool {
    let lagging = match (q.lag, s.lag_bytes()) {
        (Some(max), Some(lag)) => lag > max,
        _ => false,
    };
    let state_matches = match q.replication_state.as_deref() {
        Some(want) => replication_state(s) == Some(want),
        None => true,
    };
    s.role == NodeRole::Replica && running(s) && !s.tags.noloadbalance && !lagging && state_matches
}

fn alive(s: &NodeStatus, now: Instant) -> bool {
    if s.paused {
        // In maintenance mode a stuck loop is tolerated, as Patroni does.
        return true;
    }
    let ttl = Duration::from_secs(s.ttl_secs);
    let limit = if s.role == NodeRole::Primary && s.pg_running { ttl } else { ttl * 2 };
    s.last_tick.is_some_and(|t| now.saturating_duration_since(t) < limit)
}

fn ready(s: &NodeStatus, q: &HealthQuery) -> bool {
    if s.holds_lock {
        return true;
    }
    if !running(s) || replication_state(s) != Some("streaming") {
        return false;
    }
    let mine = if q.mode_write { s.received_position.or(s.replayed_position) } else { s.replayed_position };
    match (s.leader_position, mine) {
        (Some(leader), Some(mine)) => mine.bytes_behind(leader) <= q.lag.unwrap_or(s.maximum_lag_on_failover),
        // Without the leader's position (DCS unreadable) or ours, we cannot tell: not ready.
        _ => false,
    }
}

/// Every `?tag_<name>=<value>` matches the node's tags (booleans as `true`).
fn tags_match(s: &NodeStatus, q: &HealthQuery) -> bool {
    let tags = tag_map(&s.tags);
    q.tags.iter().all(|(name, want)| match tags.get(name) {
        Some(Value::String(v)) => v == want,
        Some(Value::Bool(b)) => want == if *b { "true" } else { "false" },
        Some(Value::Number(n)) => n.as_i64().is_some_and(|n| want.parse() == Ok(n)),
        _ => false,
    })
}

/// Does the node pass `check` now?
pub(crate) fn passes(check: HealthCheck, s: &NodeStatus, q: &HealthQuery, now: Instant) -> bool {
    let ok = match check {
        HealthCheck::Primary => primary_with_lock(s),
        HealthCheck::Leader => s.holds_lock,
        HealthCheck::Replica => usable_replica(s, q),
        HealthCheck::Synchronous => usable_replica(s, q) && s.sync_standby,
        HealthCheck::Asynchronous => usable_replica(s, q) && !s.sync_standby,
        HealthCheck::ReadOnly => primary_with_lock(s) || usable_replica(s, q),
        HealthCheck::ReadOnlySync => primary_with_lock(s) || (usable_replica(s, q) && s.sync_standby),
        HealthCheck::StandbyLeader => false,
        HealthCheck::Health => running(s),
        HealthCheck::Liveness => return alive(s, now),
        HealthCheck::Readiness => return ready(s, q),
    };
    // Tag filters apply to the non-leader checks only, as in Patroni.
    let tag_filtered = !matches!(check, HealthCheck::Primary | HealthCheck::Leader);
    ok && (!tag_filtered || tags_match(s, q))
}

async fn answer(check: HealthCheck, state: ApiState, method: Method, pairs: Vec<(String, String)>) -> Response {
    let query = match HealthQuery::parse(&pairs) {
        Ok(q) => q,
        Err(reason) => return (StatusCode::BAD_REQUEST, reason).into_response(),
    };
    let node = state.node();
    let code =
        if passes(check, &node, &query, Instant::now()) { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let status_only = method != Method::GET || matches!(check, HealthCheck::Liveness | HealthCheck::Readiness);
    if status_only {
        code.into_response()
    } else {
        (code, Json(node_document(&node))).into_response()
    }
}

/// GET, HEAD and OPTIONS for one health check (axum would answer OPTIONS with 405 otherwise).
pub(crate) fn method_router(check: HealthCheck) -> MethodRouter<ApiState> {
    let filter = MethodFilter::GET.or(MethodFilter::HEAD).or(MethodFilter::OPTIONS);
    on(filter, move |State(state): State<ApiState>, method: Method, Query(pairs): Query<Vec<(String, String)>>| {
        answer(check, state, method, pairs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_patroni() {
        assert_eq!(parse_size("1048576"), Some(1048576));
        assert_eq!(parse_size("1024kB"), Some(1048576));
        assert_eq!(parse_size("16kB"), Some(16384));
        assert_eq!(parse_size("64MB"), Some(64 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("1 gb"), Some(1 << 30));
        assert_eq!(parse_size("1.5MB"), Some(3 << 19));
        assert_eq!(parse_size("0"), Some(0));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("10XB"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999999999999TB"), None);
    }

    #[test]
    fn query_keeps_tag_filters_and_refuses_bad_values() {
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        let q = HealthQuery::parse(&pairs(&[("lag", "1MB"), ("tag_dc", "east"), ("other", "x")])).unwrap();
        assert_eq!(q.lag, Some(1 << 20));
        assert_eq!(q.tags, vec![("dc".to_string(), "east".to_string())]);
        assert!(HealthQuery::parse(&pairs(&[("lag", "lots")])).is_err());
        assert!(HealthQuery::parse(&pairs(&[("mode", "fast")])).is_err());
    }
}
