//! Real 3-node clusters of `pgha agent` on the built-in Raft DCS (no etcd anywhere): bootstrap
//! from empty data directories, and the loss of the primary's node, which is also a Raft member,
//! while a writer commits a row every 20 ms: the other two elect a Raft leader and fail over.

use harness::cluster::{connect, PghaCluster, Timing};
use harness::process::assert_no_survivors;
use harness::wait_for;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One primary and every other node streaming, then two ticks for the agents to see it.
async fn healthy(cluster: &PghaCluster) -> usize {
    let settled = wait_for("one primary and two streaming replicas", Duration::from_secs(90), || async {
        let mut primary = None;
        let mut streaming = 0;
        let mut seen = Vec::new();
        for (i, n) in cluster.nodes.iter().enumerate() {
            let role = n.role().await;
            match &role {
                Ok((false, _)) => primary = Some(i),
                Ok((true, Some(s))) if s == "streaming" => streaming += 1,
                _ => {}
            }
            seen.push(format!("{}: {:?}", n.name, role.map_err(|e| e.to_string())));
        }
        match primary.filter(|_| streaming == cluster.nodes.len() - 1) {
            Some(p) => Ok(Some(p)),
            None => anyhow::bail!("{}", seen.join("; ")),
        }
    });
    let primary = settled.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    primary
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_on_raft_bootstrap_one_primary_and_two_streaming_replicas() {
    let cluster = PghaCluster::start_on_raft(3, Timing::default()).await.unwrap();
    let primary = healthy(&cluster).await;
    assert_eq!(cluster.primaries().await, vec![primary]);
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap();
    p.batch_execute("create table t(id int primary key); insert into t values (1)").await.unwrap();
    for n in &cluster.nodes {
        let c = connect(&n.dsn()).await.unwrap();
        let seen = wait_for("the row on every node", Duration::from_secs(10), || async {
            Ok(c.query_opt("select id from t", &[]).await.ok().flatten().map(|_| ()))
        });
        seen.await.unwrap();
    }
    let pgids: Vec<i32> = cluster.nodes.iter().flat_map(|n| n.pgids()).collect();
    drop(cluster);
    assert_no_survivors(&pgids, Duration::from_secs(10)).await.unwrap();
}

/// Row ids the writer got acknowledged, with when.
type Acked = Arc<Mutex<Vec<(i64, Instant)>>>;

/// Commits a row every 20 ms to whichever node accepts writes; returns acknowledged ids.
fn start_writer(dsns: Vec<String>, stop: Arc<std::sync::atomic::AtomicBool>) -> (Acked, tokio::task::JoinHandle<()>) {
    let acked = Arc::new(Mutex::new(Vec::new()));
    let out = acked.clone();
    let task = tokio::spawn(async move {
        let mut id = 0i64;
        let mut current: Option<tokio_postgres::Client> = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if current.is_none() {
                for dsn in &dsns {
                    let Ok(c) = connect(dsn).await else { continue };
                    if let Ok(row) = c.query_one("select pg_is_in_recovery()", &[]).await {
                        if !row.get::<_, bool>(0) {
                            current = Some(c);
                            break;
                        }
                    }
                }
            }
            if let Some(c) = &current {
                let next = id + 1;
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&next];
                let insert = c.execute("insert into w(id) values ($1)", &params);
                match tokio::time::timeout(Duration::from_secs(1), insert).await {
                    Ok(Ok(_)) => {
                        id = next;
                        acked.lock().unwrap().push((id, Instant::now()));
                    }
                    _ => current = None,
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    (out, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_and_its_raft_member_promotes_a_replica_and_loses_no_acknowledged_row() {
    let timing = Timing { ttl: 3.0, loop_wait: 0.5, retry_timeout: 1.0 };
    let mut cluster = PghaCluster::start_on_raft(3, timing).await.unwrap();
    let old = healthy(&cluster).await;
    let p = connect(&cluster.nodes[old].dsn()).await.unwrap();
    p.batch_execute("create table w(id bigint primary key)").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (acked, writer) = start_writer(cluster.nodes.iter().map(|n| n.dsn()).collect(), stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;

    cluster.nodes[old].kill_node();
    let killed = Instant::now();
    let new = wait_for("a new primary", Duration::from_secs(60), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let promoted_after = killed.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let longest_gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    let c = connect(&cluster.nodes[new].dsn()).await.unwrap();
    let rows: Vec<i64> = c.query("select id from w order by id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = acked.iter().map(|(id, _)| *id).filter(|id| rows.binary_search(id).is_err()).collect();
    eprintln!(
        "raft node loss (ttl 3, loop_wait 0.5, retry_timeout 1): new primary {} answered {promoted_after:?} after the kill; \
         writer's longest gap {longest_gap:?}; {} rows acknowledged, {} missing",
        cluster.nodes[new].name,
        acked.len(),
        missing.len()
    );
    assert!(acked.last().is_some_and(|(_, at)| *at > killed), "no write was acknowledged after the failover");
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    assert_eq!(cluster.primaries().await, vec![new], "exactly one primary after the failover");

    // The old node (agent and Raft member) comes back on its disk as a replica of the new primary.
    cluster.nodes[old].start_agent().unwrap();
    let back = wait_for("the old primary to stream from the new one", Duration::from_secs(90), || async {
        Ok(match cluster.nodes[old].role().await {
            Ok((true, Some(s))) if s == "streaming" => Some(()),
            _ => None,
        })
    });
    back.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}
