//! The floor of a relay's CPU per transaction, for `scripts/bench-pooler` (`RELAY_FLOOR=`): a
//! byte proxy that gives each client its own upstream connection and moves bytes both ways
//! with no parsing, pooling or bookkeeping at all, on one thread. Two engines:
//!
//! - `epoll`: level-triggered epoll, then recv(2) and send(2) per readable socket: the system
//!   calls PgBouncer makes, with none of its user-space work;
//! - `io_uring`: one ring (single issuer, deferred task work); each socket always has one
//!   receive in flight, and a completed receive is sent on with a send linked to the next
//!   receive of the same socket, so one `io_uring_enter` per loop submits every send and
//!   receive and collects every completion;
//! - `io_uring-tasks`: the same ring, with the relay written as async tasks on a minimal
//!   executor (what an async relay on a ring adds for its task machinery);
//! - `io_uring-multishot`: the hand-written ring loop with one multishot receive per socket
//!   that stays armed, into buffers the kernel picks from a shared provided-buffer ring (no
//!   receive buffer per socket, no re-arming after each message);
//! - `pgha-ring`: pgha's own io_uring engine (`pooler::ring`: its executor and sockets), one
//!   async task per direction, as the pooler's relay would use it;
//! - `io_uring-nested`: the hand-written ring loop, but sleeping in `epoll_wait` on an eventfd
//!   the ring signals, as a ring inside another event loop (tokio's) would.
//!
//! Not a pooler: it shows how low any relay can go on each engine on a machine, next to
//! PgBouncer and pgha in the same run. Usage: `relay_floor ENGINE LISTEN_PORT
//! UPSTREAM_PORT` (both on 127.0.0.1), ENGINE one of the six above.

use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::mpsc::{Receiver, Sender};

/// Bytes one receive takes at most.
const BUF: usize = 16 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let parsed = match args.as_slice() {
        [_, engine, listen, upstream] => {
            listen.parse::<u16>().ok().zip(upstream.parse::<u16>().ok()).map(|p| (engine, p))
        }
        _ => None,
    };
    let Some((engine, (listen, upstream))) = parsed else {
        eprintln!("usage: relay_floor epoll|io_uring|io_uring-tasks|io_uring-nested LISTEN_PORT UPSTREAM_PORT");
        std::process::exit(2);
    };
    if let Err(e) = run(engine, listen, upstream) {
        eprintln!("relay_floor: {e}");
        std::process::exit(1);
    }
}

fn run(engine: &str, listen: u16, upstream: u16) -> io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", listen))?;
    // A new pair is announced on an eventfd, which both engines watch like any socket.
    let announce = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
    if announce < 0 {
        return Err(io::Error::last_os_error());
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || accept_loop(listener, upstream, tx, announce));
    match engine {
        "epoll" => epoll_relay(rx, announce),
        "io_uring" => uring_relay(rx, announce, false),
        "io_uring-nested" => uring_relay(rx, announce, true),
        "io_uring-tasks" => tasks::relay(rx, announce),
        "io_uring-multishot" => multishot::relay(rx, announce),
        "pgha-ring" => pgha_ring::relay(rx, announce),
        other => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("unknown engine {other:?}"))),
    }
}

/// Accepts clients and connects each to the upstream (blocking, off the relaying thread).
fn accept_loop(listener: TcpListener, upstream: u16, pairs: Sender<(RawFd, RawFd)>, announce: RawFd) {
    for client in listener.incoming() {
        let Ok(client) = client else { continue };
        let server = match TcpStream::connect(("127.0.0.1", upstream)) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("relay_floor: upstream: {e}");
                continue;
            }
        };
        for s in [&client, &server] {
            let _ = s.set_nodelay(true);
            let _ = s.set_nonblocking(true);
        }
        if pairs.send((client.into_raw_fd(), server.into_raw_fd())).is_err() {
            return;
        }
        let one: u64 = 1;
        unsafe { libc::write(announce, (&one as *const u64).cast(), 8) };
    }
}

/// Whose peer each descriptor is.
struct Peers(Vec<RawFd>);

impl Peers {
    fn of(&self, fd: RawFd) -> RawFd {
        self.0.get(fd as usize).copied().unwrap_or(-1)
    }

    fn pair(&mut self, a: RawFd, b: RawFd) {
        let need = a.max(b) as usize + 1;
        if self.0.len() < need {
            self.0.resize(need, -1);
        }
        self.0[a as usize] = b;
        self.0[b as usize] = a;
    }

    /// Forgets both sockets of a pair (their descriptors are about to be closed).
    fn unpair(&mut self, a: RawFd, b: RawFd) {
        for fd in [a, b] {
            if let Some(p) = self.0.get_mut(fd as usize) {
                *p = -1;
            }
        }
    }
}

fn send_all(fd: RawFd, mut bytes: &[u8]) -> bool {
    while !bytes.is_empty() {
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_NOSIGNAL) };
        if n > 0 {
            bytes = bytes.get(n as usize..).unwrap_or_default();
        } else if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock {
            // pgbench's messages are small: a full socket buffer is not the case measured.
            std::thread::yield_now();
        } else {
            return false;
        }
    }
    true
}

fn epoll_relay(pairs: Receiver<(RawFd, RawFd)>, announce: RawFd) -> io::Result<()> {
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        return Err(io::Error::last_os_error());
    }
    let watch = |fd: RawFd| -> io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: fd as u64 };
        if unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    watch(announce)?;
    let mut peers = Peers(Vec::new());
    let mut buf = vec![0u8; BUF];
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for ev in events.iter().take(n as usize) {
            let fd = ev.u64 as RawFd;
            if fd == announce {
                let mut count = 0u64;
                unsafe { libc::read(announce, (&mut count as *mut u64).cast(), 8) };
                while let Ok((client, server)) = pairs.try_recv() {
                    peers.pair(client, server);
                    watch(client)?;
                    watch(server)?;
                }
                continue;
            }
            let peer = peers.of(fd);
            if peer < 0 {
                continue;
            }
            let r = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), BUF, 0) };
            let done = match r {
                n if n > 0 => !send_all(peer, buf.get(..n as usize).unwrap_or_default()),
                0 => true,
                _ => io::Error::last_os_error().kind() != io::ErrorKind::WouldBlock,
            };
            if done {
                peers.unpair(fd, peer);
                unsafe {
                    libc::close(fd);
                    libc::close(peer);
                }
            }
        }
    }
}

/// A socket's state under io_uring: its receive buffer (also the buffer its pending send
/// reads from: the send is linked before the next receive) and whether that receive is in
/// flight. A pair is closed once both are dead and neither has an operation in flight, so a
/// descriptor number is never reused under a queued operation.
#[derive(Default)]
struct Slot {
    buf: Vec<u8>,
    in_flight: bool,
    dead: bool,
}

const ANNOUNCE: u64 = u64::MAX;
const SEND_FAILED: u64 = 1;

fn uring_relay(pairs: Receiver<(RawFd, RawFd)>, announce: RawFd, nested: bool) -> io::Result<()> {
    use io_uring::{opcode, squeue, types, IoUring};
    // Deferred task work runs only inside io_uring_enter: a loop that sleeps elsewhere (nested)
    // would never see it, so the nested ring runs task work the default way (the completing
    // side interrupts the sleeping thread).
    let mut ring: IoUring = if nested {
        IoUring::builder().build(4096)?
    } else {
        IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag().build(4096)?
    };
    // Nested: the ring's completions are announced on an eventfd that an (edge-triggered)
    // epoll set watches, as a ring inside another event loop would be; the loop sleeps in
    // epoll_wait, never in the ring.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if nested {
        let efd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
        ring.submitter().register_eventfd(efd)?;
        let mut ev = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: 0 };
        if ep < 0 || efd < 0 || unsafe { libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, efd, &mut ev) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 4];
    let mut peers = Peers(Vec::new());
    let mut slots: Vec<Slot> = Vec::new();
    let mut count = [0u8; 8];
    let read_announce =
        |count: &mut [u8; 8]| opcode::Read::new(types::Fd(announce), count.as_mut_ptr(), 8).build().user_data(ANNOUNCE);
    let recv = |fd: RawFd, slot: &mut Slot| {
        slot.in_flight = true;
        opcode::Recv::new(types::Fd(fd), slot.buf.as_mut_ptr(), BUF as u32).build().user_data((fd as u64) << 1)
    };
    let mut queue: Vec<squeue::Entry> = vec![read_announce(&mut count)];
    let mut done: Vec<(u64, i32)> = Vec::new();
    loop {
        {
            let mut sq = ring.submission();
            for entry in queue.drain(..) {
                // The ring holds 4,096 entries and a loop queues at most two per completion.
                if unsafe { sq.push(&entry) }.is_err() {
                    return Err(io::Error::other("submission queue full"));
                }
            }
        }
        let wait = if nested { 0 } else { 1 };
        match ring.submitter().submit_with_args(wait, &types::SubmitArgs::new()) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        done.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        if nested && done.is_empty() {
            unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, -1) };
            continue;
        }
        for (data, result) in done.drain(..) {
            if data == ANNOUNCE {
                while let Ok((client, server)) = pairs.try_recv() {
                    peers.pair(client, server);
                    let need = client.max(server) as usize + 1;
                    if slots.len() < need {
                        slots.resize_with(need, Slot::default);
                    }
                    for fd in [client, server] {
                        let slot = &mut slots[fd as usize];
                        *slot = Slot { buf: vec![0; BUF], in_flight: false, dead: false };
                        queue.push(recv(fd, slot));
                    }
                }
                queue.push(read_announce(&mut count));
                continue;
            }
            let fd = (data >> 1) as RawFd;
            let peer = peers.of(fd);
            if data & SEND_FAILED != 0 {
                // The send to `fd` failed; the receive linked after it is cancelled.
                kill(&mut slots, fd, peer);
                continue;
            }
            let Some(slot) = slots.get_mut(fd as usize) else { continue };
            slot.in_flight = false;
            if result <= 0 || slot.dead || peer < 0 {
                kill(&mut slots, fd, peer);
            } else {
                let send = opcode::Send::new(types::Fd(peer), slot.buf.as_ptr(), result as u32)
                    .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                    .build()
                    .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
                    .user_data(((peer as u64) << 1) | SEND_FAILED);
                queue.push(send);
                queue.push(recv(fd, slot));
                continue;
            }
            if slots.get(fd as usize).is_some_and(|s| s.dead && !s.in_flight)
                && slots.get(peer as usize).is_some_and(|s| s.dead && !s.in_flight)
            {
                peers.unpair(fd, peer);
                unsafe {
                    libc::close(fd);
                    libc::close(peer);
                }
            }
        }
    }
}

/// Marks both sockets of a pair dead and shuts them down, which ends their receives in flight.
fn kill(slots: &mut [Slot], fd: RawFd, peer: RawFd) {
    for s in [fd, peer] {
        if let Some(slot) = slots.get_mut(s as usize) {
            if !slot.dead {
                slot.dead = true;
                unsafe { libc::shutdown(s, libc::SHUT_RDWR) };
            }
        }
    }
}

/// `io_uring-tasks`: the io_uring relay written as async tasks on a minimal executor of its
/// own (a run queue, `Arc` wakers with a queued flag, one completion slot per operation), one
/// task per direction of a pair: what an async relay on a ring pays for its task machinery
/// over the hand-written loop above. The thread sleeps in `io_uring_enter`.
mod tasks {
    use super::{Peers, BUF};
    use io_uring::{opcode, squeue, types, IoUring};
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::future::Future;
    use std::io;
    use std::os::fd::RawFd;
    use std::pin::Pin;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::mpsc::Receiver;
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};

    const ANNOUNCE: u64 = u64::MAX;
    /// A failed send of a linked pair (its receive then ends with ECANCELED).
    const SEND_FAILED: u64 = u64::MAX - 1;

    #[derive(Default)]
    struct OpSlot {
        result: Option<i32>,
        waker: Option<Waker>,
    }

    #[derive(Default)]
    struct Reactor {
        ops: Vec<OpSlot>,
        free: Vec<usize>,
        queue: Vec<squeue::Entry>,
    }

    thread_local! {
        static RUN: RefCell<VecDeque<usize>> = const { RefCell::new(VecDeque::new()) };
        static REACTOR: RefCell<Reactor> = RefCell::new(Reactor::default());
    }

    struct TaskWaker {
        id: usize,
        queued: AtomicBool,
    }

    impl Wake for TaskWaker {
        fn wake(self: Arc<Self>) {
            self.wake_by_ref()
        }
        fn wake_by_ref(self: &Arc<Self>) {
            if !self.queued.swap(true, Ordering::AcqRel) {
                RUN.with(|q| q.borrow_mut().push_back(self.id));
            }
        }
    }

    /// One submission (or a linked send and receive) whose last entry's completion it awaits.
    struct Op {
        slot: Option<usize>,
        entries: [Option<squeue::Entry>; 2],
    }

    impl Future for Op {
        type Output = i32;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<i32> {
            REACTOR.with(|r| {
                let mut r = r.borrow_mut();
                let slot = match self.slot {
                    Some(slot) => slot,
                    None => {
                        let slot = r.free.pop().unwrap_or_else(|| {
                            r.ops.push(OpSlot::default());
                            r.ops.len() - 1
                        });
                        self.slot = Some(slot);
                        let [first, second] = [self.entries[0].take(), self.entries[1].take()];
                        match (first, second) {
                            (Some(send), Some(recv)) => {
                                r.queue.push(send);
                                r.queue.push(recv.user_data(slot as u64));
                            }
                            (Some(one), None) => r.queue.push(one.user_data(slot as u64)),
                            _ => {}
                        }
                        slot
                    }
                };
                let op = &mut r.ops[slot];
                if let Some(result) = op.result.take() {
                    op.waker = None;
                    r.free.push(slot);
                    return Poll::Ready(result);
                }
                match &op.waker {
                    Some(w) if w.will_wake(cx.waker()) => {}
                    _ => op.waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            })
        }
    }

    fn recv(fd: RawFd, buf: &mut [u8]) -> Op {
        let e = opcode::Recv::new(types::Fd(fd), buf.as_mut_ptr(), buf.len() as u32).build();
        Op { slot: None, entries: [Some(e), None] }
    }

    /// Sends `buf[..n]` to `to`, then receives into `buf` from `from` once the send is done.
    fn send_then_recv(to: RawFd, from: RawFd, buf: &mut [u8], n: usize) -> Op {
        let send = opcode::Send::new(types::Fd(to), buf.as_ptr(), n as u32)
            .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
            .build()
            .flags(squeue::Flags::IO_LINK | squeue::Flags::SKIP_SUCCESS)
            .user_data(SEND_FAILED);
        let recv = opcode::Recv::new(types::Fd(from), buf.as_mut_ptr(), buf.len() as u32).build();
        Op { slot: None, entries: [Some(send), Some(recv)] }
    }

    /// Bytes from `from` to `to` until either side ends; the second pump of a pair to end
    /// closes both sockets (no operation of the pair is in flight by then).
    async fn pump(from: RawFd, to: RawFd, ended: Rc<std::cell::Cell<u8>>) {
        let mut buf = vec![0u8; BUF];
        let mut n = recv(from, &mut buf).await;
        while n > 0 {
            n = send_then_recv(to, from, &mut buf, n as usize).await;
        }
        unsafe {
            libc::shutdown(from, libc::SHUT_RDWR);
            libc::shutdown(to, libc::SHUT_RDWR);
        }
        ended.set(ended.get() + 1);
        if ended.get() == 2 {
            unsafe {
                libc::close(from);
                libc::close(to);
            }
        }
    }

    type Task = (Pin<Box<dyn Future<Output = ()>>>, Arc<TaskWaker>);

    pub(super) fn relay(pairs: Receiver<(RawFd, RawFd)>, announce: RawFd) -> io::Result<()> {
        let mut ring: IoUring = IoUring::builder().setup_single_issuer().setup_defer_taskrun().build(4096)?;
        let mut tasks: Vec<Option<Task>> = Vec::new();
        let mut free: Vec<usize> = Vec::new();
        let mut count = [0u8; 8];
        let mut peers = Peers(Vec::new());
        let read_announce = |count: &mut [u8; 8]| {
            opcode::Read::new(types::Fd(announce), count.as_mut_ptr(), 8).build().user_data(ANNOUNCE)
        };
        REACTOR.with(|r| r.borrow_mut().queue.push(read_announce(&mut count)));
        loop {
            while let Some(id) = RUN.with(|q| q.borrow_mut().pop_front()) {
                let Some(Some((mut future, waker))) = tasks.get_mut(id).map(Option::take) else { continue };
                waker.queued.store(false, Ordering::Release);
                let w = Waker::from(waker.clone());
                if future.as_mut().poll(&mut Context::from_waker(&w)).is_pending() {
                    tasks[id] = Some((future, waker));
                } else {
                    free.push(id);
                }
            }
            let pending = REACTOR.with(|r| std::mem::take(&mut r.borrow_mut().queue));
            {
                let mut sq = ring.submission();
                for entry in &pending {
                    if unsafe { sq.push(entry) }.is_err() {
                        return Err(io::Error::other("submission queue full"));
                    }
                }
            }
            match ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            let done: Vec<(u64, i32)> = ring.completion().map(|c| (c.user_data(), c.result())).collect();
            for (data, result) in done {
                match data {
                    ANNOUNCE => {
                        while let Ok((client, server)) = pairs.try_recv() {
                            peers.pair(client, server);
                            let ended = Rc::new(std::cell::Cell::new(0));
                            for (from, to) in [(client, server), (server, client)] {
                                let id = free.pop().unwrap_or_else(|| {
                                    tasks.push(None);
                                    tasks.len() - 1
                                });
                                let waker = Arc::new(TaskWaker { id, queued: AtomicBool::new(false) });
                                tasks[id] = Some((Box::pin(pump(from, to, ended.clone())), waker.clone()));
                                waker.wake();
                            }
                        }
                        REACTOR.with(|r| r.borrow_mut().queue.push(read_announce(&mut count)));
                    }
                    SEND_FAILED => {}
                    slot => {
                        let waker = REACTOR.with(|r| {
                            let mut r = r.borrow_mut();
                            r.ops.get_mut(slot as usize).and_then(|op| {
                                op.result = Some(result);
                                op.waker.take()
                            })
                        });
                        if let Some(w) = waker {
                            w.wake();
                        }
                    }
                }
            }
        }
    }
}

/// `io_uring-multishot`: see the module documentation.
mod multishot {
    use super::{kill_pair_fds, Peers};
    use io_uring::{cqueue, opcode, types, types::BufRingEntry, IoUring};
    use std::io;
    use std::os::fd::RawFd;
    use std::sync::atomic::{AtomicU16, Ordering};
    use std::sync::mpsc::Receiver;

    /// Provided buffers: how many, their size, their group.
    const ENTRIES: u16 = 1024;
    const SIZE: usize = 4096;
    const GROUP: u16 = 7;
    const ANNOUNCE: u64 = u64::MAX;
    const RECV: u64 = 0;
    const SEND: u64 = 1;

    fn data(kind: u64, fd: RawFd, bid: u16) -> u64 {
        kind | (fd as u64) << 2 | (bid as u64) << 34
    }

    /// The provided-buffer ring: the kernel takes buffers from its head, we give them back at
    /// its tail.
    struct Provided {
        entries: *mut BufRingEntry,
        tail: u16,
        memory: Vec<u8>,
    }

    impl Provided {
        fn give(&mut self, bid: u16) {
            // SAFETY: the ring holds ENTRIES entries (a power of two) and `bid` < ENTRIES.
            let entry = unsafe { &mut *self.entries.add((self.tail & (ENTRIES - 1)) as usize) };
            entry.set_addr(self.memory.as_ptr() as u64 + bid as u64 * SIZE as u64);
            entry.set_len(SIZE as u32);
            entry.set_bid(bid);
            self.tail = self.tail.wrapping_add(1);
        }

        fn publish(&self) {
            // SAFETY: the tail field of the ring's first entry, a u16 the kernel reads.
            let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
            tail.store(self.tail, Ordering::Release);
        }

        fn bytes(&self, bid: u16) -> *const u8 {
            self.memory.as_ptr().wrapping_add(bid as usize * SIZE)
        }
    }

    #[derive(Default, Clone, Copy)]
    struct Socket {
        armed: bool,
        sends: u32,
        dead: bool,
    }

    pub(super) fn relay(pairs: Receiver<(RawFd, RawFd)>, announce: RawFd) -> io::Result<()> {
        let mut ring: IoUring =
            IoUring::builder().setup_single_issuer().setup_defer_taskrun().setup_taskrun_flag().build(4096)?;
        let ring_bytes = ENTRIES as usize * std::mem::size_of::<BufRingEntry>();
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut provided = Provided { entries: map.cast(), tail: 0, memory: vec![0; ENTRIES as usize * SIZE] };
        unsafe { ring.submitter().register_buf_ring_with_flags(map as u64, ENTRIES, GROUP, 0)? };
        for bid in 0..ENTRIES {
            provided.give(bid);
        }
        provided.publish();

        let mut peers = Peers(Vec::new());
        let mut sockets: Vec<Socket> = Vec::new();
        let mut count = [0u8; 8];
        let read_announce = |count: &mut [u8; 8]| {
            opcode::Read::new(types::Fd(announce), count.as_mut_ptr(), 8).build().user_data(ANNOUNCE)
        };
        let arm = |fd: RawFd| opcode::RecvMulti::new(types::Fd(fd), GROUP).build().user_data(data(RECV, fd, 0));
        let mut queue = vec![read_announce(&mut count)];
        let mut done: Vec<(u64, i32, u32)> = Vec::new();
        loop {
            // Sends to a socket with room complete while they are submitted: waiting for one
            // completion more than the sends queued sleeps until something arrives, in the
            // same system call (waiting for one would return at once with a send's).
            let sends = queue.iter().filter(|e| e.get_user_data() & 3 == SEND && e.get_user_data() != ANNOUNCE).count();
            {
                let mut sq = ring.submission();
                for entry in queue.drain(..) {
                    if unsafe { sq.push(&entry) }.is_err() {
                        return Err(io::Error::other("submission queue full"));
                    }
                }
            }
            match ring.submit_and_wait(1 + sends) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            done.extend(ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            let mut gave = false;
            for (user, result, flags) in done.drain(..) {
                if user == ANNOUNCE {
                    while let Ok((client, server)) = pairs.try_recv() {
                        peers.pair(client, server);
                        let need = client.max(server) as usize + 1;
                        if sockets.len() < need {
                            sockets.resize(need, Socket::default());
                        }
                        for fd in [client, server] {
                            sockets[fd as usize] = Socket { armed: true, sends: 0, dead: false };
                            queue.push(arm(fd));
                        }
                    }
                    queue.push(read_announce(&mut count));
                    continue;
                }
                let fd = ((user >> 2) & 0xffff_ffff) as RawFd;
                let peer = peers.of(fd);
                let mut end = false;
                if user & 3 == SEND {
                    provided.give((user >> 34) as u16);
                    gave = true;
                    if let Some(s) = sockets.get_mut(fd as usize) {
                        s.sends = s.sends.saturating_sub(1);
                    }
                    end = result < 0;
                } else {
                    let more = cqueue::more(flags);
                    if let Some(s) = sockets.get_mut(fd as usize) {
                        s.armed = more;
                    }
                    if result > 0 {
                        if let Some(bid) = cqueue::buffer_select(flags) {
                            if peer >= 0 && !sockets.get(fd as usize).is_some_and(|s| s.dead) {
                                let send = opcode::Send::new(types::Fd(peer), provided.bytes(bid), result as u32)
                                    .flags(libc::MSG_WAITALL | libc::MSG_NOSIGNAL)
                                    .build()
                                    .user_data(data(SEND, peer, bid));
                                queue.push(send);
                                if let Some(s) = sockets.get_mut(peer as usize) {
                                    s.sends += 1;
                                }
                            } else {
                                provided.give(bid);
                                gave = true;
                            }
                        }
                        if !more && !sockets.get(fd as usize).is_some_and(|s| s.dead) {
                            queue.push(arm(fd));
                            if let Some(s) = sockets.get_mut(fd as usize) {
                                s.armed = true;
                            }
                        }
                    } else if result == -libc::ENOBUFS && !more {
                        queue.push(arm(fd));
                        if let Some(s) = sockets.get_mut(fd as usize) {
                            s.armed = true;
                        }
                    } else {
                        end = true;
                    }
                }
                if end {
                    for s in [fd, peer] {
                        if let Some(sock) = sockets.get_mut(s as usize) {
                            sock.dead = true;
                        }
                    }
                    kill_pair_fds(fd, peer);
                }
                let quiet = |s: RawFd| sockets.get(s as usize).is_some_and(|x| x.dead && !x.armed && x.sends == 0);
                if peer >= 0 && quiet(fd) && quiet(peer) {
                    peers.unpair(fd, peer);
                    unsafe {
                        libc::close(fd);
                        libc::close(peer);
                    }
                }
            }
            if gave {
                provided.publish();
            }
        }
    }
}

/// Shuts both sockets of a pair down, which ends their receives in flight.
fn kill_pair_fds(fd: RawFd, peer: RawFd) {
    for s in [fd, peer] {
        if s >= 0 {
            unsafe { libc::shutdown(s, libc::SHUT_RDWR) };
        }
    }
}

/// `pgha-ring`: see the module documentation.
mod pgha_ring {
    use bytes::BytesMut;
    use pooler::ring::executor::{self, block_on, Next};
    use pooler::ring::socket::Socket;
    use std::future::poll_fn;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::rc::Rc;
    use std::sync::mpsc::Receiver;

    async fn pump(from: Rc<Socket>, to: Rc<Socket>) {
        let mut buf = BytesMut::with_capacity(16 * 1024);
        loop {
            match poll_fn(|cx| from.poll_read_buf(cx, &mut buf)).await {
                Ok(n) if n > 0 => {
                    if to.write(&buf).is_err() {
                        break;
                    }
                    buf.clear();
                }
                _ => break,
            }
        }
        // The other direction ends too (its receive completes with 0).
        for s in [&from, &to] {
            unsafe { libc::shutdown(s.as_raw_fd(), libc::SHUT_RDWR) };
        }
    }

    pub(super) fn relay(pairs: Receiver<(RawFd, RawFd)>, announce: RawFd) -> io::Result<()> {
        block_on(async move {
            loop {
                let mut count = Box::new([0u8; 8]);
                let entry = io_uring::opcode::Read::new(io_uring::types::Fd(announce), count.as_mut_ptr(), 8).build();
                let id = executor::submit(entry, Some(count))?;
                Next(id).await;
                executor::release(id);
                while let Ok((client, server)) = pairs.try_recv() {
                    // SAFETY: descriptors the accept thread handed over and no longer uses.
                    let (client, server) = unsafe { (OwnedFd::from_raw_fd(client), OwnedFd::from_raw_fd(server)) };
                    let (c, s) = (Rc::new(Socket::new(client)), Rc::new(Socket::new(server)));
                    executor::spawn(pump(c.clone(), s.clone()))?;
                    executor::spawn(pump(s, c))?;
                }
            }
        })?
    }
}
