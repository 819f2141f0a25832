//! The replicated key space the built-in Raft backend applies, with etcd's semantics (which the
//! etcd backend offers natively): revisioned keys, leases that delete their keys when revoked,
//! compare-and-set transactions, prefix reads, and the watch events each command produced.
//!
//! Applying a command is deterministic and never reads a clock: every member applies the same log
//! to the same state. Lease expiry is decided outside, by the Raft leader's `LeaseClock`, which
//! proposes `Command::LeaseRevoke` for leases whose deadline passed.

mod lease_clock;
mod snapshot;
mod txn;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

pub use lease_clock::{LeaseClock, LeaseClockError};
pub use snapshot::{KeyspaceSnapshot, LeaseRecord, SnapshotError, SNAPSHOT_FORMAT};

use crate::kv::{KeyValue, LeaseId, RangeResponse, Revision, Txn, TxnResponse, WatchEvent};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The longest lease TTL granted (etcd's limit); keeps every `now + ttl` far from overflow.
pub const MAX_LEASE_TTL: Duration = Duration::from_secs(9_000_000_000);

/// One entry of the replicated log: a change to the key space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Writes `key`; attaches it to `lease` (0: no lease), detaching it from any earlier one.
    Put {
        key: String,
        value: Vec<u8>,
        lease: LeaseId,
    },
    Delete {
        key: String,
    },
    /// If every compare holds, runs `success`, else `failure`, atomically at one revision.
    Txn(Txn),
    /// Creates a lease; the key space assigns its id.
    LeaseGrant {
        ttl: Duration,
    },
    /// Deletes the lease and every key attached to it, at one revision. Proposed by a client
    /// giving its lease up, or by the Raft leader when the lease's deadline passed.
    LeaseRevoke {
        lease: LeaseId,
    },
}

/// What a successfully applied command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Put {
        revision: Revision,
        prev: Option<KeyValue>,
    },
    Delete {
        deleted: Option<KeyValue>,
    },
    /// `succeeded: false` is the typed failure of a compare-and-set whose compares did not hold
    /// (a stale revision, a key that exists): the failure branch ran, the success branch did not.
    Txn(TxnResponse),
    LeaseGranted {
        lease: LeaseId,
        ttl: Duration,
    },
    LeaseRevoked {
        lease: LeaseId,
        deleted_keys: Vec<String>,
    },
}

/// A command the key space refused; nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ApplyError {
    /// The lease does not exist (never granted, expired, or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    #[error("lease TTL {ttl:?} is out of range: it must be above zero and at most {MAX_LEASE_TTL:?}")]
    InvalidTtl { ttl: Duration },
    #[error("key {0:?} is written twice in one transaction")]
    DuplicateKey(String),
    #[error("a key must not be empty")]
    EmptyKey,
}

/// A lease granted or removed by a command: the `LeaseClock` follows these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseChange {
    Granted { lease: LeaseId, ttl: Duration },
    Revoked { lease: LeaseId },
}

/// The result of applying one command, the Raft state machine's response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The key space's revision after the command.
    pub revision: Revision,
    pub outcome: Result<Outcome, ApplyError>,
    /// Changes to keys, in order, for watches (each with the previous key-value).
    pub events: Vec<WatchEvent>,
    pub lease_changes: Vec<LeaseChange>,
}

/// A lease and the keys attached to it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Lease {
    ttl: Duration,
    keys: BTreeSet<String>,
}

/// The whole replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keyspace {
    /// Incremented once by every command that changes a key.
    revision: Revision,
    keys: BTreeMap<String, KeyValue>,
    leases: BTreeMap<LeaseId, Lease>,
    /// The id of the last lease granted: ids are never reused.
    last_lease_id: LeaseId,
}

impl Keyspace {
    pub fn new() -> Keyspace {
        Keyspace::default()
    }

    pub fn revision(&self) -> Revision {
        self.revision
    }

    pub fn get(&self, key: &str) -> Option<&KeyValue> {
        self.keys.get(key)
    }

    /// Every key starting with `prefix`, in key order, at the current revision.
    pub fn range_prefix(&self, prefix: &str) -> RangeResponse {
        let kvs = self
            .keys
            .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| kv.clone())
            .collect();
        RangeResponse { kvs, revision: self.revision }
    }

    /// The TTL of a lease, if it exists.
    pub fn lease_ttl(&self, lease: LeaseId) -> Option<Duration> {
        self.leases.get(&lease).map(|l| l.ttl)
    }

    /// Every lease with its TTL, in id order (to rebuild a `LeaseClock` after a restore).
    pub fn leases(&self) -> impl Iterator<Item = (LeaseId, Duration)> + '_ {
        self.leases.iter().map(|(id, l)| (*id, l.ttl))
    }

    /// The keys attached to a lease, in key order.
    pub fn lease_keys(&self, lease: LeaseId) -> impl Iterator<Item = &str> + '_ {
        self.leases.get(&lease).into_iter().flat_map(|l| l.keys.iter().map(String::as_str))
    }

    /// Applies one command. Deterministic: the same commands from the same state give the same
    /// state and the same `Applied`, on every member. A refused command changes nothing.
    pub fn apply(&mut self, command: &Command) -> Applied {
        let mut events = Vec::new();
        let mut lease_changes = Vec::new();
        let outcome = match command {
            Command::Put { key, value, lease } => {
                let op = crate::kv::TxnOp::Put { key: key.clone(), value: value.clone(), lease: *lease };
                self.run_txn(&Txn { success: vec![op], ..Txn::default() }, &mut events)
                    .map(|_| Outcome::Put { revision: self.revision, prev: events.first().and_then(previous).cloned() })
            }
            Command::Delete { key } => {
                let op = crate::kv::TxnOp::Delete { key: key.clone() };
                self.run_txn(&Txn { success: vec![op], ..Txn::default() }, &mut events)
                    .map(|_| Outcome::Delete { deleted: events.first().and_then(previous).cloned() })
            }
            Command::Txn(txn) => self.run_txn(txn, &mut events).map(Outcome::Txn),
            Command::LeaseGrant { ttl } => self.grant(*ttl).map(|lease| {
                lease_changes.push(LeaseChange::Granted { lease, ttl: *ttl });
                Outcome::LeaseGranted { lease, ttl: *ttl }
            }),
            Command::LeaseRevoke { lease } => self.revoke(*lease, &mut events).map(|deleted_keys| {
                lease_changes.push(LeaseChange::Revoked { lease: *lease });
                Outcome::LeaseRevoked { lease: *lease, deleted_keys }
            }),
        };
        Applied { revision: self.revision, outcome, events, lease_changes }
    }

    fn grant(&mut self, ttl: Duration) -> Result<LeaseId, ApplyError> {
        if ttl.is_zero() || ttl > MAX_LEASE_TTL {
            return Err(ApplyError::InvalidTtl { ttl });
        }
        self.last_lease_id += 1;
        let id = self.last_lease_id;
        self.leases.insert(id, Lease { ttl, keys: BTreeSet::new() });
        Ok(id)
    }

    fn revoke(&mut self, lease: LeaseId, events: &mut Vec<WatchEvent>) -> Result<Vec<String>, ApplyError> {
        let Some(removed) = self.leases.remove(&lease) else {
            return Err(ApplyError::LeaseNotFound(lease));
        };
        let revision = self.revision + 1;
        let events_before = events.len();
        for key in &removed.keys {
            if let Some(prev) = self.keys.remove(key) {
                events.push(WatchEvent::Delete { key: key.clone(), revision, prev: Some(prev) });
            }
        }
        if events.len() > events_before {
            self.revision = revision;
        }
        Ok(removed.keys.into_iter().collect())
    }
}

fn previous(event: &WatchEvent) -> Option<&KeyValue> {
    match event {
        WatchEvent::Put { prev, .. } | WatchEvent::Delete { prev, .. } => prev.as_ref(),
        WatchEvent::Resync { .. } => None,
    }
}
