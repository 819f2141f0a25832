//! The DCS conformance suite against the built-in Raft DCS (3 `pgha dcs-member` processes), the
//! same checks as against etcd.

use consensus::dcs::{Dcs, KvDcs};
use harness::dcs_suite::{self, percentile, SessionFactory, SessionFuture};
use harness::{RaftGroup, RaftTimingMs};
use std::sync::Arc;
use std::time::Duration;

struct RaftSessions<'g> {
    group: &'g RaftGroup,
    scope: String,
}

impl<'g> RaftSessions<'g> {
    fn new(group: &'g RaftGroup) -> Self {
        RaftSessions { group, scope: format!("conformance{}", std::process::id()) }
    }
}

impl SessionFactory for RaftSessions<'_> {
    fn session<'a>(&'a self, name: &'a str, ttl: Duration) -> SessionFuture<'a> {
        Box::pin(async move {
            let store = Arc::new(self.group.store()?);
            Ok(Arc::new(KvDcs::new(store, "/service", &self.scope, name, ttl)) as Arc<dyn Dcs>)
        })
    }
}

async fn group() -> RaftGroup {
    RaftGroup::start(3, RaftTimingMs::default()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_leader_lock_has_at_most_one_owner() {
    let g = group().await;
    dcs_suite::leader_lock_has_at_most_one_owner(&RaftSessions::new(&g), 20).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_silent_holder_loses_the_lock_within_ttl_plus_1s() {
    let g = group().await;
    let after = dcs_suite::silent_holder_loses_the_lock_within_ttl_plus_1s(&RaftSessions::new(&g)).await.unwrap();
    eprintln!("raft: lock of a silent holder vanished {after:?} after its last refresh (ttl 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_a_new_ttl_applies_from_the_next_refresh() {
    let g = group().await;
    let (grown, shrunk) = dcs_suite::a_new_ttl_applies_from_the_next_refresh(&RaftSessions::new(&g)).await.unwrap();
    eprintln!(
        "raft: silent holder's lock vanished {grown:?} after a refresh with ttl 2 s -> 5 s, {shrunk:?} with 5 s -> 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_refresh_after_takeover_reports_the_new_holder() {
    let g = group().await;
    dcs_suite::refresh_after_takeover_reports_the_new_holder(&RaftSessions::new(&g)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_stale_compare_and_set_fails() {
    let g = group().await;
    dcs_suite::stale_compare_and_set_fails(&RaftSessions::new(&g)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_member_keys_expire() {
    let g = group().await;
    let after = dcs_suite::member_keys_expire(&RaftSessions::new(&g)).await.unwrap();
    eprintln!("raft: member key vanished {after:?} after its last touch (ttl 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_watcher_sees_a_change_within_100ms() {
    let g = group().await;
    let lat = dcs_suite::watch_latencies(&RaftSessions::new(&g), 200).await.unwrap();
    let (p50, p99) = (percentile(&lat, 50), percentile(&lat, 99));
    eprintln!("raft watch latency over {} writes: p50 {p50:?}, p99 {p99:?}, max {:?}", lat.len(), lat[lat.len() - 1]);
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
}
