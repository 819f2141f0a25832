//! Bootstrapping a new cluster: win the `initialize` race, initdb, start, take the leader lock
//! and record the system identifier; on failure give everything back for another node to try.

use super::Runtime;
use consensus::dcs::{ClusterKey, Expected};
use std::time::Duration;

impl Runtime {
    pub(super) async fn bootstrap(&mut self) -> Result<(), String> {
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
}
