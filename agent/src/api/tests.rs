//! The API driven through its real router without a DCS: every health endpoint for every kind of
//! node and every method HAProxy or a probe may use, authentication, bad input, the command queue,
//! and round trips through `serve` on a real socket, over HTTP and over HTTPS with and without
//! client certificates. DCS-backed endpoints are tested against
//! real etcd in `agent/tests/api_dcs.rs`.

use super::*;
use crate::ha::Lsn;
use crate::status::{NodeRole, PgRunState};
use axum::body::Body;
use axum::http::{header, Method, Request as HttpRequest};
use base64::Engine;
use consensus::dcs::{ClusterKey, Expected, LeaderLease};
use consensus::kv::{KvError, Revision, WatchReceiver};
use serde_json::Value;
use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower::ServiceExt;

/// A DCS that is down: every call fails as an unreachable etcd would.
struct DownDcs;

fn down<T>() -> Result<T, DcsError> {
    Err(DcsError::Store(KvError::Unavailable("test: no DCS".into())))
}

#[async_trait::async_trait]
impl Dcs for DownDcs {
    fn member_name(&self) -> &str {
        "pg1"
    }
    async fn snapshot(&self) -> Result<ClusterSnapshot, DcsError> {
        down()
    }
    async fn watch(&self, _after: Revision) -> Result<WatchReceiver, DcsError> {
        down()
    }
    async fn acquire_leader(&self) -> Result<LeaderLease, DcsError> {
        down()
    }
    async fn refresh_leader(&self) -> Result<LeaderLease, DcsError> {
        down()
    }
    async fn release_leader(&self) -> Result<(), DcsError> {
        down()
    }
    async fn touch_member(&self, _value: &[u8]) -> Result<(), DcsError> {
        down()
    }
    async fn initialize(&self, _value: &[u8]) -> Result<bool, DcsError> {
        down()
    }
    async fn write(&self, _key: ClusterKey, _value: &[u8], _expected: Expected) -> Result<Revision, DcsError> {
        down()
    }
    async fn delete(&self, _key: ClusterKey, _expected: Expected) -> Result<(), DcsError> {
        down()
    }
    fn set_ttl(&self, _ttl: std::time::Duration) {}
}

const LEADER_AT: u64 = 100 << 20;

/// The kinds of node every health check is asked about.
#[derive(Debug, Clone, Copy)]
enum Node {
    PrimaryWithLock,
    PrimaryWithoutLock,
    ReplicaStreaming,
    ReplicaLagging,
    ReplicaNoLoadBalance,
    Stopped,
}

const NODES: [Node; 6] = [
    Node::PrimaryWithLock,
    Node::PrimaryWithoutLock,
    Node::ReplicaStreaming,
    Node::ReplicaLagging,
    Node::ReplicaNoLoadBalance,
    Node::Stopped,
];

fn node(kind: Node) -> NodeStatus {
    let mut s = NodeStatus::starting("pg1", "demo");
    s.last_tick = Some(Instant::now());
    s.leader_position = Some(Lsn(LEADER_AT));
    s.maximum_lag_on_failover = 1 << 20;
    s.ttl_secs = 30;
    s.timeline = Some(1);
    s.server_version = Some(150004);
    let replica = |s: &mut NodeStatus, behind: u64| {
        s.role = NodeRole::Replica;
        s.state = PgRunState("running".into());
        s.pg_running = true;
        s.streaming = true;
        s.leader = Some("pg0".into());
        s.received_position = Some(Lsn(LEADER_AT - behind));
        s.replayed_position = Some(Lsn(LEADER_AT - behind));
    };
    match kind {
        Node::PrimaryWithLock | Node::PrimaryWithoutLock => {
            s.role = NodeRole::Primary;
            s.state = PgRunState("running".into());
            s.pg_running = true;
            s.wal_position = Some(Lsn(LEADER_AT));
            s.holds_lock = matches!(kind, Node::PrimaryWithLock);
            s.leader = if s.holds_lock { Some("pg1".into()) } else { Some("pg0".into()) };
        }
        Node::ReplicaStreaming => replica(&mut s, 1024),
        Node::ReplicaLagging => replica(&mut s, 64 << 20),
        Node::ReplicaNoLoadBalance => {
            replica(&mut s, 0);
            s.tags.noloadbalance = true;
        }
        Node::Stopped => {
            s.role = NodeRole::Unknown;
            s.state = PgRunState("stopped".into());
        }
    }
    s
}

struct Api {
    router: Router,
    commands: mpsc::Receiver<ApiCommand>,
    _status: watch::Sender<NodeStatus>,
}

fn api_with(status: NodeStatus, auth: Option<BasicAuth>, queue: usize) -> Api {
    let (status_tx, status_rx) = watch::channel(status);
    let (tx, rx) = mpsc::channel(queue);
    let mut state = ApiState::new(status_rx, Arc::new(DownDcs), tx).with_auth(auth);
    state.dcs_timeout = Duration::from_millis(500);
    Api { router: router(state), commands: rx, _status: status_tx }
}

fn api(status: NodeStatus) -> Api {
    api_with(status, None, 4)
}

async fn call(router: &Router, method: Method, uri: &str, body: &str, auth: Option<&str>) -> (u16, String) {
    let mut req = HttpRequest::builder().method(method).uri(uri);
    if let Some(user_pass) = auth {
        let encoded = base64::engine::general_purpose::STANDARD.encode(user_pass);
        req = req.header(header::AUTHORIZATION, format!("Basic {encoded}"));
    }
    let response = router.clone().oneshot(req.body(Body::from(body.to_string())).unwrap()).await.unwrap();
    let code = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20).await.unwrap();
    (code, String::from_utf8(bytes.to_vec()).unwrap())
}

async fn get(router: &Router, uri: &str) -> (u16, String) {
    call(router, Method::GET, uri, "", None).await
}

/// Expected codes per endpoint, in the order of `NODES`.
const MATRIX: &[(&str, [u16; 6])] = &[
    ("/", [200, 503, 503, 503, 503, 503]),
    ("/primary", [200, 503, 503, 503, 503, 503]),
    ("/master", [200, 503, 503, 503, 503, 503]),
    ("/read-write", [200, 503, 503, 503, 503, 503]),
    ("/leader", [200, 503, 503, 503, 503, 503]),
    ("/replica", [503, 503, 200, 200, 503, 503]),
    ("/replica?lag=1MB", [503, 503, 200, 503, 503, 503]),
    ("/replica?lag=100MB", [503, 503, 200, 200, 503, 503]),
    ("/replica?replication_state=streaming", [503, 503, 200, 200, 503, 503]),
    ("/read-only", [200, 503, 200, 200, 503, 503]),
    ("/read-only?lag=16kB", [200, 503, 200, 503, 503, 503]),
    ("/synchronous", [503, 503, 503, 503, 503, 503]),
    ("/read-only-sync", [200, 503, 503, 503, 503, 503]),
    ("/standby-leader", [503, 503, 503, 503, 503, 503]),
    ("/standby_leader", [503, 503, 503, 503, 503, 503]),
    ("/asynchronous", [503, 503, 200, 200, 503, 503]),
    ("/async?lag=1048576", [503, 503, 200, 503, 503, 503]),
    ("/health", [200, 200, 200, 200, 200, 503]),
    ("/liveness", [200, 200, 200, 200, 200, 200]),
    ("/readiness", [200, 503, 200, 503, 200, 503]),
    ("/readiness?lag=1GB", [200, 503, 200, 200, 200, 503]),
    ("/readiness?lag=1kB&mode=write", [200, 503, 200, 503, 200, 503]),
];

#[tokio::test]
async fn sync_and_async_follow_the_sync_key() {
    let mut status = node(Node::ReplicaStreaming);
    status.sync_standby = true;
    let named = api(status);
    let other = api(node(Node::ReplicaStreaming));
    for (uri, when_named, when_not) in
        [("/sync", 200, 503), ("/synchronous", 200, 503), ("/async", 503, 200), ("/read-only-sync", 200, 503)]
    {
        assert_eq!(get(&named.router, uri).await.0, when_named, "{uri} on the named standby");
        assert_eq!(get(&other.router, uri).await.0, when_not, "{uri} on another standby");
    }
    let gauge = "patroni_sync_standby{scope=\"demo\",name=\"pg1\"}";
    assert!(get(&named.router, "/metrics").await.1.contains(&format!("{gauge} 1\n")));
    assert!(get(&other.router, "/metrics").await.1.contains(&format!("{gauge} 0\n")));
}

#[tokio::test]
async fn every_health_endpoint_answers_every_node_kind_and_method_like_patroni() {
    let mut failures = Vec::new();
    for (i, kind) in NODES.iter().enumerate() {
        let api = api(node(*kind));
        for (uri, codes) in MATRIX {
            for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
                let (code, body) = call(&api.router, method.clone(), uri, "", None).await;
                if code != codes[i] {
                    failures.push(format!("{method} {uri} on {kind:?}: {code}, expected {}", codes[i]));
                }
                let status_only =
                    method != Method::GET || uri.starts_with("/liveness") || uri.starts_with("/readiness");
                if status_only != body.is_empty() {
                    failures.push(format!("{method} {uri} on {kind:?}: body {body:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn health_check_body_is_the_node_document() {
    let api = api(node(Node::PrimaryWithLock));
    let (code, body) = get(&api.router, "/primary").await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["role"], "primary");
    assert_eq!(doc["xlog"]["location"], LEADER_AT);
    assert_eq!(doc["patroni"]["scope"], "demo");
    let (code, replica_body) = get(&api.router, "/replica").await;
    assert_eq!((code, serde_json::from_str::<Value>(&replica_body).unwrap()), (503, doc.clone()));
    let (code, patroni) = get(&api.router, "/patroni").await;
    assert_eq!((code, serde_json::from_str::<Value>(&patroni).unwrap()), (200, doc));
}

#[tokio::test]
async fn liveness_follows_the_ha_loop_not_postgres() {
    let ago = |secs| Instant::now().checked_sub(Duration::from_secs(secs));
    let mut primary = node(Node::PrimaryWithLock);
    primary.last_tick = ago(31);
    assert_eq!(get(&api(primary.clone()).router, "/liveness").await.0, 503, "primary silent for more than ttl");
    primary.paused = true;
    assert_eq!(get(&api(primary).router, "/liveness").await.0, 200, "paused: a stuck loop is tolerated");
    let mut replica = node(Node::ReplicaStreaming);
    replica.last_tick = ago(45);
    assert_eq!(get(&api(replica.clone()).router, "/liveness").await.0, 200, "replica: 2 x ttl");
    replica.last_tick = ago(61);
    assert_eq!(get(&api(replica).router, "/liveness").await.0, 503);
    let mut fresh = node(Node::Stopped);
    fresh.last_tick = None;
    assert_eq!(get(&api(fresh).router, "/liveness").await.0, 503, "never ticked");
}

#[tokio::test]
async fn readiness_needs_a_streaming_replica_with_a_known_leader_position() {
    let mut replica = node(Node::ReplicaStreaming);
    replica.streaming = false;
    assert_eq!(get(&api(replica.clone()).router, "/readiness").await.0, 503, "not streaming");
    replica.streaming = true;
    replica.leader_position = None;
    assert_eq!(get(&api(replica).router, "/readiness").await.0, 503, "leader position unknown");
    let mut replica = node(Node::ReplicaLagging);
    replica.received_position = Some(Lsn(LEADER_AT));
    let a = api(replica);
    assert_eq!(get(&a.router, "/readiness?mode=write").await.0, 200, "received all, replay behind");
    assert_eq!(get(&a.router, "/readiness?mode=apply").await.0, 503);
}

#[tokio::test]
async fn replica_tag_filters_match_custom_and_flag_tags() {
    let mut replica = node(Node::ReplicaStreaming);
    replica.tags.custom.insert("dc".into(), "east".into());
    replica.tags.nosync = true;
    replica.tags.failover_priority = 2;
    let a = api(replica);
    assert_eq!(get(&a.router, "/replica?tag_failover_priority=2").await.0, 200);
    assert_eq!(get(&a.router, "/replica?tag_failover_priority=1").await.0, 503);
    assert_eq!(get(&a.router, "/replica?tag_dc=east").await.0, 200);
    assert_eq!(get(&a.router, "/replica?tag_dc=east&tag_nosync=true").await.0, 200);
    assert_eq!(get(&a.router, "/replica?tag_dc=west").await.0, 503);
    assert_eq!(get(&a.router, "/replica?tag_rack=1").await.0, 503, "a tag the node does not have");
    assert_eq!(get(&a.router, "/read-only?tag_dc=west").await.0, 503);
    let mut primary = node(Node::PrimaryWithLock);
    primary.tags.custom.insert("dc".into(), "east".into());
    let a = api(primary);
    assert_eq!(get(&a.router, "/primary?tag_dc=west").await.0, 200, "leader checks ignore tags");
    assert_eq!(get(&a.router, "/read-only?tag_dc=west").await.0, 503);
}

#[tokio::test]
async fn bad_queries_paths_and_methods_are_refused() {
    let a = api(node(Node::ReplicaStreaming));
    let (code, body) = get(&a.router, "/replica?lag=lots").await;
    assert_eq!(code, 400);
    assert!(body.contains("lag"), "{body}");
    assert_eq!(get(&a.router, "/readiness?mode=fast").await.0, 400);
    assert_eq!(get(&a.router, "/no/such/endpoint").await.0, 404);
    assert_eq!(call(&a.router, Method::POST, "/primary", "", None).await.0, 405);
    assert_eq!(call(&a.router, Method::OPTIONS, "/primary", "", None).await.0, 503);
}

#[tokio::test]
async fn metrics_are_prometheus_text_with_patroni_names() {
    let a = api(node(Node::ReplicaStreaming));
    let (code, text) = get(&a.router, "/metrics").await;
    assert_eq!(code, 200);
    assert!(text.contains("patroni_replica{scope=\"demo\",name=\"pg1\"} 1\n"), "{text}");
    assert!(text.contains("patroni_primary{scope=\"demo\",name=\"pg1\"} 0\n"), "{text}");
    assert!(
        text.contains(&format!("patroni_xlog_replayed_location{{scope=\"demo\",name=\"pg1\"}} {}\n", LEADER_AT - 1024))
    );
}

#[tokio::test]
async fn mutating_endpoints_demand_basic_auth_and_reads_do_not() {
    let auth = Some(BasicAuth::new("admin", "s3cret"));
    let mut a = api_with(node(Node::ReplicaStreaming), auth, 4);
    let request = HttpRequest::builder().method(Method::POST).uri("/reload").body(Body::empty()).unwrap();
    let response = a.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Basic realm=\"pgha\"");
    assert_eq!(call(&a.router, Method::POST, "/reload", "", Some("admin:wrong")).await.0, 401);
    assert_eq!(call(&a.router, Method::PATCH, "/config", "{}", None).await.0, 401);
    assert_eq!(call(&a.router, Method::POST, "/switchover", "{not json", None).await.0, 401, "auth comes first");
    assert!(a.commands.try_recv().is_err(), "nothing reached the runtime");
    assert_eq!(
        call(&a.router, Method::POST, "/reload", "", Some("admin:s3cret")).await,
        (202, "reload scheduled".into())
    );
    assert!(matches!(a.commands.try_recv(), Ok(ApiCommand::Reload)));
    assert_eq!(get(&a.router, "/replica").await.0, 200);
    assert_eq!(get(&a.router, "/patroni").await.0, 200);
    assert_eq!(call(&a.router, Method::OPTIONS, "/replica", "", None).await.0, 200);
}

#[tokio::test]
async fn malformed_json_and_unknown_fields_are_400_with_the_reason() {
    let a = api(node(Node::PrimaryWithLock));
    let cases = [
        (Method::POST, "/switchover", "{not json", "key must be a string"),
        (Method::POST, "/switchover", r#"{"leader":"pg1","candidat":"pg2"}"#, "unknown field `candidat`"),
        (Method::POST, "/switchover", r#"{"candidate":"pg2"}"#, "only from a specific leader"),
        (Method::POST, "/failover", r#"{"leader":"pg1"}"#, "only to a specific candidate"),
        (Method::POST, "/switchover", r#"{"leader":"pg1","candidate":"pg1"}"#, "are the same"),
        (Method::POST, "/switchover", r#"{"leader":"pg1","scheduled_at":"2030-01-01T00:00"}"#, "timezone"),
        (Method::PATCH, "/config", "[1,2]", "JSON object"),
        (Method::PATCH, "/config", r#"{"ttl": 30"#, "EOF"),
        (Method::PUT, "/config", "", "EOF"),
        (Method::POST, "/restart", r#"{"role":"king"}"#, "primary, standby_leader, or replica"),
        (Method::POST, "/restart", r#"{"restart":"now"}"#, "unknown field `restart`"),
        (Method::POST, "/restart", r#"{"timeout":0}"#, "positive"),
        (Method::POST, "/restart", r#"{"schedule":"2030-01-01T00:00Z"}"#, "not supported"),
        (Method::POST, "/reinitialize", r#"{"force":"yes"}"#, "invalid type"),
    ];
    for (method, uri, body, reason) in cases {
        let (code, text) = call(&a.router, method.clone(), uri, body, None).await;
        assert_eq!(code, 400, "{method} {uri} {body}: {text}");
        assert!(text.contains(reason), "{method} {uri} {body}: {text:?} lacks {reason:?}");
    }
    let (code, text) =
        call(&a.router, Method::POST, "/switchover", r#"{"leader":"pg1","scheduled_at":"2001-01-01T00:00Z"}"#, None)
            .await;
    assert_eq!((code, text.as_str()), (422, "Cannot schedule switchover in the past"));
}

#[tokio::test]
async fn restart_reload_and_reinitialize_are_queued_for_the_runtime() {
    let mut a = api_with(node(Node::ReplicaStreaming), None, 1);
    assert_eq!(call(&a.router, Method::POST, "/restart", "", None).await.0, 202);
    assert_eq!(call(&a.router, Method::POST, "/reload", "", None).await.0, 503, "queue full");
    assert!(matches!(a.commands.try_recv(), Ok(ApiCommand::Restart)));
    // The runtime answers whether the reinitialize started; the API passes the answer on.
    for (force, answer, expected) in [
        (true, Ok(()), (200, "reinitialize started")),
        (false, Err("reinitialize already in progress"), (503, "reinitialize already in progress")),
    ] {
        let body = format!(r#"{{"force":{force}}}"#);
        let runtime = async {
            match a.commands.recv().await {
                Some(ApiCommand::Reinitialize { force: f, started }) if f == force => {
                    let _ = started.send(answer.map_err(str::to_string));
                }
                other => panic!("unexpected command {other:?}"),
            }
        };
        let ((code, text), ()) = tokio::join!(call(&a.router, Method::POST, "/reinitialize", &body, None), runtime);
        assert_eq!((code, text.as_str()), expected);
    }
    let conditional = r#"{"role":"primary"}"#;
    assert_eq!(call(&a.router, Method::POST, "/restart", conditional, None).await.0, 503, "not a primary");
    assert_eq!(call(&a.router, Method::POST, "/restart", r#"{"restart_pending":true}"#, None).await.0, 503);
    assert_eq!(call(&a.router, Method::POST, "/restart", r#"{"postgres_version":"15.4"}"#, None).await.0, 503);
    let newer = r#"{"postgres_version":"15.5","role":"replica","timeout":"30s"}"#;
    assert_eq!(call(&a.router, Method::POST, "/restart", newer, None).await.0, 202);
    assert_eq!(call(&a.router, Method::DELETE, "/restart", "", None).await.0, 404);

    let primary = api(node(Node::PrimaryWithLock));
    let (code, text) = call(&primary.router, Method::POST, "/reinitialize", "", None).await;
    assert_eq!((code, text.as_str()), (503, "I am the leader, can not reinitialize"));
    drop(a.commands);
    let (code, text) = call(&a.router, Method::POST, "/reload", "", None).await;
    assert_eq!(code, 503, "{text}");
}

#[tokio::test]
async fn dcs_endpoints_answer_503_when_the_dcs_is_down() {
    let a = api(node(Node::PrimaryWithLock));
    for uri in ["/cluster", "/history", "/config"] {
        let (code, text) = get(&a.router, uri).await;
        assert_eq!(code, 503, "{uri}");
        assert!(text.contains("DCS unavailable"), "{text}");
    }
    assert_eq!(call(&a.router, Method::PATCH, "/config", r#"{"ttl":20}"#, None).await.0, 503);
    assert_eq!(call(&a.router, Method::POST, "/switchover", r#"{"leader":"pg1"}"#, None).await.0, 503);
    // Health checks do not depend on the DCS.
    assert_eq!(get(&a.router, "/primary").await.0, 200);
}

#[tokio::test]
async fn serve_answers_haproxy_options_checks_on_a_real_socket_and_shuts_down() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (status_tx, status_rx) = watch::channel(node(Node::ReplicaStreaming));
    let (tx, _rx) = mpsc::channel(1);
    let state = ApiState::new(status_rx, Arc::new(DownDcs), tx);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, None, state, async move {
        let _ = stop_rx.await;
    }));
    let status_line = |path: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("OPTIONS {path} HTTP/1.1\r\nHost: pg1\r\nConnection: close\r\n\r\n");
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap_or_default().to_string()
    };
    assert_eq!(status_line("/replica").await, "HTTP/1.1 200 OK");
    assert_eq!(status_line("/primary").await, "HTTP/1.1 503 Service Unavailable");
    // A new status published by the runtime is seen by the next check.
    status_tx.send_modify(|s| s.tags.noloadbalance = true);
    assert_eq!(status_line("/replica").await, "HTTP/1.1 503 Service Unavailable");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

use harness::pki::TestPki as Pki;

fn pki(dir: &std::path::Path) -> Pki {
    Pki::create(dir, "ctl").unwrap()
}

/// An HTTPS client that trusts only the test CA, with the client certificate if `identity`.
fn https_client(p: &Pki, identity: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(p.ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(10));
    if identity {
        builder = builder.identity(reqwest::Identity::from_pem(p.client_identity_pem.as_bytes()).unwrap());
    }
    builder.build().unwrap()
}

/// `serve` over HTTPS with `verify_client`; the sender stops it.
async fn serve_https(
    p: &Pki,
    verify_client: crate::config::VerifyClient,
    auth: Option<BasicAuth>,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
    mpsc::Receiver<ApiCommand>,
) {
    let api = crate::config::ApiConfig {
        certfile: Some(p.server_cert.clone()),
        keyfile: Some(p.server_key.clone()),
        cafile: (verify_client != crate::config::VerifyClient::None).then(|| p.ca.clone()),
        verify_client,
        ..Default::default()
    };
    let tls = ApiTls::from_config(&api).unwrap();
    assert!(tls.is_some());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_status_tx, status_rx) = watch::channel(node(Node::ReplicaStreaming));
    let (tx, rx) = mpsc::channel(4);
    let state = ApiState::new(status_rx, Arc::new(DownDcs), tx)
        .with_auth(auth)
        .with_client_certificates_for_changes(verify_client == crate::config::VerifyClient::Optional);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, tls, state, async move {
        let _ = stop_rx.await;
    }));
    (addr, stop_tx, server, rx)
}

#[tokio::test]
async fn https_serves_clients_that_trust_its_ca_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (addr, stop, server, _commands) = serve_https(&p, crate::config::VerifyClient::None, None).await;
    let url = format!("https://127.0.0.1:{}/replica", addr.port());
    let answer = https_client(&p, false).get(&url).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    // A client that does not trust the CA, and a plain HTTP request, get nothing.
    let untrusting = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let err = untrusting.get(&url).send().await.unwrap_err();
    assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    let plain = https_client(&p, false).get(format!("http://127.0.0.1:{}/replica", addr.port())).send().await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    // A client that never starts its handshake holds up no one else.
    let _silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(https_client(&p, false).get(&url).send().await.unwrap().status().as_u16(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn verify_client_required_refuses_a_client_without_a_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (addr, stop, server, _commands) = serve_https(&p, crate::config::VerifyClient::Required, None).await;
    let url = format!("https://127.0.0.1:{}/replica", addr.port());
    assert!(https_client(&p, false).get(&url).send().await.is_err(), "a client without a certificate got an answer");
    assert_eq!(https_client(&p, true).get(&url).send().await.unwrap().status().as_u16(), 200);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn verify_client_optional_keeps_reads_open_and_changes_need_a_certificate_and_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let auth = Some(BasicAuth::new("admin", "s3cret"));
    let (addr, stop, server, mut commands) = serve_https(&p, crate::config::VerifyClient::Optional, auth).await;
    let base = format!("https://127.0.0.1:{}", addr.port());
    let (anonymous, with_cert) = (https_client(&p, false), https_client(&p, true));
    assert_eq!(anonymous.get(format!("{base}/replica")).send().await.unwrap().status().as_u16(), 200);
    let refused = anonymous.post(format!("{base}/reload")).basic_auth("admin", Some("s3cret")).send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 403);
    assert!(refused.text().await.unwrap().contains("needs a client certificate"));
    // The certificate does not replace the credentials.
    assert_eq!(with_cert.post(format!("{base}/reload")).send().await.unwrap().status().as_u16(), 401);
    assert!(commands.try_recv().is_err(), "a refused request reached the runtime");
    let accepted = with_cert.post(format!("{base}/reload")).basic_auth("admin", Some("s3cret")).send().await.unwrap();
    assert_eq!(accepted.status().as_u16(), 202);
    assert!(matches!(commands.try_recv(), Ok(ApiCommand::Reload)));
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), server).await.unwrap().unwrap().unwrap();
}

#[test]
fn unreadable_or_empty_tls_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let api = |cert: &std::path::Path, key: &std::path::Path| crate::config::ApiConfig {
        certfile: Some(cert.to_path_buf()),
        keyfile: Some(key.to_path_buf()),
        ..Default::default()
    };
    let missing = dir.path().join("nope.crt");
    let e = ApiTls::from_config(&api(&missing, &p.server_key)).unwrap_err().to_string();
    assert!(e.starts_with(&format!("api.certfile: cannot read {}", missing.display())), "{e}");
    let e = ApiTls::from_config(&api(&p.server_cert, &p.server_cert)).unwrap_err().to_string();
    assert_eq!(e, format!("api.keyfile: {} holds no private key in PEM form", p.server_cert.display()));
    let e = ApiTls::from_config(&api(&p.server_key, &p.server_key)).unwrap_err().to_string();
    assert_eq!(e, format!("api.certfile: {} holds no certificate in PEM form", p.server_key.display()));
}

#[tokio::test]
async fn a_restore_is_for_the_leader_with_exactly_one_target_and_passes_the_runtimes_answer_on() {
    let replica = api(node(Node::ReplicaStreaming));
    let (code, text) =
        call(&replica.router, Method::POST, "/restore", r#"{"target_time":"2026-01-01 00:00+00"}"#, None).await;
    assert_eq!(code, 503, "{text}");
    assert!(text.starts_with("I am not the leader"), "{text}");
    let mut a = api_with(node(Node::PrimaryWithLock), None, 4);
    for body in ["", "{}", r#"{"target_time":"x","immediate":true}"#, r#"{"target_lsn":"0/1","target_xid":5}"#] {
        let (code, text) = call(&a.router, Method::POST, "/restore", body, None).await;
        assert_eq!(code, 400, "{body}: {text}");
    }
    assert_eq!(call(&a.router, Method::POST, "/restore", r#"{"target_time":"x","when":1}"#, None).await.0, 400);
    assert!(a.commands.try_recv().is_err(), "a refused request reached the runtime");
    for (answer, expected) in [
        (Ok(()), (200, "restore started")),
        (
            Err("a restore (target_time x) is already in progress"),
            (503, "a restore (target_time x) is already in progress"),
        ),
    ] {
        let runtime = async {
            match a.commands.recv().await {
                Some(ApiCommand::Restore { request, started }) => {
                    assert_eq!(request.target_xid, Some(42));
                    assert_eq!(request.set.as_deref(), Some("20260101-000000F"));
                    assert_eq!(request.describe(), "target_xid 42 from backup 20260101-000000F");
                    let _ = started.send(answer.map_err(str::to_string));
                }
                other => panic!("unexpected command {other:?}"),
            }
        };
        let body = r#"{"target_xid":42,"set":"20260101-000000F"}"#;
        let ((code, text), ()) = tokio::join!(call(&a.router, Method::POST, "/restore", body, None), runtime);
        assert_eq!((code, text.as_str()), expected);
    }
}

#[tokio::test]
async fn a_backup_is_for_the_leader_and_passes_the_runtimes_answer_on() {
    let replica = api(node(Node::ReplicaStreaming));
    let (code, text) = call(&replica.router, Method::POST, "/backup", "", None).await;
    assert_eq!(code, 503, "{text}");
    assert!(text.starts_with("I am not the leader"), "{text}");
    let mut a = api_with(node(Node::PrimaryWithLock), None, 4);
    for body in [r#"{"type":"differential"}"#, r#"{"kind":"full"}"#, "[1]"] {
        let (code, text) = call(&a.router, Method::POST, "/backup", body, None).await;
        assert_eq!(code, 400, "{body}: {text}");
    }
    assert!(a.commands.try_recv().is_err(), "a refused request reached the runtime");
    for (body, kind, answer, expected) in [
        ("", "full", Ok(()), (200, "backup started")),
        (
            r#"{"type":"incr"}"#,
            "incr",
            Err("a full backup is already running"),
            (503, "a full backup is already running"),
        ),
    ] {
        let runtime = async {
            match a.commands.recv().await {
                Some(ApiCommand::Backup { kind: k, started }) if k == kind => {
                    let _ = started.send(answer.map_err(str::to_string));
                }
                other => panic!("unexpected command {other:?}"),
            }
        };
        let ((code, text), ()) = tokio::join!(call(&a.router, Method::POST, "/backup", body, None), runtime);
        assert_eq!((code, text.as_str()), expected);
    }
}
