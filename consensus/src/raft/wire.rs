//! What travels on an authenticated connection: length-prefixed frames, each carrying one
//! JSON-encoded message and an HMAC-SHA256 tag over a per-direction sequence number and the
//! payload, and the request/response messages themselves. Owns framing and size limits; must not
//! open sockets or decide anything about Raft.
//!
//! Frame: `len: u32 BE | payload (len bytes) | tag (32 bytes)`. A frame longer than the configured
//! limit is refused before anything is allocated for it; a bad tag (tampering, injection, replay or
//! reordering) ends the connection.

use std::io;

use openraft::error::{Fatal, InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::RaftTypeConfig;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::handshake::{keyed_mac, HandshakeError, SessionKeys, TAG_LEN};
use hmac::Mac;

/// A request from a member (or a DCS client) to the listener of a member.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerRequest<C: RaftTypeConfig> {
    AppendEntries(AppendEntriesRequest<C>),
    Vote(VoteRequest<C::NodeId>),
    InstallSnapshot(InstallSnapshotRequest<C>),
    /// Reserved for DCS clients that are not members (poolers, ctl): the payload is handed to the
    /// listener's `ClientApi` unchanged. Its JSON form is `{"Client": <payload>}`, independent of
    /// the type configuration, so clients need not know it.
    Client(serde_json::Value),
}

/// The answer to a [`PeerRequest`], same variant. Raft errors are sent back as they are; for
/// AppendEntries and Vote the only possible error is `Fatal` (the node is shutting down).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub enum PeerResponse<C: RaftTypeConfig> {
    AppendEntries(Result<AppendEntriesResponse<C::NodeId>, Fatal<C::NodeId>>),
    Vote(Result<VoteResponse<C::NodeId>, Fatal<C::NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<C::NodeId>, RaftError<C::NodeId, InstallSnapshotError>>),
    /// The `ClientApi`'s answer, or why there is none.
    Client(Result<serde_json::Value, String>),
}

/// Why a frame could not be sent or received. The connection is unusable afterwards except after
/// `TooLarge` on send, which is detected before writing.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {len} bytes is over the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame failed authentication (tampered with, injected or out of sequence)")]
    BadTag,
    #[error("cannot encode message: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("cannot decode message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(transparent)]
    Key(#[from] HandshakeError),
}

impl FrameError {
    /// The other side closed the connection between frames.
    pub(crate) fn is_clean_close(&self) -> bool {
        matches!(self, FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof)
    }
}

/// An authenticated connection that sends and receives whole frames.
pub(crate) struct FramedConn<S> {
    stream: S,
    keys: SessionKeys,
    send_seq: u64,
    recv_seq: u64,
    max_frame: usize,
}

fn frame_tag(key: &[u8], seq: u64, payload: &[u8]) -> Result<hmac::Hmac<sha2::Sha256>, FrameError> {
    let mut mac = keyed_mac(key)?;
    mac.update(&seq.to_be_bytes());
    mac.update(payload);
    Ok(mac)
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedConn<S> {
    pub(crate) fn new(stream: S, keys: SessionKeys, max_frame: usize) -> Self {
        Self { stream, keys, send_seq: 0, recv_seq: 0, max_frame: max_frame.min(u32::MAX as usize) }
    }

    /// Encodes `message` into frame payload bytes, refusing what would exceed the frame limit.
    pub(crate) fn encode<T: Serialize>(&self, message: &T) -> Result<Vec<u8>, FrameError> {
        let payload = serde_json::to_vec(message).map_err(FrameError::Encode)?;
        if payload.len() > self.max_frame {
            return Err(FrameError::TooLarge { len: payload.len(), max: self.max_frame });
        }
        Ok(payload)
    }

    pub(crate) async fn send<T: Serialize>(&mut self, message: &T) -> Result<(), FrameError> {
        let payload = self.encode(message)?;
        self.send_payload(&payload).await
    }

    /// Sends bytes made by [`Self::encode`].
    pub(crate) async fn send_payload(&mut self, payload: &[u8]) -> Result<(), FrameError> {
        if payload.len() > self.max_frame {
            return Err(FrameError::TooLarge { len: payload.len(), max: self.max_frame });
        }
        let mac = frame_tag(&self.keys.send, self.send_seq, payload)?;
        let mut frame = Vec::with_capacity(4 + payload.len() + TAG_LEN);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&mac.finalize().into_bytes());
        self.stream.write_all(&frame).await?;
        self.stream.flush().await?;
        self.send_seq += 1;
        Ok(())
    }

    pub(crate) async fn recv<T: DeserializeOwned>(&mut self) -> Result<T, FrameError> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > self.max_frame {
            return Err(FrameError::TooLarge { len, max: self.max_frame });
        }
        let mut body = vec![0u8; len + TAG_LEN];
        self.stream.read_exact(&mut body).await?;
        let (payload, tag) = body.split_at(len);
        frame_tag(&self.keys.recv, self.recv_seq, payload)?.verify_slice(tag).map_err(|_| FrameError::BadTag)?;
        self.recv_seq += 1;
        serde_json::from_slice(payload).map_err(FrameError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(max: usize) -> (FramedConn<tokio::io::DuplexStream>, FramedConn<tokio::io::DuplexStream>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let k1 = [1u8; TAG_LEN];
        let k2 = [2u8; TAG_LEN];
        (
            FramedConn::new(a, SessionKeys { send: k1, recv: k2 }, max),
            FramedConn::new(b, SessionKeys { send: k2, recv: k1 }, max),
        )
    }

    #[tokio::test]
    async fn frames_round_trip_in_sequence() {
        let (mut a, mut b) = pair(1024);
        a.send(&"first").await.unwrap();
        a.send(&vec![1, 2, 3]).await.unwrap();
        assert_eq!(b.recv::<String>().await.unwrap(), "first");
        assert_eq!(b.recv::<Vec<u8>>().await.unwrap(), vec![1, 2, 3]);
        b.send(&"back").await.unwrap();
        assert_eq!(a.recv::<String>().await.unwrap(), "back");
    }

    #[tokio::test]
    async fn oversized_frames_are_refused_on_both_ends() {
        let (mut a, mut b) = pair(16);
        assert!(matches!(a.send(&"x".repeat(100)).await, Err(FrameError::TooLarge { .. })));
        // A peer announcing a huge frame is refused before any allocation.
        b.stream.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(a.recv::<String>().await, Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize));
    }

    #[tokio::test]
    async fn tampered_or_replayed_frames_fail_authentication() {
        let (mut a, mut b) = pair(1024);
        let payload = a.encode(&"hello").unwrap();
        a.send_payload(&payload).await.unwrap();
        let mut raw = vec![0u8; 4 + payload.len() + TAG_LEN];
        b.stream.read_exact(&mut raw).await.unwrap();
        // Replay the same bytes: the sequence number has moved on.
        a.stream.write_all(&raw).await.unwrap();
        b.recv_seq = 1;
        assert!(matches!(b.recv::<String>().await, Err(FrameError::BadTag)));
        // Flip a payload byte.
        let (mut a, mut b) = pair(1024);
        raw[5] ^= 1;
        a.stream.write_all(&raw).await.unwrap();
        assert!(matches!(b.recv::<String>().await, Err(FrameError::BadTag)));
    }
}
