//! Synchronous mode on a running cluster, on the built-in Raft and on etcd (only the etcd test
//! goes on to lose a second node, which a three-member Raft group would not survive).
//!
//! - After `pgha ctl edit-config --set synchronous_mode=true` the primary names one standby in
//!   synchronous_standby_names and in the `sync` key; `/sync`, `/async` and `pgha ctl list` say
//!   which.
//! - When the primary's node dies under a writer, that standby takes over with every
//!   acknowledged row, although the other one has a higher failover_priority.
//! - The new primary makes the other standby synchronous; when that one dies, writes go on
//!   (synchronous_mode without strict) once the key and the setting have let it go, and with
//!   synchronous_mode_strict they wait.
//! - In strict mode a synchronous standby that takes over with no other standby left never
//!   acknowledges a commit alone.
//! - Three failovers in a row, each under a writer, the old primary rewound and back as a
//!   standby each time: no acknowledged row is lost.

use harness::agent_checks::{another_primary, healthy, streaming_cluster, streams_again};
use harness::cluster::{connect, http, PghaCluster, Timing};
use harness::{run_pgha, wait_for};
use std::time::Duration;

/// The primary's synchronous_standby_names and the standbys pg_stat_replication reports `sync`.
async fn sync_state(cluster: &PghaCluster, primary: usize) -> anyhow::Result<(String, Vec<String>)> {
    let c = connect(&cluster.nodes[primary].dsn()).await?;
    let names: String = c.query_one("show synchronous_standby_names", &[]).await?.try_get(0)?;
    let rows = c.query("select application_name from pg_stat_replication where sync_state = 'sync'", &[]).await?;
    Ok((names, rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?))
}

/// Commits `first`, `first + 1`, ... into `acked` one after another, as fast as the primary
/// acknowledges them, until the connection fails; returns what was acknowledged. (Not the
/// harness's `Writer`, which commits every 20 ms: back to back, far more commits are in flight
/// when the node dies, which is what a lost acknowledged commit needs to show up.)
fn write_until_cut_off(c: tokio_postgres::Client, first: i32) -> tokio::task::JoinHandle<Vec<i32>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for v in first.. {
            match c.execute("insert into acked values ($1)", &[&v]).await {
                Ok(_) => acked.push(v),
                Err(_) => break,
            }
        }
        acked
    })
}

/// Every acknowledged value is in `acked` on the node `c` is connected to.
async fn assert_none_lost(c: &tokio_postgres::Client, acked: &[i32], when: &str) {
    let rows = c.query("select v from acked", &[]).await.unwrap();
    let kept: std::collections::HashSet<i32> = rows.iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i32> = acked.iter().filter(|v| !kept.contains(v)).collect();
    assert!(lost.is_empty(), "acknowledged rows lost in {when}: {lost:?} of {}", acked.len());
}

/// Inserting `v` is still waiting (for a synchronous standby) after 3 s.
async fn assert_commit_waits(c: &tokio_postgres::Client, v: i32, otherwise: &str) {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&v];
    let insert = c.execute("insert into acked values ($1)", &params);
    assert!(tokio::time::timeout(Duration::from_secs(3), insert).await.is_err(), "{otherwise}");
}

/// `PATCH /config` with `body` through `node`'s API.
async fn patch_config(cluster: &PghaCluster, node: usize, body: &str) {
    let (code, text) = http(cluster.nodes[node].api_port, "PATCH", "/config", Some(body)).await.unwrap();
    assert_eq!(code, 200, "PATCH /config {body}: {text}");
}

/// The index of the one node whose `/sync` answers 200, once exactly one does and the primary's
/// setting names it.
async fn the_sync_standby(cluster: &PghaCluster, primary: usize) -> anyhow::Result<usize> {
    wait_for("one synchronous standby, named by the sync key and the primary", Duration::from_secs(40), || async {
        let mut named = Vec::new();
        for (i, n) in cluster.nodes.iter().enumerate().filter(|(_, n)| n.has_agent()) {
            if http(n.api_port, "GET", "/sync", None).await?.0 == 200 {
                named.push(i);
            }
        }
        let (setting, sync) = sync_state(cluster, primary).await?;
        let [s] = named[..] else { anyhow::bail!("/sync answers 200 on {named:?}; setting '{setting}'") };
        let name = &cluster.nodes[s].name;
        anyhow::ensure!(setting.contains(&format!("\"{name}\"")), "setting '{setting}' does not name {name}");
        anyhow::ensure!(sync == [name.clone()], "pg_stat_replication has {sync:?} synchronous, not {name}");
        Ok(Some(s))
    })
    .await
}

/// Synchronous mode on, checked from every side; then the primary's node killed under a writer:
/// the synchronous standby takes over with every acknowledged row and makes the remaining
/// standby synchronous. Returns (new primary, that standby, a connection to the new primary).
async fn fails_over_to_the_synchronous_standby(cluster: &mut PghaCluster) -> (usize, usize, tokio_postgres::Client) {
    let old = healthy(cluster).await;
    let api = format!("http://127.0.0.1:{}", cluster.nodes[old].api_port);
    let ctl = |args: &'static [&'static str]| {
        let api = api.clone();
        async move {
            let mut all = vec!["ctl", "--api", api.as_str()];
            all.extend_from_slice(args);
            let out = run_pgha(&all, Duration::from_secs(60)).await.unwrap();
            assert!(out.status.success(), "pgha {all:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    };
    ctl(&["edit-config", "--set", "synchronous_mode=true"]).await;
    let sync = the_sync_standby(cluster, old).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let other = (0..3).find(|i| *i != old && *i != sync).unwrap();
    let list = ctl(&["list"]).await;
    let line = |i: usize| list.lines().find(|l| l.starts_with(&cluster.nodes[i].name)).unwrap_or_default().to_string();
    assert!(line(sync).contains("Sync Standby"), "{list}");
    assert!(line(other).contains("Replica"), "{list}");
    let (code, _) = http(cluster.nodes[other].api_port, "GET", "/async", None).await.unwrap();
    assert_eq!(code, 200, "the other standby is not asynchronous");
    let (_, text) = http(cluster.nodes[old].api_port, "GET", "/cluster", None).await.unwrap();
    let members: serde_json::Value = serde_json::from_str(&text).unwrap();
    let role_of = |i: usize| {
        members["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["name"] == cluster.nodes[i].name.as_str()).map(|m| m["role"].clone()))
    };
    assert_eq!(role_of(sync), Some("sync_standby".into()), "{text}");
    assert_eq!(role_of(other), Some("replica".into()), "{text}");
    // The primary's /patroni lists its WAL senders as Patroni's does (`replication`).
    let senders =
        wait_for("both standbys in the primary's /patroni replication list", Duration::from_secs(10), || async {
            let (_, text) = http(cluster.nodes[old].api_port, "GET", "/patroni", None).await?;
            let doc: serde_json::Value = serde_json::from_str(&text)?;
            let rows = doc["replication"].as_array().cloned().unwrap_or_default();
            Ok((rows.len() == 2).then_some(rows))
        })
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    for (i, want) in [(sync, "sync"), (other, "async")] {
        let slot: String = cluster.nodes[i]
            .name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' })
            .collect();
        let row = senders
            .iter()
            .find(|r| r["application_name"] == slot.as_str())
            .unwrap_or_else(|| panic!("{slot}: {senders:?}"));
        assert_eq!((row["state"].as_str(), row["sync_state"].as_str()), (Some("streaming"), Some(want)), "{row}");
        assert_eq!(row["client_addr"], "127.0.0.1", "{row}");
        assert!(row["usename"].as_str().is_some_and(|u| !u.is_empty()), "{row}");
    }
    // Patroni's metrics from the probe: start time everywhere, replay on the standbys.
    let metric = |text: &str, name: &str| -> f64 {
        let line =
            text.lines().find(|l| l.starts_with(&format!("{name}{{"))).unwrap_or_else(|| panic!("{name}: {text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let (_, text) = http(cluster.nodes[old].api_port, "GET", "/metrics", None).await.unwrap();
    assert!(metric(&text, "patroni_postmaster_start_time") > 1.7e9, "{text}");
    assert_eq!(metric(&text, "patroni_xlog_replayed_timestamp"), 0.0, "{text}");
    let c = connect(&cluster.nodes[old].dsn()).await.unwrap();
    c.batch_execute("create table if not exists metrics_probe(x int); insert into metrics_probe values (1)")
        .await
        .unwrap();
    let (_, text) = wait_for("a replayed transaction in the standby's metrics", Duration::from_secs(20), || async {
        let (_, text) = http(cluster.nodes[sync].api_port, "GET", "/metrics", None).await?;
        Ok((metric(&text, "patroni_xlog_replayed_timestamp") > 1.7e9).then_some(((), text)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(metric(&text, "patroni_postgres_streaming"), 1.0, "{text}");
    assert_eq!(metric(&text, "patroni_postgres_in_archive_recovery"), 0.0, "{text}");
    assert_eq!(metric(&text, "patroni_xlog_paused"), 0.0, "{text}");
    let (code, text) = http(
        cluster.nodes[old].api_port,
        "POST",
        "/switchover",
        Some(&format!(r#"{{"leader": "{}", "candidate": "{}"}}"#, cluster.nodes[old].name, cluster.nodes[other].name)),
    )
    .await
    .unwrap();
    assert_eq!(code, 412, "a switchover to an asynchronous standby was accepted: {text}");
    assert!(text.contains("sync_standby"), "{text}");

    // The asynchronous standby comes back with a higher failover_priority: without synchronous
    // mode it would win a race between equals.
    cluster.nodes[other].stop_agent().await.unwrap();
    cluster.nodes[other].add_section("[tags]\nfailover_priority = 5");
    cluster.nodes[other].start_agent().unwrap();
    streaming_cluster(cluster, None).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(the_sync_standby(cluster, old).await.unwrap(), sync, "the synchronous standby changed");

    // Every commit acknowledged with synchronous replication on is on the synchronous standby:
    // a writer commits one row after another while the primary's node is killed.
    let c = connect(&cluster.nodes[old].dsn()).await.unwrap();
    c.batch_execute("create table acked (v int); insert into acked values (1)").await.unwrap();
    let writer = write_until_cut_off(c, 2);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cluster.nodes[old].kill_node();
    let mut acked = tokio::time::timeout(Duration::from_secs(30), writer).await.expect("the writer hung").unwrap();
    assert!(acked.len() > 10, "the writer committed only {} rows", acked.len());
    acked.push(1);
    let new = wait_for("a new primary", Duration::from_secs(60), || async {
        let p = cluster.primaries().await;
        Ok((p.len() == 1).then(|| p[0]))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(new, sync, "{} took over, not the synchronous standby\n{}", cluster.nodes[new].name, cluster.logs());
    assert!(
        cluster.nodes[other].agent_log().contains("synchronous mode is on and only"),
        "the asynchronous standby did not say why it stayed out of the race\n{}",
        cluster.nodes[other].agent_log()
    );
    let c = connect(&cluster.nodes[new].dsn()).await.unwrap();
    assert_none_lost(&c, &acked, "the failover").await;
    eprintln!("{} rows acknowledged before the kill, all on the new primary", acked.len());

    // The new primary makes the remaining standby synchronous.
    let s = the_sync_standby(cluster, new).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(s, other);
    (new, other, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_synchronous_mode_fails_over_to_the_synchronous_standby_only() {
    let mut cluster = PghaCluster::start_on_raft(3, Timing::default()).await.unwrap();
    fails_over_to_the_synchronous_standby(&mut cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_synchronous_mode_fails_over_to_the_synchronous_standby_only() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let (new, other, c) = fails_over_to_the_synchronous_standby(&mut cluster).await;

    // Its only standby lost: the key and the setting let it go, and writes go on.
    cluster.nodes[other].kill_node();
    wait_for("synchronous_standby_names to be emptied", Duration::from_secs(30), || async {
        Ok(sync_state(&cluster, new).await?.0.is_empty().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let insert = c.execute("insert into acked values (2)", &[]);
    tokio::time::timeout(Duration::from_secs(5), insert)
        .await
        .expect("a write waited for a standby that is gone")
        .unwrap();

    // synchronous_mode_strict: without a standby, commits wait for one.
    patch_config(&cluster, new, r#"{"synchronous_mode_strict": true}"#).await;
    wait_for("synchronous_standby_names = '*'", Duration::from_secs(30), || async {
        Ok((sync_state(&cluster, new).await?.0 == "*").then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_commit_waits(&c, 3, "a commit went through without a standby in strict synchronous mode").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_strict_synchronous_mode_takes_over_without_acknowledging_alone() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await;
    patch_config(&cluster, old, r#"{"synchronous_mode": true, "synchronous_mode_strict": true}"#).await;
    let sync = the_sync_standby(&cluster, old).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let other = (0..3).find(|i| *i != old && *i != sync).unwrap();
    cluster.nodes[other].kill_node();
    let c = connect(&cluster.nodes[old].dsn()).await.unwrap();
    c.batch_execute("create table acked (v int); insert into acked values (1)").await.unwrap();
    cluster.nodes[old].kill_node();
    wait_for("the synchronous standby to take over", Duration::from_secs(60), || async {
        Ok((cluster.primaries().await == [sync]).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let log = cluster.nodes[sync].agent_log();
    assert!(log.contains("synchronous_standby_names = '*' before promoting"), "{log}");
    let c = connect(&cluster.nodes[sync].dsn()).await.unwrap();
    let n: i64 = c.query_one("select count(*) from acked", &[]).await.unwrap().get(0);
    assert_eq!(n, 1);
    assert_commit_waits(&c, 2, "the new primary acknowledged a commit without a standby in strict synchronous mode")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_synchronous_mode_loses_no_acknowledged_row_over_three_failovers() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let mut primary = healthy(&cluster).await;
    patch_config(&cluster, primary, r#"{"synchronous_mode": true}"#).await;
    let c = connect(&cluster.nodes[primary].dsn()).await.unwrap();
    c.batch_execute("create table acked (v int)").await.unwrap();
    let mut acked_all: Vec<i32> = Vec::new();
    for round in 0..3 {
        let sync = the_sync_standby(&cluster, primary).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
        // A writer on the primary, its node killed under it.
        let c = connect(&cluster.nodes[primary].dsn()).await.unwrap();
        let first = 1 + round * 10_000_000;
        let writer = write_until_cut_off(c, first);
        tokio::time::sleep(Duration::from_millis(1000)).await;
        cluster.nodes[primary].kill_node();
        let acked = tokio::time::timeout(Duration::from_secs(30), writer).await.expect("the writer hung").unwrap();
        assert!(!acked.is_empty(), "round {round}: the writer committed nothing");
        acked_all.extend(acked);
        let new = another_primary(&cluster, primary, 60).await;
        assert_eq!(new, sync, "round {round}: not the synchronous standby took over\n{}", cluster.logs());
        let c = connect(&cluster.nodes[new].dsn()).await.unwrap();
        assert_none_lost(&c, &acked_all, &format!("failover {}", round + 1)).await;
        eprintln!("round {round}: {} acknowledged rows so far, all on {}", acked_all.len(), cluster.nodes[new].name);
        // The old primary comes back (rewound) and follows.
        cluster.nodes[primary].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
        streams_again(&cluster, primary, "the old primary to stream again", 90).await;
        primary = new;
    }
}
