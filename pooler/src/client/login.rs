//! A client's startup phase: SSLRequest answered from client_tls_sslmode ('S' and the TLS
//! handshake, or 'N'), GSSENCRequest answered 'N', CancelRequest forwarded, then the StartupMessage checked against max_client_conn, the
//! database list and authentication, and the client welcomed with the server's parameters,
//! its own BackendKeyData and ReadyForQuery.

use super::send_fatal;
use crate::admin::{Access, ADMIN_DATABASE};
use crate::auth::{authenticate_client, AuthQuery, CredentialSource, Credentials, ServerCredential, StoredSecret};
use crate::cancel::{CancelSlot, ClientKey};
use crate::config::{AuthType, PoolerConfig};
use crate::connections::{ClientHandle, NewClient};
use crate::pool::{Pool, PoolKey, PoolSettings};
use crate::protocol::message::{write_authentication_ok, write_backend_key_data, write_ready_for_query};
use crate::protocol::{parse_startup_packet, StartupMessage, StartupPacket, TransactionStatus};
use crate::runtime::Shared;
use crate::server::auth_query::AuthQueryOnServer;
use crate::server::LoginTarget;
use crate::session::ParamMap;
use crate::stream::Stream;
use bytes::{Buf, BytesMut};
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
}

/// Where a client goes after the startup phase.
pub(super) enum Outcome {
    Pool(LoggedIn),
    /// The `pgbouncer` console; AuthenticationOk has been sent.
    Console(Access, ClientHandle),
}

/// Runs the startup phase; None when the connection is done (refused, cancel, gone).
pub(super) async fn login(stream: &mut Stream, buf: &mut BytesMut, shared: &Shared) -> Option<Outcome> {
    let startup = read_startup(stream, buf, shared).await?;
    if matches!(stream, Stream::Tcp(_)) && !shared.client_tls().plain_allowed() {
        // PgBouncer's words; Unix-socket clients are exempt, as in PgBouncer.
        shared.stats.count_error("tls_required");
        let _ = send_fatal(stream, "08P01", "SSL required").await;
        return None;
    }
    let config = shared.config();
    let database = startup.database().to_owned();
    let user = startup.user().to_owned();
    let clients = shared.stats.client_connections.load(Ordering::Relaxed);
    if clients > config.max_client_conn && database != "pgbouncer" {
        shared.stats.refused_max_client_conn.fetch_add(1, Ordering::Relaxed);
        let _ = send_fatal(stream, "08P01", "no more connections allowed (max_client_conn)").await;
        return None;
    }
    if let Some(name) = unsupported_parameter(&startup, &config.ignore_startup_parameters) {
        tracing::info!(user, database, parameter = name, "refusing client: unsupported startup parameter");
        let _ = send_fatal(stream, "08P01", &format!("unsupported startup parameter: {name}")).await;
        return None;
    }
    let credentials = with_auth_query(shared, &config, &database);
    let auth_timeout = crate::pool::secs(config.client_login_timeout).unwrap_or(Duration::from_secs(3600));
    let auth_type = match config.auth_type {
        AuthType::Hba => hba_method(stream, shared, &database, &user).await?,
        other => other,
    };
    let client_credential = match authenticate_client(stream, buf, &user, auth_type, &*credentials, auth_timeout).await
    {
        Ok(credential) => credential,
        Err(e) => {
            shared.stats.count_error(e.kind());
            tracing::info!(user, "client authentication failed: {e}");
            return None;
        }
    };
    if database == ADMIN_DATABASE {
        let Some(access) = Access::for_user(&config.admin_users, &config.stats_users, &user) else {
            let _ = send_fatal(stream, "28000", "not allowed").await;
            return None;
        };
        let mut out = BytesMut::new();
        write_authentication_ok(&mut out);
        stream.send(&out).await.ok()?;
        let me = register(shared, &startup, stream, config.log_connections);
        return Some(Outcome::Console(access, me));
    }
    let Some(target) = shared.topology().target(&database) else {
        let _ = send_fatal(stream, "3D000", &format!("no such database: {database}")).await;
        return None;
    };
    if shared.pools.connections.is_disabled(&database) {
        let _ = send_fatal(stream, "08P01", &format!("database does not allow connections: {database}")).await;
        return None;
    }
    if shared.shutdown.refuses_new_clients() {
        let _ = send_fatal(stream, "57P03", "the pooler is shutting down (SHUTDOWN WAIT_FOR_CLIENTS)").await;
        return None;
    }
    let server_user = target.user.clone().unwrap_or_else(|| user.clone());
    let user_config = config.users.get(&user);
    let server_credential = match &target.user {
        // A forced user logs in with its own stored password.
        Some(forced) => match credentials.lookup(forced).await {
            Ok(Some(StoredSecret::Plain(p))) => ServerCredential::Password(p),
            Ok(Some(StoredSecret::Md5(h))) => ServerCredential::Md5Hash(h),
            _ => ServerCredential::None,
        },
        None => client_credential,
    };
    let key = PoolKey { server: target.server.clone(), database: database.clone(), user: user.clone() };
    let pool = shared.pools.get_or_create(&key, || {
        let settings = PoolSettings::new(
            &config,
            &target,
            user_config.and_then(|u| u.pool_mode),
            user_config.and_then(|u| u.max_user_connections),
        );
        let login = LoginTarget {
            addr: target.server.clone(),
            dbname: target.dbname.clone(),
            credential: server_credential,
            user: server_user.clone(),
            connect_timeout: settings.server_connect_timeout,
            tcp: settings.tcp,
            tls: shared.server_tls(),
        };
        (settings, login)
    });
    let welcome = match pool.welcome() {
        Some(welcome) => welcome,
        None => match pool.acquire().await {
            Ok(conn) => {
                let welcome = conn.login_params.clone();
                pool.release(conn);
                welcome
            }
            Err(e) => {
                tracing::warn!(database, user, "login refused: no server connection: {e}");
                let (code, message) = match &e {
                    crate::pool::AcquireError::Server(s) => (s.sqlstate().to_owned(), s.to_string()),
                    other => ("08006".to_owned(), other.to_string()),
                };
                let _ = send_fatal(stream, &code, &message).await;
                return None;
            }
        },
    };
    if tracing::enabled!(tracing::Level::DEBUG) {
        for (name, _) in &startup.params {
            if crate::session::TrackedParam::from_name(name).is_none() && !matches!(name.as_str(), "user" | "database")
            {
                tracing::debug!(parameter = name.as_str(), "startup parameter in ignore_startup_parameters; ignored");
            }
        }
    }
    // The server's values, the client's own where it sent them.
    let pairs = welcome.iter().chain(startup.params.iter()).map(|(k, v)| (k.as_str(), v.as_str()));
    let params = pool.share_values(&ParamMap::values_of(pairs));
    let (key, cancel) = shared.cancels.register();
    let mut out = BytesMut::with_capacity(512);
    write_authentication_ok(&mut out);
    out.extend_from_slice(&pool.welcome_messages(&params, &welcome));
    write_backend_key_data(key.process_id, &key.secret_key, &mut out);
    write_ready_for_query(TransactionStatus::Idle, &mut out);
    if stream.send(&out).await.is_err() {
        shared.cancels.unregister(key);
        return None;
    }
    pool.stats.client_logins.fetch_add(1, Ordering::Relaxed);
    let settings = pool.settings();
    let me = register(shared, &startup, stream, config.log_connections);
    Some(Outcome::Pool(LoggedIn { pool, settings, params, key, cancel, me }))
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

/// The first startup parameter the pooler neither tracks nor is told to ignore
/// (ignore_startup_parameters), as PgBouncer refuses it. `user`, `database`, `options`
/// and protocol options (`_pq_.*`) are always accepted.
pub(crate) fn unsupported_parameter<'a>(startup: &'a StartupMessage, ignored: &[String]) -> Option<&'a str> {
    startup.params.iter().map(|(name, _)| name.as_str()).find(|name| {
        !matches!(*name, "user" | "database" | "options")
            && !name.starts_with("_pq_.")
            && crate::session::TrackedParam::from_name(name).is_none()
            && !ignored.iter().any(|i| i.eq_ignore_ascii_case(name))
    })
}

fn register(shared: &Shared, startup: &StartupMessage, stream: &Stream, log: bool) -> ClientHandle {
    let me = shared.pools.connections.register_client(NewClient {
        id: crate::server::next_id(),
        database: startup.database(),
        user: startup.user(),
        application_name: startup.param("application_name").unwrap_or_default(),
        stream,
    });
    if log {
        super::log_client_login(me.entry());
    }
    me
}

/// The auth file, then (with auth_user set, globally or for the database) auth_query run on
/// the database's server as auth_user, who logs in with its password from the auth file.
fn with_auth_query(shared: &Shared, config: &PoolerConfig, database: &str) -> Arc<Credentials> {
    let credentials = shared.credentials();
    let auth_user = config.databases.get(database).and_then(|d| d.auth_user.clone()).or(config.auth_user.clone());
    let (Some(auth_user), false) = (auth_user, database == ADMIN_DATABASE) else {
        return credentials;
    };
    let Some(target) = shared.topology().target(database) else {
        return credentials;
    };
    let secret = credentials.file.as_ref().and_then(|f| f.snapshot().get(&auth_user).cloned());
    let credential = match secret {
        Some(StoredSecret::Plain(p)) => ServerCredential::Password(p),
        Some(StoredSecret::Md5(h)) => ServerCredential::Md5Hash(h),
        _ => ServerCredential::None,
    };
    let timeout = crate::pool::secs(config.server_connect_timeout).unwrap_or(Duration::from_secs(15));
    let runner = AuthQueryOnServer {
        connections: shared.auth_connections.clone(),
        login: LoginTarget {
            addr: target.server.clone(),
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
/// (the stream becomes TLS after 'S'). Stops at the first other packet, left in `buf` for
/// [`login`]. None when the connection is done.
pub(super) async fn negotiate_tls(mut stream: Stream, buf: &mut BytesMut, shared: &Shared) -> Option<Stream> {
    loop {
        match parse_startup_packet(buf) {
            Ok(Some((StartupPacket::GssEncRequest, len))) => {
                buf.advance(len);
                stream.send(b"N").await.ok()?;
            }
            Ok(Some((StartupPacket::SslRequest, len))) => {
                buf.advance(len);
                let pending = std::mem::take(buf);
                return match shared.client_tls().answer_on(stream, &pending).await {
                    Ok(stream) => Some(stream),
                    Err(e) => {
                        tracing::info!("client TLS negotiation failed: {e}");
                        None
                    }
                };
            }
            // Anything else (or a malformed packet) is login's to answer.
            Ok(Some(_)) | Err(_) => return Some(stream),
            Ok(None) => {
                buf.reserve(1024);
                match stream.read_buf(buf).await {
                    Ok(0) | Err(_) => return None,
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
                        shared.cancels.cancel(&request, timeout).await;
                        return None;
                    }
                    StartupPacket::Startup(message) => return Some(message),
                }
            }
            Ok(None) => {
                buf.reserve(1024);
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
    use super::unsupported_parameter;
    use crate::protocol::StartupMessage;

    fn startup(names: &[&str]) -> StartupMessage {
        StartupMessage { protocol_minor: 0, params: names.iter().map(|n| (n.to_string(), "x".to_string())).collect() }
    }

    #[test]
    fn unknown_startup_parameters_are_refused_unless_ignored() {
        let ignored = vec!["extra_float_digits".to_string()];
        let known = ["user", "database", "application_name", "DateStyle", "client_encoding", "options", "_pq_.x"];
        assert_eq!(unsupported_parameter(&startup(&known), &[]), None);
        assert_eq!(unsupported_parameter(&startup(&["user", "extra_float_digits"]), &[]), Some("extra_float_digits"));
        assert_eq!(unsupported_parameter(&startup(&["user", "EXTRA_FLOAT_DIGITS"]), &ignored), None);
        assert_eq!(
            unsupported_parameter(&startup(&["user", "extra_float_digits", "search_path"]), &ignored),
            Some("search_path")
        );
    }
}
