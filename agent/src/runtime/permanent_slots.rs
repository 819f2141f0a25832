//! Permanent physical slots on this node, each tick (`ha::permanent_slots` plans): the
//! configured ones made, a standby's advanced after the primary's, and the ones this node made
//! that are no longer configured dropped. The names this node made are kept in
//! `<data_dir>.run/permanent-slots` (read once, then kept in memory), so that an agent
//! restarted after `slots` changed still knows which are its to drop.

use super::Runtime;
use crate::ha::permanent_slots::plan;
use crate::postgres::control::{slot_name, Probe};
use std::path::PathBuf;

impl Runtime {
    pub(super) async fn keep_permanent_slots(&mut self, p: &Probe) {
        let members: Vec<String> = self.last_view.members.iter().map(|m| slot_name(&m.name)).collect();
        let (wanted, refused) = crate::dynamic::permanent_slots(&self.dynamic, &members);
        if refused != self.permanent_slots_refused {
            for why in &refused {
                tracing::warn!("permanent slots: {why}");
            }
            self.permanent_slots_refused = refused;
        }
        let made = match &self.permanent_slots_made {
            Some(made) => made.clone(),
            None => self.made_permanent_slots(),
        };
        self.permanent_slots_made = Some(made.clone());
        if wanted.is_empty() && made.is_empty() {
            return;
        }
        let standby = p.in_recovery;
        let work = plan(
            &wanted,
            &p.slot_positions,
            standby.then_some(&self.last_view.slot_positions),
            standby.then_some(p.position),
            &made,
        );
        let rt = self.ha.retry_timeout;
        let mut record = made.clone();
        for name in work.create {
            match self.pg.create_reserving_slot(&name, rt).await {
                Ok(()) => {
                    tracing::info!(slot = name, "created the permanent replication slot");
                    if !record.contains(&name) {
                        record.push(name);
                    }
                }
                Err(e) => tracing::warn!(slot = name, "could not create the permanent replication slot: {e}"),
            }
        }
        for (name, to) in work.advance {
            if let Err(e) = self.pg.advance_slot(&name, to, rt).await {
                tracing::warn!(slot = name, "could not advance the permanent replication slot to {to}: {e}");
            }
        }
        for name in work.drop {
            match self.pg.drop_inactive_slot(&name, rt).await {
                Ok(true) => {
                    tracing::info!(slot = name, "dropped the permanent replication slot: it is no longer configured");
                    record.retain(|r| r != &name);
                }
                Ok(false) => {
                    tracing::debug!(slot = name, "an unconfigured permanent slot is in use; dropping it later")
                }
                Err(e) => tracing::warn!(slot = name, "could not drop an unconfigured permanent slot: {e}"),
            }
        }
        // A recorded slot gone from the server (dropped by hand, a reinitialized data directory)
        // and no longer wanted is forgotten.
        record.retain(|r| wanted.contains(r) || p.slot_positions.contains_key(r));
        if record != made {
            let text: String = record.iter().map(|r| format!("{r}\n")).collect();
            match std::fs::write(self.made_slots_file(), text) {
                Ok(()) => self.permanent_slots_made = Some(record),
                // Read again next tick: the file says what a restarted agent would know.
                Err(e) => {
                    self.permanent_slots_made = None;
                    tracing::warn!("could not record the permanent slots made here: {e}");
                }
            }
        }
    }

    fn made_slots_file(&self) -> PathBuf {
        self.pg.run_dir.join("permanent-slots")
    }

    fn made_permanent_slots(&self) -> Vec<String> {
        std::fs::read_to_string(self.made_slots_file())
            .map(|text| text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }
}
