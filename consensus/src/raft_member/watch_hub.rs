//! The recent watch events of one member, from the entries it applied, for the watches it serves
//! (long polls over the client API). Owns the bounded history and the "revision moved" signal;
//! a poll older than the history gets `Compacted`, so the watcher re-reads instead of missing
//! events. Must not decide what is committed: it only sees what the state machine applied.

use crate::kv::{Revision, WatchEvent};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How many events a member keeps for watchers that fell behind.
pub const HISTORY_EVENTS: usize = 10_000;

/// What a poll found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll {
    /// Events at or after the requested revision (possibly none after waiting), and the revision
    /// to poll from next.
    Events { events: Vec<WatchEvent>, next: Revision },
    /// Events from the requested revision are no longer held: re-read, then poll from `from`.
    Compacted { from: Revision },
}

struct History {
    events: VecDeque<WatchEvent>,
    /// Every event with a revision at or above this one is held (or has not happened yet).
    first_held: Revision,
    /// The applied key space's revision.
    revision: Revision,
}

/// Shared by the state machine (which publishes) and the client API (which polls).
pub struct WatchHub {
    history: Mutex<History>,
    moved: watch::Sender<Revision>,
}

fn event_revision(event: &WatchEvent) -> Revision {
    match event {
        WatchEvent::Put { kv, .. } => kv.mod_revision,
        WatchEvent::Delete { revision, .. } | WatchEvent::Resync { revision } => *revision,
    }
}

impl Default for WatchHub {
    fn default() -> Self {
        Self::new()
    }
}

impl WatchHub {
    pub fn new() -> Self {
        let history = History { events: VecDeque::new(), first_held: 1, revision: 0 };
        WatchHub { history: Mutex::new(history), moved: watch::channel(0).0 }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        // Poisoned only if a holder panicked mid-update; the history is still usable.
        self.history.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records the events of one applied command, which left the key space at `revision`.
    pub fn publish(&self, events: Vec<WatchEvent>, revision: Revision) {
        {
            let mut h = self.lock();
            for event in events {
                h.events.push_back(event);
            }
            while h.events.len() > HISTORY_EVENTS {
                if let Some(old) = h.events.pop_front() {
                    h.first_held = event_revision(&old) + 1;
                }
            }
            h.revision = revision;
        }
        self.moved.send_replace(revision);
    }

    /// The key space was replaced (snapshot restored or installed) at `revision`: events before
    /// it are unknown here.
    pub fn reset(&self, revision: Revision) {
        {
            let mut h = self.lock();
            h.events.clear();
            h.first_held = revision + 1;
            h.revision = revision;
        }
        self.moved.send_replace(revision);
    }

    fn collect(&self, prefix: &str, from: Revision) -> Poll {
        let h = self.lock();
        if from < h.first_held {
            return Poll::Compacted { from: h.first_held };
        }
        let events = h
            .events
            .iter()
            .filter(|e| event_revision(e) >= from && e.key().is_some_and(|k| k.starts_with(prefix)))
            .cloned()
            .collect();
        Poll::Events { events, next: from.max(h.revision + 1) }
    }

    /// Events under `prefix` from revision `from` on; waits up to `wait` for one if there is none.
    pub async fn poll(&self, prefix: &str, from: Revision, wait: Duration) -> Poll {
        let mut moved = self.moved.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            moved.borrow_and_update();
            match self.collect(prefix, from) {
                Poll::Events { events, next } if events.is_empty() => {
                    let changed = tokio::time::timeout_at(deadline, moved.changed()).await;
                    if !matches!(changed, Ok(Ok(()))) {
                        return Poll::Events { events, next };
                    }
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::KeyValue;

    fn put(key: &str, revision: Revision) -> WatchEvent {
        let kv = KeyValue {
            key: key.into(),
            value: vec![],
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease: 0,
        };
        WatchEvent::Put { kv, prev: None }
    }

    #[tokio::test]
    async fn polls_see_events_under_the_prefix_from_the_revision_asked() {
        let hub = WatchHub::new();
        hub.publish(vec![put("/a/1", 1)], 1);
        hub.publish(vec![put("/b/1", 2)], 2);
        hub.publish(vec![put("/a/2", 3)], 3);
        let Poll::Events { events, next } = hub.poll("/a/", 2, Duration::ZERO).await else { panic!() };
        assert_eq!(events, vec![put("/a/2", 3)]);
        assert_eq!(next, 4);
        let Poll::Events { events, next } = hub.poll("/a/", 4, Duration::from_millis(10)).await else { panic!() };
        assert!(events.is_empty());
        assert_eq!(next, 4);
    }

    #[tokio::test]
    async fn a_waiting_poll_wakes_on_publish() {
        let hub = std::sync::Arc::new(WatchHub::new());
        let h2 = hub.clone();
        let poller = tokio::spawn(async move { h2.poll("/a/", 1, Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        hub.publish(vec![put("/a/x", 1)], 1);
        let got = tokio::time::timeout(Duration::from_secs(1), poller).await.unwrap().unwrap();
        assert_eq!(got, Poll::Events { events: vec![put("/a/x", 1)], next: 2 });
    }

    #[tokio::test]
    async fn polls_before_the_history_are_told_to_resync() {
        let hub = WatchHub::new();
        hub.reset(10);
        assert_eq!(hub.poll("/", 5, Duration::ZERO).await, Poll::Compacted { from: 11 });
        for r in 11..(11 + HISTORY_EVENTS as i64 + 5) {
            hub.publish(vec![put("/k", r)], r);
        }
        assert_eq!(hub.poll("/", 11, Duration::ZERO).await, Poll::Compacted { from: 16 });
        assert!(
            matches!(hub.poll("/", 16, Duration::ZERO).await, Poll::Events { events, .. } if events.len() == HISTORY_EVENTS)
        );
    }
}
