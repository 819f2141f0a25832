//! The provided-buffer ring of the io_uring engine: memory the kernel fills when bytes arrive
//! for a multishot receive (it picks a buffer then, so a socket with nothing unread holds
//! none), given back by the executor once the bytes were read.

use io_uring::types::BufRingEntry;
use io_uring::IoUring;
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

/// The buffer group of the provided-buffer ring multishot receives take from.
pub const BUFFER_GROUP: u16 = 0;
/// Provided buffers: how many and how large. Taken only while they hold received bytes that
/// no task has read yet, so idle sockets hold none.
const PROVIDED: u16 = 512;
const PROVIDED_SIZE: usize = 4096;

/// The provided-buffer ring: the kernel takes buffers at its head when bytes arrive for a
/// multishot receive, the executor gives them back at its tail once read.
pub(super) struct Provided {
    /// The ring's entries (page-aligned, mapped), PROVIDED of them.
    entries: *mut BufRingEntry,
    tail: u16,
    published: u16,
    memory: Box<[u8]>,
}

impl Provided {
    pub(super) fn new(ring: &IoUring) -> io::Result<Provided> {
        let bytes = PROVIDED as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: an anonymous private mapping; unmapped in Drop.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut provided = Provided {
            entries: map.cast(),
            tail: 0,
            published: 0,
            memory: vec![0u8; PROVIDED as usize * PROVIDED_SIZE].into_boxed_slice(),
        };
        // SAFETY: the mapping holds PROVIDED entries and stays mapped as long as the ring (the
        // Core drops the ring first).
        unsafe { ring.submitter().register_buf_ring_with_flags(map as u64, PROVIDED, BUFFER_GROUP, 0)? };
        for bid in 0..PROVIDED {
            provided.give(bid);
        }
        provided.publish();
        Ok(provided)
    }

    pub(super) fn give(&mut self, bid: u16) {
        if bid >= PROVIDED {
            return;
        }
        // SAFETY: PROVIDED is a power of two and the mapping holds that many entries.
        let entry = unsafe { &mut *self.entries.add((self.tail & (PROVIDED - 1)) as usize) };
        entry.set_addr(self.memory.as_ptr() as u64 + (bid as usize * PROVIDED_SIZE) as u64);
        entry.set_len(PROVIDED_SIZE as u32);
        entry.set_bid(bid);
        self.tail = self.tail.wrapping_add(1);
    }

    pub(super) fn publish(&mut self) {
        if self.published == self.tail {
            return;
        }
        // SAFETY: the ring's tail, a u16 in its first entry that the kernel reads.
        let tail = unsafe { &*(BufRingEntry::tail(self.entries) as *const AtomicU16) };
        tail.store(self.tail, Ordering::Release);
        self.published = self.tail;
    }

    pub(super) fn bytes(&self, bid: u16, len: usize) -> Option<&[u8]> {
        let start = bid as usize * PROVIDED_SIZE;
        self.memory.get(start..start + len.min(PROVIDED_SIZE))
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        let bytes = PROVIDED as usize * std::mem::size_of::<BufRingEntry>();
        // SAFETY: the mapping made in `new`, no longer registered (the ring is gone).
        unsafe { libc::munmap(self.entries.cast(), bytes) };
    }
}
