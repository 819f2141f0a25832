//! The pooler's timers live on one housekeeping thread, not on the runtime that relays
//! clients. A tokio runtime with a time driver does timer work at every wake (it reads the
//! clock and walks its timer wheel before and after each wait for I/O, twice per transaction
//! at one client), whether or not a timer is due; the relaying runtime is built without one
//! (`runtime::main`) and every timeout, sleep and interval of the pooler is made here instead.
//! A timer that fires wakes its task across threads; timers that are set and cancelled cost a
//! lock on the housekeeping thread's wheel. Also runs the `/metrics` HTTP server, whose
//! library may arm timers of its own.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;
pub use tokio::time::Sleep;
use tokio::time::{Instant, Interval, Timeout};

static HANDLE: OnceLock<tokio::runtime::Handle> = OnceLock::new();

/// Starts the housekeeping thread now (`pgha pooler` does at its start, so that a failure is
/// an error there and not later).
pub fn init() -> std::io::Result<()> {
    static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = STARTING.lock().unwrap_or_else(|p| p.into_inner());
    if HANDLE.get().is_none() {
        let _ = HANDLE.set(start()?);
    }
    Ok(())
}

/// The housekeeping runtime's handle, started with the first timer if `init` did not.
pub fn handle() -> &'static tokio::runtime::Handle {
    if let Some(handle) = HANDLE.get() {
        return handle;
    }
    if let Err(e) = init() {
        // Without a thread the process cannot time anything out: no sensible way on.
        panic!("cannot start the pooler's timer thread: {e}");
    }
    HANDLE.get().unwrap_or_else(|| unreachable!("init sets the handle"))
}

fn start() -> std::io::Result<tokio::runtime::Handle> {
    let (tx, rx) = std::sync::mpsc::channel();
    let spawned = std::thread::Builder::new().name("pgha-timers".into()).spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
        match runtime {
            Ok(runtime) => {
                let _ = tx.send(Ok(runtime.handle().clone()));
                // Runs the timers and anything spawned on the handle for as long as the
                // process lives.
                runtime.block_on(std::future::pending::<()>());
            }
            Err(e) => {
                let _ = tx.send(Err(e));
            }
        }
    });
    let started = match spawned {
        Ok(_) => rx.recv().map_err(|_| std::io::Error::other("the timer thread ended at its start")),
        Err(e) => Err(e),
    };
    started.and_then(|r| r)
}

/// `tokio::time::sleep`, on the housekeeping thread's clock.
pub fn sleep(duration: Duration) -> Sleep {
    let _on = handle().enter();
    tokio::time::sleep(duration)
}

/// `tokio::time::sleep_until`, on the housekeeping thread's clock.
pub fn sleep_until(deadline: Instant) -> Sleep {
    let _on = handle().enter();
    tokio::time::sleep_until(deadline)
}

/// `tokio::time::timeout`, on the housekeeping thread's clock.
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    let _on = handle().enter();
    tokio::time::timeout(duration, future)
}

/// `tokio::time::timeout_at`, on the housekeeping thread's clock.
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    let _on = handle().enter();
    tokio::time::timeout_at(deadline, future)
}

/// `tokio::time::interval` whose missed ticks are delayed, not bunched: the housekeeping
/// loops want a pause between rounds.
pub fn interval(period: Duration) -> Interval {
    let _on = handle().enter();
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relaying runtime has no time driver: timers made here still fire there, and a
    /// timeout there still bounds its future.
    #[test]
    fn timers_work_on_a_runtime_without_a_time_driver() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        runtime.block_on(async {
            let started = std::time::Instant::now();
            sleep(Duration::from_millis(30)).await;
            assert!(started.elapsed() >= Duration::from_millis(30));
            let never = std::future::pending::<()>();
            assert!(timeout(Duration::from_millis(20), never).await.is_err());
            assert_eq!(timeout(Duration::from_secs(5), async { 7 }).await, Ok(7));
            let mut tick = interval(Duration::from_millis(10));
            tick.tick().await;
            let before = std::time::Instant::now();
            tick.tick().await;
            assert!(before.elapsed() >= Duration::from_millis(5));
        });
    }
}
