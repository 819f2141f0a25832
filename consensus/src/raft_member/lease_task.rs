//! The leader's lease duty: while this member leads, expire leases whose deadline passed by
//! proposing `LeaseRevoke` through Raft. On becoming leader it first waits for a linearizable
//! barrier (every revoke or grant of earlier leaders is applied here), then re-arms every lease
//! with its full TTL, and only then answers keep-alives. Owns nothing but that loop: the clock is
//! the pure `LeaseClock`, driven with tokio's clock (a paused tokio clock drives it in tests).

use super::state_machine::Shared;
use super::types::TypeConfig;
use crate::keyspace::Command;
use openraft::{Raft, ServerState};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest sleep between looks at the clock and the Raft state.
const TICK: Duration = Duration::from_millis(100);
/// A revoke proposal that has not been applied after this long is proposed again.
const REPROPOSE_AFTER: Duration = Duration::from_millis(500);

/// Runs until the Raft node shuts down.
pub async fn run(raft: Raft<TypeConfig>, shared: Arc<Shared>, id: u64, op_timeout: Duration) {
    let mut metrics = raft.metrics();
    // The term in which our clock was armed; None while not leading.
    let mut armed_term: Option<u64> = None;
    let mut proposed: BTreeMap<i64, Instant> = BTreeMap::new();
    loop {
        let (leading, term) = {
            let m = metrics.borrow_and_update();
            (m.state == ServerState::Leader && m.current_leader == Some(id), m.current_term)
        };
        if armed_term.is_some() && (!leading || armed_term != Some(term)) {
            shared.clock().on_lose_leadership();
            armed_term = None;
            proposed.clear();
            tracing::info!(term, "raft: no longer leading; lease deadlines paused");
        }
        if leading && armed_term.is_none() {
            match tokio::time::timeout(op_timeout, raft.ensure_linearizable()).await {
                Ok(Ok(_)) => {
                    shared.clock().on_become_leader(Instant::now());
                    armed_term = Some(term);
                    tracing::info!(term, "raft: leading; every lease re-armed with its full TTL");
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "raft: leadership not confirmed yet"),
                Err(_) => tracing::debug!("raft: leadership not confirmed within {op_timeout:?}"),
            }
        }
        if armed_term.is_some() {
            let now = Instant::now();
            let expired = shared.clock().expired(now);
            proposed.retain(|lease, _| expired.contains(lease));
            for lease in expired {
                if proposed.get(&lease).is_some_and(|at| now.duration_since(*at) < REPROPOSE_AFTER) {
                    continue;
                }
                proposed.insert(lease, now);
                tracing::debug!(lease, "raft: lease expired; proposing its revoke");
                let raft = raft.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(op_timeout, raft.client_write(Command::LeaseRevoke { lease })).await;
                });
            }
        }
        let wake = shared.clock().next_deadline().map_or(Instant::now() + TICK, |d| d.min(Instant::now() + TICK));
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}
