//! The io_uring engine's executor: one thread runs its tasks and sleeps in `io_uring_enter`,
//! never in epoll. Tasks submit ring operations and are woken by their completions; other
//! threads wake or spawn tasks through a queue and an eventfd the ring reads. The ring runs
//! with a single issuer and deferred task work, so the kernel does a completion's work (the
//! receive's copy, say) inside the thread's own `io_uring_enter`, and one `io_uring_enter` per
//! loop submits what the tasks queued and waits for the next completion that matters: sends
//! that will most likely complete while they are submitted, and that nothing waits for, are
//! counted in (`submit_expected`), so their completions do not end the wait (see
//! docs/pooler.md, "The floor of a relay on each engine").

use super::provided::Provided;
pub use super::provided::BUFFER_GROUP;
use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

/// Ring entries (submissions in one loop beyond this are submitted early).
const ENTRIES: u32 = 1024;
/// user_data of the eventfd read that other threads' wakes complete.
const WAKEUP: u64 = u64::MAX;
/// user_data of cancel requests (their own completions say nothing we need).
const CANCEL: u64 = u64::MAX - 1;

type LocalTask = Pin<Box<dyn Future<Output = ()>>>;
/// Says, just before the loop's wait, whether nothing waits for an op's completion.
pub type Expected = Box<dyn Fn() -> bool>;
type SendTask = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What must live as long as an operation the kernel may still be using: its buffer, its
/// descriptor.
pub type Keep = Option<Box<dyn Any>>;

/// Called with each completion of an op submitted with one (instead of queueing it for a
/// poll), with the op's `Keep`; runs on the ring thread inside the loop, and must not block.
/// The op is freed after its last completion.
pub type Hook = Box<dyn FnMut(Completion, &mut Keep)>;

/// One completion of an operation: the result (bytes, or a negative errno) and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    pub result: i32,
    pub flags: u32,
}

impl Completion {
    /// The bytes it moved, or the error.
    pub fn bytes(self) -> io::Result<usize> {
        if self.result < 0 {
            Err(io::Error::from_raw_os_error(-self.result))
        } else {
            Ok(self.result as usize)
        }
    }

    /// The provided buffer the kernel filled, for a receive that selected one.
    pub fn buffer(self) -> Option<u16> {
        cqueue::buffer_select(self.flags)
    }

    /// A multishot operation stays armed after this completion.
    pub fn more(self) -> bool {
        cqueue::more(self.flags)
    }
}

/// An operation in flight: (generation << 32) | slot, its user_data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpId(u64);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct TaskRef {
    index: u32,
    generation: u32,
}

/// The cross-thread side: wakes and spawns from other threads, and whether the ring thread
/// sleeps (only then is the eventfd written).
struct Remote {
    queue: Mutex<Vec<RemoteItem>>,
    sleeping: AtomicBool,
    eventfd: OwnedFd,
}

enum RemoteItem {
    Wake(TaskRef),
    Spawn(SendTask),
}

impl Remote {
    fn push(&self, item: RemoteItem) {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).push(item);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            let one: u64 = 1;
            // A full counter (2^64 - 2 wakes unread) cannot happen: the ring reads it each time.
            unsafe { libc::write(self.eventfd.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }
    }

    fn take(&self) -> Vec<RemoteItem> {
        std::mem::take(&mut *self.queue.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

struct TaskWaker {
    task: TaskRef,
    /// Set while the task is in a run queue: a second wake before it runs does nothing.
    queued: AtomicBool,
    remote: Arc<Remote>,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if self.queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let local = with_core(|core| {
            if Arc::ptr_eq(&core.remote, &self.remote) {
                core.run.borrow_mut().push_back(self.task);
                true
            } else {
                false
            }
        });
        if local != Some(true) {
            self.remote.push(RemoteItem::Wake(self.task));
        }
    }
}

struct TaskSlot {
    generation: u32,
    future: Option<LocalTask>,
    waker: Option<Arc<TaskWaker>>,
}

enum OpState {
    Free,
    Live {
        waker: Option<Waker>,
        results: VecDeque<Completion>,
        finished: bool,
        keep: Keep,
        hook: Option<Hook>,
    },
    /// Its owner let go before the last completion: kept (with what the kernel may use) until
    /// then.
    Orphan {
        keep: Keep,
    },
}

struct OpSlot {
    generation: u32,
    state: OpState,
}

struct Core {
    ring: RefCell<IoUring>,
    run: RefCell<VecDeque<TaskRef>>,
    tasks: RefCell<Vec<TaskSlot>>,
    free_tasks: RefCell<Vec<u32>>,
    ops: RefCell<Vec<OpSlot>>,
    free_ops: RefCell<Vec<u32>>,
    remote: Arc<Remote>,
    /// The eventfd read's target (the kernel writes it).
    wakeup_count: Box<Cell<u64>>,
    /// Ops submitted this loop whose completions the wait does not wait for, while their check
    /// still says so (see `submit_expected`).
    expected: RefCell<Vec<Expected>>,
    /// Tasks whose receive found no provided buffer: woken when one is given back.
    starved: RefCell<Vec<Waker>>,
    /// Provided buffers given back so far.
    given: Cell<u64>,
    provided: RefCell<Provided>,
}

thread_local! {
    static CORE: Cell<*const Core> = const { Cell::new(std::ptr::null()) };
}

fn with_core<R>(f: impl FnOnce(&Core) -> R) -> Option<R> {
    let ptr = CORE.with(|c| c.get());
    // SAFETY: set by `block_on` to a Core that outlives the loop it runs, and cleared
    // (by its guard) before that Core is dropped; only this thread reads it.
    (!ptr.is_null()).then(|| f(unsafe { &*ptr }))
}

/// The executor is not running on this thread.
fn not_on_ring() -> io::Error {
    io::Error::other("not on the io_uring relaying thread")
}

impl Core {
    fn new() -> io::Result<Core> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .setup_taskrun_flag()
            .setup_submit_all()
            .build(ENTRIES)?;
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor we just opened and own.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        let provided = Provided::new(&ring)?;
        Ok(Core {
            ring: RefCell::new(ring),
            provided: RefCell::new(provided),
            run: RefCell::new(VecDeque::new()),
            tasks: RefCell::new(Vec::new()),
            free_tasks: RefCell::new(Vec::new()),
            ops: RefCell::new(Vec::new()),
            free_ops: RefCell::new(Vec::new()),
            remote: Arc::new(Remote { queue: Mutex::new(Vec::new()), sleeping: AtomicBool::new(false), eventfd }),
            wakeup_count: Box::new(Cell::new(0)),
            expected: RefCell::new(Vec::new()),
            starved: RefCell::new(Vec::new()),
            given: Cell::new(0),
        })
    }

    fn push_entry(&self, entry: &squeue::Entry) -> io::Result<()> {
        let mut ring = self.ring.borrow_mut();
        // SAFETY (both pushes): what the entry points at is kept alive by its op's `keep` (or
        // is the Core's own `wakeup_count`) until its last completion.
        if unsafe { ring.submission().push(entry) }.is_ok() {
            return Ok(());
        }
        ring.submit()?;
        let pushed = unsafe { ring.submission().push(entry) };
        pushed.map_err(|_| io::Error::other("io_uring submission queue full"))
    }

    fn arm_wakeup(&self) -> io::Result<()> {
        let target = self.wakeup_count.as_ptr().cast::<u8>();
        let read = opcode::Read::new(types::Fd(self.remote.eventfd.as_raw_fd()), target, 8).build().user_data(WAKEUP);
        self.push_entry(&read)
    }

    fn spawn(&self, future: LocalTask) {
        let index = self.free_tasks.borrow_mut().pop().unwrap_or_else(|| {
            let mut tasks = self.tasks.borrow_mut();
            tasks.push(TaskSlot { generation: 0, future: None, waker: None });
            (tasks.len() - 1) as u32
        });
        let mut tasks = self.tasks.borrow_mut();
        let slot = &mut tasks[index as usize];
        slot.generation = slot.generation.wrapping_add(1);
        let task = TaskRef { index, generation: slot.generation };
        slot.future = Some(future);
        slot.waker = Some(Arc::new(TaskWaker { task, queued: AtomicBool::new(true), remote: self.remote.clone() }));
        self.run.borrow_mut().push_back(task);
    }

    /// Polls one runnable task; a finished one frees its slot.
    fn poll_task(&self, task: TaskRef) {
        let (mut future, waker) = {
            let mut tasks = self.tasks.borrow_mut();
            let Some(slot) = tasks.get_mut(task.index as usize) else { return };
            if slot.generation != task.generation {
                return;
            }
            let (Some(future), Some(waker)) = (slot.future.take(), slot.waker.clone()) else { return };
            (future, waker)
        };
        waker.queued.store(false, Ordering::Release);
        let w = Waker::from(waker);
        let pending = future.as_mut().poll(&mut Context::from_waker(&w)).is_pending();
        let mut tasks = self.tasks.borrow_mut();
        let Some(slot) = tasks.get_mut(task.index as usize) else { return };
        if pending {
            slot.future = Some(future);
        } else {
            slot.waker = None;
            drop(tasks);
            self.free_tasks.borrow_mut().push(task.index);
        }
    }

    fn submit(&self, entry: squeue::Entry, keep: Keep, hook: Option<Hook>) -> io::Result<OpId> {
        let index = self.free_ops.borrow_mut().pop().unwrap_or_else(|| {
            let mut ops = self.ops.borrow_mut();
            ops.push(OpSlot { generation: 0, state: OpState::Free });
            (ops.len() - 1) as u32
        });
        let id = {
            let mut ops = self.ops.borrow_mut();
            let slot = &mut ops[index as usize];
            slot.generation = slot.generation.wrapping_add(1) & 0x7fff_ffff;
            slot.state = OpState::Live { waker: None, results: VecDeque::new(), finished: false, keep, hook };
            OpId(((slot.generation as u64) << 32) | index as u64)
        };
        if let Err(e) = self.push_entry(&entry.user_data(id.0)) {
            self.free_op(index);
            return Err(e);
        }
        Ok(id)
    }

    /// A provided buffer goes back to the kernel; tasks starved of one are woken.
    fn give_back(&self, bid: u16) {
        self.provided.borrow_mut().give(bid);
        self.given.set(self.given.get().wrapping_add(1));
        let starved = std::mem::take(&mut *self.starved.borrow_mut());
        for w in starved {
            w.wake();
        }
    }

    fn free_op(&self, index: u32) {
        if let Some(slot) = self.ops.borrow_mut().get_mut(index as usize) {
            slot.state = OpState::Free;
        }
        self.free_ops.borrow_mut().push(index);
    }

    fn poll_op(&self, id: OpId, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut((id.0 & 0xffff_ffff) as usize) else { return Poll::Ready(None) };
        if slot.generation as u64 != id.0 >> 32 {
            return Poll::Ready(None);
        }
        let OpState::Live { waker, results, finished, .. } = &mut slot.state else { return Poll::Ready(None) };
        if let Some(c) = results.pop_front() {
            return Poll::Ready(Some(c));
        }
        if *finished {
            return Poll::Ready(None);
        }
        match waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => *waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The owner lets go: a finished op is freed now, one in flight is cancelled and freed at
    /// its last completion.
    fn release(&self, id: OpId) {
        let index = (id.0 & 0xffff_ffff) as u32;
        let cancel = {
            let mut ops = self.ops.borrow_mut();
            let Some(slot) = ops.get_mut(index as usize) else { return };
            if slot.generation as u64 != id.0 >> 32 {
                return;
            }
            match std::mem::replace(&mut slot.state, OpState::Free) {
                OpState::Live { finished: false, keep, .. } => {
                    slot.state = OpState::Orphan { keep };
                    true
                }
                OpState::Orphan { keep } => {
                    slot.state = OpState::Orphan { keep };
                    return;
                }
                // Already freed (a hooked op after its last completion, or a second release):
                // its slot is on the free list once.
                OpState::Free => return,
                OpState::Live { finished: true, .. } => false,
            }
        };
        if cancel {
            let entry = opcode::AsyncCancel::new(id.0).build().user_data(CANCEL);
            // A cancel that cannot be queued leaves the op to finish on its own.
            let _ = self.push_entry(&entry);
        } else {
            self.free_ops.borrow_mut().push(index);
        }
    }

    fn complete(&self, data: u64, c: Completion) {
        let index = (data & 0xffff_ffff) as u32;
        let mut ops = self.ops.borrow_mut();
        let Some(slot) = ops.get_mut(index as usize) else { return };
        if slot.generation as u64 != data >> 32 {
            return;
        }
        let last = !c.more();
        if let OpState::Live { hook: hook @ Some(_), keep, .. } = &mut slot.state {
            let (Some(mut f), mut kept) = (hook.take(), keep.take()) else { return };
            drop(ops);
            f(c, &mut kept);
            let mut ops = self.ops.borrow_mut();
            let Some(slot) = ops.get_mut(index as usize) else { return };
            if slot.generation as u64 != data >> 32 {
                return;
            }
            if last {
                slot.state = OpState::Free;
                drop(ops);
                drop((f, kept));
                self.free_ops.borrow_mut().push(index);
                return;
            }
            match &mut slot.state {
                OpState::Live { hook, keep, .. } => {
                    *hook = Some(f);
                    *keep = kept;
                }
                OpState::Orphan { keep } => *keep = kept,
                OpState::Free => {}
            }
            return;
        }
        match &mut slot.state {
            OpState::Live { waker, results, finished, .. } => {
                results.push_back(c);
                *finished |= last;
                let w = waker.take();
                drop(ops);
                if let Some(w) = w {
                    w.wake();
                }
            }
            OpState::Orphan { .. } => {
                if last {
                    slot.state = OpState::Free;
                    drop(ops);
                    self.free_ops.borrow_mut().push(index);
                } else {
                    drop(ops);
                }
                // Bytes nobody will read: the buffer goes back.
                if let Some(bid) = c.buffer() {
                    self.give_back(bid);
                }
            }
            OpState::Free => {}
        }
    }

    /// The completions the kernel posted, taken off the ring into `into` (kept from loop to
    /// loop: no allocation per loop).
    fn reap(&self, into: &mut Vec<(u64, Completion)>) {
        let mut ring = self.ring.borrow_mut();
        into.extend(ring.completion().map(|c| (c.user_data(), Completion { result: c.result(), flags: c.flags() })));
    }

    /// Cancels every operation still in flight and waits (a second at most) for their last
    /// completions; false if some did not come.
    fn drain(&self) -> bool {
        let in_flight = |ops: &Vec<OpSlot>| -> Vec<u64> {
            ops.iter()
                .enumerate()
                .filter(|(_, s)| matches!(s.state, OpState::Orphan { .. } | OpState::Live { finished: false, .. }))
                .map(|(i, s)| ((s.generation as u64) << 32) | i as u64)
                .collect()
        };
        let ids = in_flight(&self.ops.borrow());
        for id in &ids {
            let _ = self.push_entry(&opcode::AsyncCancel::new(*id).build().user_data(CANCEL));
        }
        let _ = self.push_entry(&opcode::AsyncCancel::new(WAKEUP).build().user_data(CANCEL));
        let timeout = types::Timespec::new().nsec(100_000_000);
        for _ in 0..10 {
            if in_flight(&self.ops.borrow()).is_empty() {
                return true;
            }
            let args = types::SubmitArgs::new().timespec(&timeout);
            let _ = self.ring.borrow().submitter().submit_with_args(1, &args);
            let mut completions = Vec::new();
            self.reap(&mut completions);
            for (data, c) in completions {
                if data != WAKEUP && data != CANCEL {
                    self.complete(data, c);
                }
            }
        }
        in_flight(&self.ops.borrow()).is_empty()
    }

    /// Runs until `done` says so: tasks, then one `io_uring_enter` that submits and waits.
    fn run_until(&self, done: &dyn Fn() -> bool) -> io::Result<()> {
        let mut completions = Vec::new();
        loop {
            for item in self.remote.take() {
                match item {
                    RemoteItem::Wake(task) => self.run.borrow_mut().push_back(task),
                    RemoteItem::Spawn(future) => self.spawn(future),
                }
            }
            loop {
                let next = self.run.borrow_mut().pop_front();
                let Some(task) = next else { break };
                self.poll_task(task);
            }
            if done() {
                return Ok(());
            }
            self.remote.sleeping.store(true, Ordering::SeqCst);
            let want = if !self.run.borrow().is_empty() || !self.remote.is_empty() {
                self.remote.sleeping.store(false, Ordering::SeqCst);
                0
            } else {
                1 + self.expected.borrow().iter().filter(|still| still()).count()
            };
            self.expected.borrow_mut().clear();
            self.provided.borrow_mut().publish();
            let entered = self.ring.borrow().submitter().submit_and_wait(want);
            self.remote.sleeping.store(false, Ordering::SeqCst);
            match entered {
                Ok(_) => {}
                Err(e) if matches!(e.raw_os_error(), Some(libc::EINTR) | Some(libc::EBUSY)) => {}
                Err(e) => return Err(e),
            }
            self.reap(&mut completions);
            for (data, c) in completions.drain(..) {
                match data {
                    WAKEUP => self.arm_wakeup()?,
                    CANCEL => {}
                    _ => self.complete(data, c),
                }
            }
        }
    }
}

/// Clears the thread's executor pointer when `block_on` returns or unwinds.
struct Entered;

impl Drop for Entered {
    fn drop(&mut self) {
        CORE.with(|c| c.set(std::ptr::null()));
    }
}

/// Runs `future` on this thread's executor (made now, dropped at the end) until it completes.
/// Fails if the kernel refuses the ring (io_uring disabled, or older than 6.1), or if an
/// executor already runs on this thread.
pub fn block_on<F: Future + 'static>(future: F) -> io::Result<F::Output> {
    if with_core(|_| ()).is_some() {
        return Err(io::Error::other("an io_uring executor already runs on this thread"));
    }
    let core = Box::new(Core::new()?);
    CORE.with(|c| c.set(&*core as *const Core));
    let entered = Entered;
    core.arm_wakeup()?;
    let output = std::rc::Rc::new(RefCell::new(None));
    let out = output.clone();
    core.spawn(Box::pin(async move {
        let value = future.await;
        *out.borrow_mut() = Some(value);
    }));
    let result = core.run_until(&|| output.borrow().is_some());
    // Tasks still alive are dropped here, while the executor is current (their ops let go).
    let tasks: Vec<_> = core.tasks.borrow_mut().iter_mut().filter_map(|t| t.future.take()).collect();
    drop(tasks);
    let drained = core.drain();
    drop(entered);
    if !drained {
        // The kernel may still write into what the ops keep: never free it.
        Box::leak(core);
    }
    result?;
    let value = output.borrow_mut().take();
    value.ok_or_else(|| io::Error::other("the executor stopped before its future finished"))
}

/// Which executor runs on this thread, if any: an identity that no other live executor has.
pub fn ring_id() -> Option<usize> {
    with_core(|core| Arc::as_ptr(&core.remote) as usize)
}

/// Spawns a task on this thread's executor.
pub fn spawn(future: impl Future<Output = ()> + 'static) -> io::Result<()> {
    with_core(|core| core.spawn(Box::pin(future))).ok_or_else(not_on_ring)
}

/// A handle other threads use to spawn tasks on an executor.
#[derive(Clone)]
pub struct Spawner {
    remote: Arc<Remote>,
}

impl Spawner {
    /// The spawner of this thread's executor.
    pub fn current() -> io::Result<Spawner> {
        with_core(|core| Spawner { remote: core.remote.clone() }).ok_or_else(not_on_ring)
    }

    pub fn spawn(&self, future: impl Future<Output = ()> + Send + 'static) {
        self.remote.push(RemoteItem::Spawn(Box::pin(future)));
    }
}

/// Submits a ring operation; `keep` lives until its last completion.
pub fn submit(entry: squeue::Entry, keep: Keep) -> io::Result<OpId> {
    with_core(|core| core.submit(entry, keep, None)).ok_or_else(not_on_ring)?
}

/// Submits an operation that most likely completes while it is submitted (a send to a socket
/// with room) and whose completion goes to `hook`. While `nothing_waits` says so at the
/// loop's wait, the wait asks for one completion more, so that this one does not end it (a
/// loop then costs one `io_uring_enter`, not two). It must say false whenever a task's
/// progress depends on the completion (a flush, bytes queued behind it): if the operation does
/// not complete on submission, the wait would otherwise be one short until something else
/// happens.
pub fn submit_expected(entry: squeue::Entry, keep: Keep, hook: Hook, nothing_waits: Expected) -> io::Result<OpId> {
    with_core(|core| {
        let id = core.submit(entry, keep, Some(hook))?;
        core.expected.borrow_mut().push(nothing_waits);
        Ok(id)
    })
    .ok_or_else(not_on_ring)?
}

/// Submits a ring operation whose completions go to `hook` (see `Hook`).
pub fn submit_with_hook(entry: squeue::Entry, keep: Keep, hook: Hook) -> io::Result<OpId> {
    with_core(|core| core.submit(entry, keep, Some(hook))).ok_or_else(not_on_ring)?
}

/// Calls `f` with bytes `from..to` of provided buffer `bid` without giving it back (a read
/// that takes part of what the buffer holds).
pub fn peek_provided<R>(bid: u16, from: usize, to: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    with_core(|core| core.provided.borrow().bytes(bid, to).and_then(|b| b.get(from..)).map(f)).flatten()
}

/// Calls `f` with the first `len` bytes of provided buffer `bid` (a receive's completion
/// names it), then gives the buffer back to the kernel.
pub fn take_provided<R>(bid: u16, len: usize, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    with_core(|core| {
        let out = core.provided.borrow().bytes(bid, len).map(f);
        core.give_back(bid);
        out
    })
    .flatten()
}

/// How many provided buffers were given back so far: a receive that found none (ENOBUFS)
/// notes it, and tries again once it changed.
pub fn buffers_given() -> u64 {
    with_core(|core| core.given.get()).unwrap_or(0)
}

/// Ready once a provided buffer was given back since `buffers_given` said `since`; until
/// then the task is woken at the next one given back.
pub fn poll_buffer_since(since: u64, cx: &Context<'_>) -> Poll<()> {
    with_core(|core| {
        if core.given.get() != since {
            return Poll::Ready(());
        }
        core.starved.borrow_mut().push(cx.waker().clone());
        Poll::Pending
    })
    .unwrap_or(Poll::Ready(()))
}

/// The op's next completion; `None` once its last completion was taken (or it is unknown).
pub fn poll_op(id: OpId, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
    with_core(|core| core.poll_op(id, cx)).unwrap_or(Poll::Ready(None))
}

/// Lets go of an op (cancelling it if it is still in flight).
pub fn release(id: OpId) {
    with_core(|core| core.release(id));
}

/// Asks the kernel to stop an op (a multishot receive) without letting go of it: its
/// remaining completions still come, the last one without `more`.
pub fn cancel(id: OpId) {
    with_core(|core| {
        // One that cannot be queued leaves the op running: nothing is lost.
        let _ = core.push_entry(&opcode::AsyncCancel::new(id.0).build().user_data(CANCEL));
    });
}

/// An op as a future of its next completion (one-shot operations: their only one).
pub struct Next(pub OpId);

impl Future for Next {
    type Output = Option<Completion>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Completion>> {
        poll_op(self.0, cx)
    }
}

#[cfg(test)]
#[path = "executor_tests.rs"]
mod tests;
