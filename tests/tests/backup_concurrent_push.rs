//! Two `pgha archive-push` of the same WAL file name at the same time (two servers archiving
//! one timeline, or a retry racing the original): the same content succeeds twice and is stored
//! once; different content is refused loudly for one of them and the stored object is the other's.
//! On the local repository and on S3 (moto: the create-if-absent put is If-None-Match: *).

use harness::backup::{BackupRepo, MotoServer};
use harness::{PgInstance, PgOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Real segments of a running instance, copied into two directories: `a` as written, `b` with
/// one byte changed in each.
async fn segments(repo: &BackupRepo, name: &str, count: usize) -> anyhow::Result<(Vec<String>, PathBuf, PathBuf)> {
    let mut pg = PgInstance::init(name, PgOptions::default()).await?;
    pg.start().await?;
    pg.sql("CREATE TABLE t(v text)").await?;
    let mut names = Vec::new();
    for _ in 0..count {
        pg.sql("INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 1000) g").await?;
        names.push(pg.sql_value("SELECT pg_walfile_name(pg_switch_wal())").await?.unwrap_or_default());
    }
    let (a, b) = (repo.scratch_path("a"), repo.scratch_path("b"));
    for dir in [&a, &b] {
        std::fs::create_dir_all(dir)?;
    }
    for n in &names {
        let raw = std::fs::read(pg.data_dir().join("pg_wal").join(n))?;
        std::fs::write(a.join(n), &raw)?;
        let mut changed = raw;
        changed[100_000] ^= 0x01;
        std::fs::write(b.join(n), changed)?;
    }
    std::process::Command::new("chmod").args(["-R", "a+rX"]).arg(repo.scratch_path("")).status()?;
    Ok((names, a, b))
}

async fn push_both(repo: &BackupRepo, first: &Path, second: &Path) -> anyhow::Result<[(bool, String); 2]> {
    let (f, s) = (first.display().to_string(), second.display().to_string());
    let one = repo.command(&["archive-push", &f])?.output();
    let two = repo.command(&["archive-push", &s])?.output();
    let (one, two) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(one, two) }).await?;
    let r = |o: std::process::Output| (o.status.success(), String::from_utf8_lossy(&o.stderr).to_string());
    Ok([r(one?), r(two?)])
}

async fn fetched(repo: &BackupRepo, name: &str) -> anyhow::Result<Vec<u8>> {
    let dest = repo.scratch_path("fetched");
    repo.ok(&["archive-get", name, &dest.display().to_string()]).await?;
    Ok(std::fs::read(dest)?)
}

async fn race(repo: &BackupRepo, tag: &str) -> anyhow::Result<()> {
    let (names, a, b) = segments(repo, tag, 6).await?;
    let (same, different) = names.split_at(3);
    for n in same {
        let [one, two] = push_both(repo, &a.join(n), &a.join(n)).await?;
        assert!(one.0 && two.0, "same content pushed twice must succeed twice: {one:?} {two:?}");
        assert_eq!(fetched(repo, n).await?, std::fs::read(a.join(n))?);
    }
    for n in different {
        let [one, two] = push_both(repo, &a.join(n), &b.join(n)).await?;
        assert!(one.0 != two.0, "exactly one of two different contents must be stored: {one:?} {two:?}");
        let (loser, winner_dir) = if one.0 { (&two.1, &a) } else { (&one.1, &b) };
        assert!(loser.contains("already archived") && loser.contains("different content"), "{loser}");
        assert_eq!(
            fetched(repo, n).await?,
            std::fs::read(winner_dir.join(n))?,
            "the stored object is not the winner's"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_name_on_a_local_repository() -> anyhow::Result<()> {
    let repo = BackupRepo::local()?;
    race(&repo, "race-local").await?;
    let objects = std::fs::read_dir(repo.local_path().join("wal/00000001"))?.count();
    assert_eq!(objects, 6, "one object per name, no leftovers of the losing writes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pushes_of_one_name_on_s3() -> anyhow::Result<()> {
    let moto = match MotoServer::start().await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: moto_server cannot be started ({e:#}); install it with pip install 'moto[server]'");
            return Ok(());
        }
    };
    moto.create_bucket("race").await?;
    let repo = BackupRepo::s3(&moto, "race")?;
    race(&repo, "race-s3").await
}
