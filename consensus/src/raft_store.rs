//! The built-in Raft backend of `KvStore`, as a client of the members' DCS client API: used by
//! agents (their own member first), poolers and ctl alike. It sends each request to the member it
//! prefers (moving to the Raft leader when a member names it, to the next member when one fails),
//! retries idempotent requests and requests that certainly were not applied within the operation
//! timeout, and supervises watches (long polls re-opened on another member from the next revision;
//! `Resync` when the member no longer holds that history). Writes whose outcome is unknown are
//! reported `Unavailable`, never retried.

use crate::kv::{KvError, KvStore, LeaseId, RangeResponse, Revision, Txn, TxnResponse, WatchEvent, WatchReceiver};
use crate::raft::{ClientApiConnection, ClientCallError, NetworkConfig, SharedSecret};
use crate::raft_member::protocol::{ClientError, Envelope, MemberStatus, Reply, Request};
use async_trait::async_trait;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

/// How a `RaftStore` talks to the members.
#[derive(Debug, Clone)]
pub struct RaftStoreOptions {
    /// Upper bound for one request, retries included.
    pub op_timeout: Duration,
    /// Upper bound for connecting to and authenticating with one member.
    pub connect_timeout: Duration,
    /// How long one watch poll waits on a member for an event.
    pub poll_wait: Duration,
}

impl Default for RaftStoreOptions {
    fn default() -> Self {
        RaftStoreOptions {
            op_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_millis(500),
            poll_wait: Duration::from_secs(1),
        }
    }
}

/// Whether a request may be sent again after a failure that leaves its outcome unknown.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    Idempotent,
    OnlyIfNotApplied,
}

struct Members {
    addrs: Vec<String>,
    secret: SharedSecret,
    network: NetworkConfig,
    options: RaftStoreOptions,
    preferred: AtomicUsize,
    idle: Mutex<Vec<(usize, ClientApiConnection)>>,
}

/// A `KvStore` over a Raft group of pgha members.
pub struct RaftStore {
    members: Arc<Members>,
}

impl RaftStore {
    /// A client of the members at `addrs` (`host:port`), the first preferred. Connections are made
    /// on demand: unreachable members show up as `Unavailable` on requests, not here.
    pub fn new(addrs: Vec<String>, secret: SharedSecret, options: RaftStoreOptions) -> Result<Self, KvError> {
        if addrs.is_empty() {
            return Err(KvError::Rejected("no Raft member address given".into()));
        }
        let members = Members {
            addrs,
            secret,
            network: NetworkConfig::default(),
            options,
            preferred: AtomicUsize::new(0),
            idle: Mutex::new(Vec::new()),
        };
        Ok(RaftStore { members: Arc::new(members) })
    }

    /// Sends a request that is not a KvStore call (status, membership changes) and returns the reply.
    pub async fn request(&self, request: Request) -> Result<Reply, KvError> {
        self.members.call(request, Retry::OnlyIfNotApplied).await
    }

    /// Makes member `name`, reached at `addr`, a voter of the group this store reaches (give it
    /// the group's other members): a learner first (the Raft leader waits until it has caught
    /// up), then a voter beside the current ones. Nothing changes if it is a voter already, so
    /// it can be called again after any failure. Returns the leader's view of the group.
    pub async fn join(&self, name: &str, addr: &str) -> Result<MemberStatus, KvError> {
        let now = status(self.request(Request::Status).await?)?;
        if now.voters.iter().any(|v| v == name) {
            return Ok(now);
        }
        if !now.learners.iter().any(|l| l == name) {
            status(self.request(Request::AddLearner { name: name.to_string(), addr: addr.to_string() }).await?)?;
        }
        status(self.request(Request::AddVoter { name: name.to_string() }).await?)
    }

    /// Takes member `name` out of the group (the node is gone for good): it stops counting
    /// towards the quorum. The last voter cannot be removed.
    pub async fn remove(&self, name: &str) -> Result<MemberStatus, KvError> {
        status(self.request(Request::RemoveMember { name: name.to_string() }).await?)
    }
}

/// The group's status a membership request answers with; its refusal as an error.
fn status(reply: Reply) -> Result<MemberStatus, KvError> {
    match reply {
        Reply::Status(s) => Ok(s),
        Reply::Failed(e) => Err(KvError::Rejected(e.to_string())),
        other => Err(KvError::Rejected(format!("unexpected reply {other:?}"))),
    }
}

impl Members {
    fn next_member(&self, failed: usize) {
        let _ = self.preferred.compare_exchange(
            failed,
            (failed + 1) % self.addrs.len(),
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    async fn connection(&self, index: usize) -> Result<ClientApiConnection, ClientCallError> {
        let pooled = {
            let mut idle = self.idle.lock().await;
            idle.iter().position(|(i, _)| *i == index).map(|p| idle.swap_remove(p).1)
        };
        match pooled {
            Some(conn) => Ok(conn),
            None => {
                let addr = &self.addrs[index];
                ClientApiConnection::connect(addr, &self.secret, &self.network, self.options.connect_timeout).await
            }
        }
    }

    async fn put_back(&self, index: usize, conn: ClientApiConnection) {
        let mut idle = self.idle.lock().await;
        if idle.len() < 4 * self.addrs.len() {
            idle.push((index, conn));
        }
    }

    /// One request, to the preferred member and then others, within the op timeout (a watch poll
    /// gets its wait on top).
    async fn call(&self, request: Request, retry: Retry) -> Result<Reply, KvError> {
        let extra = match &request {
            Request::Watch { wait, .. } => *wait,
            Request::AddLearner { .. }
            | Request::AddVoter { .. }
            | Request::ChangeMembership { .. }
            | Request::RemoveMember { .. } => self.options.op_timeout * 15,
            _ => Duration::ZERO,
        };
        let json = serde_json::to_value(Envelope { forwarded: false, request })
            .map_err(|e| KvError::Rejected(format!("cannot encode request: {e}")))?;
        let deadline = Instant::now() + self.options.op_timeout + extra;
        let mut last = String::from("no member answered");
        while Instant::now() < deadline {
            let index = self.preferred.load(Ordering::SeqCst) % self.addrs.len();
            let addr = &self.addrs[index];
            let mut conn = match tokio::time::timeout_at(deadline, self.connection(index)).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    // Never sent: safe to try another member whatever the request.
                    last = e.to_string();
                    self.next_member(index);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Err(_) => break,
            };
            let remaining = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            let answer = match conn.call(&json, remaining).await {
                Ok(answer) => {
                    self.put_back(index, conn).await;
                    answer
                }
                Err(ClientCallError::Refused(m)) => return Err(KvError::Rejected(m)),
                Err(e) => {
                    last = format!("{addr}: {e}");
                    self.next_member(index);
                    if retry == Retry::Idempotent {
                        continue;
                    }
                    return Err(KvError::Unavailable(format!("{last}; the outcome of the request is unknown")));
                }
            };
            let reply: Reply = serde_json::from_value(answer)
                .map_err(|e| KvError::Unavailable(format!("{addr} sent an unreadable answer: {e}")))?;
            match reply {
                Reply::Failed(ClientError::NotLeader { leader }) => {
                    last = format!("{addr}: no Raft leader reachable");
                    match leader.and_then(|l| self.addrs.iter().position(|a| *a == l)) {
                        Some(i) => self.preferred.store(i, Ordering::SeqCst),
                        None => self.next_member(index),
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Reply::Failed(ClientError::Unavailable(m)) if retry == Retry::Idempotent => {
                    last = format!("{addr}: {m}");
                    self.next_member(index);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                }
                Reply::Failed(ClientError::Unavailable(m)) => return Err(KvError::Unavailable(format!("{addr}: {m}"))),
                Reply::Failed(ClientError::LeaseNotFound(l)) => return Err(KvError::LeaseNotFound(l)),
                Reply::Failed(ClientError::Rejected(m)) => return Err(KvError::Rejected(m)),
                reply => return Ok(reply),
            }
        }
        Err(KvError::Unavailable(format!("no Raft quorum answered within the timeout: {last}")))
    }
}

fn unexpected(reply: Reply) -> KvError {
    KvError::Unavailable(format!("unexpected answer from a Raft member: {reply:?}"))
}

#[async_trait]
impl KvStore for RaftStore {
    async fn range_prefix(&self, prefix: &str) -> Result<RangeResponse, KvError> {
        match self.members.call(Request::Range { prefix: prefix.to_string() }, Retry::Idempotent).await? {
            Reply::Range(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, KvError> {
        match self.members.call(Request::Txn(txn), Retry::OnlyIfNotApplied).await? {
            Reply::Txn(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<LeaseId, KvError> {
        // A lost answer leaves an orphan lease, which expires on its own.
        match self.members.call(Request::LeaseGrant { ttl }, Retry::OnlyIfNotApplied).await? {
            Reply::LeaseGranted { lease } => Ok(lease),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_keep_alive(&self, lease: LeaseId) -> Result<Duration, KvError> {
        match self.members.call(Request::LeaseKeepAlive { lease }, Retry::Idempotent).await? {
            Reply::KeptAlive { ttl } => Ok(ttl),
            other => Err(unexpected(other)),
        }
    }

    async fn lease_revoke(&self, lease: LeaseId) -> Result<(), KvError> {
        match self.members.call(Request::LeaseRevoke { lease }, Retry::Idempotent).await {
            Ok(Reply::Revoked) | Err(KvError::LeaseNotFound(_)) => Ok(()),
            Ok(other) => Err(unexpected(other)),
            Err(e) => Err(e),
        }
    }

    async fn watch_prefix(&self, prefix: &str, start_revision: Revision) -> Result<WatchReceiver, KvError> {
        // "From now" is pinned to the revision at this call, as for etcd.
        let start = if start_revision > 0 { start_revision } else { self.range_prefix(prefix).await?.revision + 1 };
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(supervise_watch(self.members.clone(), prefix.to_string(), start, tx));
        Ok(rx)
    }
}

/// Keeps one prefix watch going for as long as its receiver exists.
async fn supervise_watch(members: Arc<Members>, prefix: String, mut next: Revision, tx: mpsc::Sender<WatchEvent>) {
    let wait = members.options.poll_wait;
    let mut backoff = Duration::from_millis(50);
    while !tx.is_closed() {
        let request = Request::Watch { prefix: prefix.clone(), from: next, wait };
        let reply = tokio::select! {
            r = members.call(request, Retry::Idempotent) => r,
            _ = tx.closed() => return,
        };
        match reply {
            Ok(Reply::Events { events, next: after }) => {
                backoff = Duration::from_millis(50);
                for event in events {
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
                next = next.max(after);
            }
            Ok(Reply::Compacted { from }) => {
                // History is gone on that member: the consumer must re-read everything.
                if tx.send(WatchEvent::Resync { revision: from }).await.is_err() {
                    return;
                }
                next = from;
            }
            Ok(other) => tracing::debug!(reply = ?other, "raft watch: unexpected answer"),
            Err(e) => {
                tracing::debug!(error = %e, "raft watch: poll failed; retrying from revision {next} in {backoff:?}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}
