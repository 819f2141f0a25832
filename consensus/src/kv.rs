//! The key-value primitives every DCS backend offers (etcd's v3 model): revisioned keys,
//! transactions guarded by compares, prefix reads, leases and a supervised prefix watch.
//!
//! `KvStore` is implemented by the etcd backend and by the built-in Raft client; the Patroni
//! semantics (leader lock, members, config CAS) are written once on top of it in `dcs`.
//! Implementations must not retry writes whose outcome is unknown: they report `Unavailable`.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::mpsc;

/// A store-wide revision: every successful write increments it.
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// A key and its value with etcd's version fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: Vec<u8>,
    /// Revision that created the key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the last write to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation.
    pub version: i64,
    /// Lease the key is attached to, 0 for none.
    pub lease: LeaseId,
}

/// One condition of a transaction; all must hold for the success branch to run. A missing key
/// has create_revision = mod_revision = 0 and no value (a value compare on it fails).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Compare {
    CreateRevisionEq(String, Revision),
    ModRevisionEq(String, Revision),
    ValueEq(String, Vec<u8>),
    LeaseEq(String, LeaseId),
}

/// One operation of a transaction branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put { key: String, value: Vec<u8>, lease: LeaseId },
    Delete { key: String },
    Get { key: String },
}

/// A transaction: if every compare holds, run `success`, else `failure`, atomically.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

/// What one operation of the branch that ran returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put { revision: Revision },
    Delete { deleted: bool },
    Get(Option<KeyValue>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResponse {
    /// Whether the compares held (the success branch ran).
    pub succeeded: bool,
    /// The store's revision after the transaction.
    pub revision: Revision,
    pub results: Vec<OpResult>,
}

/// All keys under a prefix, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResponse {
    pub kvs: Vec<KeyValue>,
    pub revision: Revision,
}

/// A change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum WatchEvent {
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    Delete {
        key: String,
        revision: Revision,
        prev: Option<KeyValue>,
    },
    /// Events may have been missed (the watch was re-opened after a compaction or a long outage):
    /// re-read the whole prefix.
    Resync {
        revision: Revision,
    },
}

impl WatchEvent {
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Put { kv, .. } => Some(&kv.key),
            WatchEvent::Delete { key, .. } => Some(key),
            WatchEvent::Resync { .. } => None,
        }
    }
}

/// Why a store operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KvError {
    /// The store could not be reached or has no quorum; the outcome of a write is unknown.
    #[error("DCS unavailable: {0}")]
    Unavailable(String),
    /// The lease does not exist (expired or revoked).
    #[error("lease {0:x} not found (expired or revoked)")]
    LeaseNotFound(LeaseId),
    /// The store refused the request (bad request, permission, too large).
    #[error("DCS rejected the request: {0}")]
    Rejected(String),
}

/// Events from a watch, in revision order. The sender side is supervised by the backend: a broken
/// stream is re-opened from the next revision, and `Resync` is sent when continuity is lost.
pub type WatchReceiver = mpsc::Receiver<WatchEvent>;

#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Every key under `prefix`, linearizable (never older than an acknowledged write).
    async fn range_prefix(&self, prefix: &str) -> Result<RangeResponse, KvError>;
    async fn txn(&self, txn: Txn) -> Result<TxnResponse, KvError>;
    /// Grants a lease of `ttl` (rounded up to whole seconds for etcd).
    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, KvError>;
    /// Resets the lease's countdown to its full TTL; returns the TTL granted.
    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError>;
    /// Revokes the lease, deleting every key attached to it.
    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), KvError>;
    /// Watches every key under `prefix` from `start_revision` (0: from now).
    async fn watch_prefix(&self, prefix: &str, start_revision: Revision) -> Result<WatchReceiver, KvError>;
}
