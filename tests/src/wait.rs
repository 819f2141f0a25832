//! Waiting for a condition with a deadline and a failure message that says what was awaited and
//! what was last seen, instead of a bare timeout.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `probe` every 50 ms until it returns `Ok(Some(v))`, or fails after `timeout` with
/// `what` and the last error or observation.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("condition not met yet");
    loop {
        let left = timeout.saturating_sub(start.elapsed()).max(Duration::from_millis(10));
        match tokio::time::timeout(left, probe()).await {
            Ok(Ok(Some(v))) => return Ok(v),
            Ok(Ok(None)) => last = String::from("condition not met yet"),
            Ok(Err(e)) => last = format!("{e:#}"),
            // The deadline passed while probing: keep what an earlier probe saw, if anything.
            Err(_) if last == "condition not met yet" => last = String::from("the probe itself did not answer in time"),
            Err(_) => {}
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
