//! One HA tick: read the DCS, probe the local PostgreSQL, ask `ha::decide`, carry the actions out
//! and publish. This module gathers the engine's inputs; the choice is `ha::decide`'s.

use super::Runtime;
use crate::cluster_view::view_from_snapshot;
use crate::ha::{decide, Action, ClusterView, LocalState, Lsn, PgState, Role, StreamPoint};
use consensus::dcs::ClusterKey;
use std::time::{Duration, Instant, SystemTime};

impl Runtime {
    /// How long the next DCS call may wait: retry_timeout, but while this node holds a lease
    /// never past `valid_until - retry_timeout`, the last moment from which a demotion (bounded by
    /// retry_timeout) still ends before the lease does. Without this cap a DCS that hangs instead
    /// of refusing (a Raft member without quorum, a blackholed etcd) delays the tick that decides
    /// to demote by up to three calls (member touch, read, refresh), past the lease's end.
    pub(super) fn dcs_budget(&self) -> Duration {
        self.ha.retry_timeout.min(self.until_last_decision())
    }

    /// Time left before a lease holder must have decided to demote (`valid_until - retry_timeout`);
    /// unbounded without a lease. The wait between ticks is capped by it too.
    pub(super) fn until_last_decision(&self) -> Duration {
        match self.lease_valid_until {
            Some(until) => until.saturating_duration_since(Instant::now() + self.ha.retry_timeout),
            None => Duration::MAX,
        }
    }

    pub(super) async fn read_view(&mut self) -> ClusterView {
        let budget = self.dcs_budget();
        match tokio::time::timeout(budget, self.dcs.snapshot()).await {
            Ok(Ok(snap)) => {
                let (view, addrs) = view_from_snapshot(&snap);
                self.dynamic = snap
                    .get(&ClusterKey::Config)
                    .and_then(|kv| consensus::cluster::DynamicConfig::parse(&kv.value).ok())
                    .unwrap_or_default();
                self.apply_dynamic_timing();
                self.history = snap.get(&ClusterKey::History).cloned();
                self.last_view = view.clone();
                self.last_addrs = addrs;
                self.status.send_modify(|s| s.dcs_last_seen = Some(SystemTime::now()));
                view
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the DCS");
                ClusterView { reachable: false, ..self.last_view.clone() }
            }
            Err(_) => {
                tracing::warn!("DCS read timed out after {budget:?}");
                ClusterView { reachable: false, ..self.last_view.clone() }
            }
        }
    }

    pub(super) async fn local_state(
        &mut self,
        view: &ClusterView,
        now: Instant,
    ) -> (LocalState, Option<crate::postgres::control::Probe>) {
        let i_lead = view.leader.as_deref() == Some(self.name.as_str());
        let mut probe = None;
        let postgres = if !self.pg.has_data() {
            PgState::NoData
        } else if !self.pg.is_running() {
            PgState::Stopped
        } else {
            match self.pg.probe(self.ha.retry_timeout).await {
                Ok(p) => {
                    self.unresponsive_since = None;
                    let role = if p.in_recovery { Role::Replica } else { Role::Primary };
                    let position =
                        if p.in_recovery { p.received.unwrap_or(p.position).max(p.position) } else { p.position };
                    if p.receiver_status.as_deref() == Some("streaming") {
                        self.not_streaming_since = None;
                        // A receiver that has not flushed anything new yet still streams from
                        // this timeline; its replay position stands in for the received one
                        // (`position`: the furthest of the two).
                        self.last_streamed =
                            Some(StreamPoint { timeline: p.received_timeline.unwrap_or(p.timeline), lsn: position });
                    } else if p.in_recovery {
                        self.not_streaming_since.get_or_insert(now);
                    } else {
                        self.not_streaming_since = None;
                    }
                    // Without a WAL receiver a standby's timeline comes from its last
                    // restartpoint, which lags after a pg_rewind onto a new timeline until the
                    // next one. WAL this agent saw it receive on a newer timeline is replayed on
                    // that timeline (recovery_target_timeline = 'latest'): without this, a
                    // standby rewound after one failover could not take over in the next.
                    let timeline = match self.last_streamed {
                        Some(s) if p.in_recovery && p.receiver_status.as_deref() != Some("streaming") => {
                            p.timeline.max(s.timeline)
                        }
                        _ => p.timeline,
                    };
                    let state = PgState::Running { role, timeline, wal_position: position };
                    probe = Some(p);
                    state
                }
                Err(e) => {
                    let since = *self.unresponsive_since.get_or_insert(now);
                    tracing::warn!(error = %e, "PostgreSQL probe failed");
                    // One missed probe is a blip; a postmaster silent for retry_timeout is hung.
                    if now.saturating_duration_since(since) >= self.ha.retry_timeout {
                        PgState::Unresponsive
                    } else {
                        PgState::Running {
                            role: if i_lead { Role::Primary } else { Role::Replica },
                            timeline: view.leader_timeline.unwrap_or(1),
                            wal_position: Lsn(0),
                        }
                    }
                }
            }
        };
        if i_lead && matches!(postgres, PgState::Stopped) {
            self.down_since.get_or_insert(now);
        } else {
            self.down_since = None;
        }
        let local = LocalState {
            name: self.name.clone(),
            postgres,
            system_identifier: self.pg.system_identifier(),
            lease_valid_until: self.lease_valid_until,
            refresh_failed: self.refresh_failed,
            down_since: self.down_since,
            last_streamed: self.last_streamed,
            not_streaming_for: self.not_streaming_since.map(|t| now.saturating_duration_since(t)),
            peer_probes: None,
            nofailover: self.tags.nofailover,
            failover_priority: self.tags.failover_priority.unwrap_or(1),
        };
        (local, probe)
    }

    pub(super) async fn tick(&mut self) {
        let now = Instant::now();
        let view = self.read_view().await;
        self.backup_progress().await;
        let busy = match self.restore_progress().await {
            Some(reason) => Some(reason),
            None => self.reinitialize_progress().await,
        };
        if let Some(reason) = busy {
            // The data directory is being cloned or restored: nothing may start or judge it, but
            // the member key and the API stay current.
            self.log_decision(&reason);
            self.last_probe = None;
            self.changed_role = None;
            self.publish(&view, None, &reason).await;
            return;
        }
        let (mut local, probe) = self.local_state(&view, now).await;
        let probe = self.apply_dynamic_parameters(probe).await;
        self.last_probe = probe.clone();
        self.changed_role = None;
        let mut decision = decide(&view, &local, &self.ha, now);
        if decision.actions == [Action::ProbePeers] {
            local.peer_probes = Some(self.probe_peers().await);
            decision = decide(&view, &local, &self.ha, Instant::now());
        }
        self.log_decision(&decision.reason);
        if view.leader.as_deref() != Some(self.name.as_str()) {
            self.forget_synchronous_standbys();
        }
        for action in decision.actions.clone() {
            if let Err(e) = self.execute(&action, &view).await {
                tracing::warn!(?action, "{e}");
                break;
            }
        }
        // A replica, by this tick's probe, of another node's leadership, that did not just take
        // the lead. Without a leader the slots stay: the other members stream through them from
        // this node (as a cascading standby) until one of them may be promoted.
        let follows_a_leader = view.leader.as_deref().is_some_and(|l| l != self.name)
            && !decision.actions.iter().any(|a| matches!(a, Action::AcquireLock | Action::Promote));
        if let Some(p) = probe.as_ref().filter(|p| p.in_recovery) {
            if follows_a_leader {
                self.drop_slots_kept_from_leading(p).await;
            }
            self.keep_permanent_slots(p).await;
        }
        self.publish(&view, probe, &decision.reason).await;
    }

    /// One line per change of decision; a new WAL position alone is not a new event.
    fn log_decision(&mut self, reason: &str) {
        let shape = without_positions(reason);
        if shape != self.last_reason {
            tracing::info!("{reason}");
            self.last_reason = shape;
        } else {
            tracing::debug!("{reason}");
        }
    }
}

/// The reason with WAL positions (`0/3000060`) left out, to tell new events from progress.
fn without_positions(reason: &str) -> String {
    reason
        .split(' ')
        .filter(|w| !(w.contains('/') && w.chars().next().is_some_and(|c| c.is_ascii_hexdigit())))
        .collect::<Vec<_>>()
        .join(" ")
}
