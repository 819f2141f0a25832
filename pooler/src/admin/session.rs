//! The console session of one authenticated admin or stats user, over any stream: greet as
//! PgBouncer does, then answer simple-protocol queries until Terminate. Extended protocol is
//! refused with PgBouncer's error and the connection closed. Owns no sockets.

use super::backend::{AdminBackend, AdminError};
use super::command::{self, Command, ParseError, Show};
use super::resultset::{self as rs, Column};
use super::rows::{self, StatsAveragesRow, StatsTotalsRow, VersionRow};
use crate::auth::wire::{self, ReadError};
use crate::protocol::message::{write_backend_key_data, write_parameter_status, write_ready_for_query};
use crate::protocol::{ErrorResponse, Severity, TransactionStatus};
use bytes::BytesMut;
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// admin_users: every command.
    Admin,
    /// stats_users: SHOW only.
    Stats,
}

/// The virtual database clients name to reach the console.
pub const ADMIN_DATABASE: &str = "pgbouncer";

impl Access {
    /// The console access of `user` (admin_users first), `None` if it has none. The caller
    /// refuses a `None` login to the console with FATAL 28000 as PgBouncer does:
    /// `not allowed`.
    pub fn for_user(admin_users: &[String], stats_users: &[String], user: &str) -> Option<Access> {
        if admin_users.iter().any(|u| u == user) {
            Some(Access::Admin)
        } else if stats_users.iter().any(|u| u == user) {
            Some(Access::Stats)
        } else {
            None
        }
    }
}

/// Session limits.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Longest query accepted (PgBouncer's own parser limits are far below this).
    pub max_query_len: usize,
    /// Close the session after this long without a query (client_idle_timeout); `None`: never.
    pub idle_timeout: Option<Duration>,
    /// Give up on a client that does not read its answer within this time.
    pub write_timeout: Duration,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions { max_query_len: 64 * 1024, idle_timeout: None, write_timeout: Duration::from_secs(30) }
    }
}

/// How a session ended other than by the client's Terminate.
#[derive(Debug, Error)]
pub enum SessionError {
    #[error("admin console: {0}")]
    Read(#[from] ReadError),
    #[error("admin console: client idle for longer than {0:?}")]
    Idle(Duration),
    #[error("admin console: client did not read its answer within {0:?}")]
    WriteTimeout(Duration),
    #[error("admin console: client used a message the console does not accept ({0:?})")]
    Protocol(char),
}

/// What SHOW HELP prints (PgBouncer's text).
const HELP: &str = "\n\tSHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|VERSION\n\
\tSHOW PEERS|PEER_POOLS\n\
\tSHOW FDS|LISTS|MEM|STATE\n\
\tSHOW DNS_HOSTS|DNS_ZONES\n\
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS\n\
\tSET key = arg\n\
\tRELOAD\n\
\tPAUSE [<db>]\n\
\tRESUME [<db>]\n\
\tDISABLE <db>\n\
\tENABLE <db>\n\
\tRECONNECT [<db>]\n\
\tKILL [<db>]\n\
\tKILL_CLIENT <client_id>\n\
\tSUSPEND\n\
\tSHUTDOWN\n\
\tSHUTDOWN WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS\n\
\tWAIT_CLOSE [<db>]";

/// The parameters the console reports after login, as PgBouncer does.
pub const GREETING_PARAMETERS: &[(&str, &str)] = &[
    ("server_version", "1.25.2/bouncer"),
    ("client_encoding", "UTF8"),
    ("server_encoding", "UTF8"),
    ("DateStyle", "ISO"),
    ("TimeZone", "GMT"),
    ("standard_conforming_strings", "on"),
    ("is_superuser", "on"),
];

/// Runs the session after the caller has sent AuthenticationOk. `buf` holds bytes already read
/// from the client. Returns `Ok` when the client sends Terminate or closes between queries.
pub async fn serve_admin<S, B>(
    stream: &mut S,
    buf: &mut BytesMut,
    access: Access,
    backend: &B,
    options: SessionOptions,
) -> Result<(), SessionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AdminBackend + ?Sized,
{
    let mut out = BytesMut::new();
    for (name, value) in GREETING_PARAMETERS {
        write_parameter_status(name, value, &mut out);
    }
    let mut key = [0u8; 8];
    let _ = getrandom::fill(&mut key);
    write_backend_key_data(i32::from_be_bytes([key[0], key[1], key[2], key[3]]) & 0x7fff_ffff, &key[4..], &mut out);
    write_ready_for_query(TransactionStatus::Idle, &mut out);
    flush(stream, &mut out, options.write_timeout).await?;
    loop {
        let read = wire::read_message(stream, buf, options.max_query_len);
        let message = match options.idle_timeout {
            Some(limit) => crate::clock::timeout(limit, read).await.map_err(|_| SessionError::Idle(limit))?,
            None => read.await,
        };
        let message = match message {
            Ok(m) => m,
            Err(ReadError::Closed) if buf.is_empty() => return Ok(()),
            Err(e @ ReadError::BadLength { .. }) => {
                let text = format!("query too long for the admin console: {e}");
                error(&text, "08P01", &mut out);
                let _ = flush(stream, &mut out, options.write_timeout).await;
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        match message.tag {
            b'Q' => {
                let body = message.body.strip_suffix(&[0]).unwrap_or(&message.body);
                let query = String::from_utf8_lossy(body);
                answer(&query, access, backend, &mut out).await;
                write_ready_for_query(TransactionStatus::Idle, &mut out);
                flush(stream, &mut out, options.write_timeout).await?;
            }
            b'X' => return Ok(()),
            tag => {
                let text = match tag {
                    b'P' | b'B' | b'E' | b'D' | b'C' | b'S' | b'H' => {
                        "extended query protocol not supported by admin console".to_string()
                    }
                    other => format!("unsupported packet type for admin console: {}", char::from(other)),
                };
                error(&text, "08P01", &mut out);
                let _ = flush(stream, &mut out, options.write_timeout).await;
                return Err(SessionError::Protocol(char::from(tag)));
            }
        }
    }
}

async fn flush<S: AsyncWrite + Unpin>(stream: &mut S, out: &mut BytesMut, limit: Duration) -> Result<(), SessionError> {
    let result = crate::clock::timeout(limit, wire::send(stream, out)).await;
    out.clear();
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(SessionError::Read(ReadError::Io(e))),
        Err(_) => Err(SessionError::WriteTimeout(limit)),
    }
}

fn error(message: &str, code: &str, out: &mut BytesMut) {
    ErrorResponse::new(Severity::Error, code, message).encode(out);
}

/// Appends the answer to one query (without ReadyForQuery) to `out`.
pub async fn answer<B: AdminBackend + ?Sized>(query: &str, access: Access, backend: &B, out: &mut BytesMut) {
    if query.trim_matches(|c: char| c.is_ascii_whitespace() || c == ';').is_empty() {
        rs::write_empty_query_response(out);
        return;
    }
    let command = match command::parse(query) {
        Ok(c) => c,
        Err(e @ (ParseError::Invalid(_) | ParseError::BadArguments | ParseError::DatabaseRequired)) => {
            return error(&e.to_string(), "08P01", out);
        }
    };
    if access == Access::Stats && !command.is_read_only() {
        return error("admin access needed", "08P01", out);
    }
    let (result, tag) = match command {
        Command::Show(what) => return show(what, backend, out).await,
        Command::Pause(db) => (backend.pause(db.as_deref()).await, "PAUSE"),
        Command::Resume(db) => (backend.resume(db.as_deref()).await, "RESUME"),
        Command::Disable(db) => (backend.disable(&db).await, "DISABLE"),
        Command::Enable(db) => (backend.enable(&db).await, "ENABLE"),
        Command::Reconnect(db) => (backend.reconnect(db.as_deref()).await, "RECONNECT"),
        Command::Kill(db) => (backend.kill(db.as_deref()).await, "KILL"),
        Command::KillClient(id) => (backend.kill_client(id).await, "KILL_CLIENT"),
        Command::WaitClose(db) => (backend.wait_close(db.as_deref()).await, "WAIT_CLOSE"),
        Command::Reload => (backend.reload().await, "RELOAD"),
        Command::Suspend => (backend.suspend().await, "SUSPEND"),
        Command::Shutdown(mode) => (backend.shutdown(mode).await, "SHUTDOWN"),
        Command::Set { key, value } => (backend.set(&key, &value).await, "SET"),
    };
    match result {
        Ok(()) => rs::write_command_complete(tag, out),
        Err(e) => admin_error(&e, out),
    }
}

fn admin_error(e: &AdminError, out: &mut BytesMut) {
    error(&e.to_string(), e.sqlstate(), out);
}

fn empty(columns: &[Column], out: &mut BytesMut) {
    rs::write_row_description(columns, out);
    rs::write_command_complete("SHOW", out);
}

async fn show<B: AdminBackend + ?Sized>(what: Show, backend: &B, out: &mut BytesMut) {
    match what {
        Show::Help => {
            rs::write_notice("Console usage", HELP, out);
            rs::write_command_complete("SHOW", out);
        }
        Show::Pools => rs::write_rows(&backend.pools().await, out),
        Show::Stats => rs::write_rows(&backend.stats().await, out),
        Show::StatsTotals => {
            let stats = backend.stats().await;
            rs::write_rows(&stats.iter().map(StatsTotalsRow).collect::<Vec<_>>(), out);
        }
        Show::StatsAverages => {
            let stats = backend.stats().await;
            rs::write_rows(&stats.iter().map(StatsAveragesRow).collect::<Vec<_>>(), out);
        }
        Show::Totals => rs::write_rows(&rows::totals(&backend.stats().await), out),
        Show::Servers => rs::write_rows(&backend.servers().await, out),
        Show::Clients => rs::write_rows(&backend.clients().await, out),
        Show::Databases => rs::write_rows(&backend.databases().await, out),
        Show::Users => rs::write_rows(&backend.users().await, out),
        Show::Config => rs::write_rows(&backend.config().await, out),
        Show::Lists => rs::write_rows(&backend.lists().await.rows(), out),
        Show::Version => rs::write_rows(&[VersionRow(backend.version())], out),
        Show::State => rs::write_rows(&backend.state().await.rows(), out),
        Show::Mem => rs::write_rows(&backend.mem().await, out),
        Show::Fds => empty(rows::FDS_COLUMNS, out),
        Show::Peers => empty(rows::PEERS_COLUMNS, out),
        Show::PeerPools => empty(rows::PEER_POOLS_COLUMNS, out),
        Show::DnsHosts => empty(rows::DNS_HOSTS_COLUMNS, out),
        Show::DnsZones => empty(rows::DNS_ZONES_COLUMNS, out),
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
