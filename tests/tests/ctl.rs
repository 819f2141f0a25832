//! `pgha ctl` against real clusters of real agents: list, pause/resume, show/edit-config,
//! switchover, failover, restart and reinit on etcd; on the built-in Raft, a fourth node joins
//! the group as a voter (`dcs.raft.join`), streams as a replica, shows in `list` and
//! `raft-status`, is taken out again with `raft-remove`, and rejoins with an emptied Raft data_dir. Over HTTPS, ctl trusts the agents'
//! CA and shows its client certificate where the agents ask for one.

use harness::agent_checks::{another_primary, healthy, streams_again};
use harness::cluster::{connect, http, PghaCluster, Timing};
use harness::{run_pgha, wait_for};
use std::time::Duration;

/// Runs `pgha ctl --api <api> <args>`; (success, stdout + stderr).
async fn ctl(api_port: u16, args: &[&str]) -> (bool, String) {
    let api = format!("http://127.0.0.1:{api_port}");
    let mut all = vec!["ctl", "--api", api.as_str()];
    all.extend_from_slice(args);
    let out = run_pgha(&all, Duration::from_secs(120)).await.unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

async fn ctl_ok(cluster: &PghaCluster, api_port: u16, args: &[&str]) -> String {
    let (ok, text) = ctl(api_port, args).await;
    assert!(ok, "pgha ctl {args:?} failed:\n{text}\n{}", cluster.logs());
    text
}

/// The `list` row of member `name`, split into its columns.
fn row(list: &str, name: &str) -> Vec<String> {
    list.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no row for {name} in:\n{list}"))
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// A replica's row: role Replica, PostgreSQL running or streaming, on the leader's timeline.
fn assert_replica_row(list: &str, name: &str) {
    let columns = row(list, name);
    assert_eq!(columns[2], "Replica", "{list}");
    assert!(matches!(columns[3].as_str(), "running" | "streaming"), "{list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_operates_a_cluster() {
    let cluster = PghaCluster::start_on_etcd(2, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let primary = healthy(&cluster).await;
    let replica = 1 - primary;
    let (p, r) = (cluster.nodes[primary].name.clone(), cluster.nodes[replica].name.clone());
    let api = cluster.nodes[replica].api_port;

    let list = ctl_ok(&cluster, api, &["list"]).await;
    assert!(list.starts_with(&format!("Cluster: {}", cluster.scope)), "{list}");
    assert_eq!(row(&list, &p)[2], "Leader", "{list}");
    assert_replica_row(&list, &r);
    // A streaming replica says so, as under Patroni 4: its member key carries
    // replication_state, receive_lsn and replay_lsn.
    let streaming = wait_for("the replica to show as streaming in ctl list", Duration::from_secs(30), || async {
        let (ok, text) = ctl(api, &["list"]).await;
        Ok((ok && row(&text, &r)[3] == "streaming").then_some(text))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert_replica_row(&streaming, &r);
    // The replica (the only one) has its receive and replay positions in /cluster, where
    // they were "unknown" before its member key carried them.
    let (status, body) = http(api, "GET", "/cluster", None).await.unwrap();
    assert_eq!(status, 200, "{body}");
    for key in ["receive_lsn", "replay_lsn"] {
        assert!(body.contains(&format!("\"{key}\":\"")), "no {key} in {body}");
        assert!(!body.contains(&format!("\"{key}\":\"unknown\"")), "{key} unknown in {body}");
    }

    // `list --watch 1` prints the list again every second until stopped.
    let mut watch = tokio::process::Command::new(harness::pgha_bin().unwrap())
        .args(["ctl", "--api", &format!("http://127.0.0.1:{api}"), "list", "--watch", "1"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(watch.stdout.take().unwrap()));
    let lists = tokio::time::timeout(Duration::from_secs(20), async {
        let mut lists = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            lists += usize::from(line.starts_with("Cluster: "));
            if lists == 3 {
                break;
            }
        }
        lists
    })
    .await
    .unwrap_or(0);
    let _ = watch.kill().await;
    assert_eq!(lists, 3, "list --watch 1 did not print the list three times within 20 s");

    ctl_ok(&cluster, api, &["pause"]).await;
    assert!(ctl_ok(&cluster, api, &["list"]).await.contains("Maintenance mode: on"));
    ctl_ok(&cluster, api, &["resume"]).await;
    assert!(!ctl_ok(&cluster, api, &["list"]).await.contains("Maintenance mode"));

    let version = ctl_ok(&cluster, api, &["version"]).await;
    let expected = format!("pgha {}", env!("CARGO_PKG_VERSION"));
    assert!(version.starts_with(&format!("pgha ctl version {}", env!("CARGO_PKG_VERSION"))), "{version}");
    assert!(
        version.contains(&format!("{p}: {expected}")) && version.contains(&format!("{r}: {expected}")),
        "{version}"
    );
    let edited = ctl_ok(&cluster, api, &["edit-config", "--set", "postgresql.parameters.work_mem=8MB"]).await;
    assert!(edited.contains("\"work_mem\": \"8MB\""), "{edited}");
    let shown = ctl_ok(&cluster, api, &["show-config"]).await;
    assert!(shown.contains("\"work_mem\": \"8MB\""), "{shown}");
    let (ok, bad) = ctl(api, &["edit-config", "--set", "nokey"]).await;
    assert!(!ok && bad.contains("expected KEY=VALUE"), "{bad}");

    // dsn names the leader's (or a member's) address; reload reaches every member's PostgreSQL.
    let dsn = ctl_ok(&cluster, api, &["dsn"]).await;
    assert_eq!(dsn.trim(), format!("host=127.0.0.1 port={}", cluster.nodes[primary].pg_port));
    let dsn = ctl_ok(&cluster, api, &["dsn", &r]).await;
    assert_eq!(dsn.trim(), format!("host=127.0.0.1 port={}", cluster.nodes[replica].pg_port));
    let loaded = |i: usize| {
        let dsn = cluster.nodes[i].dsn();
        async move {
            let c = connect(&dsn).await?;
            let t: String = c.query_one("select pg_conf_load_time()::text", &[]).await?.try_get(0)?;
            anyhow::Ok(t)
        }
    };
    let before = (loaded(primary).await.unwrap(), loaded(replica).await.unwrap());
    let reloaded = ctl_ok(&cluster, api, &["reload"]).await;
    assert!(reloaded.contains(&format!("{p}: ")) && reloaded.contains(&format!("{r}: ")), "{reloaded}");
    wait_for("both members to reload", Duration::from_secs(30), || async {
        Ok((loaded(primary).await? != before.0 && loaded(replica).await? != before.1).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    // A scheduled switchover is cancelled by flush.
    let later = "2099-01-01T00:00:00+00:00";
    ctl_ok(&cluster, api, &["switchover", "--candidate", &r, "--scheduled", later]).await;
    assert!(ctl_ok(&cluster, api, &["list"]).await.contains("Switchover scheduled"));
    let flushed = ctl_ok(&cluster, api, &["flush", "switchover"]).await;
    assert!(flushed.contains("deleted"), "{flushed}");
    assert!(!ctl_ok(&cluster, api, &["list"]).await.contains("Switchover scheduled"));
    let (ok, text) = ctl(api, &["flush", "switchover"]).await;
    assert!(!ok && text.contains("no switchover is scheduled"), "{text}");

    // A parameter that needs a restart shows in the "Pending restart" column until the member
    // restarts; restart the replica: its postmaster starts again and it streams again.
    assert!(!ctl_ok(&cluster, api, &["list"]).await.contains("Pending restart"));
    ctl_ok(&cluster, api, &["edit-config", "--pg", "max_locks_per_transaction=80"]).await;
    let pending = wait_for("both members pending a restart in ctl list", Duration::from_secs(30), || async {
        let (ok, text) = ctl(api, &["list"]).await;
        let flagged = |name: &str| text.lines().any(|l| l.starts_with(name) && l.trim_end().ends_with('*'));
        Ok((ok && text.contains("Pending restart") && flagged(&p) && flagged(&r)).then_some(text))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    assert_eq!(row(&pending, &p)[2], "Leader", "{pending}");
    let restarted = ctl_ok(&cluster, api, &["restart", &r]).await;
    assert!(restarted.contains(&format!("{r}: running again")), "{restarted}");
    streams_again(&cluster, replica, "the restarted replica streaming", 60).await;
    wait_for("the restarted replica no longer pending a restart", Duration::from_secs(30), || async {
        let (ok, text) = ctl(api, &["list"]).await;
        Ok((ok && row(&text, &r).last().is_none_or(|c| c != "*")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    // Switchover to the replica, then fail over back.
    let answer = ctl_ok(&cluster, api, &["switchover", "--candidate", &r]).await;
    assert!(answer.to_lowercase().contains("switched over"), "{answer}");
    assert_eq!(another_primary(&cluster, primary, 60).await, replica);
    streams_again(&cluster, primary, "the old primary streaming from the new one", 90).await;
    let answer = ctl_ok(&cluster, api, &["failover", "--candidate", &p]).await;
    assert!(
        answer.to_lowercase().contains("failed over") || answer.to_lowercase().contains("switched over"),
        "{answer}"
    );
    assert_eq!(another_primary(&cluster, replica, 60).await, primary);
    // Both switches are in the history, each with its new leader.
    let history = wait_for("two switches in ctl history", Duration::from_secs(30), || async {
        let (ok, text) = ctl(api, &["history"]).await;
        Ok((ok && text.lines().count() == 3).then_some(text))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    eprintln!("{history}");
    let switch = |tl: &str| row(&history, tl);
    assert_eq!(row(&history, "TL")[..2], ["TL", "LSN"], "{history}");
    assert_eq!(switch("1").last().map(String::as_str), Some(r.as_str()), "{history}");
    assert_eq!(switch("2").last().map(String::as_str), Some(p.as_str()), "{history}");
    assert!(switch("1")[1].parse::<u64>().is_ok_and(|lsn| lsn > 0), "{history}");

    // Reinit the replica: a fresh clone that streams again.
    streams_again(&cluster, replica, "the replica streaming before reinit", 90).await;
    let answer = ctl_ok(&cluster, api, &["reinit", &r]).await;
    assert!(answer.starts_with(&format!("{r}: ")), "{answer}");
    streams_again(&cluster, replica, "the reinitialized replica streaming", 120).await;

    // Errors say what is wrong.
    let (ok, text) = ctl(api, &["restart", "nosuchnode"]).await;
    assert!(!ok && text.contains("nosuchnode is not a member of the cluster"), "{text}");
    let (ok, text) = ctl(api, &["raft-status"]).await;
    assert!(!ok && text.contains("etcd"), "{text}");
    let (ok, text) = ctl(1, &["list"]).await;
    assert!(
        !ok && text.contains("cannot reach the agent's REST API") && text.contains("is the agent running"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_joins_the_raft_group_and_is_removed_with_ctl() {
    let mut cluster = PghaCluster::start_on_raft(3, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    healthy(&cluster).await;
    let api = cluster.nodes[0].api_port;
    let status = ctl_ok(&cluster, api, &["raft-status"]).await;
    assert!(status.contains("Voters: node"), "{status}");

    let added = cluster.add_raft_node().unwrap_or_else(|e| panic!("{e:#}"));
    wait_for("node4 to be a voter of the Raft group", Duration::from_secs(60), || async {
        let (ok, text) = ctl(api, &["raft-status"]).await;
        let voters = text.lines().find(|l| l.starts_with("Voters: ")).unwrap_or("").to_string();
        Ok((ok && voters.split(", ").count() == 4 && voters.contains("node4")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    streams_again(&cluster, added, "node4 streaming from the primary", 120).await;
    let list = ctl_ok(&cluster, api, &["list"]).await;
    assert_replica_row(&list, "node4");

    // node4 goes away for good: the others take it out of the quorum.
    cluster.nodes[added].stop_agent().await.unwrap();
    let removed = ctl_ok(&cluster, api, &["raft-remove", "node4"]).await;
    assert!(removed.contains("node4 is no longer a member"), "{removed}");
    let status = ctl_ok(&cluster, api, &["raft-status"]).await;
    let voters = status.lines().find(|l| l.starts_with("Voters: ")).unwrap_or("");
    assert!(voters.split(", ").count() == 3 && !voters.contains("node4"), "{status}");
    // The last voters cannot all go: removing down to none is refused by the group.
    let (ok, text) = ctl(api, &["raft-remove", "nosuch"]).await;
    assert!(!ok, "removing an unknown member succeeded: {text}");

    // It comes back, as docs/operations.md says: `join = true` (kept in its file) and an emptied
    // Raft data_dir. It is a voter again and streams from its slot or a new one.
    std::fs::remove_dir_all(cluster.nodes[added].raft_data_dir()).unwrap();
    cluster.nodes[added].start_agent().unwrap();
    wait_for("node4 to be a voter again", Duration::from_secs(60), || async {
        let (ok, text) = ctl(api, &["raft-status"]).await;
        let voters = text.lines().find(|l| l.starts_with("Voters: ")).unwrap_or("").to_string();
        Ok((ok && voters.split(", ").count() == 4 && voters.contains("node4")).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", cluster.logs()));
    streams_again(&cluster, added, "node4 streaming again after rejoining", 120).await;
}

/// An agent serving its API over HTTPS with `verify_client = optional` and credentials: `ctl
/// list` works with `--cacert` and is refused without it (or over plain HTTP) with a message that
/// says what to pass; `ctl restart` needs the client certificate as well as the credentials,
/// and reaches the member through the `https://` api_url it publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_reaches_agents_over_https_with_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = harness::pki::TestPki::create(dir.path(), "dba").unwrap();
    let (ca, api_cert, api_key) = (&pki.ca, &pki.server_cert, &pki.server_key);
    let mut cluster = PghaCluster::prepare_on_etcd(1, Timing::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    cluster.nodes[0].add_api_setting(&format!(
        "certfile = \"{}\"\nkeyfile = \"{}\"\ncafile = \"{}\"\nverify_client = \"optional\"\n\
         username = \"admin\"\npassword = \"s3cret\"",
        api_cert.display(),
        api_key.display(),
        ca.display()
    ));
    cluster.start_all().unwrap();
    healthy(&cluster).await;
    let node = cluster.nodes[0].name.clone();
    let https = format!("https://127.0.0.1:{}", cluster.nodes[0].api_port);
    let run = |args: Vec<String>| async move {
        let mut all = vec!["ctl".to_string()];
        all.extend(args);
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        let out = run_pgha(&all, Duration::from_secs(120)).await.unwrap();
        (
            out.status.success(),
            format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
        )
    };
    let args = |extra: &[&str]| -> Vec<String> {
        let mut v = vec!["--api".to_string(), https.clone(), "--cacert".into(), ca.display().to_string()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };

    let (ok, list) = run(args(&["list"])).await;
    assert!(ok, "{list}\n{}", cluster.logs());
    assert_eq!(row(&list, &node)[2], "Leader", "{list}");

    let (ok, text) = run(vec!["--api".into(), https.clone(), "list".into()]).await;
    assert!(!ok && text.contains("pass its CA with --cacert"), "{text}");
    let (ok, text) = run(vec!["--api".into(), https.replace("https://", "http://"), "list".into()]).await;
    assert!(!ok && text.contains("if it serves HTTPS (api.certfile), use an https:// URL"), "{text}");

    let credentials = ["--username", "admin", "--password", "s3cret"];
    let (cert, key) = (pki.client_cert.display().to_string(), pki.client_key.display().to_string());
    let certificate = ["--cert", cert.as_str(), "--key", key.as_str()];
    let restart = ["restart", node.as_str()];
    let (ok, text) = run(args(&[&credentials[..], &restart].concat())).await;
    assert!(!ok && text.contains("403") && text.contains("--cert and --key"), "{text}");
    let (ok, text) = run(args(&[&certificate[..], &restart].concat())).await;
    assert!(!ok && text.contains("wants credentials"), "a restart without credentials: {text}");
    // Through the api_url the member publishes: an http:// one would get no answer.
    let (ok, text) = run(args(&[&credentials[..], &certificate, &restart].concat())).await;
    assert!(ok && text.contains(&format!("{node}: running again")), "{text}\n{}", cluster.logs());
}
