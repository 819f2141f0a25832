//! Real 3-node clusters of `pgha agent` on etcd (each agent behind its own fault relay): the
//! scenarios of `harness::agent_scenarios`, also run on the built-in Raft by agent_raft.rs.

use harness::agent_scenarios as scenario;
use harness::cluster::{Backend, Timing};

const ETCD: Backend = Backend::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_bootstrap_one_primary_and_two_streaming_replicas() {
    scenario::bootstrap(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_promotes_a_replica_and_loses_no_acknowledged_row() {
    scenario::node_loss(ETCD, Timing::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_with_the_fast_profile_promotes_a_replica_and_loses_no_acknowledged_row() {
    scenario::node_loss(ETCD, Timing::FAST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_off_from_the_dcs_demotes_itself_and_never_overlaps_with_the_new_primary() {
    scenario::primary_cut_off_from_the_dcs(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_a_live_agent_is_restarted_in_place_without_failover() {
    scenario::postgres_killed_under_a_live_agent(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_postmaster_is_fenced_and_a_replica_takes_over() {
    scenario::hung_primary_postmaster(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_streamed_is_not_promoted_when_the_primary_dies() {
    scenario::replica_that_never_streamed(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_agent_releases_the_lock_and_a_replica_takes_over_before_ttl() {
    scenario::graceful_stop_of_the_primary_agent(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_roles_and_a_switchover_through_the_api_hands_over_cleanly() {
    scenario::health_checks_and_switchover(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_postgres_cannot_restart_fails_over_after_primary_start_timeout() {
    scenario::primary_that_cannot_restart(ETCD).await;
}

/// The leader checks its members' replication slots against the server every tick: a slot that
/// disappears from the primary (dropped by hand here; in a CI run it was a slot the new primary
/// lacked after a failover, which left the rewound old primary unable to stream) is made again,
/// and its replica streams through it. With the slots remembered as "done" instead, the replica
/// retried "replication slot does not exist" for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_slot_lost_on_the_primary_is_made_again_and_its_replica_streams() {
    use harness::cluster::{connect, PghaCluster};
    use harness::wait::wait_for;
    use std::time::Duration;
    let cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = harness::agent_checks::healthy(&cluster).await;
    let replica = 1 - primary;
    let slot = cluster.nodes[replica].name.to_lowercase();
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    // The walsender holds the slot: end it, then drop the slot before the replica reconnects
    // (it retries every wal_retrieve_retry_interval, 5 s).
    let dropped = wait_for("the slot dropped", Duration::from_secs(10), || async {
        p.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null",
            &[&slot],
        )
        .await?;
        Ok(p.execute("select pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ()))
    });
    dropped.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let back = wait_for("the slot made again and active", Duration::from_secs(30), || async {
        let row = p.query_opt("select active from pg_replication_slots where slot_name = $1", &[&slot]).await?;
        Ok(row.and_then(|r| r.get::<_, bool>(0).then_some(())))
    });
    back.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let (in_recovery, status) = cluster.nodes[replica].role().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(in_recovery);
    assert_eq!(status.as_deref(), Some("streaming"), "{}", cluster.logs());
}
