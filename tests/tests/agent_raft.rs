//! Real 3-node clusters of `pgha agent` on the built-in Raft DCS (no etcd anywhere; each agent runs
//! a member, every member-to-member link behind a fault relay): the scenarios of
//! `harness::agent_scenarios`, also run on etcd by agent_etcd.rs. Losing a node also loses its
//! Raft member; cutting a primary off from the DCS cuts its member off from the others.

use harness::agent_scenarios as scenario;
use harness::cluster::{Backend, Timing};

const RAFT: Backend = Backend::Raft;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_on_raft_bootstrap_one_primary_and_two_streaming_replicas() {
    scenario::bootstrap(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_and_its_raft_member_promotes_a_replica_and_loses_no_acknowledged_row() {
    scenario::node_loss(RAFT, Timing::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_and_its_raft_member_with_the_fast_profile_loses_no_acknowledged_row() {
    scenario::node_loss(RAFT, Timing::FAST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_whose_raft_member_is_cut_off_demotes_itself_and_never_overlaps_with_the_new_primary() {
    scenario::primary_cut_off_from_the_dcs(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_a_live_agent_on_raft_is_restarted_in_place_without_failover() {
    scenario::postgres_killed_under_a_live_agent(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_postmaster_on_raft_is_fenced_and_a_replica_takes_over() {
    scenario::hung_primary_postmaster(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_raft_that_never_streamed_is_not_promoted_when_the_primary_dies() {
    scenario::replica_that_never_streamed(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_agent_and_its_raft_member_releases_the_lock_and_a_replica_takes_over_before_ttl() {
    scenario::graceful_stop_of_the_primary_agent(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_and_a_switchover_on_raft_hand_over_cleanly() {
    scenario::health_checks_and_switchover(RAFT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_postgres_cannot_restart_on_raft_fails_over_after_primary_start_timeout() {
    scenario::primary_that_cannot_restart(RAFT).await;
}
