//! Permanent physical replication slots (Patroni's `slots` in the dynamic configuration): slots
//! for consumers outside the cluster (pg_receivewal, Barman, a standby in another data centre)
//! that must survive a failover. Every member keeps them: the primary for the consumer, each
//! standby advanced to where the primary's slot is (never past its own replay), so that the
//! standby that takes over has the slot at about the consumer's position and the WAL from
//! there. Pure: the runtime gives the names, the server's slots and positions, and runs the plan.
//!
//! Only slots this node made as permanent (recorded by the runtime) are ever dropped, once they
//! leave the configuration; a slot made by hand with the same name as a configured one is kept
//! and advanced like one of ours, but not dropped.

use super::Lsn;
use std::collections::BTreeMap;

/// What to do to this node's slots this tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PermanentSlotPlan {
    /// Configured slots the server lacks.
    pub create: Vec<String>,
    /// A standby's slots to move forward, to this position.
    pub advance: Vec<(String, Lsn)>,
    /// Slots this node made as permanent that are no longer configured (dropped if inactive).
    pub drop: Vec<String>,
}

/// The plan. `wanted`: the configured slot names; `existing`: the server's physical slots and
/// their restart_lsn (None before it reserved WAL); `leader`: the primary's positions of the
/// permanent slots (the `status` key), given on a standby only; `replayed`: a standby's replay
/// position; `made`: the slots this node recorded as made by it as permanent.
pub fn plan(
    wanted: &[String],
    existing: &BTreeMap<String, Option<Lsn>>,
    leader: Option<&BTreeMap<String, Lsn>>,
    replayed: Option<Lsn>,
    made: &[String],
) -> PermanentSlotPlan {
    let create = wanted.iter().filter(|w| !existing.contains_key(*w)).cloned().collect();
    let mut advance = Vec::new();
    if let (Some(leader), Some(replayed)) = (leader, replayed) {
        for name in wanted {
            let (Some(Some(now)), Some(at_leader)) = (existing.get(name), leader.get(name)) else { continue };
            let to = (*at_leader).min(replayed);
            if to > *now {
                advance.push((name.clone(), to));
            }
        }
    }
    let drop = made.iter().filter(|m| !wanted.contains(m) && existing.contains_key(*m)).cloned().collect();
    PermanentSlotPlan { create, advance, drop }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_standby_makes_the_slots_and_follows_the_primary_up_to_its_replay() {
        let existing: BTreeMap<String, Option<Lsn>> =
            [("keeper".to_string(), Some(Lsn(100))), ("barman".to_string(), Some(Lsn(500)))].into();
        let leader: BTreeMap<String, Lsn> = [("keeper".to_string(), Lsn(400)), ("barman".to_string(), Lsn(450))].into();
        let p = plan(&names(&["keeper", "barman", "new"]), &existing, Some(&leader), Some(Lsn(300)), &[]);
        assert_eq!(p.create, names(&["new"]));
        // keeper: to the replay position (300), not to the primary's 400; barman is already past.
        assert_eq!(p.advance, vec![("keeper".to_string(), Lsn(300))]);
        assert!(p.drop.is_empty());
        // The primary only creates (its consumers move its slots).
        let p = plan(&names(&["keeper"]), &existing, None, None, &[]);
        assert_eq!(p, PermanentSlotPlan::default());
    }

    #[test]
    fn only_slots_made_here_as_permanent_are_dropped_once_unconfigured() {
        let existing: BTreeMap<String, Option<Lsn>> =
            [("keeper".to_string(), None), ("by_hand".to_string(), None), ("node2".to_string(), None)].into();
        let p = plan(&[], &existing, None, None, &names(&["keeper", "gone_already"]));
        assert_eq!(p.drop, names(&["keeper"]));
        let p = plan(&names(&["keeper"]), &existing, None, None, &names(&["keeper"]));
        assert!(p.drop.is_empty() && p.create.is_empty(), "{p:?}");
    }

    proptest! {
        #[test]
        fn never_past_the_primary_or_the_replay_never_back_never_a_foreign_drop(
            slots in proptest::collection::btree_map("[a-e]", proptest::option::of(0u64..1000), 0..5),
            leader in proptest::collection::btree_map("[a-e]", 0u64..1000, 0..5),
            wanted in proptest::collection::vec("[a-g]", 0..5),
            made in proptest::collection::vec("[a-g]", 0..5),
            replayed in 0u64..1000,
        ) {
            let existing: BTreeMap<String, Option<Lsn>> = slots.iter().map(|(k, v)| (k.clone(), v.map(Lsn))).collect();
            let leader: BTreeMap<String, Lsn> = leader.iter().map(|(k, v)| (k.clone(), Lsn(*v))).collect();
            let p = plan(&wanted, &existing, Some(&leader), Some(Lsn(replayed)), &made);
            for (name, to) in &p.advance {
                prop_assert!(wanted.contains(name));
                prop_assert!(*to <= Lsn(replayed) && Some(to) <= leader.get(name));
                prop_assert!(Some(Some(*to)) > existing.get(name).copied());
            }
            for name in &p.drop {
                prop_assert!(made.contains(name) && !wanted.contains(name) && existing.contains_key(name));
            }
            for name in &p.create {
                prop_assert!(wanted.contains(name) && !existing.contains_key(name));
            }
        }
    }
}
