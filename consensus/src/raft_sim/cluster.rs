//! The simulated Raft group: N members, each the real `KeyspaceStateMachine` (its snapshot file
//! in a temporary directory, on tmpfs when there is one), the real lease task and `MemberApi`, over
//! openraft with `MemLog` as its log and `SimNetwork` as its transport. Owns crashing a member
//! (everything but the durable log and snapshot file is lost), restarting it, and check 4: the
//! applied log index and key-space revision a member shows never go back, across restarts too.

use super::log_store::MemLog;
use super::network::{Endpoint, Router, SimNetwork};
use super::trace::Trace;
use crate::keyspace::KeyspaceSnapshot;
use crate::kv::Revision;
use crate::raft::{NetworkConfig, SharedSecret};
use crate::raft_member::{
    initial_nodes, lease_task, node_id, KeyspaceStateMachine, MemberApi, RaftTiming, Shared, TypeConfig,
};
use openraft::{Raft, ServerState, SnapshotPolicy};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bound on one Raft write or read barrier inside a member (as `RaftMemberConfig::op_timeout`).
pub const OP_TIMEOUT: Duration = Duration::from_secs(2);

struct Running {
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    lease_task: JoinHandle<()>,
}

pub struct SimMember {
    pub name: String,
    pub id: u64,
    log: MemLog,
    dir: PathBuf,
    running: Option<Running>,
    /// The highest (applied index, revision) this member has shown.
    high: (u64, Revision),
}

impl SimMember {
    /// (applied index, revision) now, if running.
    fn applied(&self) -> Option<(u64, Revision)> {
        let state = self.running.as_ref()?.shared.read();
        Some((state.last_applied.map_or(0, |l| l.index), state.keyspace.revision()))
    }

    pub fn is_running(&self) -> bool {
        self.running.is_some()
    }
}

pub struct SimCluster {
    pub members: Vec<SimMember>,
    router: Arc<Router>,
    trace: Arc<Trace>,
    peers: BTreeMap<String, String>,
    config: Arc<openraft::Config>,
    /// What check 4 found.
    pub problems: Vec<String>,
    _dir: tempfile::TempDir,
}

fn sim_err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl SimCluster {
    /// Starts `n` members that form a new group.
    pub async fn start(n: usize, router: Arc<Router>, trace: Arc<Trace>) -> Result<SimCluster, String> {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        let dir = dir.map_err(|e| sim_err("temp dir", e))?;
        let peers: BTreeMap<String, String> = (1..=n).map(|i| (format!("n{i}"), format!("sim:n{i}"))).collect();
        let members = peers
            .keys()
            .map(|name| SimMember {
                name: name.clone(),
                id: node_id(name),
                log: MemLog::default(),
                dir: dir.path().join(name),
                running: None,
                high: (0, 0),
            })
            .collect();
        // Production timing with frequent snapshots, so that lagging and restarted members are
        // brought up to date by snapshot installs as well as by log.
        let timing = RaftTiming::default();
        let ms = |d: Duration| d.as_millis() as u64;
        let config = openraft::Config {
            cluster_name: "pgha-sim".to_string(),
            heartbeat_interval: ms(timing.heartbeat),
            election_timeout_min: ms(timing.election_min),
            election_timeout_max: ms(timing.election_max),
            install_snapshot_timeout: 10_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(40),
            max_in_snapshot_log_to_keep: 5,
            purge_batch_size: 1,
            ..openraft::Config::default()
        }
        .validate()
        .map_err(|e| sim_err("raft config", e))?;
        let mut cluster =
            SimCluster { members, router, trace, peers, config: Arc::new(config), problems: Vec::new(), _dir: dir };
        for i in 0..n {
            cluster.boot(i).await?;
        }
        for m in &cluster.members {
            if let Some(r) = &m.running {
                // Every member proposes the same initial membership, as `RaftMember::start` does.
                let _ = r.raft.initialize(initial_nodes(&cluster.peers)).await;
            }
        }
        Ok(cluster)
    }

    /// Starts member `i` from its durable log and snapshot file.
    async fn boot(&mut self, i: usize) -> Result<(), String> {
        let m = &mut self.members[i];
        let shared = Shared::new();
        let sm = KeyspaceStateMachine::open(&m.dir, shared.clone()).map_err(|e| sim_err("state machine", e))?;
        let network = SimNetwork { router: self.router.clone(), id: m.id };
        let raft = Raft::new(m.id, self.config.clone(), network, m.log.clone(), sm)
            .await
            .map_err(|e| sim_err("raft start", e))?;
        let secret = SharedSecret::new("the simulation's shared secret").map_err(|e| sim_err("secret", e))?;
        let api = Arc::new(MemberApi::new(
            raft.clone(),
            shared.clone(),
            &m.name,
            secret,
            NetworkConfig::default(),
            OP_TIMEOUT,
            // Clients here never ask a member to forward (see `Client::call`).
            BTreeMap::new(),
        ));
        let lease_task = tokio::spawn(lease_task::run(raft.clone(), shared.clone(), m.id, OP_TIMEOUT));
        self.router.up(m.id, Endpoint { raft: raft.clone(), api });
        m.running = Some(Running { raft, shared, lease_task });
        // Check 4 at the restart: the log's committed entries were re-applied over the snapshot.
        if let Some(now) = m.applied() {
            if now < m.high {
                self.problems.push(format!(
                    "{} restarted at (applied index, revision) {now:?}, behind {:?} it had shown before the crash",
                    m.name, m.high
                ));
            }
            m.high = m.high.max(now);
            self.trace.log(format_args!("{} started at (applied index, revision) {now:?}", m.name));
        }
        Ok(())
    }

    /// Kills member `i`: its tasks stop, its memory is gone, its log and snapshot file stay.
    pub async fn crash(&mut self, i: usize) {
        self.observe();
        let m = &mut self.members[i];
        let Some(running) = m.running.take() else { return };
        self.router.down(m.id);
        running.lease_task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(5), running.raft.shutdown()).await;
        self.trace.log(format_args!("{} crashed (log ends at {:?})", m.name, m.log.last_index()));
    }

    pub async fn restart(&mut self, i: usize) -> Result<(), String> {
        if self.members[i].running.is_none() {
            self.boot(i).await?;
        }
        Ok(())
    }

    /// Check 4 while running: what a member has applied never goes back.
    pub fn observe(&mut self) {
        for m in &mut self.members {
            let Some(now) = m.applied() else { continue };
            if now.0 < m.high.0 || now.1 < m.high.1 {
                self.problems.push(format!("{} went back from {:?} to {now:?}", m.name, m.high));
            }
            m.high = (m.high.0.max(now.0), m.high.1.max(now.1));
        }
    }

    /// The running member that believes it leads in the highest term.
    pub fn leader(&self) -> Option<usize> {
        let mut best: Option<(u64, usize)> = None;
        for (i, m) in self.members.iter().enumerate() {
            let Some(r) = &m.running else { continue };
            let metrics = r.raft.metrics().borrow().clone();
            if metrics.state == ServerState::Leader && best.is_none_or(|(term, _)| metrics.current_term > term) {
                best = Some((metrics.current_term, i));
            }
        }
        best.map(|(_, i)| i)
    }

    /// Check 3: waits until every member has applied the same log index, then compares their key
    /// spaces; returns the common key space. `Err` if they do not get there by `deadline`.
    pub async fn converge(&mut self, deadline: Instant) -> Result<KeyspaceSnapshot, String> {
        loop {
            self.observe();
            let states: Vec<_> = self
                .members
                .iter()
                .filter_map(|m| m.running.as_ref().map(|r| (m, r.shared.read())))
                .map(|(m, s)| (m.name.clone(), s.last_applied, s.keyspace.snapshot()))
                .collect();
            let same_index = states.windows(2).all(|w| w[0].1 == w[1].1);
            if states.len() == self.members.len() && same_index {
                let (first_name, at, first) = &states[0];
                for (name, _, snapshot) in &states[1..] {
                    if snapshot != first {
                        self.problems.push(format!(
                            "{first_name} and {name} applied up to {at:?} but hold different key spaces:\n{first:?}\n{snapshot:?}"
                        ));
                    }
                }
                return Ok(first.clone());
            }
            if Instant::now() >= deadline {
                let applied: Vec<_> = states.iter().map(|(n, at, _)| format!("{n}: {at:?}")).collect();
                return Err(format!("members did not converge after healing: {}", applied.join(", ")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| self.members[*i].is_running()).collect()
    }

    pub fn crashed(&self) -> Vec<usize> {
        (0..self.members.len()).filter(|i| !self.members[*i].is_running()).collect()
    }
}
