//! Idle clients without a task: a client that has been idle a while (no server connection, no
//! bytes buffered, plain TCP or Unix socket) gives up its tokio task and its socket's tokio
//! registration (half a kilobyte between them) and waits in one epoll set for the whole
//! pooler, holding only its relay's state. The first byte it sends (or a KILL or shutdown,
//! which shut its read side) puts it back in the runtime with a new task. Owns that epoll set,
//! the parked relays and the sweep that decides who parks; the relay decides nothing but
//! answers a request to park from its idle wait (`ClientEntry::park_wanted`).
//!
//! A client parks after `PARK_AFTER_LOGIN` without a byte since it logged in, or after
//! `PARK_AFTER` idle once it has been active: a client between two transactions of a busy
//! session never pays the few system calls of parking and waking.

use super::relay::Relay;
use crate::runtime::Shared;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How often the sweep looks for clients to park.
const TICK: Duration = Duration::from_millis(100);
/// Ticks a client that has sent nothing since its login waits before it parks (up to 100 ms:
/// the sweep after its login; a client that sends its first query within a millisecond of
/// its login, as most do, almost never meets a sweep in between).
const PARK_AFTER_LOGIN: u32 = 1;
/// Ticks a client that has been active waits idle before it parks (1–1.1 s).
const PARK_AFTER: u32 = 10;
/// Events taken from the epoll set per wake.
const EVENTS_PER_WAKE: usize = 256;

/// The parked clients of the pooler.
pub struct Parking {
    /// None when the set could not be created: then nobody parks.
    epoll: Option<Epoll>,
    /// Parked relays by client id (the epoll event's data).
    parked: Mutex<HashMap<u64, Box<Relay>>>,
    /// The sweep's clock, in ticks (starts at 1: 0 means "not idle" in a client's entry).
    tick: AtomicU32,
    /// Set once the task that wakes parked clients runs (`serve`); before, nobody parks.
    serving: AtomicBool,
}

impl Default for Parking {
    fn default() -> Self {
        let epoll = match Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC) {
            Ok(epoll) => Some(epoll),
            Err(e) => {
                tracing::warn!("cannot create the epoll set for idle clients ({e}); idle clients keep their tasks");
                None
            }
        };
        Parking { epoll, parked: Mutex::new(HashMap::new()), tick: AtomicU32::new(1), serving: AtomicBool::new(false) }
    }
}

impl Parking {
    /// Whether idle clients may park now.
    pub fn enabled(&self) -> bool {
        self.epoll.is_some() && self.serving.load(Ordering::Acquire)
    }

    /// The sweep's current tick.
    pub fn tick(&self) -> u32 {
        self.tick.load(Ordering::Relaxed)
    }

    /// Clients parked right now.
    pub fn parked(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Box<Relay>>> {
        self.parked.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Parks `relay` (idle, no server connection, nothing buffered); gives it back, still in the
/// runtime if it can be, when the socket cannot be taken out or added to the set.
pub(super) fn park(mut relay: Relay) -> Result<(), Box<Relay>> {
    let shared = relay.shared().clone();
    let parking = &shared.parking;
    let Some(epoll) = parking.epoll.as_ref() else { return Err(Box::new(relay)) };
    let fd = match relay.client_mut().detach() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!("client not parked: {e}");
            return Err(Box::new(relay));
        }
    };
    let id = relay.client_id();
    // In the map before the set: its event may come at once, from another thread.
    let mut parked = parking.lock();
    parked.insert(id, Box::new(relay));
    // SAFETY: the socket stays open while its relay is in the map, which this lock holds.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let added = epoll.add(socket, EpollEvent::new(EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP, id));
    if let Err(e) = added {
        tracing::warn!("cannot park an idle client ({e}); it keeps its task");
        let Some(mut relay) = parked.remove(&id) else { return Ok(()) };
        if let Err(e) = relay.client_mut().attach() {
            tracing::warn!("cannot put a client's socket back into the runtime: {e}");
        }
        return Err(relay);
    }
    Ok(())
}

/// Wakes parked clients that have something to read, and asks idle ones to park, until the
/// runtime ends. Parking starts once this runs.
pub async fn serve(shared: Arc<Shared>) {
    let parking = &shared.parking;
    let Some(epoll) = parking.epoll.as_ref() else { return };
    // SAFETY: the set is open for as long as `shared` lives, which this task holds.
    let registered =
        unsafe { AsyncFd::register_with_interest(EpollFd(epoll.0.as_raw_fd()), tokio::io::Interest::READABLE) };
    let ready = match registered {
        Ok(ready) => ready,
        Err(e) => {
            tracing::warn!("cannot watch the epoll set for idle clients ({e}); idle clients keep their tasks");
            return;
        }
    };
    parking.serving.store(true, Ordering::Release);
    let mut sweep = tokio::time::interval(TICK);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut events = vec![EpollEvent::empty(); EVENTS_PER_WAKE];
    loop {
        tokio::select! {
            guard = ready.readable() => {
                let Ok(mut guard) = guard else { break };
                let n = match epoll.wait(&mut events, EpollTimeout::ZERO) {
                    Ok(n) => n,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => {
                        tracing::warn!("waiting on the idle clients' epoll set failed: {e}");
                        0
                    }
                };
                for event in &events[..n] {
                    wake(&shared, epoll, event.data());
                }
                if n < events.len() {
                    guard.clear_ready();
                }
            }
            _ = sweep.tick() => sweep_idle(&shared),
        }
    }
    parking.serving.store(false, Ordering::Release);
}

/// Client `id` has bytes (or its socket was shut): back into the runtime with a new task.
fn wake(shared: &Shared, epoll: &Epoll, id: u64) {
    let Some(mut relay) = shared.parking.lock().remove(&id) else { return };
    if let Some(fd) = relay.client_fd() {
        // SAFETY: the relay owns the socket and is alive here.
        let _ = epoll.delete(unsafe { BorrowedFd::borrow_raw(fd) });
    }
    if let Err(e) = relay.client_mut().attach() {
        // The relay's next read fails and it ends like any client whose socket broke.
        tracing::warn!("cannot put a parked client's socket back into the runtime: {e}");
    }
    tokio::spawn(relay.run());
}

/// One tick: asks every client idle for long enough to park.
fn sweep_idle(shared: &Shared) {
    let now = shared.parking.tick.fetch_add(1, Ordering::Relaxed) + 1;
    shared.pools.connections.for_each_client(|client| {
        if let Some((since, has_been_active)) = client.idleness() {
            let after = if has_been_active { PARK_AFTER } else { PARK_AFTER_LOGIN };
            if now.wrapping_sub(since) >= after {
                client.request_park();
            }
        }
    });
}

/// The epoll set's descriptor, watched by the runtime (the set itself stays in `Parking`).
struct EpollFd(RawFd);

impl AsRawFd for EpollFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0
    }
}

impl AsFd for EpollFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the set outlives this (both live in `Shared`, the set longer).
        unsafe { BorrowedFd::borrow_raw(self.0) }
    }
}
