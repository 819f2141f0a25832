//! Real 3-node clusters of `pgha agent` on etcd (each agent behind its own fault relay): the
//! scenarios of `harness::agent_scenarios`, also run on the built-in Raft by agent_raft.rs.

use harness::agent_scenarios as scenario;
use harness::cluster::{Backend, Timing};

const ETCD: Backend = Backend::Etcd;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_bootstrap_one_primary_and_two_streaming_replicas() {
    scenario::bootstrap(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_promotes_a_replica_and_loses_no_acknowledged_row() {
    scenario::node_loss(ETCD, Timing::default()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_primary_node_with_the_fast_profile_promotes_a_replica_and_loses_no_acknowledged_row() {
    scenario::node_loss(ETCD, Timing::FAST).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_cut_off_from_the_dcs_demotes_itself_and_never_overlaps_with_the_new_primary() {
    scenario::primary_cut_off_from_the_dcs(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_killed_under_a_live_agent_is_restarted_in_place_without_failover() {
    scenario::postgres_killed_under_a_live_agent(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_postmaster_is_fenced_and_a_replica_takes_over() {
    scenario::hung_primary_postmaster(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_never_streamed_is_not_promoted_when_the_primary_dies() {
    scenario::replica_that_never_streamed(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_primary_agent_releases_the_lock_and_a_replica_takes_over_before_ttl() {
    scenario::graceful_stop_of_the_primary_agent(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_follow_the_roles_and_a_switchover_through_the_api_hands_over_cleanly() {
    scenario::health_checks_and_switchover(ETCD).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_postgres_cannot_restart_fails_over_after_primary_start_timeout() {
    scenario::primary_that_cannot_restart(ETCD).await;
}

/// The leader checks its members' replication slots against the server every tick: a slot that
/// disappears from the primary (dropped by hand here; in a CI run it was a slot the new primary
/// lacked after a failover, which left the rewound old primary unable to stream) is made again,
/// and its replica streams through it. With the slots remembered as "done" instead, the replica
/// retried "replication slot does not exist" for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_members_slot_lost_on_the_primary_is_made_again_and_its_replica_streams() {
    use harness::cluster::{connect, PghaCluster};
    use harness::wait::wait_for;
    use std::time::Duration;
    let cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = harness::agent_checks::healthy(&cluster).await;
    let replica = 1 - primary;
    let slot = cluster.nodes[replica].name.to_lowercase();
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    // The walsender holds the slot: end it, then drop the slot before the replica reconnects
    // (it retries every wal_retrieve_retry_interval, 5 s).
    let dropped = wait_for("the slot dropped", Duration::from_secs(10), || async {
        p.execute(
            "select pg_terminate_backend(active_pid) from pg_replication_slots where slot_name = $1 and active_pid is not null",
            &[&slot],
        )
        .await?;
        Ok(p.execute("select pg_drop_replication_slot($1)", &[&slot]).await.ok().map(|_| ()))
    });
    dropped.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let back = wait_for("the slot made again and active", Duration::from_secs(30), || async {
        let row = p.query_opt("select active from pg_replication_slots where slot_name = $1", &[&slot]).await?;
        Ok(row.and_then(|r| r.get::<_, bool>(0).then_some(())))
    });
    back.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let (in_recovery, status) = cluster.nodes[replica].role().await.unwrap_or_else(|e| panic!("{e:#}"));
    assert!(in_recovery);
    assert_eq!(status.as_deref(), Some("streaming"), "{}", cluster.logs());
}

/// A rewound old primary needs WAL through its slot on the new primary before PostgreSQL
/// accepts connections. Here the new primary has no slot for it: it is dropped after the old
/// primary's member key expired, as in a CI run where the key was gone before the promotion
/// made the members' slots, and rows are written on the new primary meanwhile, as in that run.
/// The agent publishes its member key (`starting`) before it waits
/// for PostgreSQL, the leader makes the slot at its next tick, and the node streams. It used to
/// wait for connections first, up to 120 s, with no member key for the leader to see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewound_old_primary_without_a_slot_on_the_new_primary_gets_one_and_streams() {
    use harness::cluster::{connect, http, PghaCluster};
    use harness::wait::wait_for;
    use std::time::Duration;
    let mut cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let old = harness::agent_checks::healthy(&cluster).await;
    let new = 1 - old;
    let p = connect(&cluster.nodes[old].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    p.batch_execute("create table diverge (x int)").await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.wait_replicated(old, Duration::from_secs(10)).await.unwrap_or_else(|e| panic!("{e:#}"));
    // The replica receives nothing more: what the old primary writes now forks its timeline.
    cluster.nodes[new].freeze_postgres(true).unwrap_or_else(|e| panic!("{e:#}"));
    p.batch_execute("insert into diverge select generate_series(1, 1000)").await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.nodes[old].kill_node();
    cluster.nodes[new].freeze_postgres(false).unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(harness::agent_checks::another_primary(&cluster, old, 90).await, new);
    let (old_name, api) = (cluster.nodes[old].name.clone(), cluster.nodes[new].api_port);
    let expired = wait_for("the old primary's member key expired", Duration::from_secs(90), || async {
        let (status, body) = http(api, "GET", "/cluster", None).await?;
        let listed = body.replace([' ', '\n'], "").contains(&format!("\"name\":\"{old_name}\""));
        Ok((status == 200 && body.contains("\"members\"") && !listed).then_some(()))
    });
    expired.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let q = connect(&cluster.nodes[new].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    q.execute(
        "select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1",
        &[&old_name.to_lowercase()],
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // Writes on the new primary while the old one rejoins (as the failover tests' writer does):
    // the WAL pg_rewind copies then ends before the point the rewound node must reach, which
    // only the stream through its slot brings.
    let w = connect(&cluster.nodes[new].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    w.batch_execute("create table during (x int)").await.unwrap_or_else(|e| panic!("{e:#}"));
    let writer = tokio::spawn(async move {
        while w.batch_execute("insert into during values (1)").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    cluster.nodes[old].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    harness::agent_checks::streams_again(&cluster, old, "the rewound old primary streaming", 40).await;
    writer.abort();
    let log = cluster.nodes[old].agent_log();
    assert!(log.contains("pg_rewind"), "the old primary was not rewound: the test did not fork its timeline\n{log}");
}

/// A member that leaves the cluster must not hold WAL on the primary for good through its slot
/// (a decommissioned node would fill the primary's disk). With `member_slots_ttl` set to 4 s
/// in the DCS: when the stopped replica's member key expires its slot is still there, it is
/// dropped after the ttl, a slot the cluster did not make stays, and the member coming back
/// gets a slot again and streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_departed_members_slot_is_dropped_after_member_slots_ttl_and_made_again_when_it_returns() {
    use harness::cluster::{connect, http, PghaCluster};
    use harness::wait::wait_for;
    use std::time::Duration;
    let mut cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = harness::agent_checks::healthy(&cluster).await;
    let replica = 1 - primary;
    let api = cluster.nodes[primary].api_port;
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"member_slots_ttl": "4s"}"#)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    let slot = cluster.nodes[replica].name.to_lowercase();
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap_or_else(|e| panic!("{e:#}"));
    p.batch_execute("select pg_create_physical_replication_slot('made_by_hand', true)")
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let has = |name: String| {
        let p = &p;
        async move {
            let row = p.query_opt("select 1 from pg_replication_slots where slot_name = $1", &[&name]).await?;
            anyhow::Ok(row.is_some())
        }
    };
    assert!(has(slot.clone()).await.unwrap(), "the replica streams through its slot");

    cluster.nodes[replica].stop_agent().await.unwrap_or_else(|e| panic!("{e:#}"));
    let name = cluster.nodes[replica].name.clone();
    let expired = wait_for("the stopped replica's member key expired", Duration::from_secs(60), || async {
        let (status, body) = http(api, "GET", "/cluster", None).await?;
        let listed = body.replace([' ', '\n'], "").contains(&format!("\"name\":\"{name}\""));
        Ok((status == 200 && body.contains("\"members\"") && !listed).then_some(()))
    });
    expired.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert!(has(slot.clone()).await.unwrap(), "dropped before member_slots_ttl\n{}", cluster.logs());
    let dropped = wait_for("the departed member's slot dropped", Duration::from_secs(30), || async {
        Ok((!has(slot.clone()).await?).then_some(()))
    });
    dropped.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert!(has("made_by_hand".into()).await.unwrap(), "a slot the cluster did not make was dropped");
    // The agent logs the drop after PostgreSQL has answered it, so the line may come a moment
    // after the slot is seen gone.
    let logged = wait_for("the slot's drop in the primary's log", Duration::from_secs(10), || async {
        Ok(cluster.nodes[primary].agent_log().contains("dropped the replication slot of a member").then_some(()))
    });
    logged.await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.nodes[primary].agent_log()));

    cluster.nodes[replica].start_agent().unwrap_or_else(|e| panic!("{e:#}"));
    harness::agent_checks::streams_again(&cluster, replica, "the returning member streaming", 60).await;
    assert!(has(slot.clone()).await.unwrap(), "the returning member has no slot");
    let active = p
        .query_one("select active from pg_replication_slots where slot_name = $1", &[&slot])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(active.get::<_, bool>(0), "the returning member does not stream through its slot\n{}", cluster.logs());
}

/// Permanent physical slots (`slots` in the dynamic configuration, Patroni's): every member has
/// them, a standby's follows the primary's position, and after the primary's node is lost the
/// new primary has the slot at about the consumer's position, with the WAL from there; a
/// logical one is refused with a reason; taken out of the configuration, it is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_slot_is_kept_on_every_member_and_survives_a_failover() {
    use harness::cluster::{connect, http, PghaCluster};
    use harness::wait::wait_for;
    use std::time::Duration;
    let mut cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = harness::agent_checks::healthy(&cluster).await;
    let standby = 1 - primary;
    let api = cluster.nodes[primary].api_port;
    let slots = r#"{"slots": {"keeper": {"type": "physical"}, "cdc": {"type": "logical", "database": "postgres", "plugin": "pgoutput"}}}"#;
    let (code, text) = http(api, "PATCH", "/config", Some(slots)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    let dsns: Vec<String> = cluster.nodes.iter().map(|n| n.dsn()).collect();
    let position = |node: usize| {
        let dsn = dsns[node].clone();
        async move {
            let c = connect(&dsn).await?;
            let row = c
                .query_opt(
                    "select (restart_lsn - '0/0')::bigint from pg_replication_slots where slot_name = 'keeper'",
                    &[],
                )
                .await?;
            anyhow::Ok(row.map(|r| r.get::<_, Option<i64>>(0).unwrap_or(0)))
        }
    };
    for node in [primary, standby] {
        wait_for("the permanent slot on every member", Duration::from_secs(30), || async {
            Ok(position(node).await?.filter(|p| *p > 0))
        })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    }
    // The consumer moves the primary's slot on; the standby's follows.
    let p = connect(&cluster.nodes[primary].dsn()).await.unwrap();
    p.batch_execute("create table slot_probe(x int); insert into slot_probe select generate_series(1, 1000); select pg_switch_wal()")
        .await
        .unwrap();
    let consumed: i64 = p
        .query_one(
            "select (end_lsn - '0/0')::bigint from pg_replication_slot_advance('keeper', pg_current_wal_lsn())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    wait_for("the standby's permanent slot to follow the primary's", Duration::from_secs(40), || async {
        Ok(position(standby).await?.filter(|p| *p >= consumed))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let log = cluster.nodes[primary].agent_log();
    assert!(log.contains("slot cdc: permanent logical slots are not supported"), "{log}");
    let has_cdc = p.query_opt("select 1 from pg_replication_slots where slot_name = 'cdc'", &[]).await.unwrap();
    assert!(has_cdc.is_none(), "a logical permanent slot was made");

    // The primary's node is lost: the new primary has the slot where the consumer left it.
    drop(p);
    cluster.nodes[primary].kill_node();
    let new = harness::agent_checks::another_primary(&cluster, primary, 60).await;
    assert_eq!(new, standby);
    let kept =
        position(standby).await.unwrap().unwrap_or_else(|| panic!("no slot after the failover\n{}", cluster.logs()));
    assert!(kept >= consumed, "slot at {kept}, the consumer was at {consumed}");

    // Out of the configuration: dropped.
    let api = cluster.nodes[standby].api_port;
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"slots": null}"#)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    wait_for("the unconfigured permanent slot to be dropped", Duration::from_secs(30), || async {
        Ok(position(standby).await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
}
