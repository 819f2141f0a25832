//! The endpoints that ask the cluster or this node to do something. Switchover and failover are
//! validated against one DCS snapshot and written to the `failover` key (compare-and-set), then the
//! answer waits for the new leader as Patroni's does. Restart, reload and reinitialize are checked
//! against the node status and queued for the runtime as `ApiCommand`s (202).

use super::cluster::config_of;
use super::timestamp::{Timestamp, TimestampError};
use super::{parse_body, parse_optional_body, ApiCommand, ApiError, ApiState};
use crate::status::NodeRole;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use consensus::cluster::FailoverValue;
use consensus::dcs::{ClusterKey, ClusterSnapshot, Expected};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio::sync::mpsc::error::TrySendError;

/// How often a switchover answer re-reads the DCS while waiting for the new leader.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The body of POST /switchover and POST /failover.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SwitchoverBody {
    leader: Option<String>,
    /// Patroni clients send `candidate`; older ones `member`.
    #[serde(alias = "member")]
    candidate: Option<String>,
    scheduled_at: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Switchover,
    Failover,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Switchover => "switchover",
            Kind::Failover => "failover",
        }
    }
    fn title(self) -> &'static str {
        match self {
            Kind::Switchover => "Switchover",
            Kind::Failover => "Failover",
        }
    }
    fn past(self) -> &'static str {
        match self {
            Kind::Switchover => "switched",
            Kind::Failover => "failed",
        }
    }
}

/// A member key's JSON, if the member exists and its value is readable.
fn member(snap: &ClusterSnapshot, name: &str) -> Option<Value> {
    let kv = snap.get(&ClusterKey::Member(name.to_string()))?;
    serde_json::from_slice(&kv.value).ok()
}

fn member_names(snap: &ClusterSnapshot) -> impl Iterator<Item = &str> {
    snap.keys.iter().filter_map(|kv| kv.key.strip_prefix("members/"))
}

/// Why `member` cannot take over, if it cannot: not running, or tagged nofailover.
fn unfit(name: &str, m: &Value) -> Option<String> {
    if m.get("state").and_then(Value::as_str) != Some("running") {
        return Some(format!("candidate {name} is not running"));
    }
    if m.get("tags").and_then(|t| t.get("nofailover")) == Some(&json!(true)) {
        return Some(format!("candidate {name} is tagged nofailover"));
    }
    None
}

/// The standbys the `sync` key names while synchronous mode is on (None: any member may take
/// over).
fn sync_standbys(snap: &ClusterSnapshot) -> Option<Vec<String>> {
    let config = snap
        .get(&ClusterKey::Config)
        .and_then(|kv| consensus::cluster::DynamicConfig::parse(&kv.value).ok())
        .unwrap_or_default();
    if config.synchronous_mode() == consensus::cluster::SynchronousMode::Off {
        return None;
    }
    let sync = consensus::cluster::SyncValue::parse(&snap.get(&ClusterKey::Sync)?.value).ok()?;
    let standbys: Vec<String> = sync.voters().into_iter().map(str::to_string).collect();
    (!standbys.is_empty()).then_some(standbys)
}

/// Checks a switchover/failover against the cluster as read; the error is the 412 message.
fn check_request(
    snap: &ClusterSnapshot,
    kind: Kind,
    leader: Option<&str>,
    candidate: Option<&str>,
) -> Result<(), String> {
    let current = snap.leader();
    if let Some(leader) = leader {
        if current.as_deref() != Some(leader) {
            let actual = current.as_deref().unwrap_or("nobody (the leader lock is free)");
            return Err(format!("leader name does not match: {leader} is not the leader, {actual} is"));
        }
    }
    match candidate {
        Some(c) => {
            let m = member(snap, c).ok_or_else(|| format!("candidate {c} is not a member of the cluster"))?;
            if current.as_deref() == Some(c) {
                return Err(format!("candidate {c} is already the leader"));
            }
            if let Some(standbys) = sync_standbys(snap) {
                if !crate::ha::is_named(&standbys, c) {
                    // Patroni's answer: only a synchronous standby has every acknowledged
                    // transaction.
                    return Err(format!(
                        "candidate name does not match with sync_standby: synchronous mode is on and {c} is not \
                         a synchronous standby ({})",
                        standbys.join(", ")
                    ));
                }
            }
            unfit(c, &m).map_or(Ok(()), Err)
        }
        None => {
            // In synchronous mode only a synchronous standby can take over.
            let sync = sync_standbys(snap);
            let may = |n: &str| sync.as_ref().is_none_or(|s| crate::ha::is_named(s, n));
            let others = member_names(snap).filter(|n| current.as_deref() != Some(*n) && may(n));
            if others.filter_map(|n| member(snap, n).map(|m| (n, m))).any(|(n, m)| unfit(n, &m).is_none()) {
                Ok(())
            } else if sync.is_some() {
                Err(format!(
                    "{} is not possible: synchronous mode is on and no synchronous standby is running and eligible",
                    kind.noun()
                ))
            } else {
                Err(format!("{} is not possible: no other member is running and eligible", kind.noun()))
            }
        }
    }
}

/// Waits for a leader other than `old`: 200 when it came, 503 when the request vanished without
/// one or the wait ran out (the switchover may still complete later).
async fn await_new_leader(
    state: &ApiState,
    kind: Kind,
    old: Option<String>,
    candidate: Option<&str>,
) -> (StatusCode, String) {
    let deadline = Instant::now() + state.switchover_wait;
    loop {
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now()))).await;
        if let Ok(snap) = state.snapshot().await {
            match snap.leader() {
                Some(new) if Some(&new) != old.as_ref() => {
                    let message = match candidate {
                        Some(c) if c != new => format!("{}ed over to \"{new}\" instead of \"{c}\"", kind.title()),
                        _ => format!("Successfully {} over to \"{new}\"", kind.past()),
                    };
                    return (StatusCode::OK, message);
                }
                _ if snap.get(&ClusterKey::Failover).is_none() => {
                    return (StatusCode::SERVICE_UNAVAILABLE, format!("{} failed", kind.title()))
                }
                _ => {}
            }
        }
        if Instant::now() >= deadline {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{} status unknown", kind.title()));
        }
    }
}

async fn manual_failover(state: ApiState, mut kind: Kind, body: &[u8]) -> Result<(StatusCode, String), ApiError> {
    let req: SwitchoverBody = parse_body(body)?;
    let (leader, candidate) = (req.leader.as_deref(), req.candidate.as_deref());
    match kind {
        Kind::Failover if candidate.is_none() => {
            return Err(ApiError::BadRequest("Failover could be performed only to a specific candidate".into()))
        }
        Kind::Switchover if leader.is_none() => {
            return Err(ApiError::BadRequest("Switchover could be performed only from a specific leader".into()))
        }
        _ => {}
    }
    if kind == Kind::Failover && req.scheduled_at.is_some() {
        return Err(ApiError::BadRequest("Failover can't be scheduled".into()));
    }
    if kind == Kind::Failover && leader.is_some() {
        // As Patroni: a failover naming the leader is a switchover.
        kind = Kind::Switchover;
    }
    if leader.is_some() && leader == candidate {
        return Err(ApiError::BadRequest("Switchover target and source are the same".into()));
    }
    let scheduled_at = match req.scheduled_at.as_deref() {
        None => None,
        Some(text) => {
            let at = Timestamp::parse(text).map_err(|e| match e {
                TimestampError::NoTimezone => ApiError::BadRequest(format!("scheduled_at {text:?}: {e}")),
                TimestampError::Unparseable => ApiError::Unprocessable(format!("scheduled_at {text:?}: {e}")),
            })?;
            if at < Timestamp::now() {
                return Err(ApiError::Unprocessable(format!("Cannot schedule {} in the past", kind.noun())));
            }
            Some(at)
        }
    };
    let snap = state.snapshot().await?;
    let paused = config_of(&snap)?.get("pause") == Some(&json!(true));
    if paused && scheduled_at.is_some() {
        return Err(ApiError::BadRequest(format!("Can't schedule {} in the paused state", kind.noun())));
    }
    if paused && candidate.is_none() {
        return Err(ApiError::BadRequest(
            "Switchover is possible only to a specific candidate in a paused state".into(),
        ));
    }
    check_request(&snap, kind, leader, candidate).map_err(ApiError::PreconditionFailed)?;

    // Written through the typed value, so the candidate lands in `member`, the field Patroni reads.
    let value = FailoverValue {
        leader: leader.map(str::to_string),
        candidate: candidate.map(str::to_string),
        scheduled_at: scheduled_at.map(|at| at.to_string()),
        ..FailoverValue::default()
    };
    let expected = match snap.get(&ClusterKey::Failover) {
        Some(kv) => Expected::Revision(kv.mod_revision),
        None => Expected::Absent,
    };
    let bytes = value.to_json();
    state
        .dcs_call(state.dcs.write(ClusterKey::Failover, &bytes, expected))
        .await
        .map_err(|e| ApiError::Unavailable(format!("failed to write failover key into DCS: {e}")))?;
    tracing::info!(
        leader = leader.unwrap_or("-"),
        candidate = candidate.unwrap_or("-"),
        scheduled_at = req.scheduled_at.as_deref().unwrap_or("-"),
        "{} requested through the REST API",
        kind.noun()
    );
    if scheduled_at.is_some() {
        return Ok((StatusCode::ACCEPTED, format!("{} scheduled", kind.title())));
    }
    Ok(await_new_leader(&state, kind, snap.leader(), candidate).await)
}

/// `POST /switchover` {leader, candidate?, scheduled_at?}.
pub(crate) async fn post_switchover(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, String), ApiError> {
    manual_failover(state, Kind::Switchover, &body).await
}

/// `POST /failover` {candidate}: works without a leader.
pub(crate) async fn post_failover(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, String), ApiError> {
    manual_failover(state, Kind::Failover, &body).await
}

/// `DELETE /switchover`: cancels a scheduled switchover.
pub(crate) async fn delete_switchover(State(state): State<ApiState>) -> Result<(StatusCode, String), ApiError> {
    let snap = state.snapshot().await?;
    let scheduled =
        |value: &[u8]| FailoverValue::parse(value).is_ok_and(|f| f.scheduled_at.is_some_and(|s| !s.is_empty()));
    let Some(kv) = snap.get(&ClusterKey::Failover).filter(|kv| scheduled(&kv.value)) else {
        return Err(ApiError::NotFound("no switchover is scheduled".into()));
    };
    state
        .dcs_call(state.dcs.delete(ClusterKey::Failover, Expected::Revision(kv.mod_revision)))
        .await
        .map_err(|e| ApiError::Conflict(format!("could not delete the scheduled switchover: {e}")))?;
    tracing::info!("scheduled switchover cancelled through the REST API");
    Ok((StatusCode::OK, "scheduled switchover deleted".into()))
}

/// Hands a command to the runtime without waiting: a full queue or a stopped runtime is a 503.
fn queue(state: &ApiState, command: ApiCommand) -> Result<(), ApiError> {
    state.commands.try_send(command).map_err(|e| match e {
        TrySendError::Full(_) => ApiError::Unavailable("an earlier request is still queued; retry in a moment".into()),
        TrySendError::Closed(_) => ApiError::Unavailable("the agent is not taking requests (shutting down?)".into()),
    })
}

/// The body of POST /restart, with Patroni's conditions.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RestartBody {
    /// Restart only if a parameter change is waiting for one.
    restart_pending: Option<bool>,
    /// Restart only if the node has this role.
    role: Option<String>,
    /// Restart only if the running server is older than this version (e.g. "15.2").
    postgres_version: Option<String>,
    /// Seconds PostgreSQL may take to accept connections again.
    timeout: Option<Value>,
    schedule: Option<String>,
}

/// "15.2" -> 150002, "9.6.24" -> 90624, as PostgreSQL's server_version_num.
fn version_num(v: &str) -> Option<u32> {
    let parts: Vec<u32> = v.trim().split('.').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    match parts.as_slice() {
        [major, minor] if *major >= 10 => Some(major * 10000 + minor),
        [major, minor, patch] if *major < 10 => Some(major * 10000 + minor * 100 + patch),
        _ => None,
    }
}

/// Seconds from a number or a string with an optional unit (`30`, `"30s"`, `"2min"`, `"1h"`).
fn timeout_secs(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let n: u64 = s[..split].parse().ok()?;
            let factor = match s[split..].trim() {
                "" | "s" => 1,
                "min" => 60,
                "h" => 3600,
                _ => return None,
            };
            n.checked_mul(factor)
        }
        _ => None,
    }
}

/// `POST /restart`: queues a restart if the request's conditions hold for this node.
pub(crate) async fn post_restart(State(state): State<ApiState>, body: Bytes) -> Result<(StatusCode, String), ApiError> {
    let req: RestartBody = parse_optional_body(&body)?;
    if req.schedule.is_some() {
        return Err(ApiError::BadRequest(
            "scheduled restarts are not supported by pgha yet; restart now or schedule the call".into(),
        ));
    }
    if let Some(role) = req.role.as_deref() {
        if !matches!(role, "primary" | "master" | "replica" | "standby_leader") {
            return Err(ApiError::BadRequest(
                "PostgreSQL role should be either primary, standby_leader, or replica".into(),
            ));
        }
    }
    let wanted_version = match req.postgres_version.as_deref() {
        None => None,
        Some(v) => {
            Some(version_num(v).ok_or_else(|| ApiError::BadRequest(format!("{v:?} is not a PostgreSQL version")))?)
        }
    };
    if req.timeout.as_ref().is_some_and(|t| matches!(timeout_secs(t), None | Some(0))) {
        return Err(ApiError::BadRequest("Timeout should be a positive number of seconds".into()));
    }
    let node = state.node();
    let role_ok = match req.role.as_deref() {
        Some("primary" | "master") => node.role == NodeRole::Primary,
        Some("replica") => node.role == NodeRole::Replica,
        Some(_) => false,
        None => true,
    };
    let pending_ok = req.restart_pending != Some(true) || node.pending_restart;
    let version_ok = match (wanted_version, node.server_version) {
        (Some(want), Some(have)) => have < want,
        (Some(_), None) => false,
        (None, _) => true,
    };
    if !(role_ok && pending_ok && version_ok) {
        return Err(ApiError::Unavailable("restart conditions are not satisfied".into()));
    }
    queue(&state, ApiCommand::Restart)?;
    tracing::info!("PostgreSQL restart requested through the REST API");
    Ok((StatusCode::ACCEPTED, "restart scheduled".into()))
}

/// `DELETE /restart`: pgha schedules no restarts, so there is never one to cancel.
pub(crate) async fn delete_restart() -> (StatusCode, &'static str) {
    (StatusCode::NOT_FOUND, "no restarts are scheduled")
}

/// `POST /reload`.
pub(crate) async fn post_reload(State(state): State<ApiState>) -> Result<(StatusCode, String), ApiError> {
    queue(&state, ApiCommand::Reload)?;
    tracing::info!("configuration reload requested through the REST API");
    Ok((StatusCode::ACCEPTED, "reload scheduled".into()))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReinitializeBody {
    /// Cancel whatever the runtime is doing with PostgreSQL first.
    force: Option<bool>,
    /// Accepted for Patroni clients; pgha always clones from the leader.
    #[serde(alias = "from-leader")]
    from_leader: Option<bool>,
}

/// How long a request that starts a job in the background (`POST /reinitialize`, `/restore`,
/// `/backup`) waits for the runtime to take it (it does between HA ticks); after that nothing
/// is started and the client is told to retry.
const JOB_ANSWER: Duration = Duration::from_secs(20);

/// Hands a job to the runtime and passes its answer on: 200 `"<what> started"`, or 503 with
/// the reason it did not start.
async fn start_job(
    state: &ApiState,
    what: &str,
    command: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> ApiCommand,
) -> Result<(StatusCode, String), ApiError> {
    let (started, answer) = tokio::sync::oneshot::channel();
    queue(state, command(started))?;
    tracing::info!("{what} requested through the REST API");
    match tokio::time::timeout(JOB_ANSWER, answer).await {
        Ok(Ok(Ok(()))) => Ok((StatusCode::OK, format!("{what} started"))),
        Ok(Ok(Err(why))) => Err(ApiError::Unavailable(why)),
        Ok(Err(_)) => Err(ApiError::Unavailable("the agent dropped the request (shutting down?)".into())),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the agent did not take the request within {JOB_ANSWER:?} (busy with an HA action); \
             nothing was started, retry"
        ))),
    }
}

/// 503 unless this node is the running primary holding the leader lock, naming the leader.
fn leader_only(state: &ApiState, what: &str) -> Result<(), ApiError> {
    let node = state.node();
    if node.holds_lock && node.role == NodeRole::Primary {
        return Ok(());
    }
    let leader = node.leader.map(|l| format!("; the leader is {l}")).unwrap_or_default();
    Err(ApiError::Unavailable(format!("I am not the leader: send the {what} to the leader's API{leader}")))
}

/// `POST /reinitialize` {force?}: replicas only. 200 "reinitialize started" once the clone runs in
/// the background; 503 with the reason otherwise (one already running and no force, no leader).
pub(crate) async fn post_reinitialize(
    State(state): State<ApiState>,
    body: Bytes,
) -> Result<(StatusCode, String), ApiError> {
    let req: ReinitializeBody = parse_optional_body(&body)?;
    let _ = req.from_leader;
    let node = state.node();
    if node.holds_lock || node.role == NodeRole::Primary {
        return Err(ApiError::Unavailable("I am the leader, can not reinitialize".into()));
    }
    let force = req.force.unwrap_or(false);
    start_job(&state, "reinitialize", |started| ApiCommand::Reinitialize { force, started }).await
}

/// `POST /restore` {target_time | target_lsn | target_xid | target_name | immediate, set?}: the
/// leader only. 200 "restore started" once the restore runs in the background (`GET /patroni`
/// shows its progress as `restore`); 400 without exactly one target; 503 with the reason
/// otherwise (not the leader, no backup repository, one already running, ...).
pub(crate) async fn post_restore(State(state): State<ApiState>, body: Bytes) -> Result<(StatusCode, String), ApiError> {
    let request: super::RestoreRequest = parse_body(&body)?;
    if request.as_bootstrap().targets() != 1 {
        return Err(ApiError::BadRequest(
            "give exactly one recovery target: target_time, target_lsn, target_xid, target_name or immediate".into(),
        ));
    }
    leader_only(&state, "restore")?;
    start_job(&state, "restore", |started| ApiCommand::Restore { request, started }).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// `full` (default) or `incr`.
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// `POST /backup` {type?}: a base backup of the primary into the `[backup]` repository, in the
/// background (`GET /patroni` shows it as `backup`). 200 "backup started"; 400 for a type other
/// than full or incr; 503 with the reason (not the leader, no repository, one running).
pub(crate) async fn post_backup(State(state): State<ApiState>, body: Bytes) -> Result<(StatusCode, String), ApiError> {
    let req: BackupBody = parse_optional_body(&body)?;
    let kind = req.kind.unwrap_or_else(|| "full".into());
    if kind != "full" && kind != "incr" {
        return Err(ApiError::BadRequest(format!("type {kind:?}: expected \"full\" or \"incr\"")));
    }
    leader_only(&state, "backup")?;
    start_job(&state, "backup", |started| ApiCommand::Backup { kind, started }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_timeouts_parse_like_patroni() {
        assert_eq!(version_num("15.2"), Some(150002));
        assert_eq!(version_num("9.6.24"), Some(90624));
        assert_eq!(version_num("15"), None);
        assert_eq!(version_num("fifteen"), None);
        assert_eq!(timeout_secs(&json!(30)), Some(30));
        assert_eq!(timeout_secs(&json!("2min")), Some(120));
        assert_eq!(timeout_secs(&json!("soon")), None);
        assert_eq!(timeout_secs(&json!(-1)), None);
    }
}
