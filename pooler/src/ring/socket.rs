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
    /// The multishot receive, while armed.
    recv: Option<OpId>,
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
        Socket {
            inner: Rc::new(RefCell::new(Inner {
                fd,
                recv: None,
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
            while let Some((bid, len)) = s.received.pop_front() {
                executor::take_provided(bid, len as usize, |bytes| buf.extend_from_slice(bytes));
                n += len as usize;
            }
            s.unread = 0;
            return Poll::Ready(Ok(n));
        }
        if let Some(errno) = s.recv_error.take() {
            return Poll::Ready(Err(io::Error::from_raw_os_error(errno)));
        }
        if s.eof {
            return Poll::Ready(Ok(0));
        }
        if let (None, Some(given)) = (s.recv, s.starved) {
            // Every provided buffer held bytes some socket had not read: wait for one back.
            if executor::poll_buffer_since(given, cx).is_pending() {
                return Poll::Pending;
            }
            s.starved = None;
        }
        if s.recv.is_none() {
            if let Err(e) = arm(&self.inner, &mut s) {
                return Poll::Ready(Err(e));
            }
        }
        park(&mut s.reader, cx);
        Poll::Pending
    }

    /// Queues `bytes` to be sent; fails if an earlier send failed (the connection is broken).
    pub fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.inner.borrow_mut();
        if let Some(errno) = s.send_error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if bytes.is_empty() {
            return Ok(());
        }
        if s.sending {
            s.pending.extend_from_slice(bytes);
            return Ok(());
        }
        start_send(&self.inner, &mut s, bytes.to_vec())
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
    let entry = opcode::RecvMulti::new(types::Fd(s.fd.as_raw_fd()), BUFFER_GROUP).build();
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
