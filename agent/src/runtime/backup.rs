//! A base backup on an operator's request (`POST /backup`, `pgha ctl backup`): `pgha backup
//! create` of the primary's data directory runs in the background while the HA loop goes on;
//! its result is published for `GET /patroni` when it ends. One at a time.

use super::Runtime;
use crate::status::BackupStatus;
use std::path::PathBuf;
use tokio::task::JoinHandle;

/// A backup that runs.
pub(super) struct BackupJob {
    kind: String,
    task: JoinHandle<Result<String, String>>,
}

impl Runtime {
    /// Starts a backup, or says why not.
    pub(super) async fn start_backup(&mut self, kind: String) -> Result<(), String> {
        if let Some(job) = &self.backup {
            return Err(format!("a {} backup is already running", job.kind));
        }
        if self.restore.is_some() {
            return Err("a restore is in progress".into());
        }
        let running_primary = self.last_probe.as_ref().is_some_and(|p| !p.in_recovery);
        if self.last_view.leader.as_deref() != Some(self.name.as_str()) || !running_primary {
            return Err("I am not the leader: send the backup to the leader's API".into());
        }
        let (pgha, config) = self.backup_tools()?;
        let job = self.pg.backup_job(&pgha, &config, &kind).map_err(|e| e.to_string())?;
        let task = tokio::spawn(async move { job.await.map_err(|e| e.to_string()) });
        tracing::info!(kind, "base backup started (API request)");
        self.report_backup(&kind, "running", format!("pgha backup create --type {kind} is running"));
        self.backup = Some(BackupJob { kind, task });
        Ok(())
    }

    /// At each tick: once the backup has ended, publishes how.
    pub(super) async fn backup_progress(&mut self) {
        if !self.backup.as_ref().is_some_and(|job| job.task.is_finished()) {
            return;
        }
        let Some(job) = self.backup.take() else { return };
        let result = match job.task.await {
            Ok(r) => r,
            Err(e) => Err(format!("the backup task ended abnormally: {e}")),
        };
        match result {
            Ok(output) => {
                // The report line: `backup <label> (Full) complete: ...`.
                let line = output.lines().find(|l| l.starts_with("backup ")).unwrap_or(output.trim()).to_string();
                tracing::info!("{line}");
                self.report_backup(&job.kind, "done", line);
            }
            Err(e) => {
                tracing::error!("base backup failed: {e}");
                self.report_backup(&job.kind, "failed", e);
            }
        }
    }

    /// The `pgha` binary and the backup config (absolute) a backup or a restore of the running
    /// cluster runs with: `[backup] config`, or `[bootstrap] backup_config`.
    pub(super) fn backup_tools(&self) -> Result<(PathBuf, PathBuf), String> {
        let config = self
            .bootstrap_backup_config
            .clone()
            .ok_or("this node has no backup repository: set [backup] config in its agent file (docs/backup.md)")?;
        let config = std::fs::canonicalize(&config)
            .map_err(|e| format!("the backup config {} cannot be read: {e}", config.display()))?;
        Ok((crate::postgres::archiving::this_binary()?, config))
    }

    fn report_backup(&self, kind: &str, state: &'static str, detail: String) {
        let backup = BackupStatus { kind: kind.to_string(), state, detail };
        self.status.send_modify(|s| s.backup = Some(backup));
    }
}
