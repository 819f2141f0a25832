//! The registry of live connections behind SHOW CLIENTS, SHOW SERVERS, KILL, KILL_CLIENT,
//! WAIT_CLOSE and DISABLE/ENABLE: one entry per logged-in client and per open server
//! connection, written at connect, disconnect and state changes (checkout, release), never per
//! message. Entries hold atomics for what changes; the maps' mutexes are taken only to add,
//! remove or list entries.

use crate::pool::PoolKey;
use crate::stream::Stream;
use crate::tick::Tick;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Where a socket's two ends are: PgBouncer's addr/port and local_addr/local_port columns
/// (`unix` and port 0 for a Unix socket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoints {
    /// The peer and local socket addresses; None for a Unix socket.
    peer: Option<SocketAddr>,
    local: Option<SocketAddr>,
    unix: bool,
}

impl Endpoints {
    pub fn of(stream: &Stream) -> Endpoints {
        let tcp = match stream {
            Stream::Tcp(s) => Some(s),
            Stream::TlsClient(s) => Some(s.get_ref().0),
            Stream::TlsServer(s) => Some(s.get_ref().0),
            Stream::Ring(h) if !h.unix => return Endpoints::of_socket(socket2::SockRef::from(h)),
            Stream::Unix(_) | Stream::Detached(_) | Stream::Ring(_) => None,
        };
        match tcp {
            Some(s) => Endpoints { peer: s.peer_addr().ok(), local: s.local_addr().ok(), unix: false },
            None => Endpoints { peer: None, local: None, unix: true },
        }
    }

    /// A server not connected yet: its address as configured (no local end yet).
    pub fn of_target(addr: &crate::topology::ServerAddr) -> Endpoints {
        if addr.is_unix() {
            return Endpoints { peer: None, local: None, unix: true };
        }
        let peer = addr.host.parse::<std::net::IpAddr>().ok().map(|ip| SocketAddr::new(ip, addr.port));
        Endpoints { peer, local: None, unix: false }
    }

    /// Asks the socket itself (SHOW CLIENTS: a client's entry keeps no copy).
    fn of_socket(socket: socket2::SockRef<'_>) -> Endpoints {
        let (peer, local) = (socket.peer_addr().ok(), socket.local_addr().ok());
        let unix = local.as_ref().is_some_and(|a| a.domain() == socket2::Domain::UNIX);
        Endpoints { peer: peer.and_then(|a| a.as_socket()), local: local.and_then(|a| a.as_socket()), unix }
    }

    /// The peer's IP address as SHOW CLIENTS/SERVERS print it (`unix` for a Unix socket).
    pub fn addr(&self) -> String {
        Self::ip(self.peer, self.unix)
    }
    pub fn port(&self) -> u16 {
        self.peer.map_or(0, |a| a.port())
    }
    pub fn local_addr(&self) -> String {
        Self::ip(self.local, self.unix)
    }
    pub fn local_port(&self) -> u16 {
        self.local.map_or(0, |a| a.port())
    }
    fn ip(addr: Option<SocketAddr>, unix: bool) -> String {
        match addr {
            _ if unix => "unix".into(),
            Some(a) => a.ip().to_string(),
            None => String::new(),
        }
    }
}

fn raw_fd(stream: &Stream) -> RawFd {
    match stream {
        Stream::Tcp(s) => s.as_raw_fd(),
        Stream::Unix(s) => s.as_raw_fd(),
        Stream::Detached(s) => s.as_ref().map_or(-1, |s| s.as_raw_fd()),
        Stream::Ring(s) => s.as_raw_fd(),
        Stream::TlsClient(s) => s.get_ref().0.as_raw_fd(),
        Stream::TlsServer(s) => s.get_ref().0.as_raw_fd(),
    }
}

fn unix_micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The wall-clock time (µs since the epoch) of a monotonic reading the data path took anyway:
/// a checkout's request_time costs no second clock reading. Anchored at the first call, so a
/// later step of the wall clock shows in connect_time but not here.
fn unix_micros_at(at: Tick) -> u64 {
    static ANCHOR: OnceLock<(Tick, u64)> = OnceLock::new();
    let (tick, unix) = *ANCHOR.get_or_init(|| (Tick::now(), unix_micros(SystemTime::now())));
    if at >= tick {
        unix + at.micros_since(tick)
    } else {
        unix.saturating_sub(tick.micros_since(at))
    }
}

fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

/// Why clients are closed when the pooler stops (SQLSTATE 57P01, admin_shutdown).
pub const SHUTTING_DOWN: &str = "the pooler is shutting down";

/// A client's state as SHOW CLIENTS names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ClientState {
    /// Logged in, with or without a server connection.
    Active = 0,
    /// Waiting for a server connection.
    Waiting = 1,
}

/// A client entry's socket slot once the socket is closed (no descriptor is negative).
const NO_SOCKET: RawFd = -1;

/// One logged-in client (or admin console session).
pub struct ClientEntry {
    pub id: u64,
    /// Names shared with the other clients of its pool (`PoolKey`).
    pub database: Arc<str>,
    pub user: Arc<str>,
    connect_time_us: u64,
    pub application_name: Arc<str>,
    pub tls: Box<str>,
    state: AtomicU8,
    request_time_us: AtomicU64,
    wait_start_us: AtomicU64,
    /// Id of the server connection it holds, 0 if none.
    server: AtomicU64,
    /// Set by KILL / KILL_CLIENT / shutdown (a `KillReason`, 0 if none): the client is told
    /// why and closed, its server connection closed.
    killed: AtomicU8,
    /// The client socket while it is open, to wake its task by shutting the read side.
    /// Cleared to `NO_SOCKET` (under this mutex) before the socket is closed. Not an
    /// `Option`: four bytes less keep the entry in its allocation size class.
    fd: Mutex<RawFd>,
    /// Parking (`crate::client::parking`): the tick at which its relay began to wait idle
    /// (0 while it is busy or parked), whether it has sent anything since it logged in, and
    /// the request to park with the idle wait's waker.
    idle_since: AtomicU32,
    has_been_active: AtomicBool,
    park_requested: AtomicBool,
    park_waker: Mutex<Option<Waker>>,
    /// Named statements it has prepared, as of its last transaction (SHOW CLIENTS).
    prepared_statements: AtomicU32,
}

impl ClientEntry {
    pub fn state(&self) -> ClientState {
        if self.state.load(Ordering::Relaxed) == ClientState::Waiting as u8 {
            ClientState::Waiting
        } else {
            ClientState::Active
        }
    }
    pub fn request_time(&self) -> SystemTime {
        from_micros(self.request_time_us.load(Ordering::Relaxed))
    }
    /// How long it has been waiting for a server connection (zero unless waiting).
    pub fn waiting_for(&self) -> Duration {
        if self.state() != ClientState::Waiting {
            return Duration::ZERO;
        }
        let since = from_micros(self.wait_start_us.load(Ordering::Relaxed));
        SystemTime::now().duration_since(since).unwrap_or_default()
    }
    pub fn server(&self) -> u64 {
        self.server.load(Ordering::Relaxed)
    }
    pub fn prepared_statements(&self) -> u32 {
        self.prepared_statements.load(Ordering::Relaxed)
    }
    pub fn set_prepared_statements(&self, count: usize) {
        self.prepared_statements.store(u32::try_from(count).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
    /// Its relay waits idle from parking tick `tick` on (at least 1).
    pub fn idle_from(&self, tick: u32) {
        self.park_requested.store(false, Ordering::Relaxed);
        self.idle_since.store(tick.max(1), Ordering::Release);
    }

    /// Its relay is busy (`active`: the client sent something) or parked (`parking`: its
    /// task ends, and the waker kept here must not keep the task's memory).
    pub fn not_idle(&self, active: bool, parking: bool) {
        self.idle_since.store(0, Ordering::Release);
        if parking {
            lock(&self.park_waker).take();
        }
        if active && !self.has_been_active.load(Ordering::Relaxed) {
            self.has_been_active.store(true, Ordering::Relaxed);
        }
    }

    /// The tick since which it waits idle, and whether it ever sent anything after login.
    pub fn idleness(&self) -> Option<(u32, bool)> {
        match self.idle_since.load(Ordering::Acquire) {
            0 => None,
            tick => Some((tick, self.has_been_active.load(Ordering::Relaxed))),
        }
    }

    /// Whether it has sent anything since it logged in.
    pub fn has_been_active(&self) -> bool {
        self.has_been_active.load(Ordering::Relaxed)
    }

    /// Asks its idle wait to park the relay.
    pub fn request_park(&self) {
        self.park_requested.store(true, Ordering::SeqCst);
        if let Some(waker) = lock(&self.park_waker).take() {
            waker.wake();
        }
    }

    /// For the idle wait: true once parking was requested; otherwise `cx` is woken when it is.
    pub fn park_wanted(&self, cx: &mut std::task::Context<'_>) -> bool {
        if self.park_requested() {
            return true;
        }
        self.wake_on_park_request(cx);
        // A request between the first check and the registration found no waker.
        self.park_requested()
    }

    /// `cx` is woken when parking is requested (the waker stays until then, or until the
    /// relay parks): a wait polled again needs to register only once.
    pub fn wake_on_park_request(&self, cx: &mut std::task::Context<'_>) {
        let mut slot = lock(&self.park_waker);
        match slot.as_ref() {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => *slot = Some(cx.waker().clone()),
        }
    }

    /// Whether parking was requested since the idle wait began (`idle_from`). Checked after
    /// `wake_on_park_request`: a request either sees the waker or is seen here.
    pub fn park_requested(&self) -> bool {
        self.park_requested.load(Ordering::SeqCst)
    }

    /// The socket's addresses, read from the socket while it is open (empty after).
    pub fn endpoints(&self) -> Endpoints {
        let fd = lock(&self.fd);
        if *fd == NO_SOCKET {
            return Endpoints::default();
        }
        let fd = *fd;
        // SAFETY: `fd` stays open while it is in the slot, which this lock holds (see `kill`).
        let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
        Endpoints::of_socket(socket2::SockRef::from(&borrowed))
    }
    pub fn connect_time(&self) -> SystemTime {
        from_micros(self.connect_time_us)
    }
    pub fn is_killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst) != 0
    }
    /// Why the client was killed, if it was.
    pub fn kill_reason(&self) -> Option<&'static str> {
        KillReason::from_code(self.killed.load(Ordering::SeqCst)).map(KillReason::message)
    }

    /// Marks the client killed and wakes its task: the read side of its socket is shut, so its
    /// next (or pending) read sees end of file; the task then sends `reason` as FATAL, closes
    /// its server connection and leaves.
    pub fn kill(&self, reason: KillReason) {
        // The first reason stays. SeqCst with the load of `server` in kill_idle_clients and
        // the client's store of it before it checks this (attach_server): one of the two sees
        // the other.
        let _ = self.killed.compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        let fd = lock(&self.fd);
        if *fd != NO_SOCKET {
            let fd = *fd;
            // SAFETY: `fd` stays open while it is in the slot: the owner of the socket clears
            // the slot under this same mutex (ClientHandle::drop) before closing the socket.
            let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
            let _ = nix_shutdown(borrowed);
        }
    }
}

/// Why a client was killed; its message is what the client is told (FATAL).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum KillReason {
    /// KILL_CLIENT.
    AdminForced = 1,
    /// KILL of its database, or RELOAD removed it.
    DatabaseRemoved = 2,
    /// SIGTERM or SHUTDOWN: told with SQLSTATE 57P01.
    ShuttingDown = 3,
}

impl KillReason {
    pub fn message(self) -> &'static str {
        match self {
            KillReason::AdminForced => "admin forced disconnect",
            KillReason::DatabaseRemoved => "database removed",
            KillReason::ShuttingDown => SHUTTING_DOWN,
        }
    }

    fn from_code(code: u8) -> Option<KillReason> {
        match code {
            1 => Some(KillReason::AdminForced),
            2 => Some(KillReason::DatabaseRemoved),
            3 => Some(KillReason::ShuttingDown),
            _ => None,
        }
    }
}

fn nix_shutdown(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    socket2::SockRef::from(&fd).shutdown(std::net::Shutdown::Read)
}

/// Server connection states as SHOW SERVERS names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ServerState {
    Idle = 0,
    Active = 1,
    /// Running server_check_query before it is handed out.
    Tested = 2,
    /// Connecting and logging in (PgBouncer's `new`).
    New = 3,
}

/// One open server connection.
pub struct ServerEntry {
    pub id: u64,
    pub key: PoolKey,
    /// The server it was opened to, as the pool names it.
    pub server: crate::topology::ServerAddr,
    pub endpoints: Endpoints,
    pub connect_time: SystemTime,
    pub remote_pid: i32,
    pub tls: String,
    /// The pool's generation when it was opened; older than the pool's means close_needed.
    pub generation: u64,
    state: AtomicU8,
    request_time_us: AtomicU64,
    /// Id of the client holding it, 0 if none.
    client: AtomicU64,
    /// Statements prepared on it under the pooler's names, as of its last release.
    prepared_statements: AtomicU32,
}

impl ServerEntry {
    pub fn state(&self) -> ServerState {
        match self.state.load(Ordering::Relaxed) {
            1 => ServerState::Active,
            2 => ServerState::Tested,
            3 => ServerState::New,
            _ => ServerState::Idle,
        }
    }
    /// Its server_check_query runs now.
    pub fn testing(&self) {
        self.state.store(ServerState::Tested as u8, Ordering::Relaxed);
    }
    pub fn request_time(&self) -> SystemTime {
        from_micros(self.request_time_us.load(Ordering::Relaxed))
    }
    pub fn client(&self) -> u64 {
        self.client.load(Ordering::Relaxed)
    }
    pub fn prepared_statements(&self) -> u32 {
        self.prepared_statements.load(Ordering::Relaxed)
    }
    pub fn set_prepared_statements(&self, count: usize) {
        self.prepared_statements.store(u32::try_from(count).unwrap_or(u32::MAX), Ordering::Relaxed);
    }
    /// Checked out by `client` (0 if by the pooler itself) at `request_time_us` (µs since the
    /// epoch, the client's request_time).
    pub fn checked_out(&self, client: u64, request_time_us: u64) {
        self.client.store(client, Ordering::Relaxed);
        self.request_time_us.store(request_time_us, Ordering::Relaxed);
        self.state.store(ServerState::Active as u8, Ordering::Relaxed);
    }
    /// Back in the pool.
    pub fn checked_in(&self) {
        self.client.store(0, Ordering::Relaxed);
        self.state.store(ServerState::Idle as u8, Ordering::Relaxed);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every live client and server connection, and the databases DISABLE closed to new clients.
#[derive(Default)]
pub struct Connections {
    clients: Mutex<HashMap<u64, Arc<ClientEntry>, foldhash::fast::RandomState>>,
    servers: Mutex<HashMap<u64, Arc<ServerEntry>, foldhash::fast::RandomState>>,
    disabled: Mutex<HashSet<String>>,
    /// The last application name a client registered with: the next client with the same
    /// one shares this string instead of allocating its own.
    last_application_name: Mutex<Option<Arc<str>>>,
}

/// What a client registers with. The database and user names are its pool's
/// (`PoolKey`), shared by all its clients.
pub struct NewClient<'a> {
    pub id: u64,
    pub database: Arc<str>,
    pub user: Arc<str>,
    pub application_name: &'a str,
    pub stream: &'a Stream,
}

impl Connections {
    /// `name` as a shared string: the one the previous client had if it is the same.
    fn application_name(&self, name: &str) -> Arc<str> {
        let mut last = lock(&self.last_application_name);
        match &*last {
            Some(shared) if &**shared == name => shared.clone(),
            _ => {
                let fresh: Arc<str> = Arc::from(name);
                *last = Some(fresh.clone());
                fresh
            }
        }
    }

    /// Registers a client; the handle removes it when dropped. Drop the handle before the
    /// socket is closed (KILL shuts the socket down through the registry).
    pub fn register_client(self: &Arc<Self>, new: NewClient<'_>) -> ClientHandle {
        let now = unix_micros(SystemTime::now());
        let entry = Arc::new(ClientEntry {
            id: new.id,
            database: new.database,
            user: new.user,
            connect_time_us: now,
            application_name: self.application_name(new.application_name),
            tls: new.stream.tls_description().into_boxed_str(),
            state: AtomicU8::new(ClientState::Active as u8),
            request_time_us: AtomicU64::new(now),
            wait_start_us: AtomicU64::new(0),
            server: AtomicU64::new(0),
            killed: AtomicU8::new(0),
            fd: Mutex::new(raw_fd(new.stream)),
            idle_since: AtomicU32::new(0),
            has_been_active: AtomicBool::new(false),
            park_requested: AtomicBool::new(false),
            park_waker: Mutex::new(None),
            prepared_statements: AtomicU32::new(0),
        });
        lock(&self.clients).insert(entry.id, entry.clone());
        ClientHandle { entry, registry: self.clone() }
    }

    /// Registers a server connection; the handle removes it when dropped.
    pub fn register_server(
        self: &Arc<Self>,
        id: u64,
        key: &PoolKey,
        addr: &crate::topology::ServerAddr,
        stream: &Stream,
        remote_pid: i32,
        generation: u64,
    ) -> ServerHandle {
        let (endpoints, tls) = (Endpoints::of(stream), stream.tls_description());
        self.insert_server(id, key, addr, endpoints, remote_pid, tls, generation, ServerState::Idle)
    }

    /// Registers a server connection being opened to `addr` (state `new`, no socket yet);
    /// the handle removes the row when dropped, once the login is over either way.
    pub fn register_login(
        self: &Arc<Self>,
        id: u64,
        key: &PoolKey,
        addr: &crate::topology::ServerAddr,
        generation: u64,
    ) -> ServerHandle {
        self.insert_server(id, key, addr, Endpoints::of_target(addr), 0, String::new(), generation, ServerState::New)
    }

    #[allow(clippy::too_many_arguments)]
    fn insert_server(
        self: &Arc<Self>,
        id: u64,
        key: &PoolKey,
        addr: &crate::topology::ServerAddr,
        endpoints: Endpoints,
        remote_pid: i32,
        tls: String,
        generation: u64,
        state: ServerState,
    ) -> ServerHandle {
        let now = SystemTime::now();
        let entry = Arc::new(ServerEntry {
            id,
            key: key.clone(),
            server: addr.clone(),
            endpoints,
            connect_time: now,
            remote_pid,
            tls,
            generation,
            state: AtomicU8::new(state as u8),
            request_time_us: AtomicU64::new(unix_micros(now)),
            client: AtomicU64::new(0),
            prepared_statements: AtomicU32::new(0),
        });
        lock(&self.servers).insert(id, entry.clone());
        ServerHandle { entry, registry: Arc::downgrade(self) }
    }

    pub fn clients(&self) -> Vec<Arc<ClientEntry>> {
        let mut all: Vec<_> = lock(&self.clients).values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    pub fn servers(&self) -> Vec<Arc<ServerEntry>> {
        let mut all: Vec<_> = lock(&self.servers).values().cloned().collect();
        all.sort_by_key(|s| s.id);
        all
    }

    /// Calls `f` with every client's entry, under the registry's lock (keep `f` short).
    pub fn for_each_client(&self, mut f: impl FnMut(&ClientEntry)) {
        for client in lock(&self.clients).values() {
            f(client);
        }
    }

    pub fn client(&self, id: u64) -> Option<Arc<ClientEntry>> {
        lock(&self.clients).get(&id).cloned()
    }

    /// Kills every client of `database` (all but the admin console's if `None`).
    pub fn kill_clients(&self, database: Option<&str>, reason: KillReason) -> usize {
        let victims: Vec<_> = lock(&self.clients)
            .values()
            .filter(|c| match database {
                Some(db) => &*c.database == db,
                None => &*c.database != crate::admin::ADMIN_DATABASE,
            })
            .cloned()
            .collect();
        for client in &victims {
            client.kill(reason);
        }
        victims.len()
    }

    /// Shutdown: kills every client (but the admin console's) that holds no server
    /// connection, which wakes its idle wait; the others leave at their next transaction
    /// boundary, where they check the shutdown flag (set before this is called). A client
    /// that read a query but has no server yet sees the kill before it takes one.
    pub fn kill_idle_clients(&self) -> usize {
        let victims: Vec<_> = lock(&self.clients)
            .values()
            .filter(|c| &*c.database != crate::admin::ADMIN_DATABASE && c.server.load(Ordering::SeqCst) == 0)
            .cloned()
            .collect();
        for client in &victims {
            client.kill(KillReason::ShuttingDown);
        }
        victims.len()
    }

    pub fn disable(&self, database: &str) {
        lock(&self.disabled).insert(database.to_owned());
    }

    pub fn enable(&self, database: &str) {
        lock(&self.disabled).remove(database);
    }

    pub fn is_disabled(&self, database: &str) -> bool {
        lock(&self.disabled).contains(database)
    }
}

/// A registered client; updates its entry at state changes and removes it when dropped.
pub struct ClientHandle {
    entry: Arc<ClientEntry>,
    registry: Arc<Connections>,
}

impl ClientHandle {
    pub fn id(&self) -> u64 {
        self.entry.id
    }
    pub fn entry(&self) -> &ClientEntry {
        &self.entry
    }
    pub fn entry_arc(&self) -> Arc<ClientEntry> {
        self.entry.clone()
    }
    /// Waiting for a server connection from now on.
    pub fn waiting(&self) {
        self.entry.wait_start_us.store(unix_micros(SystemTime::now()), Ordering::Relaxed);
        self.entry.state.store(ClientState::Waiting as u8, Ordering::Relaxed);
    }
    /// Got server connection `server` at `at` (or gave up waiting with `None`).
    pub fn attached(&self, server: Option<&ServerHandle>, at: Tick) {
        let entry = &self.entry;
        entry.state.store(ClientState::Active as u8, Ordering::Relaxed);
        if let Some(server) = server {
            let request_time = unix_micros_at(at);
            entry.request_time_us.store(request_time, Ordering::Relaxed);
            entry.server.store(server.entry.id, Ordering::SeqCst);
            server.entry.checked_out(entry.id, request_time);
        }
    }
    /// Gave its server connection back (the pool marks the server idle).
    pub fn detached(&self) {
        self.entry.server.store(0, Ordering::Relaxed);
    }
}

impl Drop for ClientHandle {
    fn drop(&mut self) {
        *lock(&self.entry.fd) = NO_SOCKET;
        lock(&self.registry.clients).remove(&self.entry.id);
    }
}

/// A registered server connection; removed from the registry when dropped.
pub struct ServerHandle {
    entry: Arc<ServerEntry>,
    registry: std::sync::Weak<Connections>,
}

impl ServerHandle {
    pub fn entry(&self) -> &ServerEntry {
        &self.entry
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            lock(&registry.servers).remove(&self.entry.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn key() -> PoolKey {
        PoolKey { database: "app".into(), user: "alice".into() }
    }

    #[tokio::test]
    async fn kill_wakes_the_clients_pending_read_and_says_why() {
        let registry = Arc::new(Connections::default());
        let (ours, _peer) = tokio::net::UnixStream::pair().unwrap();
        let mut stream = Stream::Unix(ours);
        let handle = registry.register_client(NewClient {
            id: 7,
            database: "app".into(),
            user: "alice".into(),
            application_name: "batch",
            stream: &stream,
        });
        let listed = registry.clients();
        assert_eq!((listed.len(), &*listed[0].application_name), (1, "batch"));
        let killer = registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(killer.kill_clients(Some("app"), KillReason::DatabaseRemoved), 1);
        });
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0, "the read side was shut");
        assert_eq!(handle.entry().kill_reason(), Some("database removed"));
        drop(handle);
        assert!(registry.clients().is_empty());
        assert_eq!(registry.kill_clients(None, KillReason::AdminForced), 0);
    }

    #[tokio::test]
    async fn kill_wakes_a_tcp_clients_pending_read() {
        let registry = Arc::new(Connections::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let _peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let mut stream = Stream::Tcp(listener.accept().await.unwrap().0);
        let new =
            NewClient { id: 9, database: "app".into(), user: "alice".into(), application_name: "", stream: &stream };
        let handle = registry.register_client(new);
        assert_eq!(handle.entry().endpoints().addr(), "127.0.0.1");
        let killer = registry.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            killer.client(9).unwrap().kill(KillReason::AdminForced);
        });
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0, "the read side was shut");
    }

    #[tokio::test]
    async fn clients_and_servers_link_while_checked_out() {
        let registry = Arc::new(Connections::default());
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let (client_stream, server_stream) = (Stream::Unix(a), Stream::Unix(b));
        let client = registry.register_client(NewClient {
            id: 1,
            database: "app".into(),
            user: "alice".into(),
            application_name: "",
            stream: &client_stream,
        });
        let addr = crate::topology::ServerAddr { host: "127.0.0.1".into(), port: 5432 };
        let server = registry.register_server(2, &key(), &addr, &server_stream, 4242, 0);
        client.waiting();
        assert_eq!(registry.client(1).unwrap().state(), ClientState::Waiting);
        client.attached(Some(&server), Tick::now());
        assert_eq!((client.entry().state(), client.entry().server()), (ClientState::Active, 2));
        assert_eq!((server.entry().state(), server.entry().client()), (ServerState::Active, 1));
        client.detached();
        server.entry().checked_in();
        assert_eq!((client.entry().server(), server.entry().state()), (0, ServerState::Idle));
        drop(server);
        assert!(registry.servers().is_empty());
        registry.disable("app");
        assert!(registry.is_disabled("app"));
        registry.enable("app");
        assert!(!registry.is_disabled("app"));
    }
}
