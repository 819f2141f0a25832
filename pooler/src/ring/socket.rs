//! A stream socket on the ring: read by one multishot receive that stays armed while the
//! reader wants bytes, into the executor's provided buffers (copied out when read, the buffer
//! given back at once); written by ring sends, one in flight at a time, the bytes written
//! meanwhile sent together when it completes. A write returns once its bytes are queued;
//! `poll_flush` waits until the kernel took them all. Lives on the ring thread.
//!
//! A send is submitted as expected to complete on submission (`executor::submit_expected`)
//! while nothing waits for it: no flush, no bytes queued behind it. Its completion then does
//! not end the loop's wait, and a relay that sends and waits for the answer enters the ring
//! once per message, not twice (measured on the floor relay: 0.75 × PgBouncer's CPU per
//! transaction at ten clients, against 0.90 × with send(2) for every write).

use super::executor::{self, Completion, Hook, OpId, BUFFER_GROUP};
use bytes::BytesMut;
use io_uring::{opcode, types};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::rc::{Rc, Weak};
use std::task::{Context, Poll, Waker};

/// Received bytes not yet read above which the receive is stopped (the kernel's socket buffer
/// then holds the rest, and the sender is slowed by TCP as with any reader that does not read).
const UNREAD_LIMIT: usize = 64 * 1024;

pub struct Socket {
    inner: Rc<RefCell<Inner>>,
}

struct Inner {
    fd: OwnedFd,
    /// Receives are multishot (stay armed); otherwise one receive per read that waits, so
    /// that a socket between two exchanges has nothing in flight and can leave the ring at
    /// once (`into_fd`: a pooled server connection).
    multishot: bool,
    /// The receive, while armed.
    recv: Option<OpId>,
    /// Bytes of the first received buffer already read.
    front_read: u32,
    /// A stop of the receive was asked (too much unread); it is re-armed once read.
    stopping: bool,
    /// Received and not yet read: (provided buffer, length).
    received: VecDeque<(u16, u32)>,
    unread: usize,
    eof: bool,
    /// The receive ended for want of a provided buffer (`executor::buffers_given` then): armed
    /// again once one was given back since.
    starved: Option<u64>,
    recv_error: Option<i32>,
    reader: Option<Waker>,
    /// Written while a send is in flight.
    pending: Vec<u8>,
    sending: bool,
    send_error: Option<i32>,
    writer: Option<Waker>,
}

fn wake(slot: &mut Option<Waker>) {
    if let Some(w) = slot.take() {
        w.wake();
    }
}

fn park(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

impl Socket {
    /// Takes a connected stream socket (TCP or Unix; blocking or not, the ring does not care).
    pub fn new(fd: OwnedFd) -> Socket {
        Socket::with_receives(fd, true)
    }

    /// `new`, with one receive per read that waits when `multishot` is false.
    pub fn with_receives(fd: OwnedFd, multishot: bool) -> Socket {
        Socket {
            inner: Rc::new(RefCell::new(Inner {
                fd,
                multishot,
                recv: None,
                front_read: 0,
                stopping: false,
                received: VecDeque::new(),
                unread: 0,
                eof: false,
                starved: None,
                recv_error: None,
                reader: None,
                pending: Vec::new(),
                sending: false,
                send_error: None,
                writer: None,
            })),
        }
    }

    /// Appends what was received to `buf`: Ready(n) with n > 0 bytes, Ready(0) at the end of
    /// the stream, or the receive's error; Pending (the task woken when bytes come) otherwise.
    pub fn poll_read_buf(&self, cx: &mut Context<'_>, buf: &mut BytesMut) -> Poll<io::Result<usize>> {
        let mut s = self.inner.borrow_mut();
        if !s.received.is_empty() {
            let mut n = 0;
            let from = std::mem::take(&mut s.front_read) as usize;
            let mut first = true;
            while let Some((bid, len)) = s.received.pop_front() {
                let skip = if std::mem::take(&mut first) { from } else { 0 };
                executor::take_provided(bid, len as usize, |bytes| {
                    buf.extend_from_slice(bytes.get(skip..).unwrap_or_default())
                });
                n += len as usize - skip;
            }
            s.unread = 0;
            return Poll::Ready(Ok(n));
        }
        ready_or_arm(&self.inner, &mut s, cx).map_ok(|()| 0)
    }

    /// Copies what was received into `out`, as much as fits (the rest stays for the next
    /// read): Ready(n), Ready(0) at the end of the stream or for an empty `out`, the
    /// receive's error, or Pending.
    pub fn poll_read_into(&self, cx: &mut Context<'_>, out: &mut [u8]) -> Poll<io::Result<usize>> {
        if out.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut s = self.inner.borrow_mut();
        if s.received.is_empty() {
            return ready_or_arm(&self.inner, &mut s, cx).map_ok(|()| 0);
        }
        let mut n = 0;
        while let Some(&(bid, len)) = s.received.front() {
            let from = s.front_read as usize;
            let take = (len as usize - from).min(out.len() - n);
            if take == 0 {
                break;
            }
            executor::peek_provided(bid, from, from + take, |b| out[n..n + take].copy_from_slice(b));
            n += take;
            s.unread = s.unread.saturating_sub(take);
            if from + take == len as usize {
                s.received.pop_front();
                s.front_read = 0;
                executor::take_provided(bid, 0, |_| ());
            } else {
                s.front_read = (from + take) as u32;
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Ready when a read would not wait: bytes are there, the stream ended, or the receive
    /// failed (the error is left for the read). Pending otherwise, the task woken when that
    /// changes.
    pub fn poll_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.inner.borrow_mut();
        if !s.received.is_empty() || s.eof || s.recv_error.is_some() {
            return Poll::Ready(Ok(()));
        }
        ready_or_arm(&self.inner, &mut s, cx)
    }

    /// Reads what is there now: `WouldBlock` if nothing is (a receive is armed meanwhile).
    pub fn try_read_buf(&self, buf: &mut BytesMut) -> io::Result<usize> {
        let mut cx = Context::from_waker(Waker::noop());
        match self.poll_read_buf(&mut cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// The peer closed, or sent bytes no one asked for: an idle connection that must not be
    /// used. Looks at what was received, and at the socket when no receive is armed.
    pub fn is_closed_or_dirty(&self) -> bool {
        let s = self.inner.borrow();
        if !s.received.is_empty() || s.eof || s.recv_error.is_some() {
            return true;
        }
        s.recv.is_none() && peer_spoke(s.fd.as_raw_fd())
    }

    /// Stops the receive (if one is armed) and waits for its end; bytes it brought meanwhile
    /// stay readable. Ready once nothing is in flight on the reading side.
    pub fn poll_quiesce(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.inner.borrow_mut();
        let Some(id) = s.recv else { return Poll::Ready(()) };
        if !s.stopping {
            executor::cancel(id);
            s.stopping = true;
        }
        park(&mut s.reader, cx);
        Poll::Pending
    }

    /// The descriptor, out of the ring, if nothing is in flight on it and nothing unread or
    /// unsent is left; otherwise the socket back, unchanged.
    pub fn into_fd(self) -> Result<OwnedFd, Socket> {
        {
            let s = self.inner.borrow();
            let quiet = s.recv.is_none() && !s.sending && s.pending.is_empty() && s.received.is_empty();
            if !quiet || s.eof || s.recv_error.is_some() || s.send_error.is_some() {
                drop(s);
                return Err(self);
            }
        }
        let this = std::mem::ManuallyDrop::new(self);
        // SAFETY: `this` is never used or dropped again; its one field moves out here.
        let inner = unsafe { std::ptr::read(&this.inner) };
        match Rc::try_unwrap(inner) {
            Ok(cell) => Ok(cell.into_inner().fd),
            Err(inner) => Err(Socket { inner }),
        }
    }

    /// The peer's end of the stream was received.
    pub fn peer_closed(&self) -> bool {
        self.inner.borrow().eof
    }

    /// Bytes written and not yet handed to a send.
    pub fn unsent(&self) -> usize {
        self.inner.borrow().pending.len()
    }

    /// Queues `first` then `second` (one send when none is in flight); fails if an earlier
    /// send failed (the connection is broken).
    pub fn write_pair(&self, first: &[u8], second: &[u8]) -> io::Result<()> {
        let mut s = self.inner.borrow_mut();
        if let Some(errno) = s.send_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if first.is_empty() && second.is_empty() {
            return Ok(());
        }
        if s.sending {
            s.pending.extend_from_slice(first);
            s.pending.extend_from_slice(second);
            return Ok(());
        }
        let mut bytes = Vec::with_capacity(first.len() + second.len());
        bytes.extend_from_slice(first);
        bytes.extend_from_slice(second);
        start_send(&self.inner, &mut s, bytes)
    }
}

/// Whether the peer of an idle socket closed it or sent bytes (a peek that does not wait; any
/// error but "nothing there" counts as closed).
pub fn peer_spoke(fd: RawFd) -> bool {
    let mut probe = 0u8;
    // SAFETY: one byte into a live local; the kernel only writes it.
    let n = unsafe { libc::recv(fd, (&mut probe as *mut u8).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    !(n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock)
}

/// Ready(Ok) at the end of the stream, Ready(Err) with the receive's error; otherwise arms
/// the receive (once a provided buffer is free, if it went without), and Pending.
fn ready_or_arm(inner: &Rc<RefCell<Inner>>, s: &mut Inner, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
    if let Some(errno) = s.recv_error.take() {
        return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
    }
    if s.eof {
        return Poll::Ready(Ok(()));
    }
    if let (None, Some(given)) = (s.recv, s.starved) {
        // Every provided buffer held bytes some socket had not read: wait for one back.
        if executor::poll_buffer_since(given, cx).is_pending() {
            return Poll::Pending;
        }
        s.starved = None;
    }
    if s.recv.is_none() {
        if let Err(e) = arm(inner, s) {
            return Poll::Ready(Err(e));
        }
    }
    park(&mut s.reader, cx);
    Poll::Pending
}

impl Socket {
    /// Queues `bytes` to be sent (`write_pair` with nothing after them).
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        self.write_pair(bytes, &[])
    }

    /// Ready once every byte written was taken by the kernel (or a send failed).
    pub fn poll_flush(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut s = self.inner.borrow_mut();
        if let Some(errno) = s.send_error {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if !s.sending && s.pending.is_empty() {
            return Poll::Ready(Ok(()));
        }
        park(&mut s.writer, cx);
        Poll::Pending
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> RawFd {
        self.inner.borrow().fd.as_raw_fd()
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        let mut s = self.inner.borrow_mut();
        // Late completions of the receive give their buffers back (the op is an orphan now).
        if let Some(id) = s.recv.take() {
            executor::release(id);
        }
        s.front_read = 0;
        while let Some((bid, _)) = s.received.pop_front() {
            executor::take_provided(bid, 0, |_| ());
        }
        // A send in flight keeps its bytes in its op until it completes; the descriptor closes
        // now (the kernel holds its own reference for operations in flight).
    }
}

/// Arms the multishot receive.
fn arm(inner: &Rc<RefCell<Inner>>, s: &mut Inner) -> io::Result<()> {
    let weak = Rc::downgrade(inner);
    let hook: Hook = Box::new(move |c, _keep| on_received(&weak, c));
    let fd = types::Fd(s.fd.as_raw_fd());
    let entry = if s.multishot {
        opcode::RecvMulti::new(fd, BUFFER_GROUP).build()
    } else {
        opcode::Recv::new(fd, std::ptr::null_mut(), 0)
            .buf_group(BUFFER_GROUP)
            .build()
            .flags(io_uring::squeue::Flags::BUFFER_SELECT)
    };
    s.recv = Some(executor::submit_with_hook(entry, None, hook)?);
    s.stopping = false;
    Ok(())
}

fn on_received(weak: &Weak<RefCell<Inner>>, c: Completion) {
    let Some(inner) = weak.upgrade() else {
        if let Some(bid) = c.buffer() {
            executor::take_provided(bid, 0, |_| ());
        }
        return;
    };
    let mut s = inner.borrow_mut();
    match c.result {
        n if n > 0 => match c.buffer() {
            Some(bid) => {
                s.received.push_back((bid, n as u32));
                s.unread += n as usize;
            }
            None => s.recv_error = Some(libc::EIO),
        },
        0 => s.eof = true,
        // Out of provided buffers: armed again once one comes back.
        e if e == -libc::ENOBUFS => s.starved = Some(executor::buffers_given()),
        // Stopped (too much unread): armed again at the next read.
        e if e == -libc::ECANCELED => {}
        e => s.recv_error = Some(-e),
    }
    if !c.more() {
        s.recv = None;
        s.stopping = false;
    } else if s.unread > UNREAD_LIMIT && !s.stopping {
        if let Some(id) = s.recv {
            // Stopped, not let go: what arrives before the stop takes effect is still read.
            executor::cancel(id);
            s.stopping = true;
        }
    }
    wake(&mut s.reader);
}

/// Submits `bytes` as the one send in flight.
fn start_send(inner: &Rc<RefCell<Inner>>, s: &mut Inner, bytes: Vec<u8>) -> io::Result<()> {
    let weak = Rc::downgrade(inner);
    let entry = opcode::Send::new(types::Fd(s.fd.as_raw_fd()), bytes.as_ptr(), bytes.len() as u32)
        .flags(libc::MSG_NOSIGNAL | libc::MSG_WAITALL)
        .build();
    let check = weak.clone();
    let hook: Hook = Box::new(move |c, keep| on_sent(&weak, c, keep));
    let nothing_waits: executor::Expected = Box::new(move || {
        check.upgrade().is_some_and(|inner| {
            let s = inner.borrow();
            s.pending.is_empty() && s.writer.is_none()
        })
    });
    // The Vec's heap bytes do not move when the Vec is boxed: the entry's pointer stays good.
    executor::submit_expected(entry, Some(Box::new(bytes)), hook, nothing_waits)?;
    s.sending = true;
    Ok(())
}

fn on_sent(weak: &Weak<RefCell<Inner>>, c: Completion, keep: &mut executor::Keep) {
    let Some(inner) = weak.upgrade() else { return };
    let mut s = inner.borrow_mut();
    s.sending = false;
    match c.bytes() {
        Err(e) => s.send_error = Some(e.raw_os_error().unwrap_or(libc::EIO)),
        Ok(sent) => {
            let sent_bytes = keep.as_mut().and_then(|k| k.downcast_mut::<Vec<u8>>());
            if let Some(v) = sent_bytes {
                if sent < v.len() {
                    // A short send: its rest goes first.
                    let mut rest = v.split_off(sent);
                    rest.extend_from_slice(&s.pending);
                    s.pending = rest;
                }
            }
        }
    }
    if s.send_error.is_none() && !s.pending.is_empty() {
        let bytes = std::mem::take(&mut s.pending);
        if let Err(e) = start_send(&inner, &mut s, bytes) {
            s.send_error = Some(e.raw_os_error().unwrap_or(libc::EIO));
        }
    }
    wake(&mut s.writer);
}

#[cfg(test)]
#[path = "socket_tests.rs"]
mod tests;
