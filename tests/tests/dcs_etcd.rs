//! The DCS conformance suite against real etcd, plus etcd's own faults: a member restart and the
//! loss of the member the client talks to.

use consensus::dcs::{ClusterKey, Dcs, Expected, KvDcs};
use consensus::etcd::{EtcdOptions, EtcdStore};
use consensus::kv::WatchEvent;
use harness::dcs_suite::{self, percentile, SessionFactory, SessionFuture};
use harness::EtcdCluster;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct EtcdSessions {
    endpoints: Vec<String>,
    scope: String,
}

impl EtcdSessions {
    fn new(etcd: &EtcdCluster) -> Self {
        EtcdSessions { endpoints: etcd.endpoints(), scope: format!("conformance{}", std::process::id()) }
    }
}

impl SessionFactory for EtcdSessions {
    fn session<'a>(&'a self, name: &'a str, ttl: Duration) -> SessionFuture<'a> {
        Box::pin(async move {
            let store = Arc::new(EtcdStore::connect(&self.endpoints, EtcdOptions::default()).await?);
            Ok(Arc::new(KvDcs::new(store, "/service", &self.scope, name, ttl)) as Arc<dyn Dcs>)
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_lock_has_at_most_one_owner() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    dcs_suite::leader_lock_has_at_most_one_owner(&EtcdSessions::new(&etcd), 20).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_silent_holder_loses_the_lock_within_ttl_plus_1s() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let after = dcs_suite::silent_holder_loses_the_lock_within_ttl_plus_1s(&EtcdSessions::new(&etcd)).await.unwrap();
    eprintln!("etcd: lock of a silent holder vanished {after:?} after its last refresh (ttl 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_a_new_ttl_applies_from_the_next_refresh() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let (grown, shrunk) = dcs_suite::a_new_ttl_applies_from_the_next_refresh(&EtcdSessions::new(&etcd)).await.unwrap();
    eprintln!(
        "etcd: silent holder's lock vanished {grown:?} after a refresh with ttl 2 s -> 5 s, {shrunk:?} with 5 s -> 2 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_refresh_after_takeover_reports_the_new_holder() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    dcs_suite::refresh_after_takeover_reports_the_new_holder(&EtcdSessions::new(&etcd)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_stale_compare_and_set_fails() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    dcs_suite::stale_compare_and_set_fails(&EtcdSessions::new(&etcd)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_member_keys_expire() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let after = dcs_suite::member_keys_expire(&EtcdSessions::new(&etcd)).await.unwrap();
    eprintln!("etcd: member key vanished {after:?} after its last touch (ttl 3 s)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watcher_sees_a_change_within_100ms() {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let lat = dcs_suite::watch_latencies(&EtcdSessions::new(&etcd), 200).await.unwrap();
    let (p50, p99) = (percentile(&lat, 50), percentile(&lat, 99));
    eprintln!("etcd watch latency over {} writes: p50 {p50:?}, p99 {p99:?}, max {:?}", lat.len(), lat[lat.len() - 1]);
    assert!(p99 < Duration::from_millis(100), "p99 {p99:?}");
}

/// The watch stream dies when etcd restarts; the backend re-opens it from the next revision, so
/// a write made while the watch was down is still delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_watch_survives_a_restart_without_losing_events() {
    let mut etcd = EtcdCluster::start(1).await.unwrap();
    let f = EtcdSessions::new(&etcd);
    let watcher = f.session("w", Duration::from_secs(10)).await.unwrap();
    let writer = f.session("x", Duration::from_secs(10)).await.unwrap();
    let mut events = watcher.watch(0).await.unwrap();
    writer.write(ClusterKey::Status, b"before", Expected::Any).await.unwrap();
    etcd.restart(0).await.unwrap();
    let write_after = async {
        loop {
            match writer.write(ClusterKey::Status, b"after", Expected::Any).await {
                Ok(_) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), write_after).await.unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !seen.contains(&b"after".to_vec()) {
        let ev = tokio::time::timeout_at(deadline.into(), events.recv()).await.unwrap().unwrap();
        if let WatchEvent::Put { kv, .. } = ev {
            seen.push(kv.value);
        }
    }
    assert_eq!(seen, vec![b"before".to_vec(), b"after".to_vec()]);
}

/// Each member of a 3-member etcd in turn is killed; the leader keeps refreshing its lock within
/// its ttl through the others, and the watch keeps delivering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_losing_any_member_keeps_the_lock_refreshed_within_ttl() {
    let mut etcd = EtcdCluster::start(3).await.unwrap();
    let f = EtcdSessions::new(&etcd);
    let ttl = Duration::from_secs(5);
    let leader = f.session("leader", ttl).await.unwrap();
    let observer = f.session("observer", ttl).await.unwrap();
    leader.acquire_leader().await.unwrap();
    let mut events = observer.watch(0).await.unwrap();
    for victim in 0..3 {
        // An agent refreshes every loop: the lock was refreshed a moment before any member
        // dies, not before the previous member's restart (which takes seconds of the ttl).
        let lease = leader.refresh_leader().await.unwrap();
        etcd.kill(victim);
        let killed = Instant::now();
        // Refresh as an agent would every loop, until one goes through.
        loop {
            match leader.refresh_leader().await {
                Ok(_) => break,
                Err(e) => {
                    assert!(Instant::now() < lease.valid_until, "lock could not be refreshed before it expired: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        eprintln!("etcd member {victim} killed: lock refreshed again after {:?}", killed.elapsed());
        let marker = format!("without member {victim}");
        leader.write(ClusterKey::Status, marker.as_bytes(), Expected::Any).await.unwrap();
        loop {
            let ev = tokio::time::timeout(ttl, events.recv()).await.expect("watch silent").expect("watch ended");
            if matches!(&ev, WatchEvent::Put { kv, .. } if kv.value == marker.as_bytes()) {
                break;
            }
        }
        etcd.restart(victim).await.unwrap();
    }
    assert_eq!(observer.snapshot().await.unwrap().leader().as_deref(), Some("leader"));
}
