//! client_login_timeout for the logins in progress. Each login holds a slot in one queue, and
//! a task on the housekeeping thread (`crate::clock`) looks at the queue every `TICK` while it
//! has slots: it wakes the logins whose time is up and forgets the slots of those that are
//! over. A login costs an allocation and a queue push; a timer of its own was set and
//! cancelled in the housekeeping thread's timer wheel, under its lock, at every connection.
//! The price is precision: a login times out up to one `TICK` late (PgBouncer looks every
//! third of a second).

use atomic_waker::AtomicWaker;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// How often the queue is looked at while it has slots.
const TICK: Duration = Duration::from_millis(100);

const RUNNING: u8 = 0;
const OVER: u8 = 1;
const EXPIRED: u8 = 2;

/// The logins in progress, with their deadlines.
#[derive(Clone, Default)]
pub struct LoginDeadlines(Arc<Mutex<Queue>>);

#[derive(Default)]
struct Queue {
    slots: VecDeque<(Instant, Arc<Slot>)>,
    /// The task that looks at the queue runs (it ends when the queue is empty).
    watching: bool,
}

#[derive(Default)]
struct Slot {
    state: AtomicU8,
    waker: AtomicWaker,
}

/// A login's deadline: `poll_expired` says when it has passed. Dropping it ends the login's
/// slot.
pub struct LoginDeadline(Arc<Slot>);

impl LoginDeadlines {
    /// A deadline `timeout` from now.
    pub fn start(&self, timeout: Duration) -> LoginDeadline {
        let slot = Arc::new(Slot::default());
        let at = Instant::now() + timeout;
        let mut queue = self.lock();
        queue.slots.push_back((at, slot.clone()));
        if !queue.watching {
            queue.watching = true;
            crate::clock::handle().spawn(watch(self.clone()));
        }
        LoginDeadline(slot)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One look: wakes the logins past their deadline, forgets the slots that are over.
    /// Returns whether any slot is left.
    fn look(&self, now: Instant) -> bool {
        let mut queue = self.lock();
        queue.slots.retain(|(at, slot)| {
            if slot.state.load(Ordering::Acquire) != RUNNING {
                return false;
            }
            if *at > now {
                return true;
            }
            if slot.state.compare_exchange(RUNNING, EXPIRED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                slot.waker.wake();
            }
            false
        });
        if queue.slots.is_empty() {
            queue.watching = false;
        }
        queue.watching
    }

    #[cfg(test)]
    fn slots(&self) -> usize {
        self.lock().slots.len()
    }
}

/// Looks at the queue every `TICK` until it is empty.
async fn watch(deadlines: LoginDeadlines) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if !deadlines.look(Instant::now()) {
            return;
        }
    }
}

impl LoginDeadline {
    /// Ready once the deadline has passed; until then the task is woken when it does.
    pub fn poll_expired(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.0.waker.register(cx.waker());
        match self.0.state.load(Ordering::Acquire) {
            EXPIRED => Poll::Ready(()),
            _ => Poll::Pending,
        }
    }
}

impl Drop for LoginDeadline {
    fn drop(&mut self) {
        let _ = self.0.state.compare_exchange(RUNNING, OVER, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expired(deadline: &LoginDeadline) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        deadline.poll_expired(&mut cx).is_ready()
    }

    #[test]
    fn a_look_expires_what_is_due_and_forgets_what_is_over() {
        let deadlines = LoginDeadlines::default();
        // Looked at by hand: no watch task that could look first.
        deadlines.lock().watching = true;
        let due = deadlines.start(Duration::ZERO);
        let over = deadlines.start(Duration::ZERO);
        let later = deadlines.start(Duration::from_secs(60));
        drop(over);
        assert_eq!(deadlines.slots(), 3);
        assert!(!expired(&due), "expired before any look");
        assert!(deadlines.look(Instant::now()), "the later slot is still watched");
        assert!(expired(&due));
        assert!(!expired(&later));
        assert_eq!(deadlines.slots(), 1, "the due and the finished slots are forgotten");
        drop(later);
        assert!(!deadlines.look(Instant::now() + Duration::from_secs(120)), "nothing left to watch");
        assert!(!deadlines.lock().watching);
    }

    /// Through the housekeeping thread: the login's task is woken within a tick or two of
    /// its deadline, and the watch ends (and starts again) with the queue.
    #[tokio::test]
    async fn a_waiting_login_is_woken_when_its_time_is_up() {
        let deadlines = LoginDeadlines::default();
        for _ in 0..2 {
            let started = Instant::now();
            let deadline = deadlines.start(Duration::from_millis(150));
            std::future::poll_fn(|cx| deadline.poll_expired(cx)).await;
            let took = started.elapsed();
            assert!(took >= Duration::from_millis(150), "woken after {took:?}");
            assert!(took < Duration::from_millis(150) + 3 * TICK, "woken only after {took:?}");
            drop(deadline);
            let mut waited = Duration::ZERO;
            while deadlines.lock().watching {
                assert!(waited < Duration::from_secs(5), "the watch did not end with an empty queue");
                tokio::time::sleep(Duration::from_millis(20)).await;
                waited += Duration::from_millis(20);
            }
        }
    }
}
