//! The harness proves itself on real processes: parallel PostgreSQL instances with a streaming
//! standby, etcd clusters, the fault relay, and no process surviving a test, even a panicking one.

use harness::process::assert_no_survivors;
use harness::{wait_for, Direction, EtcdCluster, FaultRelay, PgInstance, PgOptions, StopMode};
use std::time::{Duration, Instant};
use tokio_postgres::NoTls;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_in_parallel_with_a_streaming_standby_that_sees_new_rows_within_5s() {
    let start_primary = async {
        let mut pg = PgInstance::init("primary", PgOptions::default()).await?;
        pg.start().await?;
        anyhow::Ok(pg)
    };
    let start_other = async {
        let mut pg = PgInstance::init("other", PgOptions::default().param("work_mem", "'8MB'")).await?;
        pg.start().await?;
        anyhow::Ok(pg)
    };
    let (primary, mut other) = tokio::try_join!(start_primary, start_other).unwrap();
    let mut standby = PgInstance::standby_of(&primary, "standby1").await.unwrap();
    standby.start().await.unwrap();
    let pgids: Vec<i32> = [&primary, &standby, &other].iter().filter_map(|p| p.pgid()).collect();
    assert_eq!(pgids.len(), 3);

    // Data checksums are on, and the chosen parameter reached the instance.
    assert_eq!(primary.sql_value("show data_checksums").await.unwrap().as_deref(), Some("on"));
    assert_eq!(other.sql_value("show work_mem").await.unwrap().as_deref(), Some("8MB"));
    assert_eq!(standby.sql_value("select pg_is_in_recovery()").await.unwrap().as_deref(), Some("t"));

    let status = wait_for("the standby's WAL receiver to stream", Duration::from_secs(10), || async {
        let s = standby.sql_value("select status from pg_stat_wal_receiver").await?;
        Ok(s.filter(|s| s == "streaming"))
    })
    .await
    .unwrap();
    assert_eq!(status, "streaming");
    let app = primary.sql_value("select application_name from pg_stat_replication").await.unwrap();
    assert_eq!(app.as_deref(), Some("standby1"));

    primary.sql("create table t(id int primary key, note text); insert into t values (1, 'hello')").await.unwrap();
    let written = Instant::now();
    let seen = wait_for("row 1 on the standby", Duration::from_secs(5), || async {
        Ok(standby.sql_value("select note from t where id = 1").await.ok().flatten())
    })
    .await
    .unwrap();
    assert_eq!(seen, "hello");
    eprintln!("row visible on the standby {:?} after the commit on the primary", written.elapsed());

    // The independent instance does not see it.
    assert!(other.sql("select * from t").await.is_err());
    other.stop(StopMode::Fast).await.unwrap();

    drop((primary, standby, other));
    assert_no_survivors(&pgids, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_and_killed_instances_restart_and_a_frozen_one_stops_answering() {
    let mut pg = PgInstance::init("lifecycle", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    pg.sql("create table k(v int); insert into k values (42)").await.unwrap();

    let postmaster = pg.pgid().unwrap();
    let children = harness::process::children_of(postmaster);
    assert!(children.len() >= 4, "checkpointer, writers, launcher: {children:?}");
    pg.kill9();
    // Its children too (they leave the postmaster's process group): none is left attached to
    // the shared memory the restart below creates again.
    let alive: Vec<i32> = children
        .iter()
        .copied()
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z ")))
        .collect();
    assert!(alive.is_empty(), "children of the killed postmaster still running: {alive:?}");
    assert!(pg.connect().await.is_err(), "a killed instance must refuse connections");
    pg.start().await.unwrap(); // crash recovery
    assert_eq!(pg.sql_value("select v from k").await.unwrap().as_deref(), Some("42"));

    pg.sigstop().unwrap();
    let frozen = tokio::time::timeout(Duration::from_secs(1), pg.sql_value("select 1")).await;
    assert!(frozen.is_err(), "a SIGSTOPped postmaster must not answer: {frozen:?}");
    pg.sigcont().unwrap();
    let thawed = wait_for("the thawed instance to answer", Duration::from_secs(10), || async {
        Ok(pg.sql_value("select 1").await.ok().flatten())
    });
    assert_eq!(thawed.await.unwrap(), "1");

    pg.stop(StopMode::Smart).await.unwrap();
    pg.start().await.unwrap();
    assert_eq!(pg.sql_value("select v from k").await.unwrap().as_deref(), Some("42"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_single_member_and_three_member_cluster_answer_endpoint_health() {
    let single = EtcdCluster::start(1).await.unwrap();
    assert!(single.endpoint_health(0).await.unwrap().contains("is healthy"));

    let mut cluster = EtcdCluster::start(3).await.unwrap();
    for i in 0..3 {
        let out = cluster.endpoint_health(i).await.unwrap();
        assert!(out.contains(&cluster.members()[i].client_url()), "{out}");
    }
    // A killed member is unhealthy; restarted on its own data it rejoins.
    cluster.kill(1);
    assert!(cluster.endpoint_health(1).await.is_err());
    cluster.restart(1).await.unwrap();
    assert!(cluster.endpoint_health(1).await.unwrap().contains("is healthy"));

    let pgids: Vec<i32> = cluster.pgids().into_iter().chain(single.pgids()).collect();
    assert_eq!(pgids.len(), 4);
    drop((single, cluster));
    assert_no_survivors(&pgids, Duration::from_secs(5)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_cuts_live_connections_and_refuses_new_ones_while_partitioned_then_heals() {
    let mut pg = PgInstance::init("relayed", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let relay = FaultRelay::start(([127, 0, 0, 1], pg.port()).into()).await.unwrap();
    let dsn = format!(
        "host=127.0.0.1 port={} user=postgres password={} dbname=postgres connect_timeout=2",
        relay.port(),
        pg.password()
    );
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(&dsn, NoTls).await?;
        tokio::spawn(conn);
        anyhow::Ok(client)
    };

    let live = connect().await.unwrap();
    assert_eq!(live.simple_query("select 1").await.unwrap().len(), 3); // row, command complete, ...
    relay.partition();
    let cut = tokio::time::timeout(Duration::from_secs(5), live.simple_query("select 1")).await;
    assert!(matches!(cut, Ok(Err(_))), "the live connection must be cut, got {cut:?}");
    let refused = tokio::time::timeout(Duration::from_secs(5), connect()).await;
    assert!(matches!(refused, Ok(Err(_))), "a new connection must be refused while partitioned");

    relay.heal();
    let healed = connect().await.unwrap();
    assert!(!healed.simple_query("select 1").await.unwrap().is_empty());

    // One-way blackhole: the query goes out but no answer comes back.
    relay.blackhole(Direction::Downstream, true);
    let silent = tokio::time::timeout(Duration::from_millis(700), healed.simple_query("select 1")).await;
    assert!(silent.is_err(), "a blackholed answer must never arrive: {silent:?}");
    relay.blackhole(Direction::Downstream, false);

    // Delay: each forwarded chunk waits, so a round trip takes at least twice the delay.
    relay.set_delay(Duration::from_millis(150));
    let slow = connect().await.unwrap();
    let t = Instant::now();
    slow.simple_query("select 1").await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300), "round trip took only {:?}", t.elapsed());
    relay.set_delay(Duration::ZERO);
}

/// Run by `a_panicking_test_leaves_no_process_behind` in a child process; never on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "spawned by a_panicking_test_leaves_no_process_behind"]
async fn panicking_cluster_inner() {
    let Some(report) = std::env::var_os("PGHA_PANIC_REPORT") else { return };
    let mut pg = PgInstance::init("panicky", PgOptions::default()).await.unwrap();
    pg.start().await.unwrap();
    let etcd = EtcdCluster::start(1).await.unwrap();
    let mut pgids: Vec<i32> = etcd.pgids();
    pgids.extend(pg.pgid());
    let dir = pg.data_dir();
    let lines = format!("{}\n{}\n", dir.display(), pgids.iter().map(i32::to_string).collect::<Vec<_>>().join(" "));
    std::fs::write(report, lines).unwrap();
    panic!("deliberate panic with PostgreSQL and etcd running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_process_behind() {
    let report = tempfile::NamedTempFile::new().unwrap();
    let out = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["panicking_cluster_inner", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PGHA_PANIC_REPORT", report.path())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), out).await.unwrap().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the inner test must fail");
    assert!(stderr.contains("deliberate panic"), "inner test did not reach its panic:\n{stderr}");
    // The harness printed the failing instance's log.
    assert!(stderr.contains("----- postgres panicky log"), "no log printed on panic:\n{stderr}");

    let text = std::fs::read_to_string(report.path()).unwrap();
    let mut lines = text.lines();
    let data_dir = lines.next().unwrap().to_string();
    let pgids: Vec<i32> = lines.next().unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    assert_eq!(pgids.len(), 2, "expected etcd and postgres process groups: {text}");
    assert_no_survivors(&pgids, Duration::from_secs(5)).await.unwrap();
    assert!(!std::path::Path::new(&data_dir).exists(), "{data_dir} was not removed");
}
