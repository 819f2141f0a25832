//! Server connections: one logged-in PostgreSQL session with the state that travels with it
//! from client to client (prepared statements, reported parameters), its cancel key and its
//! age. Owns connecting, logging in and the pooler's own queries on it (reset and check);
//! which client uses it is the pool's business.

pub mod auth_query;
mod login;
mod wire;

use crate::protocol::extended::{write_query, write_terminate};
use crate::protocol::tag::backend;
use crate::protocol::{message::parse_ready_for_query, ErrorFields, TransactionStatus};
use crate::session::{ParamMap, ServerState};
use crate::stream::Stream;
use crate::topology::ServerAddr;
use bytes::BytesMut;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use thiserror::Error;
use tokio::net::{TcpStream, UnixStream};

/// A server's cancel key, as its BackendKeyData gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendKey {
    pub process_id: i32,
    pub secret_key: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("cannot connect to server {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("server {addr} did not complete login within {secs} s (server_connect_timeout)")]
    ConnectTimeout { addr: String, secs: f64 },
    /// PostgreSQL refused the login; the client gets the same SQLSTATE and message.
    #[error("server refused login: {code} {message}")]
    Refused { code: String, message: String },
    #[error("server asks for a password for user \"{user}\" but the pooler has none (add it to auth_file)")]
    NoPassword { user: String },
    #[error("server speaks out of protocol: {0}")]
    Protocol(String),
    #[error("server connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("server {addr}: {source}")]
    Tls { addr: String, source: crate::tls::TlsError },
    #[error("server_{what} failed: {code} {message}")]
    Query { what: &'static str, code: String, message: String },
}

impl ServerError {
    /// The SQLSTATE a client sees for this failure.
    pub fn sqlstate(&self) -> &str {
        match self {
            ServerError::Refused { code, .. } => code,
            ServerError::NoPassword { .. } => "28000",
            _ => "08006",
        }
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// A new connection id, unique over server and client connections (SHOW's `id` and `ptr`).
pub fn next_id() -> u64 {
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Login details for a new server connection.
#[derive(Debug, Clone)]
pub struct LoginTarget {
    pub addr: ServerAddr,
    pub dbname: String,
    pub user: String,
    pub credential: crate::auth::ServerCredential,
    pub connect_timeout: Duration,
    /// tcp_keepalive, tcp_user_timeout, ...
    pub tcp: crate::tcp::TcpOptions,
    /// server_tls_sslmode and its certificates.
    pub tls: Arc<crate::tls::ServerTls>,
}

pub struct ServerConn {
    pub stream: Stream,
    /// Taken by the session while a client uses the connection.
    pub state: Option<Box<ServerState>>,
    pub key: BackendKey,
    pub addr: ServerAddr,
    pub id: u64,
    pub created: crate::tick::Tick,
    pub last_used: crate::tick::Tick,
    /// Every ParameterStatus of the login (server_version, ...), for client welcomes.
    pub login_params: Arc<Vec<(String, String)>>,
    /// Where a client's cancel for this connection goes.
    pub cancel: Arc<crate::cancel::CancelTarget>,
    /// The pool's generation when this was opened (RECONNECT closes older ones).
    pub generation: u64,
    /// Its entry in SHOW SERVERS, removed when the connection is dropped.
    pub registration: Option<crate::connections::ServerHandle>,
}

impl std::fmt::Debug for ServerConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "server #{} ({} pid {})", self.id, self.addr, self.key.process_id)
    }
}

impl ServerConn {
    /// Connects and logs in, all within `target.connect_timeout`.
    pub async fn connect(target: &LoginTarget) -> Result<ServerConn, ServerError> {
        let addr = target.addr.to_string();
        let secs = target.connect_timeout.as_secs_f64();
        match crate::clock::timeout(target.connect_timeout, Self::connect_inner(target)).await {
            Ok(result) => result,
            Err(_) => Err(ServerError::ConnectTimeout { addr, secs }),
        }
    }

    async fn connect_inner(target: &LoginTarget) -> Result<ServerConn, ServerError> {
        let stream = open(&target.addr, &target.tcp).await?;
        let stream = target
            .tls
            .connect_stream(stream, &target.addr.host)
            .await
            .map_err(|source| ServerError::Tls { addr: target.addr.to_string(), source })?;
        let (stream, key, params) = login::login(stream, target).await?;
        let now = crate::tick::Tick::now();
        let state = ServerState::new(ParamMap::from_pairs(params.iter().map(|(k, v)| (k.as_str(), v.as_str()))));
        Ok(ServerConn {
            stream,
            state: Some(Box::new(state)),
            key: key.clone(),
            addr: target.addr.clone(),
            id: next_id(),
            created: now,
            last_used: now,
            login_params: Arc::new(params),
            cancel: Arc::new(crate::cancel::CancelTarget {
                addr: target.addr.clone(),
                process_id: key.process_id,
                secret_key: key.secret_key.clone(),
            }),
            generation: 0,
            registration: None,
        })
    }

    /// Runs one pooler query (`what` names the setting, e.g. "reset_query") to its
    /// ReadyForQuery, recording reported parameters; the connection must be idle.
    pub async fn run_query(&mut self, what: &'static str, sql: &str, timeout: Duration) -> Result<(), ServerError> {
        match crate::clock::timeout(timeout, self.run_query_inner(what, sql)).await {
            Ok(r) => r,
            Err(_) => Err(ServerError::Protocol(format!("server_{what} did not finish within {timeout:?}"))),
        }
    }

    async fn run_query_inner(&mut self, what: &'static str, sql: &str) -> Result<(), ServerError> {
        let mut buf = BytesMut::new();
        write_query(sql, &mut buf).map_err(|e| ServerError::Protocol(e.to_string()))?;
        self.stream.send(&buf).await?;
        buf.clear();
        let mut failure = None;
        loop {
            let (tag, body) = wire::read_message(&mut self.stream, &mut buf).await?;
            match tag {
                backend::READY_FOR_QUERY => {
                    let status = parse_ready_for_query(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
                    if let Some((code, message)) = failure {
                        return Err(ServerError::Query { what, code, message });
                    }
                    if status != TransactionStatus::Idle {
                        return Err(ServerError::Protocol(format!("server_{what} left a transaction open")));
                    }
                    return Ok(());
                }
                backend::ERROR_RESPONSE => {
                    let fields = ErrorFields::parse(&body).map_err(|e| ServerError::Protocol(e.to_string()))?;
                    failure = Some((fields.code.into_owned(), fields.message.into_owned()));
                }
                backend::PARAMETER_STATUS => {
                    if let (Ok(p), Some(state)) =
                        (crate::protocol::message::ParameterStatus::parse(&body), self.state.as_mut())
                    {
                        state.note_parameter_status(p.name, p.value);
                    }
                }
                _ => {}
            }
        }
    }

    /// Says goodbye to the server (best effort) and drops the socket.
    pub async fn terminate(mut self) {
        let mut buf = BytesMut::new();
        write_terminate(&mut buf);
        let _ = crate::clock::timeout(Duration::from_millis(100), self.stream.send(&buf)).await;
    }
}

/// Opens a socket to a server: TCP with TCP_NODELAY and the tcp_* settings, or its Unix socket.
pub async fn open(addr: &ServerAddr, tcp: &crate::tcp::TcpOptions) -> Result<Stream, ServerError> {
    let err = |source| ServerError::Connect { addr: addr.to_string(), source };
    if addr.is_unix() {
        Ok(Stream::Unix(UnixStream::connect(addr.unix_path()).await.map_err(err)?))
    } else {
        let stream = TcpStream::connect((addr.host.as_str(), addr.port)).await.map_err(err)?;
        stream.set_nodelay(true).map_err(err)?;
        tcp.apply(socket2::SockRef::from(&stream)).map_err(err)?;
        Ok(Stream::Tcp(stream))
    }
}
