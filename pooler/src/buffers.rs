//! Read and write buffers lent to client relays while they are busy. An idle client holds no
//! buffer: its relay waits for readiness without one, borrows from this thread's free list when
//! bytes arrive, and gives everything back once it is idle again, so 10,000 idle clients cost
//! no buffer memory and a busy one allocates nothing per transaction. The session's action
//! lists are lent the same way, and so is the small box that holds a busy relay's output and
//! server-input buffers (`Io`): an idle relay keeps 8 bytes for them. Owns the free lists only.

use crate::session::Action;
use bytes::BytesMut;
use std::cell::RefCell;

/// Capacity of a lent buffer; a read asks for at least a quarter of it.
pub const CHUNK: usize = 8192;

/// Buffers kept per thread; more are freed (a burst of busy clients does not pin memory).
const KEPT_PER_THREAD: usize = 256;

/// Buffers that grew past this (a large message went through) are freed, not kept.
const LARGEST_KEPT: usize = 4 * CHUNK;

thread_local! {
    static FREE: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static FREE_ACTIONS: RefCell<Vec<Vec<Action>>> = const { RefCell::new(Vec::new()) };
    // Boxed: a relay holds 8 bytes for its Io, and lending moves a pointer.
    #[allow(clippy::vec_box)]
    static FREE_IO: RefCell<Vec<Box<Io>>> = const { RefCell::new(Vec::new()) };
}

/// A busy relay's buffers besides its client input: bytes for the client, from the server and
/// for the server, and the session's action list. Each buffer is itself lent (`lend`) when
/// it is first needed.
#[derive(Default)]
pub struct Io {
    pub cout: BytesMut,
    pub sin: BytesMut,
    pub sout: BytesMut,
    pub actions: Vec<Action>,
    /// When the request now in flight went to the server (SHOW STATS query_time).
    pub query_started: Option<crate::tick::Tick>,
    /// When the attached server connection was checked out (SHOW STATS xact_time); only
    /// while one is attached, so never when the box goes back.
    pub attached_at: Option<crate::tick::Tick>,
}

impl Io {
    /// No bytes for the client, from the server or for the server.
    pub fn is_empty(&self) -> bool {
        self.cout.is_empty() && self.sin.is_empty() && self.sout.is_empty()
    }
}

/// The relay's `Io`, borrowed from this thread's free list if it holds none.
pub fn io(slot: &mut Option<Box<Io>>) -> &mut Io {
    slot.get_or_insert_with(|| FREE_IO.with(|free| free.borrow_mut().pop()).unwrap_or_default())
}

/// Gives the relay's `Io` back, its buffers to the buffer free list, unless one of them still
/// holds bytes.
pub fn give_back_io(slot: &mut Option<Box<Io>>) {
    let Some(io) = slot.as_mut() else { return };
    if !io.is_empty() {
        return;
    }
    for buf in [&mut io.cout, &mut io.sin, &mut io.sout] {
        give_back(buf);
    }
    give_back_actions(&mut io.actions);
    io.query_started = None;
    io.attached_at = None;
    if let Some(io) = slot.take() {
        FREE_IO.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < KEPT_PER_THREAD {
                free.push(io);
            }
        });
    }
}

/// Makes `buf` a buffer with room for a read, borrowing one if it holds none.
pub fn lend(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        *buf = FREE.with(|free| free.borrow_mut().pop()).unwrap_or_default();
    }
    if buf.capacity() - buf.len() < CHUNK / 4 {
        buf.reserve(CHUNK);
    }
}

/// Makes `buf` a buffer with room for a login's first packets: one from the free list if it
/// holds any (the relay gives it back once the client is logged in), else a small one of its
/// own (a burst of logins does not take a chunk each).
pub fn lend_for_login(buf: &mut BytesMut) {
    if buf.capacity() == 0 {
        if let Some(free) = FREE.with(|free| free.borrow_mut().pop()) {
            *buf = free;
        }
    }
    if buf.capacity() - buf.len() < LOGIN_READ {
        buf.reserve(LOGIN_READ);
    }
}

/// The room a login's read needs at least (startup packets are small).
const LOGIN_READ: usize = 1024;

/// Gives an empty buffer back to this thread's free list; a buffer that still holds bytes is
/// kept by its owner.
pub fn give_back(buf: &mut BytesMut) {
    if buf.capacity() == 0 || !buf.is_empty() {
        return;
    }
    let mut buf = std::mem::take(buf);
    // Reclaims the space consumed at the front (no copy: the buffer is empty); a buffer too
    // small to be lent (the login's) or one that grew large is freed instead.
    if !buf.try_reclaim(CHUNK) || buf.capacity() > LARGEST_KEPT {
        return;
    }
    FREE.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT_PER_THREAD {
            free.push(buf);
        }
    });
}

/// Makes `actions` an empty list, borrowing one with room if it holds none.
pub fn lend_actions(actions: &mut Vec<Action>) {
    actions.clear();
    if actions.capacity() == 0 {
        if let Some(lent) = FREE_ACTIONS.with(|free| free.borrow_mut().pop()) {
            *actions = lent;
        }
    }
}

/// Gives an action list back to this thread's free list.
pub fn give_back_actions(actions: &mut Vec<Action>) {
    if actions.capacity() == 0 {
        return;
    }
    let mut actions = std::mem::take(actions);
    actions.clear();
    FREE_ACTIONS.with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < KEPT_PER_THREAD {
            free.push(actions);
        }
    });
}

/// Buffers on this thread's free list (for tests and SHOW MEM).
pub fn free_on_this_thread() -> usize {
    FREE.with(|free| free.borrow().len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Buf, BufMut};

    #[test]
    fn a_buffer_given_back_is_lent_again_without_allocating() {
        let mut a = BytesMut::new();
        lend(&mut a);
        assert!(a.capacity() >= CHUNK);
        a.put_slice(&[7; 100]);
        a.advance(100);
        let before = free_on_this_thread();
        let ptr = a.as_ptr();
        give_back(&mut a);
        assert_eq!((a.capacity(), free_on_this_thread()), (0, before + 1));
        let mut b = BytesMut::new();
        lend(&mut b);
        assert_eq!(free_on_this_thread(), before);
        assert!(b.capacity() >= CHUNK && b.is_empty());
        // The same memory, with the consumed front reclaimed.
        assert_eq!(b.as_ptr(), unsafe { ptr.sub(100) });
    }

    #[test]
    fn an_io_box_is_reused_and_kept_while_it_holds_bytes() {
        let mut slot = None;
        let first: *const Io = io(&mut slot);
        give_back_io(&mut slot);
        assert!(slot.is_none());
        assert_eq!(io(&mut slot) as *const Io, first, "the box was not reused");
        lend(&mut io(&mut slot).sin);
        io(&mut slot).sin.put_slice(b"part of an answer");
        give_back_io(&mut slot);
        assert_eq!(slot.as_ref().map(|io| &io.sin[..]), Some(&b"part of an answer"[..]));
    }

    #[test]
    fn a_buffer_holding_bytes_stays_with_its_owner() {
        let mut a = BytesMut::new();
        lend(&mut a);
        a.put_slice(b"half a message");
        give_back(&mut a);
        assert_eq!(&a[..], b"half a message");
    }

    #[test]
    fn grown_and_small_buffers_are_freed_not_kept() {
        for capacity in [LARGEST_KEPT * 2, CHUNK / 8] {
            let mut a = BytesMut::with_capacity(capacity);
            let before = free_on_this_thread();
            give_back(&mut a);
            assert_eq!((a.capacity(), free_on_this_thread()), (0, before));
        }
    }
}
