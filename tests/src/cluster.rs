//! Whole pgha clusters for tests: N agents (the real `pgha agent` binary) on a DCS (etcd, or the
//! built-in Raft whose members run inside the agents), each with its own PostgreSQL data
//! directory, ports and log. Nodes can be killed like a lost machine (kill -9 of the agent and
//! every PostgreSQL process) and started again on their own disk, or cut off from the DCS through
//! fault relays while their PostgreSQL replication links stay up.

use crate::etcd::EtcdCluster;
use crate::pgha::PghaProcess;
use crate::relay::FaultRelay;
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use anyhow::Context;
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_postgres::NoTls;

pub const SUPERUSER_PASSWORD: &str = "pgha-test-superuser";
pub const REPLICATION_PASSWORD: &str = "pgha-test-replication";

/// The Raft data_dir of a node, in its scratch dir.
const RAFT_DIR: &str = "raft";

/// One database node: its agent process and where its PostgreSQL lives.
pub struct Node {
    pub name: String,
    /// The node's only path to the DCS, when the cluster was started with relays.
    pub dcs_relay: Option<FaultRelay>,
    pub pg_port: u16,
    pub api_port: u16,
    agent: Option<PghaProcess>,
    config: String,
    dir: ScratchDir,
}

impl Node {
    pub fn dsn(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2",
            self.pg_port
        )
    }

    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.join("data")
    }

    /// Where a node of a cluster on the built-in Raft keeps its Raft log and snapshot.
    pub fn raft_data_dir(&self) -> std::path::PathBuf {
        self.dir.join(RAFT_DIR)
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        self.agent.as_ref().map(|a| a.log()).unwrap_or_default()
    }

    /// The last `max` bytes of the log of the PostgreSQL the agent runs (`<data_dir>.run`).
    pub fn postgres_log_tail(&self, max: usize) -> String {
        let Ok(bytes) = std::fs::read(self.dir.join("data.run").join("postgresql.log")) else {
            return String::new();
        };
        String::from_utf8_lossy(&bytes[bytes.len().saturating_sub(max)..]).into_owned()
    }

    /// The agent's process group, while it runs.
    pub fn agent_pgid(&self) -> Option<i32> {
        self.agent.as_ref().map(PghaProcess::pgid)
    }

    /// Process groups of the agent and of its postmaster (for survivor checks).
    pub fn pgids(&self) -> Vec<i32> {
        let mut out = Vec::new();
        if let Some(a) = &self.agent {
            out.push(a.pgid());
        }
        if let Some(pid) = self.postmaster_pid() {
            out.push(pid);
        }
        out
    }

    /// kill -9 of this node's PostgreSQL only (the agent lives on).
    pub fn kill_postgres(&self) -> anyhow::Result<i32> {
        let pid = self.postmaster_pid().context("no postmaster.pid")?;
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL)?;
        Ok(pid)
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) every PostgreSQL process of this node.
    pub fn freeze_postgres(&self, frozen: bool) -> anyhow::Result<i32> {
        let pid = self.postmaster_pid().context("no postmaster.pid")?;
        let sig = if frozen { nix::sys::signal::Signal::SIGSTOP } else { nix::sys::signal::Signal::SIGCONT };
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), sig)?;
        Ok(pid)
    }

    /// Stops the agent gracefully (its PostgreSQL stops with it).
    pub async fn stop_agent(&mut self) -> anyhow::Result<()> {
        if let Some(mut a) = self.agent.take() {
            a.process().stop(nix::sys::signal::Signal::SIGTERM, Duration::from_secs(30)).await?;
        }
        Ok(())
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Like a machine losing power: kill -9 of the agent and of every PostgreSQL process.
    pub fn kill_node(&mut self) {
        let postmaster = self.postmaster_pid();
        if let Some(mut a) = self.agent.take() {
            a.process().kill_group();
        }
        if let Some(pid) = postmaster {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }

    /// Tags this node `nofailover` from its next agent start on.
    pub fn tag_nofailover(&mut self) {
        if !self.config.contains("nofailover = true") {
            self.config.push_str("[tags]\nnofailover = true\n");
        }
    }

    /// Adds `line` (TOML) to the `[postgresql]` section of the agent's config, for its next start.
    pub fn add_postgresql_setting(&mut self, line: &str) {
        self.config = self.config.replacen("[api]\n", &format!("{line}\n[api]\n"), 1);
    }

    /// Adds `line` (TOML) to the `[api]` section of the agent's config, for its next start.
    pub fn add_api_setting(&mut self, line: &str) {
        self.config = self.config.replacen("[api]\n", &format!("[api]\n{line}\n"), 1);
    }

    /// Appends `section` (a whole TOML table, e.g. `[bootstrap]` and its keys) to the agent's
    /// config, for its next start.
    pub fn add_section(&mut self, section: &str) {
        if !self.config.ends_with('\n') {
            self.config.push('\n');
        }
        self.config.push_str(section);
        self.config.push('\n');
    }

    /// Whether this node's agent runs (not stopped or killed by the test).
    pub fn has_agent(&self) -> bool {
        self.agent.is_some()
    }

    /// Starts the agent again on the same data directory and config.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        self.agent = Some(PghaProcess::start(&self.name, &["agent"], &self.config)?);
        Ok(())
    }

    /// (in recovery, WAL receiver status) of this node's PostgreSQL, if it answers.
    pub async fn role(&self) -> anyhow::Result<(bool, Option<String>)> {
        let client = connect(&self.dsn()).await?;
        let row =
            client.query_one("select pg_is_in_recovery(), (select status from pg_stat_wal_receiver)", &[]).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }
}

/// A connection whose driver task runs on the current runtime.
pub async fn connect(dsn: &str) -> anyhow::Result<tokio_postgres::Client> {
    let (client, conn) = tokio::time::timeout(Duration::from_secs(3), tokio_postgres::connect(dsn, NoTls))
        .await
        .context("connect timed out")??;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

/// Which DCS the agents of a cluster use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One etcd member, reached by each agent through its own fault relay.
    Etcd,
    /// The built-in Raft: each agent runs a member; member i reaches member j through relay (i, j).
    Raft,
}

/// A cluster of agents on one etcd member, or on the Raft group they form themselves.
pub struct PghaCluster {
    pub nodes: Vec<Node>,
    /// None when the agents run the built-in Raft DCS.
    pub etcd: Option<EtcdCluster>,
    pub scope: String,
    pub backend: Backend,
    /// Raft only: (from, to) -> the relay member `from` reaches member `to` through.
    raft_links: BTreeMap<(usize, usize), FaultRelay>,
    /// Raft only: each member's own listening port.
    raft_ports: Vec<u16>,
    timing: Timing,
}

/// HA timing for a test cluster (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub ttl: f64,
    pub loop_wait: f64,
    pub retry_timeout: f64,
}

impl Timing {
    /// The fast profile of docs/configuration.md.
    pub const FAST: Timing = Timing { ttl: 3.0, loop_wait: 0.5, retry_timeout: 1.0 };
}

impl Default for Timing {
    /// pgha's defaults.
    fn default() -> Self {
        Timing { ttl: 6.0, loop_wait: 1.0, retry_timeout: 2.0 }
    }
}

impl PghaCluster {
    /// Starts `size` agents on a fresh single-member etcd.
    pub async fn start_on_etcd(size: usize, timing: Timing) -> anyhow::Result<PghaCluster> {
        Self::start(size, timing, false).await
    }

    /// Like `start_on_etcd`, with `extra` (TOML sections) appended to every agent's config.
    pub async fn start_on_etcd_with(size: usize, timing: Timing, extra: &str) -> anyhow::Result<PghaCluster> {
        let mut cluster = Self::start_agents(size, timing, false, extra).await?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Like `start_on_etcd`, with the agents not started yet: change their configs, then
    /// [`PghaCluster::start_all`].
    pub async fn prepare_on_etcd(size: usize, timing: Timing) -> anyhow::Result<PghaCluster> {
        Self::start_agents(size, timing, false, "").await
    }

    /// Raft only: `127.0.0.1:<port>` of each member, as a DCS client (a pooler) reaches them.
    pub fn raft_members(&self) -> Vec<String> {
        self.raft_ports.iter().map(|p| format!("127.0.0.1:{p}")).collect()
    }

    /// Starts every node's agent.
    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for n in &mut self.nodes {
            n.start_agent()?;
        }
        Ok(())
    }

    /// Starts `size` agents that form the built-in Raft DCS among themselves (no etcd); member i
    /// reaches member j through its own fault relay (i, j).
    pub async fn start_on_raft(size: usize, timing: Timing) -> anyhow::Result<PghaCluster> {
        Self::start_on_raft_with(size, timing, "").await
    }

    /// Like `start_on_raft`, with `extra` (TOML sections) appended to every agent's config.
    pub async fn start_on_raft_with(size: usize, timing: Timing, extra: &str) -> anyhow::Result<PghaCluster> {
        let mut raft_ports = Vec::new();
        for _ in 0..size {
            raft_ports.push(crate::ports::free_port()?);
        }
        let mut raft_links = BTreeMap::new();
        for from in 0..size {
            for (to, port) in raft_ports.iter().enumerate() {
                if from != to {
                    raft_links.insert((from, to), FaultRelay::start(([127, 0, 0, 1], *port).into()).await?);
                }
            }
        }
        let dcs_section = |i: usize, dir: &ScratchDir| {
            let peers = (0..size)
                .map(|j| {
                    let port = if i == j { raft_ports[j] } else { raft_links[&(i, j)].port() };
                    format!("node{} = \"127.0.0.1:{port}\"", j + 1)
                })
                .collect::<Vec<_>>()
                .join(", ");
            format!(
                "[dcs]\nbackend = \"raft\"\n[dcs.raft]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\
                 peers = {{ {peers} }}\nsecret = \"{secret}\"\n{extra}",
                port = raft_ports[i],
                data = dir.join(RAFT_DIR).display(),
                secret = crate::raft::RAFT_SECRET,
            )
        };
        let mut cluster = Self::configure(size, timing, None, &dcs_section)?;
        cluster.backend = Backend::Raft;
        cluster.raft_links = raft_links;
        cluster.raft_ports = raft_ports;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Starts `size` agents on `backend` with every DCS path behind a fault relay, so that
    /// `cut_off_from_dcs` works on either backend.
    pub async fn start_on(backend: Backend, size: usize, timing: Timing) -> anyhow::Result<PghaCluster> {
        match backend {
            Backend::Etcd => Self::start(size, timing, true).await,
            Backend::Raft => Self::start_on_raft(size, timing).await,
        }
    }

    async fn start(size: usize, timing: Timing, relays: bool) -> anyhow::Result<PghaCluster> {
        let mut cluster = Self::start_agents(size, timing, relays, "").await?;
        cluster.start_all()?;
        Ok(cluster)
    }

    /// Starts `size` agents on an etcd that serves clients over TLS only and checks their
    /// certificates; the agents get `pki`'s CA and client certificate (`dcs.etcd.cacert`, `cert`,
    /// `key`).
    pub async fn start_on_etcd_with_tls(
        size: usize,
        timing: Timing,
        pki: &crate::pki::TestPki,
    ) -> anyhow::Result<PghaCluster> {
        let etcd = EtcdCluster::start_tls(1, pki).await?;
        let tls = format!(
            "cacert = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            pki.ca.display(),
            pki.client_cert.display(),
            pki.client_key.display()
        );
        Self::start_on_this_etcd(size, timing, etcd, &tls)
    }

    /// Starts `size` agents on `etcd`, each with `etcd_settings` added to its `[dcs.etcd]`.
    pub fn start_on_this_etcd(
        size: usize,
        timing: Timing,
        etcd: EtcdCluster,
        etcd_settings: &str,
    ) -> anyhow::Result<PghaCluster> {
        let endpoints = etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
        let dcs_section = |_: usize, _: &ScratchDir| {
            format!("[dcs]\nbackend = \"etcd\"\n[dcs.etcd]\nendpoints = [{endpoints}]\n{etcd_settings}")
        };
        let mut cluster = Self::configure(size, timing, None, &dcs_section)?;
        cluster.etcd = Some(etcd);
        cluster.start_all()?;
        Ok(cluster)
    }

    /// The etcd and the nodes' configs (agents not started yet).
    async fn start_agents(size: usize, timing: Timing, relays: bool, extra: &str) -> anyhow::Result<PghaCluster> {
        let etcd = EtcdCluster::start(1).await?;
        let mut dcs_relays = Vec::new();
        for _ in 0..size {
            dcs_relays.push(if relays {
                let target = ([127, 0, 0, 1], etcd.members()[0].client_port).into();
                Some(FaultRelay::start(target).await?)
            } else {
                None
            });
        }
        let endpoints: Vec<String> = dcs_relays
            .iter()
            .map(|relay| match relay {
                Some(r) => format!("\"http://127.0.0.1:{}\"", r.port()),
                None => etcd.endpoints().iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", "),
            })
            .collect();
        let dcs_section = |i: usize, _: &ScratchDir| {
            format!("[dcs]\nbackend = \"etcd\"\n[dcs.etcd]\nendpoints = [{}]\n", endpoints[i])
        };
        let dcs_and_extra = |i: usize, dir: &ScratchDir| format!("{}{extra}", dcs_section(i, dir));
        let mut cluster = Self::configure(size, timing, Some(dcs_relays), &dcs_and_extra)?;
        cluster.etcd = Some(etcd);
        Ok(cluster)
    }

    fn configure(
        size: usize,
        timing: Timing,
        relays: Option<Vec<Option<FaultRelay>>>,
        dcs_section: &dyn Fn(usize, &ScratchDir) -> String,
    ) -> anyhow::Result<PghaCluster> {
        let mut relays = relays.unwrap_or_default().into_iter();
        let scope = format!("test{}", std::process::id());
        let mut nodes = Vec::new();
        for i in 1..=size {
            nodes.push(Self::node(i, &scope, timing, relays.next().flatten(), dcs_section)?);
        }
        Ok(PghaCluster {
            nodes,
            etcd: None,
            scope,
            backend: Backend::Etcd,
            raft_links: BTreeMap::new(),
            raft_ports: Vec::new(),
            timing,
        })
    }

    /// Node `i` (1-based) of cluster `scope`: its scratch dir, ports and agent config.
    fn node(
        i: usize,
        scope: &str,
        timing: Timing,
        dcs_relay: Option<FaultRelay>,
        dcs_section: &dyn Fn(usize, &ScratchDir) -> String,
    ) -> anyhow::Result<Node> {
        let owner = RunAs::for_postgres(DEFAULT_USER)?;
        {
            let name = format!("node{i}");
            let dir = ScratchDir::new(&name, owner)?;
            let pg_port = crate::ports::free_port()?;
            let api_port = crate::ports::free_port()?;
            let dcs = dcs_section(i - 1, &dir);
            let config = format!(
                r#"name = "{name}"
scope = "{scope}"
[postgresql]
data_dir = "{data}"
listen = "127.0.0.1:{pg_port}"
superuser = {{ username = "postgres", password = "{SUPERUSER_PASSWORD}" }}
replication = {{ username = "replicator", password = "{REPLICATION_PASSWORD}" }}
parameters = {{ shared_buffers = "16MB", max_connections = 40, fsync = "off" }}
[api]
listen = "127.0.0.1:{api_port}"
[ha]
ttl = {ttl}
loop_wait = {lw}
retry_timeout = {rt}
{dcs}"#,
                data = dir.join("data").display(),
                ttl = timing.ttl,
                lw = timing.loop_wait,
                rt = timing.retry_timeout,
            );
            Ok(Node { name, dcs_relay, pg_port, api_port, agent: None, config, dir })
        }
    }

    /// Raft only: adds node N+1 and starts its agent with `dcs.raft.join = true`, its member
    /// reaching the running members directly (no fault relays). Returns its index.
    pub fn add_raft_node(&mut self) -> anyhow::Result<usize> {
        anyhow::ensure!(self.backend == Backend::Raft, "add_raft_node needs a cluster on the built-in Raft");
        let port = crate::ports::free_port()?;
        let others: Vec<String> =
            self.raft_ports.iter().enumerate().map(|(j, p)| format!("node{} = \"127.0.0.1:{p}\"", j + 1)).collect();
        let i = self.nodes.len() + 1;
        let dcs_section = |_: usize, dir: &ScratchDir| {
            format!(
                "[dcs]\nbackend = \"raft\"\n[dcs.raft]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{data}\"\n\
                 peers = {{ {peers} }}\nsecret = \"{secret}\"\njoin = true\n",
                data = dir.join(RAFT_DIR).display(),
                peers = others.join(", "),
                secret = crate::raft::RAFT_SECRET,
            )
        };
        let mut node = Self::node(i, &self.scope, self.timing, None, &dcs_section)?;
        node.start_agent()?;
        self.nodes.push(node);
        self.raft_ports.push(port);
        Ok(i - 1)
    }

    /// Cuts node `i`'s agent off from the DCS while its PostgreSQL stays reachable: on etcd its
    /// relay to etcd; on Raft every link between its member and the others, both ways (the agent
    /// still reaches its own in-process member, which loses its quorum).
    pub fn cut_off_from_dcs(&self, i: usize) -> anyhow::Result<()> {
        match self.backend {
            Backend::Etcd => self.nodes[i].dcs_relay.as_ref().context("started without DCS relays")?.partition(),
            Backend::Raft => {
                anyhow::ensure!(!self.raft_links.is_empty(), "started without Raft relays");
                for ((from, to), relay) in &self.raft_links {
                    if *from == i || *to == i {
                        relay.partition();
                    }
                }
            }
        }
        Ok(())
    }

    /// Undoes `cut_off_from_dcs`.
    pub fn reconnect_to_dcs(&self, i: usize) {
        if let Some(relay) = &self.nodes[i].dcs_relay {
            relay.heal();
        }
        for ((from, to), relay) in &self.raft_links {
            if *from == i || *to == i {
                relay.heal();
            }
        }
    }

    /// Index of the node whose PostgreSQL accepts writes, if exactly one does.
    pub async fn primaries(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if let Ok((false, _)) = n.role().await {
                out.push(i);
            }
        }
        out
    }

    /// Waits until every other running node has replayed all WAL the primary `primary` has
    /// written so far (asynchronous replication: a node lost right after a commit may take the
    /// commit with it, and a test that kills it must first wait for this).
    pub async fn wait_replicated(&self, primary: usize, timeout: Duration) -> anyhow::Result<()> {
        let lsn: String = connect(&self.nodes[primary].dsn())
            .await?
            .query_one("select pg_current_wal_lsn()::text", &[])
            .await?
            .try_get(0)?;
        for (i, n) in self.nodes.iter().enumerate().filter(|(i, n)| *i != primary && n.agent.is_some()) {
            wait_for(&format!("node{} to replay {lsn}", i + 1), timeout, || async {
                let c = connect(&n.dsn()).await?;
                let row = c.query_one(&format!("select pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn"), &[]).await?;
                Ok(row.try_get::<_, Option<bool>>(0)?.unwrap_or(false).then_some(()))
            })
            .await?;
        }
        Ok(())
    }

    /// Every agent's log and the end of its PostgreSQL's, for failure messages.
    pub fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                format!(
                    "----- {} -----\n{}\n----- {} PostgreSQL, last 4 KiB -----\n{}",
                    n.name,
                    n.agent_log(),
                    n.name,
                    n.postgres_log_tail(4096)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A minimal HTTP/1.1 request to 127.0.0.1:`port` (the agents' REST API); returns (status, body).
pub async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::time::timeout(Duration::from_secs(3), tokio::net::TcpStream::connect(("127.0.0.1", port)))
        .await
        .context("connect timed out")??;
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut response)).await.context("no answer")??;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no status line")?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((status, body))
}
