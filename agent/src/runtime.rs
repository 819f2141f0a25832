//! The agent's loop: every `loop_wait` (or at once when the leader key changes) read the DCS,
//! probe PostgreSQL, ask `ha::decide`, perform the actions with timeouts, publish the member key
//! and the node status. All the I/O of the agent's HA logic lives here; the choices do not.

use crate::cluster_view::{member_value, view_from_snapshot, MemberAddress};
use crate::config::AgentConfig;
use crate::ha::{decide, Action, ClusterView, HaConfig, LocalState, Lsn, PeerProbe, PgState, Role, StreamPoint};
use crate::postgres::control::{slot_name, Credentials, LocalPostgres, StopMode};
use crate::status::{NodeRole, NodeStatus, PgRunState, Tags};
use consensus::dcs::{ClusterKey, Dcs, DcsError, Expected};
use consensus::kv::WatchEvent;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{watch, Notify};
use tokio_postgres::NoTls;

mod operator;

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
    api_addr: String,
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
    /// Replication slots (and the replication role) known to exist on the local primary.
    ensured_slots: Option<Vec<String>>,
    /// This tick's probe of the local PostgreSQL.
    last_probe: Option<crate::postgres::control::Probe>,
    last_reason: String,
    commands: tokio::sync::mpsc::Receiver<crate::api::ApiCommand>,
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
            api_addr: config.api.listen.to_string(),
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
            ensured_slots: None,
            last_probe: None,
            last_reason: String::new(),
            commands,
        }
    }

    /// Runs until `shutdown` resolves; then stops PostgreSQL and gives the leader lock up.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let wake = Arc::new(Notify::new());
        let watcher = tokio::spawn(watch_decisive_keys(self.dcs.clone(), wake.clone()));
        tokio::pin!(shutdown);
        loop {
            self.tick().await;
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.ha.loop_wait) => {}
                _ = wake.notified() => {}
                Some(command) = self.commands.recv() => self.run_command(command).await,
            }
        }
        watcher.abort();
        tracing::info!("shutting down: stopping PostgreSQL");
        self.pg.stop(StopMode::Fast, Duration::from_secs(30)).await;
        if self.last_view.leader.as_deref() == Some(self.name.as_str()) {
            match tokio::time::timeout(self.ha.retry_timeout, self.dcs.release_leader()).await {
                Ok(Ok(())) => tracing::info!("released the leader lock"),
                _ => tracing::warn!("could not release the leader lock; it expires after ttl"),
            }
        }
    }

    async fn read_view(&mut self) -> ClusterView {
        match tokio::time::timeout(self.ha.retry_timeout, self.dcs.snapshot()).await {
            Ok(Ok(snap)) => {
                let (view, addrs) = view_from_snapshot(&snap);
                self.dynamic = snap
                    .get(&ClusterKey::Config)
                    .and_then(|kv| consensus::cluster::DynamicConfig::parse(&kv.value).ok())
                    .unwrap_or_default();
                self.apply_dynamic_timing();
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
                tracing::warn!("DCS read timed out after {:?}", self.ha.retry_timeout);
                ClusterView { reachable: false, ..self.last_view.clone() }
            }
        }
    }

    async fn local_state(
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
                        if let (Some(tl), Some(lsn)) = (p.received_timeline, p.received) {
                            self.last_streamed = Some(StreamPoint { timeline: tl, lsn });
                        }
                    } else if p.in_recovery {
                        self.not_streaming_since.get_or_insert(now);
                    } else {
                        self.not_streaming_since = None;
                    }
                    let state = PgState::Running { role, timeline: p.timeline, wal_position: position };
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

    async fn tick(&mut self) {
        let now = Instant::now();
        let view = self.read_view().await;
        let (mut local, probe) = self.local_state(&view, now).await;
        let probe = self.apply_dynamic_parameters(probe).await;
        self.last_probe = probe.clone();
        if !matches!(local.postgres, PgState::Running { role: Role::Primary, .. }) {
            // Slots must be (re)checked whenever this node becomes primary again.
            self.ensured_slots = None;
        }
        let mut decision = decide(&view, &local, &self.ha, now);
        if decision.actions == [Action::ProbePeers] {
            local.peer_probes = Some(self.probe_peers().await);
            decision = decide(&view, &local, &self.ha, Instant::now());
        }
        // One line per change of decision; a new WAL position alone is not a new event.
        let shape = without_positions(&decision.reason);
        if shape != self.last_reason {
            tracing::info!("{}", decision.reason);
            self.last_reason = shape;
        } else {
            tracing::debug!("{}", decision.reason);
        }
        for action in decision.actions.clone() {
            if let Err(e) = self.execute(&action, &view).await {
                tracing::warn!(?action, "{e}");
                break;
            }
        }
        self.publish(&view, probe, &decision.reason).await;
    }

    fn address_of(&self, member: &str) -> Option<String> {
        self.last_addrs.iter().find(|a| a.name == member).and_then(|a| a.postgres.clone())
    }

    async fn probe_peers(&self) -> Vec<PeerProbe> {
        let timeout = self.ha.retry_timeout;
        let superuser = self.pg.superuser.clone();
        let probes = self.last_addrs.iter().filter(|a| a.name != self.name).map(|a| {
            let (name, addr, su) = (a.name.clone(), a.postgres.clone(), superuser.clone());
            let prio = self.last_view.member(&a.name).map_or(1, |m| m.failover_priority);
            async move {
                let answer = match addr {
                    Some(addr) => tokio::time::timeout(timeout, ask_peer(&addr, &su)).await.ok().and_then(Result::ok),
                    None => None,
                };
                PeerProbe {
                    name,
                    in_recovery: answer.map(|a| a.0),
                    timeline: None,
                    wal_position: answer.map(|a| a.1),
                    failover_priority: prio,
                }
            }
        });
        let handles: Vec<_> = probes.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            if let Ok(p) = h.await {
                out.push(p);
            }
        }
        out
    }

    async fn execute(&mut self, action: &Action, view: &ClusterView) -> Result<(), String> {
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
                self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())
            }
            Action::StartPrimary => {
                self.pg.write_config(None, false).map_err(|e| e.to_string())?;
                self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())
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
                self.pg.promote(Duration::from_secs(60)).await.map_err(|e| e.to_string())?;
                self.following = None;
                tracing::info!("promoted to primary");
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
                self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())
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
                self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())
            }
            Action::Fence => {
                tracing::warn!("fencing: killing PostgreSQL");
                self.pg.kill();
                Ok(())
            }
        }
    }

    /// Runs a request queued by the REST API.
    async fn run_command(&mut self, command: crate::api::ApiCommand) {
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

    /// Whether the stopped data directory was last a primary (pg_rewind may be needed).
    fn was_primary(&self) -> bool {
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

    async fn refresh_lock(&mut self) -> Result<(), String> {
        let rt = self.ha.retry_timeout;
        match tokio::time::timeout(rt, self.dcs.refresh_leader()).await {
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
                    _ => format!("no answer within {rt:?}"),
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
    async fn leader_duties(&mut self) {
        let mut slots: Vec<String> =
            self.last_addrs.iter().filter(|a| a.name != self.name).map(|a| slot_name(&a.name)).collect();
        slots.sort();
        // Only when the member set changed: this is SQL on the primary, not something for every tick.
        if self.ensured_slots.as_ref() != Some(&slots) {
            match self.pg.ensure_roles_and_slots(&slots, self.ha.retry_timeout).await {
                Ok(()) => self.ensured_slots = Some(slots),
                Err(e) => tracing::warn!("could not create roles/slots: {e}"),
            }
        }
        // This tick's probe is fresh enough for the status key.
        if let Some(p) = self.last_probe.clone() {
            self.write_leader_status(&p).await;
        }
    }

    /// Probes PostgreSQL and publishes the result as the leader status (after promote/bootstrap,
    /// when the tick's probe predates the new timeline).
    async fn publish_leader_status(&self) {
        if let Ok(p) = self.pg.probe(self.ha.retry_timeout).await {
            self.write_leader_status(&p).await;
        }
    }

    async fn write_leader_status(&self, p: &crate::postgres::control::Probe) {
        if p.in_recovery {
            return;
        }
        let value = serde_json::json!({ "optime": p.position.0, "timeline": p.timeline });
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if let Err(e) = self.dcs.write(ClusterKey::Status, &bytes, Expected::Any).await {
            tracing::warn!("could not write the status key: {e}");
        }
    }

    async fn bootstrap(&mut self) -> Result<(), String> {
        match self.dcs.initialize(b"").await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("racing for initialize: {e}")),
        }
        tracing::info!("won the initialize race; running initdb");
        let result: Result<(), String> = async {
            self.pg.initdb().await.map_err(|e| e.to_string())?;
            self.pg.write_config(None, false).map_err(|e| e.to_string())?;
            self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string())?;
            self.pg.ensure_roles_and_slots(&[], Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
            let lease = self.dcs.acquire_leader().await.map_err(|e| e.to_string())?;
            self.lease_valid_until = Some(lease.valid_until);
            let sysid = self.pg.system_identifier().ok_or("initdb left no pg_control")?;
            self.dcs
                .write(ClusterKey::Initialize, sysid.to_string().as_bytes(), Expected::Any)
                .await
                .map_err(|e| e.to_string())?;
            self.publish_leader_status().await;
            Ok(())
        }
        .await;
        if let Err(e) = &result {
            tracing::error!("bootstrap failed: {e}; giving the initialize key back");
            self.pg.kill();
            let _ = std::fs::remove_dir_all(&self.pg.data_dir);
            let _ = self.dcs.delete(ClusterKey::Initialize, Expected::Any).await;
            let _ = self.dcs.release_leader().await;
        } else {
            tracing::info!("cluster bootstrapped; I am the leader");
        }
        result
    }

    async fn publish(&mut self, view: &ClusterView, probe: Option<crate::postgres::control::Probe>, reason: &str) {
        let running = probe.is_some();
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
                &self.api_addr,
                running,
                role.as_str(),
                position,
                probe.as_ref().map(|p| p.timeline),
                probe.as_ref().is_some_and(|p| !p.pending_restart.is_empty()),
                &self.tags,
            );
            if let Err(e) = tokio::time::timeout(self.ha.retry_timeout, self.dcs.touch_member(&value))
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
        self.status.send_modify(|s| {
            s.role = role;
            s.pg_running = running;
            s.state = PgRunState(if running { "running" } else { "stopped" }.into());
            s.server_version = probe.as_ref().map(|p| p.server_version);
            s.system_identifier = sysid;
            s.timeline = probe.as_ref().map(|p| p.timeline);
            s.wal_position = probe.as_ref().filter(|p| !p.in_recovery).map(|p| p.position);
            s.received_position = probe.as_ref().filter(|p| p.in_recovery).and_then(|p| p.received);
            s.replayed_position = probe.as_ref().filter(|p| p.in_recovery).map(|p| p.position);
            s.streaming = probe.as_ref().and_then(|p| p.receiver_status.as_deref()) == Some("streaming");
            s.holds_lock = view.leader.as_deref() == Some(name.as_str());
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
        });
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

/// Asks a member's PostgreSQL directly: (in recovery?, WAL position received or written).
async fn ask_peer(addr: &str, su: &Credentials) -> Result<(bool, Lsn), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("bad address")?;
    let dsn = format!(
        "host={host} port={port} user={} password={} dbname=postgres connect_timeout=2 application_name=pgha-race",
        su.username, su.password
    );
    let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let row = client
        .query_one(
            "select pg_is_in_recovery(), (case when pg_is_in_recovery() \
             then greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) else pg_current_wal_lsn() end)::text",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
    let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
    Ok((in_recovery, lsn.and_then(|s| Lsn::parse(&s)).unwrap_or_default()))
}

/// Wakes the loop at once when a key that changes decisions changes (not on member touches).
async fn watch_decisive_keys(dcs: Arc<dyn Dcs>, wake: Arc<Notify>) {
    loop {
        let mut events = match dcs.watch(0).await {
            Ok(rx) => rx,
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(event) = events.recv().await {
            let decisive = match &event {
                WatchEvent::Resync { .. } => true,
                other => matches!(other.key(), Some("leader" | "failover" | "initialize" | "config")),
            };
            if decisive {
                wake.notify_one();
            }
        }
    }
}
