//! One pool of server connections per (server, database, user): idle connections, how many
//! are open, and the clients waiting for one, behind one mutex held for a few instructions.
//! A released connection goes straight to the longest-waiting client. Owns limits and
//! timeouts of checkout (pool_size, reserve_pool, max_db/user_connections, query_wait_timeout,
//! server_lifetime, server_check_*); it never reads client traffic.

mod maintain;
mod registry;
mod settings;

pub use registry::{PoolKey, PoolKeyRef, Registry};

use crate::connections::Connections;
use registry::ConnCounter;
pub use settings::{secs, PoolSettings};

use crate::config::LoadBalanceHosts;
use crate::server::{LoginTarget, ServerConn, ServerError};
use crate::session::ParamMap;
use crate::stats::PoolStats;
use crate::tick::Tick;
use crate::topology::ServerAddr;
use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::oneshot;

#[derive(Debug, Error)]
pub enum AcquireError {
    #[error("query_wait_timeout")]
    WaitTimeout,
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("the pool was closed")]
    Closed,
    /// The caller's `cancelled` future resolved while it waited (its client was killed).
    #[error("the wait was cancelled")]
    Cancelled,
    /// Every server of the pool failed a login less than server_login_retry ago.
    #[error("server login has been failing, try again later (server_login_retry): {0}")]
    LoginFailing(String),
}

/// A server whose last login failed, skipped until `until` (server_login_retry).
struct LoginFailure {
    addr: ServerAddr,
    until: Instant,
    error: String,
}

/// What a waiting client is handed.
enum Grant {
    Conn(Box<ServerConn>),
    /// Permission to open one more connection (already counted in `total`).
    Slot,
    /// query_wait_timeout passed (`Pool::check_waiters`): the wait ends with that error.
    Expired,
    /// query_wait_notify passed (`Pool::check_waiters`): the client is told it is queued and
    /// goes on waiting, in its place, on this receiver.
    Queued(oneshot::Receiver<Grant>),
}

/// A client waiting for a connection, in arrival order. Its timeouts are watched by the pool's
/// housekeeping (`Pool::check_waiters`, every `maintain::WAITER_CHECK`), as PgBouncer's
/// janitor does: a wait sets no timer of its own, which on a busy pool is most checkouts.
struct Waiter {
    tx: oneshot::Sender<Grant>,
    /// When the client began to wait (its first attempt, if it waited more than once).
    since: Tick,
    /// Told it is queued (query_wait_notify) during this checkout, in this wait or an earlier one.
    notified: bool,
}

impl Waiter {
    fn send(self, grant: Grant) -> Result<(), Grant> {
        self.tx.send(grant)
    }

    fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

struct PoolState {
    settings: Arc<PoolSettings>,
    /// How new server connections log in; `login.addr` is the first of `servers`.
    login: Arc<LoginTarget>,
    /// Where new server connections go, in turn (never empty).
    servers: Arc<[ServerAddr]>,
    /// Which of `servers` the next new connection goes to.
    next_server: usize,
    /// A server left `servers` while others stayed: connections to it close at their release.
    pruning: bool,
    /// Boxed connections: a checkout or release moves a pointer, and a client's relay holds
    /// 8 bytes for its server connection instead of the connection itself.
    #[allow(clippy::vec_box)]
    idle: Vec<Box<ServerConn>>,
    /// Connections open or being opened.
    total: u32,
    /// Connections checked out by clients.
    active: u32,
    waiters: VecDeque<Waiter>,
    /// Server ParameterStatus values of the first login, for client welcomes.
    welcome: Option<Arc<Vec<(String, String)>>>,
    /// The session parameters of the last client that logged in, shared with the next ones
    /// that have the same (`welcome_for`).
    client_params: Option<ClientParams>,
    /// The last welcome encoded (`welcome_for`).
    welcome_wire: Option<WelcomeWire>,
    /// Bumped by RECONNECT: connections from an older generation are closed on release.
    generation: u64,
    closed: bool,
    /// PAUSE: no connection is handed out until RESUME.
    paused: bool,
    /// Servers whose last login failed within server_login_retry.
    login_failures: Vec<LoginFailure>,
}

impl PoolState {
    /// The next server in turn whose last login did not fail within server_login_retry;
    /// Err with the last failure's error when every one did.
    fn next_ready_login(&mut self, now: Instant) -> Result<Arc<LoginTarget>, String> {
        self.login_failures.retain(|f| f.until > now);
        for _ in 0..self.servers.len().max(1) {
            let login = self.next_login();
            if !self.login_failures.iter().any(|f| f.addr == login.addr) {
                return Ok(login);
            }
            if self.settings.load_balance_hosts == LoadBalanceHosts::Disable {
                self.next_server = self.next_server.wrapping_add(1);
            }
        }
        Err(self.login_failures.last().map(|f| f.error.clone()).unwrap_or_default())
    }

    /// A login to `addr` failed: with server_login_retry, new connections skip it that long;
    /// with load_balance_hosts = disable, they move on to the next host.
    fn login_failed(&mut self, addr: &ServerAddr, now: Instant, error: String) {
        if self.settings.load_balance_hosts == LoadBalanceHosts::Disable
            && self.servers.get(self.next_server % self.servers.len().max(1)) == Some(addr)
        {
            self.next_server = self.next_server.wrapping_add(1);
        }
        self.login_failures.retain(|f| f.addr != *addr);
        if let Some(retry) = self.settings.server_login_retry {
            self.login_failures.push(LoginFailure { addr: addr.clone(), until: now + retry, error });
        }
    }

    /// Where the idle connection the next checkout takes is: the one released last (PgBouncer's
    /// default, LIFO: few connections do most of the work, the others time out), or with
    /// server_round_robin the one idle longest, so the load spreads over every open connection
    /// and so over every server of a database with several.
    fn next_idle(&self) -> Option<usize> {
        if self.settings.server_round_robin {
            (!self.idle.is_empty()).then_some(0)
        } else {
            self.idle.len().checked_sub(1)
        }
    }

    fn take_idle(&mut self) -> Option<Box<ServerConn>> {
        let at = self.next_idle()?;
        Some(self.idle.remove(at))
    }

    /// How the next new server connection logs in: the pool's servers take turns, or with
    /// load_balance_hosts = disable the same one goes on until a login to it fails.
    fn next_login(&mut self) -> Arc<LoginTarget> {
        let turn = self.next_server;
        if self.settings.load_balance_hosts == LoadBalanceHosts::RoundRobin {
            self.next_server = self.next_server.wrapping_add(1);
        }
        match self.servers.get(turn % self.servers.len().max(1)) {
            Some(addr) if *addr != self.login.addr => {
                Arc::new(LoginTarget { addr: addr.clone(), ..LoginTarget::clone(&self.login) })
            }
            _ => self.login.clone(),
        }
    }
}

/// The tracked parameters the last client to log in sent, and the session parameters they
/// gave it: the next client that sends the same gets the same map without a look at the
/// server's values.
struct ClientParams {
    asked: [Option<Box<str>>; crate::session::SLOTS],
    params: ParamMap,
}

/// What a logging-in client takes from its pool (`Pool::welcome_for`).
pub struct Welcome {
    pub params: ParamMap,
    /// ParameterStatus messages, one per server parameter.
    pub messages: bytes::Bytes,
    pub settings: Arc<PoolSettings>,
}

/// ParameterStatus messages for a client welcome, with what they were made from (held, so
/// that the pointer comparisons in `welcome_for` cannot meet a reused address).
struct WelcomeWire {
    params: ParamMap,
    welcome: Arc<Vec<(String, String)>>,
    messages: bytes::Bytes,
}

/// A pool's server connections by state (PgBouncer's sv_*), and its waiting clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStates {
    pub active: u32,
    pub idle: u32,
    /// Idle past server_check_delay: checked before reuse.
    pub used: u32,
    /// Running server_check_query.
    pub tested: u32,
    /// Being opened and logged in.
    pub login: u32,
    pub waiting: u32,
}

pub struct Pool {
    pub key: PoolKey,
    state: Mutex<PoolState>,
    /// The address of the settings now in force (`PoolState::settings`), to compare with a
    /// client's copy without the lock (`settings_changed_since`); never dereferenced.
    settings_at: AtomicUsize,
    pub stats: PoolStats,
    db_conns: Arc<ConnCounter>,
    user_conns: Arc<ConnCounter>,
    /// Where server connections are registered for SHOW SERVERS.
    connections: Arc<Connections>,
    /// Told when connections in use become close_needed (RECONNECT, KILL, the server moved or
    /// left the list): session-mode clients between transactions with server_fast_close wait
    /// on it.
    closing: tokio::sync::Notify,
    /// A RELOAD removed its database: dropped once unused (`maintain`).
    orphaned: std::sync::atomic::AtomicBool,
}

enum Next {
    /// An idle connection and what must be done before it is handed out.
    Conn(Box<ServerConn>, Checkout),
    Open,
    Wait(oneshot::Receiver<Grant>),
}

/// [`Pool::close_mark`].
#[derive(Debug, Clone)]
pub struct CloseMark {
    pub generation: u64,
    /// Set while connections to servers that left the list may remain.
    pub servers: Option<Arc<[ServerAddr]>>,
}

impl CloseMark {
    /// Whether a connection opened at `generation` to `server` closes when released.
    pub fn closes(&self, generation: u64, server: &ServerAddr) -> bool {
        generation < self.generation || self.servers.as_ref().is_some_and(|list| !list.contains(server))
    }
}

/// Which client limit a login ran into ([`Pool::admit_client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientLimit {
    Database,
    User,
}

impl ClientLimit {
    /// The setting, also the kind of error counted.
    pub fn setting(self) -> &'static str {
        match self {
            ClientLimit::Database => "max_db_client_connections",
            ClientLimit::User => "max_user_client_connections",
        }
    }

    /// PgBouncer's words for the refusal.
    pub fn message(self) -> String {
        format!("client connections exceeded ({})", self.setting())
    }
}

/// A login counted in its database's and user's clients; the count is given back when this
/// is dropped, unless the client's relay took it over ([`Admission::into_relay`]).
#[must_use]
pub struct Admission {
    pool: Arc<Pool>,
    armed: bool,
}

impl Admission {
    /// The relay counts the client from now on and gives the count back when it ends
    /// ([`Pool::client_left`]).
    pub fn into_relay(mut self) {
        self.armed = false;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if self.armed {
            self.pool.db_conns.clients.fetch_sub(1, Ordering::Relaxed);
            self.pool.user_conns.clients.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Pool {
    /// Counts a new client of this pool in its database's and its user's clients, unless
    /// that would pass `db_limit` or `user_limit` (0: no limit).
    pub fn admit_client(self: &Arc<Self>, db_limit: u32, user_limit: u32) -> Result<Admission, ClientLimit> {
        if !take_one(&self.db_conns.clients, db_limit) {
            return Err(ClientLimit::Database);
        }
        if !take_one(&self.user_conns.clients, user_limit) {
            self.db_conns.clients.fetch_sub(1, Ordering::Relaxed);
            return Err(ClientLimit::User);
        }
        Ok(Admission { pool: self.clone(), armed: true })
    }

    /// A client whose relay took over its [`Admission`] has left.
    pub fn client_left(&self) {
        self.stats.clients.fetch_sub(1, Ordering::Relaxed);
        self.db_conns.clients.fetch_sub(1, Ordering::Relaxed);
        self.user_conns.clients.fetch_sub(1, Ordering::Relaxed);
    }

    fn new(
        key: PoolKey,
        settings: PoolSettings,
        login: LoginTarget,
        servers: Arc<[ServerAddr]>,
        db_conns: Arc<ConnCounter>,
        user_conns: Arc<ConnCounter>,
        connections: Arc<Connections>,
    ) -> Self {
        let settings = Arc::new(settings);
        Pool {
            key,
            settings_at: AtomicUsize::new(Arc::as_ptr(&settings) as usize),
            state: Mutex::new(PoolState {
                settings,
                servers: if servers.is_empty() { Arc::new([login.addr.clone()]) } else { servers },
                login: Arc::new(login),
                next_server: 0,
                pruning: false,
                idle: Vec::new(),
                total: 0,
                active: 0,
                waiters: VecDeque::new(),
                welcome: None,
                client_params: None,
                welcome_wire: None,
                generation: 0,
                closed: false,
                paused: false,
                login_failures: Vec::new(),
            }),
            stats: PoolStats::default(),
            db_conns,
            user_conns,
            connections,
            closing: tokio::sync::Notify::new(),
            orphaned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A RELOAD removed the pool's database, as PgBouncer's kill of a database that left the
    /// configuration: waiting clients are let go, idle connections closed, those in use closed
    /// at their release, and the pool is dropped once nothing uses it. True the first time.
    pub fn orphan(&self) -> bool {
        if self.orphaned.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.close_all(false, "its database was removed from the configuration");
        true
    }

    /// The database came back (a later RELOAD) before the pool was dropped.
    pub fn adopt(&self) {
        self.orphaned.store(false, Ordering::SeqCst);
    }

    pub(super) fn is_orphaned(&self) -> bool {
        self.orphaned.load(Ordering::SeqCst)
    }

    /// Resolves when connections in use may have become close_needed since it was made (see
    /// [`Pool::close_mark`]); create it before looking at the mark.
    pub fn closing(&self) -> tokio::sync::futures::Notified<'_> {
        self.closing.notified()
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        // A panic while holding this lock would be a bug; the state stays consistent enough
        // to keep serving (counts only), so recover rather than poison every client.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn settings(&self) -> Arc<PoolSettings> {
        self.lock().settings.clone()
    }

    /// SHOW POOLS' load_balance_hosts: the mode in use when the pool has several servers.
    pub fn load_balance_hosts(&self) -> Option<&'static str> {
        let st = self.lock();
        (st.servers.len() > 1).then(|| st.settings.load_balance_hosts.name())
    }

    /// RELOAD: new limits apply to the next checkout; a larger pool lets waiters open more.
    /// New server connections are opened as the reloaded configuration says (database name,
    /// server_connect_timeout, server_tls_*: a rotated CA or client certificate, tcp_*); the open
    /// ones stay until they close (RECONNECT closes them at their next release).
    ///
    /// A database whose entry now points at another server moves with its clients, as in
    /// PgBouncer: idle connections to the old server are closed now, the others when their
    /// client releases them (a transaction finishes on the server it began on; a session-mode
    /// client keeps its connection until it leaves), and every checkout after that opens or
    /// finds a connection to the new server. A database with several servers (a cluster's
    /// standbys) moves so when one of its servers is gone; one added only takes its turn for
    /// new connections. Returns the old servers when they moved.
    pub fn update_settings(
        &self,
        settings: PoolSettings,
        servers: &Arc<[ServerAddr]>,
        dbname: &str,
        tls: Arc<crate::tls::ServerTls>,
    ) -> Option<String> {
        let (moved, idle, pruned) = {
            let mut st = self.lock();
            let mut login = LoginTarget::clone(&st.login);
            let gone = !servers.is_empty() && st.servers.iter().any(|old| !servers.contains(old));
            let moved = gone.then(|| crate::topology::ServerList(&st.servers).to_string());
            // Some of several servers stay (a standby lost): only the connections to those that
            // left go.
            let pruned = gone && st.servers.iter().any(|old| servers.contains(old));
            if let Some(first) = servers.first() {
                login.addr = first.clone();
                if st.servers != *servers {
                    // New information about the servers: a failed login is not held against
                    // a server any more (it may be the new primary).
                    st.login_failures.clear();
                }
                st.servers = servers.clone();
            }
            login.dbname = dbname.to_owned();
            login.connect_timeout = settings.server_connect_timeout;
            login.tcp = settings.tcp;
            login.tls = tls;
            st.login = Arc::new(login);
            st.settings = Arc::new(settings);
            self.settings_at.store(Arc::as_ptr(&st.settings) as usize, Ordering::Relaxed);
            let idle = if pruned {
                st.pruning = true;
                let (left, kept): (Vec<_>, Vec<_>) =
                    std::mem::take(&mut st.idle).into_iter().partition(|c| !servers.contains(&c.addr));
                st.idle = kept;
                left
            } else if moved.is_some() {
                // Connections to the old server close at their release; the new server's
                // parameters welcome the next login.
                st.generation += 1;
                st.welcome = None;
                st.client_params = None;
                std::mem::take(&mut st.idle)
            } else {
                Vec::new()
            };
            while self.grant_slot(&mut st, false) {}
            (moved, idle, pruned)
        };
        if moved.is_some() || pruned {
            self.closing.notify_waiters();
        }
        for conn in idle {
            let reason = if pruned {
                "its server is no longer one of the database's"
            } else {
                "the database moved to another server"
            };
            self.close_idle(conn, reason);
        }
        moved
    }

    /// Whether RELOAD replaced the settings since `mine` was taken (one load, no lock). The
    /// holder of `mine` keeps it alive, so a new settings object cannot have its address.
    pub fn settings_changed_since(&self, mine: &Arc<PoolSettings>) -> bool {
        self.settings_at.load(Ordering::Relaxed) != Arc::as_ptr(mine) as usize
    }

    /// No server connection, no client and no waiter, and not paused: what an automatic
    /// database's pool must be for autodb_idle_timeout to count.
    pub(super) fn is_unused(&self) -> bool {
        let st = self.lock();
        st.total == 0
            && !st.paused
            && st.waiters.iter().all(Waiter::is_closed)
            && self.stats.clients.load(Ordering::Relaxed) == 0
    }

    /// (open, checked out, idle, waiting clients)
    pub fn counts(&self) -> (u32, u32, u32, u32) {
        let st = self.lock();
        (st.total, st.active, st.idle.len() as u32, st.waiters.iter().filter(|w| !w.is_closed()).count() as u32)
    }

    /// The server connections by PgBouncer's states and the waiting clients, as SHOW POOLS and
    /// /metrics report them.
    pub fn server_states(&self, now: Tick) -> ServerStates {
        let (_total, checked_out, idle, waiting) = self.counts();
        let used = self.used_servers(now).len() as u32;
        let login = self.stats.servers_login.load(Ordering::Relaxed);
        let tested = self.stats.servers_tested.load(Ordering::Relaxed);
        ServerStates {
            // The pool counts a connection being opened or tested as checked out.
            active: checked_out.saturating_sub(login + tested),
            idle: idle.saturating_sub(used),
            used: used.min(idle),
            tested,
            login,
            waiting,
        }
    }

    /// Idle connections that must run server_check_query before their next client (PgBouncer's
    /// `used` state): the ids of their SHOW SERVERS rows. Read from the idle list when asked,
    /// so the release path keeps no extra time.
    pub fn used_servers(&self, now: Tick) -> Vec<u64> {
        let st = self.lock();
        st.idle
            .iter()
            .filter(|c| needs_check_query(c, &st.settings, now))
            .filter_map(|c| c.registration.as_ref().map(|r| r.entry().id))
            .collect()
    }

    /// What a client logging in with `asked` (the tracked parameters of its startup packet,
    /// `ParamMap::values_of`) gets from the pool, under one lock: its session parameters (the
    /// server's values, its own where it sent them), the ParameterStatus messages that welcome
    /// it, and the settings in force. None until a first server connection has logged in
    /// (`acquire` records its parameters).
    ///
    /// Clients of a pool nearly all log in with the same values: they share one `ParamMap`
    /// (an idle client costs 8 bytes for it), and the messages are encoded once for them, not
    /// at every login (a new connection per transaction spent about 4,000 instructions on them).
    pub fn welcome_for(&self, asked: [Option<&str>; crate::session::SLOTS]) -> Option<Welcome> {
        let mut st = self.lock();
        let welcome = st.welcome.clone()?;
        let params = match &st.client_params {
            Some(last) if last.asked.iter().map(Option::as_deref).eq(asked) => last.params.clone(),
            _ => {
                let mut values = ParamMap::values_of(welcome.iter().map(|(k, v)| (k.as_str(), v.as_str())));
                for (value, asked) in values.iter_mut().zip(asked) {
                    if asked.is_some() {
                        *value = asked;
                    }
                }
                let params = match &st.client_params {
                    Some(last) if last.params.has_values(&values) => last.params.clone(),
                    _ => ParamMap::from_values(&values),
                };
                st.client_params =
                    Some(ClientParams { asked: asked.map(|v| v.map(Box::from)), params: params.clone() });
                params
            }
        };
        let messages = match &st.welcome_wire {
            Some(wire) if wire.params.shares_values_with(&params) && Arc::ptr_eq(&wire.welcome, &welcome) => {
                wire.messages.clone()
            }
            _ => {
                let mut out = bytes::BytesMut::with_capacity(512);
                for (name, value) in welcome.iter() {
                    let value =
                        crate::session::TrackedParam::from_name(name).and_then(|p| params.get(p)).unwrap_or(value);
                    crate::protocol::message::write_parameter_status(name, value, &mut out);
                }
                let messages = out.freeze();
                let wire = WelcomeWire { params: params.clone(), welcome, messages: messages.clone() };
                st.welcome_wire = Some(wire);
                messages
            }
        };
        Some(Welcome { params, messages, settings: st.settings.clone() })
    }

    /// Room for one more connection under pool_size (+ reserve), max_db_connections and
    /// max_user_connections; if so it is counted.
    fn try_open(&self, st: &mut PoolState, reserve: bool) -> bool {
        let s = &st.settings;
        let limit = s.pool_size + if reserve { s.reserve_pool } else { 0 };
        if st.total >= limit {
            return false;
        }
        if !take_one(&self.db_conns.open, s.max_db_connections) {
            return false;
        }
        if !take_one(&self.user_conns.open, s.max_user_connections) {
            self.db_conns.open.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        st.total += 1;
        st.active += 1;
        true
    }

    /// An idle connection that needs no check, without waiting: the common checkout on a busy
    /// pool, done without a future (the relay boxes the slow path of [`Pool::acquire`]).
    pub fn acquire_idle(&self, now: Tick) -> Option<Box<ServerConn>> {
        let mut st = self.lock();
        if st.closed || st.paused {
            return None;
        }
        let at = st.next_idle()?;
        if !Checkout::of(&st.idle[at], &st.settings, now).is_nothing() {
            return None;
        }
        st.active += 1;
        Some(st.idle.remove(at))
    }

    /// A server connection for a client, waiting at most query_wait_timeout.
    pub async fn acquire(&self) -> Result<Box<ServerConn>, AcquireError> {
        let acquired = self.acquire_unless(Tick::now(), std::future::pending(), || std::future::ready(())).await;
        acquired.map(|(conn, _)| conn)
    }

    /// Like `acquire`, but a wait for a connection ends (`Cancelled`, with no connection or slot
    /// lost) as soon as `cancelled` resolves: KILL_CLIENT of a waiting client takes effect at
    /// once, not when a connection frees up.
    /// `queued` runs (once per wait) when the wait passes query_wait_notify: it tells the
    /// client, whose place in the queue is kept meanwhile.
    ///
    /// `start` is the caller's clock reading (the client's wake), from which the wait is
    /// counted; the connection comes with the reading taken when it was granted, which also
    /// dates its checkout, so a checkout that waits reads the clock once.
    pub async fn acquire_unless<F, Q, QF>(
        &self,
        start: Tick,
        cancelled: F,
        mut queued: Q,
    ) -> Result<(Box<ServerConn>, Tick), AcquireError>
    where
        F: Future<Output = ()>,
        Q: FnMut() -> QF,
        QF: Future<Output = ()>,
    {
        let mut cancelled = std::pin::pin!(cancelled);
        // The latest clock reading: `start`, then the time of each grant.
        let mut now = start;
        let mut blocked_by_shared_limit = false;
        // Told it is queued: once per checkout, however many times it waits in the queue.
        let mut told = false;
        loop {
            let next = {
                let mut st = self.lock();
                if st.closed {
                    return Err(AcquireError::Closed);
                }
                if st.paused {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(Waiter { tx, since: start, notified: told });
                    Next::Wait(rx)
                } else if let Some(conn) = st.take_idle() {
                    st.active += 1;
                    let checkout = Checkout::of(&conn, &st.settings, now);
                    Next::Conn(conn, checkout)
                } else if self.try_open(&mut st, false) {
                    Next::Open
                } else {
                    let (tx, rx) = oneshot::channel();
                    st.waiters.push_back(Waiter { tx, since: start, notified: told });
                    // Below pool_size: blocked by max_db/user_connections, which an idle
                    // connection of another pool may be holding.
                    blocked_by_shared_limit = st.total < st.settings.pool_size;
                    Next::Wait(rx)
                }
            };
            if std::mem::take(&mut blocked_by_shared_limit) {
                self.evict_idle_sibling();
            }
            let grant = match next {
                Next::Conn(conn, checkout) => match self.check(conn, checkout).await {
                    Some(conn) => return Ok((conn, now)),
                    None => continue,
                },
                Next::Open => Grant::Slot,
                Next::Wait(rx) => {
                    // This wait only: a client that waits again (its grant failed the
                    // check) adds the second wait, not the first one twice.
                    let waited_from = now;
                    let grant = self.wait(rx, cancelled.as_mut(), &mut queued, &mut told).await;
                    now = Tick::now();
                    self.stats.add_wait(now.since(waited_from));
                    grant?
                }
            };
            match grant {
                Grant::Conn(conn) => {
                    let checkout = Checkout::of(&conn, &self.settings(), now);
                    if let Some(conn) = self.check(conn, checkout).await {
                        return Ok((conn, now));
                    }
                }
                Grant::Expired => {
                    self.stats.count_error("query_wait_timeout");
                    return Err(AcquireError::WaitTimeout);
                }
                // `wait` goes on waiting after a notice; nothing to do with one here.
                Grant::Queued(_) => {}
                Grant::Slot => {
                    // The generation of the login target: a connection opened to a server the
                    // database moved away from meanwhile (or across a RECONNECT) is closed at
                    // its release, and does not welcome clients.
                    let (generation, servers) = {
                        let st = self.lock();
                        (st.generation, st.servers.len().max(1))
                    };
                    // One server of several out of reach (a standby that just went down, its
                    // member key not expired yet): the next ones are tried before the client
                    // is told. A server that failed a login within server_login_retry is not
                    // tried again before then (PgBouncer's fail-fast).
                    let mut tried = 0;
                    let connected = loop {
                        let next = self.lock().next_ready_login(Instant::now());
                        let login = match next {
                            Ok(login) => login,
                            Err(last) => break Err(AcquireError::LoginFailing(last)),
                        };
                        // Boxed, as the check query below: a server login's state must
                        // not be part of every waiting client's future (the wait is boxed
                        // whole, and at 100 clients on a pool of 20 nearly every
                        // transaction waits).
                        match Box::pin(self.connect_new(&login)).await {
                            Ok(conn) => break Ok(conn),
                            Err(e) => {
                                self.stats.count_error("server_login");
                                self.lock().login_failed(&login.addr, Instant::now(), e.to_string());
                                tried += 1;
                                if tried >= servers {
                                    break Err(e.into());
                                }
                                tracing::warn!(
                                    server = %login.addr,
                                    database = %self.key.database,
                                    user = %self.key.user,
                                    "cannot open a server connection: {e}; trying the database's next server"
                                );
                            }
                        }
                    };
                    return match connected {
                        Ok(mut conn) => {
                            let mut st = self.lock();
                            conn.generation = generation;
                            if st.welcome.is_none() && generation == st.generation {
                                st.welcome = Some(conn.login_params.clone());
                            }
                            drop(st);
                            self.register(&mut conn);
                            Ok((Box::new(conn), Tick::now()))
                        }
                        Err(e) => {
                            self.slot_freed(true);
                            Err(e)
                        }
                    };
                }
            }
        }
    }

    /// Waits for a grant, or until `cancelled`. Timeouts come as grants too (`Expired`, or a
    /// reserve `Slot`) from `check_waiters`; a closed pool drops the sender.
    async fn wait<F: Future<Output = ()>, Q: FnMut() -> QF, QF: Future<Output = ()>>(
        &self,
        mut rx: oneshot::Receiver<Grant>,
        mut cancelled: std::pin::Pin<&mut F>,
        queued: &mut Q,
        told: &mut bool,
    ) -> Result<Grant, AcquireError> {
        loop {
            // Biased: the grant first, and no random draw per wake.
            let grant = tokio::select! {
                biased;
                r = &mut rx => r.map_err(|_| AcquireError::Closed)?,
                _ = cancelled.as_mut() => {
                    // A grant that raced the cancellation goes to the next waiter.
                    rx.close();
                    if let Ok(raced) = rx.try_recv() {
                        self.give_back(raced);
                    }
                    return Err(AcquireError::Cancelled);
                }
            };
            match grant {
                Grant::Queued(next) => {
                    // A grant that comes meanwhile waits in `next`.
                    *told = true;
                    // Boxed: the NOTICE's write is rare, and its state would otherwise be
                    // part of every wait.
                    Box::pin(queued()).await;
                    rx = next;
                }
                grant => return Ok(grant),
            }
        }
    }

    /// The pool's janitor for waiting clients (every `maintain::WAITER_CHECK`): the oldest
    /// waiters past reserve_pool_timeout get a reserve connection while the reserve has room;
    /// waiters past query_wait_timeout are let go with that error; waiters that left are
    /// forgotten.
    pub(super) fn check_waiters(&self, now: Tick) {
        let mut st = self.lock();
        if st.waiters.is_empty() {
            return;
        }
        let (query_wait, reserve, reserve_after) =
            (st.settings.query_wait_timeout, st.settings.reserve_pool, st.settings.reserve_pool_timeout);
        let notify = st.settings.query_wait_notify;
        if reserve > 0 {
            loop {
                while st.waiters.front().is_some_and(Waiter::is_closed) {
                    st.waiters.pop_front();
                }
                let due = st.waiters.front().is_some_and(|w| now.since(w.since) >= reserve_after);
                if !due || !self.grant_slot(&mut st, true) {
                    break;
                }
            }
        }
        let mut kept = VecDeque::with_capacity(st.waiters.len());
        for mut waiter in std::mem::take(&mut st.waiters) {
            if waiter.is_closed() {
                continue;
            }
            let waited = now.since(waiter.since);
            if query_wait.is_some_and(|t| waited >= t) {
                let _ = waiter.send(Grant::Expired);
                continue;
            }
            if !waiter.notified && notify.is_some_and(|t| waited >= t) {
                // The client's wait is told, and goes on in the same place on a new channel.
                let (tx, rx) = oneshot::channel();
                let told = std::mem::replace(&mut waiter.tx, tx);
                if told.send(Grant::Queued(rx)).is_err() {
                    continue;
                }
                waiter.notified = true;
            }
            kept.push_back(waiter);
        }
        st.waiters = kept;
    }

    /// A grant obtained but not used goes to the next client.
    fn give_back(&self, grant: Grant) {
        match grant {
            Grant::Conn(conn) => self.release(conn),
            Grant::Slot => self.slot_freed(true),
            Grant::Expired | Grant::Queued(_) => {}
        }
    }

    /// An idle connection about to be handed out: too old, dead, or failing the check query
    /// ones are closed (None).
    async fn check(&self, conn: Box<ServerConn>, checkout: Checkout) -> Option<Box<ServerConn>> {
        if checkout.expired {
            self.close(conn, "server_lifetime");
            return None;
        }
        if checkout.probe && conn.stream.is_closed_or_dirty() {
            self.close(conn, "the server closed the connection while it was idle");
            return None;
        }
        match checkout.check_query {
            Some(settings) => Box::pin(self.check_query(conn, settings)).await,
            None => Some(conn),
        }
    }

    /// server_check_query on `conn` before it is handed out: a round trip, boxed by `check`
    /// so that its state is not part of every checkout's future.
    async fn check_query(&self, mut conn: Box<ServerConn>, settings: Arc<PoolSettings>) -> Option<Box<ServerConn>> {
        let timeout = settings.server_connect_timeout;
        let _tested = crate::stats::InState::enter(&self.stats.servers_tested);
        if let Some(registration) = &conn.registration {
            registration.entry().testing();
        }
        if let Err(e) = conn.run_query("check_query", &settings.server_check_query, timeout).await {
            self.close(conn, &format!("server_check_query failed: {e}"));
            return None;
        }
        Some(conn)
    }

    /// A client is done with `conn` and it is idle and clean: hand it to the next waiting
    /// client, or keep it idle.
    pub fn release(&self, conn: Box<ServerConn>) {
        self.release_at(conn, Tick::now());
    }

    /// `release`, with the time the caller read already.
    pub fn release_at(&self, mut conn: Box<ServerConn>, now: Tick) {
        if let Some(registration) = &conn.registration {
            registration.entry().checked_in();
        }
        if !conn.stream.for_pool() {
            // Its socket was closed on the relaying thread: something was still in flight.
            self.close(conn, "it was still receiving when its client let it go");
            return;
        }
        let mut st = self.lock();
        st.active = st.active.saturating_sub(1);
        let expired = st.settings.server_lifetime.is_some_and(|life| outlived(&conn, life, now));
        let left = st.pruning && !st.servers.contains(&conn.addr);
        if st.closed || expired || conn.generation < st.generation || left {
            let reason = if st.closed {
                "its pool was closed"
            } else if expired {
                "server_lifetime"
            } else if left {
                "its server is no longer one of the database's"
            } else {
                "RECONNECT, KILL or a server change"
            };
            st.active += 1;
            drop(st);
            self.close(conn, reason);
            return;
        }
        conn.last_used = now;
        let Some(conn) = self.hand_over(&mut st, conn) else { return };
        let shared_limit = st.settings.max_db_connections > 0 || st.settings.max_user_connections > 0;
        if !shared_limit || st.paused {
            st.idle.push(conn);
            return;
        }
        // Under max_db/user_connections a client of another pool may be waiting for the slot
        // this connection holds: close it so that client can open one.
        drop(st);
        if self.siblings().iter().any(|s| s.has_waiters()) {
            self.lock().active += 1;
            self.close(conn, "its slot went to another pool's client (max_db_connections/max_user_connections)");
        } else {
            let mut st = self.lock();
            if let Some(conn) = self.hand_over(&mut st, conn) {
                st.idle.push(conn);
            }
        }
    }

    /// Gives `conn` to the longest-waiting client; back if nobody waits (or paused).
    fn hand_over(&self, st: &mut PoolState, conn: Box<ServerConn>) -> Option<Box<ServerConn>> {
        if st.paused {
            return Some(conn);
        }
        let mut grant = Grant::Conn(conn);
        while let Some(waiter) = st.waiters.pop_front() {
            match waiter.send(grant) {
                Ok(()) => {
                    st.active += 1;
                    return None;
                }
                Err(back) => grant = back,
            }
        }
        match grant {
            Grant::Conn(conn) => Some(conn),
            Grant::Slot | Grant::Expired | Grant::Queued(_) => None,
        }
    }

    fn has_waiters(&self) -> bool {
        let st = self.lock();
        !st.paused && st.waiters.iter().any(|w| !w.is_closed())
    }

    /// Closes a checked-out connection (its state is unknown, or it is too old) and lets a
    /// waiting client open a new one.
    /// `reason` goes to the log (log_disconnections).
    #[allow(clippy::boxed_local)]
    pub fn close(&self, mut conn: Box<ServerConn>, reason: &str) {
        // Off the ring before it goes to a worker thread to say goodbye.
        conn.stream.for_pool();
        self.log_close(&conn, reason);
        tokio::spawn(conn.terminate());
        self.slot_freed(true);
    }

    fn log_close(&self, conn: &ServerConn, reason: &str) {
        if self.settings().log_disconnections {
            tracing::info!(
                id = conn.id,
                server = %conn.addr,
                database = %self.key.database,
                user = %self.key.user,
                age_s = Tick::now().since(conn.created).as_secs(),
                "closing server connection: {reason}"
            );
        }
    }

    /// One connection fewer (checked out if `active`); the freed slot goes to a waiter of
    /// this pool, or else to one of another pool sharing max_db/user_connections.
    fn slot_freed(&self, active: bool) {
        let shared_limit = {
            let mut st = self.lock();
            st.total = st.total.saturating_sub(1);
            if active {
                st.active = st.active.saturating_sub(1);
            }
            self.db_conns.open.fetch_sub(1, Ordering::Relaxed);
            self.user_conns.open.fetch_sub(1, Ordering::Relaxed);
            if self.grant_slot(&mut st, false) {
                return;
            }
            st.settings.max_db_connections > 0 || st.settings.max_user_connections > 0
        };
        if shared_limit {
            for sibling in self.siblings() {
                if sibling.grant_slot(&mut sibling.lock(), false) {
                    return;
                }
            }
        }
    }

    /// Gives the first waiting client a slot (from the reserve too if `reserve`) if the
    /// limits allow one; false if none was given.
    fn grant_slot(&self, st: &mut PoolState, reserve: bool) -> bool {
        if st.paused || st.waiters.is_empty() || !self.try_open(st, reserve) {
            return false;
        }
        while let Some(waiter) = st.waiters.pop_front() {
            if waiter.send(Grant::Slot).is_ok() {
                return true;
            }
        }
        // Nobody was really waiting.
        st.active -= 1;
        self.uncount_open(st);
        false
    }

    /// Undoes the count of a connection `try_open` allowed but that is not opened.
    fn uncount_open(&self, st: &mut PoolState) {
        st.total -= 1;
        self.db_conns.open.fetch_sub(1, Ordering::Relaxed);
        self.user_conns.open.fetch_sub(1, Ordering::Relaxed);
    }

    /// The other pools sharing this one's database or user counters.
    fn siblings(&self) -> Vec<Arc<Pool>> {
        let mut all = self.db_conns.pools();
        for pool in self.user_conns.pools() {
            if !all.iter().any(|p| Arc::ptr_eq(p, &pool)) {
                all.push(pool);
            }
        }
        all.retain(|p| !std::ptr::eq(Arc::as_ptr(p), self));
        all
    }

    /// Closes one idle connection of another pool of the same database or user, so that the
    /// slot it holds under max_db/user_connections goes to this pool's waiting client
    /// (PgBouncer's eviction).
    fn evict_idle_sibling(&self) {
        for sibling in self.siblings() {
            let idle = sibling.lock().idle.pop();
            if let Some(conn) = idle {
                sibling.close_idle(
                    conn,
                    "its slot went to another pool's client (max_db_connections/max_user_connections)",
                );
                return;
            }
        }
    }

    /// Opens and logs in a server connection, counted in SHOW POOLS `sv_login` and shown in
    /// SHOW SERVERS as `new` until the login is over (the row keeps its id once open).
    pub(crate) async fn connect_new(&self, login: &LoginTarget) -> Result<ServerConn, crate::server::ServerError> {
        let id = crate::server::next_id();
        let _row = self.connections.register_login(id, &self.key, &login.addr, self.generation());
        let _in_login = crate::stats::InState::enter(&self.stats.servers_login);
        let mut conn = ServerConn::connect(login).await?;
        conn.id = id;
        Ok(conn)
    }

    /// Registers a new server connection for SHOW SERVERS.
    fn register(&self, conn: &mut ServerConn) {
        if self.settings().log_connections {
            tracing::info!(id = conn.id, server = %conn.addr, database = %self.key.database, user = %self.key.user, "new server connection");
        }
        let registration = self.connections.register_server(
            conn.id,
            &self.key,
            &conn.addr,
            &conn.stream,
            conn.key.process_id,
            conn.generation,
        );
        conn.registration = Some(registration);
    }

    /// The current generation: connections opened before the last RECONNECT or KILL are
    /// older and close when released (close_needed).
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Which of its server connections close when released: those older than the current
    /// generation, and, after a server left a database's list (a standby lost), those to a
    /// server no longer in it.
    pub fn close_mark(&self) -> CloseMark {
        let st = self.lock();
        CloseMark { generation: st.generation, servers: st.pruning.then(|| st.servers.clone()) }
    }

    /// KILL: waiting clients are refused, idle connections closed, checked-out ones closed
    /// when they come back, and the pool stays paused (new clients wait) until RESUME.
    pub fn kill(&self) {
        self.close_all(true, "KILL");
    }

    /// Waiting clients are let go (their wait ends as Closed), idle connections closed, those
    /// in use marked close_needed (and session-mode clients with server_fast_close told);
    /// `pause` keeps new checkouts waiting.
    fn close_all(&self, pause: bool, reason: &str) {
        let (idle, waiters) = {
            let mut st = self.lock();
            st.paused |= pause;
            st.generation += 1;
            (std::mem::take(&mut st.idle), std::mem::take(&mut st.waiters))
        };
        self.closing.notify_waiters();
        drop(waiters);
        for conn in idle {
            self.close_idle(conn, reason);
        }
    }

    /// PAUSE: stop handing out connections; returns how many are still checked out.
    pub fn pause(&self) -> u32 {
        let mut st = self.lock();
        st.paused = true;
        st.active
    }

    pub fn is_paused(&self) -> bool {
        self.lock().paused
    }

    /// Connections checked out by clients right now.
    pub fn busy(&self) -> u32 {
        self.lock().active
    }

    /// RESUME: hand idle connections (or new ones) to the clients that waited.
    pub fn resume(&self) {
        let mut st = self.lock();
        st.paused = false;
        while !st.waiters.is_empty() {
            let grant = if let Some(conn) = st.take_idle() {
                Grant::Conn(conn)
            } else if self.try_open(&mut st, false) {
                st.active -= 1;
                Grant::Slot
            } else {
                break;
            };
            st.active += 1;
            // The grant first: a waiter popped with no grant for it would be dropped, and its
            // client told the pool was closed.
            let mut grant = Some(grant);
            while let Some(g) = grant.take() {
                let Some(waiter) = st.waiters.pop_front() else {
                    grant = Some(g);
                    break;
                };
                if let Err(back) = waiter.send(g) {
                    grant = Some(back);
                }
            }
            if let Some(unused) = grant {
                st.active -= 1;
                match unused {
                    Grant::Expired | Grant::Queued(_) => {}
                    Grant::Conn(conn) => st.idle.push(conn),
                    Grant::Slot => self.uncount_open(&mut st),
                }
                break;
            }
        }
    }

    /// RECONNECT: idle connections close now, checked-out ones when released.
    pub fn reconnect(&self) {
        let idle = {
            let mut st = self.lock();
            st.generation += 1;
            std::mem::take(&mut st.idle)
        };
        self.closing.notify_waiters();
        for conn in idle {
            self.close_idle(conn, "RECONNECT");
        }
    }

    #[allow(clippy::boxed_local)]
    fn close_idle(&self, conn: Box<ServerConn>, reason: &str) {
        self.log_close(&conn, reason);
        tokio::spawn(conn.terminate());
        self.slot_freed(false);
    }
}

/// What an idle connection needs before it is handed out, decided under the pool's lock.
struct Checkout {
    /// Past server_lifetime: close it.
    expired: bool,
    /// Idle for a second or more: probe the socket. On a busy pool a probe would cost a
    /// syscall per transaction for nothing.
    probe: bool,
    /// Idle past server_check_delay: run server_check_query (these settings) first.
    check_query: Option<Arc<PoolSettings>>,
}

impl Checkout {
    fn is_nothing(&self) -> bool {
        !self.expired && !self.probe && self.check_query.is_none()
    }

    fn of(conn: &ServerConn, settings: &Arc<PoolSettings>, now: Tick) -> Checkout {
        Checkout {
            expired: settings.server_lifetime.is_some_and(|life| outlived(conn, life, now)),
            probe: idle_for_at_least(conn, Duration::from_secs(1), now),
            check_query: needs_check_query(conn, settings, now).then(|| settings.clone()),
        }
    }
}

/// Whether `conn` has been idle for `d` at `now` (an addition and a comparison, no subtraction
/// of clock readings: every checkout).
fn idle_for_at_least(conn: &ServerConn, d: Duration, now: Tick) -> bool {
    now.is_past(conn.last_used, d)
}

/// Idle past server_check_delay with a server_check_query set: the next checkout runs the
/// query first (PgBouncer's `used` state).
fn needs_check_query(conn: &ServerConn, settings: &PoolSettings, now: Tick) -> bool {
    !settings.server_check_query.is_empty() && idle_for_at_least(conn, settings.server_check_delay, now)
}

/// Whether `conn` is older than server_lifetime `life` at `now` (an addition and a comparison:
/// cheaper than the subtraction of two clock readings, on every checkout and release).
fn outlived(conn: &ServerConn, life: Duration, now: Tick) -> bool {
    now.is_past(conn.created, life)
}

/// Adds one to `counter` unless that would pass `max` (0: no limit).
fn take_one(counter: &AtomicU32, max: u32) -> bool {
    if max == 0 {
        counter.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_ok()
}

#[cfg(test)]
mod close_mark_tests {
    use super::*;
    use crate::config::PoolerConfig;

    /// After a standby left a database's list, the connections to it close when released
    /// (SHOW SERVERS close_needed, WAIT_CLOSE) and those to the others stay; a move to other
    /// servers altogether closes every connection opened before it.
    #[tokio::test]
    async fn connections_to_a_server_that_left_the_list_are_marked_to_close() {
        let text = "auth_type = \"trust\"\n[databases.app]\nhost = \"10.0.0.1\"\n";
        let config: PoolerConfig = consensus::config_file::parse(std::path::Path::new("pooler.toml"), text).unwrap();
        let shared = crate::runtime::Shared::new(config.clone(), None).unwrap();
        let target = shared.topology().target("app").unwrap();
        let at = |port| ServerAddr { host: "10.0.0.1".into(), port };
        let (a, b, c) = (at(5432), at(5433), at(5434));
        let settings = || PoolSettings::new(&config, &target, None);
        let pool = shared.pools.get_or_create(crate::pool::PoolKeyRef { database: "app", user: "u" }, || {
            let login = LoginTarget {
                addr: a.clone(),
                dbname: "app".into(),
                user: "u".into(),
                credential: crate::auth::ServerCredential::None,
                connect_timeout: Duration::from_secs(1),
                tcp: Default::default(),
                tls: shared.server_tls(),
            };
            (settings(), login, vec![a.clone(), b.clone()].into())
        });
        let opened = pool.generation();
        let mark = pool.close_mark();
        assert!(!mark.closes(opened, &a) && !mark.closes(opened, &b));
        pool.update_settings(settings(), &vec![a.clone()].into(), "app", shared.server_tls());
        let mark = pool.close_mark();
        assert!(mark.closes(opened, &b), "a connection to the standby that left stays");
        assert!(!mark.closes(opened, &a), "a connection to the remaining standby closes");
        pool.update_settings(settings(), &vec![c.clone()].into(), "app", shared.server_tls());
        let mark = pool.close_mark();
        assert!(mark.closes(opened, &a) && !mark.closes(pool.generation(), &c));
    }
}
