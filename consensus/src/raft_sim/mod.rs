//! A seeded simulation of the built-in Raft DCS in one process: 3 or 5 real members (openraft,
//! `KeyspaceStateMachine`, lease task, `MemberApi`) on an in-memory network that loses, delays,
//! reorders and partitions messages, with members crashing and restarting from their durable log
//! and snapshot, while clients write and hold a leased lock. Time is tokio's paused clock, so
//! election timers, RPC timeouts and lease deadlines are virtual and a run takes milliseconds.
//!
//! After the faults stop and the network heals it checks: (1) every acknowledged write is in the
//! final state (a linearizable read through the leader, and every member's key space), ordered as
//! acknowledged; (2) no two clients' ownership of the lock overlap, and no lease ends before its
//! holder's conservative deadline; (3) all members converge to the same key space; (4) no member's
//! applied state ever goes back, across restarts too. A failure prints the seed and the trace tail.
//!
//! `PGHA_SIM_SEED=<n>` replays one seed (its parity picks the group size: even 3, odd 5);
//! `PGHA_SIM_ITERATIONS=<n>` sets the seeds per group size (default 150), `PGHA_SIM_FIRST_SEED`
//! where they start. A seed fixes the fault schedule and the workload; openraft's election jitter
//! (its own thread RNG) and tokio's `select!` order are not seeded, so a replay follows the same
//! script but may interleave differently.

mod cluster;
mod history;
mod log_store;
mod network;
mod trace;
mod workload;

use cluster::SimCluster;
use history::History;
use network::{Faults, Router};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use trace::Trace;
use workload::Client;

/// Virtual time of the workload under faults.
const WORKLOAD: Duration = Duration::from_secs(12);
/// Virtual time allowed, after healing, for a leader to serve and the members to converge.
const SETTLE: Duration = Duration::from_secs(30);
const CLIENTS: usize = 3;

/// What one run did, for the summary line.
#[derive(Debug, Default, Clone, Copy)]
struct RunStats {
    writes: usize,
    reads: usize,
    holds: usize,
    faults: usize,
    messages: u64,
    dropped: u64,
}

/// Runs seed `seed` to completion on a fresh paused-clock runtime.
fn run_seed(seed: u64) -> Result<RunStats, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .map_err(|e| format!("cannot build a runtime: {e}"))?;
    runtime.block_on(simulate(seed))
}

async fn simulate(seed: u64) -> Result<RunStats, String> {
    let n = if seed.is_multiple_of(2) { 3 } else { 5 };
    let mut script = ChaCha8Rng::seed_from_u64(seed);
    let trace = Arc::new(Trace::new(Instant::now()));
    let router = Router::new(ChaCha8Rng::seed_from_u64(script.gen()));
    let fail = |what: String, trace: &Trace| {
        format!("{what}\nseed {seed} ({n} members): rerun with PGHA_SIM_SEED={seed}\ntrace tail:\n{}", trace.tail())
    };
    let mut cluster = SimCluster::start(n, router.clone(), trace.clone()).await.map_err(|e| fail(e, &trace))?;
    let members: Vec<(String, u64)> = cluster.members.iter().map(|m| (m.name.clone(), m.id)).collect();

    let history = Arc::new(Mutex::new(History::default()));
    let stop = Instant::now() + WORKLOAD;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let rng = ChaCha8Rng::seed_from_u64(script.gen());
            let client = Client::new(i, rng, router.clone(), members.clone(), history.clone(), trace.clone());
            tokio::spawn(client.run(stop))
        })
        .collect();

    let faults = inject_faults(&mut cluster, &mut script, &router, &trace, stop).await.map_err(|e| fail(e, &trace))?;

    // Heal: every link, every member, a calm network.
    router.set_cut(BTreeSet::new());
    router.set_faults(Faults::CALM);
    for i in cluster.crashed() {
        cluster.restart(i).await.map_err(|e| fail(e, &trace))?;
    }
    trace.log("healed: no cuts, no losses, every member running");
    let mut problems = Vec::new();
    for client in clients {
        match tokio::time::timeout(SETTLE, client).await {
            Ok(Ok(early_ends)) => problems.extend(early_ends),
            _ => problems.push("a client did not finish its last request".to_string()),
        }
    }
    let settle_by = Instant::now() + SETTLE;
    let final_read = read_everything(&mut script, &router, &members, &trace, settle_by).await;
    let converged = cluster.converge(settle_by).await;

    let history = std::mem::take(&mut *history.lock().unwrap_or_else(|p| p.into_inner()));
    match final_read {
        Some(read) => problems.extend(history::lost_writes(&history, &read)),
        None => problems.push("no linearizable read succeeded after healing".to_string()),
    }
    match converged {
        Ok(last) => problems.extend(history::lost_writes(&history, &last)),
        Err(e) => problems.push(e),
    }
    problems.extend(history::misordered_writes(&history));
    problems.extend(history::stale_reads(&history));
    problems.extend(history::overlapping_owners(&history));
    problems.append(&mut cluster.problems);
    if !problems.is_empty() {
        return Err(fail(problems.join("\n"), &trace));
    }
    let net = router.stats();
    Ok(RunStats {
        writes: history.writes.len(),
        reads: history.reads.len(),
        holds: history.ownerships.iter().filter(|o| o.start < o.end).count(),
        faults,
        messages: net.sent,
        dropped: net.dropped,
    })
}

/// Until `stop`: every so often cuts links, heals, crashes or restarts a member, or changes how
/// lossy and slow the network is; watches check 4 in between. Returns how many faults it caused.
async fn inject_faults(
    cluster: &mut SimCluster,
    rng: &mut ChaCha8Rng,
    router: &Router,
    trace: &Trace,
    stop: Instant,
) -> Result<usize, String> {
    let n = cluster.members.len();
    let ids: Vec<u64> = cluster.members.iter().map(|m| m.id).collect();
    let mut next = Instant::now() + Duration::from_millis(rng.gen_range(300..1500));
    let mut count = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        cluster.observe();
        if Instant::now() < next {
            continue;
        }
        next = Instant::now() + Duration::from_millis(rng.gen_range(200..1500));
        count += 1;
        match rng.gen_range(0..100) {
            0..=29 => {
                // An isolated side: the leader alone, or a random minority.
                let side: BTreeSet<usize> = match cluster.leader() {
                    Some(l) if rng.gen_bool(0.5) => BTreeSet::from([l]),
                    _ => {
                        let size = rng.gen_range(1..=n / 2);
                        let mut all: Vec<usize> = (0..n).collect();
                        (0..size).map(|_| all.swap_remove(rng.gen_range(0..all.len()))).collect()
                    }
                };
                let direction = rng.gen_range(0..5);
                let mut cut = BTreeSet::new();
                for a in &side {
                    for b in (0..n).filter(|b| !side.contains(b)) {
                        if direction != 0 {
                            cut.insert((ids[*a], ids[b]));
                        }
                        if direction != 1 {
                            cut.insert((ids[b], ids[*a]));
                        }
                    }
                }
                let names: Vec<_> = side.iter().map(|i| cluster.members[*i].name.as_str()).collect();
                let how = ["cannot receive from", "cannot send to", "cut off from", "cut off from", "cut off from"];
                trace.log(format_args!("partition: {names:?} {} the others", how[direction]));
                router.set_cut(cut);
            }
            30..=44 => {
                trace.log("partition healed");
                router.set_cut(BTreeSet::new());
            }
            45..=64 => {
                let running = cluster.running();
                // Keep a majority running, so that the group can make progress at all.
                if n - running.len() < (n - 1) / 2 + usize::from(rng.gen_bool(0.1)) {
                    let victim = match cluster.leader() {
                        Some(l) if rng.gen_bool(0.5) => l,
                        _ => running[rng.gen_range(0..running.len())],
                    };
                    cluster.crash(victim).await;
                }
            }
            65..=79 => {
                let crashed = cluster.crashed();
                if !crashed.is_empty() {
                    let i = crashed[rng.gen_range(0..crashed.len())];
                    cluster.restart(i).await?;
                }
            }
            _ => {
                let faults = Faults {
                    drop: [0.0, 0.02, 0.1, 0.3][rng.gen_range(0..4)],
                    max_delay: Duration::from_millis([1, 10, 40][rng.gen_range(0..3)]),
                    slow: [0.0, 0.02, 0.1][rng.gen_range(0..3)],
                    slow_delay: Duration::from_millis(1500),
                };
                trace.log(format_args!("network: {faults:?}"));
                router.set_faults(faults);
            }
        }
    }
    Ok(count)
}

/// The final linearizable read of every key, through whichever member leads; as a key space
/// without leases (leased writes are then checked against the converged key space only).
async fn read_everything(
    rng: &mut ChaCha8Rng,
    router: &Arc<Router>,
    members: &[(String, u64)],
    trace: &Arc<Trace>,
    deadline: Instant,
) -> Option<crate::keyspace::KeyspaceSnapshot> {
    let history = Arc::new(Mutex::new(History::default()));
    let rng = ChaCha8Rng::seed_from_u64(rng.gen());
    let mut reader = Client::new(CLIENTS, rng, router.clone(), members.to_vec(), history, trace.clone());
    while Instant::now() < deadline {
        if let Some(range) = reader.read_all().await {
            trace.log(format_args!("final read at revision {}", range.revision));
            let keys = range.kvs.into_iter().filter(|kv| kv.lease == 0).collect();
            return Some(crate::keyspace::KeyspaceSnapshot {
                format: crate::keyspace::SNAPSHOT_FORMAT,
                revision: range.revision,
                last_lease_id: 0,
                keys,
                leases: vec![],
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    match value.trim().parse() {
        Ok(v) => Some(v),
        Err(_) => panic!("{name}={value:?} is not a number"),
    }
}

/// Runs the seeds of one group size (`parity` 0: 3 members, 1: 5) and fails with the first
/// failing seed's report, naming every failing seed.
fn run_seeds(parity: u64) {
    let seeds: Vec<u64> = match env_u64("PGHA_SIM_SEED") {
        Some(seed) if seed % 2 == parity => vec![seed],
        Some(_) => vec![],
        None => {
            let first = env_u64("PGHA_SIM_FIRST_SEED").unwrap_or(0);
            let count = env_u64("PGHA_SIM_ITERATIONS").unwrap_or(150);
            (0..count).map(|i| (first - first % 2) + 2 * i + parity).collect()
        }
    };
    let started = std::time::Instant::now();
    let mut total = RunStats::default();
    let mut failures = Vec::new();
    for &seed in &seeds {
        match run_seed(seed) {
            Ok(s) => {
                total.writes += s.writes;
                total.reads += s.reads;
                total.holds += s.holds;
                total.faults += s.faults;
                total.messages += s.messages;
                total.dropped += s.dropped;
            }
            Err(report) => failures.push((seed, report)),
        }
    }
    eprintln!(
        "raft simulation: {} seeds of {} members in {:.1?}: {} acknowledged writes, {} reads, {} lock holds, \
         {} faults, {} messages ({} lost); {} failed",
        seeds.len(),
        3 + 2 * parity,
        started.elapsed(),
        total.writes,
        total.reads,
        total.holds,
        total.faults,
        total.messages,
        total.dropped,
        failures.len()
    );
    if let Some((_, report)) = failures.first() {
        let seeds: Vec<u64> = failures.iter().map(|(s, _)| *s).collect();
        panic!("failing seeds: {seeds:?}\nfirst failure:\n{report}");
    }
}

#[test]
fn three_members_under_faults_lose_no_acknowledged_write_and_never_share_the_lock() {
    run_seeds(0);
}

#[test]
fn five_members_under_faults_lose_no_acknowledged_write_and_never_share_the_lock() {
    run_seeds(1);
}
