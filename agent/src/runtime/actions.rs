//! Carrying out the HA engine's actions on the local PostgreSQL and the DCS: start, clone,
//! promote, demote, rewind, follow, fence, take or give up the leader lock.

use super::peers::ask_peer;
use super::Runtime;
use crate::callbacks::Event;
use crate::ha::{drains_before_demote, Action, ClusterView};
use crate::postgres::control::{slot_name, StopMode};
use consensus::dcs::{ClusterKey, Expected};
use std::time::Duration;

impl Runtime {
    pub(super) async fn execute(&mut self, action: &Action, view: &ClusterView) -> Result<(), String> {
        let rt = self.ha.retry_timeout;
        let slot = slot_name(&self.name);
        match action {
            Action::ProbePeers => Ok(()),
            Action::Bootstrap => self.bootstrap().await,
            Action::CloneFrom { source } => {
                let addr = self.address_of(source).ok_or(format!("no address for {source}"))?;
                tracing::info!("cloning from {source} ({addr}) with pg_basebackup");
                self.pg.clone_from(&addr).await.map_err(|e| e.to_string())
            }
            Action::StartReplica { leader } => {
                let follow = leader.as_ref().and_then(|l| self.address_of(l));
                if let Some(addr) = &follow {
                    if self.was_primary() {
                        tracing::info!(
                            "this data directory was a primary; running pg_rewind against {addr} before following"
                        );
                        self.pg.rewind_from(&addr.clone()).await.map_err(|e| e.to_string())?;
                    }
                }
                self.pg.write_config(follow.as_deref().map(|a| (a, slot.as_str())), true).map_err(|e| e.to_string())?;
                self.following = leader.clone();
                self.start_standby(view).await?;
                self.callbacks.fire(Event::Start, "replica");
                Ok(())
            }
            Action::StartPrimary => {
                self.keep_synchronous_standbys_across_a_start(view);
                self.pg.write_config(None, false).map_err(|e| e.to_string())?;
                self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())?;
                self.callbacks.fire(Event::Start, "primary");
                Ok(())
            }
            Action::RefreshLock => self.refresh_lock().await,
            Action::AcquireLock => match tokio::time::timeout(rt, self.dcs.acquire_leader()).await {
                Ok(Ok(lease)) => {
                    self.lease_valid_until = Some(lease.valid_until);
                    self.refresh_failed = false;
                    tracing::info!("acquired the leader lock");
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("could not take the leader lock: {e}")),
                Err(_) => Err("taking the leader lock timed out".into()),
            },
            Action::ReleaseLock => {
                self.lease_valid_until = None;
                match tokio::time::timeout(rt, self.dcs.release_leader()).await {
                    Ok(r) => r.map_err(|e| e.to_string()),
                    Err(_) => Err("releasing the leader lock timed out".into()),
                }
            }
            Action::Promote => {
                // Wait for the promotion only while the lease leaves time to refresh it: a slow
                // promotion on a loaded machine must not cost the lock (the next tick asks again).
                let wait = self.until_last_decision().min(Duration::from_secs(60));
                self.strict_before_promotion().await?;
                if !self.pg.promote(wait).await.map_err(|e| e.to_string())? {
                    tracing::info!("promotion still running after {wait:?}; checking again at the next tick");
                    return Ok(());
                }
                self.following = None;
                tracing::info!("promoted to primary");
                self.changed_role = Some("primary");
                self.callbacks.fire(Event::RoleChange, "primary");
                if view.failover.is_some() {
                    // The switchover or failover it asked for is done.
                    if let Err(e) = self.dcs.delete(ClusterKey::Failover, Expected::Any).await {
                        tracing::warn!("could not clear the failover key: {e}");
                    }
                }
                // Make sure the new timeline is published before anything else happens.
                self.publish_leader_status().await;
                Ok(())
            }
            Action::Demote { leader } => {
                // A planned handover (a switchover, or a failover asked of a healthy leader):
                // let client transactions under way finish (a pooler following the cluster holds
                // new ones once it sees the failover key), bounded by retry_timeout. Only while
                // this node leads with a lease that outlasts the wait: a leader that lost its
                // lock, or cannot refresh it, stops at once.
                let now = std::time::Instant::now();
                if drains_before_demote(view, &self.name, self.lease_valid_until, now, rt, self.ha.loop_wait) {
                    let cut = self.pg.drain_client_transactions(rt).await;
                    if cut > 0 {
                        tracing::warn!("switchover: {cut} client transactions still open after {rt:?}; they are cut");
                    }
                }
                tracing::warn!("demoting: stopping PostgreSQL");
                self.pg.stop(StopMode::Fast, rt).await;
                self.lease_valid_until = None;
                let follow = leader.as_ref().and_then(|l| self.address_of(l));
                // After a clean stop every standby has our last WAL: a switchover candidate that is
                // not promoted yet needs no rewind (and cannot serve one). Rewind only against a
                // primary; a divergence found later is rewound by the stalled-replica rule.
                let target_is_primary = match &follow {
                    Some(addr) => {
                        let probe = tokio::time::timeout(rt, ask_peer(addr, &self.pg.superuser.clone())).await;
                        matches!(probe, Ok(Ok((false, _))))
                    }
                    None => false,
                };
                if let (Some(addr), true) = (&follow, target_is_primary) {
                    if let Err(e) = self.pg.rewind_from(addr).await {
                        tracing::warn!("pg_rewind against {addr} failed: {e}; starting read-only without following");
                        self.pg.write_config(None, true).map_err(|e| e.to_string())?;
                        return self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string());
                    }
                }
                self.pg.write_config(follow.as_deref().map(|a| (a, slot.as_str())), true).map_err(|e| e.to_string())?;
                self.following = leader.clone();
                let started = self.start_standby(view).await;
                // Demoted, whether or not the standby came up: the role changed.
                self.changed_role = Some("replica");
                self.callbacks.fire(Event::RoleChange, "replica");
                started
            }
            Action::Follow { leader } => {
                if self.following.as_deref() == Some(leader.as_str()) {
                    return Ok(());
                }
                let addr = self.address_of(leader).ok_or(format!("no address for {leader}"))?;
                tracing::info!("following {leader} at {addr}");
                self.pg.write_config(Some((&addr, &slot)), true).map_err(|e| e.to_string())?;
                self.pg.query("select pg_reload_conf()", rt).await.map_err(|e| e.to_string())?;
                self.following = Some(leader.clone());
                Ok(())
            }
            Action::Rewind { leader } => {
                let addr = self.address_of(leader).ok_or(format!("no address for {leader}"))?;
                self.not_streaming_since = None;
                self.pg.stop(StopMode::Fast, rt).await;
                self.pg.rewind_from(&addr).await.map_err(|e| e.to_string())?;
                self.pg.write_config(Some((&addr, &slot)), true).map_err(|e| e.to_string())?;
                self.following = Some(leader.clone());
                self.start_standby(view).await?;
                self.callbacks.fire(Event::Start, "replica");
                Ok(())
            }
            Action::ClearFailover { revision } => {
                let delete = self.dcs.delete(ClusterKey::Failover, Expected::Revision(*revision));
                match tokio::time::timeout(rt, delete).await {
                    Ok(Ok(())) => {
                        tracing::warn!("deleted the switchover request (the decision above says why it cannot run)");
                        Ok(())
                    }
                    Ok(Err(e)) => Err(format!("could not delete the switchover request: {e}")),
                    Err(_) => Err("deleting the switchover request timed out".into()),
                }
            }
            Action::Fence => {
                tracing::warn!("fencing: killing PostgreSQL");
                self.pg.kill();
                Ok(())
            }
        }
    }

    /// Whether the stopped data directory was last a primary (pg_rewind may be needed).
    pub(super) fn was_primary(&self) -> bool {
        let Ok(bytes) = std::fs::read(self.pg.data_dir.join("global/pg_control")) else { return false };
        // ControlFileData: system_identifier (8), pg_control_version (4), catalog_version_no (4),
        // then DBState state (4): 1 = shut down, 2 = shut down in recovery, 4 = in crash recovery,
        // 5 = in archive recovery, 6 = in production.
        // A fresh clone carries the primary's "in production" state but also a backup_label.
        if self.pg.data_dir.join("backup_label").exists() {
            return false;
        }
        let state = bytes.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
        matches!(state, Some(1) | Some(6)) && !self.pg.data_dir.join("standby.signal").exists()
    }
}

impl Runtime {
    /// Starts PostgreSQL as a standby, after publishing this member as `starting`. The leader
    /// makes a member's replication slot when it sees the member's key. A standby that needs
    /// WAL from that slot before it accepts connections (a rewound old primary) would
    /// otherwise wait here, up to the start's timeout, without a member key: if its key had
    /// expired before the failover, the new primary never made its slot and it never streamed.
    async fn start_standby(&mut self, view: &ClusterView) -> Result<(), String> {
        self.starting = true;
        self.publish(view, None, "starting PostgreSQL as a standby").await;
        let started = self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string());
        self.starting = false;
        started
    }
}
