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
        let wake = next_wake(shared.clock().next_deadline(), &proposed, Instant::now());
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// When to look again: at the next lease deadline still ahead, at the latest after `TICK`. A
/// deadline already passed belongs to a lease whose revoke is proposed and not yet applied (it
/// can take an election or longer without a quorum): look again when it is due to be proposed
/// anew, not at once, or the loop spins without ever sleeping.
fn next_wake(next_deadline: Option<Instant>, proposed: &BTreeMap<i64, Instant>, now: Instant) -> Instant {
    let mut wake = now + TICK;
    if let Some(deadline) = next_deadline.filter(|d| *d > now) {
        wake = wake.min(deadline);
    }
    for at in proposed.values() {
        wake = wake.min(*at + REPROPOSE_AFTER);
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_expired_lease_awaiting_its_revoke_does_not_wake_the_loop_at_once() {
        let now = Instant::now();
        let passed = now - Duration::from_millis(5);
        let proposed = BTreeMap::from([(1, now)]);
        // Before the fix this returned `passed`: the loop never slept while a revoke was pending.
        assert_eq!(next_wake(Some(passed), &proposed, now), now + TICK);
        assert_eq!(next_wake(Some(now + Duration::from_millis(30)), &proposed, now), now + Duration::from_millis(30));
        let long_ago = BTreeMap::from([(1, now - REPROPOSE_AFTER + Duration::from_millis(10))]);
        assert_eq!(next_wake(Some(passed), &long_ago, now), now + Duration::from_millis(10));
        assert_eq!(next_wake(None, &BTreeMap::new(), now), now + TICK);
    }
}
