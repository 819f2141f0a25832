//! Synchronous mode on the primary: which standbys `synchronous_standby_names` names, and when the
//! `sync` key may name them. The key may only ever name standbys that hold every transaction the
//! primary acknowledged (only they may take over), so it shrinks before a standby leaves
//! synchronous_standby_names, and it grows only once a newly named standby is synchronous and has
//! flushed everything written before it became so. Pure: the runtime reads pg_stat_replication
//! and carries the plan out in order.

use super::Lsn;
use std::collections::BTreeMap;

/// One WAL sender of the primary (a row of pg_stat_replication), by member name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalSender {
    pub member: String,
    /// `state = 'streaming'`.
    pub streaming: bool,
    /// `sync_state = 'sync'`: commits wait for this standby now.
    pub sync: bool,
    pub flush: Option<Lsn>,
}

/// What the leader sees this tick.
#[derive(Debug, Clone)]
pub struct SyncInputs<'a> {
    /// synchronous_node_count (at least 1).
    pub node_count: usize,
    /// maximum_lag_on_syncnode: a standby whose flushed WAL is further behind `current` is
    /// neither kept nor made synchronous.
    pub max_lag: Option<u64>,
    /// The standbys of the `sync` key when this leader wrote it; None when the key is missing or
    /// another leader's (a new leader first claims it).
    pub key: Option<&'a [String]>,
    /// Members that may be synchronous: alive in the DCS, not this node, not tagged nosync.
    pub candidates: &'a [String],
    pub senders: &'a [WalSender],
    /// pg_current_wal_lsn(), read with `senders`.
    pub current: Lsn,
    /// The standbys synchronous_standby_names names now.
    pub configured: &'a [String],
}

/// The steps of one tick, to be carried out in this order; the runtime stops at the first that
/// fails.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncPlan {
    /// Write the key with these standbys (sorted) before anything else.
    pub key_first: Option<Vec<String>>,
    /// Set synchronous_standby_names to these standbys (in this order).
    pub configure: Option<Vec<String>>,
    /// Then write the key with these standbys (sorted).
    pub key_then: Option<Vec<String>>,
}

/// Remembers, for each named standby, the primary's WAL position when it was first seen
/// synchronous: it counts as synchronous for the key only once it has flushed up to there
/// (transactions acknowledged before it became synchronous did not wait for it).
#[derive(Debug, Clone, Default)]
pub struct SyncTracker {
    seen_sync_at: BTreeMap<String, Lsn>,
}

impl SyncTracker {
    /// A leader that starts managing an already synchronous primary (its agent restarted): the
    /// standbys its key names that PostgreSQL reports synchronous now held every acknowledged
    /// commit already (they entered the key only so, and would have left it before leaving the
    /// setting), so they count as caught up.
    pub fn resume(&mut self, key: &[String], senders: &[WalSender]) {
        for s in senders.iter().filter(|s| s.streaming && s.sync && key.contains(&s.member)) {
            self.seen_sync_at.insert(s.member.clone(), Lsn(0));
        }
    }

    pub fn plan(&mut self, i: &SyncInputs) -> SyncPlan {
        let sender = |m: &str| i.senders.iter().find(|s| s.member == m);
        let configured = |m: &str| i.configured.iter().any(|c| c == m);
        let sync_now = |m: &str| sender(m).is_some_and(|s| s.streaming && s.sync) && configured(m);
        self.seen_sync_at.retain(|m, _| sync_now(m));
        for m in i.configured.iter().filter(|m| sync_now(m)) {
            self.seen_sync_at.entry(m.clone()).or_insert(i.current);
        }
        let confirmed = |m: &str| {
            sync_now(m)
                && match (self.seen_sync_at.get(m), sender(m).and_then(|s| s.flush)) {
                    (Some(at), Some(flush)) => flush >= *at,
                    _ => false,
                }
        };

        // The standbys to name: streaming candidates, those named now first (a change of
        // synchronous standby is a window without one), then the furthest ahead.
        let close_enough = |s: &WalSender| match i.max_lag {
            None => true,
            Some(max) => s.flush.is_some_and(|f| f.bytes_behind(i.current) <= max),
        };
        let mut eligible: Vec<&String> =
            i.candidates.iter().filter(|c| sender(c).is_some_and(|s| s.streaming && close_enough(s))).collect();
        eligible.sort_by(|a, b| {
            configured(b)
                .cmp(&configured(a))
                .then_with(|| sender(b).and_then(|s| s.flush).cmp(&sender(a).and_then(|s| s.flush)))
                .then_with(|| a.cmp(b))
        });
        eligible.dedup();
        let picked: Vec<String> = eligible.into_iter().take(i.node_count.max(1)).cloned().collect();
        let is_picked = |m: &str| picked.iter().any(|p| p == m);

        let key_now: Vec<String> = sorted(i.key.unwrap_or_default().to_vec());
        let keep: Vec<String> = key_now.iter().filter(|m| is_picked(m) && confirmed(m)).cloned().collect();
        let key_first = (i.key.is_none() || keep != key_now).then(|| keep.clone());
        let key_after_first = key_first.clone().unwrap_or(key_now);

        let configure = (sorted(picked.clone()) != sorted(i.configured.to_vec())).then(|| picked.clone());

        let target: Vec<String> = sorted(picked.iter().filter(|m| confirmed(m)).cloned().collect());
        let key_then = (target != key_after_first).then_some(target);
        SyncPlan { key_first, configure, key_then }
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v.dedup();
    v
}

/// synchronous_standby_names for these application names: `FIRST n (...)`; for none, empty
/// (commits go on without a standby) or, `strict`, `*` (they wait for any standby).
pub fn standby_names_setting(application_names: &[String], strict: bool) -> String {
    if application_names.is_empty() {
        return if strict { "*".into() } else { String::new() };
    }
    let quoted: Vec<String> = application_names.iter().map(|n| format!("\"{}\"", n.replace('"', "\"\""))).collect();
    format!("FIRST {} ({})", application_names.len(), quoted.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn sender(member: &str, sync: bool, flush: u64) -> WalSender {
        WalSender { member: member.into(), streaming: true, sync, flush: Some(Lsn(flush)) }
    }

    #[test]
    fn a_new_leader_claims_the_key_then_names_a_standby_once_it_is_synchronous_and_caught_up() {
        let mut t = SyncTracker::default();
        let candidates = s(&["n2", "n3"]);
        let senders = [sender("n2", false, 100), sender("n3", false, 90)];
        let input = SyncInputs {
            node_count: 1,
            max_lag: None,
            key: None,
            candidates: &candidates,
            senders: &senders,
            current: Lsn(100),
            configured: &[],
        };
        // Claim the key naming nobody, name the furthest standby.
        let p = t.plan(&input);
        assert_eq!(p, SyncPlan { key_first: Some(vec![]), configure: Some(s(&["n2"])), key_then: None });

        // Named and synchronous, but behind what was written before: not yet in the key.
        let empty: Vec<String> = vec![];
        let configured = s(&["n2"]);
        let senders = [sender("n2", true, 150), sender("n3", false, 150)];
        let input =
            SyncInputs { key: Some(&empty), senders: &senders, current: Lsn(200), configured: &configured, ..input };
        assert_eq!(t.plan(&input), SyncPlan::default());
        // Caught up with the position at which it was first seen synchronous: named.
        let senders = [sender("n2", true, 200), sender("n3", false, 150)];
        let input = SyncInputs { senders: &senders, current: Lsn(260), ..input };
        assert_eq!(t.plan(&input), SyncPlan { key_then: Some(s(&["n2"])), ..SyncPlan::default() });
    }

    #[test]
    fn a_lost_standby_leaves_the_key_before_it_leaves_the_setting() {
        let mut t = SyncTracker::default();
        let candidates = s(&["n2", "n3"]);
        let key = s(&["n2"]);
        let configured = s(&["n2"]);
        // n2 stopped streaming: out of the key first, then n3 is named instead.
        let senders = [sender("n3", false, 500)];
        let p = t.plan(&SyncInputs {
            node_count: 1,
            max_lag: None,
            key: Some(&key),
            candidates: &candidates,
            senders: &senders,
            current: Lsn(500),
            configured: &configured,
        });
        assert_eq!(p, SyncPlan { key_first: Some(vec![]), configure: Some(s(&["n3"])), key_then: None });
    }

    #[test]
    fn a_restarted_agent_keeps_the_synchronous_standby_its_key_names() {
        let candidates = s(&["n2", "n3"]);
        let key = s(&["n2"]);
        // PostgreSQL still runs with n2 synchronous; n2 is a little behind the current position.
        let senders = [sender("n2", true, 90), sender("n3", false, 100)];
        let input = SyncInputs {
            node_count: 1,
            max_lag: None,
            key: Some(&key),
            candidates: &candidates,
            senders: &senders,
            current: Lsn(100),
            configured: &key,
        };
        let mut resumed = SyncTracker::default();
        resumed.resume(&key, &senders);
        assert_eq!(resumed.plan(&input), SyncPlan::default());
        // Without it, the key would lose n2 until it caught up with the current position.
        assert_eq!(SyncTracker::default().plan(&input).key_first, Some(vec![]));
    }

    #[test]
    fn a_standby_beyond_maximum_lag_on_syncnode_is_replaced() {
        let candidates = s(&["n2", "n3"]);
        let key = s(&["n2"]);
        let senders = [sender("n2", true, 1000), sender("n3", false, 5000)];
        let input = SyncInputs {
            node_count: 1,
            max_lag: Some(1 << 10),
            key: Some(&key),
            candidates: &candidates,
            senders: &senders,
            current: Lsn(5000),
            configured: &key,
        };
        let mut t = SyncTracker::default();
        t.resume(&key, &senders);
        // 4000 bytes behind with a limit of 1024: out of the key first, n3 named instead.
        assert_eq!(t.plan(&input), SyncPlan { key_first: Some(vec![]), configure: Some(s(&["n3"])), key_then: None });
        // No limit (-1): kept.
        let mut t = SyncTracker::default();
        t.resume(&key, &senders);
        assert_eq!(t.plan(&SyncInputs { max_lag: None, ..input }), SyncPlan::default());
    }

    #[test]
    fn the_setting_names_standbys_in_order() {
        assert_eq!(standby_names_setting(&[], false), "");
        assert_eq!(standby_names_setting(&[], true), "*");
        assert_eq!(standby_names_setting(&s(&["n2"]), true), "FIRST 1 (\"n2\")");
        assert_eq!(standby_names_setting(&s(&["n3", "n2"]), false), "FIRST 2 (\"n3\", \"n2\")");
    }

    /// The cluster as the leader's steps leave it, and what PostgreSQL reports.
    #[derive(Debug, Clone)]
    struct Sim {
        key: Option<Vec<String>>,
        configured: Vec<String>,
        /// Per member: streaming, flushed position.
        standbys: BTreeMap<String, (bool, u64)>,
        current: u64,
        /// The primary's position when each configured standby became synchronous.
        sync_from: BTreeMap<String, u64>,
    }

    proptest! {
        /// Over any run of ticks (standbys connecting, disconnecting, falling behind, catching
        /// up; the node count changing): the key only names standbys that are named in
        /// synchronous_standby_names and have flushed everything written before they became
        /// synchronous, and no standby leaves the setting while the key still names it.
        #[test]
        fn the_key_never_names_a_standby_that_may_lack_an_acknowledged_transaction(
            ticks in proptest::collection::vec(
                (proptest::collection::vec((any::<bool>(), 0u64..40), 3), 0u64..30, 1usize..3, any::<bool>()),
                1..25,
            ),
            max_lag in proptest::option::of(0u64..40),
        ) {
            let names = s(&["n2", "n3", "n4"]);
            let mut t = SyncTracker::default();
            let mut sim = Sim { key: None, configured: vec![], standbys: BTreeMap::new(), current: 100, sync_from: BTreeMap::new() };
            for (standbys, advance, node_count, lose_key) in ticks {
                sim.current += advance;
                for (name, (streaming, behind)) in names.iter().zip(standbys) {
                    let flush = sim.current.saturating_sub(behind);
                    sim.standbys.insert(name.clone(), (streaming, flush));
                }
                // PostgreSQL: a configured, streaming standby is synchronous; the position at
                // which it became so is the primary's at that moment.
                let configured = sim.configured.clone();
                sim.sync_from.retain(|m, _| configured.contains(m) && sim.standbys[m].0);
                for m in &sim.configured {
                    if sim.standbys[m].0 {
                        sim.sync_from.entry(m.clone()).or_insert(sim.current);
                    }
                }
                let senders: Vec<WalSender> = sim
                    .standbys
                    .iter()
                    .filter(|(_, (streaming, _))| *streaming)
                    .map(|(m, (_, flush))| WalSender {
                        member: m.clone(),
                        streaming: true,
                        sync: sim.sync_from.contains_key(m),
                        flush: Some(Lsn(*flush)),
                    })
                    .collect();
                if lose_key {
                    sim.key = None;
                }
                let key = sim.key.clone();
                let plan = t.plan(&SyncInputs {
                    node_count,
                    max_lag,
                    key: key.as_deref(),
                    candidates: &names,
                    senders: &senders,
                    current: Lsn(sim.current),
                    configured: &configured,
                });
                if let Some(k) = &plan.key_first {
                    if let Some(old) = &sim.key {
                        prop_assert!(k.iter().all(|m| old.contains(m)), "the first write only shrinks the key");
                    }
                    sim.key = Some(k.clone());
                }
                if let Some(c) = &plan.configure {
                    prop_assert!(c.len() <= node_count.max(1));
                    for gone in sim.configured.iter().filter(|m| !c.contains(m)) {
                        prop_assert!(
                            !sim.key.as_ref().is_some_and(|k| k.contains(gone)),
                            "{gone} left synchronous_standby_names while the key named it"
                        );
                    }
                    sim.configured = c.clone();
                }
                if let Some(k) = &plan.key_then {
                    sim.key = Some(k.clone());
                }
                let key = sim.key.clone().unwrap_or_default();
                for m in &key {
                    prop_assert!(sim.configured.contains(m), "{m} is in the key but not in the setting");
                    let from = sim.sync_from.get(m).copied();
                    prop_assert!(from.is_some(), "{m} is in the key but not synchronous");
                    prop_assert!(
                        from.is_some_and(|f| sim.standbys[m].1 >= f),
                        "{m} is in the key but has not flushed what was written before it became synchronous"
                    );
                }
            }
        }
    }
}
