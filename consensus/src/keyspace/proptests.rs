//! Property tests of the key space and the lease clock: determinism and snapshots, revisions,
//! stale compare-and-set, leases never expiring early after a leader change, and a leader lock
//! that never has two owners under any interleaving of acquire, refresh, release and expiry.

use super::tests::{create_if_absent, Tick};
use super::*;
use crate::kv::{Compare, OpResult, TxnOp};
use proptest::prelude::*;
use std::collections::{BTreeMap, VecDeque};

fn key() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["/s/leader", "/s/members/a", "/s/members/b", "/s/config", "/t/x"]).prop_map(String::from)
}

fn value() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![&b"a"[..], b"b", b""]).prop_map(<[u8]>::to_vec)
}

fn lease_ref() -> impl Strategy<Value = LeaseId> {
    prop_oneof![2 => Just(0), 3 => 1..5i64]
}

fn compare() -> impl Strategy<Value = Compare> {
    prop_oneof![
        (key(), 0..8i64).prop_map(|(k, r)| Compare::CreateRevisionEq(k, r)),
        (key(), 0..8i64).prop_map(|(k, r)| Compare::ModRevisionEq(k, r)),
        (key(), value()).prop_map(|(k, v)| Compare::ValueEq(k, v)),
        (key(), lease_ref()).prop_map(|(k, l)| Compare::LeaseEq(k, l)),
    ]
}

fn txn_op() -> impl Strategy<Value = TxnOp> {
    prop_oneof![
        (key(), value(), lease_ref()).prop_map(|(key, value, lease)| TxnOp::Put { key, value, lease }),
        key().prop_map(|key| TxnOp::Delete { key }),
        key().prop_map(|key| TxnOp::Get { key }),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        3 => (key(), value(), lease_ref()).prop_map(|(key, value, lease)| Command::Put { key, value, lease }),
        1 => key().prop_map(|key| Command::Delete { key }),
        3 => (
            prop::collection::vec(compare(), 0..3),
            prop::collection::vec(txn_op(), 0..3),
            prop::collection::vec(txn_op(), 0..2)
        )
            .prop_map(|(compares, success, failure)| Command::Txn(Txn { compares, success, failure })),
        1 => (0..3000u64).prop_map(|ms| Command::LeaseGrant { ttl: Duration::from_millis(ms) }),
        1 => lease_ref().prop_map(|lease| Command::LeaseRevoke { lease }),
    ]
}

/// Every key's revisions fit the store's, and lease membership is the same seen from both sides.
fn assert_consistent(ks: &Keyspace) {
    for kv in ks.keys.values() {
        assert!(0 < kv.create_revision && kv.create_revision <= kv.mod_revision && kv.mod_revision <= ks.revision);
        assert!(kv.version >= 1);
        if kv.lease != 0 {
            assert!(ks.leases[&kv.lease].keys.contains(&kv.key), "{kv:?} missing from its lease");
        }
    }
    for (id, lease) in &ks.leases {
        assert!(*id <= ks.last_lease_id);
        for key in &lease.keys {
            assert_eq!(ks.keys[key].lease, *id);
        }
    }
}

proptest! {
    #[test]
    fn same_commands_same_state_and_snapshots_change_nothing(
        commands in prop::collection::vec(command(), 0..60),
        split in any::<prop::sample::Index>(),
    ) {
        let (mut a, mut b) = (Keyspace::new(), Keyspace::new());
        let applied_a: Vec<_> = commands.iter().map(|c| a.apply(c)).collect();
        let applied_b: Vec<_> = commands.iter().map(|c| b.apply(c)).collect();
        prop_assert_eq!(&applied_a, &applied_b);
        prop_assert_eq!(&a, &b);

        // Snapshot part-way through, ship it as JSON, restore, and continue: same as never stopping.
        let at = split.index(commands.len() + 1);
        let mut first = Keyspace::new();
        for c in &commands[..at] {
            first.apply(c);
        }
        let bytes = serde_json::to_vec(&first.snapshot()).unwrap();
        let mut restored = Keyspace::restore(serde_json::from_slice(&bytes).unwrap()).unwrap();
        prop_assert_eq!(&restored, &first);
        let rest: Vec<_> = commands[at..].iter().map(|c| restored.apply(c)).collect();
        prop_assert_eq!(&rest[..], &applied_a[at..]);
        prop_assert_eq!(&restored, &a);
    }

    #[test]
    fn every_write_advances_the_revision_by_exactly_one(commands in prop::collection::vec(command(), 0..60)) {
        let mut ks = Keyspace::new();
        for c in &commands {
            let before = ks.revision();
            let applied = ks.apply(c);
            if applied.events.is_empty() {
                prop_assert_eq!(applied.revision, before);
            } else {
                prop_assert_eq!(applied.revision, before + 1);
                for event in &applied.events {
                    let revision = match event {
                        WatchEvent::Put { kv, .. } => kv.mod_revision,
                        WatchEvent::Delete { revision, .. } => *revision,
                        WatchEvent::Resync { revision } => *revision,
                    };
                    prop_assert_eq!(revision, applied.revision);
                }
            }
            if applied.outcome.is_err() {
                prop_assert!(applied.events.is_empty() && applied.lease_changes.is_empty());
            }
            assert_consistent(&ks);
        }
    }

    #[test]
    fn compare_and_set_on_a_stale_mod_revision_always_fails(
        commands in prop::collection::vec(command(), 0..60),
        target in key(),
    ) {
        let mut ks = Keyspace::new();
        let mut seen = Vec::new();
        for c in &commands {
            ks.apply(c);
            seen.push(ks.get(&target).map_or(0, |kv| kv.mod_revision));
        }
        let current = ks.get(&target).map_or(0, |kv| kv.mod_revision);
        for stale in seen.into_iter().filter(|r| *r != current) {
            let before = ks.clone();
            let cas = Command::Txn(Txn {
                compares: vec![Compare::ModRevisionEq(target.clone(), stale)],
                success: vec![TxnOp::Put { key: target.clone(), value: b"stale".to_vec(), lease: 0 }],
                failure: vec![],
            });
            let applied = ks.apply(&cas);
            let failed = matches!(applied.outcome, Ok(Outcome::Txn(TxnResponse { succeeded: false, .. })));
            prop_assert!(failed, "a stale CAS won: {:?}", applied);
            prop_assert_eq!(&ks, &before);
        }
    }

    #[test]
    fn a_new_leader_expires_no_lease_before_its_full_ttl(
        ttls in prop::collection::vec(1..5000u64, 1..6),
        granted_at in prop::collection::vec(0..10_000u64, 6),
        was_leading in any::<bool>(),
        elected in 0..20_000u64,
        keep_alives in prop::collection::vec((0..6usize, 0..8000u64), 0..10),
        probes in prop::collection::vec(0..30_000u64, 1..20),
    ) {
        let mut clock = LeaseClock::new();
        if was_leading {
            clock.on_become_leader(Tick(0));
        }
        for (i, ttl) in ttls.iter().enumerate() {
            let change = LeaseChange::Granted { lease: i as LeaseId + 1, ttl: Duration::from_millis(*ttl) };
            clock.observe(&[change], Tick(granted_at[i]));
        }
        clock.on_lose_leadership();
        clock.on_become_leader(Tick(elected));
        let mut earliest: BTreeMap<LeaseId, u64> =
            ttls.iter().enumerate().map(|(i, ttl)| (i as LeaseId + 1, elected + ttl)).collect();
        let mut renewals: Vec<_> = keep_alives.into_iter().map(|(i, after)| (elected + after, i)).collect();
        renewals.sort_unstable();
        let mut probes: Vec<_> = probes.into_iter().map(|p| elected + p).collect();
        probes.sort_unstable();
        let (mut r, mut now) = (0, elected);
        for probe in probes {
            while r < renewals.len() && renewals[r].0 <= probe {
                let (at, i) = renewals[r];
                now = at;
                if let Ok(ttl) = clock.keep_alive(i as LeaseId + 1, Tick(at)) {
                    let until = earliest.entry(i as LeaseId + 1).or_default();
                    *until = (*until).max(at + ttl.as_millis() as u64);
                }
                r += 1;
            }
            now = now.max(probe);
            for lease in clock.expired(Tick(now)) {
                prop_assert!(now >= earliest[&lease], "lease {} expired at {} before {}", lease, now, earliest[&lease]);
            }
        }
    }

    #[test]
    fn the_leader_lock_never_has_two_owners(steps in prop::collection::vec(lock_step(), 1..80)) {
        let mut world = LockWorld::default();
        for step in steps {
            world.run(step);
            let believers: Vec<_> = world.clients.iter().filter(|(_, c)| c.holds_at(world.now)).map(|(n, _)| *n).collect();
            prop_assert!(believers.len() <= 1, "two clients hold the lock: {:?}", believers);
            if let Some(holder) = believers.first() {
                let value = world.ks.get(LOCK).map(|kv| kv.value.clone());
                prop_assert_eq!(value, Some(vec![*holder]), "the holder's name is not in the key");
            }
        }
    }
}

const LOCK: &str = "/service/batman/leader";

#[derive(Debug, Clone)]
enum LockStep {
    Advance(u64),
    Acquire(u8, u64),
    Refresh(u8),
    Release(u8),
    /// The leader looks for expired leases and proposes their revokes.
    Sweep,
    /// One proposed revoke is committed and applied.
    ApplyOne,
    /// Another member becomes leader; the old leader's proposals are committed or lost.
    LeaderChange {
        proposals_survive: bool,
    },
}

fn lock_step() -> impl Strategy<Value = LockStep> {
    prop_oneof![
        3 => (0..1500u64).prop_map(LockStep::Advance),
        3 => (0..3u8, prop::sample::select(vec![500u64, 1000, 2000])).prop_map(|(c, ttl)| LockStep::Acquire(c, ttl)),
        3 => (0..3u8).prop_map(LockStep::Refresh),
        1 => (0..3u8).prop_map(LockStep::Release),
        2 => Just(LockStep::Sweep),
        2 => Just(LockStep::ApplyOne),
        1 => any::<bool>().prop_map(|proposals_survive| LockStep::LeaderChange { proposals_survive }),
    ]
}

#[derive(Debug, Default)]
struct Client {
    lease: Option<LeaseId>,
    /// The client believes it holds the lock until then (counted from before its request).
    holds_until: Option<u64>,
}

impl Client {
    fn holds_at(&self, now: u64) -> bool {
        self.holds_until.is_some_and(|until| until > now)
    }
}

/// One Raft group (its applied key space and its leader's lease clock) and three clients.
#[derive(Debug)]
struct LockWorld {
    ks: Keyspace,
    clock: LeaseClock<Tick>,
    now: u64,
    /// Revokes the leader proposed that are not applied yet.
    in_flight: VecDeque<Command>,
    clients: BTreeMap<u8, Client>,
}

impl Default for LockWorld {
    fn default() -> Self {
        let mut clock = LeaseClock::new();
        clock.on_become_leader(Tick(0));
        let clients = (0..3).map(|c| (c, Client::default())).collect();
        LockWorld { ks: Keyspace::new(), clock, now: 0, in_flight: VecDeque::new(), clients }
    }
}

impl LockWorld {
    fn commit(&mut self, command: &Command) -> Applied {
        let applied = self.ks.apply(command);
        self.clock.observe(&applied.lease_changes, Tick(self.now));
        applied
    }

    /// A client's command goes through the log after everything proposed before it.
    fn client_commit(&mut self, command: &Command) -> Applied {
        while let Some(earlier) = self.in_flight.pop_front() {
            self.commit(&earlier);
        }
        self.commit(command)
    }

    fn client(&mut self, c: u8) -> &mut Client {
        self.clients.entry(c).or_default()
    }

    fn run(&mut self, step: LockStep) {
        let now = self.now;
        match step {
            LockStep::Advance(ms) => self.now += ms,
            LockStep::Acquire(c, ttl) => {
                let kept = self.client(c).lease.and_then(|l| self.clock.keep_alive(l, Tick(now)).ok().map(|_| l));
                let lease = match kept {
                    Some(l) => l,
                    None => {
                        match self.client_commit(&Command::LeaseGrant { ttl: Duration::from_millis(ttl) }).outcome {
                            Ok(Outcome::LeaseGranted { lease, .. }) => lease,
                            other => panic!("grant failed: {other:?}"),
                        }
                    }
                };
                let ttl = self.ks.lease_ttl(lease).map_or(0, |t| t.as_millis() as u64);
                self.client(c).lease = Some(lease);
                let applied = self.client_commit(&create_if_absent(LOCK, &String::from_utf8_lossy(&[c]), lease));
                let ours = match applied.outcome {
                    Ok(Outcome::Txn(r)) if r.succeeded => true,
                    Ok(Outcome::Txn(r)) => {
                        matches!(&r.results[..], [OpResult::Get(Some(kv))] if kv.value == [c] && kv.lease == lease)
                    }
                    _ => false,
                };
                if ours {
                    self.client(c).holds_until = Some(now + ttl);
                }
            }
            LockStep::Refresh(c) => {
                let Some(lease) = self.client(c).lease else { return };
                let Ok(ttl) = self.clock.keep_alive(lease, Tick(now)) else {
                    self.client(c).holds_until = None;
                    return;
                };
                let still_ours = Command::Txn(Txn {
                    compares: vec![Compare::ValueEq(LOCK.into(), vec![c]), Compare::LeaseEq(LOCK.into(), lease)],
                    ..Txn::default()
                });
                let ok = matches!(self.client_commit(&still_ours).outcome, Ok(Outcome::Txn(r)) if r.succeeded);
                self.client(c).holds_until = ok.then(|| now + ttl.as_millis() as u64);
            }
            LockStep::Release(c) => {
                let client = self.client(c);
                client.holds_until = None;
                if let Some(lease) = client.lease.take() {
                    self.client_commit(&Command::LeaseRevoke { lease });
                }
            }
            LockStep::Sweep => {
                let expired = self.clock.expired(Tick(now));
                self.in_flight.extend(expired.into_iter().map(|lease| Command::LeaseRevoke { lease }));
            }
            LockStep::ApplyOne => {
                if let Some(command) = self.in_flight.pop_front() {
                    self.commit(&command);
                }
            }
            LockStep::LeaderChange { proposals_survive } => {
                if !proposals_survive {
                    self.in_flight.clear();
                }
                // The new leader's linearizable barrier applies every committed entry before it
                // serves keep-alives; its clock is rebuilt from the key space it applied.
                while let Some(earlier) = self.in_flight.pop_front() {
                    self.commit(&earlier);
                }
                let mut clock = LeaseClock::new();
                clock.track_all(self.ks.leases(), Tick(now));
                clock.on_become_leader(Tick(now));
                self.clock = clock;
            }
        }
    }
}
