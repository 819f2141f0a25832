//! The requests sent to the attached server whose answers have not all arrived, in the order
//! sent, each with what to do with its answer (pass it on, drop it, or answer it ourselves).
//! Owns the queue and its pipelining rules (skip to Sync after an error, the end of COPY); it
//! does not read messages.

use super::statements::ClientBinding;
use std::collections::VecDeque;

/// A request whose answer is awaited.
#[derive(Debug)]
pub(crate) enum Request {
    /// `server_id`: this Parse prepares our statement on the server. `binding`: it binds a
    /// client's name. Both are undone if the server skips or fails the Parse.
    Parse {
        server_id: Option<u64>,
        binding: Option<ClientBinding>,
    },
    Bind,
    Describe,
    /// `restore`: a client binding this Close removed, put back if the server skips the Close.
    Close {
        restore: Option<ClientBinding>,
    },
    Execute,
    Sync,
    Query,
    FunctionCall,
    /// A CopyDone or CopyFail sent while the server was copying in, or before its answer
    /// to a request that may start a COPY.
    CopyEnd,
    /// The pooler's own `SET`s after attaching a server: every answer is dropped.
    Setup,
}

/// What happens to the answer of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reply {
    /// The client gets it.
    Forward,
    /// The pooler sent the request on its own (a re-Parse, an evicting Close): the completion
    /// is dropped, an error still reaches the client.
    Swallow,
    /// The pooler answers with these bytes once everything before is answered.
    Fake(&'static [u8]),
}

#[derive(Debug)]
pub(crate) struct Pending {
    pub(crate) request: Request,
    pub(crate) reply: Reply,
}

#[derive(Debug, Default)]
pub(crate) struct PendingQueue {
    queue: VecDeque<Pending>,
}

impl PendingQueue {
    pub(crate) fn push(&mut self, request: Request, reply: Reply) {
        self.queue.push_back(Pending { request, reply });
    }

    pub(crate) fn front(&self) -> Option<&Pending> {
        self.queue.front()
    }

    pub(crate) fn front_request(&self) -> Option<&Request> {
        self.queue.front().map(|pending| &pending.request)
    }

    pub(crate) fn pop_front(&mut self) -> Option<Pending> {
        self.queue.pop_front()
    }

    /// Pops a pooler-answered request from the front, returning its answer.
    pub(crate) fn pop_fake(&mut self) -> Option<&'static [u8]> {
        match self.queue.front()?.reply {
            Reply::Fake(answer) => {
                self.queue.pop_front();
                Some(answer)
            }
            Reply::Forward | Reply::Swallow => None,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// After an error in the extended protocol the server skips everything up to the next
    /// Sync: drop those requests (handing each to `undo`). True if a Sync is now first.
    pub(crate) fn drop_until_sync(&mut self, mut undo: impl FnMut(Pending)) -> bool {
        while let Some(pending) = self.queue.front() {
            if matches!(pending.request, Request::Sync) {
                return true;
            }
            if let Some(pending) = self.queue.pop_front() {
                undo(pending);
            }
        }
        false
    }

    /// The server left copy-in mode (CommandComplete or ErrorResponse): the requests sent while
    /// it was copying are done. A Query that started the COPY stays: its ReadyForQuery is still
    /// to come. Everything else up to and including the first CopyEnd goes (Syncs sent during
    /// copy-in are ignored by the server; the Execute that started it is answered). Returns
    /// false if the client has not sent its CopyDone/CopyFail yet.
    pub(crate) fn finish_copy(&mut self, mut undo: impl FnMut(Pending)) -> bool {
        let query = match self.queue.front() {
            Some(Pending { request: Request::Query, .. }) => self.queue.pop_front(),
            _ => None,
        };
        let mut found = false;
        while let Some(pending) = self.queue.pop_front() {
            if matches!(pending.request, Request::CopyEnd) {
                found = true;
                break;
            }
            undo(pending);
        }
        if let Some(query) = query {
            self.queue.push_front(query);
        }
        found
    }

    /// Drops the CopyEnds at the front of the queue. Call it when the server is not copying
    /// in: a CopyDone or CopyFail the client sent ahead of the server's answer to a request
    /// that then started no COPY (it failed, or was not a COPY) was ignored by the server, as
    /// PostgreSQL ignores copy messages outside copy mode, and no answer will come for it.
    pub(crate) fn drop_unanswered_copy_ends(&mut self) {
        while matches!(self.front_request(), Some(Request::CopyEnd)) {
            self.queue.pop_front();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.queue.clear();
    }

    /// Whether the queue holds an allocation (an empty one can be handed on, `Session`).
    pub(crate) fn has_room(&self) -> bool {
        self.queue.capacity() > 0
    }
}
