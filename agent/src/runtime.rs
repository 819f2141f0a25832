//! The agent's loop: every `loop_wait` (or at once when the leader key changes) read the DCS,
//! probe PostgreSQL, ask `ha::decide`, perform the actions with timeouts, publish the member key
//! and the node status. All the I/O of the agent's HA logic lives here; the choices do not.
//!
//! This file holds the state and the loop; `tick` is one pass, `actions` carries decisions out,
//! `leader` is the lock holder's duties, `reinit` an operator's reinitialize in the background,
//! `restore` a restore of the running cluster to a point in time, `backup` a base backup on request,
//! `bootstrap`, `publish`, `peers`, `key_watch` and `operator` (API requests and the dynamic
//! configuration) the rest.

use crate::cluster_view::MemberAddress;
use crate::config::AgentConfig;
use crate::ha::{ClusterView, HaConfig, StreamPoint};
use crate::postgres::control::{LocalPostgres, StopMode};
use crate::status::NodeStatus;
use consensus::dcs::Dcs;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

mod actions;
mod backup;
mod bootstrap;
mod key_watch;
mod leader;
mod operator;
mod peers;
mod permanent_slots;
mod publish;
mod reinit;
mod restore;
pub(crate) use restore::put_back_interrupted;
mod sync;
mod tick;

pub struct Runtime {
    name: String,
    ha: HaConfig,
    /// The agent file's `[ha]`; `ha` is this with the DCS dynamic configuration applied.
    base_ha: HaConfig,
    /// The agent file's `[postgresql] parameters`; they win over the DCS ones.
    local_parameters: Vec<(String, String)>,
    /// The dynamic configuration last read from the DCS.
    dynamic: consensus::cluster::DynamicConfig,
    /// The last reason the DCS timing was not applied (logged once per new reason).
    dynamic_refused: Option<String>,
    dcs: Arc<dyn Dcs>,
    pg: LocalPostgres,
    tags: crate::config::TagsConfig,
    conn_addr: String,
    api_base: String,
    status: watch::Sender<NodeStatus>,
    last_view: ClusterView,
    last_addrs: Vec<MemberAddress>,
    last_streamed: Option<StreamPoint>,
    not_streaming_since: Option<Instant>,
    down_since: Option<Instant>,
    unresponsive_since: Option<Instant>,
    lease_valid_until: Option<Instant>,
    refresh_failed: bool,
    following: Option<String>,
    /// This tick's probe of the local PostgreSQL.
    last_probe: Option<crate::postgres::control::Probe>,
    /// The role this tick's actions gave PostgreSQL (promoted or demoted) after its probe;
    /// callbacks fired before the next probe (a reload asked for right after a switchover)
    /// name it, not the probe's.
    changed_role: Option<&'static str>,
    last_reason: String,
    commands: tokio::sync::mpsc::Receiver<crate::api::ApiCommand>,
    /// A reinitialize whose clone runs in the background.
    reinit: Option<reinit::ReinitJob>,
    /// A restore of the cluster to a point in time, as leader (`POST /restore`).
    restore: Option<restore::RestoreJob>,
    /// A base backup running in the background (`POST /backup`).
    backup: Option<backup::BackupJob>,
    /// PostgreSQL is being started as a standby (published as state `starting`).
    starting: bool,
    /// As leader: the members' slots, and since when a departed member's has been kept.
    member_slots: crate::ha::member_slots::MemberSlots,
    /// Synchronous mode on the primary: when each named standby became synchronous.
    sync_tracker: crate::ha::sync::SyncTracker,
    /// The members synchronous_standby_names names while this node manages it as primary.
    sync_named: Option<Vec<String>>,
    /// `[bootstrap]`, and the backup config a `restore` bootstrap reads.
    bootstrap: crate::config::BootstrapSection,
    bootstrap_backup_config: Option<std::path::PathBuf>,
    /// `[postgresql.callbacks]`.
    callbacks: crate::callbacks::Callbacks,
    /// The `history` key as last read.
    history: Option<consensus::kv::KeyValue>,
    /// As leader: the timeline whose switch this agent knows the `history` key records.
    history_recorded: Option<u32>,
    /// The `slots` entries of the dynamic configuration last refused (logged when they change).
    permanent_slots_refused: Vec<String>,
    /// The permanent slots this node made (`<data_dir>.run/permanent-slots`), once read.
    permanent_slots_made: Option<Vec<String>>,
}

impl Runtime {
    pub fn new(
        config: &AgentConfig,
        dcs: Arc<dyn Dcs>,
        pg: LocalPostgres,
        status: watch::Sender<NodeStatus>,
        commands: tokio::sync::mpsc::Receiver<crate::api::ApiCommand>,
    ) -> Runtime {
        let conn = config.postgresql.connect_address.unwrap_or(config.postgresql.listen);
        let local_parameters = pg.parameters.clone();
        let callbacks = crate::callbacks::Callbacks::new(config.postgresql.callbacks.clone(), &config.scope, pg.run_as);
        Runtime {
            name: config.name.clone(),
            ha: config.ha.to_ha_config(),
            base_ha: config.ha.to_ha_config(),
            local_parameters,
            dynamic: Default::default(),
            dynamic_refused: None,
            dcs,
            pg,
            tags: config.tags.clone(),
            conn_addr: conn.to_string(),
            api_base: config.api.base_url(),
            status,
            last_view: ClusterView::default(),
            last_addrs: Vec::new(),
            last_streamed: None,
            not_streaming_since: None,
            down_since: None,
            unresponsive_since: None,
            lease_valid_until: None,
            refresh_failed: false,
            following: None,
            last_probe: None,
            changed_role: None,
            last_reason: String::new(),
            commands,
            reinit: None,
            restore: None,
            backup: None,
            starting: false,
            member_slots: Default::default(),
            sync_tracker: Default::default(),
            sync_named: None,
            bootstrap: config.bootstrap.clone(),
            bootstrap_backup_config: config.bootstrap_backup_config().map(std::path::Path::to_path_buf),
            callbacks,
            history: None,
            history_recorded: None,
            permanent_slots_refused: Vec::new(),
            permanent_slots_made: None,
        }
    }

    /// Runs until `shutdown` resolves; then stops PostgreSQL and gives the leader lock up.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let wake = Arc::new(Notify::new());
        let watcher = tokio::spawn(key_watch::watch_decisive_keys(self.dcs.clone(), wake.clone()));
        tokio::pin!(shutdown);
        loop {
            self.tick().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.ha.loop_wait.min(self.until_last_decision())) => {}
                _ = wake.notified() => {}
                Some(command) = self.commands.recv() => self.run_command(command).await,
            }
        }
        watcher.abort();
        self.cancel_reinitialize().await;
        self.cancel_restore("the agent is stopping".into()).await;
        tracing::info!("shutting down: stopping PostgreSQL");
        let role = self.role_now();
        self.pg.stop(StopMode::Fast, Duration::from_secs(30)).await;
        self.callbacks.fire(crate::callbacks::Event::Stop, role);
        if self.last_view.leader.as_deref() == Some(self.name.as_str()) {
            match tokio::time::timeout(self.ha.retry_timeout, self.dcs.release_leader()).await {
                Ok(Ok(())) => tracing::info!("released the leader lock"),
                _ => tracing::warn!("could not release the leader lock; it expires after ttl"),
            }
        }
        self.callbacks.finish(Duration::from_secs(5)).await;
    }

    /// The role callbacks are told: from this tick's probe (`replica` when in recovery or unknown).
    fn role_now(&self) -> &'static str {
        if let Some(role) = self.changed_role {
            return role;
        }
        match &self.last_probe {
            Some(p) if !p.in_recovery => "primary",
            _ => "replica",
        }
    }

    fn address_of(&self, member: &str) -> Option<String> {
        self.last_addrs.iter().find(|a| a.name == member).and_then(|a| a.postgres.clone())
    }
}
