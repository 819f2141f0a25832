//! The agent's acceptance scenarios, each written once and run on both DCS backends
//! (tests/tests/agent_etcd.rs and agent_raft.rs call them with a `Backend`): bootstrap, loss of
//! the primary's node, the primary cut off from the DCS, PostgreSQL killed or hung under a live
//! agent, a replica that never streamed, a graceful stop, health checks and a switchover. Every
//! scenario in which the primary changes ends with the former primary streaming from the new one
//! (rewound when the timelines diverged) and no acknowledged row lost (after a kill -9 or
//! SIGSTOP of the primary: none acknowledged before the last `ASYNC_WINDOW`, see there).

use crate::agent_checks::{
    another_primary, create_writer_table, healthy, rejoined_without_loss, streams_again, OverlapChecker, Rejoin,
    Writer, ASYNC_WINDOW,
};
use crate::cluster::{connect, http, Backend, PghaCluster, Timing};
use crate::process::assert_no_survivors;
use crate::wait::wait_for;
use std::time::{Duration, Instant};

fn report(backend: Backend, scenario: &str, what: String) {
    eprintln!("[{backend:?}] {scenario}: {what}");
}

fn rejoin_summary(r: &Rejoin) -> String {
    let lost = match r.lost_in_window.len() {
        0 => String::new(),
        n => format!(
            "; {n} row(s) acknowledged less than {:?} before the fault lost (asynchronous replication): {:?}",
            ASYNC_WINDOW, r.lost_in_window
        ),
    };
    match &r.rewound {
        Some(line) => format!("rejoined on timeline {} after rewinding ({line}){lost}", r.timeline),
        None => format!("rejoined on timeline {} without pg_rewind{lost}", r.timeline),
    }
}

/// Three agents from empty data directories: one primary, two streaming replicas, data reaches
/// every node, checksums on; nothing survives the cluster's drop.
pub async fn bootstrap(backend: Backend) {
    let cluster = PghaCluster::start_on(backend, 3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    assert_eq!(cluster.primaries().await, vec![primary]);
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    p.batch_execute("create table t(id int primary key); insert into t values (1)").await.unwrap();
    for n in &cluster.nodes {
        let c = connect(&n.dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
        let seen = wait_for("the row on every node", Duration::from_secs(10), || async {
            Ok(c.query_opt("select id from t", &[]).await.ok().flatten().map(|_| ()))
        });
        seen.await.unwrap_or_else(|e| panic!("{e:#}"));
        let sums: String = c.query_one("show data_checksums", &[]).await.unwrap().get(0);
        assert_eq!(sums, "on", "{}", n.name);
    }
    let pgids: Vec<i32> = cluster.nodes.iter().flat_map(|n| n.pgids()).collect();
    drop(cluster);
    assert_no_survivors(&pgids, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e:#}"));
}

/// kill -9 of the primary's agent and PostgreSQL (on Raft also its member) while a writer commits
/// every 20 ms: a replica takes over, no acknowledged row is lost, the old node rejoins.
pub async fn node_loss(backend: Backend, timing: Timing) {
    let scenario = "node loss";
    let mut cluster = PghaCluster::start_on(backend, 3, timing).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    create_writer_table(&cluster, old).await;
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[old].kill_node();
    let killed = Instant::now();
    let new = another_primary(&cluster, old, 60).await;
    let promoted_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    let longest_gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    assert!(acked.last().is_some_and(|(_, at)| *at > killed), "no write was acknowledged after the failover");
    assert_eq!(cluster.primaries().await, vec![new], "exactly one primary after the failover");

    cluster.nodes[old].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    let rejoin = rejoined_without_loss(&cluster, old, new, &acked, "", Some(killed)).await;
    report(
        backend,
        scenario,
        format!(
            "{timing:?}: {} answered writes {promoted_after:?} after the kill; writer's longest gap {longest_gap:?}; \
             {} rows acknowledged, none lost before the last {ASYNC_WINDOW:?}; {} {}",
            cluster.nodes[new].name,
            acked.len(),
            cluster.nodes[old].name,
            rejoin_summary(&rejoin)
        ),
    );
}

/// The primary loses the DCS (etcd: its relay; Raft: its member's links to the other members)
/// while its PostgreSQL stays reachable and a writer commits: it demotes itself before its lease
/// runs out, only then does another node take over, two writable nodes are never seen, and once
/// healed it rejoins as a replica without losing an acknowledged row.
pub async fn primary_cut_off_from_the_dcs(backend: Backend) {
    let scenario = "primary cut off from the DCS";
    let timing = Timing::default();
    let cluster = PghaCluster::start_on(backend, 3, timing).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    create_writer_table(&cluster, old).await;
    let checker = OverlapChecker::start(&cluster);
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log_before = cluster.nodes[old].agent_log();

    cluster.cut_off_from_dcs(old).unwrap_or_else(|e| panic!("{e:#}"));
    let cut = Instant::now();
    let demoted = wait_for("the isolated primary to stop accepting writes", Duration::from_secs(30), || async {
        Ok(match cluster.nodes[old].role().await {
            Ok((false, _)) => None,
            _ => Some(()),
        })
    });
    demoted.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let demoted_after = cut.elapsed();
    let new = another_primary(&cluster, old, 30).await;
    let took_over_after = cut.elapsed();
    assert!(
        demoted_after < Duration::from_secs_f64(timing.ttl),
        "demotion took {demoted_after:?}, longer than the lease\n{}",
        cluster.logs()
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    assert!(
        acked.last().is_some_and(|(_, at)| *at > cut + took_over_after),
        "no write acknowledged by the new primary"
    );

    cluster.reconnect_to_dcs(old);
    let rejoin = rejoined_without_loss(&cluster, old, new, &acked, &log_before, None).await;
    checker.assert_never_overlapped().await;
    report(
        backend,
        scenario,
        format!(
            "{} stopped accepting writes {demoted_after:?} after the cut (ttl {} s); {} took over {took_over_after:?} \
             after the cut; {} rows acknowledged, none lost; {}",
            cluster.nodes[old].name,
            timing.ttl,
            cluster.nodes[new].name,
            acked.len(),
            rejoin_summary(&rejoin)
        ),
    );
}

/// kill -9 of the primary's PostgreSQL only: its agent restarts it in place, nobody fails over,
/// the acknowledged rows are still there and the replicas stream again.
pub async fn postgres_killed_under_a_live_agent(backend: Backend) {
    let cluster = PghaCluster::start_on(backend, 3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    create_writer_table(&cluster, primary).await;
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let old_pid = cluster.nodes[primary].kill_postgres().unwrap_or_else(|e| panic!("{e:#}"));
    let killed = Instant::now();
    let back = wait_for("PostgreSQL to be restarted on the same node", Duration::from_secs(30), || async {
        Ok(match cluster.nodes[primary].role().await {
            Ok((false, _)) if cluster.nodes[primary].postmaster_pid() != Some(old_pid) => Some(()),
            _ => None,
        })
    });
    back.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let back_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    assert_eq!(cluster.primaries().await, vec![primary], "someone failed over");
    assert!(cluster.nodes[primary].agent_log().contains("restarting it in place"), "{}", cluster.logs());
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != primary {
            assert!(!n.agent_log().contains("promoted to primary"), "{} promoted:\n{}", n.name, cluster.logs());
            streams_again(&cluster, i, "the replicas to stream again", 30).await;
        }
    }
    let c = connect(&cluster.nodes[primary].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let rows: Vec<i64> = c.query("select id from w order by id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = acked.iter().map(|(id, _)| *id).filter(|id| rows.binary_search(id).is_err()).collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    assert!(acked.last().is_some_and(|(_, at)| *at > killed + back_after), "no write acknowledged after the restart");
    report(
        backend,
        "PostgreSQL killed",
        format!("restarted in place {back_after:?} after kill -9; {} rows acknowledged, none lost", acked.len()),
    );
}

/// SIGSTOP of every PostgreSQL process of the primary: its agent fences (kills) the hung
/// postmaster, a replica takes over, two writable nodes are never seen, the old node rejoins.
pub async fn hung_primary_postmaster(backend: Backend) {
    let cluster = PghaCluster::start_on(backend, 3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    create_writer_table(&cluster, old).await;
    // Rows are written before the freeze only: with asynchronous replication a row acknowledged in
    // the instant before SIGSTOP may legitimately not have left the primary.
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let checker = OverlapChecker::start(&cluster);
    let log_before = cluster.nodes[old].agent_log();
    let frozen_pid = cluster.nodes[old].freeze_postgres(true).unwrap_or_else(|e| panic!("{e:#}"));
    let frozen_at = Instant::now();
    let new = another_primary(&cluster, old, 60).await;
    let took_over_after = frozen_at.elapsed();
    // The frozen postmaster was killed (fenced), so it can never wake up as a primary.
    let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(frozen_pid), None).is_err();
    assert!(gone || cluster.nodes[old].postmaster_pid() != Some(frozen_pid), "the hung postmaster still exists");
    assert!(cluster.nodes[old].agent_log().contains("stopped answering probes"), "{}", cluster.logs());
    let rejoin = rejoined_without_loss(&cluster, old, new, &acked, &log_before, Some(frozen_at)).await;
    checker.assert_never_overlapped().await;
    report(
        backend,
        "hung postmaster",
        format!("{} took over {took_over_after:?} after SIGSTOP; {}", cluster.nodes[new].name, rejoin_summary(&rejoin)),
    );
}

/// A replica whose agent restarts while the primary's node is gone has never streamed since it
/// started: it must not promote itself (the third node is tagged nofailover). When the old primary
/// comes back, the cluster is whole again.
pub async fn replica_that_never_streamed(backend: Backend) {
    let timing = Timing::default();
    let mut cluster = PghaCluster::start_on(backend, 3, timing).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    let (replica, tagged) = ((primary + 1) % 3, (primary + 2) % 3);
    // The third node keeps a DCS quorum on Raft but may never be promoted.
    cluster.nodes[tagged].stop_agent().await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.nodes[tagged].tag_nofailover();
    cluster.nodes[tagged].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(healthy(&cluster).await, primary);

    // The replica's agent (and PostgreSQL) go down, then the primary's node is lost.
    cluster.nodes[replica].stop_agent().await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.nodes[primary].kill_node();
    // The replica comes back with nobody to stream from: its position is not trusted.
    cluster.nodes[replica].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    let waited = wait_for("both to refuse promotion", Duration::from_secs(30), || async {
        let never_streamed = cluster.nodes[replica].agent_log().contains("never streamed");
        let tagged_refused = cluster.nodes[tagged].agent_log().contains("tagged nofailover");
        Ok((never_streamed && tagged_refused).then_some(()))
    });
    waited.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // Two more lease lengths later nobody has promoted.
    tokio::time::sleep(Duration::from_secs_f64(2.0 * timing.ttl)).await;
    for i in [replica, tagged] {
        let role = cluster.nodes[i].role().await.unwrap_or_else(|e| panic!("{e:#}"));
        assert!(role.0, "{} promoted itself:\n{}", cluster.nodes[i].name, cluster.logs());
        assert!(!cluster.nodes[i].agent_log().contains("promoted to primary"), "{}", cluster.logs());
    }
    // The old primary comes back on its disk: the cluster is whole again (one primary, two
    // streaming replicas; which node leads is up to the race once everyone has streamed).
    cluster.nodes[primary].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    let leader = healthy(&cluster).await;
    report(
        backend,
        "never streamed",
        format!("nobody promoted during 2 x ttl; after the old primary returned, {} leads", cluster.nodes[leader].name),
    );
}

/// SIGTERM of the primary's agent: it stops PostgreSQL and releases the lock, a replica takes over
/// well before the lease would have expired; the old node rejoins when its agent starts again.
pub async fn graceful_stop_of_the_primary_agent(backend: Backend) {
    let timing = Timing::default();
    let mut cluster = PghaCluster::start_on(backend, 3, timing).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    create_writer_table(&cluster, old).await;
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log_before = cluster.nodes[old].agent_log();
    let stopped = Instant::now();
    cluster.nodes[old].stop_agent().await.unwrap_or_else(|e| panic!("{e:#}"));
    let new = another_primary(&cluster, old, 30).await;
    let took = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    assert!(
        took < Duration::from_secs_f64(timing.ttl),
        "took {took:?}: the lock was not released, it expired\n{log_before}\n{}",
        cluster.logs()
    );
    cluster.nodes[old].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    let rejoin = rejoined_without_loss(&cluster, old, new, &acked, "", None).await;
    report(
        backend,
        "graceful stop",
        format!(
            "{} took over {took:?} after SIGTERM of the primary's agent; {} rows acknowledged, none lost; {}",
            cluster.nodes[new].name,
            acked.len(),
            rejoin_summary(&rejoin)
        ),
    );
}

/// The REST health checks follow the roles (what HAProxy sees), and a switchover through the API
/// hands over cleanly: no overlap, no lost row, the old leader streams from the new one.
pub async fn health_checks_and_switchover(backend: Backend) {
    let cluster = PghaCluster::start_on(backend, 3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    for (i, n) in cluster.nodes.iter().enumerate() {
        let (primary, _) = http(n.api_port, "GET", "/primary", None).await.unwrap_or_else(|e| panic!("{e:#}"));
        let (replica, _) = http(n.api_port, "OPTIONS", "/replica", None).await.unwrap_or_else(|e| panic!("{e:#}"));
        let expected = if i == old { (200, 503) } else { (503, 200) };
        assert_eq!((primary, replica), expected, "{}", n.name);
    }
    create_writer_table(&cluster, old).await;
    let candidate = (old + 1) % 3;
    let checker = OverlapChecker::start(&cluster);
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let log_before = cluster.nodes[old].agent_log();
    let body = format!(r#"{{"leader":"{}","candidate":"{}"}}"#, cluster.nodes[old].name, cluster.nodes[candidate].name);
    let started = Instant::now();
    let answer = http(cluster.nodes[old].api_port, "POST", "/switchover", Some(&body)).await;
    let (status, text) = answer.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(status, 200, "{text}\n{}", cluster.logs());
    let answered_after = started.elapsed();
    // Like Patroni, the API answers once the leader key names the candidate; its promotion may
    // still be finishing.
    let promoted = wait_for("the candidate to be the only writable node", Duration::from_secs(10), || async {
        Ok((cluster.primaries().await == vec![candidate]).then_some(()))
    });
    promoted.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let writable_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let acked = writer.stop().await;
    let rejoin = rejoined_without_loss(&cluster, old, candidate, &acked, &log_before, None).await;
    // The old primary's slots for its members went with its role: on a replica an inactive
    // slot would keep its WAL for good.
    let old_dsn = cluster.nodes[old].dsn();
    let slots_gone = wait_for("the old primary's member slots dropped", Duration::from_secs(15), || async {
        let client = connect(&old_dsn).await?;
        let row = client.query_one("select count(*) from pg_replication_slots", &[]).await?;
        Ok((row.get::<_, i64>(0) == 0).then_some(()))
    });
    slots_gone.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let (after, _) =
        http(cluster.nodes[candidate].api_port, "GET", "/primary", None).await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(after, 200);
    checker.assert_never_overlapped().await;
    report(
        backend,
        "switchover",
        format!(
            "answered after {answered_after:?}: {text}; candidate writable after {writable_after:?}; \
             {} rows acknowledged, none lost; {}",
            acked.len(),
            rejoin_summary(&rejoin)
        ),
    );
}

/// PostgreSQL killed on the primary, and its restart made impossible (its port taken): after
/// primary_start_timeout (set to 4 s through PATCH /config) the agent releases the lock and a
/// replica takes over; once the port is free again the old primary rejoins as a replica.
pub async fn primary_that_cannot_restart(backend: Backend) {
    let cluster = PghaCluster::start_on(backend, 3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = healthy(&cluster).await;
    let api = cluster.nodes[old].api_port;
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"primary_start_timeout":4}"#)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    let applied = wait_for("primary_start_timeout 4 s applied on the primary", Duration::from_secs(20), || async {
        Ok(cluster.nodes[old].agent_log().contains("primary_start_timeout=4s").then_some(()))
    });
    applied.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    create_writer_table(&cluster, old).await;
    let writer = Writer::start(&cluster);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = writer.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log_before = cluster.nodes[old].agent_log();
    // The agent is held still while PostgreSQL dies and its port is taken, so that it cannot
    // restart PostgreSQL in between.
    let agent = nix::unistd::Pid::from_raw(cluster.nodes[old].agent_pgid().expect("the agent runs"));
    nix::sys::signal::killpg(agent, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let killed = cluster.nodes[old].kill_postgres();
    let port = cluster.nodes[old].pg_port;
    let mut blocker = None;
    let deadline = Instant::now() + Duration::from_secs(10);
    while blocker.is_none() && Instant::now() < deadline {
        match std::net::TcpListener::bind(("127.0.0.1", port)) {
            Ok(l) => blocker = Some(l),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
    nix::sys::signal::killpg(agent, nix::sys::signal::Signal::SIGCONT).unwrap();
    killed.unwrap_or_else(|e| panic!("{e:#}"));
    let blocker = blocker.unwrap_or_else(|| panic!("port {port} still in use 10 s after kill -9 of PostgreSQL"));
    let down_at = Instant::now();
    let new = another_primary(&cluster, old, 60).await;
    let took_over_after = down_at.elapsed();
    let log = cluster.nodes[old].agent_log();
    assert!(log.contains("restarting it in place"), "no restart was tried:\n{}", cluster.logs());
    assert!(log.contains("did not come back within primary_start_timeout"), "{}", cluster.logs());
    assert!(
        took_over_after >= Duration::from_secs(4),
        "took over after {took_over_after:?}, before primary_start_timeout"
    );
    drop(blocker);
    let rejoin = rejoined_without_loss(&cluster, old, new, &acked, &log_before, None).await;
    report(
        backend,
        "primary cannot restart",
        format!(
            "{} took over {took_over_after:?} after PostgreSQL died unrestartable (primary_start_timeout 4 s); {}",
            cluster.nodes[new].name,
            rejoin_summary(&rejoin)
        ),
    );
}
