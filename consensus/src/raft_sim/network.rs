//! The simulation's network: openraft's `RaftNetworkFactory` over an in-process `Router` that
//! carries every Raft RPC and every client request through a seeded fault model. Each message is
//! its own task: it waits a random delay (so messages overtake each other, and one an impatient
//! sender gave up on still arrives later), may be dropped (the sender sees a timeout), never
//! crosses a cut link (partitions black-hole traffic, in one or both directions), and finds a
//! crashed node refusing connections. Replies take the same chances on the way back, so a request
//! can take effect while its sender never hears of it. Owns the fault state; knows nothing of the
//! key space.

use super::super::raft_member::{MemberApi, MemberNode, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Timeout, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{RPCTypes, Raft, RaftNetwork, RaftNetworkFactory};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// The sender id of client requests (never a Raft node id: those are >= 1, and clients are never
/// cut off; they see delays and losses only).
pub const CLIENT: u64 = 0;

/// How unreliable the network is right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Chance that a message (request or reply) is lost.
    pub drop: f64,
    /// Every message waits a uniform delay up to this.
    pub max_delay: Duration,
    /// Chance that a message is held much longer (up to `slow_delay`), arriving after later ones.
    pub slow: f64,
    pub slow_delay: Duration,
}

impl Faults {
    pub const CALM: Faults =
        Faults { drop: 0.0, max_delay: Duration::from_millis(2), slow: 0.0, slow_delay: Duration::ZERO };
}

/// What a node offers the network while it runs.
#[derive(Clone)]
pub struct Endpoint {
    pub raft: Raft<TypeConfig>,
    pub api: Arc<MemberApi>,
}

/// Counters for the report.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub cut: u64,
}

struct RouterState {
    rng: ChaCha8Rng,
    nodes: BTreeMap<u64, Endpoint>,
    /// Directed links that carry nothing: (from, to).
    cut: BTreeSet<(u64, u64)>,
    faults: Faults,
    stats: NetStats,
}

/// The whole simulated network; shared by every node's `SimNetwork` and by the clients.
pub struct Router {
    state: Mutex<RouterState>,
}

/// One leg of a message's trip, decided when it starts.
struct Leg {
    arrives: bool,
    delay: Duration,
}

/// Why a message got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Lost {
    #[error("connection refused: the target is down")]
    Refused,
    #[error("no answer in time")]
    Silence,
}

impl Router {
    pub fn new(rng: ChaCha8Rng) -> Arc<Router> {
        let state = RouterState {
            rng,
            nodes: BTreeMap::new(),
            cut: BTreeSet::new(),
            faults: Faults::CALM,
            stats: NetStats::default(),
        };
        Arc::new(Router { state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn up(&self, id: u64, endpoint: Endpoint) {
        self.lock().nodes.insert(id, endpoint);
    }

    pub fn down(&self, id: u64) {
        self.lock().nodes.remove(&id);
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    /// Replaces the set of cut directed links (empty: healed).
    pub fn set_cut(&self, cut: BTreeSet<(u64, u64)>) {
        self.lock().cut = cut;
    }

    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    fn leg(&self) -> Leg {
        let mut s = self.lock();
        s.stats.sent += 1;
        let faults = s.faults;
        let mut delay = Duration::from_micros(s.rng.gen_range(0..=faults.max_delay.as_micros() as u64));
        if faults.slow > 0.0 && s.rng.gen_bool(faults.slow) {
            delay += Duration::from_micros(s.rng.gen_range(0..=faults.slow_delay.as_micros() as u64));
        }
        let dropped = faults.drop > 0.0 && s.rng.gen_bool(faults.drop);
        if dropped {
            s.stats.dropped += 1;
        }
        Leg { arrives: !dropped, delay }
    }

    /// The endpoint `to` as `from` can reach it now, or why not.
    fn reach(&self, from: u64, to: u64) -> Result<Endpoint, Lost> {
        let mut s = self.lock();
        if s.cut.contains(&(from, to)) {
            s.stats.cut += 1;
            return Err(Lost::Silence);
        }
        s.nodes.get(&to).cloned().ok_or(Lost::Refused)
    }

    /// Carries a request from `from` to `to`, runs `serve` there, and carries the answer back;
    /// `Err` after `patience` if nothing came back. The trip goes on if the sender stops waiting.
    pub async fn carry<T, F, Fut>(self: &Arc<Self>, from: u64, to: u64, patience: Duration, serve: F) -> Result<T, Lost>
    where
        T: Send + 'static,
        F: FnOnce(Endpoint) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, Lost>>();
        let deadline = tokio::time::Instant::now() + patience;
        let router = self.clone();
        tokio::spawn(async move {
            let out = router.leg();
            tokio::time::sleep(out.delay).await;
            if !out.arrives {
                return;
            }
            let endpoint = match router.reach(from, to) {
                Ok(endpoint) => endpoint,
                Err(lost) => {
                    let _ = tx.send(Err(lost));
                    return;
                }
            };
            let answer = serve(endpoint).await;
            let back = router.leg();
            tokio::time::sleep(back.delay).await;
            let cut = router.lock().cut.contains(&(to, from));
            if back.arrives && !cut {
                let _ = tx.send(Ok(answer));
            }
        });
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Err(Lost::Refused))) => Err(Lost::Refused),
            // A black hole (cut link) and a lost message look the same to the sender.
            Ok(Ok(Err(Lost::Silence))) => {
                tokio::time::sleep_until(deadline).await;
                Err(Lost::Silence)
            }
            Ok(Ok(Ok(answer))) => Ok(answer),
            Ok(Err(_)) | Err(_) => Err(Lost::Silence),
        }
    }
}

/// openraft's network factory for one node.
pub struct SimNetwork {
    pub router: Arc<Router>,
    pub id: u64,
}

impl RaftNetworkFactory<TypeConfig> for SimNetwork {
    type Network = SimLink;

    async fn new_client(&mut self, target: u64, _node: &MemberNode) -> SimLink {
        SimLink { router: self.router.clone(), from: self.id, to: target }
    }
}

/// One node's link to another.
pub struct SimLink {
    router: Arc<Router>,
    from: u64,
    to: u64,
}

impl SimLink {
    fn error<E: std::error::Error>(&self, lost: Lost, action: RPCTypes, ttl: Duration) -> RPCError<u64, MemberNode, E> {
        match lost {
            Lost::Refused => RPCError::Unreachable(Unreachable::new(&lost)),
            Lost::Silence => RPCError::Timeout(Timeout { action, id: self.from, target: self.to, timeout: ttl }),
        }
    }
}

type RpcResult<T, E = RaftError<u64>> = Result<T, RPCError<u64, MemberNode, E>>;

// The error type is openraft's, as `RaftNetwork` requires.
#[allow(clippy::result_large_err)]
fn remote<T, E: std::error::Error>(to: u64, answer: Result<T, E>) -> Result<T, RPCError<u64, MemberNode, E>> {
    answer.map_err(|e| RPCError::RemoteError(RemoteError::new(to, e)))
}

impl RaftNetwork<TypeConfig> for SimLink {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<u64>> {
        let ttl = option.hard_ttl();
        let serve = move |e: Endpoint| async move { e.raft.append_entries(rpc).await };
        match self.router.carry(self.from, self.to, ttl, serve).await {
            Ok(answer) => remote(self.to, answer),
            Err(lost) => Err(self.error(lost, RPCTypes::AppendEntries, ttl)),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
        let ttl = option.hard_ttl();
        let serve = move |e: Endpoint| async move { e.raft.install_snapshot(rpc).await };
        match self.router.carry(self.from, self.to, ttl, serve).await {
            Ok(answer) => remote(self.to, answer),
            Err(lost) => Err(self.error(lost, RPCTypes::InstallSnapshot, ttl)),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<u64>, option: RPCOption) -> RpcResult<VoteResponse<u64>> {
        let ttl = option.hard_ttl();
        let serve = move |e: Endpoint| async move { e.raft.vote(rpc).await };
        match self.router.carry(self.from, self.to, ttl, serve).await {
            Ok(answer) => remote(self.to, answer),
            Err(lost) => Err(self.error(lost, RPCTypes::Vote, ttl)),
        }
    }
}
