//! The members' physical replication slots on the primary: which to create, and when the slot of a
//! member that left the cluster is dropped (Patroni 4's `member_slots_ttl`). Pure: the runtime
//! gives the members in the DCS, the slots the server has and the time, and runs the plan.
//!
//! A slot is only ever dropped if this cluster manages it: it was made for a member, or it is in
//! the `retain_slots` list a leader writes to the `status` key. Slots made by hand or by other
//! tools (pg_receivewal, a backup) are never touched.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// What the leader does to the server's slots this tick.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SlotPlan {
    /// Members without a slot.
    pub create: Vec<String>,
    /// Slots of members gone from the DCS for `member_slots_ttl` (dropped if no walsender holds
    /// them; an active one is tried again next tick).
    pub drop: Vec<String>,
}

/// The slots this cluster manages, with when their member was last in the DCS.
#[derive(Debug, Default)]
pub struct MemberSlots {
    seen: BTreeMap<String, Instant>,
    last_plan: Option<Instant>,
}

/// A name this module will put in SQL: what [`crate::postgres::control::slot_name`] makes
/// (PostgreSQL's own rule for slot names), at most 63 bytes.
pub fn is_slot_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl MemberSlots {
    /// This tick's plan. `members`: the slot names of the members in the DCS, this node's own
    /// included (it is never created nor dropped); `me`: this node's slot name; `existing`: the
    /// physical slots the server has; `retained`: the `retain_slots` of the status key, the
    /// slots an earlier leader managed, taken over at the first plan of a leadership.
    ///
    /// After a gap in leadership (no plan for `gap`) every known slot counts as seen now: what
    /// happened meanwhile is unknown, so a departed member gets the whole ttl again rather than
    /// losing its slot early.
    #[allow(clippy::too_many_arguments)]
    pub fn plan(
        &mut self,
        members: &[String],
        me: &str,
        existing: &[String],
        retained: &[String],
        now: Instant,
        ttl: Duration,
        gap: Duration,
    ) -> SlotPlan {
        if !self.leading(now, gap) {
            for seen in self.seen.values_mut() {
                *seen = now;
            }
            for name in retained.iter().filter(|n| is_slot_name(n)) {
                self.seen.entry(name.clone()).or_insert(now);
            }
        }
        self.last_plan = Some(now);
        for name in members.iter().filter(|n| is_slot_name(n)) {
            self.seen.insert(name.clone(), now);
        }
        let create = members.iter().filter(|m| *m != me && is_slot_name(m) && !existing.contains(m)).cloned().collect();
        let mut drop = Vec::new();
        self.seen.retain(|name, seen| {
            if now.saturating_duration_since(*seen) < ttl {
                return true;
            }
            if existing.contains(name) {
                drop.push(name.clone());
                return true; // until the drop is done
            }
            false // gone from the server: nothing left to keep
        });
        SlotPlan { create, drop }
    }

    /// Whether the last plan was made within `gap` of `now` (this leadership has planned).
    pub fn leading(&self, now: Instant, gap: Duration) -> bool {
        self.last_plan.is_some_and(|t| now.saturating_duration_since(t) <= gap)
    }

    /// The slot was dropped: it is no longer managed.
    pub fn dropped(&mut self, name: &str) {
        self.seen.remove(name);
    }

    /// The `retain_slots` for the status key: every slot managed, members' and departed ones'.
    pub fn retained(&self) -> Vec<String> {
        self.seen.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    const TTL: Duration = Duration::from_secs(30);
    const GAP: Duration = Duration::from_secs(10);

    #[test]
    fn members_without_a_slot_get_one_and_the_leader_never_gets_its_own() {
        let mut slots = MemberSlots::default();
        let now = Instant::now();
        let plan = slots.plan(&names(&["a", "b", "c"]), "a", &names(&["b"]), &[], now, TTL, GAP);
        assert_eq!(plan, SlotPlan { create: names(&["c"]), drop: vec![] });
        assert_eq!(slots.retained(), names(&["a", "b", "c"]));
    }

    #[test]
    fn a_departed_members_slot_is_kept_for_the_ttl_then_dropped_and_forgotten() {
        let mut slots = MemberSlots::default();
        let t0 = Instant::now();
        let existing = names(&["b", "c"]);
        slots.plan(&names(&["a", "b", "c"]), "a", &existing, &[], t0, TTL, GAP);
        // c leaves the DCS: its slot stays while the ttl runs (the leader plans every second).
        let mut t = t0;
        for _ in 0..29 {
            t += Duration::from_secs(1);
            let plan = slots.plan(&names(&["a", "b"]), "a", &existing, &[], t, TTL, GAP);
            assert!(plan.drop.is_empty(), "dropped at {:?}", t - t0);
        }
        t += Duration::from_secs(1);
        let plan = slots.plan(&names(&["a", "b"]), "a", &existing, &[], t, TTL, GAP);
        assert_eq!(plan.drop, names(&["c"]));
        // An active slot is not dropped by the runtime: the plan asks again next tick.
        t += Duration::from_secs(1);
        assert_eq!(slots.plan(&names(&["a", "b"]), "a", &existing, &[], t, TTL, GAP).drop, names(&["c"]));
        slots.dropped("c");
        assert_eq!(slots.retained(), names(&["a", "b"]));
        let plan = slots.plan(&names(&["a", "b"]), "a", &names(&["b"]), &[], t + Duration::from_secs(1), TTL, GAP);
        assert_eq!(plan, SlotPlan::default());
    }

    #[test]
    fn a_member_back_within_the_ttl_keeps_its_slot() {
        let mut slots = MemberSlots::default();
        let t0 = Instant::now();
        let existing = names(&["b"]);
        slots.plan(&names(&["a", "b"]), "a", &existing, &[], t0, TTL, GAP);
        let mut t = t0;
        for i in 1..=90 {
            t = t0 + Duration::from_secs(i);
            // b is away for 25 s of every 30.
            let members = if i % 30 < 25 { names(&["a"]) } else { names(&["a", "b"]) };
            assert!(slots.plan(&members, "a", &existing, &[], t, TTL, GAP).drop.is_empty(), "at {i} s");
        }
        assert!(t > t0 + TTL);
    }

    #[test]
    fn slots_not_managed_here_are_never_dropped() {
        let mut slots = MemberSlots::default();
        let t0 = Instant::now();
        let existing = names(&["b", "pg_receivewal", "barman"]);
        for i in 0..100 {
            let plan = slots.plan(&names(&["a", "b"]), "a", &existing, &[], t0 + Duration::from_secs(i), TTL, GAP);
            assert!(plan.drop.is_empty());
        }
    }

    #[test]
    fn a_new_leader_keeps_the_slots_the_status_key_retains_for_a_whole_ttl() {
        let mut slots = MemberSlots::default();
        let t0 = Instant::now();
        let existing = names(&["b", "c"]);
        // c left under the previous leader; the status key still lists it.
        let retained = names(&["a", "b", "c", "Bad Name'; drop table x; --"]);
        let plan = slots.plan(&names(&["a", "b"]), "b", &existing, &retained, t0, TTL, GAP);
        assert!(plan.drop.is_empty());
        assert_eq!(slots.retained(), names(&["a", "b", "c"]), "a name PostgreSQL would refuse is not taken");
        // The leader plans every second; c's slot goes a ttl after the takeover.
        for i in 1..30 {
            let plan =
                slots.plan(&names(&["a", "b"]), "b", &existing, &retained, t0 + Duration::from_secs(i), TTL, GAP);
            assert!(plan.drop.is_empty(), "at {i} s");
        }
        let plan = slots.plan(&names(&["a", "b"]), "b", &existing, &retained, t0 + TTL, TTL, GAP);
        assert_eq!(plan.drop, names(&["c"]));
    }

    #[test]
    fn after_a_gap_in_leadership_the_ttl_starts_again() {
        let mut slots = MemberSlots::default();
        let t0 = Instant::now();
        let existing = names(&["c"]);
        slots.plan(&names(&["a", "c"]), "a", &existing, &[], t0, TTL, GAP);
        // a lost the lead for an hour; meanwhile c left. Back as leader, c keeps its slot a ttl.
        let back = t0 + Duration::from_secs(3600);
        assert!(slots.plan(&names(&["a"]), "a", &existing, &[], back, TTL, GAP).drop.is_empty());
        let plan = slots.plan(&names(&["a"]), "a", &existing, &[], back + Duration::from_secs(5), TTL, GAP);
        assert!(plan.drop.is_empty());
    }

    proptest! {
        /// Whatever the members do: a slot is dropped only if it is managed, its member has been
        /// away for at least the ttl (counted from the last plan that saw it), and the server has it.
        #[test]
        fn only_managed_slots_of_members_away_for_the_ttl_are_dropped(
            steps in proptest::collection::vec((proptest::collection::vec(0usize..4, 0..4), 1u64..8), 1..60),
        ) {
            let all = names(&["m0", "m1", "m2", "m3"]);
            let existing = names(&["m0", "m1", "m2", "m3", "other"]);
            let mut slots = MemberSlots::default();
            let t0 = Instant::now();
            let mut t = t0;
            let mut last_seen: BTreeMap<String, Instant> = BTreeMap::new();
            for (present, step) in steps {
                t += Duration::from_secs(step);
                let members: Vec<String> = present.iter().map(|&i| all[i].clone()).collect();
                for m in &members { last_seen.insert(m.clone(), t); }
                let plan = slots.plan(&members, "m0", &existing, &[], t, TTL, GAP);
                for d in &plan.drop {
                    let seen = last_seen.get(d).copied();
                    prop_assert!(seen.is_some(), "{d} was never a member");
                    prop_assert!(!members.contains(d), "{d} is a member");
                    prop_assert!(t.saturating_duration_since(seen.unwrap_or(t)) >= TTL, "{d} away for less than the ttl");
                    slots.dropped(d);
                }
                for c in &plan.create { prop_assert!(members.contains(c) && c != "m0"); }
            }
        }
    }
}
