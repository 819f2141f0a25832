//! What the holder of the leader lock does each tick: refresh the lease (demoting when it is lost
//! or about to end), keep the members' replication slots and publish the `status` key.

use super::Runtime;
use crate::ha::Action;
use crate::postgres::control::slot_name;
use consensus::dcs::{ClusterKey, DcsError, Expected};
use std::time::Instant;

impl Runtime {
    pub(super) async fn refresh_lock(&mut self) -> Result<(), String> {
        let rt = self.ha.retry_timeout;
        let budget = self.dcs_budget();
        match tokio::time::timeout(budget, self.dcs.refresh_leader()).await {
            Ok(Ok(lease)) => {
                self.lease_valid_until = Some(lease.valid_until);
                self.refresh_failed = false;
                self.leader_duties().await;
                Ok(())
            }
            Ok(Err(DcsError::LockLost { holder })) => {
                self.lease_valid_until = None;
                tracing::warn!("lost the leader lock (now held by {holder:?}); demoting now");
                let follow = holder.filter(|h| h != &self.name);
                Box::pin(self.execute(&Action::Demote { leader: follow }, &self.last_view.clone())).await?;
                Err("lost the leader lock".into())
            }
            other => {
                self.refresh_failed = true;
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {budget:?}"),
                };
                let margin = self.ha.loop_wait + rt * 2;
                if self.lease_valid_until.is_none_or(|until| Instant::now() + margin >= until) {
                    tracing::warn!("cannot refresh the leader lock ({why}) and the lease ends soon; demoting");
                    Box::pin(self.execute(&Action::Demote { leader: None }, &self.last_view.clone())).await?;
                }
                Err(format!("refreshing the leader lock failed: {why}"))
            }
        }
    }

    /// What the leader does every tick: slots for the members, the `status` key.
    pub(super) async fn leader_duties(&self) {
        // This tick's probe is fresh enough for the status key and says which slots exist.
        let Some(p) = self.last_probe.as_ref() else { return };
        // Every tick against what the server has, not against what was done once: a slot made
        // while the promotion was still finishing, or dropped by hand, is made (again) at the
        // next tick, and the member that needs it streams within its retry interval.
        let missing: Vec<String> = self
            .last_addrs
            .iter()
            .filter(|a| a.name != self.name)
            .map(|a| slot_name(&a.name))
            .filter(|slot| !p.slots.contains(slot))
            .collect();
        if !p.in_recovery && !missing.is_empty() {
            match self.pg.ensure_roles_and_slots(&missing, self.ha.retry_timeout).await {
                Ok(()) => tracing::info!(slots = ?missing, "created the replication slots of members"),
                Err(e) => tracing::warn!("could not create roles/slots: {e}"),
            }
        }
        self.write_leader_status(p).await;
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
        let value = serde_json::json!({ "optime": p.position.0, "timeline": p.timeline });
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(e) = self.dcs.write(ClusterKey::Status, &bytes, Expected::Any).await {
            tracing::warn!("could not write the status key: {e}");
        }
    }
}
