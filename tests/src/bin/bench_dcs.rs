//! DCS benchmark (not a test): per backend, how many leader-refresh + member-touch cycles per
//! second one member can do, and watch latency (write acknowledged -> event received), printed
//! side by side. Starts its own etcd and its own built-in Raft group (`pgha dcs-member`, so build
//! pgha first) on 127.0.0.1. Run:
//! `cargo run --release -p pgha-tests --bin bench-dcs -- [seconds]`.

use consensus::dcs::{ClusterKey, Dcs, Expected, KvDcs};
use consensus::etcd::{EtcdOptions, EtcdStore};
use harness::dcs_suite::{percentile, watch_latencies, SessionFactory, SessionFuture};
use harness::{EtcdCluster, RaftGroup, RaftTimingMs};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Etcd(Vec<String>);

impl SessionFactory for Etcd {
    fn session<'a>(&'a self, name: &'a str, ttl: Duration) -> SessionFuture<'a> {
        Box::pin(async move {
            let store = Arc::new(EtcdStore::connect(&self.0, EtcdOptions::default()).await?);
            Ok(Arc::new(KvDcs::new(store, "/service", "bench", name, ttl)) as Arc<dyn Dcs>)
        })
    }
}

/// A Raft group, the members a client prefers (in order), and the scope.
struct Raft<'g>(&'g RaftGroup, Vec<usize>, &'static str);

impl SessionFactory for Raft<'_> {
    fn session<'a>(&'a self, name: &'a str, ttl: Duration) -> SessionFuture<'a> {
        Box::pin(async move {
            let store = Arc::new(self.0.store_of(&self.1, Default::default())?);
            Ok(Arc::new(KvDcs::new(store, "/service", self.2, name, ttl)) as Arc<dyn Dcs>)
        })
    }
}

struct Figures {
    backend: &'static str,
    cycles_per_sec: f64,
    watch_p50: Duration,
    watch_p99: Duration,
    server_rss_kib: Option<u64>,
}

async fn measure(
    backend: &'static str,
    f: &dyn SessionFactory,
    secs: u64,
    rss_of: Option<i32>,
) -> anyhow::Result<Figures> {
    let leader = f.session("bench-leader", Duration::from_secs(10)).await?;
    leader.acquire_leader().await?;
    let member =
        br#"{"conn_url":"postgres://127.0.0.1:5432/postgres","state":"running","role":"primary","xlog_location":1}"#;
    let start = Instant::now();
    let mut cycles = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        leader.refresh_leader().await?;
        leader.touch_member(member).await?;
        cycles += 1;
    }
    let cycles_per_sec = cycles as f64 / start.elapsed().as_secs_f64();
    leader.write(ClusterKey::Status, b"{}", Expected::Any).await?;
    let lat = watch_latencies(f, 500).await?;
    Ok(Figures {
        backend,
        cycles_per_sec,
        watch_p50: percentile(&lat, 50),
        watch_p99: percentile(&lat, 99),
        server_rss_kib: rss_of.and_then(rss_kib),
    })
}

fn rss_kib(pid: i32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let etcd = EtcdCluster::start(1).await?;
    let pid = etcd.pgids().first().copied();
    let mut rows = vec![measure("etcd 3.4 (1 member)", &Etcd(etcd.endpoints()), secs, pid).await?];
    let etcd3 = EtcdCluster::start(3).await?;
    rows.push(measure("etcd 3.4 (3 members)", &Etcd(etcd3.endpoints()), secs, etcd3.pgids().first().copied()).await?);
    let raft = RaftGroup::start(3, RaftTimingMs::default()).await?;
    let leader = raft.wait_leader(Duration::from_secs(20)).await?;
    // Report the Raft leader's RSS (it does the most work). An agent talks to its own member,
    // which forwards to the leader unless it leads: measure both.
    let raft_pid = raft.pgids().get(leader).copied();
    let (f1, f2) = ((leader + 1) % 3, (leader + 2) % 3);
    rows.push(
        measure("pgha Raft (3, via leader)", &Raft(&raft, vec![leader, f1, f2], "bench-l"), secs, raft_pid).await?,
    );
    rows.push(
        measure("pgha Raft (3, via follower)", &Raft(&raft, vec![f1, f2, leader], "bench-f"), secs, raft_pid).await?,
    );
    println!("DCS benchmark: one member refreshing the leader lock and touching its member key in a loop ({secs} s),");
    println!("then 500 writes timed from acknowledgement to watch event. Loopback, 2 cores.");
    println!("{:<24} {:>16} {:>12} {:>12} {:>16}", "backend", "cycles/s", "watch p50", "watch p99", "server RSS");
    for r in &rows {
        println!(
            "{:<24} {:>16.0} {:>12.2?} {:>12.2?} {:>16}",
            r.backend,
            r.cycles_per_sec,
            r.watch_p50,
            r.watch_p99,
            r.server_rss_kib.map(|k| format!("{:.1} MiB", k as f64 / 1024.0)).unwrap_or_else(|| "-".into())
        );
    }
    println!("server RSS: the etcd member the client talks to; for Raft the Raft leader's pgha dcs-member process");
    Ok(())
}
