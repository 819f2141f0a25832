//! Backup test harness: a repository (local directory, or a bucket on a moto S3 server started
//! for the test) with a config file for `pgha backup`/`archive-*`, the archive settings a
//! PostgreSQL instance needs to archive into it, `pgha` run as the PostgreSQL OS user, and
//! restored instances started from a `pgha backup restore`.

use crate::pgha::pgha_bin;
use crate::postgres::{PgInstance, PgOptions};
use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use anyhow::{bail, Context};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

/// A moto S3 server on a free port (`pip install 'moto[server]'`), killed on drop.
pub struct MotoServer {
    _process: ManagedProcess,
    pub port: u16,
    _dir: ScratchDir,
}

impl MotoServer {
    /// Starts moto_server; Err (with the reason) when moto is not installed.
    pub async fn start() -> anyhow::Result<MotoServer> {
        let dir = ScratchDir::new("moto", None)?;
        let port = crate::ports::free_port()?;
        let mut cmd = std::process::Command::new("moto_server");
        cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = ManagedProcess::spawn("moto_server", cmd, &dir.join("moto.log"))?;
        let server = MotoServer { _process: process, port, _dir: dir };
        wait_for("moto_server to listen", Duration::from_secs(30), || async move {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port)).await.ok().map(|_| ()))
        })
        .await?;
        Ok(server)
    }

    /// Creates a bucket (moto accepts unsigned requests).
    pub async fn create_bucket(&self, bucket: &str) -> anyhow::Result<()> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await?;
        let req = format!(
            "PUT /{bucket} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        );
        s.write_all(req.as_bytes()).await?;
        let mut resp = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut resp)).await??;
        if !resp.starts_with("HTTP/1.1 200") {
            bail!("creating bucket {bucket} on moto: {}", resp.lines().next().unwrap_or(""));
        }
        Ok(())
    }
}

/// A backup repository and the config file pointing at it and at a primary (and standby).
pub struct BackupRepo {
    dir: ScratchDir,
    run_as: Option<RunAs>,
    pub config: PathBuf,
}

impl BackupRepo {
    /// A local repository in a scratch dir owned by the PostgreSQL OS user.
    pub fn local() -> anyhow::Result<BackupRepo> {
        let run_as = RunAs::for_postgres(DEFAULT_USER)?;
        let dir = ScratchDir::new("backup-repo", run_as)?;
        let repo = dir.join("repo");
        let body = format!("[repository]\npath = \"{}\"\n", repo.display());
        BackupRepo::with_repository(dir, run_as, &body)
    }

    /// A repository in bucket `bucket` of a moto server.
    pub fn s3(moto: &MotoServer, bucket: &str) -> anyhow::Result<BackupRepo> {
        let run_as = RunAs::for_postgres(DEFAULT_USER)?;
        let dir = ScratchDir::new("backup-s3", run_as)?;
        let secret = dir.join("s3-secret");
        std::fs::write(&secret, "testing-secret\n")?;
        if let Some(o) = run_as {
            o.chown(&secret)?;
        }
        let body = format!(
            "[repository.s3]\nbucket = \"{bucket}\"\nendpoint = \"http://127.0.0.1:{}\"\nregion = \"us-east-1\"\n\
             access_key_id = \"testing\"\nsecret_access_key_file = \"{}\"\nallow_http = true\n",
            moto.port,
            secret.display()
        );
        BackupRepo::with_repository(dir, run_as, &body)
    }

    fn with_repository(dir: ScratchDir, run_as: Option<RunAs>, repo_toml: &str) -> anyhow::Result<BackupRepo> {
        let config = dir.join("backup.toml");
        let r = BackupRepo { dir, run_as, config };
        r.write_config(repo_toml, None, None)?;
        Ok(r)
    }

    /// Rewrites the config with [postgresql] (and [standby]) for these instances.
    pub fn write_config(
        &self,
        repo_toml: &str,
        primary: Option<&PgInstance>,
        standby: Option<&PgInstance>,
    ) -> anyhow::Result<()> {
        let server = |pg: Option<&PgInstance>| pg.map(|pg| (pg.data_dir(), pg.port(), pg.password().to_string()));
        self.write_config_for(repo_toml, server(primary), server(standby))
    }

    /// Like `write_config`, for servers given as (data directory, port, superuser password).
    pub fn write_config_for(
        &self,
        repo_toml: &str,
        primary: Option<(PathBuf, u16, String)>,
        standby: Option<(PathBuf, u16, String)>,
    ) -> anyhow::Result<()> {
        let mut text = format!("scope = \"main\"\njobs = 2\narchive_timeout_secs = 60\n{repo_toml}");
        for (section, pg) in [("postgresql", primary), ("standby", standby)] {
            if let Some((data_dir, port, password)) = pg {
                let pw = self.dir.join(&format!("{section}.pw"));
                std::fs::write(&pw, password)?;
                if let Some(o) = self.run_as {
                    o.chown(&pw)?;
                }
                text += &format!(
                    "[{section}]\ndata_dir = \"{}\"\nconninfo = \"host=127.0.0.1 port={port} user=postgres dbname=postgres\"\n\
                     password_file = \"{}\"\n",
                    data_dir.display(),
                    pw.display()
                );
            }
        }
        std::fs::write(&self.config, text).context("writing backup.toml")?;
        if let Some(o) = self.run_as {
            o.chown(&self.config)?;
        }
        Ok(())
    }

    /// The repository section currently in the config.
    pub fn repo_toml(&self) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(&self.config)?;
        let start = text.find("[repository").context("no [repository] in config")?;
        let end = text[start..].find("[postgresql]").map_or(text.len(), |e| start + e);
        Ok(text[start..end].to_string())
    }

    /// Points the config at `primary` (and optionally a standby to back up from).
    pub fn attach(&self, primary: &PgInstance, standby: Option<&PgInstance>) -> anyhow::Result<()> {
        self.write_config(&self.repo_toml()?, Some(primary), standby)
    }

    /// A path in the repository's scratch dir (writable by the PostgreSQL OS user).
    pub fn scratch_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The local repository directory (for fault injection).
    pub fn local_path(&self) -> PathBuf {
        self.dir.join("repo").join("main")
    }

    /// Options making an instance archive into this repository with the real pgha binary.
    pub fn archiving(&self, options: PgOptions) -> anyhow::Result<PgOptions> {
        let cmd = format!("{} archive-push --config {} %p", pgha_bin()?.display(), self.config.display());
        Ok(options.param("archive_mode", "on").param("archive_command", &format!("'{cmd}'")))
    }

    /// A `pgha <args> --config <file>` command run as the PostgreSQL OS user.
    pub fn command(&self, args: &[&str]) -> anyhow::Result<tokio::process::Command> {
        let mut cmd = std::process::Command::new(pgha_bin()?);
        // `--config` belongs to the subcommand (`backup`, `archive-push`, ...), before its verb.
        let (first, rest) = args.split_first().context("no pgha subcommand")?;
        cmd.arg(first).arg("--config").arg(&self.config).args(rest).current_dir(self.dir.path());
        if let Some(o) = self.run_as {
            cmd.uid(o.uid.as_raw()).gid(o.gid.as_raw());
        }
        let mut cmd = tokio::process::Command::from(cmd);
        cmd.kill_on_drop(true);
        Ok(cmd)
    }

    /// Runs `pgha <args>` to completion (as the PostgreSQL OS user).
    pub async fn run(&self, args: &[&str], timeout: Duration) -> anyhow::Result<Output> {
        let out = self.command(args)?.output();
        tokio::time::timeout(timeout, out)
            .await
            .with_context(|| format!("pgha {args:?} did not finish within {timeout:?}"))?
            .context("running pgha")
    }

    /// Runs `pgha <args>` and fails with its output unless it succeeds; returns stdout.
    pub async fn ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.run(args, Duration::from_secs(300)).await?;
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if !out.status.success() {
            bail!("pgha {args:?} failed ({}):\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(stdout)
    }

    /// Restores with `pgha backup restore <args>` into a fresh instance named `name`, starts it
    /// and waits until recovery has ended (promoted). Archiving is turned off in the copy so it
    /// does not write a new timeline into the repository.
    pub async fn restore_and_start(&self, name: &str, args: &[&str]) -> anyhow::Result<PgInstance> {
        let pg = self.restore_into(name, args).await?;
        start_restored(pg).await
    }

    /// Restores into a fresh (not started) instance.
    pub async fn restore_into(&self, name: &str, args: &[&str]) -> anyhow::Result<PgInstance> {
        let pg = PgInstance::init(name, PgOptions::default()).await?;
        let data = pg.data_dir();
        std::fs::remove_dir_all(&data).context("emptying the new instance")?;
        let data_s = data.display().to_string();
        let mut all = vec!["backup", "restore", "--to-dir", &data_s];
        all.extend_from_slice(args);
        self.ok(&all).await?;
        Ok(pg)
    }
}

/// Lets the harness connect (trust on 127.0.0.1: the restored cluster has the original's
/// password), turns archiving off, starts it and waits for the end of recovery.
pub async fn start_restored(mut pg: PgInstance) -> anyhow::Result<PgInstance> {
    let data = pg.data_dir();
    std::fs::write(data.join("pg_hba.conf"), "local all all trust\nhost all all 127.0.0.1/32 trust\n")?;
    let auto = data.join("postgresql.auto.conf");
    let mut conf = std::fs::read_to_string(&auto)?;
    conf += "archive_mode = off\n";
    std::fs::write(&auto, conf)?;
    pg.start().await.context("starting the restored instance")?;
    let pg_ref = &pg;
    wait_for("the restored instance to finish recovery", Duration::from_secs(120), || async move {
        let r = pg_ref.sql_value("SELECT pg_is_in_recovery()::text").await?;
        Ok((r.as_deref() == Some("false")).then_some(()))
    })
    .await
    .with_context(|| format!("log:\n{}", pg.log()))?;
    Ok(pg)
}

/// md5 over pgbench_accounts ordered by aid plus row counts: the data's fingerprint.
pub async fn fingerprint(pg: &PgInstance) -> anyhow::Result<String> {
    let v = pg
        .sql_value(
            "SELECT md5(string_agg(aid::text || ':' || abalance::text, ',' ORDER BY aid)) || \
             '/' || (SELECT count(*) FROM pgbench_accounts) || '/' || (SELECT count(*) FROM pgbench_history) || \
             '/' || (SELECT sum(bbalance) FROM pgbench_branches) FROM pgbench_accounts",
        )
        .await?;
    v.context("no fingerprint")
}

/// pgbench -i at `scale` against an instance (as the superuser over TCP).
pub async fn pgbench_init(pg: &PgInstance, scale: u32) -> anyhow::Result<()> {
    pgbench(pg, &["-i", "-q", "-s", &scale.to_string()]).await
}

/// Runs pgbench with `args` against an instance.
pub async fn pgbench(pg: &PgInstance, args: &[&str]) -> anyhow::Result<()> {
    let bin = agent::postgres::binaries::BinDir::locate(None, agent::postgres::binaries::DEFAULT_MAJOR)?;
    let out = tokio::process::Command::new(bin.program("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &pg.port().to_string(), "-U", "postgres"])
        .args(args)
        .arg("postgres")
        .env("PGPASSWORD", pg.password())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(600), out).await.context("pgbench timed out")??;
    if !out.status.success() {
        bail!("pgbench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
