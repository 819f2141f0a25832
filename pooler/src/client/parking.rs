//! Idle clients without a task: a client that has been idle a while (no server connection, no
//! bytes buffered, plain TCP or Unix socket) gives up its tokio task and its socket's tokio
//! registration (half a kilobyte between them) and waits in one epoll set for the whole
//! pooler, holding only the part of its relay's state that outlives an idle wait
//! (`relay::ParkedRelay`, about 100 bytes: no buffers, no busy-state). The first byte it sends (or a KILL or shutdown,
//! which shut its read side) puts it back in the runtime with a new task. Owns that epoll set,
//! the parked relays and the sweep that decides who parks; the relay decides nothing but
//! answers a request to park from its idle wait (`ClientEntry::park_wanted`).
//!
//! A client that has sent nothing since its login parks once two sweeps of the new clients
//! (every `FRESH_TICK` while there are any) found it idle; one that has been active parks after about a second
//! idle (`PARK_AFTER` ticks of the sweep over every client): a client between two transactions
//! of a busy session never pays the few system calls of parking and waking, and one that sends
//! its first query right after its login (as nearly all do) never parks in between.

use super::relay::{ParkedRelay, Relay};
use crate::connections::ClientEntry;
use crate::runtime::Shared;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// How often the sweep over every client looks for idle ones to park.
const TICK: Duration = Duration::from_millis(250);
/// Ticks a client that has been active waits idle before it parks (0.75–1 s: the sweeps come
/// every `TICK`, and its idle wait began somewhere within the first of them).
const PARK_AFTER: u32 = 4;
/// How often the clients that logged in since the last look are checked (a short list),
/// while there are any. Short: a client that has logged in but not parked holds a task, its
/// relay and its socket's registration (about a kilobyte); after a burst of logins that
/// memory stays in the heap as holes between the parked clients (10,000 idle clients took
/// 0.70 kB each with 5 ms, 0.78 with 25 ms).
const FRESH_TICK: Duration = Duration::from_millis(10);
/// Events taken from the epoll set per wake.
const EVENTS_PER_WAKE: usize = 256;
/// Clients that may wait between transactions keeping their buffers and their busy state
/// (`WarmSlot`): a bounded few, so that 10,000 clients each sending a query a second do not
/// each pin 16 kB of buffers for the second before they park.
const WARM_CLIENTS: usize = 128;

/// The parked clients of the pooler.
pub struct Parking {
    /// None when the set could not be created: then nobody parks.
    epoll: Option<Epoll>,
    /// Relays parked now. Each parked relay is owned by the set: its event's data is the
    /// pointer of its box (no map: a parked client costs its relay's state and nothing more),
    /// taken back exactly once by `wake` (EPOLLONESHOT).
    parked: AtomicUsize,
    /// The sweep's clock, in ticks (starts at 1: 0 means "not idle" in a client's entry).
    tick: AtomicU32,
    /// Set once the task that wakes parked clients runs (`serve`); before, nobody parks.
    serving: AtomicBool,
    /// Clients that logged in and have not sent anything yet, with whether the last look
    /// found them idle.
    fresh: Mutex<Vec<(Arc<ClientEntry>, bool)>>,
    /// The first client of an empty `fresh` list came: the looks at it start (an idle pooler
    /// does not wake every `FRESH_TICK`).
    fresh_arrived: tokio::sync::Notify,
    /// Warm slots taken (at most `WARM_CLIENTS`).
    warm: Arc<AtomicUsize>,
}

/// The right of one busy client to wait for its next transaction as it is, buffers and all,
/// until it is asked to park: a client sending one transaction after another then neither
/// gives back nor borrows anything between them. Given back when dropped.
pub(super) struct WarmSlot(Arc<AtomicUsize>);

impl WarmSlot {
    /// A slot, if parking runs (a warm client parks when it has been idle a while) and fewer
    /// than `WARM_CLIENTS` hold one.
    pub(super) fn take(parking: &Parking) -> Option<WarmSlot> {
        if !parking.enabled() {
            return None;
        }
        parking
            .warm
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < WARM_CLIENTS).then_some(n + 1))
            .ok()
            .map(|_| WarmSlot(parking.warm.clone()))
    }
}

impl Drop for WarmSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
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
        Parking {
            epoll,
            parked: AtomicUsize::new(0),
            tick: AtomicU32::new(1),
            serving: AtomicBool::new(false),
            fresh: Mutex::new(Vec::new()),
            fresh_arrived: tokio::sync::Notify::new(),
            warm: Arc::default(),
        }
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
        self.parked.load(Ordering::Relaxed)
    }

    /// A client just logged in: it parks soon if it sends nothing.
    pub fn logged_in(&self, client: Arc<ClientEntry>) {
        if self.enabled() {
            let mut fresh = self.fresh.lock().unwrap_or_else(|p| p.into_inner());
            let first = fresh.is_empty();
            fresh.push((client, false));
            drop(fresh);
            if first {
                self.fresh_arrived.notify_one();
            }
        }
    }
}

/// Parks `relay` (idle, no server connection, nothing buffered); gives it back, still in the
/// runtime if it can be, when the socket cannot be taken out or added to the set.
pub(super) fn park(mut relay: Relay) -> Result<(), Box<Relay>> {
    let shared = relay.shared().clone();
    let parking = &shared.parking;
    let Some(epoll) = parking.epoll.as_ref() else { return Err(Box::new(relay)) };
    if let Err(e) = relay.client_mut().detach() {
        tracing::debug!("client not parked: {e}");
        return Err(Box::new(relay));
    }
    let parked = match relay.into_parked() {
        Ok(parked) => parked,
        Err(mut relay) => {
            tracing::debug!("client not parked: it is not at rest");
            if let Err(e) = relay.client_mut().adopt(true) {
                tracing::warn!("cannot put a client's socket back into the runtime: {e}");
            }
            return Err(relay);
        }
    };
    let fd = parked.fd();
    let parked = Box::into_raw(Box::new(parked));
    parking.parked.fetch_add(1, Ordering::Relaxed);
    // SAFETY: the socket is open: the parked relay owns it and lives (in the set) until `wake`.
    let socket = unsafe { BorrowedFd::borrow_raw(fd) };
    let interest = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP | EpollFlags::EPOLLONESHOT;
    // From here the set owns the parked relay: its event may come at once, on another thread.
    let added = epoll.add(socket, EpollEvent::new(interest, parked as u64));
    if let Err(e) = added {
        parking.parked.fetch_sub(1, Ordering::Relaxed);
        // SAFETY: the add failed, so no event carries the pointer: it is still only ours.
        let parked = unsafe { Box::from_raw(parked) };
        tracing::warn!("cannot park an idle client ({e}); it keeps its task");
        return Err(Box::new(parked.wake()));
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
    let mut sweep = crate::clock::interval(TICK);
    let mut fresh = crate::clock::interval(FRESH_TICK);
    // Whether the fresh list had clients at the last look (then `fresh` ticks).
    let mut fresh_pending = false;
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
            _ = fresh.tick(), if fresh_pending => fresh_pending = sweep_fresh(parking),
            _ = parking.fresh_arrived.notified(), if !fresh_pending => {
                fresh.reset();
                fresh_pending = true;
            }
        }
    }
    parking.serving.store(false, Ordering::Release);
}

/// The parked client whose box `data` points to has bytes (or its socket was shut): back into
/// the runtime with a new task.
fn wake(shared: &Shared, epoll: &Epoll, data: u64) {
    // SAFETY: `data` is the pointer `park` leaked into the set with this socket's event, and
    // the event (EPOLLONESHOT, and the socket leaves the set below) comes once.
    let parked = unsafe { Box::from_raw(data as *mut ParkedRelay) };
    shared.parking.parked.fetch_sub(1, Ordering::Relaxed);
    // SAFETY: the parked relay owns the socket and is alive here.
    let _ = epoll.delete(unsafe { BorrowedFd::borrow_raw(parked.fd()) });
    let relay = parked.wake();
    match shared.ring.get() {
        Some(engine) => engine.spawn(relay.run()),
        _ => {
            tokio::spawn(relay.run());
        }
    }
}

/// One tick: asks every client that has been idle `PARK_AFTER` ticks to park.
fn sweep_idle(shared: &Shared) {
    let now = shared.parking.tick.fetch_add(1, Ordering::Relaxed) + 1;
    shared.pools.connections.for_each_client(|client| {
        if let Some((since, true)) = client.idleness() {
            if now.wrapping_sub(since) >= PARK_AFTER {
                client.request_park();
            }
        }
    });
}

/// Asks clients that have sent nothing since their login, and were idle at the last look
/// too, to park; forgets those that sent something, left, or were asked. Returns whether any
/// are left to look at.
fn sweep_fresh(parking: &Parking) -> bool {
    let mut fresh = parking.fresh.lock().unwrap_or_else(|p| p.into_inner());
    fresh.retain_mut(|(client, was_idle)| match client.idleness() {
        Some((_, false)) if *was_idle => {
            client.request_park();
            false
        }
        Some((_, false)) => {
            *was_idle = true;
            true
        }
        // Busy: still fresh until it has sent something; gone or active: forget it.
        None => Arc::strong_count(client) > 1 && !client.has_been_active(),
        Some((_, true)) => false,
    });
    !fresh.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_slots_are_bounded_given_back_on_drop_and_none_without_parking() {
        let parking = Parking::default();
        assert!(WarmSlot::take(&parking).is_none(), "a slot before parking runs");
        parking.serving.store(true, Ordering::Release);
        let mut slots: Vec<WarmSlot> = (0..WARM_CLIENTS).filter_map(|_| WarmSlot::take(&parking)).collect();
        assert_eq!(slots.len(), WARM_CLIENTS);
        assert!(WarmSlot::take(&parking).is_none(), "more than {WARM_CLIENTS} warm clients");
        slots.pop();
        assert!(WarmSlot::take(&parking).is_some(), "a dropped slot was not given back");
        drop(slots);
        assert_eq!(parking.warm.load(Ordering::Relaxed), 0);
    }
}
