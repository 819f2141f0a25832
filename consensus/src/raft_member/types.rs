//! The Raft type configuration of the built-in DCS: log entries are key-space `Command`s, the
//! state machine answers with `Applied`, members are named and found by address. Owns how a
//! member's name becomes its stable Raft node id.

use crate::keyspace::{Applied, Command};
use crate::raft::PeerAddr;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::Cursor;

openraft::declare_raft_types!(
    /// The built-in DCS's Raft types.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = u64,
        Node = MemberNode,
);

/// A Raft member as the membership config records it: its name and where it listens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    /// `host:port` of the member's Raft listener (peers and DCS clients).
    pub addr: String,
}

impl PeerAddr for MemberNode {
    fn peer_addr(&self) -> &str {
        &self.addr
    }
}

/// The Raft node id of the member called `name`: the same on every member and every restart,
/// without coordination (the first 63 bits of SHA-256 of the name; 0 is never used).
pub fn node_id(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    (u64::from_be_bytes(bytes) >> 1).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_are_stable_and_distinct() {
        assert_eq!(node_id("node1"), node_id("node1"));
        assert_ne!(node_id("node1"), node_id("node2"));
        assert!(node_id("") > 0);
    }
}
