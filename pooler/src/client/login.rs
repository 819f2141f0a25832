//! A client's startup phase: SSLRequest answered from client_tls_sslmode ('S' and the TLS
//! handshake, or 'N'), GSSENCRequest answered 'N', CancelRequest forwarded, then the StartupMessage checked against max_client_conn, the
//! database list and authentication, and the client welcomed with the server's parameters,
//! its own BackendKeyData and ReadyForQuery.

use super::send_fatal;
use crate::admin::{Access, ADMIN_DATABASE};
use crate::auth::{authenticate, AuthQuery, CredentialSource, Credentials, ServerCredential};
use crate::cancel::{CancelSlot, ClientKey};
use crate::config::{AuthType, PoolerConfig};
use crate::connections::{ClientHandle, NewClient};
use crate::pool::{Pool, PoolKey, PoolKeyRef, PoolSettings, Welcome};
use crate::protocol::message::{write_authentication_ok, write_backend_key_data, write_ready_for_query};
use crate::protocol::{
    option_settings, parse_startup_packet, OptionsError, StartupMessage, StartupPacket, TransactionStatus,
};
use crate::runtime::Shared;
use crate::server::auth_query::AuthQueryOnServer;
use crate::server::LoginTarget;
use crate::session::{ParamMap, TrackedParam, SLOTS};
use crate::stream::Stream;
use crate::tls::SslAnswer;
use crate::topology::DatabaseTarget;
use bytes::{Buf, BytesMut};
use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;

/// A client that passed the startup phase.
pub(super) struct LoggedIn {
    pub pool: Arc<Pool>,
    pub settings: Arc<PoolSettings>,
    pub params: ParamMap,
    pub key: ClientKey,
    pub cancel: Arc<CancelSlot>,
    /// Its entry in SHOW CLIENTS (KILL and KILL_CLIENT find it there).
    pub me: ClientHandle,
    /// Its place in max_db_client_connections / max_user_client_connections.
    pub admission: crate::pool::Admission,
}

/// Where a client goes after the startup phase.
pub(super) enum Outcome {
    Pool(LoggedIn),
    /// The `pgbouncer` console; AuthenticationOk has been sent.
    Console(Access, ClientHandle),
}

/// Runs the startup phase; None when the connection is done (refused, cancel, gone).
///
/// Everything rare (a TLS handshake, a cancel, a password exchange, hba, the console, a
/// pool's first server login, a forced user's lookup) runs in its own allocation: this
/// future stays small, and a login that needs none of it copies little (a new connection
/// per transaction moved kilobytes of futures when they were inline).
pub(super) async fn login(stream: &mut Stream, buf: &mut BytesMut, shared: &Shared) -> Option<Outcome> {
    let startup = read_startup(stream, buf, shared).await?;
    if matches!(stream, Stream::Tcp(_)) && !shared.client_tls().plain_allowed() {
        // PgBouncer's words; Unix-socket clients are exempt, as in PgBouncer.
        shared.stats.count_error("tls_required");
        let _ = send_fatal(stream, "08P01", "SSL required").await;
        return None;
    }
    let config = shared.config();
    let (database, user) = (startup.database(), startup.user());
    let clients = shared.stats.client_connections.load(Ordering::Relaxed);
    if clients > config.max_client_conn && database != ADMIN_DATABASE {
        shared.stats.refused_max_client_conn.fetch_add(1, Ordering::Relaxed);
        let _ = send_fatal(stream, "08P01", "no more connections allowed (max_client_conn)").await;
        return None;
    }
    // Boxed: with track_extra_parameters' room the values would weigh on every await below.
    let mut asked_values = match session_values(&startup, &config.ignore_startup_parameters) {
        Ok(asked) => Box::new(asked),
        Err(refusal) => {
            let message = refusal.to_string();
            tracing::info!(user, database, "refusing client: {message}");
            let _ = send_fatal(stream, "08P01", &message).await;
            return None;
        }
    };
    if config.application_name_add_host && database != ADMIN_DATABASE {
        let name = &mut asked_values[TrackedParam::ApplicationName.index()];
        *name = Some(Cow::Owned(with_host(name.as_deref(), stream)));
    }
    let credentials = with_auth_query(shared, &config, database);
    let auth_type = match config.auth_type {
        AuthType::Hba => Box::pin(hba_method(stream, shared, database, user)).await?,
        AuthType::Cert => Box::pin(cert_method(stream, shared, database, user)).await?,
        other => other,
    };
    let client_credential = match trusted(auth_type, &credentials, user) {
        Some(credential) => credential,
        None => match Box::pin(authenticate(stream, buf, user, auth_type, &*credentials)).await {
            Ok(credential) => credential,
            Err(e) => {
                shared.stats.count_error(e.kind());
                tracing::info!(user, "client authentication failed: {e}");
                return None;
            }
        },
    };
    if database == ADMIN_DATABASE {
        return Box::pin(console_login(stream, shared, &config, &startup)).await;
    }
    let Some(target) = shared.topology().target(database) else {
        if let Some(role) = config.cluster_role_of(database) {
            let members = match role {
                crate::config::ClusterRole::Primary => "the cluster's primary, and none is known yet (no leader",
                crate::config::ClusterRole::Replica => {
                    "the cluster's standbys, and no healthy one is known (none running and keeping up"
                }
                crate::config::ClusterRole::ReadOnly => {
                    "the cluster's standbys or its primary, and none is known yet (no member running"
                }
            };
            let message = format!("database {database} goes to {members}, or its DCS not reached yet); try again");
            let _ = send_fatal(stream, "57P03", &message).await;
            return None;
        }
        let _ = send_fatal(stream, "3D000", &format!("no such database: {database}")).await;
        return None;
    };
    if shared.pools.connections.is_disabled(database) {
        let _ = send_fatal(stream, "08P01", &format!("database does not allow connections: {database}")).await;
        return None;
    }
    if shared.shutdown.refuses_new_clients() {
        let _ = send_fatal(stream, "57P03", "the pooler is shutting down (SHUTDOWN WAIT_FOR_CLIENTS)").await;
        return None;
    }
    let key = PoolKeyRef { database, user };
    let pool = match shared.pools.find(key) {
        Some(pool) => pool,
        None => Box::pin(new_pool(shared, &config, &credentials, &target, key, client_credential)).await,
    };
    // admin_users are not held back by the client limits, as in PgBouncer: they must be able
    // to log in to look.
    let admission = if config.admin_users.iter().any(|admin| admin == user) {
        pool.admit_client(0, 0)
    } else {
        let user_limit = config.users.get(user).and_then(|u| u.max_user_client_connections);
        pool.admit_client(
            target.max_db_client_connections.unwrap_or(config.max_db_client_connections),
            user_limit.unwrap_or(config.max_user_client_connections),
        )
    };
    let admission = match admission {
        Ok(admission) => admission,
        Err(limit) => {
            shared.stats.count_error(limit.setting());
            let message = limit.message();
            tracing::info!(user, database, "refusing client: {message}");
            let _ = send_fatal(stream, "08P01", &message).await;
            return None;
        }
    };
    let asked: [Option<&str>; SLOTS] = std::array::from_fn(|i| asked_values[i].as_deref());
    let welcome = match pool.welcome_for(asked) {
        Some(welcome) => welcome,
        None => Box::pin(first_welcome(stream, &pool, &startup, asked)).await?,
    };
    let (key, cancel) = shared.cancels.register();
    let mut out = BytesMut::with_capacity(welcome.messages.len() + 64);
    write_authentication_ok(&mut out);
    out.extend_from_slice(&welcome.messages);
    write_backend_key_data(key.process_id, &key.secret_key, &mut out);
    write_ready_for_query(TransactionStatus::Idle, &mut out);
    if stream.send(&out).await.is_err() {
        shared.cancels.unregister(key);
        return None;
    }
    pool.stats.client_logins.fetch_add(1, Ordering::Relaxed);
    let application_name = asked_values[TrackedParam::ApplicationName.index()].as_deref().unwrap_or_default();
    let me = register(shared, names_of(&pool.key), application_name, stream, config.log_connections);
    let (params, settings) = (welcome.params, welcome.settings);
    Some(Outcome::Pool(LoggedIn { pool, settings, params, key, cancel, me, admission }))
}

/// application_name_add_host: the client's application_name (`app` if it gave none) with
/// where it connects from, as PgBouncer writes it: `psql - 10.0.0.7:51234`, `[::1]:51234` for
/// IPv6, `unix (pid=4242)` over the Unix socket.
fn with_host(application_name: Option<&str>, stream: &Stream) -> String {
    let name = application_name.unwrap_or("app");
    match stream.peer_addr() {
        Some(addr) => format!("{name} - {addr}"),
        None => match stream.peer_pid() {
            Some(pid) => format!("{name} - unix (pid={pid})"),
            None => format!("{name} - unix"),
        },
    }
}

/// The credential a `trust` login passes on to the server, when it is known without waiting:
/// the auth file's password, or none when there is no auth_query to ask. None otherwise (the
/// exchange, or auth_query's lookup, must run).
fn trusted(auth_type: AuthType, credentials: &Credentials, user: &str) -> Option<ServerCredential> {
    if auth_type != AuthType::Trust {
        return None;
    }
    match credentials.in_file(user) {
        Some(secret) => Some(ServerCredential::from_stored(Some(secret))),
        None if credentials.query.is_none() => Some(ServerCredential::None),
        None => None,
    }
}

/// A console login (database `pgbouncer`): admin_users and stats_users only.
async fn console_login(
    stream: &mut Stream,
    shared: &Shared,
    config: &PoolerConfig,
    startup: &StartupMessage,
) -> Option<Outcome> {
    let Some(access) = Access::for_user(&config.admin_users, &config.stats_users, startup.user()) else {
        let _ = send_fatal(stream, "28000", "not allowed").await;
        return None;
    };
    let mut out = BytesMut::new();
    write_authentication_ok(&mut out);
    stream.send(&out).await.ok()?;
    let names = (startup.database().into(), startup.user().into());
    let me =
        register(shared, names, startup.param("application_name").unwrap_or_default(), stream, config.log_connections);
    Some(Outcome::Console(access, me))
}

/// The pool of `key`, created with the settings and server login its first client gives. A
/// forced user (`user =` in the database's entry) logs in to the server with its own stored
/// password, other users with the one their client logged in with.
async fn new_pool(
    shared: &Shared,
    config: &PoolerConfig,
    credentials: &Credentials,
    target: &DatabaseTarget,
    key: PoolKeyRef<'_>,
    client_credential: ServerCredential,
) -> Arc<Pool> {
    let server_credential = match &target.user {
        Some(forced) => ServerCredential::from_stored(credentials.lookup(forced).await.ok().flatten()),
        None => client_credential,
    };
    let user_config = config.users.get(key.user);
    shared.pools.get_or_create(key, || {
        let settings = PoolSettings::new(config, target, user_config);
        let login = LoginTarget {
            addr: target.server().clone(),
            dbname: target.dbname.clone(),
            credential: server_credential,
            user: target.user.clone().unwrap_or_else(|| key.user.to_owned()),
            connect_timeout: settings.server_connect_timeout,
            tcp: settings.tcp,
            tls: shared.server_tls(),
        };
        (settings, login, target.servers.clone())
    })
}

/// A pool no server connection has logged in to yet: one logs in now (its ParameterStatus
/// values welcome the pool's clients) and goes back to the pool. A failure is the client's
/// FATAL.
async fn first_welcome(
    stream: &mut Stream,
    pool: &Pool,
    startup: &StartupMessage,
    asked: [Option<&str>; SLOTS],
) -> Option<Welcome> {
    match pool.acquire().await {
        Ok(conn) => pool.release(conn),
        Err(e) => {
            let (database, user) = (startup.database(), startup.user());
            tracing::warn!(database, user, "login refused: no server connection: {e}");
            let (code, message) = match &e {
                crate::pool::AcquireError::Server(s) => (s.sqlstate().to_owned(), s.to_string()),
                failing @ crate::pool::AcquireError::LoginFailing(_) => ("08P01".to_owned(), failing.to_string()),
                other => ("08006".to_owned(), other.to_string()),
            };
            let _ = send_fatal(stream, &code, &message).await;
            return None;
        }
    }
    let welcome = pool.welcome_for(asked);
    if welcome.is_none() {
        // Not expected: the connection that just logged in recorded its parameters.
        let _ = send_fatal(stream, "08006", "the server's parameters are not known yet; try again").await;
    }
    welcome
}

/// auth_type = "hba": the method auth_hba_file gives this connection, as an auth_type for the
/// exchange. `reject` (or no matching line) and a failed `peer` check are answered here with
/// PostgreSQL's words (SQLSTATE 28000) and end the login (None).
async fn hba_method(stream: &mut Stream, shared: &Shared, database: &str, user: &str) -> Option<AuthType> {
    use crate::auth::hba::{Connection, HbaMethod};
    let Some(rules) = shared.hba() else {
        shared.stats.count_error("auth_failed");
        let _ = send_fatal(stream, "28000", "auth_type is hba but no auth_hba_file is loaded").await;
        return None;
    };
    let unix = matches!(stream, Stream::Unix(_));
    let addr = stream.peer_ip();
    let tls = stream.is_tls();
    let decision = rules.decide(&Connection { unix, tls, addr, database, user });
    let host = addr.map_or_else(|| "[local]".to_owned(), |a| a.to_string());
    let encryption = if tls { "SSL encryption" } else { "no encryption" };
    match decision.method {
        HbaMethod::Trust => Some(AuthType::Trust),
        HbaMethod::Md5 => Some(AuthType::Md5),
        HbaMethod::Password => Some(AuthType::Plain),
        HbaMethod::ScramSha256 => Some(AuthType::ScramSha256),
        HbaMethod::Reject => {
            let message = match decision.line {
                Some(_) => format!(
                    "pg_hba.conf rejects connection for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
                ),
                None => format!(
                    "no pg_hba.conf entry for host \"{host}\", user \"{user}\", database \"{database}\", {encryption}"
                ),
            };
            tracing::info!(user, database, client = %host, "login refused: {message}");
            shared.stats.count_error("auth_failed");
            let _ = send_fatal(stream, "28000", &message).await;
            None
        }
        HbaMethod::Cert => cert_method(stream, shared, database, user).await,
        HbaMethod::Peer => {
            let os_user = stream.peer_user();
            if os_user.as_deref() == Some(user) {
                return Some(AuthType::Trust);
            }
            let why = match os_user {
                Some(os) => format!("Peer authentication failed for user \"{user}\" (the client runs as {os:?})"),
                None => format!("Peer authentication failed for user \"{user}\" (cannot tell who the client is)"),
            };
            tracing::info!(user, database, client = %host, "login refused: {why}");
            shared.stats.count_error("auth_failed");
            let _ = send_fatal(stream, "28000", &format!("Peer authentication failed for user \"{user}\"")).await;
            None
        }
    }
}

/// auth_type = "cert" (or hba's `cert`): the client is in as `user` if the certificate it
/// presented names it (`Some(Trust)`); otherwise it is told so in PostgreSQL's words (SQLSTATE
/// 28000) and the login ends (None).
async fn cert_method(stream: &mut Stream, shared: &Shared, database: &str, user: &str) -> Option<AuthType> {
    match crate::auth::cert::check(stream.peer_certificate(), user) {
        Ok(()) => Some(AuthType::Trust),
        Err(refusal) => {
            let client = stream.peer_ip().map_or_else(|| "[local]".to_owned(), |a| a.to_string());
            tracing::info!(user, database, client, "login refused: {}", refusal.detail());
            shared.stats.count_error("auth_failed");
            let _ = send_fatal(stream, "28000", &refusal.to_string()).await;
            None
        }
    }
}

/// The tracked session parameters a client sent (`ParamMap::values_of`: later ones win), or
/// why it is refused: the first parameter the pooler neither tracks nor is told to ignore
/// (ignore_startup_parameters), as PgBouncer refuses it. `user`, `database` and protocol
/// options (`_pq_.*`) are always accepted. `options` (`PGOPTIONS`) is read as PgBouncer 1.20
/// and later read it: its `-c name=value` settings of tracked parameters count as if sent as
/// parameters (a parameter sent on its own wins, as in PostgreSQL), ignored ones are
/// dropped, any other is refused rather than lost; `options` in ignore_startup_parameters
/// drops it whole.
pub(crate) fn session_values<'a>(
    startup: &'a StartupMessage,
    ignored: &[String],
) -> Result<[Option<Cow<'a, str>>; SLOTS], Refusal<'a>> {
    let is_ignored = |name: &str| ignored.iter().any(|i| i.eq_ignore_ascii_case(name));
    let mut values: [Option<Cow<'a, str>>; SLOTS] = Default::default();
    let mut options = None;
    for (name, value) in startup.params() {
        if let Some(param) = TrackedParam::from_name(name) {
            values[param.index()] = Some(Cow::Borrowed(value));
        } else if matches!(name, "user" | "database") || name.starts_with("_pq_.") {
        } else if is_ignored(name) {
            tracing::debug!(parameter = name, "startup parameter in ignore_startup_parameters; ignored");
        } else if name == "options" {
            options = Some(value);
        } else {
            return Err(Refusal::Parameter(name));
        }
    }
    let Some(options) = options else {
        return Ok(values);
    };
    let mut from_options: [Option<Cow<'a, str>>; SLOTS] = Default::default();
    for (name, value) in option_settings(options).map_err(Refusal::Options)? {
        match TrackedParam::from_name(&name) {
            Some(param) => from_options[param.index()] = Some(Cow::Owned(value)),
            None if is_ignored(&name) => {
                tracing::debug!(parameter = %name, "setting in options is in ignore_startup_parameters; ignored");
            }
            None => return Err(Refusal::InOptions(name)),
        }
    }
    for (value, from_options) in values.iter_mut().zip(from_options) {
        if value.is_none() {
            *value = from_options;
        }
    }
    Ok(values)
}

/// Why a client's startup parameters are refused (FATAL 08P01, PgBouncer's words).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refusal<'a> {
    Parameter(&'a str),
    Options(OptionsError),
    InOptions(String),
}

impl std::fmt::Display for Refusal<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Parameter(name) => write!(f, "unsupported startup parameter: {name}"),
            Refusal::Options(e) => write!(f, "{e}"),
            Refusal::InOptions(name) => write!(f, "unsupported startup parameter in options: {name}"),
        }
    }
}

/// A pool's database and user names, shared with its clients' entries.
fn names_of(key: &PoolKey) -> (Arc<str>, Arc<str>) {
    (key.database.clone(), key.user.clone())
}

fn register(
    shared: &Shared,
    (database, user): (Arc<str>, Arc<str>),
    application_name: &str,
    stream: &Stream,
    log: bool,
) -> ClientHandle {
    let me = shared.pools.connections.register_client(NewClient {
        id: crate::server::next_id(),
        database,
        user,
        application_name,
        stream,
    });
    if log {
        super::log_client_login(me.entry());
    }
    me
}

/// The auth file, then (with auth_user set, globally or for the database) auth_query run as
/// auth_user, who logs in with its password from the auth file, on the server of the database
/// the client asked for, or of auth_dbname's entry when that is set (for the database, or
/// globally).
fn with_auth_query(shared: &Shared, config: &PoolerConfig, database: &str) -> Arc<Credentials> {
    let credentials = shared.credentials();
    let entry = config.databases.get(database);
    let auth_user = entry.and_then(|d| d.auth_user.clone()).or_else(|| config.auth_user.clone());
    let (Some(auth_user), false) = (auth_user, database == ADMIN_DATABASE) else {
        return credentials;
    };
    let auth_database =
        entry.and_then(|d| d.auth_dbname.as_deref()).or(config.auth_dbname.as_deref()).unwrap_or(database);
    let Some(target) = shared.topology().target(auth_database) else {
        return credentials;
    };
    let credential = ServerCredential::from_stored(credentials.in_file(&auth_user));
    let timeout = crate::pool::secs(config.server_connect_timeout).unwrap_or(Duration::from_secs(15));
    let runner = AuthQueryOnServer {
        connections: shared.auth_connections.clone(),
        login: LoginTarget {
            addr: target.server().clone(),
            dbname: target.dbname.clone(),
            user: auth_user,
            credential,
            connect_timeout: timeout,
            tcp: crate::tcp::TcpOptions::from_config(config),
            tls: shared.server_tls(),
        },
        timeout,
    };
    Arc::new(Credentials {
        file: credentials.file.clone(),
        query: Some(Arc::new(AuthQuery::new(config.auth_query.clone(), Arc::new(runner)))),
    })
}

/// The first packets: GSSENCRequest is answered 'N', an SSLRequest as client_tls_sslmode says
/// ('S' and the handshake, after which `stream` is the TLS stream, or 'N'). Stops at the first
/// other packet, left in `buf` for [`login`]. False when the connection is done.
pub(super) async fn negotiate_tls(stream: &mut Stream, buf: &mut BytesMut, shared: &Shared) -> bool {
    loop {
        match parse_startup_packet(buf) {
            Ok(Some((StartupPacket::GssEncRequest, len))) => {
                buf.advance(len);
                if stream.send(b"N").await.is_err() {
                    return false;
                }
            }
            Ok(Some((StartupPacket::SslRequest, len))) => {
                buf.advance(len);
                let tls = shared.client_tls();
                let tcp = match std::mem::replace(stream, Stream::Detached(None)) {
                    Stream::Tcp(tcp) if tls.ssl_answer() == SslAnswer::Accept => tcp,
                    other => {
                        *stream = other;
                        return stream.send(b"N").await.is_ok();
                    }
                };
                let pending = std::mem::take(buf);
                return match Box::pin(tls.handshake(tcp, &pending)).await {
                    Ok(upgraded) => {
                        *stream = upgraded;
                        true
                    }
                    Err(e) => {
                        tracing::info!("client TLS negotiation failed: {e}");
                        false
                    }
                };
            }
            // Anything else (or a malformed packet) is login's to answer.
            Ok(Some(_)) | Err(_) => return true,
            Ok(None) => {
                crate::buffers::lend_for_login(buf);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        }
    }
}

/// Reads first packets until a StartupMessage; answers SSL/GSS requests and forwards cancels.
async fn read_startup(stream: &mut Stream, buf: &mut BytesMut, shared: &Shared) -> Option<StartupMessage> {
    loop {
        match parse_startup_packet(buf) {
            Ok(Some((packet, len))) => {
                buf.advance(len);
                match packet {
                    StartupPacket::SslRequest | StartupPacket::GssEncRequest => {
                        if !buf.is_empty() {
                            // Bytes sent before our answer would be read as plaintext after a
                            // TLS handshake: PostgreSQL refuses this too.
                            let _ = send_fatal(stream, "08P01", "received unencrypted data after SSL request").await;
                            return None;
                        }
                        stream.send(b"N").await.ok()?;
                    }
                    StartupPacket::Cancel(request) => {
                        let timeout = crate::pool::secs(shared.config().server_connect_timeout)
                            .unwrap_or(std::time::Duration::from_secs(15));
                        Box::pin(shared.cancels.cancel(&request, timeout)).await;
                        return None;
                    }
                    StartupPacket::Startup(message) => return Some(message),
                }
            }
            Ok(None) => {
                crate::buffers::lend_for_login(buf);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
            Err(e) => {
                let _ = send_fatal(stream, e.sqlstate(), &e.to_string()).await;
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{session_values, Refusal};
    use crate::protocol::{OptionsError, StartupMessage};
    use crate::session::{ParamMap, TrackedParam, SLOTS};

    fn startup(names: &[&str]) -> StartupMessage {
        StartupMessage::new(0, names.iter().map(|n| (*n, "x"))).expect("valid parameters")
    }

    fn unsupported<'a>(startup: &'a StartupMessage, ignored: &[String]) -> Option<Refusal<'a>> {
        session_values(startup, ignored).err()
    }

    /// The values as `&str`, as a login hands them to its pool.
    fn asked(message: &StartupMessage, ignored: &[String]) -> [Option<String>; SLOTS] {
        let values = session_values(message, ignored).expect("accepted");
        values.map(|v| v.map(|v| v.into_owned()))
    }

    #[test]
    fn unknown_startup_parameters_are_refused_unless_ignored() {
        let ignored = vec!["extra_float_digits".to_string()];
        let known = ["user", "database", "application_name", "DateStyle", "client_encoding", "_pq_.x"];
        assert_eq!(unsupported(&startup(&known), &[]), None);
        assert_eq!(
            unsupported(&startup(&["user", "extra_float_digits"]), &[]),
            Some(Refusal::Parameter("extra_float_digits"))
        );
        assert_eq!(unsupported(&startup(&["user", "EXTRA_FLOAT_DIGITS"]), &ignored), None);
        assert_eq!(
            unsupported(&startup(&["user", "extra_float_digits", "search_path"]), &ignored),
            Some(Refusal::Parameter("search_path"))
        );
    }

    #[test]
    fn the_tracked_values_are_those_a_map_built_from_the_parameters_holds() {
        let message = StartupMessage::new(
            0,
            [("user", "u"), ("TimeZone", "UTC"), ("application_name", "a"), ("timezone", "Europe/Paris")],
        )
        .expect("valid parameters");
        let values = session_values(&message, &[]).expect("all accepted");
        let borrowed: [Option<&str>; SLOTS] = std::array::from_fn(|i| values[i].as_deref());
        assert_eq!(borrowed, ParamMap::values_of(message.params()));
        assert_eq!(borrowed[TrackedParam::TimeZone.index()], Some("Europe/Paris"));
        assert_eq!(borrowed[TrackedParam::ApplicationName.index()], Some("a"));
        assert_eq!(borrowed[TrackedParam::DateStyle.index()], None);
    }

    /// PGOPTIONS: tracked settings count, a parameter sent on its own wins over the same one
    /// in options, ignored ones are dropped, others refused (not silently lost).
    #[test]
    fn options_settings_of_tracked_parameters_count_and_others_are_refused() {
        let with_options = |options: &str| {
            StartupMessage::new(0, [("user", "u"), ("options", options), ("TimeZone", "UTC")]).expect("valid")
        };
        let message = with_options("-c DateStyle=SQL,\\ DMY --TimeZone=Asia/Tokyo -c application_name=x");
        let values = asked(&message, &[]);
        assert_eq!(values[TrackedParam::DateStyle.index()].as_deref(), Some("SQL, DMY"));
        assert_eq!(
            values[TrackedParam::TimeZone.index()].as_deref(),
            Some("UTC"),
            "the parameter sent on its own wins"
        );
        assert_eq!(values[TrackedParam::ApplicationName.index()].as_deref(), Some("x"));

        let message = with_options("-c statement_timeout=5s");
        assert_eq!(unsupported(&message, &[]), Some(Refusal::InOptions("statement_timeout".into())));
        assert_eq!(
            unsupported(&message, &[]).map(|r| r.to_string()).as_deref(),
            Some("unsupported startup parameter in options: statement_timeout")
        );
        let ignore_it = vec!["statement_timeout".to_string()];
        assert_eq!(unsupported(&message, &ignore_it), None);
        let ignore_options = vec!["options".to_string()];
        assert_eq!(unsupported(&with_options("-B 100"), &ignore_options), None, "options ignored whole");
        assert_eq!(unsupported(&with_options("-B 100"), &[]), Some(Refusal::Options(OptionsError::Syntax)));
        assert_eq!(unsupported(&with_options(""), &[]), None);
    }
}
