//! Agents with `[backup]`: every member runs with the agent-written archive settings, the primary
//! archives, and after the primary's node is lost (kill -9 of agent and PostgreSQL) the promoted
//! replica archives on timeline 2 (history file included, older-timeline segments its dead primary
//! had not archived filled in), `backup verify` is clean and a point-in-time restore from the
//! backup taken before the failover reaches a target on timeline 2 exactly. A new cluster with
//! `[bootstrap] method = "restore"` starts from a backup at a point in time: its first member
//! restores and promotes, the other clones it, and the restore's recovery target is gone. A
//! running cluster goes back to a point in time with `pgha ctl restore-cluster`: a restore that
//! cannot work leaves it as it was, one that works rolls the primary back and clones the standby.

use harness::agent_checks::streaming_cluster;
use harness::backup::{start_restored, BackupRepo};
use harness::cluster::{connect, PghaCluster, Timing, SUPERUSER_PASSWORD};
use harness::{run_pgha, wait_for, PgInstance, PgOptions};
use std::time::{Duration, Instant};

const TABLE_MD5: &str =
    "select md5(coalesce(string_agg(id::text || ':' || v, ',' order by id), '')) || '/' || count(*) from t";

async fn value(dsn: &str, sql: &str) -> anyhow::Result<String> {
    let c = connect(dsn).await?;
    let rows = c.simple_query(sql).await?;
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("{sql}: no value"))
}

async fn archived_through(dsn: &str, segment: &str) -> anyhow::Result<()> {
    wait_for(&format!("{segment} to be archived"), Duration::from_secs(30), || async {
        let last = value(dsn, "select coalesce(last_archived_wal, '') from pg_stat_archiver").await?;
        Ok((last.as_str() >= segment).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_promoted_replica_continues_the_archive_and_pitr_follows_the_failover() -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = BackupRepo::local()?;
    let extra = format!("[backup]\nconfig = \"{}\"\n", repo.config.display());
    let cluster = PghaCluster::start_on_etcd_with(3, Timing::default(), &extra).await?;
    let old = streaming_cluster(&cluster, None).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    for n in &cluster.nodes {
        assert_eq!(value(&n.dsn(), "show archive_mode").await?, "on", "{}", n.name);
        let archive = value(&n.dsn(), "show archive_command").await?;
        let restore = value(&n.dsn(), "show restore_command").await?;
        let cfg = std::fs::canonicalize(&repo.config)?.display().to_string();
        assert!(
            archive.starts_with('/') && archive.ends_with(&format!(" archive-push --config {cfg} %p")),
            "{archive}"
        );
        assert!(restore.ends_with(&format!(" archive-get --config {cfg} --soft-errors %f \"%p\"")), "{restore}");
    }

    // A base backup of the primary, then rows on timeline 1.
    let p = &cluster.nodes[old];
    let dsn = p.dsn();
    connect(&dsn)
        .await?
        .batch_execute(
            "create table t(id int primary key, v text); insert into t select g, 'before backup' from generate_series(1, 100) g",
        )
        .await?;
    repo.write_config_for(&repo.repo_toml()?, Some((p.data_dir(), p.pg_port, SUPERUSER_PASSWORD.into())), None)?;
    let out = repo.ok(&["backup", "create"]).await?;
    let label = out.split_whitespace().nth(1).unwrap_or_default().to_string();
    assert!(out.contains("complete"), "{out}");

    // Rows and a few completed segments on timeline 1, replicated, then the node is lost at once:
    // segments its archiver had not pushed yet are still on the replicas.
    let c = connect(&dsn).await?;
    for round in 0..3 {
        c.batch_execute(&format!(
            "insert into t select g, 'timeline 1' from generate_series({a}, {b}) g; select pg_switch_wal()",
            a = 1000 + round * 100,
            b = 1099 + round * 100
        ))
        .await?;
    }
    cluster.wait_replicated(old, Duration::from_secs(30)).await?;
    let mut cluster = cluster;
    cluster.nodes[old].kill_node();

    // A replica is promoted onto timeline 2 and archives there.
    let new = streaming_cluster(&cluster, Some(old)).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    let dsn = cluster.nodes[new].dsn();
    let c = connect(&dsn).await?;
    c.batch_execute("insert into t select g, 'timeline 2' from generate_series(5000, 5099) g").await?;
    let expected = value(&dsn, TABLE_MD5).await?;
    let target = value(&dsn, "select clock_timestamp()::text").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.batch_execute("insert into t select g, 'after the target' from generate_series(9000, 9099) g").await?;
    let timeline = value(&dsn, "select timeline_id::text from pg_control_checkpoint()").await?;
    assert_eq!(timeline, "2");
    let seg = value(&dsn, "select pg_walfile_name(pg_switch_wal())").await?;
    archived_through(&dsn, &seg).await?;
    assert!(repo.local_path().join("wal/00000002/00000002.history.zst").is_file(), "no history file in the archive");

    let v = repo.ok(&["backup", "verify"]).await?;
    assert!(v.contains("all good"), "{v}");
    let list = repo.ok(&["backup", "list"]).await?;
    assert!(!list.contains("WAL missing"), "{list}");

    let restored = repo.restore_into("pitr-tl2", &["--set", &label, "--target-time", &target]).await?;
    let restored = start_restored(restored).await?;
    assert_eq!(restored.sql_value(TABLE_MD5).await?.as_deref(), Some(expected.as_str()));
    let tl = restored.sql_value("select timeline_id::text from pg_control_checkpoint()").await?;
    assert_eq!(tl.as_deref(), Some("3"), "the restore must branch off timeline 2");
    eprintln!("backup_agent: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_cluster_bootstraps_from_a_backup_at_a_point_in_time() -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = BackupRepo::local()?;
    // The agents' max_connections (40): a restored server must not have fewer than its source.
    let options = PgOptions::default().param("max_connections", "40");
    let mut source = PgInstance::init("bootstrap-source", repo.archiving(options)?).await?;
    repo.attach(&source, None)?;
    source.start().await?;
    source.sql("create table t(id int primary key, v text); insert into t select g, 'before backup' from generate_series(1, 100) g").await?;
    let out = repo.ok(&["backup", "create"]).await?;
    assert!(out.contains("complete"), "{out}");
    // The restored cluster has the roles and passwords of the target, and the harness logs in to
    // its nodes with SUPERUSER_PASSWORD: set it on the source, then go on in the same session.
    let c = source.connect().await?;
    let one = |rows: Vec<tokio_postgres::SimpleQueryMessage>| {
        rows.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .unwrap_or_default()
    };
    c.batch_execute(&format!(
        "alter role postgres password '{SUPERUSER_PASSWORD}'; \
         insert into t select g, 'before the target' from generate_series(200, 299) g"
    ))
    .await?;
    let expected = one(c.simple_query(TABLE_MD5).await?);
    let target = one(c.simple_query("select clock_timestamp()::text").await?);
    tokio::time::sleep(Duration::from_millis(100)).await;
    c.batch_execute("insert into t select g, 'after the target' from generate_series(900, 999) g").await?;
    let seg = one(c.simple_query("select pg_walfile_name(pg_switch_wal())").await?);
    wait_for("the switched segment to be archived", Duration::from_secs(60), || async {
        let last = one(c.simple_query("select coalesce(last_archived_wal, '') from pg_stat_archiver").await?);
        Ok((last >= seg).then_some(()))
    })
    .await?;

    let mut cluster = PghaCluster::prepare_on_etcd(2, Timing::default()).await?;
    for n in &mut cluster.nodes {
        n.add_section(&format!(
            "[bootstrap]\nmethod = \"restore\"\nbackup_config = \"{}\"\ntarget_time = \"{target}\"",
            repo.config.display()
        ));
    }
    cluster.start_all()?;
    let primary = streaming_cluster(&cluster, None).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    let replica = 1 - primary;
    let p = cluster.nodes[primary].dsn();
    assert_eq!(value(&p, TABLE_MD5).await?, expected, "the primary is not at the target");
    assert_eq!(value(&p, "select timeline_id::text from pg_control_checkpoint()").await?, "2");
    // No recovery target is left behind: not in the primary's files (its running server keeps
    // the values it started with; they only act in recovery), so not in its clone either.
    let auto = std::fs::read_to_string(cluster.nodes[primary].data_dir().join("postgresql.auto.conf"))?;
    assert!(!auto.contains("recovery_target_time =") && !auto.contains("restore_command"), "{auto}");
    let r = cluster.nodes[replica].dsn();
    assert_eq!(value(&r, "select current_setting('recovery_target_time')").await?, "", "{}", cluster.logs());
    connect(&p).await?.batch_execute("insert into t values (5000, 'written on the new cluster')").await?;
    cluster.wait_replicated(primary, Duration::from_secs(30)).await?;
    assert_eq!(value(&r, TABLE_MD5).await?, value(&p, TABLE_MD5).await?);
    let log = cluster.nodes[primary].agent_log();
    assert!(log.contains("restoring the data directory from a backup"), "{log}");
    eprintln!("bootstrap from backup: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_restores_a_running_cluster_to_a_point_in_time() -> anyhow::Result<()> {
    restores_a_running_cluster(false).await
}

/// The same restore on the built-in Raft (the default DCS), without the failure steps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_restores_a_running_cluster_on_the_built_in_raft() -> anyhow::Result<()> {
    restores_a_running_cluster(true).await
}

async fn restores_a_running_cluster(on_raft: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let repo = BackupRepo::local()?;
    let extra = format!("[backup]\nconfig = \"{}\"\n", repo.config.display());
    let cluster = if on_raft {
        PghaCluster::start_on_raft_with(2, Timing::default(), &extra).await?
    } else {
        PghaCluster::start_on_etcd_with(2, Timing::default(), &extra).await?
    };
    let primary = streaming_cluster(&cluster, None).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    let standby = 1 - primary;
    let p = &cluster.nodes[primary];
    let dsn = p.dsn();
    let c = connect(&dsn).await?;
    c.batch_execute("create table t(id int primary key, v text); insert into t select g, 'before backup' from generate_series(1, 100) g")
        .await?;
    // The base backup through the leader's agent (`pgha ctl backup`), from any member's API.
    let out = run_pgha(
        &["ctl", "--api", &format!("http://127.0.0.1:{}", cluster.nodes[standby].api_port), "backup"],
        Duration::from_secs(300),
    )
    .await?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && text.contains("backup started") && text.contains("complete"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = repo.ok(&["backup", "list"]).await?;
    assert!(list.contains("Full"), "{list}");
    c.batch_execute("insert into t select g, 'before the target' from generate_series(200, 299) g").await?;
    let expected = value(&dsn, TABLE_MD5).await?;
    let target = value(&dsn, "select clock_timestamp()::text").await?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No segment switch here: the restore must archive the WAL that holds the target itself.
    c.batch_execute("insert into t select g, 'after the target' from generate_series(900, 999) g").await?;
    cluster.wait_replicated(primary, Duration::from_secs(30)).await?;
    let before = value(&dsn, TABLE_MD5).await?;
    let timeline_before = value(&dsn, "select timeline_id::text from pg_control_checkpoint()").await?;
    let api = format!("http://127.0.0.1:{}", cluster.nodes[standby].api_port);
    let ctl = |args: Vec<String>| {
        let api = api.clone();
        async move {
            let mut all = vec!["ctl".to_string(), "--api".into(), api];
            all.extend(args);
            let all: Vec<&str> = all.iter().map(String::as_str).collect();
            run_pgha(&all, Duration::from_secs(300)).await
        }
    };
    let restore = |extra: &[&str]| {
        let mut args: Vec<String> = vec!["restore-cluster".into(), "--target-time".into(), target.clone()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // The ways a restore is refused or undone, on etcd (the same code runs on either DCS).
    if !on_raft {
        // Without --force it only says what it would do.
        let out = ctl(restore(&[])).await?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains("Add --force"), "{err}");
        // With archiving broken (the repository unwritable), the restore is abandoned before
        // PostgreSQL is touched.
        use std::os::unix::fs::PermissionsExt;
        let started_at = |dsn: String| async move { value(&dsn, "select pg_postmaster_start_time()::text").await };
        let postmaster = started_at(dsn.clone()).await?;
        let repo_dir = repo.local_path();
        let mode = std::fs::metadata(&repo_dir)?.permissions().mode();
        std::fs::set_permissions(&repo_dir, std::fs::Permissions::from_mode(0o000))?;
        let out = ctl(restore(&["--force"])).await;
        std::fs::set_permissions(&repo_dir, std::fs::Permissions::from_mode(mode))?;
        let out = out?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success() && text.contains("did not reach the archive"), "{text}");
        assert_eq!(started_at(dsn.clone()).await?, postmaster, "PostgreSQL was restarted by a refused restore");
        // A restore that cannot work (no such backup) gives the data directory back.
        let out = ctl(restore(&["--set", "20000101-000000F", "--force"])).await?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(!out.status.success(), "{text}");
        assert!(text.contains("failed") && text.contains("back in place"), "{text}");
        eprintln!("{text}");
        let again = streaming_cluster(&cluster, None).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
        assert_eq!(again, primary, "the leader changed over a failed restore");
        assert_eq!(value(&dsn, TABLE_MD5).await?, before, "a failed restore changed the data");
        assert_eq!(value(&dsn, "select timeline_id::text from pg_control_checkpoint()").await?, timeline_before);
    }

    // The restore: the primary goes back to the target on a new timeline, the standby follows.
    let out = ctl(restore(&["--force"])).await?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}\n{}", cluster.logs());
    assert!(text.contains("restore started") && text.contains("reinitialize started"), "{text}");
    eprintln!("{text}");
    let now = streaming_cluster(&cluster, None).await.map_err(|e| anyhow::anyhow!("{e}\n{}", cluster.logs()))?;
    assert_eq!(now, primary, "the restored node must stay the leader");
    assert_eq!(value(&dsn, TABLE_MD5).await?, expected, "the primary is not at the target");
    let timeline: u32 = value(&dsn, "select timeline_id::text from pg_control_checkpoint()").await?.parse()?;
    assert!(timeline > timeline_before.parse()?, "no new timeline: {timeline}");
    let auto = std::fs::read_to_string(cluster.nodes[primary].data_dir().join("postgresql.auto.conf"))?;
    assert!(!auto.contains("recovery_target_time ="), "{auto}");
    let mut aside = cluster.nodes[primary].data_dir().into_os_string();
    aside.push(".before-restore");
    assert!(std::path::Path::new(&aside).join("PG_VERSION").is_file(), "the data from before is not kept");
    connect(&dsn).await?.batch_execute("insert into t values (5000, 'after the restore')").await?;
    cluster.wait_replicated(primary, Duration::from_secs(30)).await?;
    let r = cluster.nodes[standby].dsn();
    assert_eq!(value(&r, TABLE_MD5).await?, value(&dsn, TABLE_MD5).await?);
    let log = cluster.nodes[primary].agent_log();
    assert!(log.contains("restore: WAL archived through"), "{log}");
    // The restore's switch of timeline is in the history, with its recovery target as reason.
    let name = cluster.nodes[primary].name.clone();
    let history = wait_for("the restore in ctl history", Duration::from_secs(30), || async {
        let out = ctl(vec!["history".into()]).await?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        Ok(text.lines().any(|l| l.starts_with("1 ") && l.ends_with(&name)).then_some(text))
    })
    .await?;
    assert!(history.contains("before 2") || history.contains("after 2"), "{history}");
    eprintln!("restore-cluster: {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
