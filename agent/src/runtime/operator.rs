//! What the runtime does on an operator's behalf rather than by the HA decision: apply the
//! dynamic configuration (HA timing, PostgreSQL parameters with reload and pending_restart), and
//! reinitialize a replica's data directory from the leader.

use super::Runtime;
use crate::ha::Action;
use crate::postgres::control::{slot_name, StopMode};
use std::time::Duration;

impl Runtime {
    /// HA timing from the DCS over the agent file's; an unsafe or unreadable one is not applied.
    pub(super) fn apply_dynamic_timing(&mut self) {
        match crate::dynamic::effective_ha(&self.base_ha, &self.dynamic) {
            Ok(ha) => {
                if ha != self.ha {
                    tracing::info!(
                        loop_wait = ?ha.loop_wait, retry_timeout = ?ha.retry_timeout,
                        maximum_lag_on_failover = ha.maximum_lag_on_failover,
                        primary_start_timeout = ?ha.primary_start_timeout,
                        "HA timing from the dynamic configuration applied"
                    );
                    self.ha = ha;
                }
                self.dynamic_refused = None;
            }
            Err(e) => {
                if self.dynamic_refused.as_deref() != Some(e.as_str()) {
                    tracing::warn!("dynamic configuration not applied (keeping the current HA timing): {e}");
                    self.dynamic_refused = Some(e);
                }
            }
        }
    }

    /// PostgreSQL parameters from the DCS with the local ones winning: when they change, pgha.conf
    /// is rewritten and a running PostgreSQL reloaded; the probe is taken again so that
    /// `pending_restart` is current.
    pub(super) async fn apply_dynamic_parameters(
        &mut self,
        probe: Option<crate::postgres::control::Probe>,
    ) -> Option<crate::postgres::control::Probe> {
        let wanted = crate::dynamic::merged_parameters(&self.dynamic, &self.local_parameters);
        if wanted == self.pg.parameters {
            return probe;
        }
        self.pg.parameters = wanted;
        let p = probe?;
        let follow = if p.in_recovery { self.following.as_deref().and_then(|l| self.address_of(l)) } else { None };
        let slot = slot_name(&self.name);
        let rt = self.ha.retry_timeout;
        let reloaded = match self.pg.write_config(follow.as_deref().map(|a| (a, slot.as_str())), p.in_recovery) {
            Ok(()) => self.pg.query("select pg_reload_conf()", rt).await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match reloaded {
            Ok(()) => tracing::info!("PostgreSQL parameters changed in the dynamic configuration: reloaded"),
            Err(e) => tracing::warn!("could not apply the PostgreSQL parameters of the dynamic configuration: {e}"),
        }
        // pg_settings.pending_restart is updated once the postmaster has processed the reload.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.pg.probe(rt).await.ok().or(Some(p))
    }

    /// An explicit reinitialize: stop PostgreSQL, remove the data directory, clone the leader and
    /// start as its replica. Refused on the leader and when there is no leader to clone. The only
    /// way a data directory of another cluster is ever replaced.
    pub(super) async fn reinitialize(&mut self) -> Result<String, String> {
        let view = self.read_view().await;
        if !view.reachable {
            return Err("the DCS is not reachable; not touching the data directory".into());
        }
        let leader = match view.leader.as_deref() {
            Some(l) if l == self.name => return Err("I hold the leader lock; a leader is never reinitialized".into()),
            Some(l) => l.to_string(),
            None => return Err("there is no leader to clone from; not touching the data directory".into()),
        };
        let addr = self.address_of(&leader).ok_or(format!("the leader {leader} has published no address"))?;
        tracing::warn!(
            "reinitializing on request: stopping PostgreSQL and removing {} to clone {leader} ({addr})",
            self.pg.data_dir.display()
        );
        self.pg.stop(StopMode::Fast, Duration::from_secs(60)).await;
        if self.pg.is_running() {
            self.pg.kill();
        }
        self.pg.remove_data_dir().map_err(|e| e.to_string())?;
        self.following = None;
        self.last_streamed = None;
        self.not_streaming_since = None;
        self.pg.clone_from(&addr).await.map_err(|e| format!("cloning {leader}: {e}"))?;
        self.execute(&Action::StartReplica { leader: Some(leader.clone()) }, &view).await?;
        Ok(leader)
    }

    /// Runs a request queued by the REST API.
    pub(super) async fn run_command(&mut self, command: crate::api::ApiCommand) {
        use crate::api::ApiCommand;
        match command {
            ApiCommand::Reload => match self.pg.query("select pg_reload_conf()", self.ha.retry_timeout).await {
                Ok(_) => tracing::info!("configuration reloaded (API request)"),
                Err(e) => tracing::warn!("reload requested through the API failed: {e}"),
            },
            ApiCommand::Restart => {
                tracing::info!("restarting PostgreSQL (API request)");
                self.pg.stop(StopMode::Fast, Duration::from_secs(60)).await;
                if let Err(e) = self.pg.start(Duration::from_secs(120)).await {
                    tracing::warn!("restart requested through the API failed: {e}");
                }
            }
            ApiCommand::Reinitialize { .. } => match self.reinitialize().await {
                Ok(leader) => tracing::info!("reinitialized: cloned from {leader}, starting as its replica"),
                Err(e) => tracing::warn!("reinitialize requested through the API failed: {e}"),
            },
        }
    }
}
