//! Failover benchmark (not a test): the node-loss window of pgha against Patroni on the same etcd,
//! with equal ttl / loop_wait / retry_timeout, the same writer and the same fault, runs alternating
//! between the tools; then each agent's RSS and idle CPU per node. Run it through
//! `scripts/bench-failover`, which builds what it needs and explains the arguments.

use harness::cluster::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use harness::patroni::{is_postgres, kill_postgres_group, PatroniNode, PatroniTiming};
use harness::process::live_processes_in_groups;
use harness::scratch::ScratchDir;
use harness::{wait_for, EtcdCluster, PghaProcess};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tool {
    Pgha,
    Patroni,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Pgha => "pgha",
            Tool::Patroni => "patroni",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Profile {
    name: &'static str,
    ttl: u32,
    loop_wait: u32,
    retry_timeout: u32,
}

/// pgha refuses `ttl <= loop_wait + 2 x retry_timeout` (Patroni accepts equality), so the two
/// Patroni profiles keep ttl and loop_wait, which decide the node-loss window, and take one second
/// off retry_timeout, for both tools.
const PROFILES: [Profile; 3] = [
    Profile { name: "patroni-defaults", ttl: 30, loop_wait: 10, retry_timeout: 9 },
    Profile { name: "fast", ttl: 10, loop_wait: 2, retry_timeout: 3 },
    Profile { name: "pgha-defaults", ttl: 6, loop_wait: 1, retry_timeout: 2 },
];

/// One database node of either tool.
enum Node {
    Pgha { name: String, pg_port: u16, process: Option<PghaProcess>, dir: ScratchDir },
    Patroni(PatroniNode),
}

impl Node {
    fn pg_port(&self) -> u16 {
        match self {
            Node::Pgha { pg_port, .. } => *pg_port,
            Node::Patroni(p) => p.pg_port,
        }
    }
    fn name(&self) -> &str {
        match self {
            Node::Pgha { name, .. } => name,
            Node::Patroni(p) => &p.name,
        }
    }
    fn agent_pgid(&self) -> Option<i32> {
        match self {
            Node::Pgha { process, .. } => process.as_ref().map(|p| p.pgid()),
            Node::Patroni(p) => p.agent_pgid(),
        }
    }
    fn log(&self) -> String {
        match self {
            Node::Pgha { process, .. } => process.as_ref().map(|p| p.log()).unwrap_or_default(),
            Node::Patroni(p) => p.log(),
        }
    }
    /// kill -9 of the agent and of every PostgreSQL process of the node.
    fn kill(&mut self) {
        match self {
            Node::Pgha { process, dir, .. } => {
                let postmaster = read_pid(&dir.join("data").join("postmaster.pid"));
                if let Some(mut p) = process.take() {
                    p.process().kill_group();
                }
                if let Some(pid) = postmaster {
                    kill_postgres_group(pid);
                }
            }
            Node::Patroni(p) => p.kill_node(),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_pid(path: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.lines().next()?.trim().parse().ok()
}

fn start_pgha_node(name: &str, scope: &str, namespace: &str, endpoints: &[String], p: Profile) -> anyhow::Result<Node> {
    let owner = agent::postgres::os_user::RunAs::for_postgres(agent::postgres::os_user::DEFAULT_USER)?;
    let dir = ScratchDir::new(&format!("bench-{name}"), owner)?;
    let pg_port = harness::ports::free_port()?;
    let api_port = harness::ports::free_port()?;
    let endpoints = endpoints.iter().map(|e| format!("\"{e}\"")).collect::<Vec<_>>().join(", ");
    let config = format!(
        r#"name = "{name}"
scope = "{scope}"
namespace = "{namespace}"
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
[dcs]
backend = "etcd"
[dcs.etcd]
endpoints = [{endpoints}]
"#,
        data = dir.join("data").display(),
        ttl = p.ttl,
        lw = p.loop_wait,
        rt = p.retry_timeout,
    );
    let process = PghaProcess::start(name, &["agent"], &config)?;
    Ok(Node::Pgha { name: name.to_string(), pg_port, process: Some(process), dir })
}

fn start_cluster(tool: Tool, tag: &str, etcd: &EtcdCluster, p: Profile) -> anyhow::Result<Vec<Node>> {
    let namespace = "/bench";
    let scope = format!("{}-{tag}-{}", tool.label(), std::process::id());
    (1..=3)
        .map(|i| {
            let name = format!("{}{i}", tool.label());
            match tool {
                Tool::Pgha => start_pgha_node(&name, &scope, namespace, &etcd.endpoints(), p),
                Tool::Patroni => {
                    let timing = PatroniTiming { ttl: p.ttl, loop_wait: p.loop_wait, retry_timeout: p.retry_timeout };
                    PatroniNode::start(&name, namespace, &scope, &etcd.endpoints(), timing).map(Node::Patroni)
                }
            }
        })
        .collect()
}

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2")
}

/// The writer's DSN: every node, and only a writable one is accepted (libpq's multi-host form).
fn writer_dsn(nodes: &[Node]) -> String {
    let ports = nodes.iter().map(|n| n.pg_port().to_string()).collect::<Vec<_>>().join(",");
    let hosts = nodes.iter().map(|_| "127.0.0.1").collect::<Vec<_>>().join(",");
    format!(
        "host={hosts} port={ports} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=1 \
         target_session_attrs=read-write"
    )
}

async fn role(port: u16) -> anyhow::Result<(bool, Option<String>)> {
    let client = harness::cluster::connect(&dsn(port)).await?;
    let row = client.query_one("select pg_is_in_recovery(), (select status from pg_stat_wal_receiver)", &[]).await?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Waits for one primary and two streaming replicas; returns the primary's index.
async fn healthy(nodes: &[Node]) -> anyhow::Result<usize> {
    healthy_ports(&nodes.iter().map(Node::pg_port).collect::<Vec<_>>()).await
}

/// Like `healthy`, for the PostgreSQL ports of the nodes.
async fn healthy_ports(ports: &[u16]) -> anyhow::Result<usize> {
    wait_for("one primary and two streaming replicas", Duration::from_secs(180), || async {
        let mut primary = None;
        let mut streaming = 0;
        let mut seen = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let r = role(*port).await;
            match &r {
                Ok((false, _)) => primary = Some(i),
                Ok((true, Some(s))) if s == "streaming" => streaming += 1,
                _ => {}
            }
            seen.push(format!("port {port}: {:?}", r.map_err(|e| e.to_string())));
        }
        match primary.filter(|_| streaming == ports.len() - 1) {
            Some(p) => Ok(Some(p)),
            None => anyhow::bail!("{}", seen.join("; ")),
        }
    })
    .await
}

struct RunResult {
    longest_gap: Duration,
    first_write_after_kill: Duration,
    acked: usize,
    missing: usize,
}

/// Commits a row every 20 ms through the multi-host DSN; records (id, ack time).
/// Row ids the writer had acknowledged, with when and by which PostgreSQL port.
type Acked = Arc<Mutex<Vec<(i64, Instant, u16)>>>;

fn start_writer(dsn: String) -> (Arc<AtomicBool>, Acked, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let (a, s) = (acked.clone(), stop.clone());
    let handle = tokio::spawn(async move {
        let mut id = 0i64;
        let mut client: Option<tokio_postgres::Client> = None;
        while !s.load(Ordering::Relaxed) {
            if client.is_none() {
                client = harness::cluster::connect(&dsn).await.ok();
            }
            if let Some(c) = &client {
                let next = id + 1;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
                let insert = c.query_one("insert into w(id) values ($1) returning inet_server_port()", &params);
                match tokio::time::timeout(Duration::from_secs(1), insert).await {
                    Ok(Ok(row)) => {
                        id = next;
                        let port = row.try_get::<_, i32>(0).ok().and_then(|p| u16::try_from(p).ok()).unwrap_or(0);
                        if let Ok(mut v) = a.lock() {
                            v.push((id, Instant::now(), port));
                        }
                    }
                    _ => client = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (stop, acked, handle)
}

async fn one_run(tool: Tool, p: Profile, run: usize, etcd: &EtcdCluster) -> anyhow::Result<RunResult> {
    let mut nodes = start_cluster(tool, &format!("{}-{run}", p.name), etcd, p)?;
    let result = node_loss(&mut nodes, p).await;
    if result.is_err() {
        for n in &nodes {
            let log = n.log();
            let tail = &log[log.len().saturating_sub(3000)..];
            eprintln!("----- {} log tail -----\n{tail}", n.name());
        }
    }
    drop(nodes);
    result
}

async fn node_loss(nodes: &mut [Node], p: Profile) -> anyhow::Result<RunResult> {
    let old = healthy(nodes).await?;
    let c = harness::cluster::connect(&dsn(nodes[old].pg_port())).await?;
    c.batch_execute("create table w(id bigint primary key, at timestamptz default now())").await?;
    // Both tools need a loop to publish that the replicas stream: give them one loop and a half.
    tokio::time::sleep(Duration::from_millis(u64::from(p.loop_wait) * 1000 + 1500)).await;
    let (stop, acked, writer) = start_writer(writer_dsn(nodes));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_port = nodes[old].pg_port();
    nodes[old].kill();
    let killed = Instant::now();
    // A write the old primary acknowledged just before its death may be recorded just after the
    // kill: the failover is over when another node acknowledges one.
    let first_after = wait_for("a write acknowledged by a new primary", Duration::from_secs(180), || async {
        let a = acked.lock().map_err(|_| anyhow::anyhow!("writer panicked"))?;
        Ok(a.last().filter(|(_, _, port)| *port != old_port).map(|(_, at, _)| at.saturating_duration_since(killed)))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    writer.await?;
    let first_write_after_kill = first_after?;
    let acked = acked.lock().map_err(|_| anyhow::anyhow!("writer panicked"))?.clone();
    let longest_gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    let c = harness::cluster::connect(&writer_dsn(nodes)).await?;
    let rows: Vec<i64> = c.query("select id from w order by id", &[]).await?.iter().map(|r| r.get(0)).collect();
    let missing = acked.iter().filter(|(id, _, _)| rows.binary_search(id).is_err()).count();
    Ok(RunResult { longest_gap, first_write_after_kill, acked: acked.len(), missing })
}

/// Sum of RSS (KiB) and CPU ticks of the non-PostgreSQL processes in the given process group.
fn agent_usage(pgid: i32) -> (u64, u64) {
    let mut rss = 0;
    let mut ticks = 0;
    for (pid, _) in live_processes_in_groups(&[pgid]) {
        if is_postgres(pid) {
            continue;
        }
        rss += proc_rss_kib(pid).unwrap_or(0);
        ticks += proc_cpu_ticks(pid).unwrap_or(0);
    }
    (rss, ticks)
}

fn proc_rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

fn proc_cpu_ticks(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

struct Idle {
    rss_kib: Vec<u64>,
    cpu_pct: Vec<f64>,
    etcd_rss_kib: u64,
    etcd_cpu_pct: f64,
}

async fn idle_usage(tool: Tool, p: Profile, secs: u64, etcd: &EtcdCluster) -> anyhow::Result<Idle> {
    let nodes = start_cluster(tool, &format!("idle-{}", p.name), etcd, p)?;
    healthy(&nodes).await?;
    tokio::time::sleep(Duration::from_secs(u64::from(p.loop_wait) + 2)).await;
    let pgids: Vec<i32> = nodes.iter().filter_map(Node::agent_pgid).collect();
    Ok(sample_usage(&pgids, etcd.pgids().first().copied(), secs).await)
}

/// The same for 3 agents on the built-in Raft (each agent runs its member: no etcd at all).
async fn idle_usage_on_raft(p: Profile, secs: u64) -> anyhow::Result<Idle> {
    let timing = harness::cluster::Timing {
        ttl: f64::from(p.ttl),
        loop_wait: f64::from(p.loop_wait),
        retry_timeout: f64::from(p.retry_timeout),
    };
    let cluster = harness::cluster::PghaCluster::start_on_raft(3, timing).await?;
    if let Err(e) = healthy_ports(&cluster.nodes.iter().map(|n| n.pg_port).collect::<Vec<_>>()).await {
        anyhow::bail!("{e:#}\n{}", cluster.logs());
    }
    tokio::time::sleep(Duration::from_secs(u64::from(p.loop_wait) + 2)).await;
    let pgids: Vec<i32> = cluster.nodes.iter().filter_map(|n| n.agent_pgid()).collect();
    Ok(sample_usage(&pgids, None, secs).await)
}

/// Peak RSS and CPU of the agents' process groups (and of etcd's) over `secs` seconds.
async fn sample_usage(pgids: &[i32], etcd_pgid: Option<i32>, secs: u64) -> Idle {
    let before: Vec<(u64, u64)> = pgids.iter().map(|&g| agent_usage(g)).collect();
    let etcd_before = etcd_pgid.map(agent_usage).unwrap_or_default();
    let start = Instant::now();
    let mut peak = vec![0u64; pgids.len()];
    while start.elapsed() < Duration::from_secs(secs) {
        for (i, &g) in pgids.iter().enumerate() {
            peak[i] = peak[i].max(agent_usage(g).0);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let hz = clock_ticks_per_sec();
    let cpu_pct = pgids
        .iter()
        .zip(&before)
        .map(|(&g, b)| (agent_usage(g).1.saturating_sub(b.1)) as f64 / hz / elapsed * 100.0)
        .collect();
    let etcd_after = etcd_pgid.map(agent_usage).unwrap_or_default();
    let etcd_cpu_pct = etcd_after.1.saturating_sub(etcd_before.1) as f64 / hz / elapsed * 100.0;
    Idle { rss_kib: peak, cpu_pct, etcd_rss_kib: etcd_after.0, etcd_cpu_pct }
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2),
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("RUNS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let idle_secs: u64 = std::env::var("IDLE_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let only: Option<String> = std::env::var("PROFILES").ok();
    harness::patroni::patroni_bin()?;
    let etcd = EtcdCluster::start(1).await?;
    let bench_start = Instant::now();
    if runs > 0 {
        failover_runs(runs, only.as_deref(), &etcd).await;
    }
    if idle_secs > 0 {
        idle_section(idle_secs, &etcd).await;
    }
    println!();
    println!("total {:.0} s", bench_start.elapsed().as_secs_f64());
    Ok(())
}

/// The node-loss runs of every profile (or those in `only`), alternating tools, and their summary.
async fn failover_runs(runs: usize, only: Option<&str>, etcd: &EtcdCluster) {
    println!("node loss (kill -9 of the agent and every PostgreSQL process of the primary), writer commits a row");
    println!("every 20 ms through a multi-host DSN with target_session_attrs=read-write; one etcd 3.4 for both tools.");
    println!(
        "{:<18} {:<8} {:>4} {:>14} {:>18} {:>8} {:>8}",
        "profile", "tool", "run", "longest gap", "first write after", "acked", "missing"
    );
    let mut summary = Vec::new();
    for p in PROFILES.iter().filter(|p| only.is_none_or(|o| o.split(',').any(|x| x == p.name))) {
        let mut gaps: Vec<(Tool, Duration)> = Vec::new();
        let mut lost = [0usize, 0usize];
        let mut failed = [0usize, 0usize];
        for run in 1..=runs {
            for tool in [Tool::Pgha, Tool::Patroni] {
                let ti = tool as usize;
                match one_run(tool, *p, run, etcd).await {
                    Ok(r) => {
                        println!(
                            "{:<18} {:<8} {:>4} {:>14} {:>18} {:>8} {:>8}",
                            p.name,
                            tool.label(),
                            run,
                            secs(r.longest_gap),
                            secs(r.first_write_after_kill),
                            r.acked,
                            r.missing
                        );
                        gaps.push((tool, r.longest_gap));
                        lost[ti] += r.missing;
                    }
                    Err(e) => {
                        println!("{:<18} {:<8} {:>4} failed: {e:#}", p.name, tool.label(), run);
                        failed[ti] += 1;
                    }
                }
            }
        }
        let of = |t: Tool| gaps.iter().filter(|(x, _)| *x == t).map(|(_, d)| *d).collect::<Vec<_>>();
        summary.push((*p, median(&of(Tool::Pgha)), median(&of(Tool::Patroni)), lost, failed));
    }
    println!();
    println!(
        "{:<18} {:>12} {:>14} {:>14} {:>8} {:>22}",
        "profile", "ttl/lw/rt", "pgha median", "patroni median", "ratio", "acked rows lost p/P"
    );
    for (p, a, b, lost, failed) in &summary {
        let ratio = match (a, b) {
            (Some(a), Some(b)) if !b.is_zero() => format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()),
            _ => "-".into(),
        };
        println!(
            "{:<18} {:>12} {:>14} {:>14} {:>8} {:>22}{}",
            p.name,
            format!("{}/{}/{}", p.ttl, p.loop_wait, p.retry_timeout),
            a.map(secs).unwrap_or("-".into()),
            b.map(secs).unwrap_or("-".into()),
            ratio,
            format!("{}/{}", lost[0], lost[1]),
            if failed.iter().any(|&f| f > 0) {
                format!("  (failed runs p/P: {}/{})", failed[0], failed[1])
            } else {
                String::new()
            }
        );
    }
}

/// Idle agents: pgha on etcd, pgha on its built-in Raft, Patroni on etcd; per-node RSS and CPU,
/// and pgha's footprint against Patroni's plus the etcd member it needs.
async fn idle_section(idle_secs: u64, etcd: &EtcdCluster) {
    println!();
    println!("idle 3-node cluster, {idle_secs} s, each tool with its own defaults: per-node agent RSS (peak) and CPU");
    println!("(the agent's processes only; PostgreSQL excluded), and the shared etcd member where there is one.");
    let mib = |k: u64| k as f64 / 1024.0;
    let max_mib = |i: &Idle| i.rss_kib.iter().copied().max().map(mib).unwrap_or(0.0);
    let mut results = Vec::new();
    for (label, tool, p) in [
        ("pgha/etcd", Some(Tool::Pgha), PROFILES[2]),
        ("pgha/raft", None, PROFILES[2]),
        ("patroni", Some(Tool::Patroni), PROFILES[0]),
    ] {
        let idle = match tool {
            Some(tool) => idle_usage(tool, p, idle_secs, etcd).await,
            None => idle_usage_on_raft(p, idle_secs).await,
        };
        match idle {
            Ok(i) => {
                let etcd_part = if tool.is_some() {
                    format!("; etcd RSS {:.1} MiB, CPU {:.2} %", mib(i.etcd_rss_kib), i.etcd_cpu_pct)
                } else {
                    " (its Raft member included; no etcd)".to_string()
                };
                println!(
                    "{label:<10} ({}/{}/{}): RSS per node {} MiB; CPU per node {} % of a core{etcd_part}",
                    p.ttl,
                    p.loop_wait,
                    p.retry_timeout,
                    i.rss_kib.iter().map(|k| format!("{:.1}", mib(*k))).collect::<Vec<_>>().join(" / "),
                    i.cpu_pct.iter().map(|c| format!("{c:.2}")).collect::<Vec<_>>().join(" / "),
                );
                results.push((label, Some(i)));
            }
            Err(e) => {
                println!("{label}: idle measurement failed: {e:#}");
                results.push((label, None));
            }
        }
    }
    let get = |l: &str| results.iter().find(|(x, _)| *x == l).and_then(|(_, i)| i.as_ref());
    if let Some(patroni) = get("patroni") {
        // One etcd member per node, as Patroni is deployed on 3 nodes.
        let patroni_node = max_mib(patroni) + mib(patroni.etcd_rss_kib);
        println!("per node, largest agent: Patroni + etcd member {patroni_node:.1} MiB");
        if let Some(raft) = get("pgha/raft") {
            println!(
                "  pgha on Raft (agent + member) {:.1} MiB: {:.2} x Patroni + etcd",
                max_mib(raft),
                max_mib(raft) / patroni_node
            );
        }
        if let Some(e) = get("pgha/etcd") {
            let node = max_mib(e) + mib(e.etcd_rss_kib);
            println!("  pgha on etcd (agent + etcd member) {node:.1} MiB: {:.2} x Patroni + etcd", node / patroni_node);
        }
    }
}
