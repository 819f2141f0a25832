//! Restoring the running cluster to a point in time (`POST /restore`, `pgha ctl
//! restore-cluster`), carried out by the leader: it waits until the WAL written so far is
//! archived (and touches nothing if that does not happen), stops PostgreSQL, moves the data
//! directory aside, restores the backup in the background, lets PostgreSQL replay to the target
//! and promote, and keeps the leader lock all along. If any step
//! fails, the data directory from before is put back and the node goes on as before. The
//! standbys are cloned again afterwards (`pgha ctl restore-cluster` asks each to reinitialize).

use super::leader::Renewal;
use super::Runtime;
use crate::api::RestoreRequest;
use crate::postgres::control::StopMode;
use crate::status::{PgRunState, RestoreStatus};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// A restore in progress on the leader.
pub(super) struct RestoreJob {
    /// The recovery target (`target_time 2026-05-01 14:03:27+00`).
    target: String,
    /// Where the data directory from before waits.
    aside: PathBuf,
    phase: Phase,
}

enum Phase {
    /// PostgreSQL still runs as primary; the segment holding the last commits is being archived
    /// (None without archive_mode). Nothing has been touched yet.
    Archiving { segment: Option<String>, until: Instant, pgha: PathBuf, config: PathBuf, args: Vec<String> },
    /// `pgha backup restore` runs.
    Copying(JoinHandle<Result<(), String>>),
    /// PostgreSQL runs on the restored directory and replays WAL to the target.
    Recovering,
}

/// How long the WAL written so far may take to reach the archive before a restore (more than
/// this and the restore is abandoned, nothing touched: archiving is behind or broken).
const ARCHIVE_WAIT: Duration = Duration::from_secs(30);

impl Runtime {
    /// Starts a restore, or says why not; nothing is touched when it says why not.
    pub(super) async fn start_restore(&mut self, request: &RestoreRequest) -> Result<(), String> {
        if let Some(job) = &self.restore {
            return Err(format!("a restore ({}) is already in progress", job.target));
        }
        if self.reinit.is_some() {
            return Err("a reinitialize is in progress".into());
        }
        let bootstrap = request.as_bootstrap();
        if bootstrap.targets() != 1 {
            return Err("give exactly one recovery target".into());
        }
        let view = self.read_view().await;
        if !view.reachable {
            return Err("the DCS is not reachable; not touching the data directory".into());
        }
        if view.leader.as_deref() != Some(self.name.as_str()) {
            return Err("I am not the leader: send the restore to the leader's API".into());
        }
        let (pgha, config) = self.backup_tools()?;
        let aside = aside_path(&self.pg.data_dir);
        if aside.exists() {
            return Err(format!(
                "{} is left from an earlier restore: check it and remove it, then ask again",
                aside.display()
            ));
        }
        if !self.pg.is_running() {
            return Err("PostgreSQL is not running here; restore once it runs as primary".into());
        }
        // Archiving must be seen to work before anything is touched: a target in the last
        // minutes lies in WAL that only this segment switch (or the one PostgreSQL makes when it
        // shuts down with archiving on) sends to the repository.
        let segment =
            self.pg.switch_wal_for_archive().await.map_err(|e| format!("switching to a new WAL segment: {e}"))?;
        let target = request.describe();
        let phase = Phase::Archiving {
            segment: segment.clone(),
            until: Instant::now() + ARCHIVE_WAIT,
            pgha,
            config,
            args: bootstrap.target_args(),
        };
        self.restore = Some(RestoreJob { target: target.clone(), aside: aside.clone(), phase });
        let detail = match &segment {
            Some(segment) => format!("waiting for {segment} to be archived before restoring to {target}"),
            None => "archive_mode is off: only WAL already in the repository will be replayed".into(),
        };
        tracing::warn!("restore of the cluster requested: {detail}");
        self.report_restore(&target, &aside, "archiving", detail);
        Ok(())
    }

    /// Once the WAL is archived: stops PostgreSQL, moves the data directory aside and starts
    /// `pgha backup restore` in the background. Err: abandoned, the data directory in place.
    async fn begin_copy(
        &mut self,
        pgha: &std::path::Path,
        config: &std::path::Path,
        args: &[String],
    ) -> Result<(), String> {
        let (target, aside) = match &self.restore {
            Some(job) => (job.target.clone(), job.aside.clone()),
            None => return Ok(()),
        };
        tracing::warn!(
            "restoring the cluster to {target}: stopping PostgreSQL and moving {} to {}",
            self.pg.data_dir.display(),
            aside.display()
        );
        self.pg.stop(StopMode::Fast, self.ha.retry_timeout).await;
        // Moves aside with the data: an agent that dies before the restore ends finds it there
        // at its next start and puts that directory back (`put_back_interrupted`).
        if let Err(e) = std::fs::write(self.pg.data_dir.join(INCOMPLETE), &target) {
            self.restore = None;
            return Err(format!("writing {} into the data directory: {e}", INCOMPLETE));
        }
        if let Err(e) = std::fs::rename(&self.pg.data_dir, &aside) {
            let _ = std::fs::remove_file(self.pg.data_dir.join(INCOMPLETE));
            // PostgreSQL is started again by the next tick (a stopped primary holding the lock).
            self.restore = None;
            return Err(format!("moving {} to {}: {e}", self.pg.data_dir.display(), aside.display()));
        }
        let copy = match self.pg.restore_job(pgha, config, args) {
            Ok(copy) => copy,
            Err(e) => {
                self.give_back(&target, &aside, format!("starting pgha backup restore: {e}"));
                return Ok(());
            }
        };
        let copy = tokio::spawn(async move { copy.await.map_err(|e| e.to_string()) });
        self.following = None;
        self.last_streamed = None;
        if let Some(job) = self.restore.as_mut() {
            job.phase = Phase::Copying(copy);
        }
        self.report_restore(&target, &aside, "restoring", format!("restoring the backup to {target}"));
        Ok(())
    }

    /// At the start of a tick: while a restore runs, keeps the lock and moves the restore on,
    /// returning the sentence to report (the tick then only publishes); None once it has ended
    /// (done or given back) or when none runs.
    pub(super) async fn restore_progress(&mut self) -> Option<String> {
        let job = self.restore.as_ref()?;
        let (target, aside) = (job.target.clone(), job.aside.clone());
        if let Err(why) = self.keep_lock_while_restoring().await {
            self.cancel_restore(format!("{why}; the restore was abandoned")).await;
            return None;
        }
        if let Phase::Archiving { segment, until, pgha, config, args } = &self.restore.as_ref()?.phase {
            let (segment, until, pgha, config, args) =
                (segment.clone(), *until, pgha.clone(), config.clone(), args.clone());
            if let Some(segment) = segment {
                // Polled for a moment within the tick: archiving one segment takes well under it.
                let poll_until = Instant::now() + Duration::from_secs(2).min(self.until_last_decision());
                let archived = loop {
                    match self.pg.archived_through(&segment).await {
                        Ok(true) => break true,
                        Ok(false) | Err(_) if Instant::now() < poll_until => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        _ => break false,
                    }
                };
                if !archived {
                    if Instant::now() < until {
                        return Some(format!("restore requested: waiting for {segment} to be archived"));
                    }
                    self.restore = None;
                    let why = format!(
                        "the WAL written so far ({segment}) did not reach the archive within {ARCHIVE_WAIT:?}; nothing \
                         was touched: check archiving (pg_stat_archiver, the PostgreSQL log) and ask again"
                    );
                    tracing::error!("restore abandoned: {why}");
                    self.report_restore(&target, &aside, "failed", why);
                    return None;
                }
                tracing::info!("restore: WAL archived through {segment}");
            }
            if let Err(why) = self.begin_copy(&pgha, &config, &args).await {
                self.restore = None;
                tracing::error!("restore abandoned: {why}");
                self.report_restore(&target, &aside, "failed", why);
                return None;
            }
            return Some(format!("restore in progress: restoring the backup to {target}"));
        }
        let copying = match &self.restore.as_ref()?.phase {
            Phase::Archiving { .. } => return None,
            Phase::Copying(task) if !task.is_finished() => {
                return Some(format!("restore in progress: restoring the backup to {target}"));
            }
            Phase::Copying(_) => true,
            Phase::Recovering => false,
        };
        if copying {
            let Some(RestoreJob { phase: Phase::Copying(task), .. }) = self.restore.take() else { return None };
            let copied = match task.await {
                Ok(r) => r,
                Err(e) => Err(format!("the restore task ended abnormally: {e}")),
            };
            if let Err(e) = copied.and_then(|()| self.start_recovery().map_err(|e| format!("the restored data: {e}"))) {
                self.give_back(&target, &aside, e);
                return None;
            }
            self.restore = Some(RestoreJob { target: target.clone(), aside: aside.clone(), phase: Phase::Recovering });
            // Accepting connections once the restored directory is consistent; not waited for
            // longer than a tick may take (the lock must be refreshed).
            let limit = self.ha.loop_wait.min(self.until_last_decision());
            match self.pg.start(limit).await {
                Ok(()) | Err(crate::postgres::control::PgError::Timeout { .. }) => {}
                Err(e) => {
                    self.give_back(&target, &aside, format!("PostgreSQL did not start on the restored data: {e}"));
                    return None;
                }
            }
            self.report_restore(&target, &aside, "recovering", "PostgreSQL replays WAL to the target".into());
        }
        if !self.pg.is_running() {
            let why = format!("PostgreSQL stopped during recovery to the target: {}", self.pg.log_tail());
            self.give_back(&target, &aside, why);
            return None;
        }
        let in_recovery = self.pg.query_value("select pg_is_in_recovery()::text", Duration::from_secs(2)).await;
        if !matches!(in_recovery.as_ref().map(Option::as_deref), Ok(Some("false"))) {
            return Some(format!("restore in progress: recovering to {target}"));
        }
        self.restore = None;
        if let Err(e) = std::fs::remove_file(aside.join(INCOMPLETE)) {
            tracing::warn!("restore: could not remove {}: {e}", aside.join(INCOMPLETE).display());
        }
        if let Err(e) = self.pg.reset_recovery_targets().await {
            tracing::warn!("restore: could not remove the recovery target settings (remove them by hand): {e}");
        }
        let timeline = self.pg.probe(self.ha.retry_timeout).await.map(|p| p.timeline).ok();
        let detail = format!(
            "restored to {target} and promoted{}; the data directory from before is kept in {} until you remove it; \
             the standbys must be cloned again (pgha ctl reinit)",
            timeline.map(|t| format!(" on timeline {t}")).unwrap_or_default(),
            aside.display()
        );
        tracing::warn!("{detail}");
        self.report_restore(&target, &aside, "done", detail);
        self.callbacks.fire(crate::callbacks::Event::Start, "primary");
        None
    }

    /// Checks the restored directory belongs to this cluster and writes pgha.conf into it.
    fn start_recovery(&mut self) -> Result<(), String> {
        let restored = self.pg.system_identifier().ok_or("the restored directory has no pg_control")?;
        if let Some(cluster) = self.last_view.initialized.filter(|id| *id != restored) {
            return Err(format!(
                "the backup is of another cluster (system identifier {restored}, this cluster's is {cluster})"
            ));
        }
        self.pg.write_config(None, false).map_err(|e| e.to_string())
    }

    /// A refresh of the leader lock for a tick of the restore; Err when the lock is lost or
    /// about to be (another member may take over with the data from before the restore).
    async fn keep_lock_while_restoring(&mut self) -> Result<(), String> {
        match self.renew_lease().await {
            Renewal::Renewed | Renewal::Failed { ends_soon: false, .. } => Ok(()),
            Renewal::Lost { holder } => Err(format!("lost the leader lock (now held by {holder:?})")),
            Renewal::Failed { why, ends_soon: true } => {
                Err(format!("cannot refresh the leader lock ({why}) and the lease ends soon"))
            }
        }
    }

    /// Stops a running restore (the agent stops, or the lock is lost) and puts the data
    /// directory from before back.
    pub(super) async fn cancel_restore(&mut self, why: String) {
        if let Some(job) = self.restore.take() {
            match job.phase {
                Phase::Archiving { .. } => {
                    tracing::warn!("restore abandoned before it touched anything: {why}");
                    self.report_restore(&job.target, &job.aside, "failed", why);
                    return;
                }
                Phase::Copying(task) => {
                    task.abort();
                    let _ = task.await;
                }
                Phase::Recovering => {}
            }
            self.give_back(&job.target, &job.aside, why);
        }
    }

    /// The restore failed: PostgreSQL stopped, the restored (or half-restored) directory removed,
    /// the one from before put back. The next tick starts it as usual.
    fn give_back(&mut self, target: &str, aside: &std::path::Path, why: String) {
        self.restore = None;
        self.pg.kill();
        let back = put_back(&self.pg.data_dir, aside);
        let detail = match back {
            Ok(()) => format!("{why}; the data directory from before is back in place"),
            Err(e) => format!(
                "{why}; and the data directory from before could not be put back ({e}): move {} to {} by hand",
                aside.display(),
                self.pg.data_dir.display()
            ),
        };
        tracing::error!("restore failed: {detail}");
        self.report_restore(target, aside, "failed", detail);
    }

    fn report_restore(&self, target: &str, aside: &std::path::Path, state: &'static str, detail: String) {
        let restore = RestoreStatus {
            target: target.to_string(),
            state,
            detail: detail.clone(),
            data_before_restore: aside.display().to_string(),
        };
        let busy = matches!(state, "restoring" | "recovering");
        self.status.send_modify(|s| {
            if busy {
                s.state = PgRunState("restoring".into());
                s.pg_running = false;
            }
            s.last_decision = detail;
            s.restore = Some(restore);
        });
    }
}

/// In the data directory moved aside while a restore runs; removed when it ends.
const INCOMPLETE: &str = "pgha-restore-incomplete";

/// Removes the restored (or half-restored) data directory and moves the one from before back.
fn put_back(data_dir: &std::path::Path, aside: &std::path::Path) -> Result<(), String> {
    match std::fs::remove_dir_all(data_dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("removing {}: {e}", data_dir.display())),
    }
    std::fs::rename(aside, data_dir)
        .map_err(|e| format!("moving {} back to {}: {e}", aside.display(), data_dir.display()))?;
    let _ = std::fs::remove_file(data_dir.join(INCOMPLETE));
    Ok(())
}

/// At the agent's start, before PostgreSQL is touched: a restore the agent did not see to its
/// end (killed, the machine lost) left the data directory from before aside with its marker.
/// That one is put back, so that no half-restored directory is started, and the target is
/// returned. Ok(None) when no restore was interrupted.
pub(crate) fn put_back_interrupted(data_dir: &std::path::Path) -> Result<Option<String>, String> {
    let aside = aside_path(data_dir);
    let Ok(target) = std::fs::read_to_string(aside.join(INCOMPLETE)) else { return Ok(None) };
    put_back(data_dir, &aside)?;
    Ok(Some(target))
}

/// Where a restore keeps the data directory from before: `<data_dir>.before-restore`.
fn aside_path(data_dir: &std::path::Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_owned()).unwrap_or_else(|| "data".into());
    name.push(".before-restore");
    data_dir.parent().unwrap_or(std::path::Path::new("/")).join(name)
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_interrupted_restore_puts_the_data_from_before_back_and_a_finished_one_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let aside = super::aside_path(&data);
        std::fs::create_dir_all(data.join("base")).unwrap();
        std::fs::write(data.join("PG_VERSION"), "half restored").unwrap();
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("PG_VERSION"), "from before").unwrap();
        // Finished: the marker is gone, both directories stay.
        assert_eq!(super::put_back_interrupted(&data), Ok(None));
        assert_eq!(std::fs::read_to_string(data.join("PG_VERSION")).unwrap(), "half restored");
        // Interrupted: the directory from before is back, without its marker.
        std::fs::write(aside.join(super::INCOMPLETE), "target_time 2026-01-01 00:00+00").unwrap();
        assert_eq!(super::put_back_interrupted(&data), Ok(Some("target_time 2026-01-01 00:00+00".into())));
        assert_eq!(std::fs::read_to_string(data.join("PG_VERSION")).unwrap(), "from before");
        assert!(!aside.exists() && !data.join(super::INCOMPLETE).exists() && !data.join("base").exists());
        // Interrupted before the restore made a directory: put back all the same.
        std::fs::rename(&data, &aside).unwrap();
        std::fs::write(aside.join(super::INCOMPLETE), "x").unwrap();
        assert_eq!(super::put_back_interrupted(&data), Ok(Some("x".into())));
        assert!(data.join("PG_VERSION").is_file() && !aside.exists());
    }

    #[test]
    fn the_data_from_before_is_kept_next_to_the_data_directory() {
        assert_eq!(
            super::aside_path(std::path::Path::new("/var/lib/pgha/data/")),
            std::path::PathBuf::from("/var/lib/pgha/data.before-restore")
        );
    }
}
