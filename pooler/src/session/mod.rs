//! The per-client session state machine: fed the bytes a client and its current server
//! connection send, it says what to pass on, what to answer itself, when the client needs a
//! server connection and when that connection can go back to the pool. It owns transaction
//! status, in-flight requests, prepared-statement names and tracked parameters, and never
//! touches a socket or a clock: like raft-rs's `Ready`, the I/O loop applies its [`Action`]s.
//!
//! The I/O loop, per direction, keeps an input buffer and does:
//!
//! ```text
//! session.on_client_input(&client_in, &mut actions)?;     // or on_server_input(&server_in, ..)
//! for action in actions.drain(..) {
//!     Forward(n)  => write client_in[..n] to the server (server_in[..n] to the client); advance n
//!     Discard(n)  => advance n
//!     ToServer(b) / ToClient(b) => write b
//!     NeedServer  => check a connection out, session.attach_server(state, &mut more)?,
//!                    apply `more`, then call on_client_input again (the message was not consumed)
//!     ReleaseServer(state) => return the connection and `state` to the pool
//!     ClientTerminated => close the client; take_server() and reuse it if server_is_reusable()
//! }
//! ```
//!
//! In the steady state nothing is allocated per forwarded message: the caller reuses `actions`,
//! the queue of pending requests reuses its capacity, and rewritten messages are cut from one
//! scratch buffer.
//!
//! Limits, as in PgBouncer: SQL-level `PREPARE`/`EXECUTE`, untracked `SET`s, advisory locks and
//! `LISTEN` do not follow the client to another server connection. Client names are bound as
//! Parse and Close are forwarded and unbound when the server skips them after an error; messages
//! pipelined behind that error before it comes back see the names as the client last sent them.

mod backend;
mod deallocate;
mod error;
mod frontend;
mod params;
mod pending;
mod server;
mod statements;

#[cfg(test)]
mod props;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;

pub use crate::config::PoolMode;
pub use error::SessionError;
pub use params::{
    extra_parameter_names, track_extra_parameters, tracks_extra_parameters, ParamMap, TrackedParam, SLOTS,
};
pub use server::ServerState;
pub use statements::ServerStatementName;

use crate::protocol::tag::backend::{DATA_ROW, ROW_DESCRIPTION};
use crate::protocol::tag::{backend_inspect, frontend_inspect};
use crate::protocol::{Frame, FrameLimits, Framer, TransactionStatus};
use bytes::{Bytes, BytesMut};
use pending::{PendingQueue, Request};
use statements::ClientStatements;

/// How a session pools and what it tracks.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub pool_mode: PoolMode,
    /// Statements kept prepared per server connection (PgBouncer's `max_prepared_statements`);
    /// 0 turns tracking off and named statements pass through untouched.
    pub max_prepared_statements: u32,
    pub limits: FrameLimits,
    /// disable_pqexec: a simple Query ends the session (only the extended protocol is served).
    pub disable_pqexec: bool,
}

/// A session at rest, as a parked client keeps it (`Session::rest`).
#[derive(Debug)]
pub struct RestingSession {
    config: SessionConfig,
    statements: ClientStatements,
    params: ParamMap,
    segment: u64,
}

/// PgBouncer's prepared-statement counters (counted only for named statements, which the
/// pooler tracks): Parses from the client, Parses the pooler sent to a server under its own
/// name (a first prepare, or a re-prepare on a connection that lacks the statement), and
/// Binds of named statements forwarded. u32: taken at every release of a server connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PreparedCounts {
    pub client_parse: u32,
    pub server_parse: u32,
    pub bind: u32,
}

impl PreparedCounts {
    pub fn is_zero(&self) -> bool {
        *self == PreparedCounts::default()
    }
}

impl SessionConfig {
    /// Named statements are mapped only when server connections change under the client.
    pub fn tracks_prepared_statements(&self) -> bool {
        self.pool_mode != PoolMode::Session && self.max_prepared_statements > 0
    }
}

/// One thing for the I/O loop to do, in order. `Forward` and `Discard` consume bytes from the
/// front of the input buffer passed to the call that returned them.
#[derive(Debug)]
pub enum Action {
    /// Pass the next `n` input bytes to the other side unchanged.
    Forward(usize),
    /// Drop the next `n` input bytes (the pooler consumed or replaced them).
    Discard(usize),
    /// Bytes the pooler wrote for the server.
    ToServer(Bytes),
    /// The rewritten head of a Bind, for the server (the rest of the Bind follows as
    /// `Discard` of the client's head and `Forward` of its parameters).
    BindHead(crate::protocol::extended::BindHead),
    /// Bytes the pooler wrote for the client.
    ToClient(Bytes),
    /// The next client message needs a server connection: attach one and call again with the
    /// same input, which starts at that message.
    NeedServer,
    /// The server connection is idle with nothing in flight: give it back to the pool with
    /// this state. Server input after this point belongs to the pool, not to the session.
    ReleaseServer(Box<ServerState>),
    /// The client sent Terminate.
    ClientTerminated,
}

/// Where the bytes of the message being passed on in pieces go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Forward,
    Discard,
}

/// What a message handler decided about the message (or the first piece of it) it was shown.
#[derive(Debug)]
enum Step {
    Route(Route),
    /// The first `replaced` bytes were rewritten into a `ToServer`; the rest is forwarded.
    Replace {
        replaced: usize,
    },
    /// The handler needs more of the message in the buffer.
    NeedMore,
    NeedServer,
    Terminate,
}

/// Whether the input loop goes on after a step.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Next,
    /// Stop before the current frame: it was not consumed.
    Wait,
    /// Stop after the current frame.
    Stop,
}

#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    client_framer: Framer,
    server_framer: Framer,
    client_route: Route,
    server_route: Route,
    server: Option<Box<ServerState>>,
    statements: ClientStatements,
    params: ParamMap,
    pending: PendingQueue,
    transaction: TransactionStatus,
    /// The server is skipping messages until Sync after an error, and no Sync is in flight.
    skip_until_sync: bool,
    /// The server is in copy-in mode.
    copy_in: bool,
    /// A `DEALLOCATE` of the client's statements in the unnamed statement or a portal, which
    /// the pooler answers (`deallocate`); boxed, as it is rare and the session small.
    local_unnamed: Option<Box<deallocate::LocalUnnamed>>,
    /// The server was found releasable while a client message was half forwarded to it.
    release_deferred: bool,
    /// The message just handled was a ReadyForQuery answering a client's Sync or Query.
    answered_ready: bool,
    /// Queries answered (a simple Query, a Sync, a function call) since last taken, for
    /// SHOW STATS query_count (taken at every transaction's end, so 32 bits are plenty and
    /// keep the session, which every idle client holds, 8 bytes smaller).
    queries_answered: u32,
    /// Named statements prepared and bound since last taken, for SHOW STATS.
    prepared: PreparedCounts,
    /// Syncs sent so far: numbers the pipeline segments the server skips as a whole on error.
    segment: u64,
    scratch: BytesMut,
}

impl Session {
    /// A logged-in client whose session parameters (as reported to it at login) are `params`.
    pub fn new(config: SessionConfig, params: ParamMap) -> Self {
        Session {
            client_framer: Framer::new(config.limits),
            server_framer: Framer::new(config.limits),
            config,
            client_route: Route::Forward,
            server_route: Route::Forward,
            server: None,
            statements: ClientStatements::default(),
            params,
            pending: PendingQueue::default(),
            transaction: TransactionStatus::Idle,
            skip_until_sync: false,
            copy_in: false,
            local_unnamed: None,
            release_deferred: false,
            answered_ready: false,
            queries_answered: 0,
            prepared: PreparedCounts::default(),
            segment: 0,
            scratch: BytesMut::new(),
        }
    }

    /// Whether the session is at rest: no server connection, nothing in flight or half-read,
    /// outside a transaction, its counters taken. Only then may it `rest`.
    pub fn is_at_rest(&self) -> bool {
        self.server.is_none()
            && self.pending.is_empty()
            && self.client_framer.at_boundary()
            && self.server_framer.at_boundary()
            && self.transaction == TransactionStatus::Idle
            && !self.skip_until_sync
            && !self.copy_in
            && !self.release_deferred
            && self.queries_answered == 0
            && self.prepared.is_zero()
            && self.scratch.is_empty()
    }

    /// The session in its smallest form, for a client that parks (`client::parking`): what
    /// outlives an idle wait (configuration, the client's statements and parameters, the
    /// pipeline segment count). Call it on a session `is_at_rest`: the rest is dropped.
    pub fn rest(self) -> RestingSession {
        RestingSession { config: self.config, statements: self.statements, params: self.params, segment: self.segment }
    }

    /// The session of a parked client that is back.
    pub fn wake(resting: RestingSession) -> Session {
        let RestingSession { config, statements, params, segment } = resting;
        let mut session = Session::new(config, params);
        session.statements = statements;
        session.segment = segment;
        session
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// A reloaded pool_mode, taken between server connections only (a session-mode client
    /// keeps its server connection, and so its mode, until it leaves).
    pub fn set_pool_mode(&mut self, mode: PoolMode) {
        if self.server.is_none() {
            self.config.pool_mode = mode;
        }
    }

    /// The transaction status of the last ReadyForQuery the client got.
    pub fn transaction_status(&self) -> TransactionStatus {
        self.transaction
    }

    /// The tracked parameters as the client last saw them.
    pub fn client_params(&self) -> &ParamMap {
        &self.params
    }

    pub fn has_server(&self) -> bool {
        self.server.is_some()
    }

    /// Requests sent to the server whose answers have not all arrived.
    /// Queries answered since the last call (SHOW STATS query_count).
    pub fn take_queries_answered(&mut self) -> u64 {
        u64::from(std::mem::take(&mut self.queries_answered))
    }

    /// Named-statement work since the last call (SHOW STATS client_parse_count,
    /// server_parse_count, bind_count).
    pub fn take_prepared_counts(&mut self) -> PreparedCounts {
        std::mem::take(&mut self.prepared)
    }

    pub fn requests_in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Named statements the client has prepared.
    pub fn prepared_statements(&self) -> usize {
        self.statements.len()
    }

    /// Processes client bytes; see the module documentation for the contract.
    pub fn on_client_input(&mut self, input: &[u8], out: &mut Vec<Action>) -> Result<(), SessionError> {
        let track = self.config.tracks_prepared_statements();
        let mut offset = 0;
        loop {
            let buf = input.get(offset..).unwrap_or_default();
            let frame =
                self.client_framer.peek(buf, |tag| frontend_inspect(tag, track)).map_err(SessionError::ClientFrame)?;
            let step = match frame {
                Frame::Incomplete { .. } => return Ok(()),
                Frame::Continue { .. } => Step::Route(self.client_route),
                Frame::Whole { header, message } => self.frontend_message(header, message, true, out)?,
                Frame::Start { header, chunk } => {
                    self.frontend_message(header, chunk, chunk.len() == header.total_len(), out)?
                }
            };
            let flow = take_step(step, frame.len(), &mut self.client_route, out);
            if flow == Flow::Wait {
                return Ok(());
            }
            self.client_framer.advance(&frame);
            offset += frame.len();
            if flow == Flow::Stop {
                return Ok(());
            }
            if frame.ends_message() && std::mem::take(&mut self.release_deferred) && self.try_release(out) {
                return Ok(());
            }
        }
    }

    /// Processes bytes from the attached server; see the module documentation for the contract.
    pub fn on_server_input(&mut self, input: &[u8], out: &mut Vec<Action>) -> Result<(), SessionError> {
        if self.server.is_none() {
            return Err(SessionError::NoServer);
        }
        // Answers the pooler owes from before these bytes; after that a fake can only come to
        // the front when a message ends (drained there).
        self.drain_fakes(out);
        let mut offset = 0;
        loop {
            let buf = input.get(offset..).unwrap_or_default();
            // The rows of a result (and a RowDescription that answers no Describe) complete
            // no request and change no state: a run of them passes on in one step.
            let (describe, setup) = match self.pending.front_request() {
                Some(Request::Describe) => (true, false),
                Some(Request::Setup) => (false, true),
                _ => (false, false),
            };
            if !setup {
                let run = self
                    .server_framer
                    .whole_run(buf, |tag| tag == DATA_ROW || (tag == ROW_DESCRIPTION && !describe))
                    .map_err(SessionError::ServerFrame)?;
                if run > 0 {
                    push_input(out, Route::Forward, run);
                    self.server_route = Route::Forward;
                    offset += run;
                    continue;
                }
            }
            let frame = self.server_framer.peek(buf, backend_inspect).map_err(SessionError::ServerFrame)?;
            let step = match frame {
                Frame::Incomplete { .. } => return Ok(()),
                Frame::Continue { .. } => Step::Route(self.server_route),
                Frame::Whole { header, message: chunk } | Frame::Start { header, chunk } => {
                    self.backend_message(header, chunk)?
                }
            };
            if take_step(step, frame.len(), &mut self.server_route, out) != Flow::Next {
                return Ok(());
            }
            self.server_framer.advance(&frame);
            offset += frame.len();
            if frame.ends_message() {
                self.drain_fakes(out);
                if std::mem::take(&mut self.answered_ready) && self.try_release(out) {
                    return Ok(());
                }
            }
        }
    }

    /// Attaches a server connection after `NeedServer`. If its parameters differ from the
    /// client's, the `SET`s that align them are queued ahead of the client's messages.
    pub fn attach_server(&mut self, mut server: Box<ServerState>, out: &mut Vec<Action>) -> Result<(), SessionError> {
        if self.server.is_some() {
            return Err(SessionError::ServerAlreadyAttached);
        }
        self.server_framer.reset();
        self.server_route = Route::Forward;
        if !self.pending.has_room() {
            // Nothing is pending without a server: the connection's spare queue will do.
            std::mem::swap(&mut self.pending, &mut server.spare_pending);
        }
        // One shared map: in line without comparing a string. Maps found equal are made one,
        // so the next checkout of this connection by this client (or any client with these
        // values) is that cheap too; either side's next change copies it apart.
        let commands = if self.params.shares_values_with(&server.params) {
            Vec::new()
        } else {
            let commands = self.params.set_commands(&server.params);
            if commands.is_empty() && self.params == server.params {
                server.params = self.params.clone();
            }
            commands
        };
        self.server = Some(server);
        if !commands.is_empty() {
            crate::protocol::extended::write_query(&commands.join("; "), &mut self.scratch)?;
            out.push(Action::ToServer(self.scratch.split().freeze()));
            self.pending.push(pending::Request::Setup, pending::Reply::Forward);
        }
        Ok(())
    }

    /// True if `on_client_input(input)` would ask for a server connection before it did
    /// anything else, or refuse the input: no server is attached, and `input` starts with a
    /// whole message that always needs one (a query, or a step of the extended protocol
    /// other than Sync, Flush and Close). The relay then checks a connection out first and
    /// runs the session over the message once instead of twice.
    pub fn needs_server_first(&self, input: &[u8]) -> bool {
        use crate::protocol::tag::frontend::{BIND, DESCRIBE, EXECUTE, FUNCTION_CALL, PARSE, QUERY};
        let [tag, l0, l1, l2, l3, ..] = *input else { return false };
        let whole = (u32::from_be_bytes([l0, l1, l2, l3]) as usize).checked_add(1).is_some_and(|n| input.len() >= n);
        self.server.is_none()
            && self.client_framer.at_boundary()
            && whole
            && matches!(tag, QUERY | PARSE | BIND | DESCRIBE | EXECUTE | FUNCTION_CALL)
            && !self.may_deallocate_locally(tag, input.get(5..).unwrap_or_default())
    }

    /// True if the attached server could serve another client now: nothing in flight, no
    /// transaction open, no message half passed in either direction.
    pub fn server_is_reusable(&self) -> bool {
        self.server.is_some()
            && self.pending.is_empty()
            && self.transaction == TransactionStatus::Idle
            && !self.copy_in
            && !self.skip_until_sync
            && self.server_framer.at_boundary()
            && (self.client_framer.at_boundary() || self.client_route == Route::Discard)
    }

    /// Detaches the server (client gone, or an error); check `server_is_reusable` first.
    pub fn take_server(&mut self) -> Option<Box<ServerState>> {
        self.pending.clear();
        self.transaction = TransactionStatus::Idle;
        self.copy_in = false;
        self.skip_until_sync = false;
        self.release_deferred = false;
        self.server_framer.reset();
        let mut server = self.server.take()?;
        lend_queue(&mut self.pending, &mut server);
        Some(server)
    }

    /// Releases the server if the client's last request is fully answered and idle.
    fn try_release(&mut self, out: &mut Vec<Action>) -> bool {
        if self.config.pool_mode == PoolMode::Session
            || !self.pending.is_empty()
            || self.transaction != TransactionStatus::Idle
            || self.copy_in
            || self.skip_until_sync
        {
            return false;
        }
        if !self.client_framer.at_boundary() && self.client_route == Route::Forward {
            self.release_deferred = true;
            return false;
        }
        let Some(mut server) = self.server.take() else {
            return false;
        };
        self.server_framer.reset();
        self.server_route = Route::Forward;
        lend_queue(&mut self.pending, &mut server);
        out.push(Action::ReleaseServer(server));
        true
    }

    /// Sends the pooler's own answers that are now due, unless a server message is half passed
    /// to the client (an answer must not land inside it).
    #[inline(always)]
    fn drain_fakes(&mut self, out: &mut Vec<Action>) {
        if !self.server_framer.at_boundary() {
            return;
        }
        while let Some(answer) = self.pending.pop_fake() {
            out.push(Action::ToClient(Bytes::from_static(answer)));
        }
    }

    /// Takes what the scratch buffer holds as one message (or run of messages) for the server.
    fn flush_scratch_to_server(&mut self, out: &mut Vec<Action>) {
        if !self.scratch.is_empty() {
            out.push(Action::ToServer(self.scratch.split().freeze()));
        }
    }
}

/// Turns a step into consumption of the current frame's `len` bytes.
#[inline(always)]
fn take_step(step: Step, len: usize, route: &mut Route, out: &mut Vec<Action>) -> Flow {
    match step {
        Step::Route(next) => {
            push_input(out, next, len);
            *route = next;
            Flow::Next
        }
        Step::Replace { replaced } => {
            push_input(out, Route::Discard, replaced.min(len));
            push_input(out, Route::Forward, len.saturating_sub(replaced));
            *route = Route::Forward;
            Flow::Next
        }
        Step::NeedMore => Flow::Wait,
        Step::NeedServer => {
            out.push(Action::NeedServer);
            Flow::Wait
        }
        Step::Terminate => {
            push_input(out, Route::Discard, len);
            out.push(Action::ClientTerminated);
            Flow::Stop
        }
    }
}

/// Appends input consumption, merging with the previous action when it is the same kind.
#[inline(always)]
fn push_input(out: &mut Vec<Action>, route: Route, n: usize) {
    if n == 0 {
        return;
    }
    match (out.last_mut(), route) {
        (Some(Action::Forward(m)), Route::Forward) | (Some(Action::Discard(m)), Route::Discard) => *m += n,
        (_, Route::Forward) => out.push(Action::Forward(n)),
        (_, Route::Discard) => out.push(Action::Discard(n)),
    }
}

/// A session letting go of `server` leaves its (empty) queue's allocation with the connection
/// if the connection carries none.
fn lend_queue(pending: &mut PendingQueue, server: &mut ServerState) {
    if pending.is_empty() && pending.has_room() && !server.spare_pending.has_room() {
        std::mem::swap(pending, &mut server.spare_pending);
    }
}
