//! Publishing this node's state after each tick: the member key in the DCS and the status that the
//! REST API serves.

use super::Runtime;
use crate::cluster_view::{member_value, ReplicaProgress};
use crate::ha::ClusterView;
use crate::status::{NodeRole, PgRunState, Tags};
use consensus::dcs::DcsError;
use std::time::Instant;

impl Runtime {
    pub(super) async fn publish(
        &mut self,
        view: &ClusterView,
        probe: Option<crate::postgres::control::Probe>,
        reason: &str,
    ) {
        let running = probe.is_some();
        // Patroni's states: a reinitialize shows as "creating replica" while its clone runs.
        let state = match (&self.reinit, running) {
            (Some(_), _) => "creating replica",
            (None, _) if self.restore.is_some() => "restoring",
            (None, true) => "running",
            (None, false) if self.starting => "starting",
            (None, false) => "stopped",
        };
        let role = match &probe {
            Some(p) if !p.in_recovery => NodeRole::Primary,
            Some(_) => NodeRole::Replica,
            None => NodeRole::Unknown,
        };
        let position = probe.as_ref().map(|p| {
            if p.in_recovery {
                p.received.unwrap_or(p.position).max(p.position)
            } else {
                p.position
            }
        });
        if view.reachable {
            let value = member_value(
                &self.conn_addr,
                &self.api_base,
                state,
                role.as_str(),
                position,
                probe.as_ref().map(|p| p.timeline),
                probe.as_ref().is_some_and(|p| !p.pending_restart.is_empty()),
                &self.tags,
                probe.as_ref().filter(|p| p.in_recovery).map(|p| ReplicaProgress {
                    receive_lsn: p.received,
                    replay_lsn: p.position,
                    streaming: p.receiver_status.as_deref() == Some("streaming"),
                }),
            );
            if let Err(e) = tokio::time::timeout(self.dcs_budget(), self.dcs.touch_member(&value))
                .await
                .unwrap_or(Err(DcsError::Store(consensus::kv::KvError::Unavailable("member touch timed out".into()))))
            {
                tracing::warn!("could not publish my member key: {e}");
            }
        }
        let name = self.name.clone();
        let tags = Tags {
            nofailover: self.tags.nofailover,
            noloadbalance: self.tags.noloadbalance,
            nosync: self.tags.nosync,
            clonefrom: self.tags.clonefrom,
            failover_priority: self.tags.failover_priority.unwrap_or(1),
            custom: Default::default(),
        };
        let ttl = self.ha.ttl.as_secs().max(1);
        let lag_limit = self.ha.maximum_lag_on_failover;
        let (loop_wait, retry_timeout) =
            (self.ha.loop_wait.as_millis() as u64, self.ha.retry_timeout.as_millis() as u64);
        let pending_restart = probe.as_ref().is_some_and(|p| !p.pending_restart.is_empty());
        let sysid = self.pg.system_identifier();
        let sync_standby = view.sync_standbys(&self.ha).is_some_and(|s| crate::ha::is_named(s, &name));
        self.status.send_modify(|s| {
            s.role = role;
            s.pg_running = running;
            s.state = PgRunState(state.into());
            s.server_version = probe.as_ref().map(|p| p.server_version);
            s.postmaster_start_time = probe.as_ref().and_then(|p| p.postmaster_start_time.clone());
            s.postmaster_start_ms = probe.as_ref().and_then(|p| p.postmaster_start_ms);
            s.replayed_xact_ms = probe.as_ref().filter(|p| p.in_recovery).and_then(|p| p.replayed_xact_ms);
            s.replay_paused = probe.as_ref().is_some_and(|p| p.in_recovery && p.replay_paused);
            s.system_identifier = sysid;
            s.timeline = probe.as_ref().map(|p| p.timeline);
            s.wal_position = probe.as_ref().filter(|p| !p.in_recovery).map(|p| p.position);
            s.received_position = probe.as_ref().filter(|p| p.in_recovery).and_then(|p| p.received);
            s.replayed_position = probe.as_ref().filter(|p| p.in_recovery).map(|p| p.position);
            s.streaming = probe.as_ref().and_then(|p| p.receiver_status.as_deref()) == Some("streaming");
            s.holds_lock = view.leader.as_deref() == Some(name.as_str());
            s.sync_standby = sync_standby && !s.holds_lock;
            s.leader = view.leader.clone();
            s.leader_position = view.leader_lsn;
            s.paused = view.paused;
            s.tags = tags;
            s.last_tick = Some(Instant::now());
            s.last_decision = reason.to_string();
            s.ttl_secs = ttl;
            s.maximum_lag_on_failover = lag_limit;
            s.loop_wait_ms = loop_wait;
            s.retry_timeout_ms = retry_timeout;
            s.pending_restart = pending_restart;
            s.replication =
                probe.as_ref().filter(|p| !p.in_recovery).map(|p| p.replication.clone()).unwrap_or_default();
        });
    }
}
