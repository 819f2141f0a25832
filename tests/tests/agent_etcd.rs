//! Real 3-node clusters of `pgha agent` on etcd: bootstrap from empty data directories, and the
//! loss of the primary's node while a writer commits a row every 20 ms.

use harness::cluster::{connect, PghaCluster, Timing};
use harness::process::assert_no_survivors;
use harness::wait_for;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Waits until node `i` streams from a primary (as a replica), failing with every agent's log.
async fn streams_again(cluster: &PghaCluster, i: usize, what: &str, secs: u64) {
    let streaming = wait_for(what, Duration::from_secs(secs), || async {
        Ok(match cluster.nodes[i].role().await {
            Ok((true, Some(s))) if s == "streaming" => Some(()),
            _ => None,
        })
    });
    streaming.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
}

/// Waits for one primary and all others streaming, then gives the agents two ticks to see it
/// (an agent trusts a replica for promotion only once it has observed it streaming).
async fn healthy(cluster: &PghaCluster) -> anyhow::Result<usize> {
    let primary = streaming_cluster(cluster).await?;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    Ok(primary)
}

async fn streaming_cluster(cluster: &PghaCluster) -> anyhow::Result<usize> {
    wait_for("one primary and two streaming replicas", Duration::from_secs(90), || async {
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
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_bootstrap_one_primary_and_two_streaming_replicas() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let primary = match healthy(&cluster).await {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", cluster.logs()),
    };
    assert_eq!(cluster.primaries().await, vec![primary]);
    // Data written on the primary reaches both replicas; every node has data checksums on.
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap();
    p.batch_execute("create table t(id int primary key); insert into t values (1)").await.unwrap();
    for n in &cluster.nodes {
        let c = connect(&n.dsn()).await.unwrap();
        let seen = wait_for("the row on every node", Duration::from_secs(10), || async {
            Ok(c.query_opt("select id from t", &[]).await.ok().flatten().map(|_| ()))
        });
        seen.await.unwrap();
        let sums: String = c.query_one("show data_checksums", &[]).await.unwrap().get(0);
        assert_eq!(sums, "on");
    }
    let pgids: Vec<i32> = cluster.nodes.iter().flat_map(|n| n.pgids()).collect();
    drop(cluster);
    assert_no_survivors(&pgids, Duration::from_secs(10)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_promotes_a_replica_and_loses_no_acknowledged_row() {
    node_loss(Timing::default(), "defaults (ttl 6, loop_wait 1, retry_timeout 2)").await;
}

/// The fast profile of docs/configuration.md.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_with_the_fast_profile_promotes_a_replica_and_loses_no_acknowledged_row() {
    node_loss(
        Timing { ttl: 3.0, loop_wait: 0.5, retry_timeout: 1.0 },
        "fast profile (ttl 3, loop_wait 0.5, retry_timeout 1)",
    )
    .await;
}

async fn node_loss(timing: Timing, profile: &str) {
    let mut cluster = PghaCluster::start_on_etcd(3, timing).await.unwrap();
    let old = match healthy(&cluster).await {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", cluster.logs()),
    };
    connect(&cluster.nodes[old].dsn())
        .await
        .unwrap()
        .batch_execute("create table w(id bigint primary key, at timestamptz default now())")
        .await
        .unwrap();
    // Let the table reach the replicas before the writer starts.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The writer commits a row every 20 ms to whichever node accepts writes.
    let dsns: Vec<String> = cluster.nodes.iter().map(|n| n.dsn()).collect();
    let acked = Arc::new(Mutex::new(Vec::<(i64, Instant)>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        tokio::spawn(async move {
            let mut id = 0i64;
            let mut current: Option<tokio_postgres::Client> = None;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if current.is_none() {
                    for dsn in &dsns {
                        if let Ok(c) = connect(dsn).await {
                            if let Ok(row) = c.query_one("select pg_is_in_recovery()", &[]).await {
                                if !row.get::<_, bool>(0) {
                                    current = Some(c);
                                    break;
                                }
                            }
                        }
                    }
                }
                if let Some(c) = &current {
                    let next = id + 1;
                    match tokio::time::timeout(
                        Duration::from_secs(1),
                        c.execute("insert into w(id) values ($1)", &[&next]),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            id = next;
                            if let Ok(mut a) = acked.lock() {
                                a.push((id, Instant::now()));
                            }
                        }
                        _ => current = None,
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.nodes[old].kill_node();
    let killed = Instant::now();
    let new = wait_for("a new primary", Duration::from_secs(60), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let promoted_after = killed.elapsed();
    // Keep writing on the new primary for a moment.
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.unwrap();

    let acked = acked.lock().unwrap().clone();
    let longest_gap = acked.windows(2).map(|w| w[1].1 - w[0].1).max().unwrap_or_default();
    let c = connect(&cluster.nodes[new].dsn()).await.unwrap();
    let rows: Vec<i64> = c.query("select id from w order by id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let missing: Vec<i64> = acked.iter().map(|(id, _)| *id).filter(|id| rows.binary_search(id).is_err()).collect();
    eprintln!(
        "node loss, {profile}: new primary {} answered {promoted_after:?} after the kill; writer's longest gap {longest_gap:?}; \
         {} rows acknowledged, {} missing",
        cluster.nodes[new].name,
        acked.len(),
        missing.len()
    );
    assert!(acked.last().is_some_and(|(_, at)| *at > killed), "no write was acknowledged after the failover");
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    assert_eq!(cluster.primaries().await, vec![new], "exactly one primary after the failover");

    // The old node comes back as a replica of the new primary.
    cluster.nodes[old].start_agent().unwrap();
    streams_again(&cluster, old, "the old primary to stream from the new one", 90).await;
}

/// Polls every node every 50 ms and records any sample where two nodes accept writes.
fn start_split_brain_checker(
    cluster: &PghaCluster,
) -> (Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<Vec<String>>) {
    let dsns: Vec<(String, String)> = cluster.nodes.iter().map(|n| (n.name.clone(), n.dsn())).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let handle = tokio::spawn(async move {
        let mut clients: Vec<Option<tokio_postgres::Client>> = dsns.iter().map(|_| None).collect();
        let mut overlaps = Vec::new();
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            let mut writable = Vec::new();
            for (i, (name, dsn)) in dsns.iter().enumerate() {
                if clients[i].is_none() {
                    clients[i] =
                        tokio::time::timeout(Duration::from_millis(300), connect(dsn)).await.ok().and_then(Result::ok);
                }
                let Some(c) = &clients[i] else { continue };
                match tokio::time::timeout(Duration::from_millis(300), c.query_one("select pg_is_in_recovery()", &[]))
                    .await
                {
                    Ok(Ok(row)) if !row.get::<_, bool>(0) => writable.push(name.clone()),
                    Ok(Ok(_)) => {}
                    _ => clients[i] = None,
                }
            }
            if writable.len() > 1 {
                overlaps.push(format!("{:?} at {:?}", writable, Instant::now()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        overlaps
    });
    (stop, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_off_from_the_dcs_demotes_itself_and_never_overlaps_with_the_new_primary() {
    let cluster = PghaCluster::start_on_etcd_with_relays(3, Timing::default()).await.unwrap();
    let old = match healthy(&cluster).await {
        Ok(p) => p,
        Err(e) => panic!("{e}\n{}", cluster.logs()),
    };
    let (stop, checker) = start_split_brain_checker(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;

    let relay = cluster.nodes[old].dcs_relay.as_ref().expect("started with relays");
    relay.partition();
    let cut = Instant::now();
    // The isolated primary stops accepting writes on its own...
    let demoted = wait_for("the isolated primary to demote itself", Duration::from_secs(30), || async {
        Ok(match cluster.nodes[old].role().await {
            Ok((false, _)) => None,
            _ => Some(()),
        })
    });
    demoted.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let demoted_after = cut.elapsed();
    // ...and only then may another node take over.
    let new = wait_for("another primary", Duration::from_secs(30), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!(
        "partition: {} stopped accepting writes {demoted_after:?} after the cut (ttl 6 s); {} took over {:?} after the cut",
        cluster.nodes[old].name,
        cluster.nodes[new].name,
        cut.elapsed()
    );
    assert!(demoted_after < Duration::from_secs(6), "demotion took longer than the lease");

    // Healed, the old primary rejoins as a replica of the new one.
    relay.heal();
    streams_again(&cluster, old, "the old primary to stream from the new one", 60).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let overlaps = checker.await.unwrap();
    assert!(overlaps.is_empty(), "two writable primaries at once: {overlaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_a_live_agent_is_restarted_in_place_without_failover() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let primary = healthy(&cluster).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let old_pid = cluster.nodes[primary].kill_postgres().unwrap();
    let back = wait_for("PostgreSQL to be restarted on the same node", Duration::from_secs(30), || async {
        Ok(match cluster.nodes[primary].role().await {
            Ok((false, _)) if cluster.nodes[primary].postmaster_pid() != Some(old_pid) => Some(()),
            _ => None,
        })
    });
    back.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // Still the only primary: nobody failed over.
    assert_eq!(cluster.primaries().await, vec![primary]);
    assert!(cluster.nodes[primary].agent_log().contains("restarting it in place"), "{}", cluster.logs());
    for (i, n) in cluster.nodes.iter().enumerate() {
        if i != primary {
            assert!(!n.agent_log().contains("promoted to primary"), "{} promoted:\n{}", n.name, cluster.logs());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_postmaster_is_fenced_and_a_replica_takes_over() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let (stop, checker) = start_split_brain_checker(&cluster);
    let frozen_pid = cluster.nodes[old].freeze_postgres(true).unwrap();
    let frozen_at = Instant::now();
    let new = wait_for("another primary", Duration::from_secs(60), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!("hung postmaster: {} took over {:?} after SIGSTOP", cluster.nodes[new].name, frozen_at.elapsed());
    // The frozen postmaster was killed (fenced), so it can never wake up as a primary.
    let gone = nix::sys::signal::kill(nix::unistd::Pid::from_raw(frozen_pid), None).is_err();
    assert!(gone || cluster.nodes[old].postmaster_pid() != Some(frozen_pid), "the hung postmaster still exists");
    assert!(cluster.nodes[old].agent_log().contains("stopped answering probes"), "{}", cluster.logs());
    streams_again(&cluster, old, "the fenced node to stream from the new primary", 60).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let overlaps = checker.await.unwrap();
    assert!(overlaps.is_empty(), "two writable primaries at once: {overlaps:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_streamed_is_not_promoted_when_the_primary_dies() {
    let mut cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap();
    let primary = healthy(&cluster).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let replica = 1 - primary;
    // The replica's agent (and PostgreSQL) go down, then the primary's node is lost.
    cluster.nodes[replica].stop_agent().await.unwrap();
    cluster.nodes[primary].kill_node();
    // The replica comes back with nobody to stream from: its position is not trusted.
    cluster.nodes[replica].start_agent().unwrap();
    let waited = wait_for("the replica to refuse promotion", Duration::from_secs(30), || async {
        Ok(cluster.nodes[replica].agent_log().contains("never streamed").then_some(()))
    });
    waited.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // Two more lease lengths later it is still a replica.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let role = cluster.nodes[replica].role().await.unwrap();
    assert!(role.0, "the replica promoted itself without having streamed:\n{}", cluster.logs());
    assert!(!cluster.nodes[replica].agent_log().contains("promoted to primary"), "{}", cluster.logs());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_agent_releases_the_lock_and_a_replica_takes_over_before_ttl() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let log_before = cluster.nodes[old].agent_log();
    let stopped = Instant::now();
    cluster.nodes[old].stop_agent().await.unwrap();
    let new = wait_for("another primary", Duration::from_secs(30), || async {
        Ok(cluster.primaries().await.into_iter().find(|&i| i != old))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let took = stopped.elapsed();
    eprintln!("graceful stop of the primary's agent: {} took over after {took:?}", cluster.nodes[new].name);
    assert!(took < Duration::from_secs(6), "took {took:?}: the lock was not released, it expired\n{log_before}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_roles_and_a_switchover_through_the_api_hands_over_cleanly() {
    use harness::cluster::http;
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // What HAProxy sees: /primary answers 200 only on the leader, /replica only on replicas.
    for (i, n) in cluster.nodes.iter().enumerate() {
        let (primary, _) = http(n.api_port, "GET", "/primary", None).await.unwrap();
        let (replica, _) = http(n.api_port, "OPTIONS", "/replica", None).await.unwrap();
        if i == old {
            assert_eq!((primary, replica), (200, 503), "{}", n.name);
        } else {
            assert_eq!((primary, replica), (503, 200), "{}", n.name);
        }
    }
    let candidate = (old + 1) % 3;
    let (stop, checker) = start_split_brain_checker(&cluster);
    let body = format!(r#"{{"leader":"{}","candidate":"{}"}}"#, cluster.nodes[old].name, cluster.nodes[candidate].name);
    let started = Instant::now();
    let (status, text) = http(cluster.nodes[old].api_port, "POST", "/switchover", Some(&body)).await.unwrap();
    assert_eq!(status, 200, "{text}\n{}", cluster.logs());
    eprintln!("switchover answered after {:?}: {text}", started.elapsed());
    assert_eq!(cluster.primaries().await, vec![candidate]);
    streams_again(&cluster, old, "the old leader to stream from the new one", 60).await;
    let (after, _) = http(cluster.nodes[candidate].api_port, "GET", "/primary", None).await.unwrap();
    assert_eq!(after, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let overlaps = checker.await.unwrap();
    assert!(overlaps.is_empty(), "two writable primaries at once: {overlaps:?}");
}
