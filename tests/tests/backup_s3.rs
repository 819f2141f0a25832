//! The same archive / backup / point-in-time restore round trip against an S3-compatible server
//! (moto, from PyPI, started by the test).

use harness::backup::{fingerprint, pgbench, pgbench_init, BackupRepo, MotoServer};
use harness::{PgInstance, PgOptions};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_repository_round_trip() -> anyhow::Result<()> {
    let moto = match MotoServer::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: moto_server cannot be started ({e:#}); install it with pip install 'moto[server]'");
            return Ok(());
        }
    };
    moto.create_bucket("pgha-backups").await?;
    let repo = BackupRepo::s3(&moto, "pgha-backups")?;
    let mut pg = PgInstance::init("s3", repo.archiving(PgOptions::default())?).await?;
    repo.attach(&pg, None)?;
    pg.start().await?;
    pgbench_init(&pg, 2).await?;
    repo.ok(&["backup", "create"]).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    pgbench(&pg, &["-t", "200"]).await?;
    let fp = fingerprint(&pg).await?;
    let time = pg.sql_value("SELECT clock_timestamp()::text").await?.unwrap_or_default();
    pgbench(&pg, &["-t", "200"]).await?;
    let seg = pg.sql_value("SELECT pg_walfile_name(pg_switch_wal())").await?.unwrap_or_default();
    harness::wait_for("the switched segment to be archived to S3", Duration::from_secs(60), || async {
        let last = pg.sql_value("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
        Ok((last.as_deref().unwrap_or("") >= seg.as_str()).then_some(()))
    })
    .await?;
    let restored = repo.restore_and_start("s3-restored", &["--target-time", &time]).await?;
    assert_eq!(fingerprint(&restored).await?, fp);
    let v = repo.ok(&["backup", "verify"]).await?;
    assert!(v.contains("all good"), "{v}");
    Ok(())
}
