//! The sending side of member-to-member Raft RPCs: openraft's `RaftNetworkFactory`/`RaftNetwork`
//! over TCP, one authenticated connection per target reused across RPCs and replaced after any
//! error, each RPC bounded by openraft's `RPCOption` deadline. Owns connection reuse and error
//! mapping; must not serve requests (that is `server`) or know the state machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{BasicNode, RPCTypes, RaftNetwork, RaftNetworkFactory, RaftTypeConfig};
use tokio::net::TcpStream;

use super::handshake::{client_handshake, HandshakeError, SharedSecret};
use super::wire::{FrameError, FramedConn, PeerRequest, PeerResponse};

/// How to reach a member: implemented by the node type of the Raft type configuration.
pub trait PeerAddr {
    /// `host:port` of the member's Raft listener.
    fn peer_addr(&self) -> &str;
}

impl PeerAddr for BasicNode {
    fn peer_addr(&self) -> &str {
        &self.addr
    }
}

/// Limits and timeouts of the Raft transport, shared by both sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    /// Largest frame sent or accepted. AppendEntries batches and snapshot chunks must fit;
    /// openraft is asked to send fewer entries when a batch does not.
    pub max_frame_bytes: usize,
    /// How long a connecting side may take to authenticate before the listener hangs up.
    pub handshake_timeout: Duration,
    /// The listener closes connections that send nothing for this long.
    pub idle_timeout: Duration,
    /// Connections the listener serves at once; more are refused.
    pub max_connections: usize,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            max_frame_bytes: 16 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(600),
            max_connections: 256,
        }
    }
}

/// Why an RPC failed on our side of the wire.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerCallError {
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: std::io::Error },
    #[error("cannot authenticate with {addr}: {source}")]
    Handshake { addr: String, source: HandshakeError },
    #[error("connection to {addr} failed: {source}")]
    Frame { addr: String, source: FrameError },
    #[error("{addr} answered with a response of another kind")]
    UnexpectedResponse { addr: String },
    #[error("no answer in time")]
    Timeout,
}

/// The connection to one target, shared by every `PeerClient` for that target.
struct PeerSlot {
    addr: String,
    conn: Option<FramedConn<TcpStream>>,
}

type PeerSlots<NID> = Arc<Mutex<HashMap<NID, Arc<tokio::sync::Mutex<PeerSlot>>>>>;

/// openraft's network factory: give it to `openraft::Raft::new`.
pub struct TcpNetwork<C: RaftTypeConfig> {
    id: C::NodeId,
    secret: SharedSecret,
    config: Arc<NetworkConfig>,
    peers: PeerSlots<C::NodeId>,
}

impl<C: RaftTypeConfig> TcpNetwork<C> {
    /// The network of member `id`, authenticating with `secret`.
    pub fn new(id: C::NodeId, secret: SharedSecret, config: NetworkConfig) -> Self {
        Self { id, secret, config: Arc::new(config), peers: Arc::new(Mutex::new(HashMap::new())) }
    }
}

impl<C> RaftNetworkFactory<C> for TcpNetwork<C>
where
    C: RaftTypeConfig,
    C::Node: PeerAddr,
{
    type Network = PeerClient<C>;

    async fn new_client(&mut self, target: C::NodeId, node: &C::Node) -> Self::Network {
        let addr = node.peer_addr().to_string();
        let slot = {
            // A poisoned map only means another thread panicked mid-insert; the map is still sound.
            let mut peers = self.peers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            peers
                .entry(target.clone())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(PeerSlot { addr: addr.clone(), conn: None })))
                .clone()
        };
        PeerClient { id: self.id.clone(), target, addr, slot, secret: self.secret.clone(), config: self.config.clone() }
    }
}

/// openraft's client for one target member.
pub struct PeerClient<C: RaftTypeConfig> {
    id: C::NodeId,
    target: C::NodeId,
    addr: String,
    slot: Arc<tokio::sync::Mutex<PeerSlot>>,
    secret: SharedSecret,
    config: Arc<NetworkConfig>,
}

impl<C: RaftTypeConfig> PeerClient<C> {
    async fn connect(&self) -> Result<FramedConn<TcpStream>, PeerCallError> {
        let mut stream = TcpStream::connect(&self.addr)
            .await
            .map_err(|source| PeerCallError::Connect { addr: self.addr.clone(), source })?;
        // Small request/response frames: do not wait for Nagle.
        let _ = stream.set_nodelay(true);
        let keys = client_handshake(&mut stream, &self.secret).await.map_err(|source| {
            tracing::debug!(target_node = %self.target, addr = %self.addr, error = %source, "raft peer handshake failed");
            PeerCallError::Handshake {
                addr: self.addr.clone(),
                source,
            }
        })?;
        Ok(FramedConn::new(stream, keys, self.config.max_frame_bytes))
    }

    /// One round trip on the target's connection, (re)connecting first if needed, all within `ttl`.
    async fn call(&self, request: PeerRequest<C>, ttl: Duration) -> Result<PeerResponse<C>, PeerCallError> {
        let frame_error = |source| PeerCallError::Frame { addr: self.addr.clone(), source };
        let work = async {
            let mut slot = self.slot.lock().await;
            // Taken out of the slot: if the deadline strikes mid-call the connection is dropped
            // with this future instead of being reused with a response still in flight.
            let reusable = slot.conn.take().filter(|_| slot.addr == self.addr);
            let mut conn = match reusable {
                Some(conn) => conn,
                None => {
                    slot.addr = self.addr.clone();
                    self.connect().await?
                }
            };
            let payload = conn.encode(&request).map_err(frame_error)?;
            conn.send_payload(&payload).await.map_err(frame_error)?;
            let response = conn.recv::<PeerResponse<C>>().await.map_err(frame_error)?;
            slot.conn = Some(conn);
            Ok(response)
        };
        tokio::time::timeout(ttl, work).await.map_err(|_| PeerCallError::Timeout)?
    }

    /// Maps a local failure to what openraft should do about it: back off when the target cannot
    /// be reached or authenticated, retry at once after a broken connection, send fewer entries
    /// when a batch does not fit a frame.
    fn rpc_error<E: std::error::Error>(
        &self,
        error: PeerCallError,
        action: RPCTypes,
        ttl: Duration,
        entries: usize,
    ) -> RPCError<C::NodeId, C::Node, E> {
        match error {
            PeerCallError::Timeout => {
                RPCError::Timeout(Timeout { action, id: self.id.clone(), target: self.target.clone(), timeout: ttl })
            }
            PeerCallError::Frame { source: FrameError::TooLarge { .. }, .. } if entries > 1 => {
                RPCError::PayloadTooLarge(PayloadTooLarge::new_entries_hint((entries / 2) as u64))
            }
            e @ (PeerCallError::Connect { .. } | PeerCallError::Handshake { .. }) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            e => RPCError::Network(NetworkError::new(&e)),
        }
    }

    fn unexpected(&self) -> PeerCallError {
        PeerCallError::UnexpectedResponse { addr: self.addr.clone() }
    }
}

impl<C> RaftNetwork<C> for PeerClient<C>
where
    C: RaftTypeConfig,
    C::Node: PeerAddr,
{
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<C>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>> {
        let (ttl, entries) = (option.hard_ttl(), rpc.entries.len());
        let action = RPCTypes::AppendEntries;
        match self.call(PeerRequest::AppendEntries(rpc), ttl).await {
            Ok(PeerResponse::AppendEntries(Ok(response))) => Ok(response),
            Ok(PeerResponse::AppendEntries(Err(fatal))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target.clone(), RaftError::Fatal(fatal))))
            }
            Ok(_) => Err(self.rpc_error(self.unexpected(), action, ttl, entries)),
            Err(e) => Err(self.rpc_error(e, action, ttl, entries)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<C>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<C::NodeId>,
        RPCError<C::NodeId, C::Node, RaftError<C::NodeId, InstallSnapshotError>>,
    > {
        let ttl = option.hard_ttl();
        let action = RPCTypes::InstallSnapshot;
        match self.call(PeerRequest::InstallSnapshot(rpc), ttl).await {
            Ok(PeerResponse::InstallSnapshot(Ok(response))) => Ok(response),
            Ok(PeerResponse::InstallSnapshot(Err(e))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target.clone(), e)))
            }
            Ok(_) => Err(self.rpc_error(self.unexpected(), action, ttl, 0)),
            Err(e) => Err(self.rpc_error(e, action, ttl, 0)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<C::NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<C::NodeId>, RPCError<C::NodeId, C::Node, RaftError<C::NodeId>>> {
        let ttl = option.hard_ttl();
        let action = RPCTypes::Vote;
        match self.call(PeerRequest::Vote(rpc), ttl).await {
            Ok(PeerResponse::Vote(Ok(response))) => Ok(response),
            Ok(PeerResponse::Vote(Err(fatal))) => {
                Err(RPCError::RemoteError(RemoteError::new(self.target.clone(), RaftError::Fatal(fatal))))
            }
            Ok(_) => Err(self.rpc_error(self.unexpected(), action, ttl, 0)),
            Err(e) => Err(self.rpc_error(e, action, ttl, 0)),
        }
    }
}
