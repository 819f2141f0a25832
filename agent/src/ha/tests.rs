//! Scenario tests (the runbook's situations) and property tests (safety invariants over random
//! views) for the decision engine.

use super::*;
use proptest::prelude::*;
use std::time::{Duration, Instant};

fn member(name: &str, role: Role, tl: u32, lsn: u64) -> MemberView {
    MemberView {
        nosync: false,
        name: name.into(),
        role,
        running: true,
        timeline: Some(tl),
        wal_position: Some(Lsn(lsn)),
        nofailover: false,
        failover_priority: 1,
    }
}

fn view(leader: Option<&str>) -> ClusterView {
    ClusterView {
        reachable: true,
        initialized: Some(42),
        leader: leader.map(str::to_string),
        members: vec![
            member("n1", Role::Primary, 1, 1000),
            member("n2", Role::Replica, 1, 1000),
            member("n3", Role::Replica, 1, 900),
        ],
        leader_timeline: Some(1),
        leader_lsn: Some(Lsn(1000)),
        failover: None,
        paused: false,
        retain_slots: vec![],
        slot_positions: Default::default(),
        sync: None,
    }
}

fn replica(name: &str, lsn: u64) -> LocalState {
    LocalState {
        name: name.into(),
        postgres: PgState::Running { role: Role::Replica, timeline: 1, wal_position: Lsn(lsn) },
        system_identifier: Some(42),
        lease_valid_until: None,
        refresh_failed: false,
        down_since: None,
        last_streamed: Some(StreamPoint { timeline: 1, lsn: Lsn(lsn) }),
        not_streaming_for: None,
        peer_probes: None,
        nofailover: false,
        failover_priority: 1,
    }
}

fn primary(name: &str, now: Instant) -> LocalState {
    LocalState {
        postgres: PgState::Running { role: Role::Primary, timeline: 1, wal_position: Lsn(1000) },
        lease_valid_until: Some(now + Duration::from_secs(10)),
        last_streamed: None,
        ..replica(name, 1000)
    }
}

fn probe(name: &str, in_recovery: Option<bool>, lsn: Option<u64>) -> PeerProbe {
    PeerProbe { name: name.into(), in_recovery, timeline: Some(1), wal_position: lsn.map(Lsn), failover_priority: 1 }
}

fn cfg() -> HaConfig {
    HaConfig::default()
}

#[test]
fn leader_with_the_lock_refreshes_it() {
    let now = Instant::now();
    let d = decide(&view(Some("n1")), &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::RefreshLock]);
    assert!(d.reason.starts_with("no action: I am (n1) the leader with the lock"), "{}", d.reason);
}

#[test]
fn a_replica_stuck_behind_the_leaders_newer_timeline_is_rewound_after_ttl() {
    let mut v = view(Some("n1"));
    v.members[0].timeline = Some(2);
    let mut me = replica("n2", 1000);
    me.not_streaming_for = Some(Duration::from_secs(2));
    assert_eq!(decide(&v, &me, &cfg(), Instant::now()).actions, vec![Action::Follow { leader: "n1".into() }]);
    me.not_streaming_for = Some(Duration::from_secs(7));
    assert_eq!(decide(&v, &me, &cfg(), Instant::now()).actions, vec![Action::Rewind { leader: "n1".into() }]);
}

#[test]
fn replica_follows_the_leader() {
    let d = decide(&view(Some("n1")), &replica("n2", 1000), &cfg(), Instant::now());
    assert_eq!(d.actions, vec![Action::Follow { leader: "n1".into() }]);
}

#[test]
fn race_first_asks_the_peers_then_promotes_the_healthiest() {
    let now = Instant::now();
    let v = view(None);
    let mut me = replica("n2", 1000);
    assert_eq!(decide(&v, &me, &cfg(), now).actions, vec![Action::ProbePeers]);
    me.peer_probes = Some(vec![probe("n1", None, None), probe("n3", Some(true), Some(900))]);
    let d = decide(&v, &me, &cfg(), now);
    assert_eq!(d.actions, vec![Action::AcquireLock, Action::Promote], "{}", d.reason);
}

#[test]
fn a_member_ahead_of_me_wins_the_race() {
    let mut me = replica("n3", 900);
    me.peer_probes = Some(vec![probe("n2", Some(true), Some(1000))]);
    let d = decide(&view(None), &me, &cfg(), Instant::now());
    assert!(d.actions.is_empty());
    assert!(d.reason.contains("n2 is ahead"), "{}", d.reason);
}

#[test]
fn an_old_primary_still_running_stops_the_race() {
    let mut me = replica("n2", 1000);
    me.peer_probes = Some(vec![probe("n1", Some(false), Some(1000))]);
    let d = decide(&view(None), &me, &cfg(), Instant::now());
    assert!(d.actions.is_empty());
    assert!(d.reason.contains("n1 is still running as primary"), "{}", d.reason);
}

#[test]
fn a_replica_that_never_streamed_is_not_promoted() {
    let mut me = replica("n2", 1000);
    me.last_streamed = None;
    me.peer_probes = Some(vec![]);
    let d = decide(&view(None), &me, &cfg(), Instant::now());
    assert!(d.actions.is_empty());
    assert!(d.reason.contains("never streamed"), "{}", d.reason);
}

#[test]
fn a_replica_that_streamed_only_an_older_timeline_is_not_promoted() {
    let mut v = view(None);
    v.leader_timeline = Some(2);
    let mut me = replica("n2", 1000);
    me.peer_probes = Some(vec![]);
    let d = decide(&v, &me, &cfg(), Instant::now());
    assert!(d.actions.is_empty());
    assert!(d.reason.contains("timeline 2"), "{}", d.reason);
}

#[test]
fn a_lagging_replica_does_not_race() {
    let mut v = view(None);
    v.leader_lsn = Some(Lsn(10 << 20));
    let d = decide(&v, &replica("n2", 1000), &cfg(), Instant::now());
    assert!(d.actions.is_empty());
    assert!(d.reason.contains("maximum_lag_on_failover"), "{}", d.reason);
}

#[test]
fn nofailover_and_pause_keep_a_replica_out_of_the_race() {
    let mut me = replica("n2", 1000);
    me.nofailover = true;
    assert!(decide(&view(None), &me, &cfg(), Instant::now()).actions.is_empty());
    let mut v = view(None);
    v.paused = true;
    assert!(decide(&v, &replica("n2", 1000), &cfg(), Instant::now()).actions.is_empty());
}

#[test]
fn primary_cut_off_from_the_dcs_demotes_before_its_lease_expires() {
    let now = Instant::now();
    let mut v = view(Some("n1"));
    v.reachable = false;
    let mut me = primary("n1", now);
    me.lease_valid_until = Some(now + Duration::from_secs(9));
    assert!(decide(&v, &me, &cfg(), now).actions.is_empty(), "9 s left is more than loop_wait + 2 x retry_timeout");
    me.lease_valid_until = Some(now + Duration::from_secs(3));
    assert_eq!(decide(&v, &me, &cfg(), now).actions, vec![Action::Demote { leader: None }]);
}

#[test]
fn an_old_primary_demotes_when_another_holds_the_lock() {
    let now = Instant::now();
    let d = decide(&view(Some("n2")), &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: Some("n2".into()) }]);
}

#[test]
fn crashed_primary_is_restarted_in_place_then_given_up_after_primary_start_timeout() {
    let now = Instant::now();
    let mut me = primary("n1", now);
    me.postgres = PgState::Stopped;
    me.down_since = Some(now - Duration::from_secs(5));
    assert_eq!(decide(&view(Some("n1")), &me, &cfg(), now).actions, vec![Action::RefreshLock, Action::StartPrimary]);
    me.down_since = Some(now - Duration::from_secs(60));
    let d = decide(&view(Some("n1")), &me, &cfg(), now);
    assert_eq!(d.actions[0], Action::ReleaseLock, "{}", d.reason);
}

#[test]
fn hung_primary_is_fenced_and_releases_the_lock() {
    let now = Instant::now();
    let mut me = primary("n1", now);
    me.postgres = PgState::Unresponsive;
    assert_eq!(decide(&view(Some("n1")), &me, &cfg(), now).actions, vec![Action::Fence, Action::ReleaseLock]);
}

#[test]
fn a_data_directory_of_another_cluster_is_never_joined() {
    let mut me = replica("n2", 1000);
    me.system_identifier = Some(7);
    let d = decide(&view(Some("n1")), &me, &cfg(), Instant::now());
    assert_eq!(d.actions, vec![Action::Fence]);
    assert!(d.reason.contains("another cluster"), "{}", d.reason);
}

#[test]
fn empty_node_clones_from_the_leader_and_bootstraps_an_empty_cluster() {
    let mut me = replica("n3", 0);
    me.postgres = PgState::NoData;
    me.system_identifier = None;
    let d = decide(&view(Some("n1")), &me, &cfg(), Instant::now());
    assert_eq!(d.actions[0], Action::CloneFrom { source: "n1".into() });
    let mut v = view(None);
    v.initialized = None;
    assert_eq!(decide(&v, &me, &cfg(), Instant::now()).actions, vec![Action::Bootstrap]);
}

#[test]
fn switchover_hands_the_lock_to_a_running_candidate_only() {
    let now = Instant::now();
    let mut v = view(Some("n1"));
    v.failover = Some(switchover("n1", "n2", None));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: Some("n2".into()) }, Action::ReleaseLock]);
    // A leader that does not hand over goes on leading: it keeps refreshing its lock.
    v.failover = Some(switchover("n1", "ghost", None));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::RefreshLock, Action::ClearFailover { revision: 7 }], "{}", d.reason);
    assert!(d.reason.contains("ghost is not a running replica; staying leader"), "{}", d.reason);
}

fn sync_on() -> HaConfig {
    HaConfig { synchronous_mode: true, ..cfg() }
}

fn sync_key(leader: &str, standbys: &[&str]) -> Option<SyncKey> {
    Some(SyncKey {
        leader: Some(leader.into()),
        standbys: standbys.iter().map(|s| s.to_string()).collect(),
        revision: 3,
    })
}

#[test]
fn in_synchronous_mode_only_the_named_standby_takes_over_even_from_behind() {
    let now = Instant::now();
    let mut v = view(None);
    v.sync = sync_key("n1", &["n3"]);
    // n2 is ahead, but the sync key names n3: n2 does not race.
    let mut n2 = replica("n2", 1000);
    n2.peer_probes = Some(vec![probe("n3", Some(true), Some(900))]);
    let d = decide(&v, &n2, &sync_on(), now);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert!(d.reason.contains("only n3 may take over"), "{}", d.reason);
    // n3 does not give way to n2, which may not take over.
    let mut n3 = replica("n3", 900);
    n3.peer_probes = Some(vec![probe("n2", Some(true), Some(1000))]);
    let d = decide(&v, &n3, &sync_on(), now);
    assert_eq!(d.actions, vec![Action::AcquireLock, Action::Promote], "{}", d.reason);
    // ...but an old primary still running stops it all the same.
    n3.peer_probes = Some(vec![probe("n2", Some(false), Some(1000))]);
    assert!(decide(&v, &n3, &sync_on(), now).actions.is_empty());
    // Synchronous mode off: the key is ignored and the one ahead wins.
    n3.peer_probes = Some(vec![probe("n2", Some(true), Some(1000))]);
    assert!(decide(&v, &n3, &cfg(), now).actions.is_empty());
    assert_eq!(decide(&v, &n2, &cfg(), now).actions, vec![Action::AcquireLock, Action::Promote]);
}

#[test]
fn a_sync_key_naming_no_standby_lets_any_member_race() {
    let now = Instant::now();
    let mut v = view(None);
    v.sync = sync_key("n1", &[]);
    let mut n2 = replica("n2", 1000);
    n2.peer_probes = Some(vec![probe("n3", Some(true), Some(900))]);
    assert_eq!(decide(&v, &n2, &sync_on(), now).actions, vec![Action::AcquireLock, Action::Promote]);
}

#[test]
fn in_synchronous_mode_a_switchover_goes_only_to_a_synchronous_standby() {
    let now = Instant::now();
    let mut v = view(Some("n1"));
    v.sync = sync_key("n1", &["n3"]);
    v.failover = Some(switchover("n1", "n2", None));
    let d = decide(&v, &primary("n1", now), &sync_on(), now);
    assert_eq!(d.actions, vec![Action::RefreshLock, Action::ClearFailover { revision: 7 }], "{}", d.reason);
    assert!(d.reason.contains("n2 is not a synchronous standby"), "{}", d.reason);
    v.failover = Some(switchover("n1", "n3", None));
    let d = decide(&v, &primary("n1", now), &sync_on(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: Some("n3".into()) }, Action::ReleaseLock]);
    // Without a candidate: only while a synchronous standby runs (no other would race).
    v.failover = Some(FailoverRequest { leader: Some("n1".into()), ..FailoverRequest::default() });
    let d = decide(&v, &primary("n1", now), &sync_on(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: None }, Action::ReleaseLock], "{}", d.reason);
    v.members.retain(|m| m.name != "n3");
    let d = decide(&v, &primary("n1", now), &sync_on(), now);
    assert_eq!(d.actions, vec![Action::RefreshLock, Action::ClearFailover { revision: 0 }], "{}", d.reason);
}

proptest! {
    /// Whatever the positions and probes: in synchronous mode, with a sync key naming standbys,
    /// a member it does not name never takes the lock.
    #[test]
    fn in_synchronous_mode_an_unnamed_member_never_takes_the_lock(
        mine in 0u64..2000, theirs in proptest::collection::vec((any::<bool>(), 0u64..2000), 0..3),
        named in proptest::collection::vec(prop_oneof![Just("n1"), Just("n3"), Just("n4")], 1..3),
        manual in any::<bool>(),
    ) {
        let now = Instant::now();
        let mut v = view(None);
        v.sync = sync_key("n1", &named);
        if manual {
            v.failover = Some(FailoverRequest { leader: None, candidate: Some("n2".into()), scheduled: None, revision: 1 });
        }
        let mut me = replica("n2", mine);
        me.peer_probes = Some(
            theirs.iter().enumerate().map(|(k, (rec, lsn))| probe(&format!("n{}", k + 3), Some(*rec || k > 0), Some(*lsn))).collect(),
        );
        let d = decide(&v, &me, &sync_on(), now);
        prop_assert!(!d.actions.contains(&Action::AcquireLock), "{}", d.reason);
    }
}

#[test]
fn a_failover_to_a_candidate_makes_a_healthy_leader_hand_over_too() {
    let now = Instant::now();
    let mut v = view(Some("n1"));
    let failover =
        |candidate: &str| FailoverRequest { candidate: Some(candidate.into()), ..FailoverRequest::default() };
    v.failover = Some(failover("n2"));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: Some("n2".into()) }, Action::ReleaseLock]);
    // Not to a member that is not a running replica, and a switchover naming another leader is
    // not this leader's.
    v.failover = Some(failover("ghost"));
    assert_eq!(
        decide(&v, &primary("n1", now), &cfg(), now).actions,
        vec![Action::RefreshLock, Action::ClearFailover { revision: 0 }]
    );
    v.failover = Some(switchover("n3", "n2", None));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Demote { .. } | Action::ReleaseLock)), "{d:?}");
}

fn switchover(leader: &str, candidate: &str, late_by: Option<Duration>) -> FailoverRequest {
    FailoverRequest {
        leader: Some(leader.into()),
        candidate: Some(candidate.into()),
        scheduled: late_by.map(|late_by| ScheduledAt { at: "2030-01-01T00:00:00+00:00".into(), late_by }),
        revision: 7,
    }
}

#[test]
fn a_scheduled_switchover_found_too_late_is_dropped_not_run() {
    let now = Instant::now();
    let mut v = view(Some("n1"));
    // Within 1.5 x loop_wait (1 s) of its time it runs.
    v.failover = Some(switchover("n1", "n2", Some(Duration::from_millis(1500))));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::Demote { leader: Some("n2".into()) }, Action::ReleaseLock]);
    // Later than that: the leader keeps its lock, deletes exactly this request and says why.
    v.failover = Some(switchover("n1", "n2", Some(Duration::from_secs(2))));
    let d = decide(&v, &primary("n1", now), &cfg(), now);
    assert_eq!(d.actions, vec![Action::RefreshLock, Action::ClearFailover { revision: 7 }]);
    assert!(d.reason.starts_with("dropping the switchover scheduled at 2030-01-01T00:00:00+00:00: found 2s after its time, more than 1.5 x loop_wait (1.5s)"), "{}", d.reason);
    // The threshold follows loop_wait.
    let slow = HaConfig { loop_wait: Duration::from_secs(2), ttl: Duration::from_secs(10), ..cfg() };
    assert_eq!(decide(&v, &primary("n1", now), &slow, now).actions[0], Action::Demote { leader: Some("n2".into()) });
    // A replica does nothing with it; in a leader race it steers nothing.
    assert_eq!(decide(&v, &replica("n2", 1000), &cfg(), now).actions, vec![Action::Follow { leader: "n1".into() }]);
    let mut race = v.clone();
    race.leader = None;
    let mut n3 = replica("n3", 1000);
    n3.peer_probes = Some(vec![probe("n1", None, None), probe("n2", Some(true), Some(1000))]);
    n3.failover_priority = 2;
    assert_eq!(decide(&race, &n3, &cfg(), now).actions, vec![Action::AcquireLock, Action::Promote]);
    race.failover = Some(switchover("n1", "n2", Some(Duration::ZERO)));
    assert!(decide(&race, &n3, &cfg(), now).actions.is_empty(), "a due switchover to n2 lets n2 win");
}

proptest! {
    #[test]
    fn a_scheduled_switchover_runs_only_within_one_and_a_half_loop_waits(
        late_ms in 0u64..20_000, loop_ms in 100u64..5_000,
    ) {
        let now = Instant::now();
        let config = HaConfig {
            loop_wait: Duration::from_millis(loop_ms),
            ttl: Duration::from_millis(loop_ms * 2 + 10_000),
            ..cfg()
        };
        let mut v = view(Some("n1"));
        v.failover = Some(switchover("n1", "n2", Some(Duration::from_millis(late_ms))));
        let d = decide(&v, &primary("n1", now), &config, now);
        let stale = late_ms * 2 > loop_ms * 3;
        prop_assert_eq!(d.actions.contains(&Action::ClearFailover { revision: 7 }), stale);
        prop_assert_eq!(d.actions.contains(&Action::ReleaseLock), !stale);
    }
}

#[test]
fn timing_rule_is_checked() {
    let bad = HaConfig { ttl: Duration::from_secs(5), ..HaConfig::default() };
    let err = bad.check().unwrap_err();
    assert!(err.contains("loop_wait + 2 x retry_timeout"), "{err}");
    assert!(HaConfig::default().check().is_ok());
}

fn arb_pg() -> impl Strategy<Value = PgState> {
    prop_oneof![
        Just(PgState::NoData),
        Just(PgState::Stopped),
        Just(PgState::Unresponsive),
        (prop_oneof![Just(Role::Primary), Just(Role::Replica)], 1u32..4, 0u64..3000)
            .prop_map(|(role, timeline, l)| PgState::Running { role, timeline, wal_position: Lsn(l) }),
    ]
}

fn arb_probe() -> impl Strategy<Value = PeerProbe> {
    ("n[1-4]", proptest::option::of(any::<bool>()), proptest::option::of(0u64..3000), 0i32..3).prop_map(
        |(name, in_recovery, lsn, prio)| PeerProbe {
            name,
            in_recovery,
            timeline: Some(1),
            wal_position: lsn.map(Lsn),
            failover_priority: prio,
        },
    )
}

prop_compose! {
    fn arb_case()(
        reachable in any::<bool>(),
        leader in proptest::option::of("n[1-4]"),
        leader_tl in proptest::option::of(1u32..4),
        leader_lsn in proptest::option::of(0u64..3000),
        paused in any::<bool>(),
        pg in arb_pg(),
        sysid in proptest::option::of(prop_oneof![Just(42u64), Just(7u64)]),
        streamed in proptest::option::of((1u32..4, 0u64..3000)),
        probes in proptest::option::of(proptest::collection::vec(arb_probe(), 0..4)),
        nofailover in any::<bool>(),
        lease_left_ms in proptest::option::of(0u64..20_000),
        refresh_failed in any::<bool>(),
    ) -> (ClusterView, LocalState, u64) {
        let v = ClusterView {
            reachable,
            initialized: Some(42),
            leader,
            members: vec![member("n1", Role::Primary, 1, 1000), member("n2", Role::Replica, 1, 1000)],
            leader_timeline: leader_tl,
            leader_lsn: leader_lsn.map(Lsn),
            failover: None,
            paused,
            retain_slots: vec![],
            slot_positions: Default::default(),
            sync: None,
        };
        let local = LocalState {
            name: "n1".into(),
            postgres: pg,
            system_identifier: sysid,
            lease_valid_until: None,
            refresh_failed,
            down_since: None,
            last_streamed: streamed.map(|(timeline, l)| StreamPoint { timeline, lsn: Lsn(l) }),
            not_streaming_for: None,
            peer_probes: probes,
            nofailover,
            failover_priority: 1,
        };
        (v, local, lease_left_ms.unwrap_or(0))
    }
}

proptest! {
    #[test]
    fn safety_invariants_hold_for_any_view((v, mut local, lease_left_ms) in arb_case()) {
        let now = Instant::now();
        local.lease_valid_until = Some(now + Duration::from_millis(lease_left_ms));
        let c = cfg();
        let d = decide(&v, &local, &c, now);
        prop_assert!(!d.reason.is_empty());
        // Deterministic.
        prop_assert_eq!(&d, &decide(&v, &local, &c, now));
        let me = local.name.as_str();
        let promotes = d.actions.contains(&Action::Promote);
        let acquires = d.actions.contains(&Action::AcquireLock);
        if promotes {
            // Promote only with the lock in hand or right after taking a free lock.
            prop_assert!(v.leader.as_deref() == Some(me) || (v.leader.is_none() && acquires), "{:?}", d);
            prop_assert!(v.reachable);
        }
        if acquires && !matches!(local.postgres, PgState::Running { role: Role::Primary, .. }) {
            // Automatic promotion only for a trusted, eligible replica.
            prop_assert!(!local.nofailover && !v.paused);
            let streamed = local.last_streamed.map(|s| s.timeline);
            prop_assert!(streamed.is_some() && streamed == v.leader_timeline, "{:?}", d);
            prop_assert!(local.peer_probes.is_some());
            let probes = local.peer_probes.clone().unwrap_or_default();
            prop_assert!(
                probes.iter().filter(|p| p.name != local.name).all(|p| p.in_recovery != Some(false)),
                "raced while a primary answered: {:?}",
                d
            );
        }
        // Never join another cluster's data.
        if local.system_identifier == Some(7) && v.reachable {
            prop_assert!(d.actions.iter().all(|a| matches!(a, Action::Fence)), "{:?}", d);
        }
        // A primary whose lease ends before the next tick could finish a demotion demotes.
        let primary = matches!(local.postgres, PgState::Running { role: Role::Primary, .. });
        if primary && !v.reachable && lease_left_ms < (c.loop_wait + c.retry_timeout * 2).as_millis() as u64 {
            prop_assert!(matches!(d.actions.first(), Some(Action::Demote { .. })), "{:?}", d);
        }
        // A primary that sees another member hold the lock stops being primary at once.
        if primary && v.reachable && local.system_identifier != Some(7) {
            if let Some(l) = &v.leader {
                if l != me {
                    prop_assert!(matches!(d.actions.first(), Some(Action::Demote { .. })), "{:?}", d);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// In a leader race, the node takes the lock only when no answering member is primary or
    /// ahead of it, it streamed from the last leader's timeline, and it is within the lag limit.
    #[test]
    fn race_is_won_only_by_an_eligible_member_that_nobody_beats(
        my_lsn in 0u64..2000,
        my_tl in 1u32..3,
        streamed_tl in proptest::option::of(1u32..3),
        leader_tl in proptest::option::of(1u32..3),
        leader_lsn in proptest::option::of(0u64..2000),
        probes in proptest::collection::vec(arb_probe(), 0..4),
        priority in 0i32..3,
    ) {
        let mut v = view(None);
        v.leader_timeline = leader_tl;
        v.leader_lsn = leader_lsn.map(Lsn);
        let mut me = replica("n1", my_lsn);
        me.postgres = PgState::Running { role: Role::Replica, timeline: my_tl, wal_position: Lsn(my_lsn) };
        me.last_streamed = streamed_tl.map(|timeline| StreamPoint { timeline, lsn: Lsn(my_lsn) });
        me.failover_priority = priority;
        me.peer_probes = Some(probes.clone());
        let c = cfg();
        let d = decide(&v, &me, &c, Instant::now());
        if d.actions.contains(&Action::AcquireLock) {
            prop_assert_eq!(streamed_tl, leader_tl);
            prop_assert_eq!(Some(my_tl), leader_tl);
            if let Some(l) = leader_lsn {
                prop_assert!(l.saturating_sub(my_lsn) <= c.maximum_lag_on_failover);
            }
            for p in probes.iter().filter(|p| p.name != "n1") {
                prop_assert!(p.in_recovery != Some(false), "raced while {} answered as primary: {}", p.name, d.reason);
                if let Some(w) = p.wal_position {
                    prop_assert!(w.0 < my_lsn || (w.0 == my_lsn && p.failover_priority <= priority), "{} beats me: {}", p.name, d.reason);
                }
            }
        } else {
            prop_assert!(d.actions.is_empty(), "{:?}", d);
        }
    }
}

#[test]
fn only_a_planned_handover_by_a_leader_with_time_on_its_lease_drains_before_demoting() {
    let now = Instant::now();
    let (wait, loop_wait) = (Duration::from_secs(2), Duration::from_secs(1));
    let request =
        FailoverRequest { leader: Some("n1".into()), candidate: Some("n2".into()), scheduled: None, revision: 7 };
    let mut v = view(Some("n1"));
    v.failover = Some(request.clone());
    let fresh = Some(now + Duration::from_secs(6));
    assert!(drains_before_demote(&v, "n1", fresh, now, wait, loop_wait));
    // No switchover asked for: a demotion for any other reason does not wait.
    assert!(!drains_before_demote(&view(Some("n1")), "n1", fresh, now, wait, loop_wait));
    // The lock is someone else's, or gone.
    let mut taken = view(Some("n2"));
    taken.failover = Some(request.clone());
    assert!(!drains_before_demote(&taken, "n1", fresh, now, wait, loop_wait));
    let mut free = view(None);
    free.failover = Some(request);
    assert!(!drains_before_demote(&free, "n1", fresh, now, wait, loop_wait));
    // The lease was lost, or ends before the wait and one more loop would.
    assert!(!drains_before_demote(&v, "n1", None, now, wait, loop_wait));
    assert!(!drains_before_demote(&v, "n1", Some(now + Duration::from_secs(3)), now, wait, loop_wait));
}
