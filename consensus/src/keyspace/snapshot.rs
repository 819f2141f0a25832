//! The whole key space as one serde value, for Raft snapshots: taken from a live `Keyspace` and
//! restored into one only after checking it is consistent (a corrupt or foreign snapshot is a
//! typed error, not a state that breaks later).

use super::{Keyspace, Lease, MAX_LEASE_TTL};
use crate::kv::{KeyValue, LeaseId, Revision};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The snapshot layout version this code writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 1;

/// A lease as stored in a snapshot (its keys are the keys that name it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub ttl: Duration,
}

/// Everything needed to rebuild a `Keyspace` exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyspaceSnapshot {
    pub format: u32,
    pub revision: Revision,
    pub last_lease_id: LeaseId,
    /// In key order.
    pub keys: Vec<KeyValue>,
    /// In id order.
    pub leases: Vec<LeaseRecord>,
}

/// Why a snapshot cannot be restored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format {0} is not supported (this version reads format {SNAPSHOT_FORMAT})")]
    UnknownFormat(u32),
    #[error("key {0:?} appears twice in the snapshot")]
    DuplicateKey(String),
    #[error("lease {0:x} appears twice in the snapshot")]
    DuplicateLease(LeaseId),
    #[error("key {key:?} is attached to lease {lease:x}, which the snapshot does not hold")]
    KeyOnUnknownLease { key: String, lease: LeaseId },
    #[error("key {key:?} has revisions (create {create_revision}, mod {mod_revision}, version {version}) that do not fit store revision {revision}")]
    BadRevisions { key: String, create_revision: Revision, mod_revision: Revision, version: i64, revision: Revision },
    #[error("lease {lease:x} is invalid: id above the last granted id {last_lease_id:x}, or TTL out of range")]
    BadLease { lease: LeaseId, last_lease_id: LeaseId },
}

impl Keyspace {
    pub fn snapshot(&self) -> KeyspaceSnapshot {
        KeyspaceSnapshot {
            format: SNAPSHOT_FORMAT,
            revision: self.revision,
            last_lease_id: self.last_lease_id,
            keys: self.keys.values().cloned().collect(),
            leases: self.leases.iter().map(|(id, l)| LeaseRecord { id: *id, ttl: l.ttl }).collect(),
        }
    }

    /// Rebuilds the key space a snapshot describes, after checking that it is consistent.
    pub fn restore(snapshot: KeyspaceSnapshot) -> Result<Keyspace, SnapshotError> {
        if snapshot.format != SNAPSHOT_FORMAT {
            return Err(SnapshotError::UnknownFormat(snapshot.format));
        }
        let mut leases = BTreeMap::new();
        for record in snapshot.leases {
            let valid_id = record.id > 0 && record.id <= snapshot.last_lease_id;
            if !valid_id || record.ttl.is_zero() || record.ttl > MAX_LEASE_TTL {
                return Err(SnapshotError::BadLease { lease: record.id, last_lease_id: snapshot.last_lease_id });
            }
            let lease = Lease { ttl: record.ttl, keys: BTreeSet::new() };
            if leases.insert(record.id, lease).is_some() {
                return Err(SnapshotError::DuplicateLease(record.id));
            }
        }
        let mut keys = BTreeMap::new();
        for kv in snapshot.keys {
            let fits = 0 < kv.create_revision
                && kv.create_revision <= kv.mod_revision
                && kv.mod_revision <= snapshot.revision
                && kv.version >= 1;
            if !fits {
                return Err(SnapshotError::BadRevisions {
                    key: kv.key,
                    create_revision: kv.create_revision,
                    mod_revision: kv.mod_revision,
                    version: kv.version,
                    revision: snapshot.revision,
                });
            }
            if kv.lease != 0 {
                let Some(lease) = leases.get_mut(&kv.lease) else {
                    return Err(SnapshotError::KeyOnUnknownLease { key: kv.key, lease: kv.lease });
                };
                lease.keys.insert(kv.key.clone());
            }
            if let Some(dup) = keys.insert(kv.key.clone(), kv) {
                return Err(SnapshotError::DuplicateKey(dup.key));
            }
        }
        Ok(Keyspace { revision: snapshot.revision, keys, leases, last_lease_id: snapshot.last_lease_id })
    }
}
