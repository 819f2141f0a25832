//! Point-in-time recovery with the real `pgha` binary and PostgreSQL 15: archive with
//! `pgha archive-push`, back up, write more, restore to each kind of target and compare the
//! data's fingerprint with the one recorded at the target.

use harness::backup::{fingerprint, pgbench, pgbench_init, BackupRepo};
use harness::{PgInstance, PgOptions};
use std::time::Duration;

async fn switch_and_wait_archived(pg: &PgInstance) -> anyhow::Result<()> {
    let seg = pg.sql_value("SELECT pg_walfile_name(pg_switch_wal())").await?.unwrap_or_default();
    harness::wait_for("the switched segment to be archived", Duration::from_secs(60), || async {
        let last = pg.sql_value("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
        let failed = pg.sql_value("SELECT coalesce(last_failed_wal, '') FROM pg_stat_archiver").await?;
        anyhow::ensure!(failed.as_deref() == Some("") || failed < last, "archiving failed:\n{}", pg.log());
        Ok((last.as_deref().unwrap_or("") >= seg.as_str()).then_some(()))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_to_each_target_matches_the_checksum_taken_there() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    let mut pg = PgInstance::init("pitr", repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    pg.start().await?;
    pgbench_init(&pg, 2).await?;
    let at_backup = fingerprint(&pg).await?;
    let out = repo.ok(&["backup", "create"]).await?;
    assert!(out.contains("complete"), "{out}");
    tokio::time::sleep(Duration::from_millis(1100)).await;

    pgbench(&pg, &["-t", "200", "-c", "2"]).await?;
    let time_fp = fingerprint(&pg).await?;
    let time = pg.sql_value("SELECT clock_timestamp()::text").await?.unwrap_or_default();
    tokio::time::sleep(Duration::from_millis(50)).await;

    pgbench(&pg, &["-t", "100"]).await?;
    let lsn_fp = fingerprint(&pg).await?;
    let lsn = pg.sql_value("SELECT pg_current_wal_lsn()::text").await?.unwrap_or_default();

    pgbench(&pg, &["-t", "100"]).await?;
    let xid = pg
        .sql_value(
            "BEGIN; UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = 3; \
             SELECT txid_current()::text; COMMIT;",
        )
        .await?
        .unwrap_or_default();
    let xid_fp = fingerprint(&pg).await?;

    // An incremental backup: the name target below is restored from it.
    pgbench(&pg, &["-t", "100"]).await?;
    let out = repo.ok(&["backup", "create", "--type", "incr"]).await?;
    assert!(out.contains("Incr"), "{out}");
    pgbench(&pg, &["-t", "100"]).await?;
    pg.sql("SELECT pg_create_restore_point('before-bad-delete')").await?;
    let name_fp = fingerprint(&pg).await?;

    pg.sql("DELETE FROM pgbench_accounts WHERE aid % 3 = 0").await?;
    let after = fingerprint(&pg).await?;
    switch_and_wait_archived(&pg).await?;
    let listing = repo.ok(&["backup", "list"]).await?;
    assert_eq!(listing.matches("restorable").count(), 2, "{listing}");

    for (name, args, expected) in [
        ("t-time", vec!["--target-time", time.as_str()], &time_fp),
        ("t-lsn", vec!["--target-lsn", lsn.as_str()], &lsn_fp),
        ("t-xid", vec!["--target-xid", xid.as_str()], &xid_fp),
        ("t-name", vec!["--target-name", "before-bad-delete"], &name_fp),
        ("t-end", vec![], &after),
    ] {
        let restored = repo.restore_and_start(name, &args).await?;
        assert_eq!(&fingerprint(&restored).await?, expected, "restore {args:?} does not match the data at the target");
    }
    // --immediate from the first (full) backup: exactly the data when it was taken.
    let first = listing.lines().nth(1).and_then(|l| l.split_whitespace().next()).unwrap_or_default().to_string();
    let restored = repo.restore_and_start("t-imm", &["--immediate", "--set", &first]).await?;
    assert_eq!(fingerprint(&restored).await?, at_backup);
    let v = repo.ok(&["backup", "verify"]).await?;
    assert!(v.contains("all good"), "{v}");
    Ok(())
}
