//! Three members in one process over real TCP and disk, used through `RaftStore`: writes and
//! linearizable reads from any member, leases kept alive by the leader and expired by it, watches,
//! losing the leader, and a restart from disk that keeps every acknowledged write.

use super::{RaftMember, RaftMemberConfig, RaftTiming};
use crate::dcs::{ClusterKey, Dcs, Expected, KvDcs};
use crate::kv::{KvStore, WatchEvent};
use crate::raft::SharedSecret;
use crate::raft_store::{RaftStore, RaftStoreOptions};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn secret() -> SharedSecret {
    SharedSecret::new("a test secret of sufficient length").unwrap()
}

struct Group {
    peers: BTreeMap<String, String>,
    members: BTreeMap<String, Option<RaftMember>>,
    dirs: BTreeMap<String, tempfile::TempDir>,
}

fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

impl Group {
    async fn start(n: usize) -> Group {
        let peers: BTreeMap<String, String> = (1..=n).map(|i| (format!("m{i}"), free_addr())).collect();
        let dirs = peers.keys().map(|n| (n.clone(), tempfile::tempdir().unwrap())).collect();
        let mut group = Group { peers, members: BTreeMap::new(), dirs };
        for name in group.peers.keys().cloned().collect::<Vec<_>>() {
            group.restart(&name).await;
        }
        group
    }

    async fn restart(&mut self, name: &str) {
        self.start_member(name, false).await;
    }

    /// A new member that joins the running group (`join`): listed in `peers` from now on.
    async fn add(&mut self, name: &str) {
        self.peers.insert(name.to_string(), free_addr());
        self.dirs.insert(name.to_string(), tempfile::tempdir().unwrap());
        self.start_member(name, true).await;
    }

    async fn start_member(&mut self, name: &str, join: bool) {
        let config = RaftMemberConfig {
            name: name.to_string(),
            listen: self.peers[name].clone(),
            data_dir: self.dirs[name].path().to_path_buf(),
            peers: self.peers.clone(),
            secret: secret(),
            timing: RaftTiming::default(),
            op_timeout: Duration::from_secs(2),
            join,
        };
        self.members.insert(name.to_string(), Some(RaftMember::start(config).await.unwrap()));
    }

    async fn stop(&mut self, name: &str) {
        if let Some(m) = self.members.get_mut(name).and_then(Option::take) {
            m.shutdown().await;
        }
    }

    fn store(&self, order: &[&str]) -> RaftStore {
        let addrs = order.iter().map(|n| self.peers[*n].clone()).collect();
        RaftStore::new(addrs, secret(), RaftStoreOptions::default()).unwrap()
    }

    fn leader(&self) -> Option<String> {
        self.members.values().flatten().find_map(|m| {
            let s = m.status();
            (s.state == "Leader").then_some(s.name)
        })
    }
}

async fn wait_for_leader(group: &Group) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = group.leader() {
            return l;
        }
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_serve_the_dcs_from_any_member_and_survive_leader_loss() {
    let mut group = Group::start(3).await;
    let leader = wait_for_leader(&group).await;
    let follower = group.peers.keys().find(|n| **n != leader).unwrap().clone();
    // A client whose preferred member is a follower: writes are forwarded to the leader.
    let store = Arc::new(group.store(&[&follower]));
    let a = KvDcs::new(store.clone(), "/service", "t", "a", Duration::from_secs(3));
    let b = KvDcs::new(Arc::new(group.store(&["m1", "m2", "m3"])), "/service", "t", "b", Duration::from_secs(3));
    let mut events = b.watch(0).await.unwrap();
    a.acquire_leader().await.unwrap();
    assert!(matches!(b.acquire_leader().await, Err(crate::dcs::DcsError::LockHeld { .. })));
    let rev = a.write(ClusterKey::Config, b"{}", Expected::Absent).await.unwrap();
    assert!(b.write(ClusterKey::Config, b"{\"x\":1}", Expected::Revision(rev - 1)).await.is_err());
    assert_eq!(b.snapshot().await.unwrap().leader().as_deref(), Some("a"));
    let ev = tokio::time::timeout(Duration::from_secs(2), events.recv()).await.unwrap().unwrap();
    assert!(matches!(ev, WatchEvent::Put { ref kv, .. } if kv.key == "leader"), "{ev:?}");

    // The holder goes silent: its lease expires on the leader's clock, within ttl + 1 s.
    let silent = Instant::now();
    loop {
        if b.snapshot().await.unwrap().leader().is_none() {
            break;
        }
        assert!(silent.elapsed() < Duration::from_secs(4), "lock outlived ttl + 1 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Lose the Raft leader: writes are accepted again through the others.
    b.acquire_leader().await.unwrap();
    group.stop(&leader).await;
    let lost = Instant::now();
    let c = KvDcs::new(Arc::new(group.store(&["m1", "m2", "m3"])), "/service", "t", "c", Duration::from_secs(3));
    loop {
        if c.write(ClusterKey::Status, b"after", Expected::Any).await.is_ok() {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(5), "no write accepted after losing the leader");
    }
    eprintln!("writes accepted again {:?} after the Raft leader stopped", lost.elapsed());
    // b's lease was re-armed by the new leader: b still holds the lock after the old ttl.
    b.refresh_leader().await.unwrap();

    // The old leader restarts on its disk and catches up: a read through it alone sees everything.
    group.restart(&leader).await;
    caught_up(&group.store(&[&leader]), "status", b"after", "the restarted member").await;
    for name in group.peers.keys().cloned().collect::<Vec<_>>() {
        group.stop(&name).await;
    }
}

/// A fourth member joins a running group (`join`: it proposes no membership of its own): after
/// `RaftStore::join` it is a voter, has every earlier write, and counts in the quorum. Once the
/// Raft leader has removed itself and one more original member is stopped, the last original
/// and m4 are two of the three voters: writes go on only because m4 votes. Joining again
/// changes nothing; the stopped member can be removed by the others, and removing the last
/// voter is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_a_running_group_as_a_voter_and_a_member_can_be_removed() {
    let mut group = Group::start(3).await;
    wait_for_leader(&group).await;
    let store = group.store(&["m1", "m2", "m3"]);
    let dcs = KvDcs::new(Arc::new(store), "/service", "t", "a", Duration::from_secs(3));
    dcs.write(ClusterKey::Config, b"before", Expected::Any).await.unwrap();

    group.add("m4").await;
    // Waiting to be added: it leads nothing and counts in no quorum.
    let m4 = group.members["m4"].as_ref().unwrap().status();
    assert!(m4.voters.is_empty(), "{m4:?}");
    let others = group.store(&["m1", "m2", "m3"]);
    let joined = others.join("m4", &group.peers["m4"]).await.unwrap();
    assert_eq!(sorted(joined.voters), ["m1", "m2", "m3", "m4"]);
    assert_eq!(sorted(others.join("m4", &group.peers["m4"]).await.unwrap().voters), ["m1", "m2", "m3", "m4"]);
    // m4 has the write from before it joined.
    caught_up(&group.store(&["m4"]), "config", b"before", "m4").await;

    // The Raft leader removes itself (it steps down once the change is committed); then one
    // more original member stops. The two left are a quorum of three only because m4 votes.
    let leader = wait_for_leader(&group).await;
    let mut originals: Vec<String> =
        ["m1", "m2", "m3"].iter().map(|n| n.to_string()).filter(|n| *n != leader).collect();
    let after = others.remove(&leader).await.unwrap();
    let mut expected = originals.clone();
    expected.push("m4".into());
    assert_eq!(sorted(after.voters), sorted(expected));
    group.stop(&leader).await;
    let stopped = originals.remove(0);
    let alive = originals.remove(0);
    group.stop(&stopped).await;
    let survivors = KvDcs::new(Arc::new(group.store(&[&alive, "m4"])), "/service", "t", "b", Duration::from_secs(3));
    let lost = Instant::now();
    loop {
        if survivors.write(ClusterKey::Status, b"after", Expected::Any).await.is_ok() {
            break;
        }
        assert!(lost.elapsed() < Duration::from_secs(10), "{alive} and m4 are not a quorum of {stopped}, {alive}, m4");
    }
    // A node gone for good is removed while it is down: the others need only agree among
    // themselves (both the old and the new voters have a quorum of live members).
    let last = group.store(&[&alive, "m4"]);
    assert_eq!(sorted(last.remove(&stopped).await.unwrap().voters), sorted(vec![alive.clone(), "m4".into()]));
    survivors.write(ClusterKey::Status, b"two left", Expected::Any).await.unwrap();
    assert_eq!(last.remove(&alive).await.unwrap().voters, ["m4"]);
    let only = group.store(&["m4"]);
    let refused = only.remove("m4").await;
    assert!(matches!(&refused, Err(crate::kv::KvError::Rejected(m)) if m.contains("last voter")), "{refused:?}");
    for name in group.peers.keys().cloned().collect::<Vec<_>>() {
        group.stop(&name).await;
    }
}

/// Waits (10 s at most) until a read through `store` sees the key ending in `key` with
/// `value`: the member it reaches has caught up with the group.
async fn caught_up(store: &RaftStore, key: &str, value: &[u8], who: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match store.range_prefix("/service/t/").await {
            Ok(r) if r.kvs.iter().any(|kv| kv.key.ends_with(key) && kv.value == value) => return,
            other => assert!(Instant::now() < deadline, "{who} did not catch up: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sorted(mut names: Vec<String>) -> Vec<String> {
    names.sort();
    names
}
