//! A member's answer to DCS client requests (`ClientApi`): reads and writes run on the Raft leader
//! (a follower forwards them once, over its own authenticated connection), watches and status are
//! served from what this member applied. Owns the mapping of openraft's errors to `ClientError`;
//! must not retry a write whose outcome is unknown.

use super::protocol::{ClientError, Envelope, MemberStatus, Reply, Request};
use super::state_machine::Shared;
use super::types::{node_id, MemberNode, TypeConfig};
use super::watch_hub::Poll;
use crate::keyspace::{ApplyError, Command, LeaseClockError, Outcome};
use crate::raft::{ClientApi, ClientApiConnection, ClientCallError, NetworkConfig, SharedSecret};
use openraft::error::{ChangeMembershipError, CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::Raft;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio::time::Instant;

/// Longest wait of one watch poll.
const MAX_POLL_WAIT: Duration = Duration::from_secs(5);
/// Idle forwarding connections kept to the leader.
const POOL_SIZE: usize = 8;

type ForwardError = openraft::error::ForwardToLeader<u64, MemberNode>;

/// The client API of one member.
pub struct MemberApi {
    raft: Raft<TypeConfig>,
    shared: Arc<Shared>,
    name: String,
    id: u64,
    secret: SharedSecret,
    network: NetworkConfig,
    op_timeout: Duration,
    /// How this member reaches its peers (see `RoutedNetwork`).
    routes: BTreeMap<u64, String>,
    pool: Mutex<Vec<(String, ClientApiConnection)>>,
}

enum Local {
    Done(Reply),
    Forward(ForwardError),
}

/// What a membership change returns.
type MembershipResult =
    Result<openraft::raft::ClientWriteResponse<TypeConfig>, RaftError<u64, ClientWriteError<u64, MemberNode>>>;

/// The pause before a join's step is tried again after a refusal for a change in progress.
const JOIN_RETRY: Duration = Duration::from_millis(50);

fn unavailable(e: impl std::fmt::Display) -> Local {
    Local::Done(Reply::Failed(ClientError::Unavailable(e.to_string())))
}

impl MemberApi {
    pub fn new(
        raft: Raft<TypeConfig>,
        shared: Arc<Shared>,
        name: &str,
        secret: SharedSecret,
        network: NetworkConfig,
        op_timeout: Duration,
        routes: BTreeMap<u64, String>,
    ) -> Self {
        MemberApi {
            raft,
            shared,
            name: name.to_string(),
            id: node_id(name),
            secret,
            network,
            op_timeout,
            routes,
            pool: Mutex::new(Vec::new()),
        }
    }

    /// Serves one request (this is what the listener calls, decoded).
    pub async fn serve(&self, envelope: Envelope) -> Reply {
        match envelope.request {
            Request::Watch { prefix, from, wait } => {
                match self.shared.hub.poll(&prefix, from, wait.min(MAX_POLL_WAIT)).await {
                    Poll::Events { events, next } => Reply::Events { events, next },
                    Poll::Compacted { from } => Reply::Compacted { from },
                }
            }
            Request::Status => Reply::Status(self.status()),
            request => match self.on_leader(&request).await {
                Local::Done(reply) => reply,
                Local::Forward(_) if envelope.forwarded => Reply::Failed(ClientError::NotLeader { leader: None }),
                Local::Forward(ForwardError { leader_id: Some(id), leader_node: Some(node) }) => {
                    let addr = self.routes.get(&id).unwrap_or(&node.addr).clone();
                    self.forward(&addr, request).await
                }
                Local::Forward(_) => Reply::Failed(ClientError::NotLeader { leader: None }),
            },
        }
    }

    /// This member's view of the group.
    pub fn status(&self) -> MemberStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let name_of = |id: &u64| membership.get_node(id).map(|n| n.name.clone()).unwrap_or_else(|| id.to_string());
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let learners = membership.learner_ids().filter(|id| !voters.contains(id)).map(|id| name_of(&id)).collect();
        MemberStatus {
            name: self.name.clone(),
            id: self.id,
            state: format!("{:?}", metrics.state),
            term: metrics.current_term,
            leader: metrics.current_leader.map(|id| name_of(&id)),
            last_applied_index: metrics.last_applied.map(|l| l.index),
            revision: self.shared.read().keyspace.revision(),
            voters: voters.iter().map(name_of).collect(),
            learners,
        }
    }

    /// Confirms with a quorum that we still lead and waits until everything committed before is
    /// applied here (openraft's read index).
    async fn barrier(&self) -> Result<(), Local> {
        match tokio::time::timeout(self.op_timeout, self.raft.ensure_linearizable()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => Err(Local::Forward(f)),
            Ok(Err(e)) => Err(unavailable(format!("cannot confirm Raft leadership: {e}"))),
            Err(_) => Err(unavailable(format!("no Raft quorum confirmed leadership within {:?}", self.op_timeout))),
        }
    }

    async fn write(&self, command: Command) -> Result<crate::keyspace::Applied, Local> {
        match tokio::time::timeout(self.op_timeout, self.raft.client_write(command)).await {
            Ok(Ok(resp)) => Ok(resp.data),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Err(Local::Forward(f)),
            Ok(Err(e)) => Err(unavailable(format!("Raft write failed: {e}"))),
            Err(_) => {
                Err(unavailable(format!("Raft write not committed within {:?}; outcome unknown", self.op_timeout)))
            }
        }
    }

    async fn membership_change(&self, change: impl std::future::Future<Output = MembershipResult>) -> Local {
        // Adding a learner waits for it to catch up: allow more than one op timeout.
        let outcome = tokio::time::timeout(self.op_timeout * 15, change).await;
        self.membership_outcome(outcome)
    }

    /// A join's step (add a learner, make it a voter): both leave the group as they found it
    /// when repeated. openraft refuses a change while the previous one is not committed yet
    /// (another join, or the first entries of a leader just elected); the leader tries again
    /// until it can or the time is up, instead of failing the join.
    async fn join_step<F, Fut>(&self, change: F) -> Local
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = MembershipResult>,
    {
        let deadline = Instant::now() + self.op_timeout * 15;
        loop {
            let outcome = tokio::time::timeout_at(deadline, change()).await;
            let busy = matches!(
                outcome,
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(_)
                ))))
            );
            if busy && Instant::now() + JOIN_RETRY < deadline {
                tokio::time::sleep(JOIN_RETRY).await;
                continue;
            }
            return self.membership_outcome(outcome);
        }
    }

    fn membership_outcome(&self, outcome: Result<MembershipResult, tokio::time::error::Elapsed>) -> Local {
        match outcome {
            Ok(Ok(_)) => Local::Done(Reply::Status(self.status())),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => Local::Forward(f),
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Local::Done(Reply::Failed(ClientError::Rejected(format!("membership change refused: {e}"))))
            }
            Ok(Err(e)) => unavailable(format!("membership change failed: {e}")),
            Err(_) => unavailable("membership change did not complete in time; check `status`"),
        }
    }

    async fn on_leader(&self, request: &Request) -> Local {
        let done = |r| Local::Done(r);
        let failed = |e| Local::Done(Reply::Failed(e));
        match request {
            Request::Range { prefix } => match self.barrier().await {
                Ok(()) => done(Reply::Range(self.shared.read().keyspace.range_prefix(prefix))),
                Err(local) => local,
            },
            Request::Txn(txn) => match self.write(Command::Txn(txn.clone())).await {
                Ok(applied) => match applied.outcome {
                    Ok(Outcome::Txn(resp)) => done(Reply::Txn(resp)),
                    Ok(other) => failed(ClientError::Rejected(format!("unexpected outcome {other:?}"))),
                    Err(e) => failed(apply_error(e)),
                },
                Err(local) => local,
            },
            Request::LeaseGrant { ttl } => match self.write(Command::LeaseGrant { ttl: *ttl }).await {
                Ok(applied) => match applied.outcome {
                    Ok(Outcome::LeaseGranted { lease, .. }) => done(Reply::LeaseGranted { lease }),
                    Ok(other) => failed(ClientError::Rejected(format!("unexpected outcome {other:?}"))),
                    Err(e) => failed(apply_error(e)),
                },
                Err(local) => local,
            },
            Request::LeaseRevoke { lease } => match self.write(Command::LeaseRevoke { lease: *lease }).await {
                Ok(applied) => match applied.outcome {
                    Ok(_) => done(Reply::Revoked),
                    Err(e) => failed(apply_error(e)),
                },
                Err(local) => local,
            },
            Request::LeaseKeepAlive { lease } => {
                if let Err(local) = self.barrier().await {
                    return local;
                }
                match self.shared.clock().keep_alive(*lease, Instant::now()) {
                    Ok(ttl) => done(Reply::KeptAlive { ttl }),
                    // Leading, but the lease task has not yet re-armed the leases: retry shortly.
                    Err(LeaseClockError::NotLeader) => failed(ClientError::NotLeader { leader: None }),
                    Err(LeaseClockError::LeaseNotFound(l) | LeaseClockError::Expired(l)) => {
                        failed(ClientError::LeaseNotFound(l))
                    }
                }
            }
            Request::AddLearner { name, addr } => {
                let node = MemberNode { name: name.clone(), addr: addr.clone() };
                self.join_step(|| self.raft.add_learner(node_id(name), node.clone(), true)).await
            }
            Request::AddVoter { name } => {
                let add = || openraft::ChangeMembers::AddVoterIds(BTreeSet::from([node_id(name)]));
                self.join_step(|| self.raft.change_membership(add(), false)).await
            }
            Request::ChangeMembership { voters } => {
                let ids: BTreeSet<u64> = voters.iter().map(|n| node_id(n)).collect();
                self.membership_change(self.raft.change_membership(ids, false)).await
            }
            Request::RemoveMember { name } => {
                let id = node_id(name);
                let metrics = self.raft.metrics().borrow().clone();
                if metrics.membership_config.membership().get_node(&id).is_none() {
                    let known = self.status();
                    let mut names = known.voters.clone();
                    names.extend(known.learners);
                    return failed(ClientError::Rejected(format!(
                        "{name} is not a member of the Raft group (members: {})",
                        names.join(", ")
                    )));
                }
                let voters: BTreeSet<u64> =
                    metrics.membership_config.membership().voter_ids().filter(|v| *v != id).collect();
                if voters.is_empty() {
                    return failed(ClientError::Rejected("cannot remove the last voter".into()));
                }
                let is_voter = metrics.membership_config.membership().voter_ids().any(|v| v == id);
                if is_voter {
                    // retain = false: a voter left out is removed from the group, not kept as a
                    // learner (a leader that removes itself steps down once it is committed).
                    self.membership_change(self.raft.change_membership(voters, false)).await
                } else {
                    let gone = openraft::ChangeMembers::RemoveNodes(BTreeSet::from([id]));
                    self.membership_change(self.raft.change_membership(gone, false)).await
                }
            }
            Request::Watch { .. } | Request::Status => failed(ClientError::Rejected("served locally".into())),
        }
    }

    /// Sends a request on to the leader at `addr`, once.
    async fn forward(&self, addr: &str, request: Request) -> Reply {
        let envelope = Envelope { forwarded: true, request };
        let Ok(json) = serde_json::to_value(&envelope) else {
            return Reply::Failed(ClientError::Rejected("cannot encode the request".into()));
        };
        let pooled = {
            let mut pool = self.pool.lock().await;
            pool.iter().position(|(a, _)| a == addr).map(|i| pool.swap_remove(i).1)
        };
        let mut conn = match pooled {
            Some(conn) => conn,
            None => match ClientApiConnection::connect(addr, &self.secret, &self.network, self.op_timeout).await {
                Ok(conn) => conn,
                // Never sent: nothing was applied.
                Err(e) => {
                    tracing::debug!(leader = addr, error = %e, "cannot reach the Raft leader to forward");
                    return Reply::Failed(ClientError::NotLeader { leader: None });
                }
            },
        };
        // The leader bounds its own work by op_timeout; allow for the hop.
        match conn.call(&json, self.op_timeout * 2).await {
            Ok(answer) => {
                let mut pool = self.pool.lock().await;
                if pool.len() < POOL_SIZE {
                    pool.push((addr.to_string(), conn));
                }
                serde_json::from_value(answer).unwrap_or_else(|e| {
                    Reply::Failed(ClientError::Unavailable(format!("bad answer from the leader: {e}")))
                })
            }
            Err(ClientCallError::Refused(m)) => Reply::Failed(ClientError::Rejected(m)),
            Err(e) => Reply::Failed(ClientError::Unavailable(format!("forwarding to the Raft leader at {addr}: {e}"))),
        }
    }
}

fn apply_error(e: ApplyError) -> ClientError {
    match e {
        ApplyError::LeaseNotFound(l) => ClientError::LeaseNotFound(l),
        other => ClientError::Rejected(other.to_string()),
    }
}

#[async_trait::async_trait]
impl ClientApi for MemberApi {
    async fn handle(&self, request: serde_json::Value) -> Result<serde_json::Value, String> {
        let envelope: Envelope = serde_json::from_value(request).map_err(|e| format!("not a pgha DCS request: {e}"))?;
        serde_json::to_value(self.serve(envelope).await).map_err(|e| format!("cannot encode the reply: {e}"))
    }
}

/// Peers as openraft's initial membership.
pub fn initial_nodes(peers: &BTreeMap<String, String>) -> BTreeMap<u64, MemberNode> {
    peers.iter().map(|(name, addr)| (node_id(name), MemberNode { name: name.clone(), addr: addr.clone() })).collect()
}
