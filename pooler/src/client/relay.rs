//! The relay loop of a logged-in client: bytes from the client and from its server connection
//! go through the session state machine, which says what to forward, what to answer and when
//! to take or give back a server connection. Headers are read, bodies are forwarded as they
//! came (straight from the input buffer when nothing was rewritten). The four buffers are
//! borrowed from the thread's free list (`crate::buffers`) while the client is busy and given
//! back when it is idle: an idle client waits for readiness holding no buffer, and the steady
//! state allocates nothing per message. A server connection left in an unknown state (client
//! gone mid-request, half a message) is closed, never pooled.

use super::login::LoggedIn;
use super::send_fatal;
use crate::buffers;
use crate::cancel::{CancelSlot, ClientKey};
use crate::config::PoolMode;
use crate::connections::ClientHandle;
use crate::pool::{AcquireError, Pool, PoolSettings};
use crate::runtime::Shared;
use crate::server::ServerConn;
use crate::session::{Action, RestingSession, ServerState, Session, SessionConfig, SessionError};
use crate::stream::Stream;
use crate::tick::Tick;
use bytes::{Buf, Bytes, BytesMut};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::io::poll_read_buf;

/// Why the relay stopped.
enum End {
    /// The client closed, sent Terminate, or its socket failed: nothing to tell it.
    ClientGone,
    /// Tell the client (FATAL) and close.
    Fatal { code: String, message: String },
    /// The session refused something; its own ErrorResponse says why.
    Session(SessionError),
}

impl End {
    fn fatal(code: &str, message: impl Into<String>) -> Self {
        End::Fatal { code: code.to_owned(), message: message.into() }
    }
}

/// Where a busy client goes once it holds no server connection.
enum Flow {
    /// Back to the idle wait.
    Idle,
    /// Asked to park (it waited warm, idle for a while); its buffers are given back.
    Park,
    /// Its next transaction's bytes came, and it moves to the io_uring thread with them
    /// (`Relay::move_to_ring`).
    Move,
}

enum Event {
    Client(std::io::Result<usize>),
    Server(std::io::Result<usize>),
    /// A time limit ran out.
    Timeout(Limit),
    Shutdown,
    /// Session mode, between transactions: the server connection is close_needed and
    /// server_fast_close is on.
    FastClose,
    /// Session mode, between transactions: the pool's connections may have become
    /// close_needed; look again (with the settings in force now).
    Closing,
    /// Idle long enough: the parking lot asks the relay to give up its task.
    Park,
}

/// The time limits on a client: between transactions, and on a transaction in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    /// client_idle_timeout: no transaction, nothing sent.
    ClientIdle,
    /// idle_transaction_timeout: in a transaction, no request under way.
    IdleInTransaction,
    /// query_timeout: a request the server has not answered.
    Query,
    /// transaction_timeout: the transaction as a whole.
    Transaction,
}

impl Limit {
    /// The error counted and the client's FATAL (PgBouncer's words).
    fn error(self) -> (&'static str, &'static str) {
        match self {
            Limit::ClientIdle => ("client_idle_timeout", "client_idle_timeout"),
            Limit::IdleInTransaction => ("idle_transaction_timeout", "idle transaction timeout"),
            Limit::Query => ("query_timeout", "query_timeout"),
            Limit::Transaction => ("transaction_timeout", "transaction timeout"),
        }
    }
}

pub(super) struct Relay {
    /// First field: leaves the registry before `client` closes (KILL shuts the socket down).
    me: ClientHandle,
    /// The pooler's state; also counts the client (client_connections) until the relay is
    /// gone, parked or not.
    shared: super::ClientCount,
    pool: Arc<Pool>,
    settings: Arc<PoolSettings>,
    client: Stream,
    /// Client bytes not yet consumed by the session.
    cin: BytesMut,
    /// Lent while busy (`buffers::io`): `cout`, bytes for the client when they cannot go
    /// straight from `sin`, the server bytes not yet consumed by the session; `sout`, bytes
    /// for the server when they cannot go straight from `cin`; the session's actions.
    io: Option<Box<buffers::Io>>,
    session: Session,
    /// Boxed: moved in and out of the pool at every transaction, and 8 bytes while idle.
    server: Option<Box<ServerConn>>,
    key: ClientKey,
    cancel: Arc<CancelSlot>,
    /// The busy wait's last poll of the client socket found nothing and left the task's waker
    /// registered for it (not a Pending from tokio's cooperative budget, which registers
    /// nothing). Until the client socket is polled again, bytes or a hangup from the client
    /// wake the task: the first poll of the wait between transactions can skip it.
    client_read_armed: bool,
    /// Bytes since the last transaction's end (added to the pool's totals there).
    bytes_in: u64,
    bytes_out: u64,
    /// Transactions relayed, counted up to 1: a client on a plain socket moves from the worker
    /// threads to the io_uring thread when its second one begins (`move_to_ring`).
    relayed: u8,
    /// `relay` returned to move to the ring, not to park.
    moving: bool,
    /// Counted in `GlobalStats::clients_on_ring` (a flag here, not a guard in `run`'s future:
    /// that would grow every idle client's task).
    counted_on_ring: bool,
}

/// A parked client (`super::parking`): the relay without what only a busy or waiting client
/// needs (buffers, the server connection, the tokio registration of its socket). 104 bytes
/// on the heap against the relay's 344: 10,000 idle clients are mostly parked.
pub(super) struct ParkedRelay {
    me: ClientHandle,
    shared: super::ClientCount,
    pool: Arc<Pool>,
    settings: Arc<PoolSettings>,
    socket: crate::stream::Detached,
    session: RestingSession,
    key: ClientKey,
    cancel: Arc<CancelSlot>,
}

impl ParkedRelay {
    /// The socket's descriptor (while parked, the epoll set watches it).
    pub(super) fn fd(&self) -> std::os::fd::RawFd {
        self.socket.as_raw_fd()
    }

    /// Back to a relay, its socket still detached: `run` puts it on the engine of the thread
    /// it runs on. If that fails the relay's first read fails, and it ends like a client whose
    /// socket broke.
    pub(super) fn wake(self) -> Relay {
        let ParkedRelay { me, shared, pool, settings, socket, session, key, cancel } = self;
        let client = Stream::Detached(Some(socket));
        Relay {
            me,
            shared,
            pool,
            settings,
            client,
            cin: BytesMut::new(),
            io: None,
            session: Session::wake(session),
            server: None,
            key,
            cancel,
            client_read_armed: false,
            bytes_in: 0,
            bytes_out: 0,
            relayed: 1,
            moving: false,
            counted_on_ring: false,
        }
    }
}

impl Relay {
    /// `shared` is the client's count, which holds the pooler's state.
    pub(super) fn new(shared: super::ClientCount, client: Stream, cin: BytesMut, login: LoggedIn) -> Self {
        let config = shared.config();
        let session_config = SessionConfig {
            pool_mode: login.settings.pool_mode,
            max_prepared_statements: config.max_prepared_statements,
            limits: crate::protocol::FrameLimits { max_message_len: config.max_packet_size, ..Default::default() },
            disable_pqexec: config.disable_pqexec,
        };
        login.pool.stats.clients.fetch_add(1, Ordering::Relaxed);
        login.admission.into_relay();
        // Who may park: plain sockets whose idle wait has no timer (see `next_idle_event`).
        if !client.is_tls() && login.settings.client_idle_timeout.is_none() {
            shared.parking.logged_in(login.me.entry_arc());
        }
        let mut cin = cin;
        buffers::give_back(&mut cin);
        Relay {
            me: login.me,
            shared,
            pool: login.pool,
            settings: login.settings,
            client,
            cin,
            io: None,
            session: Session::new(session_config, login.params),
            server: None,
            key: login.key,
            cancel: login.cancel,
            client_read_armed: false,
            bytes_in: 0,
            bytes_out: 0,
            relayed: 0,
            moving: false,
            counted_on_ring: false,
        }
    }

    /// Relays until the client leaves, then says goodbye. Not an `async fn`: the state machine
    /// of an `async fn` keeps its by-value arguments twice (the relay's state, 808 bytes, on
    /// top of the 1,344 it needs); an `async move` block uses its capture in place.
    /// When it has been idle a while it parks (`super::parking`): the task ends and the
    /// parking lot starts a new one with `run` when the client sends something.
    #[allow(clippy::manual_async_fn)]
    pub(super) fn run(mut self) -> impl std::future::Future<Output = ()> + Send + 'static {
        async move {
            if let Err(e) = self.client.adopt(true) {
                tracing::warn!("cannot put a client's socket on this thread's engine: {e}");
            }
            self.count_on_ring();
            loop {
                let Some(end) = self.relay().await else {
                    if std::mem::take(&mut self.moving) {
                        match self.hand_to_ring() {
                            Ok(()) => return,
                            Err(back) => {
                                self = *back;
                                let _ = self.client.adopt(true);
                                self.count_on_ring();
                                continue;
                            }
                        }
                    }
                    if let Stream::Ring(h) = &self.client {
                        // Its receive is stopped first: what arrives meanwhile stays readable,
                        // and then it does not park.
                        std::future::poll_fn(|cx| h.get().map_or(Poll::Ready(()), |s| s.poll_quiesce(cx))).await;
                    }
                    self.uncount_on_ring();
                    match super::parking::park(self) {
                        Ok(()) => return,
                        Err(back) => {
                            self = *back;
                            if let Err(e) = self.client.adopt(true) {
                                tracing::warn!("cannot put a client's socket back on this thread's engine: {e}");
                            }
                            self.count_on_ring();
                            continue;
                        }
                    }
                };
                self.uncount_on_ring();
                // Boxed: once per client, and not part of the future every idle client keeps.
                Box::pin(self.finish(end)).await;
                return;
            }
        }
    }

    /// Counts the client in `clients_on_ring` if its socket is on the ring now.
    fn count_on_ring(&mut self) {
        if matches!(self.client, Stream::Ring(_)) && !self.counted_on_ring {
            self.shared.stats.clients_on_ring.fetch_add(1, Ordering::Relaxed);
            self.counted_on_ring = true;
        }
    }

    /// No longer counted in `clients_on_ring` (it parks, moves or leaves).
    fn uncount_on_ring(&mut self) {
        if std::mem::take(&mut self.counted_on_ring) {
            self.shared.stats.clients_on_ring.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Hands the relay to the io_uring relaying thread, if one runs and the client's socket
    /// is plain (TLS stays on the worker threads); otherwise gives it back.
    fn hand_to_ring(mut self) -> Result<(), Box<Relay>> {
        let Some(engine) = self.shared.ring.get().cloned() else { return Err(Box::new(self)) };
        if self.client.is_tls() {
            return Err(Box::new(self));
        }
        if let Err(e) = self.client.detach() {
            tracing::debug!("client stays on the worker threads: {e}");
            return Err(Box::new(self));
        }
        engine.spawn(self.run());
        Ok(())
    }

    pub(super) fn shared(&self) -> &Arc<Shared> {
        &self.shared.0
    }

    pub(super) fn client_mut(&mut self) -> &mut Stream {
        &mut self.client
    }

    /// The relay in its parked form. Only once its socket is detached (`Stream::detach`), it
    /// holds no server connection and no bytes, and its session is at rest; otherwise it
    /// comes back unchanged. Counts not yet added to the pool's (bytes of an idle wait, a
    /// session's leftovers) are added first.
    pub(super) fn into_parked(mut self) -> Result<ParkedRelay, Box<Relay>> {
        let idle = matches!(self.client, Stream::Detached(Some(_)))
            && self.server.is_none()
            && self.cin.is_empty()
            && self.io.as_ref().is_none_or(|io| io.is_empty());
        if !idle {
            return Err(Box::new(self));
        }
        self.flush_counts();
        if !self.session.is_at_rest() {
            return Err(Box::new(self));
        }
        self.give_back_buffers();
        let socket = match std::mem::replace(&mut self.client, Stream::Detached(None)) {
            Stream::Detached(Some(socket)) => socket,
            other => {
                self.client = other;
                return Err(Box::new(self));
            }
        };
        let Relay { me, shared, pool, settings, session, key, cancel, .. } = self;
        Ok(ParkedRelay { me, shared, pool, settings, socket, session: session.rest(), key, cancel })
    }

    /// Relays until the client leaves (`Some`, why) or has been asked to park while idle
    /// (`None`).
    async fn relay(&mut self) -> Option<End> {
        // Bytes that came with the startup packet.
        if !self.cin.is_empty() {
            match Box::pin(self.busy(None)).await {
                Err(end) => return Some(end),
                Ok(Flow::Park) => return None,
                Ok(Flow::Move) => {
                    self.moving = true;
                    return None;
                }
                Ok(Flow::Idle) => {}
            }
        }
        loop {
            if self.shared.shutdown.is_stopping() {
                return Some(End::fatal("57P01", crate::connections::SHUTTING_DOWN));
            }
            self.follow_reload();
            match self.next_idle_event().await {
                Event::Client(Ok(0)) | Event::Client(Err(_)) => return Some(End::ClientGone),
                Event::Client(Ok(n)) => {
                    if self.move_to_ring() {
                        // Its bytes go with it: the relay starts on the ring with them.
                        self.bytes_in += n as u64;
                        self.moving = true;
                        return None;
                    }
                    // Boxed: a busy client's state (server I/O, checkout) lives on the heap
                    // while it is busy; an idle client's task keeps only the small idle wait.
                    match Box::pin(self.busy(Some(n))).await {
                        Err(end) => return Some(end),
                        Ok(Flow::Park) => return None,
                        Ok(Flow::Move) => {
                            self.moving = true;
                            return None;
                        }
                        Ok(Flow::Idle) => {}
                    }
                }
                Event::Timeout(limit) => {
                    let (kind, message) = limit.error();
                    self.pool.stats.count_error(kind);
                    return Some(End::fatal("08P01", message));
                }
                Event::Shutdown => return Some(End::fatal("57P01", crate::connections::SHUTTING_DOWN)),
                Event::FastClose => return Some(End::fatal("08P01", FAST_CLOSE)),
                Event::Closing => {}
                Event::Park => return None,
                Event::Server(_) => {
                    return Some(End::fatal("08006", "the pooler read from a server it no longer holds"))
                }
            }
        }
    }

    /// Whether to move to the io_uring thread now, as the next transaction begins: a client
    /// on a plain socket on the worker threads whose first transaction was relayed there. A
    /// client that connects for one transaction (`pgbench -C`, a script) never pays for the
    /// move (a hand-over between threads, the socket's epoll registration dropped); one that
    /// stays moves once (not for its Terminate). In session mode it moves at its first query: its session is one
    /// transaction here, it holds its server connection to the end.
    fn move_to_ring(&self) -> bool {
        let first = self.relayed == 0 && self.settings.pool_mode != PoolMode::Session;
        if first || self.server.is_some() || self.shared.ring.get().is_none() {
            return false;
        }
        // A client saying goodbye (Terminate) after its one transaction stays where it is.
        if self.cin.first() == Some(&crate::protocol::tag::frontend::TERMINATE) {
            return false;
        }
        matches!(self.client, Stream::Tcp(_) | Stream::Unix(_))
    }

    /// A busy client, from bytes it sent (`read` of them just now) until it holds no server
    /// connection again (in session mode: until it leaves). A client with a warm slot
    /// (`parking::WarmSlot`) stays here between transactions, buffers and all, until it sends
    /// the next one or is asked to park.
    async fn busy(&mut self, read: Option<usize>) -> Result<Flow, End> {
        if let Some(n) = read {
            self.bytes_in += n as u64;
        }
        // The idle wait polled the client since any registration the flag speaks of.
        self.client_read_armed = false;
        let mut warm = None;
        loop {
            self.follow_reload();
            self.transaction().await?;
            self.relayed = 1;
            if !self.may_wait_warm() {
                return Ok(Flow::Idle);
            }
            if warm.is_none() {
                warm = super::parking::WarmSlot::take(&self.shared.parking);
                if warm.is_none() {
                    return Ok(Flow::Idle);
                }
            }
            match self.warm_wait().await {
                Event::Client(Ok(0)) | Event::Client(Err(_)) => return Err(End::ClientGone),
                Event::Client(Ok(n)) => {
                    self.bytes_in += n as u64;
                    if self.move_to_ring() {
                        return Ok(Flow::Move);
                    }
                }
                Event::Park => {
                    // A parked relay holds no buffer.
                    self.give_back_buffers();
                    return Ok(Flow::Park);
                }
                _ => return Ok(Flow::Idle),
            }
        }
    }

    /// Between transactions: settings a RELOAD changed since the client logged in take effect
    /// for it now (timeouts, server_reset_query, pool_mode), as in PgBouncer.
    fn follow_reload(&mut self) {
        if self.pool.settings_changed_since(&self.settings) {
            self.settings = self.pool.settings();
            self.session.set_pool_mode(self.settings.pool_mode);
        }
    }

    /// Whether the client may wait for its next transaction in `warm_wait`: between
    /// transactions with nothing buffered, on a socket that could park, with no
    /// client_idle_timeout to keep, and no shutdown under way.
    fn may_wait_warm(&self) -> bool {
        self.server.is_none()
            && self.cin.is_empty()
            && self.io.as_ref().is_some_and(|io| io.is_empty())
            && !self.client.is_tls()
            && self.settings.client_idle_timeout.is_none()
            && !self.shared.shutdown.is_stopping()
    }

    /// The wait between two transactions of a warm client: bytes from it, or a request to
    /// park (it has been idle about a second), with its buffers kept. KILL and shutdown shut
    /// the socket's read side, which ends the wait like a client that left.
    async fn warm_wait(&mut self) -> Event {
        let entry = self.me.entry();
        entry.idle_from(self.shared.parking.tick());
        buffers::lend(&mut self.cin);
        // It holds its buffers: it reads as soon as the socket is ready, in the same poll.
        let (client, cin) = (&mut self.client, &mut self.cin);
        // The task's waker stays registered for a park request until one comes: once per wait.
        let mut registered = false;
        // Right after a transaction the client has not answered yet, and the busy wait's
        // registration for its socket usually still stands: then the first poll need not
        // look (a wake since then polls the task again, and every later poll reads).
        let mut skip_read = std::mem::take(&mut self.client_read_armed);
        let woke = std::future::poll_fn(|cx| {
            if !registered {
                entry.wake_on_park_request(cx);
                registered = true;
            }
            if entry.park_requested() {
                return Poll::Ready(None);
            }
            if std::mem::take(&mut skip_read) {
                return Poll::Pending;
            }
            poll_read_buf(Pin::new(&mut *client), cx, cin).map(Some)
        })
        .await;
        match woke {
            None => {
                entry.not_idle(false, true);
                Event::Park
            }
            Some(Err(e)) => {
                entry.not_idle(false, false);
                Event::Client(Err(e))
            }
            Some(read) => {
                entry.not_idle(true, false);
                Event::Client(read)
            }
        }
    }

    /// The idle waits' common part: until the client's socket is readable (`Ok`), or, if
    /// `parkable`, the parking lot asks this relay to park (`Event::Park`); a failed socket is
    /// `Event::Client(Err)`. Shutdown and KILL shut the socket's read side, which makes it
    /// readable: nothing else to listen for.
    async fn readable_or_park(&self, parkable: bool) -> Result<(), Event> {
        let (client, entry) = (&self.client, self.me.entry());
        let ready = std::future::poll_fn(|cx| {
            if parkable && entry.park_wanted(cx) {
                return std::task::Poll::Ready(None);
            }
            client.poll_read_ready(cx).map(Some)
        })
        .await;
        match ready {
            None => {
                entry.not_idle(false, true);
                Err(Event::Park)
            }
            Some(Err(e)) => {
                entry.not_idle(false, false);
                Err(Event::Client(Err(e)))
            }
            Some(Ok(())) => Ok(()),
        }
    }

    /// One transaction (in session mode: the whole session), from the client bytes in `cin`
    /// until it holds no server connection again.
    async fn transaction(&mut self) -> Result<(), End> {
        self.on_client_bytes().await?;
        while self.server.is_some() {
            match self.next_busy_event().await {
                Event::Client(Ok(0)) | Event::Client(Err(_)) => return Err(End::ClientGone),
                Event::Client(Ok(n)) => {
                    self.bytes_in += n as u64;
                    self.on_client_bytes().await?
                }
                Event::Server(Ok(0)) | Event::Server(Err(_)) => {
                    self.pool.stats.count_error("server_closed");
                    return Err(End::fatal("08006", "server conn crashed?"));
                }
                Event::Server(Ok(_)) => self.on_server_bytes().await?,
                Event::Timeout(limit) => {
                    if limit == Limit::Query {
                        // Stop the query too: PostgreSQL would run it to its end after the
                        // connection closed.
                        if let Some(server) = &self.server {
                            let (target, timeout) = (server.cancel.clone(), self.settings.server_connect_timeout);
                            tokio::spawn(async move { crate::cancel::forward(&target, timeout).await });
                        }
                    }
                    let (kind, message) = limit.error();
                    self.pool.stats.count_error(kind);
                    return Err(End::fatal("08P01", message));
                }
                Event::Shutdown => return Err(End::fatal("57P01", crate::connections::SHUTTING_DOWN)),
                Event::FastClose => return Err(End::fatal("08P01", FAST_CLOSE)),
                Event::Closing | Event::Park => {}
            }
        }
        Ok(())
    }

    /// The first of the transaction's time limits to run out, if any is set and applies now.
    fn next_limit(&self) -> Option<(Tick, Limit)> {
        let settings = &self.settings;
        if settings.idle_transaction_timeout.is_none()
            && settings.query_timeout.is_none()
            && settings.transaction_timeout.is_none()
        {
            return None;
        }
        let io = self.io.as_ref();
        let (query_started, attached_at) = (io.and_then(|io| io.query_started), io.and_then(|io| io.attached_at));
        let in_flight = self.session.requests_in_flight() > 0;
        let in_transaction = in_flight || self.session.transaction_status() != crate::protocol::TransactionStatus::Idle;
        let idle = settings
            .idle_transaction_timeout
            .filter(|_| in_transaction && !in_flight)
            .map(|t| (Tick::now().plus(t), Limit::IdleInTransaction));
        let query =
            settings.query_timeout.zip(query_started.filter(|_| in_flight)).map(|(t, at)| (at.plus(t), Limit::Query));
        let transaction = settings
            .transaction_timeout
            .zip(attached_at.filter(|_| in_transaction))
            .map(|(t, at)| (at.plus(t), Limit::Transaction));
        [idle, query, transaction].into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// Waits for bytes from the client or its server, or for a time limit
    /// (idle_transaction_timeout, query_timeout, transaction_timeout).
    async fn next_busy_event(&mut self) -> Event {
        // Session mode keeps the server between transactions: shutdown ends the client there.
        let between_transactions = self.session.transaction_status() == crate::protocol::TransactionStatus::Idle
            && self.session.requests_in_flight() == 0;
        if between_transactions && self.pool.settings_changed_since(&self.settings) {
            // A session-mode client between transactions: a RELOAD's (or SET's) timeouts and
            // server_fast_close apply to it from now on. Its pool mode stays what its session
            // began with.
            self.settings = self.pool.settings();
        }
        let timeout = self.next_limit();
        let Some(server) = self.server.as_mut() else {
            return Event::Server(Ok(0));
        };
        buffers::lend(&mut self.cin);
        let io = buffers::io(&mut self.io);
        buffers::lend(&mut io.sin);
        if between_transactions && self.shared.shutdown.is_stopping() {
            return Event::Shutdown;
        }
        if timeout.is_none() && !between_transactions {
            // The usual wait inside a transaction: one poll of each socket, no timer, no
            // shutdown listener (and none of `select!`'s bookkeeping).
            let (server, client, cin, sin) = (&mut server.stream, &mut self.client, &mut self.cin, &mut io.sin);
            let armed = &mut self.client_read_armed;
            // The first poll comes right after a request went out: the server's answer is
            // rarely there yet. After a wake it usually is.
            let mut first = true;
            return std::future::poll_fn(|cx| {
                let server_read = if std::mem::take(&mut first) {
                    server.poll_read_expecting_nothing(cx, sin)
                } else {
                    poll_read_buf(Pin::new(&mut *server), cx, sin)
                };
                if let Poll::Ready(r) = server_read {
                    return Poll::Ready(Event::Server(r));
                }
                if let Poll::Ready(r) = client.poll_read_expecting_nothing(cx, cin) {
                    *armed = false;
                    return Poll::Ready(Event::Client(r));
                }
                // Pending with budget left: the socket had nothing and the waker is registered.
                *armed = tokio::task::coop::has_budget_remaining();
                Poll::Pending
            })
            .await;
        }
        self.client_read_armed = false;
        // Only a session-mode client between transactions listens for shutdown here, and,
        // with server_fast_close, for its connection becoming close_needed (made before the
        // look at the mark, so a RECONNECT in between is not missed).
        let pool = &self.pool;
        let mut closing = (between_transactions && self.settings.server_fast_close).then(|| Box::pin(pool.closing()));
        if closing.is_some() && pool.close_mark().closes(server.generation, &server.addr) {
            return Event::FastClose;
        }
        let mut stopping = between_transactions.then(|| self.shared.shutdown.subscribe());
        let stop = async move {
            match (stopping.as_mut(), closing.as_mut()) {
                (Some(stopping), Some(closing)) => tokio::select! {
                    _ = stopping.wait() => Event::Shutdown,
                    _ = closing => Event::Closing,
                },
                (Some(stopping), None) => {
                    stopping.wait().await;
                    Event::Shutdown
                }
                _ => std::future::pending().await,
            }
        };
        let server_read = server.stream.read_buf(&mut io.sin);
        let client_read = self.client.read_buf(&mut self.cin);
        match timeout {
            None => tokio::select! {
                biased;
                r = server_read => Event::Server(r),
                r = client_read => Event::Client(r),
                event = stop => event,
            },
            Some((at, limit)) => tokio::select! {
                biased;
                r = server_read => Event::Server(r),
                r = client_read => Event::Client(r),
                _ = crate::clock::sleep(at.since(Tick::now())) => Event::Timeout(limit),
                event = stop => event,
            },
        }
    }

    /// An idle client's wait: without a buffer (all are given back) unless it sent part of a
    /// message, which stays in its buffer until the rest arrives.
    async fn next_idle_event(&mut self) -> Event {
        if !self.cin.is_empty() || self.settings.client_idle_timeout.is_some() {
            // Boxed: a partial message or client_idle_timeout needs a timer and a shutdown
            // listener; the common wait below is a few words in every idle client's task.
            return Box::pin(self.next_idle_event_timed()).await;
        }
        self.give_back_buffers();
        if let Some(read) = self.try_read_tls() {
            return Event::Client(read);
        }
        let parkable = !self.client.is_tls() && self.shared.parking.enabled();
        if parkable {
            self.me.entry().idle_from(self.shared.parking.tick());
        }
        loop {
            // Shutdown shuts the read side of every client without a server connection
            // (`Connections::kill_idle_clients`), which wakes this wait.
            if let Err(event) = self.readable_or_park(parkable).await {
                return event;
            }
            if let Some(read) = self.read_now() {
                self.me.entry().not_idle(true, false);
                return Event::Client(read);
            }
        }
    }

    /// rustls may already hold decrypted bytes that the socket will never signal again.
    fn try_read_tls(&mut self) -> Option<std::io::Result<usize>> {
        if !self.client.is_tls() {
            return None;
        }
        self.read_now()
    }

    /// Reads what the client sent into a lent buffer; None (and the buffer given back) if
    /// nothing is there yet.
    fn read_now(&mut self) -> Option<std::io::Result<usize>> {
        buffers::lend(&mut self.cin);
        match self.client.try_read_buf(&mut self.cin) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                buffers::give_back(&mut self.cin);
                None
            }
            read => Some(read),
        }
    }

    /// The idle wait with client_idle_timeout, or with part of a message buffered.
    async fn next_idle_event_timed(&mut self) -> Event {
        let mut stopping = self.shared.shutdown.subscribe();
        if self.shared.shutdown.is_stopping() {
            return Event::Shutdown;
        }
        if !self.cin.is_empty() {
            buffers::lend(&mut self.cin);
            let read = self.client.read_buf(&mut self.cin);
            return match self.settings.client_idle_timeout {
                Some(t) => tokio::select! {
                    r = read => Event::Client(r),
                    _ = crate::clock::sleep(t) => Event::Timeout(Limit::ClientIdle),
                    _ = stopping.wait() => Event::Shutdown,
                },
                None => tokio::select! {
                    r = read => Event::Client(r),
                    _ = stopping.wait() => Event::Shutdown,
                },
            };
        }
        self.give_back_buffers();
        if let Some(read) = self.try_read_tls() {
            return Event::Client(read);
        }
        let timeout = self.settings.client_idle_timeout.unwrap_or(std::time::Duration::MAX);
        let deadline = tokio::time::Instant::now().checked_add(timeout);
        loop {
            let client = &self.client;
            let readable = std::future::poll_fn(|cx| client.poll_read_ready(cx));
            let ready = match deadline {
                Some(at) => tokio::select! {
                    r = readable => r,
                    _ = crate::clock::sleep_until(at) => return Event::Timeout(Limit::ClientIdle),
                    _ = stopping.wait() => return Event::Shutdown,
                },
                None => tokio::select! {
                    r = readable => r,
                    _ = stopping.wait() => return Event::Shutdown,
                },
            };
            if let Err(e) = ready {
                return Event::Client(Err(e));
            }
            if let Some(read) = self.read_now() {
                return Event::Client(read);
            }
        }
    }

    /// Every byte the server sent has been consumed.
    fn server_input_is_empty(&self) -> bool {
        self.io.as_ref().is_none_or(|io| io.sin.is_empty())
    }

    /// Gives every empty buffer back to the thread's free list (an idle client keeps none).
    fn give_back_buffers(&mut self) {
        buffers::give_back(&mut self.cin);
        buffers::give_back_io(&mut self.io);
    }

    /// Runs the client's bytes through the session until it needs nothing more.
    async fn on_client_bytes(&mut self) -> Result<(), End> {
        // The one clock reading of this wake (stats, checkout, request_time).
        let mut now = Tick::now();
        if self.session.needs_server_first(&self.cin) {
            // The session would only ask for one: check it out before the session runs.
            now = self.attach_server(now).await?;
        }
        loop {
            let io = buffers::io(&mut self.io);
            buffers::lend_actions(&mut io.actions);
            self.session.on_client_input(&self.cin, &mut io.actions).map_err(End::Session)?;
            if io.query_started.is_none() && self.server.is_some() && self.session.requests_in_flight() > 0 {
                io.query_started = Some(now);
                // In session mode the connection stays attached: a transaction starts here.
                io.attached_at.get_or_insert(now);
            }
            let mut need_server = false;
            let mut release = None;
            let mut terminated = false;
            if let ([Action::Forward(n)], Some(server)) = (io.actions.as_slice(), self.server.as_mut()) {
                // The common case: whole messages passed on as they came.
                let n = *n;
                server.stream.send(&self.cin[..n]).await.map_err(|_| server_gone(&self.pool))?;
                self.cin.advance(n);
                return Ok(());
            }
            if let ([Action::BindHead(head), Action::Discard(skip), Action::Forward(n)], Some(server)) =
                (io.actions.as_slice(), self.server.as_mut())
            {
                // A Bind of a named statement (and what follows it): its rewritten head instead
                // of the client's, then the rest as it came.
                let (skip, n) = (*skip, *n);
                let rest = &self.cin[skip..skip + n];
                server.stream.send_pair(head.as_bytes(), rest).await.map_err(|_| server_gone(&self.pool))?;
                self.cin.advance(skip + n);
                return Ok(());
            }
            let mut consumed = 0;
            for action in io.actions.drain(..) {
                match action {
                    Action::Forward(n) => {
                        out_buf(&mut io.sout).extend_from_slice(&self.cin[consumed..consumed + n]);
                        consumed += n;
                    }
                    Action::Discard(n) => consumed += n,
                    Action::ToServer(bytes) => out_buf(&mut io.sout).extend_from_slice(&bytes),
                    Action::BindHead(head) => out_buf(&mut io.sout).extend_from_slice(head.as_bytes()),
                    Action::ToClient(bytes) => out_buf(&mut io.cout).extend_from_slice(&bytes),
                    Action::NeedServer => need_server = true,
                    Action::ReleaseServer(state) => release = Some(state),
                    Action::ClientTerminated => terminated = true,
                }
            }
            self.cin.advance(consumed);
            self.flush_server().await?;
            if let Some(state) = release {
                self.release_server(state, now).await;
            }
            self.flush_client().await?;
            if terminated {
                if self.settings.client_close_reset {
                    self.client.reset_on_close_if_peer_closed();
                }
                return Err(End::ClientGone);
            }
            if !need_server {
                return Ok(());
            }
            // A wait for a connection moves the clock on.
            now = self.attach_server(now).await?;
        }
    }

    /// Runs the server's bytes through the session and passes its answers to the client.
    async fn on_server_bytes(&mut self) -> Result<(), End> {
        // The one clock reading of this wake (query and transaction times, the release).
        let now = Tick::now();
        let io = buffers::io(&mut self.io);
        buffers::lend_actions(&mut io.actions);
        if let Err(e) = self.session.on_server_input(&io.sin, &mut io.actions) {
            self.pool.stats.count_error("server_protocol");
            tracing::warn!("closing a server connection that broke protocol: {e}");
            return Err(End::Session(e));
        }
        if self.session.requests_in_flight() == 0 {
            if let Some(started) = io.query_started.take() {
                let spent = now.micros_since(started);
                self.pool.stats.query_time_us.fetch_add(spent, Ordering::Relaxed);
            }
            // Session mode keeps the connection between transactions: each one is counted
            // when it ends, as PgBouncer does, not when the client leaves.
            if self.session.config().pool_mode == PoolMode::Session
                && self.session.transaction_status() == crate::protocol::TransactionStatus::Idle
            {
                self.count_transaction(now);
            }
        }
        let io = buffers::io(&mut self.io);
        let mut release = None;
        if let [Action::Forward(n)] = io.actions.as_slice() {
            let n = *n;
            self.client.send(&io.sin[..n]).await.map_err(|_| End::ClientGone)?;
            self.bytes_out += n as u64;
            io.sin.advance(n);
            return Ok(());
        }
        // The end of a transaction, nothing after it: the last answers go straight from the
        // input buffer, after the connection went back to the pool (a waiting client gets it
        // one system call earlier).
        if let [Action::Forward(n), Action::ReleaseServer(_)] = io.actions.as_slice() {
            let n = *n;
            if io.sin.len() == n && io.cout.is_empty() && io.sout.is_empty() {
                if let Some(Action::ReleaseServer(state)) = io.actions.pop() {
                    io.actions.clear();
                    // Counted before the release, which adds them to this transaction's bytes.
                    self.bytes_out += n as u64;
                    if let Some(conn) = self.give_back_to_pool(state, now) {
                        Box::pin(self.reset_and_release(conn)).await;
                    }
                    let io = buffers::io(&mut self.io);
                    let sent = self.client.send(&io.sin[..n]).await;
                    io.sin.clear();
                    return sent.map_err(|_| End::ClientGone);
                }
            }
        }
        let mut consumed = 0;
        for action in io.actions.drain(..) {
            match action {
                Action::Forward(n) => {
                    out_buf(&mut io.cout).extend_from_slice(&io.sin[consumed..consumed + n]);
                    consumed += n;
                }
                Action::Discard(n) => consumed += n,
                Action::ToClient(bytes) => out_buf(&mut io.cout).extend_from_slice(&bytes),
                Action::ToServer(bytes) => out_buf(&mut io.sout).extend_from_slice(&bytes),
                Action::BindHead(head) => out_buf(&mut io.sout).extend_from_slice(head.as_bytes()),
                Action::ReleaseServer(state) => release = Some(state),
                Action::NeedServer | Action::ClientTerminated => {}
            }
        }
        io.sin.advance(consumed);
        self.flush_server().await?;
        if let Some(state) = release {
            self.release_server(state, now).await;
        }
        self.flush_client().await
    }

    async fn flush_server(&mut self) -> Result<(), End> {
        let Some(io) = self.io.as_mut().filter(|io| !io.sout.is_empty()) else {
            return Ok(());
        };
        let Some(server) = self.server.as_mut() else {
            return Err(End::fatal("08006", "the pooler had bytes for a server it no longer holds"));
        };
        server.stream.send(&io.sout).await.map_err(|_| server_gone(&self.pool))?;
        io.sout.clear();
        Ok(())
    }

    async fn flush_client(&mut self) -> Result<(), End> {
        let Some(io) = self.io.as_mut().filter(|io| !io.cout.is_empty()) else {
            return Ok(());
        };
        self.client.send(&io.cout).await.map_err(|_| End::ClientGone)?;
        self.bytes_out += io.cout.len() as u64;
        io.cout.clear();
        Ok(())
    }

    /// Checks a server connection out of the pool (waiting at most query_wait_timeout) and
    /// hands its state to the session, sending the `SET`s that align its parameters. `now`:
    /// the clock as this wake read it; returns the time of the checkout.
    async fn attach_server(&mut self, now: Tick) -> Result<Tick, End> {
        let now = match self.attach_idle(now)? {
            Some(now) => now,
            // Boxed: waiting, opening or checking a connection is the slow path; its state
            // must not be part of every client's future.
            None => Box::pin(self.attach_after_wait(now)).await?,
        };
        if self.has_output_for_server() {
            self.flush_server().await?;
        }
        Ok(now)
    }

    /// The usual checkout, with no wait: an idle connection that needs no check is attached
    /// (`Some`, with the checkout time); `None` if there is none.
    fn attach_idle(&mut self, now: Tick) -> Result<Option<Tick>, End> {
        if self.me.entry().is_killed() {
            // Bytes that were already queued on the socket when KILL shut its read side.
            return Err(End::ClientGone);
        }
        let Some(conn) = self.pool.acquire_idle(now) else { return Ok(None) };
        self.attach(Ok(conn), now).map(Some)
    }

    /// Waits for a connection (the pool is exhausted, or the idle one must be checked first),
    /// counting the wait from `now`.
    async fn attach_after_wait(&mut self, now: Tick) -> Result<Tick, End> {
        // The wait below polls the client's socket.
        self.client_read_armed = false;
        let stats = &self.pool.stats;
        stats.clients_waiting.fetch_add(1, Ordering::Relaxed);
        self.me.waiting();
        // KILL_CLIENT (or shutdown) shuts the socket's read side: that ends the wait. The
        // client's stream is lent to the wait: the KILL watch looks at its readiness, and the
        // query_wait_notify NOTICE takes it out to write (a TLS stream needs it mutably) and
        // puts it back. The two never overlap: `Pool::wait` does not poll the watch while the
        // NOTICE is written.
        let client = std::sync::Mutex::new(std::mem::replace(&mut self.client, Stream::Detached(None)));
        let lent = || client.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = self.me.entry();
        let killed = std::future::poll_fn(|cx| match lent().poll_read_ready(cx) {
            std::task::Poll::Ready(_) if entry.is_killed() => std::task::Poll::Ready(()),
            // Bytes the client sent while it waits stay on the socket until it is served.
            _ => std::task::Poll::Pending,
        });
        // query_wait_notify: the pool's housekeeping says when (no timer per wait). PgBouncer's
        // words; a client that reads nothing holds this write, as it would hold the answer to
        // its query.
        let queued = || async {
            let mut stream = std::mem::replace(&mut *lent(), Stream::Detached(None));
            if let Err(e) = stream.send(queued_notice()).await {
                tracing::debug!("could not send the query_wait_notify NOTICE: {e}");
            }
            *lent() = stream;
        };
        let acquired = self.pool.acquire_unless(now, killed, queued).await;
        self.client = client.into_inner().unwrap_or_else(|poisoned| poisoned.into_inner());
        stats.clients_waiting.fetch_sub(1, Ordering::Relaxed);
        match acquired {
            Ok((conn, granted)) => self.attach(Ok(conn), granted),
            Err(e) => self.attach(Err(e), now),
        }
    }

    /// Gives the checked-out connection (or why there is none) to the session at `now`.
    fn attach(&mut self, acquired: Result<Box<ServerConn>, AcquireError>, now: Tick) -> Result<Tick, End> {
        self.me.attached(acquired.as_ref().ok().and_then(|c| c.registration.as_ref()), now);
        let mut conn = match acquired {
            Ok(conn) if self.me.entry().is_killed() => {
                // Granted as the KILL came: unused and clean, so it goes back (a KILL of the
                // whole pool raised its generation, and the release closes it then).
                self.me.detached();
                self.pool.release(conn);
                return Err(End::ClientGone);
            }
            Ok(mut conn) => {
                if let Err(e) = conn.stream.adopt(false) {
                    self.me.detached();
                    self.pool.close(conn, &format!("its socket could not move to the relaying thread: {e}"));
                    return Err(End::fatal("08006", "the server connection could not be used"));
                }
                conn
            }
            Err(AcquireError::WaitTimeout) => return Err(End::fatal("08P01", "query_wait_timeout")),
            Err(AcquireError::Closed) => return Err(End::fatal("08P01", "the pool was closed (KILL or RELOAD)")),
            // Killed while waiting: `finish` tells it why.
            Err(AcquireError::Cancelled) => return Err(End::ClientGone),
            Err(AcquireError::Server(e)) => {
                return Err(End::Fatal { code: e.sqlstate().to_owned(), message: e.to_string() })
            }
            Err(e @ AcquireError::LoginFailing(_)) => return Err(End::fatal("08P01", e.to_string())),
        };
        let state = conn.state.take().unwrap_or_else(|| Box::new(ServerState::default()));
        let io = buffers::io(&mut self.io);
        buffers::lend_actions(&mut io.actions);
        if let Err(e) = self.session.attach_server(state, &mut io.actions) {
            self.pool.close(conn, &format!("the client's session could not take it over: {e}"));
            return Err(End::Session(e));
        }
        for action in io.actions.drain(..) {
            if let Action::ToServer(bytes) = action {
                out_buf(&mut io.sout).extend_from_slice(&bytes);
            }
        }
        self.cancel.attach(&conn.cancel);
        self.pool.stats.assignments.fetch_add(1, Ordering::Relaxed);
        io.attached_at = Some(now);
        // The request that needed the server goes to it now.
        io.query_started = Some(now);
        self.server = Some(conn);
        Ok(now)
    }

    /// Bytes wait in the output buffer for the server.
    fn has_output_for_server(&self) -> bool {
        self.io.as_ref().is_some_and(|io| !io.sout.is_empty())
    }

    /// The session is done with the server: back to the pool, unless unread bytes remain.
    async fn release_server(&mut self, state: Box<ServerState>, now: Tick) {
        if !self.server_input_is_empty() {
            if let Some(conn) = self.server.take() {
                self.me.detached();
                self.cancel.detach();
                self.count_transaction(now);
                tracing::warn!(server = %conn.addr, "server sent bytes after its last answer; closing it");
                if let Some(io) = self.io.as_mut() {
                    io.sin.clear();
                }
                self.pool.close(conn, "it sent bytes after its last answer");
            }
            return;
        }
        if let Some(conn) = self.give_back_to_pool(state, now) {
            Box::pin(self.reset_and_release(conn)).await;
        }
    }

    /// Pools the attached server connection (every byte it sent has been read), or returns
    /// it if server_reset_query must run first (`reset_and_release`).
    fn give_back_to_pool(&mut self, state: Box<ServerState>, now: Tick) -> Option<Box<ServerConn>> {
        let mut conn = self.server.take()?;
        self.me.detached();
        self.cancel.detach();
        if let Some(registration) = conn.registration.as_ref() {
            registration.entry().set_prepared_statements(state.prepared_statements());
        }
        conn.state = Some(state);
        self.count_transaction(now);
        if self.settings.server_reset_query_always {
            return Some(conn);
        }
        self.pool.release_at(conn, now);
        None
    }

    /// A transaction ended (at `now`): its time with the server and the bytes since the last
    /// one.
    fn count_transaction(&mut self, now: Tick) {
        let stats = &self.pool.stats;
        // A checkout is a transaction in transaction mode; in session mode the connection is
        // released at the end of the session, and its transactions were counted one by one.
        if let Some(at) = self.io.as_mut().and_then(|io| io.attached_at.take()) {
            stats.xact_count.fetch_add(1, Ordering::Relaxed);
            stats.xact_time_us.fetch_add(now.micros_since(at), Ordering::Relaxed);
        }
        self.flush_counts();
        // How many statements the client has prepared now (SHOW CLIENTS).
        self.me.entry().set_prepared_statements(self.session.prepared_statements());
    }

    /// Adds what was counted since the last flush to the pool's totals: queries answered,
    /// bytes each way, named-statement work.
    fn flush_counts(&mut self) {
        let stats = &self.pool.stats;
        stats.query_count.fetch_add(self.session.take_queries_answered(), Ordering::Relaxed);
        stats.bytes_received.fetch_add(std::mem::take(&mut self.bytes_in), Ordering::Relaxed);
        stats.bytes_sent.fetch_add(std::mem::take(&mut self.bytes_out), Ordering::Relaxed);
        stats.add_prepared(self.session.take_prepared_counts());
    }

    /// Runs server_reset_query, then pools the connection (or closes it if the query fails).
    async fn reset_and_release(&self, mut conn: Box<ServerConn>) {
        let query = &self.settings.server_reset_query;
        if query.is_empty() {
            self.pool.release(conn);
            return;
        }
        match conn.run_query("reset_query", query, self.settings.server_connect_timeout).await {
            Ok(()) => {
                if query.to_ascii_lowercase().contains("discard all") {
                    if let Some(state) = conn.state.as_mut() {
                        state.forget_prepared_statements();
                    }
                    if let Some(registration) = conn.registration.as_ref() {
                        registration.entry().set_prepared_statements(0);
                    }
                }
                self.pool.release(conn);
            }
            Err(e) => self.pool.close(conn, &format!("server_reset_query failed: {e}")),
        }
    }

    /// Tells the client why (if it should know), and pools or closes the server connection.
    async fn finish(&mut self, end: End) {
        // KILL / KILL_CLIENT shut the socket's read side: tell the client why.
        let end = match self.me.entry().kill_reason() {
            Some(reason) if reason == crate::connections::SHUTTING_DOWN => End::fatal("57P01", reason),
            Some(reason) => End::fatal("08P01", reason),
            None => end,
        };
        match &end {
            End::ClientGone => {}
            End::Fatal { code, message } => {
                let _ = self.flush_client().await;
                let _ = send_fatal(&mut self.client, code, message).await;
            }
            End::Session(e) => {
                if e.is_client_fault() {
                    self.pool.stats.count_error("client_protocol");
                    tracing::info!("closing client: {e}");
                }
                let _ = self.flush_client().await;
                let _ = self.client.send(&e.to_error_response()).await;
            }
        }
        if let Some(conn) = self.server.take() {
            self.me.detached();
            self.cancel.detach();
            let reusable =
                self.session.server_is_reusable() && self.server_input_is_empty() && !matches!(end, End::Fatal { .. });
            let state = self.session.take_server();
            match (reusable, state) {
                (true, Some(state)) => {
                    let mut conn = conn;
                    conn.state = Some(state);
                    // The session's mode: a RELOAD does not change it under a held connection.
                    if self.session.config().pool_mode == PoolMode::Session || self.settings.server_reset_query_always {
                        Box::pin(self.reset_and_release(conn)).await;
                    } else {
                        self.pool.release(conn);
                    }
                }
                _ => match &end {
                    End::Fatal { message, .. } => self.pool.close(conn, &format!("its client was closed: {message}")),
                    _ => self.pool.close(conn, "its client left mid-request"),
                },
            }
        }
        self.flush_counts();
        if self.settings.log_disconnections {
            let reason = match &end {
                End::ClientGone => std::borrow::Cow::Borrowed("client close request"),
                End::Fatal { message, .. } => std::borrow::Cow::Borrowed(message.as_str()),
                End::Session(e) => std::borrow::Cow::Owned(e.to_string()),
            };
            super::log_client_closed(self.me.entry(), &reason);
        }
        self.pool.client_left();
        self.shared.cancels.unregister(self.key);
        // After an error the pooler sent, shut the write side first: bytes the client sent
        // that were never read would otherwise make the close a reset, which can discard the
        // error before the client reads it. TLS streams always send close_notify. A client
        // that left needs neither: the close sends the FIN (one system call less per client).
        if !matches!(end, End::ClientGone) || self.client.is_tls() {
            let _ = self.client.shutdown().await;
        }
        self.give_back_buffers();
    }
}

/// What a session-mode client is told when server_fast_close ends its session.
const FAST_CLOSE: &str = "database configuration changed (server_fast_close): reconnect";

/// The NOTICE a client gets after query_wait_notify in the queue.
fn queued_notice() -> &'static [u8] {
    static NOTICE: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    NOTICE.get_or_init(|| {
        let message = "No server connection available in postgres backend, client being queued";
        let mut buf = BytesMut::new();
        crate::protocol::ErrorResponse::new(crate::protocol::Severity::Notice, "00000", message)
            .encode_notice(&mut buf);
        buf.freeze()
    })
}

fn server_gone(pool: &Pool) -> End {
    pool.stats.count_error("server_closed");
    End::fatal("08006", "server conn crashed?")
}

/// An output buffer, borrowed from the free list when the relay holds none.
fn out_buf(buf: &mut BytesMut) -> &mut BytesMut {
    if buf.capacity() == 0 {
        buffers::lend(buf);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned_future_size<Fut>(_: impl FnOnce(Relay) -> Fut) -> usize {
        std::mem::size_of::<Fut>()
    }

    /// What an idle client costs beyond a few small heap objects: the relay's future (its
    /// state and the idle wait). The wait is a readiness poll (8 bytes of state); timers,
    /// server I/O and the goodbye are boxed while they run, and the state machine does not
    /// keep the relay twice (see `Relay::run`). The output and server-input buffers are a lent
    /// box (`buffers::Io`), the session parameters a shared map, and the prepared statement
    /// map is allocated with the first statement. 432 bytes in release builds, 440 in debug
    /// builds (it was 2,160 with `run` an `async fn`, a `select!` with shutdown in the wait and
    /// an unboxed ServerConn, and 712 with the buffers and parameters inline).
    #[test]
    fn an_idle_relay_future_stays_small() {
        let size = owned_future_size(|r| r.run());
        assert!(size <= BOUND, "the relay's future is {size} bytes, more than {BOUND}: box the large, rare part");
    }

    const BOUND: usize = 480;

    /// A client that finds no idle server connection waits in a boxed future
    /// (`attach_after_wait`), made and moved into its box at every such checkout: at 100
    /// clients on a pool of 20, nearly every transaction. A server login, the check query and
    /// the query_wait_notify NOTICE are boxed inside it, only when they happen. It was 1,904
    /// bytes with them inline (optimised build), and copying it cost about 200 instructions per
    /// transaction.
    #[test]
    fn a_waiting_checkout_keeps_its_rare_parts_out_of_line() {
        let with_relay = owned_future_size(|mut r: Relay| async move {
            let _ = r.attach_after_wait(Tick::now()).await;
        });
        let size = with_relay - std::mem::size_of::<Relay>();
        assert!(size <= WAIT_BOUND, "a waiting checkout's future is {size} bytes, more than {WAIT_BOUND}");
    }

    const WAIT_BOUND: usize = 512;

    /// A parked client is a `ParkedRelay` in a box, and 10,000 idle clients are mostly
    /// parked: 104 bytes (glibc's malloc takes the size plus 8, rounded up to 16: a 112-byte
    /// chunk), where the whole relay (344 bytes) took 352.
    #[test]
    fn a_parked_client_keeps_a_small_box() {
        let size = std::mem::size_of::<ParkedRelay>();
        assert!(size <= 104, "a parked relay is {size} bytes, more than 104: keep only what outlives an idle wait");
    }
}
