//! What an operator fears: a corrupt stored file, a lost WAL segment, a backup killed half way,
//! retention deleting too much, and backups from a standby or across a failover.

use harness::backup::{fingerprint, pgbench, pgbench_init, BackupRepo};
use harness::{PgInstance, PgOptions};
use std::time::Duration;

async fn switch_and_wait_archived(pg: &PgInstance) -> anyhow::Result<()> {
    let seg = pg.sql_value("SELECT pg_walfile_name(pg_switch_wal())").await?.unwrap_or_default();
    harness::wait_for("the switched segment to be archived", Duration::from_secs(60), || async {
        let last = pg.sql_value("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
        Ok((last.as_deref().unwrap_or("") >= seg.as_str()).then_some(()))
    })
    .await
}

async fn primary(repo: &BackupRepo, name: &str, scale: u32) -> anyhow::Result<PgInstance> {
    let mut pg = PgInstance::init(name, repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    pg.start().await?;
    pgbench_init(&pg, scale).await?;
    Ok(pg)
}

fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_stored_file_and_a_missing_wal_segment_are_named() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let pg = primary(&repo, "corrupt", 2).await?;
    repo.ok(&["backup", "create"]).await?;
    for _ in 0..3 {
        pgbench(&pg, &["-t", "100"]).await?;
        switch_and_wait_archived(&pg).await?;
    }
    let ok = repo.ok(&["backup", "verify"]).await?;
    assert!(ok.contains("all good"), "{ok}");

    // One byte of the biggest stored file (pgbench_accounts) flipped.
    let data = files_under(&repo.local_path().join("backups"));
    let victim = data.iter().max_by_key(|p| p.metadata().map(|m| m.len()).unwrap_or(0)).cloned().unwrap_or_default();
    let mut bytes = std::fs::read(&victim)?;
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes)?;
    let rel = victim.strip_prefix(repo.local_path())?.display().to_string();
    let out = repo.run(&["backup", "verify"], Duration::from_secs(120)).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains(&format!("corrupt: {rel}")), "verify must name {rel}:\n{stdout}");
    let to = repo.scratch_path("restore-target").display().to_string();
    let out = repo.run(&["backup", "restore", "--to-dir", &to, "--immediate"], Duration::from_secs(120)).await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore of a corrupt backup succeeded");
    assert!(stderr.contains(&rel) && stderr.contains("corrupt"), "{stderr}");

    // One WAL segment removed from the middle of the archive.
    let wal = files_under(&repo.local_path().join("wal"));
    let segs: Vec<_> = wal.iter().filter(|p| p.file_name().is_some_and(|n| n.len() == 28)).collect();
    assert!(segs.len() >= 4, "{segs:?}");
    let gone = segs[segs.len() - 2].clone();
    std::fs::remove_file(&gone)?;
    let name = gone.file_name().and_then(|n| n.to_str()).unwrap_or_default().trim_end_matches(".zst").to_string();
    let out = repo.run(&["backup", "verify"], Duration::from_secs(120)).await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("WAL {name} missing")), "verify must report the gap at {name}:\n{stdout}");
    assert!(stdout.contains("unrestorable from"), "{stdout}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_killed_half_way_is_not_listed_and_the_next_one_succeeds() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let pg = primary(&repo, "killed", 10).await?;
    let mut child = repo.command(&["backup", "create", "--jobs", "1"])?.spawn()?;
    let backups = repo.local_path().join("backups");
    harness::wait_for("the backup to store some data", Duration::from_secs(60), || async {
        Ok((files_under(&backups).len() > 3).then_some(()))
    })
    .await?;
    child.start_kill()?;
    let status = child.wait().await?;
    assert!(!status.success());
    let listing = repo.ok(&["backup", "list"]).await?;
    assert!(listing.contains("no complete backups") && listing.contains("interrupted"), "{listing}");
    let fp = fingerprint(&pg).await?;
    repo.ok(&["backup", "create"]).await?;
    let listing = repo.ok(&["backup", "list"]).await?;
    assert_eq!(listing.matches("  Full  ").count(), 1, "{listing}");
    let restored = repo.restore_and_start("after-kill", &["--immediate"]).await?;
    assert_eq!(fingerprint(&restored).await?, fp);
    // expire removes the leftovers of the killed backup.
    let out = repo.ok(&["backup", "expire", "--retention-full", "1"]).await?;
    assert!(out.contains("expired interrupted backups"), "{out}");
    assert!(!repo.ok(&["backup", "list"]).await?.contains("interrupted"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_keeps_what_the_oldest_kept_backup_needs() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let pg = primary(&repo, "expire", 1).await?;
    let mut fps = Vec::new();
    for _ in 0..3 {
        fps.push(fingerprint(&pg).await?);
        repo.ok(&["backup", "create"]).await?;
        pgbench(&pg, &["-t", "100"]).await?;
        switch_and_wait_archived(&pg).await?;
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    let labels: Vec<String> = repo
        .ok(&["backup", "list"])
        .await?
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    assert_eq!(labels.len(), 3);
    let dry = repo.ok(&["backup", "expire", "--retention-full", "2", "--dry-run"]).await?;
    assert!(dry.contains(&format!("would expire backups: {}", labels[0])), "{dry}");
    assert_eq!(repo.ok(&["backup", "list"]).await?.matches("restorable").count(), 3, "dry run deleted something");
    let out = repo.ok(&["backup", "expire", "--retention-full", "2"]).await?;
    assert!(out.contains(&format!("expired backups: {}", labels[0])), "{out}");
    let v = repo.ok(&["backup", "verify"]).await?;
    assert!(v.contains("2 backups") && v.contains("all good"), "{v}");
    let restored = repo.restore_and_start("oldest-kept", &["--immediate", "--set", &labels[1]]).await?;
    assert_eq!(fingerprint(&restored).await?, fps[1]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_from_a_standby_and_restore_across_a_failover() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let mut pg = primary(&repo, "tl1", 2).await?;
    let mut standby = PgInstance::standby_of(&pg, "tl2").await?;
    standby.start().await?;
    repo.attach(&pg, Some(&standby))?;
    let fp = fingerprint(&pg).await?;
    let out = repo.ok(&["backup", "create", "--from-standby"]).await?;
    assert!(out.contains("complete"), "{out}");
    let restored = repo.restore_and_start("from-standby", &["--immediate"]).await?;
    assert_eq!(fingerprint(&restored).await?, fp);
    drop(restored);

    // Failover: the primary stops, the standby is promoted to timeline 2 and archives there.
    pgbench(&pg, &["-t", "100"]).await?;
    let lsn = pg.sql_value("SELECT pg_current_wal_lsn()::text").await?.unwrap_or_default();
    harness::wait_for("the standby to catch up", Duration::from_secs(60), || async {
        let r = standby.sql_value(&format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn")).await?;
        Ok((r.as_deref() == Some("t")).then_some(()))
    })
    .await?;
    pg.stop(harness::StopMode::Fast).await?;
    standby.sql("SELECT pg_promote()").await?;
    harness::wait_for("the promotion", Duration::from_secs(60), || async {
        Ok((standby.sql_value("SELECT pg_is_in_recovery()::text").await?.as_deref() == Some("false")).then_some(()))
    })
    .await?;
    pgbench(&standby, &["-t", "100"]).await?;
    let fp2 = fingerprint(&standby).await?;
    let time = standby.sql_value("SELECT clock_timestamp()::text").await?.unwrap_or_default();
    pgbench(&standby, &["-t", "100"]).await?;
    switch_and_wait_archived(&standby).await?;
    let restored = repo.restore_and_start("tl2-target", &["--target-time", &time]).await?;
    assert_eq!(fingerprint(&restored).await?, fp2, "the restore did not follow the failover to timeline 2");
    let tl = restored.sql_value("SELECT timeline_id::text FROM pg_control_checkpoint()").await?;
    assert!(tl.as_deref().and_then(|t| t.parse::<u32>().ok()).is_some_and(|t| t >= 3), "{tl:?}");
    let v = repo.ok(&["backup", "verify"]).await?;
    assert!(v.contains("all good"), "{v}");
    Ok(())
}
