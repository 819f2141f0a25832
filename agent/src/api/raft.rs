//! The built-in Raft group through the REST API: `GET /raft` (leader, term, voters, learners,
//! as this agent's member sees them) and `DELETE /raft/members/<name>` (take a node gone for good
//! out of the group; authenticated like every changing endpoint). 404 on an etcd cluster.

use super::{ApiError, ApiState};
use axum::extract::{Path, State};
use axum::Json;
use consensus::kv::KvError;
use consensus::raft_member::protocol::{Reply, Request};
use consensus::raft_store::RaftStore;
use std::sync::Arc;

fn group(state: &ApiState) -> Result<&Arc<RaftStore>, ApiError> {
    state.raft.as_ref().ok_or_else(|| ApiError::NotFound("this cluster's DCS is etcd, not the built-in Raft".into()))
}

fn failed(e: KvError) -> ApiError {
    match e {
        KvError::Rejected(m) => ApiError::PreconditionFailed(m),
        other => ApiError::Unavailable(format!("the Raft group did not answer: {other}")),
    }
}

/// `GET /raft`.
pub(crate) async fn get_raft(State(state): State<ApiState>) -> Result<Json<serde_json::Value>, ApiError> {
    match group(&state)?.request(Request::Status).await.map_err(failed)? {
        Reply::Status(s) => Ok(Json(serde_json::to_value(s).map_err(|e| ApiError::Corrupt(e.to_string()))?)),
        Reply::Failed(e) => Err(ApiError::Unavailable(e.to_string())),
        other => Err(ApiError::Corrupt(format!("unexpected reply {other:?}"))),
    }
}

/// `DELETE /raft/members/<name>`.
pub(crate) async fn delete_member(
    State(state): State<ApiState>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let status = group(&state)?.remove(&name).await.map_err(failed)?;
    tracing::info!(member = %name, voters = %status.voters.join(","), "raft: member removed from the group through the REST API");
    Ok(Json(serde_json::to_value(status).map_err(|e| ApiError::Corrupt(e.to_string()))?))
}
