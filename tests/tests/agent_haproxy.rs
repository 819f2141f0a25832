//! HAProxy configured as Patroni's docs show (GET /primary and GET /replica checks on the agents'
//! REST API) in front of a real 3-node pgha cluster on etcd: writes through its primary port reach
//! the new primary after the primary's node is lost, its replica port serves only replicas, and
//! the old primary is served as a replica again once it rejoins.

use harness::agent_checks::healthy;
use harness::cluster::{connect, PghaCluster, Timing, SUPERUSER_PASSWORD};
use harness::haproxy::{haproxy_bin, Backend, HaProxy};
use harness::wait_for;
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres password={SUPERUSER_PASSWORD} dbname=postgres connect_timeout=2")
}

/// Through HAProxy port `port`: (in recovery, the PostgreSQL port that answered).
async fn session(port: u16) -> anyhow::Result<(bool, u16)> {
    let c = connect(&dsn(port)).await?;
    let row = tokio::time::timeout(
        Duration::from_secs(2),
        c.query_one("select pg_is_in_recovery(), inet_server_port()", &[]),
    )
    .await??;
    Ok((row.try_get(0)?, row.try_get::<_, i32>(1)? as u16))
}

/// Connects through the replica port until every port in `expected` has answered, and fails if
/// any session there is writable or lands elsewhere.
async fn replicas_served(haproxy: &HaProxy, expected: &BTreeSet<u16>, what: &str) {
    let seen = std::sync::Mutex::new(BTreeSet::new());
    let served = wait_for(what, Duration::from_secs(30), || async {
        let (in_recovery, port) = session(haproxy.replica_port).await?;
        // A wrong session is a routing failure, not something to wait out.
        assert!(in_recovery, "the replica port served a writable session on port {port}");
        assert!(expected.contains(&port), "the replica port served port {port}, not one of {expected:?}");
        let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
        seen.insert(port);
        Ok((seen.len() == expected.len()).then_some(()))
    });
    served.await.unwrap_or_else(|e| panic!("{e}\nhaproxy log:\n{}", haproxy.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_with_patroni_style_checks_routes_writes_to_the_new_primary_after_node_loss() {
    if haproxy_bin().is_none() {
        eprintln!("SKIPPED: haproxy is not installed (apt-get install -y haproxy, or scripts/setup-deps)");
        return;
    }
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await;
    let backends: Vec<Backend> = cluster
        .nodes
        .iter()
        .map(|n| Backend { name: n.name.clone(), pg_port: n.pg_port, api_port: n.api_port })
        .collect();
    let haproxy = HaProxy::start(&backends).await.unwrap();
    let ports: Vec<u16> = cluster.nodes.iter().map(|n| n.pg_port).collect();
    let port_of = |i: usize| ports[i];
    // HAProxy starts with every server up and marks one down after two failed checks (fall 2,
    // inter 1 s): routing is only meaningful once the first checks have judged every server.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Before the fault: the primary port reaches the primary, the replica port both replicas.
    let reached = wait_for("the primary port to reach the primary", Duration::from_secs(15), || async {
        Ok(session(haproxy.primary_port).await.ok().filter(|&(rec, port)| !rec && port == port_of(old)))
    });
    reached.await.unwrap_or_else(|e| panic!("{e}\nhaproxy log:\n{}", haproxy.log()));
    let replicas: BTreeSet<u16> = (0..3).filter(|&i| i != old).map(port_of).collect();
    replicas_served(&haproxy, &replicas, "both replicas behind the replica port").await;

    // For the whole test, no session through the primary port may be read-only.
    let stop = Arc::new(AtomicBool::new(false));
    let primary_port = haproxy.primary_port;
    let checker = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut wrong = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok((true, port)) = session(primary_port).await {
                    wrong.push(port);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            wrong
        })
    };

    let writer = connect(&dsn(haproxy.primary_port)).await.unwrap();
    writer.batch_execute("create table routed(id int primary key, port int)").await.unwrap();
    // Replication is asynchronous: without this the table may die with the node.
    cluster.wait_replicated(old, Duration::from_secs(30)).await.unwrap();
    cluster.nodes[old].kill_node();
    let killed = Instant::now();
    let new = wait_for("another primary", Duration::from_secs(60), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // A write through the primary port lands on the new primary.
    let written = wait_for("a write through the primary port", Duration::from_secs(30), || async {
        let c = connect(&dsn(haproxy.primary_port)).await?;
        let row = c.query_one("insert into routed values (1, inet_server_port()) returning port", &[]).await?;
        Ok(Some(row.try_get::<_, i32>(0)? as u16))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\nhaproxy log:\n{}\n{}", haproxy.log(), cluster.logs()));
    eprintln!(
        "haproxy: first write through the primary port {:?} after the kill, on {}",
        killed.elapsed(),
        cluster.nodes[new].name
    );
    assert_eq!(written, port_of(new), "the write went to port {written}, not the new primary");

    // Once HAProxy has seen the promotion (fall 2 x inter 1 s), the replica port serves only the
    // remaining replica.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let survivor: BTreeSet<u16> = (0..3).filter(|&i| i != old && i != new).map(port_of).collect();
    replicas_served(&haproxy, &survivor, "the surviving replica behind the replica port").await;
    for _ in 0..10 {
        let (rec, port) = session(haproxy.replica_port).await.unwrap();
        assert!(rec && survivor.contains(&port), "replica port served port {port} (in recovery: {rec})");
    }

    // The old primary rejoins as a replica and is served by the replica port again.
    cluster.nodes[old].start_agent().unwrap();
    let rejoined = wait_for("the old primary to stream again", Duration::from_secs(90), || async {
        Ok(match cluster.nodes[old].role().await {
            Ok((true, Some(s))) if s == "streaming" => Some(()),
            _ => None,
        })
    });
    rejoined.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let both: BTreeSet<u16> = (0..3).filter(|&i| i != new).map(port_of).collect();
    replicas_served(&haproxy, &both, "both replicas (the old primary rejoined) behind the replica port").await;
    let (rec, port) = session(haproxy.primary_port).await.unwrap();
    assert!(!rec && port == port_of(new), "after the rejoin the primary port reached port {port}");

    stop.store(true, Ordering::Relaxed);
    let wrong = checker.await.unwrap();
    assert!(wrong.is_empty(), "the primary port served read-only sessions on ports {wrong:?}");
}
