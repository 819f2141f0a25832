//! The REST API's DCS endpoints against a real etcd: what an operator does with patronictl or curl
//! (switchover, failover, edit-config, list, history) and what must be refused.

use agent::api::{router, ApiCommand, ApiState, BasicAuth};
use agent::status::{NodeRole, NodeStatus, PgRunState};
use axum::body::Body;
use axum::http::{header, Method, Request};
use axum::Router;
use base64::Engine;
use consensus::dcs::{ClusterKey, Dcs, Expected, KvDcs};
use consensus::etcd::{EtcdOptions, EtcdStore};
use harness::EtcdCluster;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tower::ServiceExt;

const TTL: Duration = Duration::from_secs(10);

struct Cluster {
    _etcd: EtcdCluster,
    /// Sessions of members n1 (the leader) and n2, n3 (running replicas; n3 tagged nofailover).
    sessions: Vec<Arc<dyn Dcs>>,
    _status: watch::Sender<NodeStatus>,
    _commands: mpsc::Receiver<ApiCommand>,
    state: ApiState,
}

fn member_json(role: &str, port: u16, tags: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "conn_url": format!("postgres://127.0.0.1:{port}/postgres"),
        "api_url": format!("http://127.0.0.1:{}/patroni", port + 1000),
        "state": "running",
        "role": role,
        "xlog_location": 5000,
        "timeline": 1,
        "tags": tags,
    }))
    .unwrap()
}

/// etcd with three members published and n1 holding the leader lock; the API runs as n1.
async fn cluster(scope: &str) -> Cluster {
    let etcd = EtcdCluster::start(1).await.unwrap();
    let mut sessions: Vec<Arc<dyn Dcs>> = Vec::new();
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let store = EtcdStore::connect(&etcd.endpoints(), EtcdOptions::default()).await.unwrap();
        let dcs = Arc::new(KvDcs::new(Arc::new(store), "/service", scope, name, TTL));
        let role = if i == 0 { "primary" } else { "replica" };
        let tags = if i == 2 { json!({"nofailover": true}) } else { json!({}) };
        dcs.touch_member(&member_json(role, 5432 + i as u16, tags)).await.unwrap();
        sessions.push(dcs);
    }
    sessions[0].acquire_leader().await.unwrap();
    let mut status = NodeStatus::starting("n1", scope);
    status.role = NodeRole::Primary;
    status.state = PgRunState("running".into());
    status.holds_lock = true;
    status.ttl_secs = 30;
    let (status_tx, status_rx) = watch::channel(status);
    let (tx, rx) = mpsc::channel(4);
    let mut state = ApiState::new(status_rx, sessions[0].clone(), tx);
    state.switchover_wait = Duration::from_secs(10);
    Cluster { _etcd: etcd, sessions, _status: status_tx, _commands: rx, state }
}

async fn call(router: &Router, method: Method, uri: &str, body: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(user_pass) = auth {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        req = req.header(header::AUTHORIZATION, format!("Basic {encoded}"));
    }
    let response = router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let code = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (code, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn key(dcs: &Arc<dyn Dcs>, key: ClusterKey) -> Option<Value> {
    let snap = dcs.snapshot().await.unwrap();
    snap.get(&key).map(|kv| serde_json::from_slice(&kv.value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_writes_the_failover_key_and_answers_once_the_candidate_leads() {
    let c = cluster("api-switchover").await;
    let api = router(c.state.clone());
    let request = {
        let api = api.clone();
        tokio::spawn(async move {
            call(&api, Method::POST, "/switchover", r#"{"leader":"n1","candidate":"n2"}"#, None).await
        })
    };
    // Play the runtime: once the request is in the DCS, n1 hands the lock to n2.
    let failover = harness::wait_for("the failover key", Duration::from_secs(5), || async {
        Ok(key(&c.sessions[1], ClusterKey::Failover).await)
    })
    .await
    .unwrap();
    assert_eq!(failover["leader"], "n1");
    assert_eq!(failover["member"], "n2");
    assert!(failover.get("scheduled_at").is_none());
    c.sessions[0].release_leader().await.unwrap();
    c.sessions[1].acquire_leader().await.unwrap();
    let (code, text) = request.await.unwrap();
    assert_eq!((code, text.as_str()), (200, "Successfully switched over to \"n2\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_is_refused_with_412_when_its_preconditions_fail() {
    let c = cluster("api-refused").await;
    let api = router(c.state.clone());
    let cases = [
        (r#"{"leader":"n1","candidate":"ghost"}"#, "candidate ghost is not a member of the cluster"),
        (r#"{"leader":"n2","candidate":"n3"}"#, "leader name does not match"),
        (r#"{"leader":"n1","candidate":"n3"}"#, "candidate n3 is tagged nofailover"),
    ];
    for (body, reason) in cases {
        let (code, text) = call(&api, Method::POST, "/switchover", body, None).await;
        assert_eq!(code, 412, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text:?} lacks {reason:?}");
    }
    let (code, text) = call(&api, Method::POST, "/failover", r#"{"candidate":"n1"}"#, None).await;
    assert_eq!((code, text.as_str()), (412, "candidate n1 is already the leader"));
    assert_eq!(key(&c.sessions[0], ClusterKey::Failover).await, None, "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_writes_only_the_candidate_and_reports_an_unknown_outcome_in_time() {
    let c = cluster("api-failover").await;
    let mut state = c.state.clone();
    state.switchover_wait = Duration::from_millis(600);
    let api = router(state);
    let (code, text) = call(&api, Method::POST, "/failover", r#"{"candidate":"n2"}"#, None).await;
    assert_eq!((code, text.as_str()), (503, "Failover status unknown"));
    let failover = key(&c.sessions[0], ClusterKey::Failover).await.unwrap();
    assert_eq!(failover["member"], "n2");
    assert!(failover.get("leader").is_none(), "{failover}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_switchover_is_shown_by_cluster_and_can_be_cancelled() {
    let c = cluster("api-scheduled").await;
    let api = router(c.state.clone());
    let body = r#"{"leader":"n1","candidate":"n2","scheduled_at":"2099-09-24T12:00+02:00"}"#;
    assert_eq!(call(&api, Method::POST, "/switchover", body, None).await, (202, "Switchover scheduled".into()));
    let failover = key(&c.sessions[0], ClusterKey::Failover).await.unwrap();
    assert_eq!(failover["scheduled_at"], "2099-09-24T10:00:00+00:00");

    let (code, text) = call(&api, Method::GET, "/cluster", "", None).await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["scope"], "api-scheduled");
    let names: Vec<&str> = doc["members"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["n1", "n2", "n3"]);
    assert_eq!(doc["members"][0]["role"], "leader");
    assert_eq!(doc["members"][0]["port"], 5432);
    assert_eq!(doc["members"][1]["role"], "replica");
    assert_eq!(doc["members"][1]["lsn"], "0/1388");
    assert_eq!(doc["scheduled_switchover"], json!({"at": "2099-09-24T10:00:00+00:00", "from": "n1", "to": "n2"}));

    assert_eq!(call(&api, Method::DELETE, "/switchover", "", None).await, (200, "scheduled switchover deleted".into()));
    assert_eq!(key(&c.sessions[0], ClusterKey::Failover).await, None);
    assert_eq!(call(&api, Method::DELETE, "/switchover", "", None).await.0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patch_config_merges_deletes_with_null_and_put_replaces() {
    let c = cluster("api-config").await;
    let api = router(c.state.clone());
    assert_eq!(call(&api, Method::GET, "/config", "", None).await, (200, "{}".into()), "no config key yet");
    // The first PATCH creates the key.
    let (code, _) = call(&api, Method::PATCH, "/config", r#"{"loop_wait":10}"#, None).await;
    assert_eq!(code, 200);
    let initial = json!({"ttl": 30, "loop_wait": 10, "postgresql": {"parameters": {"max_connections": "100", "work_mem": "4MB"}}});
    let (code, text) = call(&api, Method::PUT, "/config", &initial.to_string(), None).await;
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (200, initial));

    let patch = r#"{"ttl":20,"postgresql":{"parameters":{"max_connections":null,"shared_buffers":"1GB"}}}"#;
    let (code, text) = call(&api, Method::PATCH, "/config", patch, None).await;
    let want =
        json!({"ttl": 20, "loop_wait": 10, "postgresql": {"parameters": {"work_mem": "4MB", "shared_buffers": "1GB"}}});
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (200, want.clone()));
    assert_eq!(key(&c.sessions[1], ClusterKey::Config).await, Some(want.clone()), "what other nodes read");
    let (_, text) = call(&api, Method::GET, "/config", "", None).await;
    assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), want);

    // What another node wrote since is kept: a PATCH applies on top of what it reads.
    c.sessions[2].write(ClusterKey::Config, br#"{"ttl":20,"pause":true}"#, Expected::Any).await.unwrap();
    let (code, text) = call(&api, Method::PATCH, "/config", r#"{"pause":null,"loop_wait":5}"#, None).await;
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (200, json!({"ttl": 20, "loop_wait": 5})));

    let (code, text) = call(&api, Method::PATCH, "/config", r#"{"ttl":"#, None).await;
    assert_eq!(code, 400, "{text}");

    // Timing that would make failover unsafe is refused with the rule, and nothing is written.
    let (code, text) = call(&api, Method::PATCH, "/config", r#"{"retry_timeout":5,"loop_wait":10}"#, None).await;
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("ttl (20s) must be larger than loop_wait + 2 x retry_timeout (10s + 2 x 5s)"), "{text}");
    let (code, text) = call(&api, Method::PATCH, "/config", r#"{"ttl":null,"loop_wait":27}"#, None).await;
    assert_eq!(code, 422, "the agents' own ttl (30 s) is checked too: {text}");
    let (code, text) = call(&api, Method::PUT, "/config", r#"{"loop_wait":"soon"}"#, None).await;
    assert_eq!(code, 422, "{text}");
    assert_eq!(key(&c.sessions[1], ClusterKey::Config).await, Some(json!({"ttl": 20, "loop_wait": 5})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_need_credentials_when_the_api_has_them() {
    let c = cluster("api-auth").await;
    let api = router(c.state.clone().with_auth(Some(BasicAuth::new("patroni", "s3cret"))));
    let (code, _) = call(&api, Method::PATCH, "/config", r#"{"ttl":20}"#, None).await;
    assert_eq!(code, 401);
    let (code, _) =
        call(&api, Method::POST, "/switchover", r#"{"leader":"n1","candidate":"n2"}"#, Some("patroni:guess")).await;
    assert_eq!(code, 401);
    assert_eq!(key(&c.sessions[0], ClusterKey::Config).await, None);
    assert_eq!(key(&c.sessions[0], ClusterKey::Failover).await, None);
    let (code, _) = call(&api, Method::PATCH, "/config", r#"{"ttl":20}"#, Some("patroni:s3cret")).await;
    assert_eq!(code, 200);
    assert_eq!(call(&api, Method::GET, "/cluster", "", None).await.0, 200, "reads stay open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lists_timelines_from_the_history_key() {
    let c = cluster("api-history").await;
    let api = router(c.state.clone());
    assert_eq!(call(&api, Method::GET, "/history", "", None).await, (200, "[]".into()));
    let history = json!([[1, 25623960, "no recovery target specified", "2019-09-23T16:57:57+02:00", "n1"]]);
    c.sessions[0].write(ClusterKey::History, history.to_string().as_bytes(), Expected::Any).await.unwrap();
    let (code, text) = call(&api, Method::GET, "/history", "", None).await;
    assert_eq!((code, serde_json::from_str::<Value>(&text).unwrap()), (200, history));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_synchronous_mode_a_switchover_goes_only_to_a_synchronous_standby() {
    let c = cluster("api-sync").await;
    let api = router(c.state.clone());
    let dcs = &c.sessions[0];
    dcs.write(ClusterKey::Config, br#"{"synchronous_mode": true}"#, Expected::Any).await.unwrap();
    // The key names n3, which is tagged nofailover in this cluster: nobody may take over.
    dcs.write(ClusterKey::Sync, br#"{"leader":"n1","sync_standby":"n3"}"#, Expected::Any).await.unwrap();
    let cases = [
        (r#"{"leader":"n1","candidate":"n2"}"#, "candidate name does not match with sync_standby"),
        (r#"{"leader":"n1"}"#, "no synchronous standby is running and eligible"),
    ];
    for (body, reason) in cases {
        let (code, text) = call(&api, Method::POST, "/switchover", body, None).await;
        assert_eq!(code, 412, "{body}: {text}");
        assert!(text.contains(reason), "{body}: {text:?} lacks {reason:?}");
    }
    let (code, text) = call(&api, Method::POST, "/failover", r#"{"candidate":"n2"}"#, None).await;
    assert_eq!(code, 412, "{text}");
    assert!(text.contains("does not match with sync_standby"), "{text}");
    assert_eq!(key(&c.sessions[0], ClusterKey::Failover).await, None, "nothing was written");
}
