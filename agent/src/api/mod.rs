//! The agent's Patroni-compatible REST API: health checks for load balancers and probes, the node
//! and cluster status documents, `/metrics`, and the endpoints that change things (dynamic config,
//! switchover, failover, restart, reload, reinitialize) behind HTTP Basic auth, over HTTP or HTTPS
//! (with client certificates if asked).
//!
//! It reads the runtime's published `NodeStatus` and the DCS, and never touches PostgreSQL: actions
//! on the local node are handed to the runtime as `ApiCommand`s. Health checks never wait on the DCS.

mod actions;
mod auth;
mod cluster;
mod config;
mod health;
mod metrics;
mod raft;
mod status_doc;
#[cfg(test)]
mod tests;
pub(crate) use consensus::cluster::timestamp;
mod tls;

pub use auth::BasicAuth;
pub use health::parse_size;
pub use tls::{ApiPeer, ApiTls, ApiTlsError};

use crate::status::NodeStatus;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use consensus::dcs::{ClusterSnapshot, Dcs, DcsError};
use serde::de::DeserializeOwned;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// A request for the runtime to act on the local PostgreSQL, queued by the API.
#[derive(Debug)]
pub enum ApiCommand {
    /// Restart PostgreSQL (the API has already checked the request's conditions).
    Restart,
    /// Re-read the configuration and reload PostgreSQL (SIGHUP).
    Reload,
    /// Throw the data directory away and clone it again from the leader (replicas only), in the
    /// background; `force` cancels one already running. The runtime answers on `started` whether
    /// it started (Err says why not, e.g. "reinitialize already in progress").
    Reinitialize { force: bool, started: tokio::sync::oneshot::Sender<Result<(), String>> },
    /// Restore the running cluster to a point in time (the leader only): the data directory is
    /// moved aside and restored from the backup repository in the background while the lock is
    /// kept. The runtime answers on `started` whether it started.
    Restore { request: RestoreRequest, started: tokio::sync::oneshot::Sender<Result<(), String>> },
    /// Take a base backup of this node (`full` or `incr`) in the background; the runtime
    /// answers on `started` whether it started.
    Backup { kind: String, started: tokio::sync::oneshot::Sender<Result<(), String>> },
}

/// `POST /restore`'s body: one recovery target (as `[bootstrap]` takes them) and optionally the
/// backup to start from.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub target_time: Option<String>,
    pub target_lsn: Option<String>,
    pub target_xid: Option<u64>,
    pub target_name: Option<String>,
    #[serde(default)]
    pub immediate: bool,
    /// The backup set to restore (`pgha backup list`); the newest before the target when absent.
    pub set: Option<String>,
}

impl RestoreRequest {
    /// The target as the log and `/patroni` name it: `target_time 2026-05-01 14:03:27+00`.
    pub fn describe(&self) -> String {
        let target = match (&self.target_time, &self.target_lsn, self.target_xid, &self.target_name) {
            (Some(t), ..) => format!("target_time {t}"),
            (_, Some(l), ..) => format!("target_lsn {l}"),
            (_, _, Some(x), _) => format!("target_xid {x}"),
            (.., Some(n)) => format!("target_name {n}"),
            _ => "the end of the backup (immediate)".to_string(),
        };
        match &self.set {
            Some(set) => format!("{target} from backup {set}"),
            None => target,
        }
    }

    /// The same target as `[bootstrap]` fields, whose checks and restore arguments it shares.
    pub fn as_bootstrap(&self) -> crate::config::BootstrapSection {
        crate::config::BootstrapSection {
            method: crate::config::BootstrapMethod::Restore,
            backup_config: None,
            target_time: self.target_time.clone(),
            target_lsn: self.target_lsn.clone(),
            target_xid: self.target_xid,
            target_name: self.target_name.clone(),
            immediate: self.immediate,
            set: self.set.clone(),
        }
    }
}

/// Everything the API reads from and hands requests to.
#[derive(Clone)]
pub struct ApiState {
    /// The node status the runtime publishes after every HA tick.
    pub status: watch::Receiver<NodeStatus>,
    pub dcs: Arc<dyn Dcs>,
    /// Credentials required on POST/PUT/PATCH/DELETE; `None` leaves them open.
    pub auth: Option<BasicAuth>,
    /// Restart/reload/reinitialize requests for the runtime (bounded: a full queue answers 503).
    pub commands: mpsc::Sender<ApiCommand>,
    /// Bound on every single DCS call.
    pub dcs_timeout: Duration,
    /// How long POST /switchover and /failover wait for the new leader before answering
    /// "status unknown" (Patroni waits 2 x max(10 s, loop_wait)).
    pub switchover_wait: Duration,
    /// The built-in Raft group (GET /raft, DELETE /raft/members/<name>); None on etcd.
    pub raft: Option<Arc<consensus::raft_store::RaftStore>>,
    /// `api.verify_client = optional`: POST, PUT, PATCH and DELETE need a client certificate.
    pub changes_need_client_certificate: bool,
}

impl ApiState {
    /// An API without authentication, with a 5 s DCS timeout and a 30 s switchover wait.
    pub fn new(status: watch::Receiver<NodeStatus>, dcs: Arc<dyn Dcs>, commands: mpsc::Sender<ApiCommand>) -> ApiState {
        ApiState {
            status,
            dcs,
            auth: None,
            commands,
            dcs_timeout: Duration::from_secs(5),
            switchover_wait: Duration::from_secs(30),
            raft: None,
            changes_need_client_certificate: false,
        }
    }

    pub fn with_client_certificates_for_changes(mut self, needed: bool) -> ApiState {
        self.changes_need_client_certificate = needed;
        self
    }

    pub fn with_raft(mut self, raft: Option<Arc<consensus::raft_store::RaftStore>>) -> ApiState {
        self.raft = raft;
        self
    }

    pub fn with_auth(mut self, auth: Option<BasicAuth>) -> ApiState {
        self.auth = auth;
        self
    }

    /// A copy of the current node status.
    fn node(&self) -> NodeStatus {
        self.status.borrow().clone()
    }

    /// Runs one DCS call with the API's timeout.
    async fn dcs_call<T>(&self, call: impl Future<Output = Result<T, DcsError>>) -> Result<T, ApiError> {
        match tokio::time::timeout(self.dcs_timeout, call).await {
            Ok(result) => result.map_err(ApiError::Dcs),
            Err(_) => Err(ApiError::DcsTimeout(self.dcs_timeout)),
        }
    }

    async fn snapshot(&self) -> Result<ClusterSnapshot, ApiError> {
        self.dcs_call(self.dcs.snapshot()).await
    }

    /// The longest any request may take: a switchover wait plus a few DCS calls.
    fn request_timeout(&self) -> Duration {
        self.switchover_wait + self.dcs_timeout * 4 + Duration::from_secs(1)
    }
}

/// Why a request failed; the message is the response body (plain text, as Patroni answers).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON, unknown fields, a missing required field.
    #[error("{0}")]
    BadRequest(String),
    /// A request the cluster's state does not allow (wrong leader, unknown candidate, ...).
    #[error("{0}")]
    PreconditionFailed(String),
    /// Well-formed but unusable (a schedule in the past or unparseable), as Patroni answers 422.
    #[error("{0}")]
    Unprocessable(String),
    #[error("{0}")]
    NotFound(String),
    /// A compare-and-set lost against concurrent writers too many times.
    #[error("{0}")]
    Conflict(String),
    #[error("DCS error: {0}; retry once the DCS is reachable")]
    Dcs(DcsError),
    #[error("the DCS did not answer within {0:?}; retry once it is reachable")]
    DcsTimeout(Duration),
    /// The node cannot do it now (the runtime's queue is full, conditions not met, ...).
    #[error("{0}")]
    Unavailable(String),
    /// A DCS key holds something that is not what Patroni or pgha writes.
    #[error("{0}")]
    Corrupt(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Dcs(_) | ApiError::DcsTimeout(_) | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Corrupt(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status().is_server_error() {
            tracing::warn!("REST API request failed: {self}");
        }
        (self.status(), self.to_string()).into_response()
    }
}

/// Parses a JSON request body strictly: 400 with serde's reason on malformed JSON or unknown fields.
fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("invalid request body: {e}")))
}

/// Like `parse_body`, but an empty body means all defaults.
fn parse_optional_body<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    parse_body(body)
}

/// The API's routes. Mutating methods pass the Basic auth check first, so a request without
/// credentials is refused before its body is even read.
pub fn router(state: ApiState) -> Router {
    let mut router = Router::new();
    for (path, check) in health::ROUTES {
        router = router.route(path, health::method_router(*check));
    }
    let timeout = state.request_timeout();
    router
        .route("/patroni", get(status_doc::get_patroni))
        .route("/metrics", get(metrics::get_metrics))
        .route("/cluster", get(cluster::get_cluster))
        .route("/history", get(cluster::get_history))
        .route("/config", get(cluster::get_config).patch(config::patch_config).put(config::put_config))
        .route("/switchover", post(actions::post_switchover).delete(actions::delete_switchover))
        .route("/failover", post(actions::post_failover))
        .route("/restart", post(actions::post_restart).delete(actions::delete_restart))
        .route("/reload", post(actions::post_reload))
        .route("/reinitialize", post(actions::post_reinitialize))
        .route("/restore", post(actions::post_restore))
        .route("/backup", post(actions::post_backup))
        .route("/raft", get(raft::get_raft))
        .route("/raft/members/{name}", axum::routing::delete(raft::delete_member))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_auth))
        .layer(middleware::from_fn(move |req: Request, next: Next| bounded(timeout, req, next)))
        .with_state(state)
}

/// Answers 503 instead of letting a request hang past `limit`.
async fn bounded(limit: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, format!("request timed out after {limit:?}")).into_response(),
    }
}

/// Serves the API on `listener` (HTTPS when `tls` is given) until `shutdown` resolves, then
/// finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<ApiTls>,
    state: ApiState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            https = tls.is_some(),
            auth = state.auth.is_some(),
            client_certificate_for_changes = state.changes_need_client_certificate,
            "REST API listening"
        );
    }
    let app = router(state).into_make_service_with_connect_info::<ApiPeer>();
    match tls {
        None => axum::serve(listener, app).with_graceful_shutdown(shutdown).await,
        Some(tls) => axum::serve(tls::TlsListener::new(listener, tls)?, app).with_graceful_shutdown(shutdown).await,
    }
}
