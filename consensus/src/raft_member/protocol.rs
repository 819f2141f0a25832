//! The DCS client protocol of the built-in Raft backend: the JSON requests a `RaftStore` (or a
//! member forwarding to the Raft leader) sends over a member's authenticated listener, and the
//! replies. Owns the message shapes and which failures leave a write's outcome unknown.

use crate::kv::{LeaseId, RangeResponse, Revision, Txn, TxnResponse, WatchEvent};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A request and whether a member already forwarded it (a forwarded request is never forwarded
/// again, so two members that disagree about the leader cannot bounce it between them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub forwarded: bool,
    pub request: Request,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Linearizable read of every key under the prefix (served by the Raft leader).
    Range {
        prefix: String,
    },
    Txn(Txn),
    LeaseGrant {
        ttl: Duration,
    },
    /// Answered by the Raft leader from its lease clock; not replicated.
    LeaseKeepAlive {
        lease: LeaseId,
    },
    LeaseRevoke {
        lease: LeaseId,
    },
    /// Long poll for events under the prefix from revision `from`, served by the member asked
    /// from what it has applied; waits up to `wait` for an event.
    Watch {
        prefix: String,
        from: Revision,
        wait: Duration,
    },
    /// The member's view of the group (served locally).
    Status,
    /// Adds a member as a non-voting learner and waits until it has caught up.
    AddLearner {
        name: String,
        addr: String,
    },
    /// Makes a member already known (a learner) a voter too, keeping the other voters.
    AddVoter {
        name: String,
    },
    /// Makes exactly these members (by name, each already known) the voters.
    ChangeMembership {
        voters: Vec<String>,
    },
    /// Removes a member (voter or learner) from the group.
    RemoveMember {
        name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    Range(RangeResponse),
    Txn(TxnResponse),
    LeaseGranted {
        lease: LeaseId,
    },
    KeptAlive {
        ttl: Duration,
    },
    Revoked,
    Events {
        events: Vec<WatchEvent>,
        next: Revision,
    },
    /// The member no longer holds events from the revision asked: re-read, then poll from `from`.
    Compacted {
        from: Revision,
    },
    Status(MemberStatus),
    Failed(ClientError),
}

/// Why a request failed, and whether it may have taken effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ClientError {
    /// Not served here and not applied: ask the leader (its address, if known).
    #[error("not the Raft leader (leader: {})", leader.as_deref().unwrap_or("unknown"))]
    NotLeader { leader: Option<String> },
    /// No quorum or no answer in time: a write's outcome is unknown.
    #[error("{0}")]
    Unavailable(String),
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// Refused and not applied (invalid request).
    #[error("{0}")]
    Rejected(String),
}

/// One member's view of the Raft group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberStatus {
    pub name: String,
    pub id: u64,
    /// Leader, Follower, Candidate, Learner or Shutdown.
    pub state: String,
    pub term: u64,
    /// The leader's name, if this member knows one.
    pub leader: Option<String>,
    pub last_applied_index: Option<u64>,
    pub revision: Revision,
    pub voters: Vec<String>,
    pub learners: Vec<String>,
}
