//! Synchronous mode, carried out by the primary each tick: takes pg_stat_replication from the
//! tick's probe, asks `ha::sync` for the plan, and writes the `sync` key and
//! synchronous_standby_names in its order. Off, it takes its setting and its key away.

use super::Runtime;
use crate::ha::sync::{standby_names_setting, SyncInputs, WalSender};
use crate::postgres::control::{slot_name, Probe};
use consensus::cluster::SyncValue;
use consensus::dcs::{ClusterKey, Expected};

impl Runtime {
    pub(super) async fn keep_synchronous_standbys(&mut self, p: &Probe) {
        if p.in_recovery {
            return;
        }
        let me = self.name.clone();
        let key = self.last_view.sync.clone();
        if !self.ha.synchronous_mode {
            if self.sync_named.is_some() || self.pg.synchronous_standby_names.is_some() {
                self.forget_synchronous_standbys();
                match self.rewrite_config_and_reload(false).await {
                    Ok(()) => tracing::info!("synchronous mode is off: synchronous_standby_names is no longer managed"),
                    Err(e) => tracing::warn!("could not turn synchronous replication off: {e}"),
                }
            }
            if let Some(k) = key.filter(|k| k.leader.as_deref() == Some(me.as_str())) {
                if let Err(e) = self.dcs.delete(ClusterKey::Sync, Expected::Revision(k.revision)).await {
                    tracing::warn!("could not remove the sync key: {e}");
                }
            }
            return;
        }
        // The tick's probe read pg_stat_replication and the current WAL position in one
        // statement: a consistent picture, as the plan needs.
        let (current, rows) = (p.position, &p.replication);
        let candidates: Vec<String> =
            self.last_view.members.iter().filter(|m| m.name != me && !m.nosync).map(|m| m.name.clone()).collect();
        let senders: Vec<WalSender> = rows
            .iter()
            .filter_map(|r| {
                let member = candidates.iter().find(|c| slot_name(c) == r.application_name)?;
                Some(WalSender {
                    member: member.clone(),
                    streaming: r.state == "streaming",
                    sync: r.sync_state == "sync",
                    flush: r.flush,
                })
            })
            .collect();
        let mine = key.as_ref().filter(|k| k.leader.as_deref() == Some(me.as_str()));
        // Not managed yet by this agent: what PostgreSQL runs with, as far as it reports it
        // (the standbys synchronous now are named in its setting).
        let configured = match &self.sync_named {
            Some(named) => named.clone(),
            None => {
                if let Some(k) = mine {
                    self.sync_tracker.resume(&k.standbys, &senders);
                }
                senders.iter().filter(|s| s.streaming && s.sync).map(|s| s.member.clone()).collect()
            }
        };
        let plan = self.sync_tracker.plan(&SyncInputs {
            node_count: self.ha.synchronous_node_count,
            max_lag: self.ha.maximum_lag_on_syncnode,
            key: mine.map(|k| k.standbys.as_slice()),
            candidates: &candidates,
            senders: &senders,
            current,
            configured: &configured,
        });
        let mut expected = match &key {
            Some(k) => Expected::Revision(k.revision),
            None => Expected::Absent,
        };
        if let Some(standbys) = &plan.key_first {
            match self.dcs.write(ClusterKey::Sync, &SyncValue::new(&me, standbys, None).to_json(), expected).await {
                Ok(rev) => expected = Expected::Revision(rev),
                Err(e) => {
                    tracing::warn!("synchronous mode: could not write the sync key: {e}");
                    return;
                }
            }
            if mine.is_none() {
                tracing::info!("synchronous mode: took over the sync key as the new leader");
            }
        }
        // Managed from the first tick on (a data directory cloned from a primary may carry
        // another setting), and written again when synchronous_mode_strict changes.
        let names = plan.configure.clone().unwrap_or(configured);
        let setting = self.standby_names_for(&names);
        if self.sync_named.is_none() || self.pg.synchronous_standby_names.as_deref() != Some(setting.as_str()) {
            self.pg.synchronous_standby_names = Some(setting);
            if let Err(e) = self.rewrite_config_and_reload(false).await {
                // What PostgreSQL runs with is unknown now: the next tick counts no standby as
                // named (the key shrinks) and writes the setting again.
                self.sync_named = None;
                tracing::warn!("synchronous mode: could not set synchronous_standby_names: {e}");
                return;
            }
            tracing::info!(
                standbys = ?names,
                "synchronous mode: synchronous_standby_names = '{}'",
                self.pg.synchronous_standby_names.as_deref().unwrap_or("")
            );
            self.sync_named = Some(names);
        }
        if let Some(standbys) = &plan.key_then {
            match self.dcs.write(ClusterKey::Sync, &SyncValue::new(&me, standbys, None).to_json(), expected).await {
                Ok(_) => tracing::info!(?standbys, "synchronous mode: the sync key names the synchronous standbys"),
                Err(e) => tracing::warn!("synchronous mode: could not write the sync key: {e}"),
            }
        }
    }

    /// Before PostgreSQL starts as primary with the leader lock held (a restart in place): in
    /// synchronous mode, the standbys this leader's `sync` key names stay in
    /// synchronous_standby_names from the first commit on, since they alone may take over.
    pub(super) fn keep_synchronous_standbys_across_a_start(&mut self, view: &crate::ha::ClusterView) {
        if !self.ha.synchronous_mode || self.pg.synchronous_standby_names.is_some() {
            return;
        }
        let named = view.sync.as_ref().filter(|k| k.leader.as_deref() == Some(self.name.as_str()));
        if let Some(k) = named.filter(|k| !k.standbys.is_empty() || self.ha.synchronous_mode_strict) {
            self.pg.synchronous_standby_names = Some(self.standby_names_for(&k.standbys));
        }
    }

    /// synchronous_mode_strict: the standby about to be promoted takes
    /// `synchronous_standby_names = '*'` first, so that no commit is acknowledged without a
    /// standby from the promotion on (the next ticks name one).
    pub(super) async fn strict_before_promotion(&mut self) -> Result<(), String> {
        if !self.ha.synchronous_mode_strict || self.pg.synchronous_standby_names.is_some() {
            return Ok(());
        }
        self.pg.synchronous_standby_names = Some(standby_names_setting(&[], true));
        match self.rewrite_config_and_reload(true).await {
            Ok(()) => {
                tracing::info!("synchronous_mode_strict: synchronous_standby_names = '*' before promoting");
                Ok(())
            }
            Err(e) => {
                self.pg.synchronous_standby_names = None;
                Err(format!(
                    "synchronous_mode_strict: could not set synchronous_standby_names = '*' before promoting: {e}"
                ))
            }
        }
    }

    /// synchronous_standby_names naming these members (by their application_name).
    fn standby_names_for(&self, members: &[String]) -> String {
        let apps: Vec<String> = members.iter().map(|n| slot_name(n)).collect();
        standby_names_setting(&apps, self.ha.synchronous_mode_strict)
    }

    /// Not the primary any more: synchronous mode starts afresh at the next promotion.
    pub(super) fn forget_synchronous_standbys(&mut self) {
        self.sync_named = None;
        self.sync_tracker = Default::default();
        self.pg.synchronous_standby_names = None;
    }
}
