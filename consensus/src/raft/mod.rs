//! The built-in DCS backend's Raft plumbing that does not depend on the replicated state machine:
//! the crash-safe on-disk log (`log_store`) and the authenticated TCP transport between members
//! (`network`, `server`). Everything is generic over `openraft::RaftTypeConfig`; the key-value
//! state machine and the `Dcs` glue live elsewhere and must not be reached from here.
//!
//! Building a node: open a [`LogStore`], bind a `TcpListener`, create the `openraft::Raft` with a
//! [`TcpNetwork`] and the state machine, then [`serve`] the listener with the `Raft` handle.

mod handshake;
mod log_store;
mod network;
mod record;
mod segments;
mod server;
mod wire;

pub use handshake::{HandshakeError, SharedSecret, SharedSecretError, MIN_SECRET_LEN};
pub use log_store::{LogReader, LogStore, LogStoreError, LogStoreOptions};
pub use network::{NetworkConfig, PeerAddr, PeerClient, TcpNetwork};
pub use server::{serve, ClientApi, ClientApiConnection, ClientCallError, ServerHandle};
pub use wire::{FrameError, PeerRequest, PeerResponse};

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;
