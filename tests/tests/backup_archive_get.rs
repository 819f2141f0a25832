//! `pgha archive-get` as PostgreSQL's restore_command: exit 0 restored, 1 not in the archive,
//! 126 when the repository cannot be read (PostgreSQL aborts recovery instead of ending it early
//! and promoting at the wrong point), 1 with a message under --soft-errors (a standby streams).

use harness::backup::{pgbench, pgbench_init, BackupRepo};
use harness::{PgInstance, PgOptions};
use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

async fn switch_and_wait_archived(pg: &PgInstance) -> anyhow::Result<String> {
    let seg = pg.sql_value("SELECT pg_walfile_name(pg_switch_wal())").await?.unwrap_or_default();
    harness::wait_for("the switched segment to be archived", Duration::from_secs(60), || async {
        let last = pg.sql_value("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
        Ok((last.as_deref().unwrap_or("") >= seg.as_str()).then_some(()))
    })
    .await?;
    Ok(seg)
}

async fn code(repo: &BackupRepo, args: &[&str]) -> anyhow::Result<(Option<i32>, String)> {
    let out = repo.run(args, Duration::from_secs(60)).await?;
    Ok((out.status.code(), String::from_utf8_lossy(&out.stderr).to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_repository_aborts_recovery_unless_errors_are_soft() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let mut pg = PgInstance::init("get-codes", repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    pg.start().await?;
    pgbench_init(&pg, 1).await?;
    repo.ok(&["backup", "create"]).await?;
    pgbench(&pg, &["-t", "200"]).await?;
    let seg = switch_and_wait_archived(&pg).await?;
    let dest = repo.scratch_path("fetched");
    let dest_s = dest.display().to_string();

    assert_eq!(code(&repo, &["archive-get", &seg, &dest_s]).await?.0, Some(0));
    assert_eq!(std::fs::metadata(&dest)?.len(), 16 << 20);
    assert_eq!(code(&repo, &["archive-get", "0000000100000000000000F0", &dest_s]).await?, (Some(1), String::new()));

    // The repository's WAL directory becomes unreadable for the PostgreSQL OS user.
    let wal_dir = repo.local_path().join("wal/00000001");
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o000))?;
    let (c, err) = code(&repo, &["archive-get", &seg, &dest_s]).await?;
    assert_eq!(c, Some(126), "{err}");
    assert!(err.contains(&seg) && err.contains("recovery stops here"), "{err}");
    let (c, err) = code(&repo, &["archive-get", "--soft-errors", &seg, &dest_s]).await?;
    assert_eq!(c, Some(1), "{err}");
    assert!(err.contains("--soft-errors") && err.contains("Permission denied"), "{err}");

    // A point-in-time restore started while the repository is unreadable stops with the message
    // instead of promoting at the end of the backup.
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755))?;
    let restored = repo.restore_into("get-fatal", &[]).await?;
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o000))?;
    let started = harness::backup::start_restored(restored).await;
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755))?;
    let e = match started {
        Ok(_) => anyhow::bail!("recovery ended and promoted although the repository could not be read"),
        Err(e) => format!("{e:#}"),
    };
    assert!(e.contains("recovery stops here") && e.contains("command not executable"), "{e}");
    assert!(!e.contains("database system is ready to accept connections"), "{e}");
    Ok(())
}

fn sha(path: &std::path::Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_segments_are_served_and_a_bad_spool_file_is_not() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let mut pg = PgInstance::init("prefetch", repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    let config = std::fs::read_to_string(&repo.config)?;
    std::fs::write(&repo.config, config.replace("jobs = 2\n", "jobs = 2\narchive_get_prefetch = 8\n"))?;
    pg.start().await?;
    pg.sql("CREATE TABLE t(v text)").await?;
    let mut segs = Vec::new();
    for _ in 0..6 {
        pg.sql("INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 2000) g").await?;
        segs.push(switch_and_wait_archived(&pg).await?);
    }
    // A data directory of this cluster (for pg_control) whose pg_wal receives the files.
    repo.ok(&["backup", "create"]).await?;
    let restored = repo.restore_into("prefetch-target", &["--immediate"]).await?;
    let pg_wal = restored.data_dir().join("pg_wal");
    let spool = pg_wal.join("pgha-prefetch");
    let dest = pg_wal.join("RECOVERYXLOG");
    let dest_s = dest.display().to_string();
    let elsewhere = repo.scratch_path("direct");
    let elsewhere_s = elsewhere.display().to_string();

    let (c, err) = code(&repo, &["archive-get", &segs[0], &dest_s]).await?;
    assert_eq!(c, Some(0), "{err}");
    harness::wait_for("the prefetch worker to spool the next segments", Duration::from_secs(30), || async {
        let present: Vec<_> =
            std::fs::read_dir(&spool).into_iter().flatten().flatten().map(|e| e.file_name()).collect();
        anyhow::ensure!(segs[1..].iter().all(|s| spool.join(s).is_file()), "{segs:?}: spool has {present:?}; {err}");
        Ok(Some(()))
    })
    .await?;

    // A flipped byte in a spooled file: not served, fetched from the repository instead.
    let victim = spool.join(&segs[1]);
    let mut bytes = std::fs::read(&victim)?;
    let at = bytes.len() - 100;
    bytes[at] ^= 0x10;
    std::fs::write(&victim, bytes)?;
    let (c, err) = code(&repo, &["archive-get", &segs[1], &dest_s]).await?;
    assert_eq!(c, Some(0), "{err}");
    assert!(err.contains(&format!("prefetched {} not used", segs[1])), "{err}");
    assert_eq!(code(&repo, &["archive-get", &segs[1], &elsewhere_s]).await?.0, Some(0));
    assert_eq!(sha(&dest)?, sha(&elsewhere)?);

    // Another segment's file under this name: not served either.
    std::fs::copy(spool.join(&segs[4]), spool.join(&segs[3]))?;
    // From here on the repository cannot be read: what succeeds comes from the spool.
    let wal_dir = repo.local_path().join("wal/00000001");
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o000))?;
    let served = code(&repo, &["archive-get", &segs[2], &dest_s]).await;
    let wrong = code(&repo, &["archive-get", &segs[3], &dest_s]).await;
    std::fs::set_permissions(&wal_dir, std::fs::Permissions::from_mode(0o755))?;
    let (c, err) = served?;
    assert_eq!(c, Some(0), "{err}");
    assert!(!spool.join(&segs[2]).exists(), "a served file stays in the spool");
    assert_eq!(code(&repo, &["archive-get", &segs[2], &elsewhere_s]).await?.0, Some(0));
    assert_eq!(sha(&dest)?, sha(&elsewhere)?);
    let (c, err) = wrong?;
    assert_eq!(c, Some(126), "a misnamed spool file was served: {err}");
    assert!(err.contains("the name says"), "{err}");
    Ok(())
}

/// Not a check: replays ~70 archived segments with and without prefetch and prints the times
/// (`cargo nextest run -p pgha-tests --test backup_archive_get --run-ignored only`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure_recovery_with_and_without_prefetch() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let mut pg = PgInstance::init("prefetch-speed", repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    pg.start().await?;
    pg.sql("CREATE TABLE t(v text)").await?;
    repo.ok(&["backup", "create"]).await?;
    for _ in 0..70 {
        pg.sql("INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 20000) g; SELECT pg_switch_wal()").await?;
    }
    let last = switch_and_wait_archived(&pg).await?;
    let count = pg.sql_value("SELECT count(*)::text FROM t").await?;
    let config = std::fs::read_to_string(&repo.config)?;
    for (label, prefetch) in [("off", 0), ("8", 8)] {
        std::fs::write(
            &repo.config,
            config.replace("jobs = 2\n", &format!("jobs = 2\narchive_get_prefetch = {prefetch}\n")),
        )?;
        let restored = repo.restore_into(&format!("speed-{prefetch}"), &[]).await?;
        let t0 = std::time::Instant::now();
        let restored = harness::backup::start_restored(restored).await?;
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(restored.sql_value("SELECT count(*)::text FROM t").await?, count);
        eprintln!("prefetch {label}: recovery through {last} took {secs:.2} s");
    }
    Ok(())
}
