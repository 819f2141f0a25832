//! What the runtime does on an operator's behalf rather than by the HA decision: apply the
//! dynamic configuration (HA timing, PostgreSQL parameters with reload and pending_restart), and
//! run the REST API's requests (restart, reload; reinitialize and restore are started from here, see
//! `reinit` and `restore`).

use super::Runtime;
use crate::postgres::control::{slot_name, StopMode};
use std::time::Duration;

impl Runtime {
    /// HA timing from the DCS over the agent file's; an unsafe or unreadable one is not applied.
    pub(super) fn apply_dynamic_timing(&mut self) {
        match crate::dynamic::effective_ha(&self.base_ha, &self.dynamic) {
            Ok(ha) => {
                if ha.ttl != self.ha.ttl {
                    // Patroni's set_ttl: the next lock acquire or refresh and member touch use it.
                    self.dcs.set_ttl(ha.ttl);
                }
                if ha != self.ha {
                    tracing::info!(
                        ttl = ?ha.ttl, loop_wait = ?ha.loop_wait, retry_timeout = ?ha.retry_timeout,
                        maximum_lag_on_failover = ha.maximum_lag_on_failover,
                        primary_start_timeout = ?ha.primary_start_timeout,
                        synchronous_mode = ha.synchronous_mode,
                        synchronous_node_count = ha.synchronous_node_count,
                        synchronous_mode_strict = ha.synchronous_mode_strict,
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
        let rt = self.ha.retry_timeout;
        match self.rewrite_config_and_reload(p.in_recovery).await {
            Ok(()) => tracing::info!("PostgreSQL parameters changed in the dynamic configuration: reloaded"),
            Err(e) => tracing::warn!("could not apply the PostgreSQL parameters of the dynamic configuration: {e}"),
        }
        // pg_settings.pending_restart is updated once the postmaster has processed the reload.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.pg.probe(rt).await.ok().or(Some(p))
    }

    /// Rewrites pgha.conf for the running PostgreSQL (as a standby: following the leader it
    /// follows) and reloads it.
    pub(super) async fn rewrite_config_and_reload(&self, standby: bool) -> Result<(), String> {
        let slot = slot_name(&self.name);
        let follow = if standby { self.following.as_deref().and_then(|l| self.address_of(l)) } else { None };
        self.pg.write_config(follow.as_deref().map(|a| (a, slot.as_str())), standby).map_err(|e| e.to_string())?;
        self.pg.query("select pg_reload_conf()", self.ha.retry_timeout).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Runs a request queued by the REST API.
    pub(super) async fn run_command(&mut self, command: crate::api::ApiCommand) {
        use crate::api::ApiCommand;
        match command {
            ApiCommand::Reload => match self.pg.query("select pg_reload_conf()", self.ha.retry_timeout).await {
                Ok(_) => {
                    tracing::info!("configuration reloaded (API request)");
                    self.callbacks.fire(crate::callbacks::Event::Reload, self.role_now());
                }
                Err(e) => tracing::warn!("reload requested through the API failed: {e}"),
            },
            ApiCommand::Restart if self.reinit.is_some() || self.restore.is_some() => {
                tracing::warn!("restart requested through the API refused: a reinitialize or restore is in progress");
            }
            ApiCommand::Restart => {
                tracing::info!("restarting PostgreSQL (API request)");
                let role = self.role_now();
                self.pg.stop(StopMode::Fast, Duration::from_secs(60)).await;
                match self.pg.start(Duration::from_secs(120)).await {
                    Ok(()) => self.callbacks.fire(crate::callbacks::Event::Restart, role),
                    Err(e) => tracing::warn!("restart requested through the API failed: {e}"),
                }
            }
            ApiCommand::Reinitialize { force, started } => {
                if !dropped("reinitialize", &started) {
                    answer("reinitialize", started, self.start_reinitialize(force).await);
                }
            }
            ApiCommand::Backup { kind, started } => {
                if !dropped("backup", &started) {
                    answer("backup", started, self.start_backup(kind).await);
                }
            }
            ApiCommand::Restore { request, started } => {
                if !dropped("restore", &started) {
                    answer("restore", started, self.start_restore(&request).await);
                }
            }
        }
    }
}

type Started = tokio::sync::oneshot::Sender<Result<(), String>>;

/// The API stopped waiting for the request (it answered the client already): not started.
fn dropped(what: &str, started: &Started) -> bool {
    if started.is_closed() {
        tracing::warn!("{what} request dropped: the API stopped waiting for it");
    }
    started.is_closed()
}

/// Hands whether a requested job started back to the API, logging why when it did not.
fn answer(what: &str, started: Started, result: Result<(), String>) {
    if let Err(e) = &result {
        tracing::warn!("{what} requested through the API not started: {e}");
    }
    let _ = started.send(result);
}
