//! One simulated DCS client: it sends requests to the member it believes leads (asking a member
//! that says "not the leader" who is, as `RaftStore` does) and mixes compare-and-set counter
//! increments, unique puts, puts under its own member lease, and the leader lock: acquire
//! (create-if-absent under a fresh lease), keep-alive while held, release. It records what it was
//! told in the `History`, counting its hold of the lock conservatively: from the acquire's
//! acknowledgement to TTL after it sent its last acknowledged keep-alive (or the grant).

use super::history::{counter_value, AckedWrite, CounterRead, History, Ownership};
use super::network::{Lost, Router};
use super::trace::Trace;
use crate::kv::{Compare, LeaseId, OpResult, Txn, TxnOp};
use crate::raft_member::protocol::{ClientError, Envelope, Reply, Request};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// How long a client waits for one answer (a member bounds its own work by `OP_TIMEOUT`).
const PATIENCE: Duration = Duration::from_secs(3);
/// Members tried for one request before giving up.
const ATTEMPTS: usize = 6;
pub const LOCK_KEY: &str = "/lock";
pub const LOCK_TTL: Duration = Duration::from_secs(2);

struct Hold {
    lease: LeaseId,
    start: Instant,
    /// Until when the holder may believe the lock is its own.
    end: Instant,
    refreshed: Instant,
}

/// Why no useful answer came.
enum NoAnswer {
    /// The request may or may not have taken effect.
    Unknown,
    /// Refused; nothing changed.
    Refused,
}

pub struct Client {
    pub index: usize,
    pub rng: ChaCha8Rng,
    pub router: Arc<Router>,
    /// Member names and ids.
    pub members: Vec<(String, u64)>,
    pub history: Arc<Mutex<History>>,
    pub trace: Arc<Trace>,
    pub guess: usize,
    hold: Option<Hold>,
    member_lease: Option<LeaseId>,
    seq: u64,
    /// Leases found gone while their holder's conservative deadline had not passed.
    pub early_ends: Vec<String>,
}

impl Client {
    pub fn new(
        index: usize,
        rng: ChaCha8Rng,
        router: Arc<Router>,
        members: Vec<(String, u64)>,
        history: Arc<Mutex<History>>,
        trace: Arc<Trace>,
    ) -> Self {
        Client {
            index,
            rng,
            router,
            members,
            history,
            trace,
            guess: 0,
            hold: None,
            member_lease: None,
            seq: 0,
            early_ends: Vec::new(),
        }
    }

    fn record(&self, f: impl FnOnce(&mut History)) {
        f(&mut self.history.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Runs the workload until `stop`, then gives up whatever it holds (in its own view).
    pub async fn run(mut self, stop: Instant) -> Vec<String> {
        self.guess = self.rng.gen_range(0..self.members.len());
        while Instant::now() < stop {
            self.tend_lock().await;
            match self.rng.gen_range(0..100) {
                0..=29 => self.increment().await,
                30..=49 => self.put_unique().await,
                50..=64 => self.put_member().await,
                _ => match self.hold {
                    None => self.acquire().await,
                    Some(_) if self.rng.gen_bool(0.25) => self.release().await,
                    Some(_) => {}
                },
            }
            let pause = Duration::from_millis(self.rng.gen_range(0..150));
            tokio::time::sleep(pause).await;
        }
        if let Some(hold) = self.hold.take() {
            self.close(hold, None);
        }
        self.early_ends
    }

    /// Sends `request` to the presumed leader, following "not the leader" answers.
    async fn call(&mut self, request: Request) -> Result<Reply, NoAnswer> {
        for _ in 0..ATTEMPTS {
            let (name, id) = self.members[self.guess].clone();
            let envelope = Envelope { forwarded: true, request: request.clone() };
            let reply = self
                .router
                .carry(super::network::CLIENT, id, PATIENCE, move |e| async move { e.api.serve(envelope).await });
            match reply.await {
                Ok(Reply::Failed(ClientError::NotLeader { .. })) => {
                    self.find_leader(id).await;
                    let pause = Duration::from_millis(self.rng.gen_range(20..120));
                    tokio::time::sleep(pause).await;
                }
                Ok(Reply::Failed(ClientError::Unavailable(e))) => {
                    self.trace.log(format_args!("c{} {name}: unavailable: {e}", self.index));
                    self.guess = (self.guess + 1) % self.members.len();
                    return Err(NoAnswer::Unknown);
                }
                Ok(reply) => return Ok(reply),
                Err(Lost::Refused) => self.guess = (self.guess + 1) % self.members.len(),
                Err(Lost::Silence) => {
                    self.guess = (self.guess + 1) % self.members.len();
                    return Err(NoAnswer::Unknown);
                }
            }
        }
        Err(NoAnswer::Refused)
    }

    /// Asks member `id` who leads; moves the guess there, or to the next member.
    async fn find_leader(&mut self, id: u64) {
        let envelope = Envelope { forwarded: true, request: Request::Status };
        let status = self
            .router
            .carry(super::network::CLIENT, id, PATIENCE, move |e| async move { e.api.serve(envelope).await });
        let leader = match status.await {
            Ok(Reply::Status(s)) => s.leader.and_then(|l| self.members.iter().position(|(n, _)| *n == l)),
            _ => None,
        };
        self.guess = match leader {
            Some(i) if i != self.guess => i,
            _ => (self.guess + 1) % self.members.len(),
        };
    }

    async fn txn(&mut self, txn: Txn, lease: LeaseId) -> Option<(bool, Vec<OpResult>)> {
        let key = match txn.success.first() {
            Some(TxnOp::Put { key, .. }) => key.clone(),
            _ => String::new(),
        };
        let value = match txn.success.first() {
            Some(TxnOp::Put { value, .. }) => value.clone(),
            _ => Vec::new(),
        };
        let sent = Instant::now();
        let reply = self.call(Request::Txn(txn)).await;
        let acked = Instant::now();
        match reply {
            Ok(Reply::Txn(resp)) => {
                if resp.succeeded {
                    let w = AckedWrite { key, value, lease, revision: resp.revision, sent, acked };
                    self.trace.log(format_args!("c{} acked {} at revision {}", self.index, w.key, w.revision));
                    self.record(|h| h.writes.push(w));
                }
                Some((resp.succeeded, resp.results))
            }
            Ok(Reply::Failed(ClientError::LeaseNotFound(_))) => {
                if self.member_lease == Some(lease) {
                    self.member_lease = None;
                }
                None
            }
            _ => None,
        }
    }

    async fn increment(&mut self) {
        let key = format!("/c/{}", self.rng.gen_range(0..2));
        let sent = Instant::now();
        let Ok(Reply::Range(range)) = self.call(Request::Range { prefix: key.clone() }).await else { return };
        let current = range.kvs.into_iter().find(|kv| kv.key == key);
        let value = current.as_ref().and_then(|kv| counter_value(&kv.value)).unwrap_or(0);
        let read = CounterRead { key: key.clone(), value, sent };
        self.record(|h| h.reads.push(read));
        let txn = Txn {
            compares: vec![Compare::ModRevisionEq(key.clone(), current.map_or(0, |kv| kv.mod_revision))],
            success: vec![TxnOp::Put { key, value: (value + 1).to_string().into_bytes(), lease: 0 }],
            failure: vec![],
        };
        self.txn(txn, 0).await;
    }

    async fn put_unique(&mut self) {
        self.seq += 1;
        let key = format!("/w/{}/{}", self.index, self.seq);
        let txn = Txn { success: vec![TxnOp::Put { key, value: b"w".to_vec(), lease: 0 }], ..Txn::default() };
        self.txn(txn, 0).await;
    }

    /// A linearizable read of the whole key space.
    pub async fn read_all(&mut self) -> Option<crate::kv::RangeResponse> {
        match self.call(Request::Range { prefix: "/".to_string() }).await {
            Ok(Reply::Range(range)) => Some(range),
            _ => None,
        }
    }

    async fn grant(&mut self) -> Option<LeaseId> {
        match self.call(Request::LeaseGrant { ttl: LOCK_TTL }).await {
            Ok(Reply::LeaseGranted { lease }) => Some(lease),
            _ => None,
        }
    }

    /// A member key under the client's own lease, kept alive now and then.
    async fn put_member(&mut self) {
        let lease = match self.member_lease {
            Some(lease) if self.rng.gen_bool(0.5) => {
                if let Ok(Reply::Failed(ClientError::LeaseNotFound(_))) =
                    self.call(Request::LeaseKeepAlive { lease }).await
                {
                    self.member_lease = None;
                }
                return;
            }
            Some(lease) => lease,
            None => match self.grant().await {
                Some(lease) => {
                    self.member_lease = Some(lease);
                    lease
                }
                None => return,
            },
        };
        self.seq += 1;
        let key = format!("/m/{}", self.index);
        let value = self.seq.to_string().into_bytes();
        self.txn(Txn { success: vec![TxnOp::Put { key, value, lease }], ..Txn::default() }, lease).await;
    }

    async fn acquire(&mut self) {
        let granted_at = Instant::now();
        let Some(lease) = self.grant().await else { return };
        let key = LOCK_KEY.to_string();
        let txn = Txn {
            compares: vec![Compare::CreateRevisionEq(key.clone(), 0)],
            success: vec![TxnOp::Put { key: key.clone(), value: format!("c{}", self.index).into_bytes(), lease }],
            failure: vec![TxnOp::Get { key }],
        };
        match self.txn(txn, lease).await {
            Some((true, _)) => {
                let start = Instant::now();
                let end = granted_at + LOCK_TTL;
                self.trace.log(format_args!(
                    "c{} holds {LOCK_KEY} (lease {lease}) until {} ms",
                    self.index,
                    self.trace.ms(end)
                ));
                self.hold = Some(Hold { lease, start, end, refreshed: granted_at });
            }
            // Someone else holds it (or the outcome is unknown): give the lease back.
            _ => {
                let _ = self.call(Request::LeaseRevoke { lease }).await;
            }
        }
    }

    /// Keeps the lock alive a few times per TTL; lets go of it once its deadline has passed.
    async fn tend_lock(&mut self) {
        let Some(hold) = &self.hold else { return };
        let (lease, refreshed) = (hold.lease, hold.refreshed);
        if Instant::now() >= hold.end {
            let hold = self.hold.take();
            if let Some(hold) = hold {
                self.trace.log(format_args!("c{} lets the lock go: deadline passed", self.index));
                self.close(hold, None);
            }
            return;
        }
        if Instant::now() < refreshed + LOCK_TTL / 3 {
            return;
        }
        let sent = Instant::now();
        let reply = self.call(Request::LeaseKeepAlive { lease }).await;
        let Some(hold) = &mut self.hold else { return };
        match reply {
            Ok(Reply::KeptAlive { ttl }) => {
                hold.end = hold.end.max(sent + ttl);
                hold.refreshed = sent;
            }
            Ok(Reply::Failed(ClientError::LeaseNotFound(_))) => {
                let now = Instant::now();
                if now < hold.end {
                    self.early_ends.push(format!(
                        "c{}: lease {lease} reported gone at {} ms, before its holder's deadline {} ms",
                        self.index,
                        self.trace.ms(now),
                        self.trace.ms(hold.end)
                    ));
                }
                if let Some(hold) = self.hold.take() {
                    self.close(hold, Some(now));
                }
            }
            _ => {}
        }
    }

    async fn release(&mut self) {
        let Some(hold) = self.hold.take() else { return };
        let lease = hold.lease;
        self.close(hold, Some(Instant::now()));
        let _ = self.call(Request::LeaseRevoke { lease }).await;
    }

    /// Records a hold that ended at `at` (or at its deadline, if earlier or not given).
    fn close(&self, hold: Hold, at: Option<Instant>) {
        let end = at.map_or(hold.end, |at| at.min(hold.end));
        self.trace.log(format_args!("c{} owned {LOCK_KEY} until {} ms", self.index, self.trace.ms(end)));
        let ownership =
            Ownership { client: self.index, key: LOCK_KEY.to_string(), lease: hold.lease, start: hold.start, end };
        self.record(|h| h.ownerships.push(ownership));
    }
}
