//! Unit tests of the key space (etcd's semantics, case by case) and of the lease clock.

use super::*;
use crate::kv::{Compare, OpResult, TxnOp};

/// A monotonic instant for tests: milliseconds since an arbitrary start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Tick(pub u64);

impl std::ops::Add<Duration> for Tick {
    type Output = Tick;
    fn add(self, d: Duration) -> Tick {
        Tick(self.0 + d.as_millis() as u64)
    }
}

pub(super) fn put(key: &str, value: &str, lease: LeaseId) -> Command {
    Command::Put { key: key.into(), value: value.into(), lease }
}

/// Create-if-absent: the leader-lock acquire.
pub(super) fn create_if_absent(key: &str, value: &str, lease: LeaseId) -> Command {
    Command::Txn(Txn {
        compares: vec![Compare::CreateRevisionEq(key.into(), 0)],
        success: vec![TxnOp::Put { key: key.into(), value: value.into(), lease }],
        failure: vec![TxnOp::Get { key: key.into() }],
    })
}

fn txn_response(applied: &Applied) -> &TxnResponse {
    match &applied.outcome {
        Ok(Outcome::Txn(r)) => r,
        other => panic!("expected a txn outcome, got {other:?}"),
    }
}

fn grant(ks: &mut Keyspace, ms: u64) -> LeaseId {
    match ks.apply(&Command::LeaseGrant { ttl: Duration::from_millis(ms) }).outcome {
        Ok(Outcome::LeaseGranted { lease, .. }) => lease,
        other => panic!("grant failed: {other:?}"),
    }
}

#[test]
fn put_creates_then_updates_with_etcd_revisions_and_events() {
    let mut ks = Keyspace::new();
    let first = ks.apply(&put("/a", "1", 0));
    assert_eq!(first.revision, 1);
    assert_eq!(first.outcome, Ok(Outcome::Put { revision: 1, prev: None }));
    ks.apply(&put("/b", "x", 0));
    let second = ks.apply(&put("/a", "2", 0));
    let kv = ks.get("/a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (1, 3, 2));
    match &second.events[..] {
        [WatchEvent::Put { kv, prev: Some(prev) }] => {
            assert_eq!((kv.value.as_slice(), prev.value.as_slice()), (&b"2"[..], &b"1"[..]));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn delete_reports_the_previous_value_and_a_missing_key_changes_nothing() {
    let mut ks = Keyspace::new();
    ks.apply(&put("/a", "1", 0));
    let deleted = ks.apply(&Command::Delete { key: "/a".into() });
    assert_eq!(deleted.revision, 2);
    assert!(matches!(&deleted.events[..], [WatchEvent::Delete { revision: 2, prev: Some(_), .. }]));
    let again = ks.apply(&Command::Delete { key: "/a".into() });
    assert_eq!((again.revision, again.events.len()), (2, 0));
    assert_eq!(again.outcome, Ok(Outcome::Delete { deleted: None }));
    // Re-created: a new life, create_revision starts again.
    ks.apply(&put("/a", "3", 0));
    assert_eq!((ks.get("/a").unwrap().create_revision, ks.get("/a").unwrap().version), (3, 1));
}

#[test]
fn create_if_absent_has_one_winner_and_the_loser_reads_the_holder() {
    let mut ks = Keyspace::new();
    assert!(txn_response(&ks.apply(&create_if_absent("/leader", "pg1", 0))).succeeded);
    let lost = ks.apply(&create_if_absent("/leader", "pg2", 0));
    let resp = txn_response(&lost);
    assert!(!resp.succeeded);
    assert!(matches!(&resp.results[..], [OpResult::Get(Some(kv))] if kv.value == b"pg1"));
    assert_eq!((lost.revision, lost.events.len()), (1, 0));
}

#[test]
fn stale_compare_and_set_fails_and_changes_nothing() {
    let mut ks = Keyspace::new();
    ks.apply(&put("/config", "v1", 0));
    let read_at = ks.get("/config").unwrap().mod_revision;
    ks.apply(&put("/config", "v2", 0));
    let before = ks.clone();
    let cas = Command::Txn(Txn {
        compares: vec![Compare::ModRevisionEq("/config".into(), read_at)],
        success: vec![TxnOp::Put { key: "/config".into(), value: b"v3".to_vec(), lease: 0 }],
        failure: vec![],
    });
    assert!(!txn_response(&ks.apply(&cas)).succeeded);
    assert_eq!(ks, before);
}

#[test]
fn compares_on_a_missing_key_follow_etcd() {
    let mut ks = Keyspace::new();
    let check = |ks: &mut Keyspace, c: Compare| {
        txn_response(&ks.apply(&Command::Txn(Txn { compares: vec![c], ..Txn::default() }))).succeeded
    };
    assert!(check(&mut ks, Compare::CreateRevisionEq("/x".into(), 0)));
    assert!(check(&mut ks, Compare::ModRevisionEq("/x".into(), 0)));
    assert!(check(&mut ks, Compare::LeaseEq("/x".into(), 0)));
    assert!(!check(&mut ks, Compare::ValueEq("/x".into(), vec![])));
    assert_eq!(ks.revision(), 0, "read-only transactions do not advance the revision");
}

#[test]
fn a_transaction_writes_at_one_revision_and_reads_its_own_writes() {
    let mut ks = Keyspace::new();
    ks.apply(&put("/b", "old", 0));
    let applied = ks.apply(&Command::Txn(Txn {
        compares: vec![],
        success: vec![
            TxnOp::Put { key: "/a".into(), value: b"1".to_vec(), lease: 0 },
            TxnOp::Delete { key: "/b".into() },
            TxnOp::Get { key: "/a".into() },
        ],
        failure: vec![],
    }));
    assert_eq!(applied.revision, 2);
    assert_eq!(applied.events.len(), 2);
    let resp = txn_response(&applied);
    assert_eq!(resp.results[0], OpResult::Put { revision: 2 });
    assert_eq!(resp.results[1], OpResult::Delete { deleted: true });
    assert!(matches!(&resp.results[2], OpResult::Get(Some(kv)) if kv.mod_revision == 2));
}

#[test]
fn refused_commands_change_nothing() {
    let mut ks = Keyspace::new();
    ks.apply(&put("/a", "1", 0));
    let before = ks.clone();
    let dup = Txn {
        success: vec![TxnOp::Put { key: "/a".into(), value: vec![], lease: 0 }, TxnOp::Delete { key: "/a".into() }],
        ..Txn::default()
    };
    for (command, error) in [
        (put("/b", "1", 42), ApplyError::LeaseNotFound(42)),
        (put("", "1", 0), ApplyError::EmptyKey),
        (Command::Txn(dup), ApplyError::DuplicateKey("/a".into())),
        (Command::LeaseRevoke { lease: 7 }, ApplyError::LeaseNotFound(7)),
        (Command::LeaseGrant { ttl: Duration::ZERO }, ApplyError::InvalidTtl { ttl: Duration::ZERO }),
    ] {
        let applied = ks.apply(&command);
        assert_eq!(applied.outcome, Err(error));
        assert_eq!((applied.revision, applied.events.len()), (1, 0));
        assert_eq!(ks, before);
    }
}

#[test]
fn revoking_a_lease_deletes_its_keys_at_one_revision() {
    let mut ks = Keyspace::new();
    let lease = grant(&mut ks, 10_000);
    let other = grant(&mut ks, 10_000);
    assert_eq!((lease, other, ks.revision()), (1, 2, 0), "granting does not advance the revision");
    ks.apply(&put("/s/leader", "pg1", lease));
    ks.apply(&put("/s/members/pg1", "{}", lease));
    ks.apply(&put("/s/moved", "x", lease));
    ks.apply(&put("/s/moved", "y", other));
    ks.apply(&put("/s/unleased", "z", lease));
    ks.apply(&put("/s/unleased", "z", 0));
    assert_eq!(ks.lease_keys(lease).collect::<Vec<_>>(), ["/s/leader", "/s/members/pg1"]);
    let applied = ks.apply(&Command::LeaseRevoke { lease });
    assert_eq!(applied.revision, 7);
    assert_eq!(applied.lease_changes, [LeaseChange::Revoked { lease }]);
    let revisions: Vec<_> = applied
        .events
        .iter()
        .map(|e| match e {
            WatchEvent::Delete { revision, prev: Some(_), .. } => *revision,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(revisions, [7, 7]);
    assert!(ks.get("/s/leader").is_none() && ks.get("/s/moved").is_some() && ks.get("/s/unleased").is_some());
    assert_eq!(ks.lease_ttl(lease), None);
    assert_eq!(ks.apply(&put("/s/leader", "pg2", lease)).outcome, Err(ApplyError::LeaseNotFound(lease)));
}

#[test]
fn prefix_reads_return_only_the_prefix_in_key_order() {
    let mut ks = Keyspace::new();
    for key in ["/service/b/leader", "/service/a/members/2", "/service/a/leader", "/service/a0", "/other"] {
        ks.apply(&put(key, "v", 0));
    }
    let range = ks.range_prefix("/service/a/");
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/service/a/leader", "/service/a/members/2"]);
    assert_eq!(range.revision, 5);
    assert_eq!(ks.range_prefix("").kvs.len(), 5);
}

#[test]
fn snapshot_round_trips_through_json_and_restore_checks_it() {
    let mut ks = Keyspace::new();
    let lease = grant(&mut ks, 5_000);
    ks.apply(&put("/a", "1", lease));
    ks.apply(&put("/b", "2", 0));
    let bytes = serde_json::to_vec(&ks.snapshot()).unwrap();
    let restored = Keyspace::restore(serde_json::from_slice(&bytes).unwrap()).unwrap();
    assert_eq!(restored, ks);

    let mut orphan = ks.snapshot();
    orphan.leases.clear();
    assert_eq!(Keyspace::restore(orphan), Err(SnapshotError::KeyOnUnknownLease { key: "/a".into(), lease }));
    let mut future = ks.snapshot();
    future.revision = 1;
    assert!(matches!(Keyspace::restore(future), Err(SnapshotError::BadRevisions { .. })));
    let mut reused = ks.snapshot();
    reused.last_lease_id = 0;
    assert!(matches!(Keyspace::restore(reused), Err(SnapshotError::BadLease { .. })));
    let mut newer = ks.snapshot();
    newer.format = 2;
    assert_eq!(Keyspace::restore(newer), Err(SnapshotError::UnknownFormat(2)));
}

#[test]
fn lease_clock_only_the_leader_expires_and_keeps_alive() {
    let mut clock = LeaseClock::new();
    let ttl = Duration::from_millis(1000);
    clock.observe(&[LeaseChange::Granted { lease: 1, ttl }], Tick(0));
    assert_eq!(clock.expired(Tick(1_000_000)), Vec::<LeaseId>::new());
    assert_eq!(clock.keep_alive(1, Tick(0)), Err(LeaseClockError::NotLeader));

    clock.on_become_leader(Tick(5000));
    assert_eq!(clock.deadline(1), Some(Tick(6000)));
    assert_eq!(clock.expired(Tick(5999)), Vec::<LeaseId>::new());
    assert_eq!(clock.keep_alive(1, Tick(5500)), Ok(ttl));
    assert_eq!(clock.expired(Tick(6000)), Vec::<LeaseId>::new());
    assert_eq!(clock.next_deadline(), Some(Tick(6500)));
    assert_eq!(clock.expired(Tick(6500)), vec![1]);
    assert_eq!(clock.keep_alive(1, Tick(6500)), Err(LeaseClockError::Expired(1)), "its revoke may be in flight");
    assert_eq!(clock.keep_alive(9, Tick(6500)), Err(LeaseClockError::LeaseNotFound(9)));

    clock.observe(&[LeaseChange::Granted { lease: 2, ttl }], Tick(6600));
    assert_eq!(clock.deadline(2), Some(Tick(7600)));
    clock.observe(&[LeaseChange::Revoked { lease: 1 }], Tick(6600));
    assert_eq!(clock.expired(Tick(7000)), Vec::<LeaseId>::new());

    clock.on_lose_leadership();
    assert_eq!((clock.deadline(2), clock.expired(Tick(99_999))), (None, vec![]));
}

#[test]
fn lease_clock_follows_a_restored_key_space() {
    let mut ks = Keyspace::new();
    let a = grant(&mut ks, 1000);
    let b = grant(&mut ks, 3000);
    let mut clock = LeaseClock::new();
    clock.on_become_leader(Tick(0));
    clock.observe(&[LeaseChange::Granted { lease: 99, ttl: Duration::from_millis(10) }], Tick(0));
    clock.track_all(ks.leases(), Tick(100));
    assert_eq!((clock.deadline(a), clock.deadline(b), clock.deadline(99)), (Some(Tick(1100)), Some(Tick(3100)), None));
}
