use super::*;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

/// A pipe's two ends.
fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0, "pipe2");
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn write_all(fd: &OwnedFd, bytes: &[u8]) {
    let n = unsafe { libc::write(fd.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
}

#[test]
fn block_on_returns_the_value_and_runs_spawned_tasks() {
    let value = block_on(async {
        let seen = Rc::new(Cell::new(0));
        for k in 1..=3 {
            let seen = seen.clone();
            spawn(async move { seen.set(seen.get() + k) }).expect("on the ring thread");
        }
        // Let the spawned tasks run: a Nop completes at the next enter.
        let nop = submit(opcode::Nop::new().build(), None).expect("submit");
        let c = Next(nop).await.expect("a completion");
        assert_eq!(c.result, 0);
        release(nop);
        seen.get()
    })
    .expect("block_on");
    assert_eq!(value, 6);
    assert!(spawn(async {}).is_err(), "no executor outside block_on");
}

#[test]
fn a_read_sleeps_in_the_ring_until_another_thread_writes() {
    let (r, w) = pipe();
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        write_all(&w, b"hello");
        w
    });
    let start = Instant::now();
    let got = block_on(async move {
        let mut buf = Box::new([0u8; 16]);
        let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 16).build();
        let ptr = buf.as_ptr();
        let id = submit(entry, Some(buf)).expect("submit");
        let c = Next(id).await.expect("a completion");
        let n = c.bytes().expect("read");
        // SAFETY: the op finished, its buffer (kept by the op until released) holds n bytes.
        let bytes = unsafe { std::slice::from_raw_parts(ptr, n) }.to_vec();
        release(id);
        drop(r);
        bytes
    })
    .expect("block_on");
    assert_eq!(got, b"hello");
    assert!(start.elapsed() >= Duration::from_millis(90), "returned before the write: {:?}", start.elapsed());
    drop(writer.join());
}

/// Runs `f` on a thread of its own and fails if it has not finished within 20 s (a lost wake
/// would otherwise hang the test).
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(20)).expect("finished within 20 s (a wake was lost)")
}

#[test]
fn other_threads_wake_and_spawn_tasks_while_the_ring_sleeps() {
    within(other_threads_wake_and_spawn);
}

fn other_threads_wake_and_spawn() {
    const N: usize = 200;
    let done = Arc::new(AtomicUsize::new(0));
    let d = done.clone();
    let total = block_on(async move {
        let spawner = Spawner::current().expect("spawner");
        // Each task waits for a oneshot another thread fires: a wake from outside.
        let mut senders = Vec::new();
        for _ in 0..N {
            let (tx, rx) = tokio::sync::oneshot::channel::<usize>();
            senders.push(tx);
            let d = d.clone();
            spawn(async move {
                if let Ok(k) = rx.await {
                    d.fetch_add(k, Ordering::SeqCst);
                }
            })
            .expect("spawn");
        }
        let (all_tx, all_rx) = tokio::sync::oneshot::channel::<()>();
        let d2 = d.clone();
        std::thread::spawn(move || {
            for tx in senders {
                std::thread::sleep(Duration::from_micros(200));
                let _ = tx.send(1);
            }
            // And spawns from outside, one of which reports the total.
            for _ in 0..N {
                let d = d2.clone();
                spawner.spawn(async move {
                    d.fetch_add(1, Ordering::SeqCst);
                });
            }
            let d = d2.clone();
            spawner.spawn(async move {
                let _ = d.load(Ordering::SeqCst);
                let _ = all_tx.send(());
            });
        });
        let _ = all_rx.await;
        d.load(Ordering::SeqCst)
    })
    .expect("block_on");
    assert_eq!(total, 2 * N);
    assert_eq!(done.load(Ordering::SeqCst), 2 * N);
}

/// Counts drops of what an op keeps.
struct DropFlag(Arc<AtomicUsize>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_released_op_keeps_its_buffer_until_the_kernel_lets_go() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let (r, w) = pipe();
    block_on(async move {
        let mut buf = Box::new([0u8; 16]);
        let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 16).build();
        let keep: Box<dyn Any> = Box::new((buf, DropFlag(d.clone())));
        let id = submit(entry, Some(keep)).expect("submit");
        // Nothing to read: the read is in flight; letting go cancels it.
        release(id);
        assert_eq!(d.load(Ordering::SeqCst), 0, "dropped while the kernel may still write it");
        // The cancel completes at the next enter; a Nop makes one happen.
        for _ in 0..3 {
            let nop = submit(opcode::Nop::new().build(), None).expect("submit");
            Next(nop).await;
            release(nop);
        }
        assert_eq!(d.load(Ordering::SeqCst), 1, "kept after its last completion");
        drop(r);
        drop(w);
    })
    .expect("block_on");
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[test]
fn ops_in_flight_at_the_end_are_cancelled_before_their_buffers_go() {
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let (r, w) = pipe();
    let start = Instant::now();
    block_on(async move {
        let mut buf = Box::new([0u8; 16]);
        let entry = opcode::Read::new(types::Fd(r.as_raw_fd()), buf.as_mut_ptr(), 16).build();
        let keep: Box<dyn Any> = Box::new((buf, DropFlag(d), r));
        // Submitted and forgotten: block_on must cancel it and wait for it.
        submit(entry, Some(keep)).expect("submit");
    })
    .expect("block_on");
    assert_eq!(drops.load(Ordering::SeqCst), 1, "the op's buffer was freed once, after its cancel");
    assert!(start.elapsed() < Duration::from_secs(1), "the drain waited {:?}", start.elapsed());
    drop(w);
}

#[test]
fn a_second_executor_on_the_same_thread_is_refused() {
    let nested = block_on(async { block_on(async {}).is_err() }).expect("block_on");
    assert!(nested);
}

#[test]
fn an_op_released_twice_frees_its_slot_once() {
    block_on(async {
        let first = submit(opcode::Nop::new().build(), None).expect("submit");
        Next(first).await;
        release(first);
        release(first);
        // Two ops in flight at once must not share the freed slot.
        let a = submit(opcode::Nop::new().build(), None).expect("submit");
        let b = submit(opcode::Nop::new().build(), None).expect("submit");
        assert_ne!(a, b);
        assert_ne!(a.0 & 0xffff_ffff, b.0 & 0xffff_ffff, "two live ops in one slot");
        assert!(Next(a).await.is_some());
        assert!(Next(b).await.is_some());
        release(a);
        release(b);
    })
    .expect("block_on");
}
