//! Three members on 127.0.0.1 over the real TCP transport and on-disk log: they elect a leader,
//! take writes, survive losing the leader, and ignore a node that does not know the secret.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::network::RPCOption;
use openraft::raft::VoteRequest;
use openraft::{BasicNode, Config, Raft, RaftNetwork, RaftNetworkFactory, Vote};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::raft::test_support::{MemStateMachine, TestConfig, TestWrite};
use crate::raft::{
    serve, ClientApi, ClientApiConnection, ClientCallError, LogStore, LogStoreOptions, NetworkConfig, ServerHandle,
    SharedSecret, TcpNetwork,
};

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

struct Member {
    id: u64,
    raft: Raft<TestConfig>,
    sm: MemStateMachine,
    server: ServerHandle,
    _dir: tempfile::TempDir,
}

fn secret(text: &str) -> SharedSecret {
    SharedSecret::new(text).unwrap()
}

fn raft_config() -> Arc<Config> {
    let config = Config {
        cluster_name: "pgha-test".to_string(),
        heartbeat_interval: 100,
        election_timeout_min: 500,
        election_timeout_max: 1000,
        ..Config::default()
    };
    Arc::new(config.validate().unwrap())
}

async fn start_member(id: u64, listener: TcpListener, secret: &SharedSecret) -> Member {
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::<TestConfig>::open(dir.path(), LogStoreOptions::default()).unwrap();
    let sm = MemStateMachine::default();
    let network = TcpNetwork::<TestConfig>::new(id, secret.clone(), NetworkConfig::default());
    let raft = Raft::new(id, raft_config(), network, log, sm.clone()).await.unwrap();
    let server = serve(listener, raft.clone(), secret.clone(), NetworkConfig::default(), None).unwrap();
    Member { id, raft, sm, server, _dir: dir }
}

async fn bind() -> (TcpListener, BasicNode) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, BasicNode { addr })
}

async fn leader_among(members: &[&Member], not: Option<u64>) -> u64 {
    let live: Vec<u64> = members.iter().map(|m| m.id).collect();
    let m = members[0]
        .raft
        .wait(WAIT)
        .metrics(
            move |m| m.current_leader != not && m.current_leader.is_some_and(|l| live.contains(&l)),
            "a leader among the live members",
        )
        .await
        .unwrap();
    m.current_leader.unwrap()
}

async fn write(member: &Member, key: &str) -> u64 {
    let write = TestWrite { key: key.to_string(), value: format!("value of {key}") };
    member.raft.client_write(write).await.unwrap().log_id.index
}

async fn wait_applied(members: &[&Member], index: u64, key: &str) {
    for m in members {
        m.raft.wait(WAIT).applied_index_at_least(Some(index), "write applied everywhere").await.unwrap();
        assert!(m.sm.data().contains_key(key), "member {} lacks {key}", m.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_elects_survives_leader_loss_and_ignores_a_stranger() {
    let cluster_secret = secret("cluster secret for the test, not for production");
    let mut listeners = Vec::new();
    let mut nodes = BTreeMap::new();
    for id in 1..=3u64 {
        let (listener, node) = bind().await;
        listeners.push((id, listener));
        nodes.insert(id, node);
    }
    let mut members = Vec::new();
    for (id, listener) in listeners {
        members.push(start_member(id, listener, &cluster_secret).await);
    }
    members[0].raft.initialize(nodes.clone()).await.unwrap();

    let all: Vec<&Member> = members.iter().collect();
    let first_leader = leader_among(&all, None).await;
    let leader = members.iter().find(|m| m.id == first_leader).unwrap();
    let index = write(leader, "before").await;
    wait_applied(&all, index, "before").await;

    // A stranger with the wrong secret: its RPCs are refused before Raft sees them.
    let mut stranger =
        TcpNetwork::<TestConfig>::new(4, secret("a guess at the cluster secret"), NetworkConfig::default());
    for (id, node) in &nodes {
        let mut client = stranger.new_client(*id, node).await;
        let vote = VoteRequest::new(Vote::new(1000, 4), None);
        let refused = client.vote(vote, RPCOption::new(Duration::from_secs(2))).await;
        assert!(matches!(refused, Err(openraft::error::RPCError::Unreachable(_))), "{refused:?}");
    }
    // ... and so is anything that is not the protocol at all.
    let mut raw = TcpStream::connect(&nodes[&1].addr).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n0123456789012345678901234567890123456789").await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await.unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "listener hung up on a stranger");
    for m in &members {
        let metrics = m.raft.metrics().borrow().clone();
        assert!(metrics.current_term < 1000, "the stranger's term reached member {}", m.id);
        assert_eq!(metrics.current_leader, Some(first_leader));
    }

    // Lose the leader: the other two elect a new one and go on taking writes.
    let position = members.iter().position(|m| m.id == first_leader).unwrap();
    let old = members.remove(position);
    old.raft.shutdown().await.unwrap();
    old.server.shutdown();
    drop(old);
    let survivors: Vec<&Member> = members.iter().collect();
    let second_leader = leader_among(&survivors, Some(first_leader)).await;
    assert_ne!(second_leader, first_leader);
    let leader = members.iter().find(|m| m.id == second_leader).unwrap();
    let index = write(leader, "after").await;
    wait_applied(&survivors, index, "after").await;
}

struct Echo;

#[async_trait::async_trait]
impl ClientApi for Echo {
    async fn handle(&self, request: serde_json::Value) -> Result<serde_json::Value, String> {
        match request.get("refuse") {
            Some(reason) => Err(reason.to_string()),
            None => Ok(serde_json::json!({ "echo": request })),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_api_shares_the_listener_and_needs_the_secret() {
    let cluster_secret = secret("cluster secret for the test, not for production");
    let (listener, node) = bind().await;
    let dir = tempfile::tempdir().unwrap();
    let log = LogStore::<TestConfig>::open(dir.path(), LogStoreOptions::default()).unwrap();
    let network = TcpNetwork::<TestConfig>::new(1, cluster_secret.clone(), NetworkConfig::default());
    let raft = Raft::new(1, raft_config(), network, log, MemStateMachine::default()).await.unwrap();
    let config = NetworkConfig::default();
    let _server = serve(listener, raft.clone(), cluster_secret.clone(), config.clone(), Some(Arc::new(Echo))).unwrap();
    let timeout = Duration::from_secs(5);

    let mut client = ClientApiConnection::connect(&node.addr, &cluster_secret, &config, timeout).await.unwrap();
    let answer = client.call(&serde_json::json!({"get": "/service/pg/leader"}), timeout).await.unwrap();
    assert_eq!(answer, serde_json::json!({"echo": {"get": "/service/pg/leader"}}));
    let refused = client.call(&serde_json::json!({"refuse": "not leader"}), timeout).await;
    assert!(matches!(refused, Err(ClientCallError::Refused(_))));
    // A refusal is an answer: the connection stays usable.
    assert!(client.call(&serde_json::json!(1), timeout).await.is_ok());

    let wrong = secret("a guess at the cluster secret");
    let denied = ClientApiConnection::connect(&node.addr, &wrong, &config, timeout).await;
    assert!(matches!(denied, Err(ClientCallError::Handshake { .. })));
    raft.shutdown().await.unwrap();
}
