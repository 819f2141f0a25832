//! `decide`: one tick of the HA loop as a pure function. Every branch returns the actions to take,
//! in order (the runtime stops at the first that fails), and one sentence an operator can read.
//!
//! Beyond Patroni: a replica that has never streamed from the last leader's timeline, or whose
//! position is unknown, never promotes itself automatically.

use super::view::{ClusterView, FailoverRequest, HaConfig, LocalState, PeerProbe, PgState, Role};
use super::Lsn;
use std::time::Instant;

/// Something the runtime does for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Race for the `initialize` key; if won, initdb, start as primary and take the leader lock.
    Bootstrap,
    /// Clone the data directory from `source` with pg_basebackup.
    CloneFrom {
        source: String,
    },
    /// Start PostgreSQL as a replica following `leader` (read-only without one).
    StartReplica {
        leader: Option<String>,
    },
    /// Start PostgreSQL as primary (we hold the lock).
    StartPrimary,
    /// Refresh our leader lock.
    RefreshLock,
    /// Take the leader lock if nobody holds it (later actions run only if this succeeds).
    AcquireLock,
    ReleaseLock,
    /// Promote the local replica to primary.
    Promote,
    /// Stop accepting writes now: restart read-only (as a replica of `leader` if known).
    Demote {
        leader: Option<String>,
    },
    /// Re-point the replica at `leader`.
    Follow {
        leader: String,
    },
    /// Rewind the data directory against `leader` (timelines diverged), then follow it.
    Rewind {
        leader: String,
    },
    /// Ask every other member for its role and WAL position (the leader race needs it).
    ProbePeers,
    /// kill -9 the local postmaster and its children (hung, or a primary that must not run).
    Fence,
    /// Delete the `failover` key at `revision` (a request the leader cannot carry out, or a
    /// stale scheduled switchover).
    ClearFailover {
        revision: i64,
    },
}

/// What to do this tick and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: String,
}

fn act(actions: Vec<Action>, reason: String) -> Decision {
    Decision { actions, reason }
}

fn idle(reason: String) -> Decision {
    Decision { actions: Vec::new(), reason }
}

/// Whether a demotion may first let client transactions under way finish (for up to `wait`):
/// only a planned handover (the `failover` key is there) by the leader, while its lease outlasts
/// the wait and one more loop. A leader that lost the lock, or whose lease is about to end, stops
/// PostgreSQL at once: waiting could let two primaries overlap.
pub fn drains_before_demote(
    view: &ClusterView,
    me: &str,
    lease_valid_until: Option<Instant>,
    now: Instant,
    wait: std::time::Duration,
    loop_wait: std::time::Duration,
) -> bool {
    view.failover.is_some()
        && view.leader.as_deref() == Some(me)
        && lease_valid_until.is_some_and(|until| until > now + wait + loop_wait)
}

/// Decides one tick.
pub fn decide(view: &ClusterView, local: &LocalState, config: &HaConfig, now: Instant) -> Decision {
    let me = local.name.as_str();
    let i_lead = view.leader.as_deref() == Some(me);

    if !view.reachable {
        return dcs_unreachable(local, config, now);
    }

    // Bootstrap and data directory identity.
    let Some(cluster_sysid) = view.initialized else {
        return match local.postgres {
            PgState::NoData => act(vec![Action::Bootstrap], "cluster is not initialized; racing to bootstrap it".into()),
            _ => idle("cluster is not initialized but I have a data directory; waiting for an operator (pgha ctl reinit) rather than adopting it".into()),
        };
    };
    if let Some(mine) = local.system_identifier {
        if mine != cluster_sysid {
            let fence = matches!(local.postgres, PgState::Running { .. } | PgState::Unresponsive);
            return act(
                if fence { vec![Action::Fence] } else { vec![] },
                format!(
                    "my data directory belongs to another cluster (system identifier {mine}, cluster has {cluster_sysid}); \
                     refusing to join; run pgha ctl reinit {me} to replace it"
                ),
            );
        }
    }

    match &local.postgres {
        PgState::NoData => match &view.leader {
            Some(leader) if leader != me && view.member(leader).is_some_and(|m| m.running) => act(
                vec![
                    Action::CloneFrom { source: leader.clone() },
                    Action::StartReplica { leader: Some(leader.clone()) },
                ],
                format!("no data directory; cloning from the leader {leader}"),
            ),
            Some(leader) if leader != me => {
                idle(format!("no data directory; waiting for the leader {leader} to be running"))
            }
            _ => idle("no data directory and no leader to clone from; waiting for a leader".into()),
        },
        PgState::Unresponsive => {
            if i_lead {
                act(
                    vec![Action::Fence, Action::ReleaseLock],
                    "PostgreSQL stopped answering probes; killing it and releasing the leader lock so a replica can take over"
                        .into(),
                )
            } else {
                act(vec![Action::Fence], "PostgreSQL stopped answering probes; killing it to restart it".into())
            }
        }
        PgState::Stopped => stopped(view, local, config, now, i_lead),
        PgState::Running { role, timeline, wal_position } => {
            running(view, local, config, now, i_lead, *role, *timeline, *wal_position)
        }
    }
}

fn dcs_unreachable(local: &LocalState, config: &HaConfig, now: Instant) -> Decision {
    let primary = matches!(local.postgres, PgState::Running { role: Role::Primary, .. });
    if !primary {
        return idle("DCS unreachable; staying as I am (not primary)".into());
    }
    // Demote early enough that the demotion is done before anyone else can take the lock: the
    // next decision can come loop_wait + retry_timeout (a DCS read timing out) from now, and
    // stopping PostgreSQL is bounded by another retry_timeout.
    let margin = config.loop_wait + config.retry_timeout * 2;
    match local.lease_valid_until {
        Some(until) if now + margin < until => {
            idle(format!("DCS unreachable; still primary, my lease holds for {:?} more", until - now))
        }
        _ => act(
            vec![Action::Demote { leader: None }],
            "DCS unreachable and my leader lease is about to expire; demoting to read-only before it does".into(),
        ),
    }
}

fn stopped(view: &ClusterView, local: &LocalState, config: &HaConfig, now: Instant, i_lead: bool) -> Decision {
    if i_lead {
        let down_for = local.down_since.map(|t| now.saturating_duration_since(t)).unwrap_or_default();
        if down_for < config.primary_start_timeout {
            return act(
                vec![Action::RefreshLock, Action::StartPrimary],
                format!(
                    "PostgreSQL is down on the leader; restarting it in place (down for {down_for:?}, giving up after {:?})",
                    config.primary_start_timeout
                ),
            );
        }
        return act(
            vec![Action::ReleaseLock, Action::StartReplica { leader: None }],
            format!(
                "PostgreSQL did not come back within primary_start_timeout ({:?}); releasing the leader lock",
                config.primary_start_timeout
            ),
        );
    }
    let leader = view.leader.clone();
    let reason = match &leader {
        Some(l) => format!("PostgreSQL is stopped; starting it as a replica of {l}"),
        None => "PostgreSQL is stopped and there is no leader; starting it read-only".into(),
    };
    act(vec![Action::StartReplica { leader }], reason)
}

#[allow(clippy::too_many_arguments)]
fn running(
    view: &ClusterView,
    local: &LocalState,
    config: &HaConfig,
    now: Instant,
    i_lead: bool,
    role: Role,
    timeline: u32,
    position: Lsn,
) -> Decision {
    let me = local.name.as_str();
    if i_lead {
        if let Some(req) = &view.failover {
            if let Some(s) = req.stale(config.loop_wait) {
                let mut d = leading(local, config, now, role, position);
                d.actions.push(Action::ClearFailover { revision: req.revision });
                d.reason = format!(
                    "dropping the switchover scheduled at {}: found {:?} after its time, more than 1.5 x loop_wait \
                     ({:?}); schedule it again to run it; {}",
                    s.at,
                    s.late_by,
                    config.loop_wait * 3 / 2,
                    d.reason
                );
                return d;
            }
            // A switchover names this leader; a failover names only the candidate, and the leader
            // hands over to it all the same (Patroni's manual failover from a healthy leader).
            let failover_to_other = req.leader.is_none() && req.candidate.as_deref().is_some_and(|c| c != me);
            if req.leader.as_deref() == Some(me) || failover_to_other {
                if let Some(c) = req.candidate.as_deref().filter(|c| *c != me) {
                    if !view.may_take_over(config, c) {
                        return staying(
                            leading(local, config, now, role, position),
                            req,
                            format!(
                                "switchover to {c} requested, but synchronous mode is on and {c} is not a \
                                 synchronous standby ({}); staying leader",
                                view.sync_standbys(config).unwrap_or_default().join(", ")
                            ),
                        );
                    }
                    if view.member(c).is_some_and(|m| m.running && m.role == Role::Replica) {
                        return act(
                            vec![Action::Demote { leader: Some(c.to_string()) }, Action::ReleaseLock],
                            format!("switchover to {c} requested; demoting and handing over the leader lock"),
                        );
                    }
                    return staying(
                        leading(local, config, now, role, position),
                        req,
                        format!("switchover to {c} requested, but {c} is not a running replica; staying leader"),
                    );
                }
                if req.candidate.is_none() {
                    // In synchronous mode only a synchronous standby will race for the lock.
                    let any = view.members.iter().any(|m| {
                        m.name != me
                            && m.running
                            && m.role == Role::Replica
                            && !m.nofailover
                            && view.may_take_over(config, &m.name)
                    });
                    if any {
                        return act(
                            vec![Action::Demote { leader: None }, Action::ReleaseLock],
                            "switchover requested; demoting and releasing the leader lock for the healthiest replica"
                                .into(),
                        );
                    }
                    return staying(
                        leading(local, config, now, role, position),
                        req,
                        "switchover requested, but no running replica can take over; staying leader".into(),
                    );
                }
            }
        }
        return leading(local, config, now, role, position);
    }

    if let Some(leader) = view.leader.clone() {
        return match role {
            Role::Primary => act(
                vec![Action::Demote { leader: Some(leader.clone()) }],
                format!("{leader} holds the leader lock but I run as primary; demoting myself now"),
            ),
            _ => {
                let leader_tl = view.member(&leader).and_then(|m| m.timeline).or(view.leader_timeline);
                let stalled = local.not_streaming_for.is_some_and(|d| d >= config.ttl);
                match leader_tl {
                    Some(ltl) if timeline > ltl => act(
                        vec![Action::Rewind { leader: leader.clone() }],
                        format!(
                            "my timeline {timeline} is ahead of the leader {leader}'s {ltl}; rewinding to follow it"
                        ),
                    ),
                    Some(ltl) if timeline < ltl && stalled => act(
                        vec![Action::Rewind { leader: leader.clone() }],
                        format!(
                            "not streaming from {leader} for {:?} and still on timeline {timeline} (leader on {ltl}): \
                             my WAL diverged; rewinding",
                            local.not_streaming_for.unwrap_or_default()
                        ),
                    ),
                    _ => act(
                        vec![Action::Follow { leader: leader.clone() }],
                        format!("no action: following the leader {leader}, replayed up to {position}"),
                    ),
                }
            }
        };
    }

    race(view, local, config, role, timeline, position)
}

/// A leader that cannot hand over as asked: it goes on leading (refreshing its lock) and, as
/// Patroni does, deletes the request, which would otherwise run whenever it became possible,
/// long after the operator was told it failed.
fn staying(mut leading: Decision, request: &FailoverRequest, reason: String) -> Decision {
    leading.actions.push(Action::ClearFailover { revision: request.revision });
    leading.reason = format!("{reason}; dropping the request; {}", leading.reason);
    leading
}

/// The lock holder's steady state: keep the lock (and be primary).
fn leading(local: &LocalState, config: &HaConfig, now: Instant, role: Role, position: Lsn) -> Decision {
    let me = local.name.as_str();
    match role {
        Role::Primary => {
            if local.refresh_failed {
                // The lock is still ours by the DCS's last answer but we could not refresh it.
                return dcs_unreachable(local, config, now);
            }
            act(vec![Action::RefreshLock], format!("no action: I am ({me}) the leader with the lock at {position}"))
        }
        _ => act(
            vec![Action::RefreshLock, Action::Promote],
            format!("I hold the leader lock but run as a replica; promoting at {position}"),
        ),
    }
}

fn race(
    view: &ClusterView,
    local: &LocalState,
    config: &HaConfig,
    role: Role,
    timeline: u32,
    position: Lsn,
) -> Decision {
    let me = local.name.as_str();
    if view.paused {
        return idle("leader lock is free but the cluster is paused; no automatic failover".into());
    }
    if role == Role::Primary {
        return act(
            vec![Action::AcquireLock, Action::RefreshLock],
            "I run as primary and the leader lock is free; taking it back".into(),
        );
    }
    // A stale scheduled switchover steers no race; the next leader drops it.
    let manual =
        view.failover.as_ref().filter(|f| f.stale(config.loop_wait).is_none()).and_then(|f| f.candidate.clone());
    if let Some(c) = &manual {
        if c != me {
            return idle(format!("leader lock is free; a failover to {c} is in progress, not racing"));
        }
    }
    if local.nofailover && manual.is_none() {
        return idle("leader lock is free, but I am tagged nofailover".into());
    }
    // Synchronous mode: only a standby the `sync` key names holds every transaction the last
    // leader acknowledged; no other may take over, not even when an operator names it.
    if !view.may_take_over(config, me) {
        return idle(format!(
            "leader lock is free, but synchronous mode is on and only {} may take over (the sync key); not racing",
            view.sync_standbys(config).unwrap_or_default().join(", ")
        ));
    }
    let Some(streamed) = local.last_streamed else {
        return idle("leader lock is free, but I have never streamed from a primary since I started: my position is not trusted; not promoting (pgha ctl failover to force)".into());
    };
    let Some(leader_tl) = view.leader_timeline else {
        return idle(
            "leader lock is free, but the last leader's timeline is unknown; not promoting automatically".into(),
        );
    };
    if streamed.timeline != leader_tl || timeline != leader_tl {
        return idle(format!(
            "leader lock is free, but I never streamed from the last leader's timeline {leader_tl} (I streamed from {}, \
             and replay is on timeline {timeline}); not promoting",
            streamed.timeline
        ));
    }
    if let Some(last) = view.leader_lsn {
        let behind = position.bytes_behind(last);
        if behind > config.maximum_lag_on_failover && manual.is_none() {
            return idle(format!(
                "leader lock is free, but I am {behind} bytes behind the last leader position {last} (maximum_lag_on_failover {})",
                config.maximum_lag_on_failover
            ));
        }
    }
    let Some(probes) = &local.peer_probes else {
        return act(
            vec![Action::ProbePeers],
            "leader lock is free; asking the other members for their WAL positions".into(),
        );
    };
    let named = manual.as_deref() == Some(me);
    // In synchronous mode a member the key does not name does not race, so it is no rival
    // however far ahead (but one still running as primary stops the race all the same).
    let rival = |name: &str| view.may_take_over(config, name);
    if let Some(reason) = someone_better(probes, local, position, named, rival) {
        return idle(reason);
    }
    act(
        vec![Action::AcquireLock, Action::Promote],
        format!("leader lock is free and I am the healthiest member at {position}; taking the lock and promoting"),
    )
}

/// Why another member should win the race instead of us, if one should.
/// A candidate named by an operator only gives way to a member that still runs as primary.
/// Only members for which `rival` holds can be ahead of us.
fn someone_better(
    probes: &[PeerProbe],
    local: &LocalState,
    position: Lsn,
    named: bool,
    rival: impl Fn(&str) -> bool,
) -> Option<String> {
    for p in probes.iter().filter(|p| p.name != local.name) {
        if p.in_recovery == Some(false) {
            return Some(format!("leader lock is free but {} is still running as primary; not racing", p.name));
        }
        if named || !rival(&p.name) {
            continue;
        }
        let Some(theirs) = p.wal_position else { continue };
        if theirs > position {
            return Some(format!(
                "leader lock is free but {} is ahead ({theirs} > {position}); letting it win",
                p.name
            ));
        }
        if theirs == position && p.failover_priority > local.failover_priority {
            return Some(format!(
                "leader lock is free; {} is as far as I am ({position}) with a higher failover_priority; letting it win",
                p.name
            ));
        }
    }
    None
}
