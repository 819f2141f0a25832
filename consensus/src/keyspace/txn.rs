//! Transactions on the key space: evaluating compares (etcd's rules for missing keys), checking a
//! branch before touching anything, and writing keys at one revision with their watch events.

use super::{ApplyError, Keyspace};
use crate::kv::{Compare, KeyValue, LeaseId, OpResult, Revision, Txn, TxnOp, TxnResponse, WatchEvent};
use std::collections::BTreeSet;

impl Keyspace {
    /// Runs a transaction atomically: all of the branch that runs, or nothing. Every write of the
    /// branch shares one new revision; a branch that changes nothing leaves the revision alone.
    pub(super) fn run_txn(&mut self, txn: &Txn, events: &mut Vec<WatchEvent>) -> Result<TxnResponse, ApplyError> {
        check_writes(&txn.success)?;
        check_writes(&txn.failure)?;
        let succeeded = txn.compares.iter().all(|c| self.holds(c));
        let branch = if succeeded { &txn.success } else { &txn.failure };
        for op in branch {
            if let TxnOp::Put { lease, .. } = op {
                if *lease != 0 && !self.leases.contains_key(lease) {
                    return Err(ApplyError::LeaseNotFound(*lease));
                }
            }
        }
        let revision = self.revision + 1;
        let events_before = events.len();
        let results = branch
            .iter()
            .map(|op| match op {
                TxnOp::Put { key, value, lease } => {
                    self.put_at(revision, key, value, *lease, events);
                    OpResult::Put { revision }
                }
                TxnOp::Delete { key } => OpResult::Delete { deleted: self.delete_at(revision, key, events) },
                TxnOp::Get { key } => OpResult::Get(self.keys.get(key).cloned()),
            })
            .collect();
        if events.len() > events_before {
            self.revision = revision;
        }
        Ok(TxnResponse { succeeded, revision: self.revision, results })
    }

    /// etcd's compare: a missing key has create/mod revision 0 and lease 0, and no value (so a
    /// value compare on it fails).
    fn holds(&self, compare: &Compare) -> bool {
        match compare {
            Compare::CreateRevisionEq(key, r) => self.keys.get(key).map_or(0, |kv| kv.create_revision) == *r,
            Compare::ModRevisionEq(key, r) => self.keys.get(key).map_or(0, |kv| kv.mod_revision) == *r,
            Compare::ValueEq(key, v) => self.keys.get(key).is_some_and(|kv| kv.value == *v),
            Compare::LeaseEq(key, l) => self.keys.get(key).map_or(0, |kv| kv.lease) == *l,
        }
    }

    fn put_at(&mut self, revision: Revision, key: &str, value: &[u8], lease: LeaseId, events: &mut Vec<WatchEvent>) {
        let prev = self.keys.get(key).cloned();
        let (create_revision, version) = match &prev {
            Some(p) => (p.create_revision, p.version + 1),
            None => (revision, 1),
        };
        if let Some(old) = prev.as_ref().map(|p| p.lease).filter(|l| *l != 0 && *l != lease) {
            if let Some(l) = self.leases.get_mut(&old) {
                l.keys.remove(key);
            }
        }
        if let Some(l) = self.leases.get_mut(&lease) {
            l.keys.insert(key.to_string());
        }
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
            mod_revision: revision,
            version,
            lease,
        };
        self.keys.insert(key.to_string(), kv.clone());
        events.push(WatchEvent::Put { kv, prev });
    }

    fn delete_at(&mut self, revision: Revision, key: &str, events: &mut Vec<WatchEvent>) -> bool {
        let Some(prev) = self.keys.remove(key) else { return false };
        if let Some(l) = self.leases.get_mut(&prev.lease) {
            l.keys.remove(key);
        }
        events.push(WatchEvent::Delete { key: key.to_string(), revision, prev: Some(prev) });
        true
    }
}

/// A branch may not write an empty key nor write one key twice (etcd refuses both).
fn check_writes(ops: &[TxnOp]) -> Result<(), ApplyError> {
    let mut written = BTreeSet::new();
    for op in ops {
        let key = match op {
            TxnOp::Put { key, .. } | TxnOp::Delete { key } => key,
            TxnOp::Get { key } if key.is_empty() => return Err(ApplyError::EmptyKey),
            TxnOp::Get { .. } => continue,
        };
        if key.is_empty() {
            return Err(ApplyError::EmptyKey);
        }
        if !written.insert(key.as_str()) {
            return Err(ApplyError::DuplicateKey(key.clone()));
        }
    }
    Ok(())
}
