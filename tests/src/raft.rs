//! A built-in Raft DCS group for tests: N `pgha dcs-member` processes (no PostgreSQL) on free
//! ports of 127.0.0.1, each with its data in one scratch dir so it can be killed and restarted on
//! its own disk. Member i reaches member j only through its own fault relay (i -> j), so a test can
//! cut one member off from the others in both directions while clients still reach it directly.

use crate::pgha::PghaProcess;
use crate::relay::FaultRelay;
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use anyhow::Context;
use consensus::raft::SharedSecret;
use consensus::raft_member::protocol::{MemberStatus, Reply, Request};
use consensus::raft_store::{RaftStore, RaftStoreOptions};
use std::collections::BTreeMap;
use std::time::Duration;

/// The shared secret of every test group.
pub const RAFT_SECRET: &str = "pgha test cluster secret, not for production";

pub fn raft_secret() -> SharedSecret {
    // A constant of more than MIN_SECRET_LEN bytes: cannot fail.
    SharedSecret::new(RAFT_SECRET).unwrap_or_else(|e| panic!("test secret: {e}"))
}

/// Raft timing of a test group, milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct RaftTimingMs {
    pub heartbeat: u64,
    pub election_timeout: u64,
}

impl Default for RaftTimingMs {
    fn default() -> Self {
        RaftTimingMs { heartbeat: 100, election_timeout: 300 }
    }
}

pub struct RaftGroup {
    pub names: Vec<String>,
    ports: Vec<u16>,
    configs: Vec<String>,
    processes: Vec<Option<PghaProcess>>,
    /// (from, to) -> the relay `from` reaches `to` through.
    relays: BTreeMap<(usize, usize), FaultRelay>,
    _dir: ScratchDir,
}

impl RaftGroup {
    /// Starts `size` members and waits until one leads and every member knows it.
    pub async fn start(size: usize, timing: RaftTimingMs) -> anyhow::Result<RaftGroup> {
        let dir = ScratchDir::new("raft", None)?;
        let names: Vec<String> = (1..=size).map(|i| format!("m{i}")).collect();
        let mut ports = Vec::new();
        for _ in 0..size {
            ports.push(crate::ports::free_port()?);
        }
        let mut relays = BTreeMap::new();
        for from in 0..size {
            for (to, port) in ports.iter().enumerate() {
                if from != to {
                    relays.insert((from, to), FaultRelay::start(([127, 0, 0, 1], *port).into()).await?);
                }
            }
        }
        let mut configs = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let peers = (0..size)
                .map(|j| {
                    let port = if i == j { ports[j] } else { relays[&(i, j)].port() };
                    format!("{} = \"127.0.0.1:{port}\"", names[j])
                })
                .collect::<Vec<_>>()
                .join(", ");
            configs.push(format!(
                "name = \"{name}\"\nop_timeout = 2.0\n[raft]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\
                 peers = {{ {peers} }}\nsecret = \"{RAFT_SECRET}\"\nheartbeat_ms = {hb}\nelection_timeout_ms = {et}\n",
                port = ports[i],
                data = dir.join(&format!("{name}.raft")).display(),
                hb = timing.heartbeat,
                et = timing.election_timeout,
            ));
        }
        let mut group = RaftGroup { names, ports, configs, processes: Vec::new(), relays, _dir: dir };
        for i in 0..size {
            group.processes.push(None);
            group.spawn(i)?;
        }
        group.wait_leader(Duration::from_secs(20)).await?;
        Ok(group)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let process = PghaProcess::start(&self.names[i], &["dcs-member"], &self.configs[i])?;
        self.processes[i] = Some(process);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Where clients reach member `i` (directly, not through a relay).
    pub fn addr(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.ports[i])
    }

    pub fn addrs(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// A client of the given members, in order of preference.
    pub fn store_of(&self, members: &[usize], options: RaftStoreOptions) -> anyhow::Result<RaftStore> {
        let addrs = members.iter().map(|i| self.addr(*i)).collect();
        RaftStore::new(addrs, raft_secret(), options).context("creating a Raft client")
    }

    /// A client of every member.
    pub fn store(&self) -> anyhow::Result<RaftStore> {
        self.store_of(&(0..self.len()).collect::<Vec<_>>(), RaftStoreOptions::default())
    }

    /// Member `i`'s own view of the group.
    pub async fn status(&self, i: usize) -> anyhow::Result<MemberStatus> {
        let options = RaftStoreOptions { op_timeout: Duration::from_millis(500), ..RaftStoreOptions::default() };
        match self.store_of(&[i], options)?.request(Request::Status).await? {
            Reply::Status(s) => Ok(s),
            other => anyhow::bail!("unexpected status answer {other:?}"),
        }
    }

    /// The index of the member that leads, once every running member agrees on it.
    pub async fn wait_leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        wait_for("a Raft leader every running member agrees on", timeout, || async {
            let mut leaders = Vec::new();
            for i in 0..self.len() {
                if self.processes[i].is_some() {
                    leaders.push(self.status(i).await?.leader);
                }
            }
            let first = leaders.first().cloned().flatten();
            anyhow::ensure!(first.is_some() && leaders.iter().all(|l| *l == first), "members see leaders {leaders:?}");
            Ok(first.and_then(|name| self.names.iter().position(|n| *n == name)))
        })
        .await
    }

    /// Waits until every running member agrees on the leader and has applied the same log index
    /// (a restarted member has caught up); returns the leader.
    pub async fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<usize> {
        let leader = self.wait_leader(timeout).await?;
        wait_for("every running member to apply the same log index", timeout, || async {
            let mut applied = Vec::new();
            for i in (0..self.len()).filter(|i| self.processes[*i].is_some()) {
                applied.push(self.status(i).await?.last_applied_index);
            }
            anyhow::ensure!(applied.iter().all(|a| *a == applied[0]), "applied indexes {applied:?}");
            Ok(Some(()))
        })
        .await?;
        Ok(leader)
    }

    /// kill -9 of member `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.processes[i].take() {
            p.process().kill_group();
        }
    }

    /// Starts member `i` again on its own data directory.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.processes[i].is_some()
    }

    /// Cuts member `i` off from every other member, both ways (clients still reach it).
    pub fn isolate(&self, i: usize) {
        for ((from, to), relay) in &self.relays {
            if *from == i || *to == i {
                relay.partition();
            }
        }
    }

    /// Undoes `isolate`.
    pub fn heal(&self, i: usize) {
        for ((from, to), relay) in &self.relays {
            if *from == i || *to == i {
                relay.heal();
            }
        }
    }

    /// Process groups of the running members.
    pub fn pgids(&self) -> Vec<i32> {
        self.processes.iter().flatten().map(PghaProcess::pgid).collect()
    }

    /// Every running member's log, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.processes.iter().enumerate() {
            if let Some(p) = p {
                out.push_str(&format!("----- {} -----\n{}\n", self.names[i], p.log()));
            }
        }
        out
    }
}
