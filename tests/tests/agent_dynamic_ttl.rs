//! The dynamic configuration's `ttl` reaches the leader lock of a running cluster, on etcd and on
//! the built-in Raft: after `PATCH /config {"ttl": 16}` a leader killed with its node is replaced
//! only once the new, longer lease has run out, not after the 6 s the agents started with; a ttl
//! that breaks `ttl > loop_wait + 2 x retry_timeout` is refused.

use harness::agent_checks::healthy;
use harness::cluster::{http, PghaCluster, Timing};
use harness::wait_for;
use std::time::{Duration, Instant};

async fn a_longer_ttl_from_the_dcs_holds_the_lock_of_a_dead_leader_longer(mut cluster: PghaCluster, backend: &str) {
    let old = healthy(&cluster).await;
    let api = cluster.nodes[old].api_port;
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"ttl": 4}"#)).await.unwrap();
    assert_eq!(code, 422, "an unsafe ttl was accepted: {text}");
    assert!(text.contains("loop_wait + 2 x retry_timeout"), "{text}");
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"ttl": 16}"#)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    // Every agent takes it over within a few ticks.
    let applied = wait_for("every agent to apply ttl 16 s", Duration::from_secs(20), || async {
        Ok(cluster.nodes.iter().all(|n| n.agent_log().contains("ttl=16s")).then_some(()))
    });
    applied.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // Two more ticks: the leader key now sits on a 16 s lease.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let killed = Instant::now();
    cluster.nodes[old].kill_node();
    let new = wait_for("another node to become primary", Duration::from_secs(60), || async {
        let p = cluster.primaries().await;
        Ok((p.len() == 1 && p[0] != old).then(|| p[0]))
    });
    let new = new.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let took = killed.elapsed();
    eprintln!(
        "{backend}: {} primary {took:?} after the leader's node was killed (ttl 16 s from the DCS, 6 s in the files)",
        cluster.nodes[new].name
    );
    // The last refresh was at most loop_wait (1 s) before the kill: the lease runs >= 15 s more.
    assert!(took >= Duration::from_secs(15), "failover after {took:?}: the lock did not last the new ttl");
    assert!(took < Duration::from_secs(35), "failover took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_ttl_changed_in_the_dcs_is_the_new_lease_of_the_leader_lock() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    a_longer_ttl_from_the_dcs_holds_the_lock_of_a_dead_leader_longer(cluster, "etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_a_ttl_changed_in_the_dcs_is_the_new_lease_of_the_leader_lock() {
    let cluster = PghaCluster::start_on_raft(3, Timing::default()).await.unwrap();
    a_longer_ttl_from_the_dcs_holds_the_lock_of_a_dead_leader_longer(cluster, "raft").await;
}
