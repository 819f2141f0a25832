//! What the simulated clients observed, in virtual time, and the checks on it: every acknowledged
//! write survives in the final key space and acknowledged writes are ordered as they happened;
//! a counter read never goes back behind an acknowledged increment; no two holders' ownership of
//! a leased lock overlaps. Pure: the checks take the history and the final state and return what
//! is wrong, so they are tested here on hand-made histories.

use crate::keyspace::KeyspaceSnapshot;
use crate::kv::{LeaseId, Revision};
use std::collections::BTreeMap;
use tokio::time::Instant;

/// A write the cluster acknowledged (one transaction, one key).
#[derive(Debug, Clone)]
pub struct AckedWrite {
    pub key: String,
    pub value: Vec<u8>,
    /// 0 for an unleased key.
    pub lease: LeaseId,
    pub revision: Revision,
    pub sent: Instant,
    pub acked: Instant,
}

/// A linearizable read of a counter key (absent reads as 0).
#[derive(Debug, Clone)]
pub struct CounterRead {
    pub key: String,
    pub value: u64,
    pub sent: Instant,
}

/// A time during which a client believed it held a lock: from the acknowledgement of its acquire
/// until the end of the TTL counted from before its last acknowledged keep-alive (or grant), or
/// until it sent its release, whichever came first.
#[derive(Debug, Clone)]
pub struct Ownership {
    pub client: usize,
    pub key: String,
    pub lease: LeaseId,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Debug, Default)]
pub struct History {
    pub writes: Vec<AckedWrite>,
    pub reads: Vec<CounterRead>,
    pub ownerships: Vec<Ownership>,
}

/// Counter keys hold a decimal number that only grows (compare-and-set increments).
pub fn is_counter(key: &str) -> bool {
    key.starts_with("/c/")
}

pub fn counter_value(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Check 1: every acknowledged write is in `last` (the converged key space).
pub fn lost_writes(history: &History, last: &KeyspaceSnapshot) -> Vec<String> {
    let keys: BTreeMap<&str, _> = last.keys.iter().map(|kv| (kv.key.as_str(), kv)).collect();
    let live_lease = |lease: LeaseId| last.leases.iter().any(|l| l.id == lease);
    let mut problems = Vec::new();
    let mut counter_values: BTreeMap<(&str, u64), &AckedWrite> = BTreeMap::new();
    for w in &history.writes {
        let found = keys.get(w.key.as_str());
        if w.lease != 0 {
            // A leased key may be gone with its lease; while the lease lives, the write stays.
            if live_lease(w.lease) && found.is_none_or(|kv| kv.mod_revision < w.revision) {
                problems.push(format!("acknowledged write lost: {w:?} (lease still live), final: {found:?}"));
            }
            continue;
        }
        match found {
            None => problems.push(format!("acknowledged write lost: {w:?}, key absent at the end")),
            Some(kv) if kv.mod_revision < w.revision => {
                problems.push(format!("acknowledged write lost: {w:?}, final key older: {kv:?}"))
            }
            Some(kv) if kv.mod_revision == w.revision && kv.value != w.value => {
                problems.push(format!("acknowledged write changed: {w:?}, final: {kv:?}"))
            }
            Some(kv) if is_counter(&w.key) => {
                let (written, last) = (counter_value(&w.value), counter_value(&kv.value));
                if written > last {
                    problems.push(format!("counter went back: acknowledged {w:?}, final {kv:?}"));
                }
                if let Some(v) = written {
                    if let Some(twin) = counter_values.insert((w.key.as_str(), v), w) {
                        problems
                            .push(format!("one counter value acknowledged twice (lost update): {twin:?} and {w:?}"));
                    }
                }
            }
            Some(_) => {}
        }
    }
    problems
}

/// Check 1, order: a write acknowledged before another was sent has a lower revision, and no two
/// acknowledged transactions share a revision.
pub fn misordered_writes(history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    let mut by_revision: BTreeMap<Revision, &AckedWrite> = BTreeMap::new();
    for w in &history.writes {
        if let Some(other) = by_revision.insert(w.revision, w) {
            problems.push(format!("two acknowledged transactions at revision {}: {other:?} and {w:?}", w.revision));
        }
    }
    let mut by_ack: Vec<&AckedWrite> = history.writes.iter().collect();
    by_ack.sort_by_key(|w| w.acked);
    let mut by_sent: Vec<&AckedWrite> = history.writes.iter().collect();
    by_sent.sort_by_key(|w| w.sent);
    // The highest revision acknowledged strictly before each write was sent.
    let (mut i, mut highest): (usize, Option<&AckedWrite>) = (0, None);
    for w in by_sent {
        while i < by_ack.len() && by_ack[i].acked < w.sent {
            if highest.is_none_or(|h| by_ack[i].revision > h.revision) {
                highest = Some(by_ack[i]);
            }
            i += 1;
        }
        if let Some(h) = highest.filter(|h| h.revision >= w.revision) {
            problems.push(format!("write acknowledged earlier has a revision not below a later one: {h:?} then {w:?}"));
        }
    }
    problems
}

/// Linearizable reads: a read sent after an increment was acknowledged sees at least its value.
pub fn stale_reads(history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    for r in &history.reads {
        let newest = history
            .writes
            .iter()
            .filter(|w| w.key == r.key && w.acked < r.sent)
            .filter_map(|w| counter_value(&w.value).map(|v| (v, w)))
            .max_by_key(|(v, _)| *v);
        if let Some((v, w)) = newest.filter(|(v, _)| *v > r.value) {
            problems.push(format!("stale read {r:?}: value {v} was acknowledged before it was sent: {w:?}"));
        }
    }
    problems
}

/// Check 2: no two ownerships of one lock key overlap in time (touching ends are fine).
pub fn overlapping_owners(history: &History) -> Vec<String> {
    let mut problems = Vec::new();
    let held: Vec<&Ownership> = history.ownerships.iter().filter(|o| o.start < o.end).collect();
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            if a.key == b.key && (a.client, a.lease) != (b.client, b.lease) && a.start < b.end && b.start < a.end {
                problems.push(format!("two owners of {} at once: {a:?} and {b:?}", a.key));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::LeaseRecord;
    use crate::kv::KeyValue;
    use std::time::Duration;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    fn write(base: Instant, key: &str, value: &str, revision: Revision, sent: u64, acked: u64) -> AckedWrite {
        let (sent, acked) = (at(base, sent), at(base, acked));
        AckedWrite { key: key.into(), value: value.into(), lease: 0, revision, sent, acked }
    }

    fn kv(key: &str, value: &str, mod_revision: Revision, lease: LeaseId) -> KeyValue {
        KeyValue { key: key.into(), value: value.into(), create_revision: 1, mod_revision, version: 1, lease }
    }

    fn last(keys: Vec<KeyValue>, leases: &[LeaseId]) -> KeyspaceSnapshot {
        let leases = leases.iter().map(|&id| LeaseRecord { id, ttl: Duration::from_secs(1) }).collect();
        KeyspaceSnapshot { format: crate::keyspace::SNAPSHOT_FORMAT, revision: 10, last_lease_id: 9, keys, leases }
    }

    #[test]
    fn a_missing_or_overwritten_acknowledged_write_is_reported() {
        let b = Instant::now();
        let history = History {
            writes: vec![
                write(b, "/w/0/1", "x", 3, 0, 1),
                write(b, "/c/0", "2", 5, 0, 1),
                write(b, "/c/0", "3", 6, 2, 3),
            ],
            ..History::default()
        };
        assert!(lost_writes(&history, &last(vec![kv("/w/0/1", "x", 3, 0), kv("/c/0", "3", 6, 0)], &[])).is_empty());
        assert_eq!(lost_writes(&history, &last(vec![kv("/c/0", "3", 6, 0)], &[])).len(), 1);
        assert_eq!(lost_writes(&history, &last(vec![kv("/w/0/1", "x", 3, 0), kv("/c/0", "2", 5, 0)], &[])).len(), 1);
    }

    #[test]
    fn a_counter_value_acknowledged_twice_is_a_lost_update() {
        let b = Instant::now();
        let history = History {
            writes: vec![write(b, "/c/0", "1", 2, 0, 1), write(b, "/c/0", "1", 4, 2, 3)],
            ..History::default()
        };
        assert_eq!(lost_writes(&history, &last(vec![kv("/c/0", "1", 4, 0)], &[])).len(), 1);
    }

    #[test]
    fn a_leased_write_must_stay_while_its_lease_lives() {
        let b = Instant::now();
        let mut w = write(b, "/m/0", "up", 3, 0, 1);
        w.lease = 7;
        let history = History { writes: vec![w], ..History::default() };
        assert!(lost_writes(&history, &last(vec![], &[])).is_empty());
        assert_eq!(lost_writes(&history, &last(vec![], &[7])).len(), 1);
        assert!(lost_writes(&history, &last(vec![kv("/m/0", "up", 3, 7)], &[7])).is_empty());
    }

    #[test]
    fn writes_acknowledged_in_order_must_have_rising_revisions() {
        let b = Instant::now();
        let ordered = History {
            writes: vec![write(b, "/w/a", "x", 3, 0, 10), write(b, "/w/b", "x", 2, 5, 8)],
            ..History::default()
        };
        assert!(misordered_writes(&ordered).is_empty(), "concurrent writes may commit in any order");
        let backwards = History {
            writes: vec![write(b, "/w/a", "x", 3, 0, 10), write(b, "/w/b", "x", 2, 11, 12)],
            ..History::default()
        };
        assert_eq!(misordered_writes(&backwards).len(), 1);
        let shared = History {
            writes: vec![write(b, "/w/a", "x", 3, 0, 10), write(b, "/w/b", "x", 3, 0, 12)],
            ..History::default()
        };
        assert_eq!(misordered_writes(&shared).len(), 1);
    }

    #[test]
    fn a_read_behind_an_acknowledged_increment_is_stale() {
        let b = Instant::now();
        let read = |value, sent| CounterRead { key: "/c/0".into(), value, sent: at(b, sent) };
        let history = History {
            writes: vec![write(b, "/c/0", "4", 9, 0, 10)],
            reads: vec![read(3, 5), read(4, 11)],
            ..History::default()
        };
        assert!(stale_reads(&history).is_empty());
        let history = History { reads: vec![read(3, 11)], ..history };
        assert_eq!(stale_reads(&history).len(), 1);
    }

    #[test]
    fn overlapping_ownerships_are_reported_and_touching_ones_are_not() {
        let b = Instant::now();
        let own = |client, lease, start, end| Ownership {
            client,
            key: "/lock".into(),
            lease,
            start: at(b, start),
            end: at(b, end),
        };
        let fine = History { ownerships: vec![own(0, 1, 0, 100), own(1, 2, 100, 200)], ..History::default() };
        assert!(overlapping_owners(&fine).is_empty());
        let bad = History { ownerships: vec![own(0, 1, 0, 100), own(1, 2, 99, 200)], ..History::default() };
        assert_eq!(overlapping_owners(&bad).len(), 1);
    }
}
