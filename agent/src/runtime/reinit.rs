//! Reinitialize on an operator's request (POST /reinitialize): stop PostgreSQL, remove the data
//! directory, clone the leader with pg_basebackup in a background task, then start as its
//! replica. The HA loop keeps ticking meanwhile (member key refreshed, state "creating replica")
//! but leaves the half-cloned directory alone. One at a time, as Patroni's: a second request is
//! refused unless forced, which cancels the running clone and starts over.

use super::Runtime;
use crate::ha::Action;
use crate::postgres::control::StopMode;
use crate::status::PgRunState;
use tokio::task::JoinHandle;

/// A reinitialize whose clone is running.
pub(super) struct ReinitJob {
    leader: String,
    clone: JoinHandle<Result<(), String>>,
}

impl Runtime {
    /// Starts a reinitialize, or says why not (Patroni's answers where it has one).
    pub(super) async fn start_reinitialize(&mut self, force: bool) -> Result<(), String> {
        if let Some(job) = &self.reinit {
            if !force {
                return Err("reinitialize already in progress".into());
            }
            tracing::warn!("reinitialize forced: cancelling the running clone of {}", job.leader);
            self.cancel_reinitialize().await;
        }
        let view = self.read_view().await;
        if !view.reachable {
            return Err("the DCS is not reachable; not touching the data directory".into());
        }
        let leader = match view.leader.as_deref() {
            Some(l) if l == self.name => return Err("I am the leader, can not reinitialize".into()),
            Some(l) => l.to_string(),
            None => return Err("Cluster has no leader, can not reinitialize".into()),
        };
        let addr = self.address_of(&leader).ok_or(format!("the leader {leader} has published no address"))?;
        tracing::warn!(
            "reinitializing on request: stopping PostgreSQL and removing {} to clone {leader} ({addr})",
            self.pg.data_dir.display()
        );
        // Its data is about to be thrown away: no need for a shutdown checkpoint (Patroni: immediate).
        self.pg.stop(StopMode::Immediate, self.ha.retry_timeout).await;
        if self.pg.is_running() {
            self.pg.kill();
        }
        self.pg.remove_data_dir().map_err(|e| e.to_string())?;
        self.following = None;
        self.last_streamed = None;
        self.not_streaming_since = None;
        let clone = self.pg.base_backup(&addr).map_err(|e| format!("cloning {leader}: {e}"))?;
        let clone = tokio::spawn(async move { clone.await.map_err(|e| e.to_string()) });
        let reason = format!("reinitialize in progress: cloning the leader {leader} with pg_basebackup");
        self.reinit = Some(ReinitJob { leader, clone });
        // The API shows it from the answer to the request on, not only from the next tick.
        self.status.send_modify(|s| {
            s.state = PgRunState("creating replica".into());
            s.pg_running = false;
            s.last_decision = reason;
        });
        Ok(())
    }

    /// Cancels a running clone, waits until pg_basebackup is gone (its future is dropped) and
    /// removes the half-cloned directory, which must never pass for a data directory.
    pub(super) async fn cancel_reinitialize(&mut self) {
        if let Some(job) = self.reinit.take() {
            job.clone.abort();
            let _ = job.clone.await;
            if let Err(e) = self.pg.remove_data_dir() {
                tracing::warn!("could not remove the half-cloned data directory: {e}");
            }
        }
    }

    /// At the start of a tick: while the clone runs, the sentence to report (the tick then only
    /// publishes); once it has finished, starts the replica or reports the failure, and None.
    pub(super) async fn reinitialize_progress(&mut self) -> Option<String> {
        let job = self.reinit.as_ref()?;
        if !job.clone.is_finished() {
            return Some(format!("reinitialize in progress: cloning the leader {} with pg_basebackup", job.leader));
        }
        let job = self.reinit.take()?;
        match job.clone.await {
            Ok(Ok(())) => {
                let start = Action::StartReplica { leader: Some(job.leader.clone()) };
                match self.execute(&start, &self.last_view.clone()).await {
                    Ok(()) => tracing::info!("reinitialized: cloned {}, running as its replica", job.leader),
                    Err(e) => tracing::warn!("reinitialize: cloned {} but could not start: {e}", job.leader),
                }
            }
            Ok(Err(e)) => tracing::warn!("reinitialize failed: cloning {}: {e}", job.leader),
            Err(e) => tracing::warn!("reinitialize failed: the clone task ended abnormally: {e}"),
        }
        None
    }
}
