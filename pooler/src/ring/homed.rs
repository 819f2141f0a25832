//! A ring socket that may sit in values other threads hold (a relay's future on its way to
//! the ring thread, a server connection in a client's state) while it is used only on the
//! thread of the ring that made it: every use elsewhere is refused with an error, and a drop
//! elsewhere leaks it (with a warning) rather than touch the ring's state from the wrong thread.

use super::executor;
use super::socket::Socket;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

pub struct Homed {
    socket: ManuallyDrop<Socket>,
    /// The executor that made it (`executor::ring_id`).
    ring: usize,
    fd: RawFd,
    /// A Unix socket (else TCP).
    pub unix: bool,
}

// SAFETY: the socket's state (shared with the ring's completion hooks through `Rc`) is touched
// only on its ring's thread: `get` refuses any other, and `Drop` leaks it there.
unsafe impl Send for Homed {}
// SAFETY: as above; a shared reference gives no access on any other thread either.
unsafe impl Sync for Homed {}

fn off_ring() -> io::Error {
    io::Error::other("a ring socket was used off its ring's thread")
}

impl Homed {
    /// `fd` on this thread's ring; fails off a ring thread.
    pub fn new(fd: OwnedFd, unix: bool, multishot: bool) -> io::Result<Homed> {
        let ring = executor::ring_id().ok_or_else(|| io::Error::other("not on an io_uring relaying thread"))?;
        let raw = fd.as_raw_fd();
        Ok(Homed { socket: ManuallyDrop::new(Socket::with_receives(fd, multishot)), ring, fd: raw, unix })
    }

    /// Whether this thread is its ring's.
    pub fn is_home(&self) -> bool {
        executor::ring_id() == Some(self.ring)
    }

    pub fn get(&self) -> io::Result<&Socket> {
        if self.is_home() {
            Ok(&self.socket)
        } else {
            Err(off_ring())
        }
    }

    /// The descriptor out of the ring (`Socket::into_fd`); the handle back when it cannot.
    pub fn into_fd(mut self) -> Result<OwnedFd, Homed> {
        if !self.is_home() {
            return Err(self);
        }
        // SAFETY: taken once; `self` is forgotten or rebuilt below, never dropped with it.
        let socket = unsafe { ManuallyDrop::take(&mut self.socket) };
        let (ring, fd, unix) = (self.ring, self.fd, self.unix);
        std::mem::forget(self);
        socket.into_fd().map_err(|socket| Homed { socket: ManuallyDrop::new(socket), ring, fd, unix })
    }
}

impl AsRawFd for Homed {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl AsFd for Homed {
    fn as_fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the socket owns the descriptor for as long as this handle lives (it is closed
        // only when the handle drops, or leaked open; `into_fd` consumes the handle).
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }
}

impl std::fmt::Debug for Homed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Homed").field("fd", &self.fd).field("unix", &self.unix).finish()
    }
}

impl Drop for Homed {
    fn drop(&mut self) {
        if self.is_home() {
            // SAFETY: dropped once, here.
            unsafe { ManuallyDrop::drop(&mut self.socket) };
        } else {
            tracing::warn!(fd = self.fd, "a ring socket was dropped off its ring's thread; it is leaked");
        }
    }
}
