//! Operator actions on a real pgha cluster on etcd: a switchover scheduled through the REST API
//! runs at its time and not before, and one found too late is dropped; a data directory of
//! another cluster is never joined or overwritten until an operator asks for a reinitialize, which
//! then replaces it with a clone of the leader made in the background (the API answers meanwhile,
//! a second request is refused unless forced); the leader refuses to be reinitialized.
//! `[postgresql.callbacks]` programs run on start, role change, reload, restart and stop, with
//! Patroni's arguments.

use agent::postgres::binaries::{BinDir, DEFAULT_MAJOR};
use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use consensus::dcs::{ClusterKey, Dcs, Expected, KvDcs};
use consensus::etcd::{EtcdOptions, EtcdStore};
use harness::agent_checks::healthy;
use harness::cluster::{connect, http, PghaCluster, Timing};
use harness::wait_for;
use std::os::unix::process::CommandExt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Unix seconds as ISO 8601 in UTC (`2024-05-01T03:00:00+00:00`).
fn iso8601(unix: u64) -> String {
    consensus::cluster::timestamp::Timestamp(unix as i64).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduled_switchover_runs_at_its_time_and_not_before() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let old = healthy(&cluster).await;
    let candidate = (old + 1) % 3;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    let at = now + 8;
    let body = format!(
        r#"{{"leader":"{}","candidate":"{}","scheduled_at":"{}"}}"#,
        cluster.nodes[old].name,
        cluster.nodes[candidate].name,
        iso8601(at)
    );
    let (code, text) = http(cluster.nodes[old].api_port, "POST", "/switchover", Some(&body)).await.unwrap();
    assert_eq!((code, text.as_str()), (202, "Switchover scheduled"));
    let (_, doc) = http(cluster.nodes[candidate].api_port, "GET", "/cluster", None).await.unwrap();
    assert!(doc.contains("scheduled_switchover"), "{doc}");

    // Until its time, nothing moves.
    while SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() < at {
        assert_eq!(cluster.primaries().await, vec![old], "the switchover ran before {}", iso8601(at));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let due = Instant::now();
    let switched = wait_for("the candidate to become primary", Duration::from_secs(30), || async {
        Ok((cluster.primaries().await == vec![candidate]).then_some(()))
    });
    switched.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!("scheduled switchover: {} primary {:?} after its time", cluster.nodes[candidate].name, due.elapsed());
    // The request is consumed, and the old primary follows the new one.
    let cleared = wait_for("the failover key to be cleared", Duration::from_secs(15), || async {
        let (_, doc) = http(cluster.nodes[candidate].api_port, "GET", "/cluster", None).await?;
        Ok((!doc.contains("scheduled_switchover")).then_some(()))
    });
    cleared.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let follows = wait_for("the old primary to stream from the new one", Duration::from_secs(60), || async {
        Ok(match cluster.nodes[old].role().await {
            Ok((true, Some(s))) if s == "streaming" => Some(()),
            _ => None,
        })
    });
    follows.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // A switchover found a minute after its time (written straight into the DCS, as if the
    // leader's loop had been held up) is dropped by the leader, not run; the log says why.
    let etcd = cluster.etcd.as_ref().unwrap();
    let store = Arc::new(EtcdStore::connect(&etcd.endpoints(), EtcdOptions::default()).await.unwrap());
    let dcs = KvDcs::new(store, "/service", &cluster.scope, "operator", Duration::from_secs(10));
    let past = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() - 60;
    let stale = format!(
        r#"{{"leader":"{}","member":"{}","scheduled_at":"{}"}}"#,
        cluster.nodes[candidate].name,
        cluster.nodes[old].name,
        iso8601(past)
    );
    dcs.write(ClusterKey::Failover, stale.as_bytes(), Expected::Any).await.unwrap();
    let dropped = wait_for("the leader to drop the stale switchover", Duration::from_secs(15), || async {
        let gone = dcs.snapshot().await?.get(&ClusterKey::Failover).is_none();
        Ok((gone && cluster.nodes[candidate].agent_log().contains("dropping the switchover scheduled at"))
            .then_some(()))
    });
    dropped.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(cluster.primaries().await, vec![candidate], "the stale switchover ran");
}

fn system_identifier(data_dir: &std::path::Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join("global/pg_control")).ok()?;
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Replaces `data_dir` with a fresh initdb (another cluster: a new system identifier).
fn init_foreign_data_dir(data_dir: &std::path::Path) -> u64 {
    let _ = std::fs::remove_dir_all(data_dir);
    let bin = BinDir::locate(None, DEFAULT_MAJOR).unwrap();
    let mut cmd = std::process::Command::new(bin.program("initdb"));
    cmd.arg("-D").arg(data_dir).args(["--data-checksums", "--locale=C", "--no-sync", "-U", "postgres"]);
    if let Some(owner) = RunAs::for_postgres(DEFAULT_USER).unwrap() {
        cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
    system_identifier(data_dir).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_cluster_is_never_joined_until_an_operator_reinitializes_it() {
    let mut cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let primary = healthy(&cluster).await;
    let cluster_sysid = system_identifier(&cluster.nodes[primary].data_dir()).unwrap();
    let stray = (primary + 1) % 3;

    // The leader refuses a reinitialize.
    let (code, text) = http(cluster.nodes[primary].api_port, "POST", "/reinitialize", Some("{}")).await.unwrap();
    assert_eq!(code, 503, "{text}");

    // A replica's data directory is swapped for one of another cluster while its agent is down.
    cluster.nodes[stray].stop_agent().await.unwrap();
    let data = cluster.nodes[stray].data_dir();
    let foreign = init_foreign_data_dir(&data);
    assert_ne!(foreign, cluster_sysid);
    std::fs::write(data.join("foreign-marker"), "keep me").unwrap();
    // Its clones are throttled to 2 MB/s, so that the ~25 MB clone below takes a while.
    cluster.nodes[stray].add_postgresql_setting(r#"basebackup_max_rate = "2M""#);
    cluster.nodes[stray].start_agent().unwrap();

    // Many ticks later: not started, not cloned over, not streaming; the log says why.
    let refused = wait_for("the agent to refuse the foreign data directory", Duration::from_secs(20), || async {
        Ok(cluster.nodes[stray].agent_log().contains("belongs to another cluster").then_some(()))
    });
    refused.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(system_identifier(&data), Some(foreign), "the foreign data directory was overwritten");
    assert!(data.join("foreign-marker").exists(), "the foreign data directory was replaced");
    assert!(cluster.nodes[stray].role().await.is_err(), "PostgreSQL runs on the foreign data directory");
    assert_eq!(cluster.primaries().await, vec![primary]);

    // An explicit reinitialize replaces it with a clone of the leader, which then streams.
    let api = cluster.nodes[stray].api_port;
    let (code, text) = http(api, "POST", "/reinitialize", Some("{}")).await.unwrap();
    assert_eq!((code, text.as_str()), (200, "reinitialize started"));
    let cloning = Instant::now();
    // While the clone runs in the background the HA loop goes on: the API answers at once with
    // the state, and the member key the leader sees says so too.
    let mut slowest = Duration::ZERO;
    for _ in 0..5 {
        let asked = Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(1), http(api, "GET", "/patroni", None)).await;
        let (code, doc) = answer.expect("GET /patroni did not answer within 1 s during the clone").unwrap();
        slowest = slowest.max(asked.elapsed());
        assert_eq!(code, 200, "{doc}");
        assert!(doc.contains("creating replica"), "{doc}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (_, members) = http(cluster.nodes[primary].api_port, "GET", "/cluster", None).await.unwrap();
    assert!(members.contains("creating replica"), "{members}");
    // One at a time: a second request is refused, a forced one cancels the clone and starts over.
    let (code, text) = http(api, "POST", "/reinitialize", None).await.unwrap();
    assert_eq!((code, text.as_str()), (503, "reinitialize already in progress"));
    assert!(cloning.elapsed() < Duration::from_secs(8), "the clone check ran too long to be sure it was still running");
    let (code, text) = http(api, "POST", "/reinitialize", Some(r#"{"force":true}"#)).await.unwrap();
    assert_eq!((code, text.as_str()), (200, "reinitialize started"));
    assert!(cluster.nodes[stray].agent_log().contains("cancelling the running clone"), "{}", cluster.logs());
    eprintln!("during a reinitialize GET /patroni answered within {slowest:?} at worst");
    let streams = wait_for("the reinitialized node to stream", Duration::from_secs(90), || async {
        Ok(match cluster.nodes[stray].role().await {
            Ok((true, Some(s))) if s == "streaming" => Some(()),
            _ => None,
        })
    });
    streams.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(system_identifier(&data), Some(cluster_sysid));
    assert!(!data.join("foreign-marker").exists());
    // It holds the cluster's data.
    connect(&cluster.nodes[primary].dsn())
        .await
        .unwrap()
        .batch_execute("create table after_reinit(id int)")
        .await
        .unwrap();
    let c = connect(&cluster.nodes[stray].dsn()).await.unwrap();
    let seen = wait_for("a new table on the reinitialized node", Duration::from_secs(10), || async {
        Ok(c.query_opt("select 1 from pg_class where relname = 'after_reinit'", &[]).await?.map(|_| ()))
    });
    seen.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_configuration_reaches_every_node_by_reload_or_flags_a_pending_restart() {
    let cluster = PghaCluster::start_on_etcd(3, Timing::default()).await.unwrap();
    let primary = healthy(&cluster).await;
    let api = cluster.nodes[primary].api_port;
    let show = |i: usize, name: &'static str| {
        let dsn = cluster.nodes[i].dsn();
        async move {
            let c = connect(&dsn).await?;
            let v: String = c.query_one(&format!("show {name}"), &[]).await?.try_get(0)?;
            anyhow::Ok(v)
        }
    };

    // A reloadable parameter reaches every node; the node's own file wins for shared_buffers.
    let patch = r#"{"postgresql":{"parameters":{"work_mem":"7MB","shared_buffers":"64MB"}}}"#;
    let (code, text) = http(api, "PATCH", "/config", Some(patch)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    for i in 0..3 {
        let reloaded = wait_for("work_mem = 7MB after the reload", Duration::from_secs(20), || async {
            Ok((show(i, "work_mem").await? == "7MB").then_some(()))
        });
        reloaded.await.unwrap_or_else(|e| panic!("{}: {e}\n{}", cluster.nodes[i].name, cluster.logs()));
        assert_eq!(show(i, "shared_buffers").await.unwrap(), "16MB", "the local setting must win");
    }

    // A parameter that needs a restart is flagged pending_restart in /patroni, the member key and /cluster.
    let patch = r#"{"postgresql":{"parameters":{"max_prepared_transactions":7}}}"#;
    let (code, text) = http(api, "PATCH", "/config", Some(patch)).await.unwrap();
    assert_eq!(code, 200, "{text}");
    for n in &cluster.nodes {
        let flagged = wait_for("pending_restart in /patroni", Duration::from_secs(20), || async {
            let (_, doc) = http(n.api_port, "GET", "/patroni", None).await?;
            Ok(doc.contains(r#""pending_restart":true"#).then_some(()))
        });
        flagged.await.unwrap_or_else(|e| panic!("{}: {e}\n{}", n.name, cluster.logs()));
    }
    let listed = wait_for("pending_restart of every member in /cluster", Duration::from_secs(20), || async {
        let (_, doc) = http(api, "GET", "/cluster", None).await?;
        Ok((doc.matches(r#""pending_restart":true"#).count() == 3).then_some(()))
    });
    listed.await.unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(show(primary, "max_prepared_transactions").await.unwrap(), "0", "applied only after a restart");

    // Timing that would make failover unsafe is refused with the rule it breaks (ttl is 6 s).
    let (code, text) = http(api, "PATCH", "/config", Some(r#"{"loop_wait":3}"#)).await.unwrap();
    assert_eq!(code, 422, "{text}");
    assert!(text.contains("must be larger than loop_wait + 2 x retry_timeout"), "{text}");
    let (_, config) = http(api, "GET", "/config", None).await.unwrap();
    assert!(!config.contains("loop_wait"), "the refused change was written: {config}");
}

/// The lines a callback program wrote: `<event> <role> <scope>` each.
fn callback_lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Patroni's callbacks, each a program run as `<program> <event> <role> <scope>` as the
/// PostgreSQL user: on_start when the cluster is made (primary) and when the replica starts,
/// on_role_change on both sides of a switchover, on_reload and on_restart through the API,
/// on_stop when the agent stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_run_with_patronis_arguments_on_each_event() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let mut cluster = PghaCluster::prepare_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let mut logs = Vec::new();
    for (i, n) in cluster.nodes.iter_mut().enumerate() {
        let log = dir.path().join(format!("node{i}.log"));
        let script = dir.path().join(format!("callback{i}.sh"));
        std::fs::write(&script, format!("#!/bin/sh\necho \"$@\" >> {}\n", log.display())).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let program = script.display().to_string();
        n.add_section(&format!(
            "[postgresql.callbacks]\non_start = \"{program}\"\non_stop = \"{program}\"\non_restart = \"{program}\"\n\
             on_reload = \"{program}\"\non_role_change = \"{program}\""
        ));
        logs.push(log);
    }
    cluster.start_all().unwrap();
    let old = healthy(&cluster).await;
    let candidate = 1 - old;
    let scope = cluster.scope.clone();
    let has = |i: usize, line: String| {
        let path = logs[i].clone();
        async move {
            wait_for(&format!("`{line}` from node {i}'s callback"), Duration::from_secs(30), || async {
                Ok(callback_lines(&path).contains(&line).then_some(()))
            })
            .await
        }
    };
    has(old, format!("on_start primary {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    has(candidate, format!("on_start replica {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));

    let body = format!(r#"{{"leader":"{}","candidate":"{}"}}"#, cluster.nodes[old].name, cluster.nodes[candidate].name);
    let (status, text) = http(cluster.nodes[old].api_port, "POST", "/switchover", Some(&body)).await.unwrap();
    assert_eq!(status, 200, "{text}");
    has(candidate, format!("on_role_change primary {scope}"))
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    has(old, format!("on_role_change replica {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));

    let (status, _) = http(cluster.nodes[candidate].api_port, "POST", "/reload", None).await.unwrap();
    assert_eq!(status, 202);
    has(candidate, format!("on_reload primary {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    let (status, text) = http(cluster.nodes[old].api_port, "POST", "/restart", Some("{}")).await.unwrap();
    assert!(status < 300, "{status} {text}");
    has(old, format!("on_restart replica {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    cluster.nodes[old].stop_agent().await.unwrap();
    has(old, format!("on_stop replica {scope}")).await.unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    // The demoted node never told its program it started as a primary again, and nothing ran
    // a callback twice for one event.
    let old_lines = callback_lines(&logs[old]);
    assert_eq!(old_lines.iter().filter(|l| l.starts_with("on_start")).count(), 1, "{old_lines:?}");
    let log = cluster.nodes[candidate].agent_log();
    assert!(log.contains("callback started"), "{log}");
}
