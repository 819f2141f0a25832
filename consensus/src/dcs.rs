//! The DCS as the agents, poolers and ctl use it: Patroni's semantics (leader lock, leased member
//! keys, initialize race, compare-and-set of config/failover/sync/history/status) written once
//! over any `KvStore` backend.
//!
//! One `KvDcs` is one member's session: its member key and (when it leads) the leader key are
//! attached to one lease of `ttl`, as Patroni's etcd3 backend does. A new `ttl` (the dynamic
//! configuration's) takes effect at the next acquire, refresh or touch: a lease of the new length
//! is granted and the keys move onto it. Every write that can race is a
//! transaction guarded by the key's revision, so a stale writer fails with a typed error.

use crate::kv::{
    Compare, KeyValue, KvError, KvStore, LeaseId, OpResult, Revision, Txn, TxnOp, WatchEvent, WatchReceiver,
};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// A key of one cluster (below `<namespace>/<scope>/`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClusterKey {
    Initialize,
    Leader,
    Member(String),
    Config,
    Failover,
    Sync,
    History,
    Status,
}

impl ClusterKey {
    /// The key's path below the cluster prefix, as Patroni names it.
    pub fn path(&self) -> String {
        match self {
            ClusterKey::Initialize => "initialize".into(),
            ClusterKey::Leader => "leader".into(),
            ClusterKey::Member(name) => format!("members/{name}"),
            ClusterKey::Config => "config".into(),
            ClusterKey::Failover => "failover".into(),
            ClusterKey::Sync => "sync".into(),
            ClusterKey::History => "history".into(),
            ClusterKey::Status => "status".into(),
        }
    }
}

/// What a conditional write expects to find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// The key must not exist.
    Absent,
    /// The key must exist at exactly this revision (its mod_revision when it was read).
    Revision(Revision),
    /// Unconditional.
    Any,
}

/// Every key of one cluster, read at one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub revision: Revision,
    /// Keys relative to the cluster prefix (e.g. `leader`, `members/node1`).
    pub keys: Vec<KeyValue>,
}

impl ClusterSnapshot {
    pub fn get(&self, key: &ClusterKey) -> Option<&KeyValue> {
        let path = key.path();
        self.keys.iter().find(|kv| kv.key == path)
    }
    /// The current leader's name, if the lock is held.
    pub fn leader(&self) -> Option<String> {
        self.get(&ClusterKey::Leader).map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
    }
}

/// Proof of holding the leader lock: valid until `valid_until` unless refreshed again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderLease {
    /// The latest instant (local monotonic clock) at which the DCS can still consider us leader;
    /// measured from before the refresh request was sent, so it errs on the safe side.
    pub valid_until: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DcsError {
    #[error(transparent)]
    Store(#[from] KvError),
    /// The leader lock is held by another member.
    #[error("the leader lock is held by {holder}")]
    LockHeld { holder: String },
    /// We no longer hold the leader lock (it expired, was deleted, or another member took it).
    #[error("the leader lock is no longer ours (held by {})", holder.as_deref().unwrap_or("nobody"))]
    LockLost { holder: Option<String> },
    /// A compare-and-set found another revision than expected: someone wrote in between.
    #[error("{key} changed concurrently (expected {expected:?}, found revision {found:?})")]
    Conflict { key: String, expected: Expected, found: Option<Revision> },
}

/// The cluster state store, as every pgha component sees it.
#[async_trait]
pub trait Dcs: Send + Sync {
    /// This session's member name.
    fn member_name(&self) -> &str;
    /// Every key of the cluster, linearizable.
    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError>;
    /// Changes to any key of the cluster from `after` + 1 (0: from now), keys relative to the
    /// cluster prefix as in `snapshot`.
    async fn watch(&self, after: Revision) -> Result<WatchReceiver, DcsError>;
    /// Takes the leader lock if nobody holds it.
    async fn acquire_leader(&self) -> Result<LeaderLease, DcsError>;
    /// Extends our hold of the leader lock; fails with `LockLost` when it is not ours any more.
    async fn refresh_leader(&self) -> Result<LeaderLease, DcsError>;
    /// Gives the leader lock up (only if it is ours), so others need not wait for the TTL.
    async fn release_leader(&self) -> Result<(), DcsError>;
    /// Publishes our member key (leased: it disappears when we stop touching it).
    async fn touch_member(&self, value: &[u8]) -> Result<(), DcsError>;
    /// Races for the `initialize` key; true if we created it.
    async fn initialize(&self, value: &[u8]) -> Result<bool, DcsError>;
    /// Conditional write of a cluster key; returns the new revision.
    async fn write(&self, key: ClusterKey, value: &[u8], expected: Expected) -> Result<Revision, DcsError>;
    /// Conditional delete of a cluster key.
    async fn delete(&self, key: ClusterKey, expected: Expected) -> Result<(), DcsError>;
    /// The lease length for the next acquire, refresh or touch (Patroni's `set_ttl`).
    fn set_ttl(&self, ttl: Duration);
}

/// `Dcs` for one member over any `KvStore`.
pub struct KvDcs<S: KvStore> {
    store: Arc<S>,
    prefix: String,
    name: String,
    /// The lease length asked for, in milliseconds (the dynamic configuration may change it).
    ttl_ms: AtomicU64,
    lease: Mutex<Session>,
}

/// This session's lease, and the one it replaced when `ttl` changed (keys still on it are moved).
#[derive(Default)]
struct Session {
    current: Option<(LeaseId, Duration)>,
    replaced: Option<LeaseId>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<S: KvStore> KvDcs<S> {
    /// A session for member `name` of cluster `scope` under `namespace` (e.g. `/service`).
    pub fn new(store: Arc<S>, namespace: &str, scope: &str, name: &str, ttl: Duration) -> Self {
        let prefix = format!("{}/{}/", namespace.trim_end_matches('/'), scope);
        KvDcs { store, prefix, name: name.to_string(), ttl_ms: AtomicU64::new(millis(ttl)), lease: Mutex::default() }
    }

    pub fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed))
    }

    /// The full key of `key` in the store.
    pub fn full_key(&self, key: &ClusterKey) -> String {
        format!("{}{}", self.prefix, key.path())
    }

    /// Keeps our lease alive (granting one if we have none, or one of the new length when `ttl`
    /// changed) and returns it with its deadline and the lease it replaced, if any. A replaced
    /// lease is not kept alive any more: it expires by itself once its keys have moved.
    async fn live_lease(&self) -> Result<(LeaseId, Instant, Option<LeaseId>), DcsError> {
        let ttl = self.ttl();
        let mut guard = self.lease.lock().await;
        let sent = Instant::now();
        match guard.current {
            Some((id, granted)) if granted == ttl => match self.store.lease_keep_alive(id).await {
                Ok(left) => return Ok((id, sent + left.min(ttl), guard.replaced)),
                Err(KvError::LeaseNotFound(_)) => guard.current = None,
                Err(e) => return Err(e.into()),
            },
            Some((id, _)) => {
                guard.replaced = Some(id);
                guard.current = None;
            }
            None => {}
        }
        let sent = Instant::now();
        let id = self.store.lease_grant(ttl).await?;
        guard.current = Some((id, ttl));
        Ok((id, sent + ttl, guard.replaced))
    }

    /// Moves the leader key from our `replaced` lease onto `lease`, if it still holds our name on
    /// the replaced one; true if it did.
    async fn move_leader_key(&self, replaced: LeaseId, lease: LeaseId) -> Result<bool, DcsError> {
        let key = self.full_key(&ClusterKey::Leader);
        let txn = Txn {
            compares: vec![
                Compare::ValueEq(key.clone(), self.name.as_bytes().to_vec()),
                Compare::LeaseEq(key.clone(), replaced),
            ],
            success: vec![TxnOp::Put { key, value: self.name.as_bytes().to_vec(), lease }],
            failure: vec![],
        };
        Ok(self.store.txn(txn).await?.succeeded)
    }

    async fn current_leader(&self) -> Result<Option<KeyValue>, DcsError> {
        let key = self.full_key(&ClusterKey::Leader);
        let resp = self.store.txn(Txn { success: vec![TxnOp::Get { key }], ..Txn::default() }).await?;
        Ok(first_get(resp.results))
    }

    fn guard(&self, key: &str, expected: Expected) -> Vec<Compare> {
        match expected {
            Expected::Absent => vec![Compare::CreateRevisionEq(key.to_string(), 0)],
            Expected::Revision(r) => vec![Compare::ModRevisionEq(key.to_string(), r)],
            Expected::Any => vec![],
        }
    }

    async fn conditional(&self, key: ClusterKey, op: TxnOp, expected: Expected) -> Result<Revision, DcsError> {
        let full = self.full_key(&key);
        let txn = Txn {
            compares: self.guard(&full, expected),
            success: vec![op],
            failure: vec![TxnOp::Get { key: full.clone() }],
        };
        let resp = self.store.txn(txn).await?;
        if resp.succeeded {
            return Ok(resp.revision);
        }
        let found = first_get(resp.results).map(|kv| kv.mod_revision);
        Err(DcsError::Conflict { key: key.path(), expected, found })
    }
}

fn relative(event: WatchEvent, prefix: &str) -> WatchEvent {
    let strip = |k: String| k.strip_prefix(prefix).map(str::to_string).unwrap_or(k);
    match event {
        WatchEvent::Put { mut kv, prev } => {
            kv.key = strip(kv.key);
            WatchEvent::Put { kv, prev }
        }
        WatchEvent::Delete { key, revision, prev } => WatchEvent::Delete { key: strip(key), revision, prev },
        other => other,
    }
}

/// The key read by the first operation of the branch that ran (a `Get`), if it exists.
fn first_get(results: Vec<OpResult>) -> Option<KeyValue> {
    match results.into_iter().next() {
        Some(OpResult::Get(kv)) => kv,
        _ => None,
    }
}

fn holder_of(kv: &Option<KeyValue>) -> Option<String> {
    kv.as_ref().map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
}

#[async_trait]
impl<S: KvStore> Dcs for KvDcs<S> {
    fn member_name(&self) -> &str {
        &self.name
    }

    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError> {
        let resp = self.store.range_prefix(&self.prefix).await?;
        let keys = resp
            .kvs
            .into_iter()
            .filter_map(|mut kv| {
                kv.key = kv.key.strip_prefix(&self.prefix)?.to_string();
                Some(kv)
            })
            .collect();
        Ok(ClusterSnapshot { revision: resp.revision, keys })
    }

    async fn watch(&self, after: Revision) -> Result<WatchReceiver, DcsError> {
        let start = if after > 0 { after + 1 } else { 0 };
        let mut raw = self.store.watch_prefix(&self.prefix, start).await?;
        let (tx, rx) = tokio::sync::mpsc::channel(raw.max_capacity());
        let prefix = self.prefix.clone();
        tokio::spawn(async move {
            while let Some(event) = raw.recv().await {
                if tx.send(relative(event, &prefix)).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn acquire_leader(&self) -> Result<LeaderLease, DcsError> {
        let (lease, valid_until, replaced) = self.live_lease().await?;
        let key = self.full_key(&ClusterKey::Leader);
        let txn = Txn {
            compares: vec![Compare::CreateRevisionEq(key.clone(), 0)],
            success: vec![TxnOp::Put { key: key.clone(), value: self.name.as_bytes().to_vec(), lease }],
            failure: vec![TxnOp::Get { key }],
        };
        let resp = self.store.txn(txn).await?;
        if resp.succeeded {
            return Ok(LeaderLease { valid_until });
        }
        let current = first_get(resp.results);
        match current {
            // Ours already (e.g. a retried acquire whose first answer was lost): same as a refresh.
            Some(kv) if kv.value == self.name.as_bytes() && kv.lease == lease => Ok(LeaderLease { valid_until }),
            Some(kv) if kv.value == self.name.as_bytes() && Some(kv.lease) == replaced => {
                if self.move_leader_key(kv.lease, lease).await? {
                    Ok(LeaderLease { valid_until })
                } else {
                    Err(DcsError::LockHeld { holder: holder_of(&self.current_leader().await?).unwrap_or("?".into()) })
                }
            }
            other => Err(DcsError::LockHeld { holder: holder_of(&other).unwrap_or_else(|| "?".into()) }),
        }
    }

    async fn refresh_leader(&self) -> Result<LeaderLease, DcsError> {
        let (lease, valid_until, replaced) = match self.live_lease().await {
            Ok(v) => v,
            Err(DcsError::Store(KvError::LeaseNotFound(_))) => {
                return Err(DcsError::LockLost { holder: holder_of(&self.current_leader().await?) })
            }
            Err(e) => return Err(e),
        };
        let key = self.full_key(&ClusterKey::Leader);
        // Still ours only if it holds our name on our lease: a lease that expired and a key that
        // was taken over must not be mistaken for our own.
        let txn = Txn {
            compares: vec![
                Compare::ValueEq(key.clone(), self.name.as_bytes().to_vec()),
                Compare::LeaseEq(key.clone(), lease),
            ],
            success: vec![],
            failure: vec![TxnOp::Get { key }],
        };
        let resp = self.store.txn(txn).await?;
        if resp.succeeded {
            return Ok(LeaderLease { valid_until });
        }
        // The ttl changed since the last refresh: the key is still on the lease of the old length.
        if let Some(old) = replaced {
            if self.move_leader_key(old, lease).await? {
                return Ok(LeaderLease { valid_until });
            }
        }
        let current = first_get(resp.results);
        Err(DcsError::LockLost { holder: holder_of(&current) })
    }

    async fn release_leader(&self) -> Result<(), DcsError> {
        let key = self.full_key(&ClusterKey::Leader);
        let txn = Txn {
            compares: vec![Compare::ValueEq(key.clone(), self.name.as_bytes().to_vec())],
            success: vec![TxnOp::Delete { key }],
            failure: vec![],
        };
        self.store.txn(txn).await?;
        Ok(())
    }

    async fn touch_member(&self, value: &[u8]) -> Result<(), DcsError> {
        let (lease, _, _) = self.live_lease().await?;
        let key = self.full_key(&ClusterKey::Member(self.name.clone()));
        let txn = Txn { success: vec![TxnOp::Put { key, value: value.to_vec(), lease }], ..Txn::default() };
        self.store.txn(txn).await?;
        Ok(())
    }

    async fn initialize(&self, value: &[u8]) -> Result<bool, DcsError> {
        let key = self.full_key(&ClusterKey::Initialize);
        let op = TxnOp::Put { key, value: value.to_vec(), lease: 0 };
        match self.conditional(ClusterKey::Initialize, op, Expected::Absent).await {
            Ok(_) => Ok(true),
            Err(DcsError::Conflict { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn write(&self, key: ClusterKey, value: &[u8], expected: Expected) -> Result<Revision, DcsError> {
        let op = TxnOp::Put { key: self.full_key(&key), value: value.to_vec(), lease: 0 };
        self.conditional(key, op, expected).await
    }

    async fn delete(&self, key: ClusterKey, expected: Expected) -> Result<(), DcsError> {
        let op = TxnOp::Delete { key: self.full_key(&key) };
        self.conditional(key, op, expected).await.map(|_| ())
    }

    fn set_ttl(&self, ttl: Duration) {
        self.ttl_ms.store(millis(ttl), Ordering::Relaxed);
    }
}
