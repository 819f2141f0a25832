//! Bootstrapping a new cluster: win the `initialize` race, initdb or restore from a backup to a point
//! in time (`[bootstrap]`), start, take the leader lock
//! and record the system identifier; on failure give everything back for another node to try.

use super::Runtime;
use crate::config::BootstrapMethod;
use consensus::dcs::{ClusterKey, Expected};
use std::time::Duration;

impl Runtime {
    pub(super) async fn bootstrap(&mut self) -> Result<(), String> {
        match self.dcs.initialize(b"").await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => return Err(format!("racing for initialize: {e}")),
        }
        let result: Result<(), String> = async {
            self.make_data_directory().await?;
            self.pg.ensure_roles_and_slots(&[], Duration::from_secs(30)).await.map_err(|e| e.to_string())?;
            let lease = self.dcs.acquire_leader().await.map_err(|e| e.to_string())?;
            self.lease_valid_until = Some(lease.valid_until);
            let sysid = self.pg.system_identifier().ok_or("the new data directory has no pg_control")?;
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
            self.callbacks.fire(crate::callbacks::Event::Start, "primary");
        }
        result
    }

    /// initdb, or a restore from a backup to a point in time (`[bootstrap] method`), ending with
    /// PostgreSQL running as a primary.
    async fn make_data_directory(&mut self) -> Result<(), String> {
        let Some(config) =
            self.bootstrap_backup_config.clone().filter(|_| self.bootstrap.method == BootstrapMethod::Restore)
        else {
            tracing::info!("won the initialize race; running initdb");
            self.pg.initdb().await.map_err(|e| e.to_string())?;
            self.pg.write_config(None, false).map_err(|e| e.to_string())?;
            return self.pg.start(Duration::from_secs(120)).await.map_err(|e| e.to_string());
        };
        let config = std::fs::canonicalize(&config)
            .map_err(|e| format!("bootstrap.backup_config = {}: {e}", config.display()))?;
        let pgha = crate::postgres::archiving::this_binary()?;
        let target = self.bootstrap.target_args();
        tracing::info!(backup_config = %config.display(), target = %target.join(" "), "won the initialize race; restoring the data directory from a backup");
        self.pg.restore_from_backup(&pgha, &config, &target).await.map_err(|e| e.to_string())?;
        self.pg.write_config(None, false).map_err(|e| e.to_string())?;
        // Connections are accepted once the restored directory is consistent; recovery then runs
        // on to the target and promotes.
        self.pg.start(RECOVERY_LIMIT).await.map_err(|e| e.to_string())?;
        self.pg.finish_point_in_time_recovery(RECOVERY_LIMIT).await.map_err(|e| e.to_string())?;
        tracing::info!("point-in-time recovery done; PostgreSQL promoted");
        Ok(())
    }
}

/// How long a restore bootstrap's recovery may take (replaying a day of WAL can take hours).
const RECOVERY_LIMIT: Duration = Duration::from_secs(24 * 3600);
