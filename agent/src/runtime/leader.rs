//! What the holder of the leader lock does each tick: refresh the lease (demoting when it is lost
//! or about to end), keep the members' replication slots and the synchronous standbys
//! (`runtime::sync`), record a new timeline in the `history` key, and publish the `status` key.

use super::Runtime;
use crate::ha::Action;
use crate::postgres::control::slot_name;
use consensus::dcs::{ClusterKey, DcsError, Expected};
use std::time::Instant;

/// How a refresh of the leader lease ended.
pub(super) enum Renewal {
    Renewed,
    /// Another member holds the lock now (or nobody).
    Lost {
        holder: Option<String>,
    },
    /// The DCS refused or did not answer; `ends_soon`: the lease ends before the next tick
    /// could try again and still demote in time.
    Failed {
        why: String,
        ends_soon: bool,
    },
}

impl Runtime {
    pub(super) async fn refresh_lock(&mut self) -> Result<(), String> {
        match self.renew_lease().await {
            Renewal::Renewed => {
                self.leader_duties().await;
                Ok(())
            }
            Renewal::Lost { holder } => {
                tracing::warn!("lost the leader lock (now held by {holder:?}); demoting now");
                let follow = holder.filter(|h| h != &self.name);
                Box::pin(self.execute(&Action::Demote { leader: follow }, &self.last_view.clone())).await?;
                Err("lost the leader lock".into())
            }
            Renewal::Failed { why, ends_soon } => {
                if ends_soon {
                    tracing::warn!("cannot refresh the leader lock ({why}) and the lease ends soon; demoting");
                    Box::pin(self.execute(&Action::Demote { leader: None }, &self.last_view.clone())).await?;
                }
                Err(format!("refreshing the leader lock failed: {why}"))
            }
        }
    }

    /// One refresh of the leader lease, bounded by the DCS budget; keeps `lease_valid_until`
    /// and `refresh_failed`. What to do about a failure is the caller's (demote, or abandon a
    /// restore).
    pub(super) async fn renew_lease(&mut self) -> Renewal {
        let budget = self.dcs_budget();
        match tokio::time::timeout(budget, self.dcs.refresh_leader()).await {
            Ok(Ok(lease)) => {
                self.lease_valid_until = Some(lease.valid_until);
                self.refresh_failed = false;
                Renewal::Renewed
            }
            Ok(Err(DcsError::LockLost { holder })) => {
                self.lease_valid_until = None;
                Renewal::Lost { holder }
            }
            other => {
                self.refresh_failed = true;
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {budget:?}"),
                };
                let margin = self.ha.loop_wait + self.ha.retry_timeout * 2;
                let ends_soon = self.lease_valid_until.is_none_or(|until| Instant::now() + margin >= until);
                Renewal::Failed { why, ends_soon }
            }
        }
    }

    /// What the leader does every tick: slots for the members (made when missing, a departed
    /// member's dropped after member_slots_ttl), the `status` key.
    pub(super) async fn leader_duties(&mut self) {
        // This tick's probe is fresh enough for the status key and says which slots exist.
        let Some(p) = self.last_probe.clone() else { return };
        if !p.in_recovery {
            self.keep_member_slots(&p).await;
            self.keep_synchronous_standbys(&p).await;
            self.record_history(&p).await;
            self.keep_permanent_slots(&p).await;
        }
        self.write_leader_status(&p).await;
    }

    /// Every tick against what the server has, not against what was done once: a slot made
    /// while the promotion was still finishing, or dropped by hand, is made (again) at the next
    /// tick, and the member that needs it streams within its retry interval.
    async fn keep_member_slots(&mut self, p: &crate::postgres::control::Probe) {
        let members: Vec<String> = self.last_addrs.iter().map(|a| slot_name(&a.name)).collect();
        let plan = self.member_slots.plan(
            &members,
            &slot_name(&self.name),
            &p.slot_names(),
            &self.last_view.retain_slots,
            Instant::now(),
            self.ha.member_slots_ttl,
            // Not leading for a ttl: what happened meanwhile is unknown.
            self.ha.ttl,
        );
        if !plan.create.is_empty() {
            match self.pg.ensure_roles_and_slots(&plan.create, self.ha.retry_timeout).await {
                Ok(()) => tracing::info!(slots = ?plan.create, "created the replication slots of members"),
                Err(e) => tracing::warn!("could not create roles/slots: {e}"),
            }
        }
        for slot in plan.drop {
            match self.pg.drop_inactive_slot(&slot, self.ha.retry_timeout).await {
                Ok(true) => {
                    tracing::info!(
                        slot,
                        member_slots_ttl = ?self.ha.member_slots_ttl,
                        "dropped the replication slot of a member gone from the cluster for member_slots_ttl"
                    );
                    self.member_slots.dropped(&slot);
                }
                Ok(false) => {
                    tracing::debug!(slot, "a departed member's slot is still in use; dropping it when released")
                }
                Err(e) => tracing::warn!(slot, "could not drop a departed member's slot: {e}"),
            }
        }
    }

    /// On a replica of another leader: the members' slots it made while it was the primary
    /// (PostgreSQL keeps them through a demotion and pg_rewind). With a leader the members
    /// stream from it, and an inactive slot here keeps this node's WAL from its `restart_lsn`
    /// on: after a switchover the old primary's disk would fill. Only the cluster's member
    /// slots go, and only inactive ones; others stay.
    pub(super) async fn drop_slots_kept_from_leading(&self, p: &crate::postgres::control::Probe) {
        let ours = |slot: &String| {
            self.last_addrs.iter().any(|a| &slot_name(&a.name) == slot) || self.last_view.retain_slots.contains(slot)
        };
        for slot in p.slot_positions.keys().filter(|s| ours(s)) {
            match self.pg.drop_inactive_slot(slot, self.ha.retry_timeout).await {
                Ok(true) => tracing::info!(
                    slot,
                    "dropped a member's slot kept from this node's time as primary (it held WAL here)"
                ),
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(slot, "could not drop a member's slot kept from this node's time as primary: {e}")
                }
            }
        }
    }

    /// After a promotion (or a restore) onto a new timeline: the switch goes into the `history`
    /// key, from the timeline's history file, with the time and this leader's name. Once per
    /// timeline; a failed attempt is made again at the next tick.
    async fn record_history(&mut self, p: &crate::postgres::control::Probe) {
        if p.timeline < 2 || self.history_recorded == Some(p.timeline) {
            return;
        }
        let existing: Vec<serde_json::Value> =
            self.history.as_ref().and_then(|kv| serde_json::from_slice(&kv.value).ok()).unwrap_or_default();
        if crate::history::records(&existing, p.timeline) {
            self.history_recorded = Some(p.timeline);
            return;
        }
        let sql = format!(
            "select pg_read_file('pg_wal/{:08X}.history'), \
             to_char(now() at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')",
            p.timeline
        );
        let row = match self.pg.query(&sql, self.ha.retry_timeout).await {
            Ok(rows) => rows.into_iter().next().unwrap_or_default(),
            Err(e) => {
                tracing::warn!("could not read the history file of timeline {}: {e}", p.timeline);
                return;
            }
        };
        let col = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        let Some(entries) = crate::history::entries(&col(0), &existing, p.timeline, &col(1), &self.name) else {
            tracing::warn!("the history file of timeline {} names no switch", p.timeline);
            self.history_recorded = Some(p.timeline);
            return;
        };
        let expected = match &self.history {
            Some(kv) => Expected::Revision(kv.mod_revision),
            None => Expected::Absent,
        };
        let bytes = serde_json::to_vec(&entries).unwrap_or_default();
        match self.dcs.write(ClusterKey::History, &bytes, expected).await {
            Ok(_) => {
                tracing::info!("recorded the switch onto timeline {} in the history key", p.timeline);
                self.history_recorded = Some(p.timeline);
            }
            Err(e) => tracing::warn!("could not write the history key: {e}"),
        }
    }

    /// Probes PostgreSQL and publishes the result as the leader status (after promote/bootstrap,
    /// when the tick's probe predates the new timeline).
    pub(super) async fn publish_leader_status(&self) {
        if let Ok(p) = self.pg.probe(self.ha.retry_timeout).await {
            self.write_leader_status(&p).await;
        }
    }

    pub(super) async fn write_leader_status(&self, p: &crate::postgres::control::Probe) {
        if p.in_recovery {
            return;
        }
        // Right after a promotion this node has not planned yet: it passes on what the last
        // leader retained, so no departed member's slot is forgotten.
        let retain = if self.member_slots.leading(Instant::now(), self.ha.ttl) {
            self.member_slots.retained()
        } else {
            self.last_view.retain_slots.iter().filter(|n| crate::ha::member_slots::is_slot_name(n)).cloned().collect()
        };
        // Patroni's `slots`: where the primary's physical slots are, for the standbys that keep
        // the permanent ones.
        let slots: serde_json::Map<String, serde_json::Value> = p
            .slot_positions
            .iter()
            .filter_map(|(name, lsn)| Some((name.clone(), serde_json::json!(lsn.as_ref()?.0))))
            .collect();
        let value = serde_json::json!({
            "optime": p.position.0, "timeline": p.timeline, "retain_slots": retain, "slots": slots,
        });
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(e) = self.dcs.write(ClusterKey::Status, &bytes, Expected::Any).await {
            tracing::warn!("could not write the status key: {e}");
        }
    }
}
