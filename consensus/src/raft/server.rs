//! The receiving side of the Raft transport: a listener task that authenticates each connection,
//! then answers its frames by calling the local `openraft::Raft` handle, plus the small client API
//! hook that lets non-members (poolers, ctl) send DCS requests over the same listener. Owns
//! accepting, per-connection limits and dispatch; must not decide what a client request means.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, RaftError};
use openraft::{NodeId, Raft, RaftTypeConfig};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};

use super::handshake::{client_handshake, server_handshake, HandshakeError, SharedSecret};
use super::network::NetworkConfig;
use super::wire::{FrameError, FramedConn, PeerRequest, PeerResponse};

/// Answers DCS requests from clients that are not Raft members. The listener passes the JSON of
/// `PeerRequest::Client` through unchanged; the implementation decodes it, forwards it to the Raft
/// leader (or serves it locally) and returns the JSON answer, or a message for the caller.
#[async_trait::async_trait]
pub trait ClientApi: Send + Sync + 'static {
    async fn handle(&self, request: serde_json::Value) -> Result<serde_json::Value, String>;
}

/// The running listener; aborting it (explicitly or by dropping the handle) closes every
/// connection it serves.
pub struct ServerHandle {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl ServerHandle {
    /// The address the listener is bound to (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes every open connection.
    pub fn shutdown(&self) {
        self.task.abort();
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves Raft RPCs arriving on `listener` to `raft`, and client requests to `client_api` if given.
pub fn serve<C: RaftTypeConfig>(
    listener: TcpListener,
    raft: Raft<C>,
    secret: SharedSecret,
    config: NetworkConfig,
    client_api: Option<Arc<dyn ClientApi>>,
) -> std::io::Result<ServerHandle> {
    let local_addr = listener.local_addr()?;
    let task = tokio::spawn(accept_loop(listener, raft, secret, Arc::new(config), client_api));
    Ok(ServerHandle { local_addr, task })
}

async fn accept_loop<C: RaftTypeConfig>(
    listener: TcpListener,
    raft: Raft<C>,
    secret: SharedSecret,
    config: Arc<NetworkConfig>,
    client_api: Option<Arc<dyn ClientApi>>,
) {
    let permits = Arc::new(Semaphore::new(config.max_connections));
    // Dropping the set (when this task is aborted) aborts every connection task.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        tracing::warn!(%peer, limit = config.max_connections, "refusing raft connection: too many open");
                        continue;
                    };
                    let (raft, secret, config, api) = (raft.clone(), secret.clone(), config.clone(), client_api.clone());
                    connections.spawn(async move {
                        serve_connection(stream, peer, raft, secret, config, api).await;
                        drop(permit);
                    });
                }
                Err(e) => {
                    // E.g. out of file descriptors: pause instead of spinning.
                    tracing::warn!(error = %e, "raft listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<C: RaftTypeConfig>(
    mut stream: TcpStream,
    peer: SocketAddr,
    raft: Raft<C>,
    secret: SharedSecret,
    config: Arc<NetworkConfig>,
    client_api: Option<Arc<dyn ClientApi>>,
) {
    let _ = stream.set_nodelay(true);
    let keys = match tokio::time::timeout(config.handshake_timeout, server_handshake(&mut stream, &secret)).await {
        Ok(Ok(keys)) => keys,
        Ok(Err(e)) => {
            tracing::warn!(%peer, error = %e, "rejected raft connection: authentication failed");
            return;
        }
        Err(_) => {
            tracing::warn!(%peer, timeout = ?config.handshake_timeout, "rejected raft connection: no handshake in time");
            return;
        }
    };
    tracing::debug!(%peer, "raft connection authenticated");
    let mut conn = FramedConn::new(stream, keys, config.max_frame_bytes);
    loop {
        let request = match tokio::time::timeout(config.idle_timeout, conn.recv::<PeerRequest<C>>()).await {
            Ok(Ok(request)) => request,
            Ok(Err(e)) if e.is_clean_close() => return,
            Ok(Err(e)) => {
                tracing::warn!(%peer, error = %e, "closing raft connection");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "closing idle raft connection");
                return;
            }
        };
        let response = dispatch(&raft, client_api.as_deref(), request).await;
        if let Err(e) = conn.send(&response).await {
            tracing::warn!(%peer, error = %e, "closing raft connection: cannot send response");
            return;
        }
    }
}

/// `RaftError<NID>` (with no API error) can only be `Fatal`, which is what goes on the wire.
fn fatal<NID: NodeId>(error: RaftError<NID>) -> Fatal<NID> {
    match error {
        RaftError::APIError(never) => match never {},
        RaftError::Fatal(fatal) => fatal,
    }
}

async fn dispatch<C: RaftTypeConfig>(
    raft: &Raft<C>,
    client_api: Option<&dyn ClientApi>,
    request: PeerRequest<C>,
) -> PeerResponse<C> {
    match request {
        PeerRequest::AppendEntries(rpc) => PeerResponse::AppendEntries(raft.append_entries(rpc).await.map_err(fatal)),
        PeerRequest::Vote(rpc) => PeerResponse::Vote(raft.vote(rpc).await.map_err(fatal)),
        PeerRequest::InstallSnapshot(rpc) => PeerResponse::InstallSnapshot(raft.install_snapshot(rpc).await),
        PeerRequest::Client(request) => PeerResponse::Client(match client_api {
            Some(api) => api.handle(request).await,
            None => Err("this pgha listener serves no DCS client API".to_string()),
        }),
    }
}

/// The client-API side of `PeerRequest`/`PeerResponse`, with the same JSON, for callers that do
/// not know the Raft type configuration.
#[derive(Serialize)]
enum ClientRequestFrame<'a> {
    Client(&'a serde_json::Value),
}

#[derive(Deserialize)]
enum ClientResponseFrame {
    Client(Result<serde_json::Value, String>),
}

/// Why a client-API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientCallError {
    #[error("cannot connect to pgha member {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("cannot authenticate with pgha member {addr}: {source}")]
    Handshake { addr: String, source: HandshakeError },
    #[error("connection to pgha member failed: {0}")]
    Connection(#[from] FrameError),
    #[error("no answer from the pgha member within {0:?}")]
    Timeout(Duration),
    #[error("the pgha member refused the request: {0}")]
    Refused(String),
    #[error("the connection broke in an earlier call; connect again")]
    Closed,
}

/// A non-member's authenticated connection to a member's listener, for DCS client requests.
pub struct ClientApiConnection {
    conn: Option<FramedConn<TcpStream>>,
}

impl ClientApiConnection {
    /// Connects to the member listening on `addr` and authenticates, all within `timeout`.
    pub async fn connect(
        addr: &str,
        secret: &SharedSecret,
        config: &NetworkConfig,
        timeout: Duration,
    ) -> Result<Self, ClientCallError> {
        let work = async {
            let mut stream = TcpStream::connect(addr)
                .await
                .map_err(|source| ClientCallError::Connect { addr: addr.to_string(), source })?;
            let _ = stream.set_nodelay(true);
            let keys = client_handshake(&mut stream, secret)
                .await
                .map_err(|source| ClientCallError::Handshake { addr: addr.to_string(), source })?;
            Ok::<_, ClientCallError>(FramedConn::new(stream, keys, config.max_frame_bytes))
        };
        let conn = tokio::time::timeout(timeout, work).await.map_err(|_| ClientCallError::Timeout(timeout))??;
        Ok(Self { conn: Some(conn) })
    }

    /// Sends one request and waits up to `timeout` for its answer. After any failure other than
    /// `Refused` the connection is closed and later calls return `Closed`.
    pub async fn call(
        &mut self,
        request: &serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, ClientCallError> {
        let mut conn = self.conn.take().ok_or(ClientCallError::Closed)?;
        let work = async {
            conn.send(&ClientRequestFrame::Client(request)).await?;
            let ClientResponseFrame::Client(answer) = conn.recv::<ClientResponseFrame>().await?;
            Ok::<_, ClientCallError>(answer)
        };
        let answer = tokio::time::timeout(timeout, work).await.map_err(|_| ClientCallError::Timeout(timeout))??;
        self.conn = Some(conn);
        answer.map_err(ClientCallError::Refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::test_support::TestConfig;

    #[test]
    fn client_frames_match_the_member_protocol() {
        let request = serde_json::json!({"cas": {"key": "/service/pg/config", "version": 3}});
        let member: PeerRequest<TestConfig> = PeerRequest::Client(request.clone());
        let client = ClientRequestFrame::Client(&request);
        assert_eq!(serde_json::to_string(&member).unwrap(), serde_json::to_string(&client).unwrap());

        let answer: PeerResponse<TestConfig> = PeerResponse::Client(Err("not leader".to_string()));
        let decoded: ClientResponseFrame = serde_json::from_slice(&serde_json::to_vec(&answer).unwrap()).unwrap();
        assert!(matches!(decoded, ClientResponseFrame::Client(Err(m)) if m == "not leader"));
    }
}
