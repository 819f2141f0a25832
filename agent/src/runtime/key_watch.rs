//! Waking the HA loop as soon as a key that changes decisions (leader, failover, initialize,
//! config) changes in the DCS, instead of waiting for `loop_wait`.

use consensus::dcs::Dcs;
use consensus::kv::WatchEvent;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// Wakes the loop at once when a key that changes decisions changes (not on member touches).
pub(super) async fn watch_decisive_keys(dcs: Arc<dyn Dcs>, wake: Arc<Notify>) {
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
