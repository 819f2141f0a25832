//! Lease deadlines on the Raft leader's monotonic clock. Pure: the caller passes `now`.
//!
//! Every member follows the granted and revoked leases (`observe`), but only the leader arms
//! deadlines, accepts keep-alives and reports expired leases, for which it proposes
//! `Command::LeaseRevoke`. A new leader first extends every lease by its full TTL
//! (`on_become_leader`), as etcd does, so a leader change never expires a lease early.
//!
//! Safety rules for the caller: serve keep-alives only after a linearizable barrier on the new
//! leader (openraft's `ensure_linearizable`), so that revokes proposed by an earlier leader have
//! been applied and observed here; and let clients count their hold from before they sent the
//! keep-alive. A keep-alive for a lease whose deadline has passed is refused (its revoke may be in
//! flight), so a client is never told it holds a lease that is about to be revoked.

use super::LeaseChange;
use crate::kv::LeaseId;
use std::collections::BTreeMap;
use std::ops::Add;
use std::time::{Duration, Instant};

/// Why a keep-alive was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LeaseClockError {
    /// Only the Raft leader keeps leases alive: forward the request to it.
    #[error("not the Raft leader: lease keep-alives go to the leader")]
    NotLeader,
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The deadline has passed; the lease is being revoked.
    #[error("lease {0:x} has expired")]
    Expired(LeaseId),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Timer<I> {
    ttl: Duration,
    /// Armed only while leading.
    deadline: Option<I>,
}

/// Per-lease deadlines. `I` is the monotonic instant type (`std::time::Instant`; tests use ticks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClock<I = Instant> {
    timers: BTreeMap<LeaseId, Timer<I>>,
    leading: bool,
}

impl<I> Default for LeaseClock<I> {
    fn default() -> Self {
        LeaseClock { timers: BTreeMap::new(), leading: false }
    }
}

impl<I: Copy + Ord + Add<Duration, Output = I>> LeaseClock<I> {
    /// A clock on a member that does not lead and knows no lease.
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_leader(&self) -> bool {
        self.leading
    }

    /// Follows the applied log: a lease granted while leading gets its deadline at `now + ttl`.
    pub fn observe(&mut self, changes: &[LeaseChange], now: I) {
        for change in changes {
            match *change {
                LeaseChange::Granted { lease, ttl } => {
                    let deadline = self.leading.then(|| now + ttl);
                    self.timers.insert(lease, Timer { ttl, deadline });
                }
                LeaseChange::Revoked { lease } => {
                    self.timers.remove(&lease);
                }
            }
        }
    }

    /// Replaces the leases followed (after installing a snapshot). Leases already followed keep
    /// their deadlines; new ones are armed at `now + ttl` when leading.
    pub fn track_all(&mut self, leases: impl IntoIterator<Item = (LeaseId, Duration)>, now: I) {
        let leading = self.leading;
        let mut old = std::mem::take(&mut self.timers);
        for (lease, ttl) in leases {
            let deadline = old.remove(&lease).and_then(|t| t.deadline).or_else(|| leading.then(|| now + ttl));
            self.timers.insert(lease, Timer { ttl, deadline });
        }
    }

    /// This member became the Raft leader at `now`: every lease gets at least its full TTL from
    /// now before it can expire (deadlines never move earlier).
    pub fn on_become_leader(&mut self, now: I) {
        self.leading = true;
        for timer in self.timers.values_mut() {
            let fresh = now + timer.ttl;
            timer.deadline = Some(timer.deadline.map_or(fresh, |d| d.max(fresh)));
        }
    }

    /// This member stopped leading: no deadline runs until it leads again.
    pub fn on_lose_leadership(&mut self) {
        self.leading = false;
        for timer in self.timers.values_mut() {
            timer.deadline = None;
        }
    }

    /// Resets a lease's deadline to `now + ttl`; returns the TTL granted.
    pub fn keep_alive(&mut self, lease: LeaseId, now: I) -> Result<Duration, LeaseClockError> {
        if !self.leading {
            return Err(LeaseClockError::NotLeader);
        }
        let timer = self.timers.get_mut(&lease).ok_or(LeaseClockError::LeaseNotFound(lease))?;
        match timer.deadline {
            Some(deadline) if deadline <= now => Err(LeaseClockError::Expired(lease)),
            current => {
                let fresh = now + timer.ttl;
                timer.deadline = Some(current.map_or(fresh, |d| d.max(fresh)));
                Ok(timer.ttl)
            }
        }
    }

    /// Leases whose deadline is at or before `now`, in id order; empty unless leading. A lease
    /// stays listed until its revoke is observed, so a lost proposal is proposed again.
    pub fn expired(&self, now: I) -> Vec<LeaseId> {
        if !self.leading {
            return Vec::new();
        }
        self.timers.iter().filter(|(_, t)| t.deadline.is_some_and(|d| d <= now)).map(|(id, _)| *id).collect()
    }

    /// When the lease expires, if a deadline is armed.
    pub fn deadline(&self, lease: LeaseId) -> Option<I> {
        self.timers.get(&lease)?.deadline
    }

    /// The earliest armed deadline: when the leader should next look for expired leases.
    pub fn next_deadline(&self) -> Option<I> {
        self.timers.values().filter_map(|t| t.deadline).min()
    }
}
