//! Real PostgreSQL 15 instances for tests: initdb (with data checksums) into a scratch dir, a free
//! port on 127.0.0.1, run as the unprivileged OS user when the test runs as root; start, stop
//! (smart/fast/immediate) or kill -9, SIGSTOP/SIGCONT, SQL, and streaming standbys made with
//! pg_basebackup. Everything dies and is removed when the instance is dropped.

use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use agent::postgres::binaries::{BinDir, DEFAULT_MAJOR};
use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use anyhow::{bail, Context};
use nix::sys::signal::Signal;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// The superuser every harness instance is created with.
pub const SUPERUSER: &str = "postgres";

/// How to stop PostgreSQL (pg_ctl's shutdown modes, by their signals).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// SIGTERM: wait for clients to disconnect.
    Smart,
    /// SIGINT: roll back open transactions, checkpoint, exit.
    Fast,
    /// SIGQUIT: exit without a checkpoint (crash recovery on the next start).
    Immediate,
}

/// Options for a new instance.
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Extra postgresql.conf lines as (name, value); values are written as given (quote strings).
    pub parameters: Vec<(String, String)>,
}

impl PgOptions {
    pub fn param(mut self, name: &str, value: &str) -> Self {
        self.parameters.push((name.to_string(), value.to_string()));
        self
    }
}

/// One PostgreSQL instance owned by a test.
pub struct PgInstance {
    name: String,
    port: u16,
    password: String,
    bin: BinDir,
    run_as: Option<RunAs>,
    process: Option<ManagedProcess>,
    // Dropped last: the process must be dead before its directory goes.
    dir: ScratchDir,
}

impl PgInstance {
    /// initdb a new primary with data checksums, SCRAM for TCP and trust on the Unix socket.
    pub async fn init(name: &str, options: PgOptions) -> anyhow::Result<PgInstance> {
        let pg = PgInstance::prepare(name)?;
        let pwfile = pg.dir.join("pwfile");
        std::fs::write(&pwfile, format!("{}\n", pg.password)).context("writing the password file")?;
        if let Some(owner) = pg.run_as {
            owner.chown(&pwfile)?;
        }
        let mut cmd = pg.command("initdb");
        cmd.arg("-D")
            .arg(pg.data_dir())
            .args(["--data-checksums", "--encoding=UTF8", "--locale=C", "--no-sync"])
            .args(["-U", SUPERUSER, "--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()));
        pg.run_to_completion("initdb", cmd).await?;
        let _ = std::fs::remove_file(&pwfile);
        pg.append_conf(&base_parameters())?;
        pg.append_conf(&options.parameters)?;
        Ok(pg)
    }

    /// Clones `primary` with pg_basebackup and configures a streaming standby of it
    /// (standby.signal, primary_conninfo, application_name = `name`). Not started yet.
    pub async fn standby_of(primary: &PgInstance, name: &str) -> anyhow::Result<PgInstance> {
        let mut pg = PgInstance::prepare(name)?;
        pg.password = primary.password.clone();
        let mut cmd = pg.command("pg_basebackup");
        cmd.arg("-D")
            .arg(pg.data_dir())
            .args(["-h", "127.0.0.1", "-p", &primary.port.to_string(), "-U", SUPERUSER])
            .args(["--checkpoint=fast", "--wal-method=stream", "--no-sync"])
            .env("PGPASSWORD", &primary.password);
        pg.run_to_completion("pg_basebackup", cmd).await?;
        std::fs::write(pg.data_dir().join("standby.signal"), "").context("writing standby.signal")?;
        let conninfo = format!(
            "host=127.0.0.1 port={} user={SUPERUSER} password={} application_name={name}",
            primary.port, primary.password
        );
        pg.append_conf(&[("primary_conninfo".into(), format!("'{conninfo}'"))])?;
        if let Some(owner) = pg.run_as {
            owner.chown(&pg.data_dir().join("standby.signal"))?;
        }
        Ok(pg)
    }

    fn prepare(name: &str) -> anyhow::Result<PgInstance> {
        let bin = BinDir::locate(None, DEFAULT_MAJOR)?;
        let run_as = RunAs::for_postgres(DEFAULT_USER)?;
        let dir = ScratchDir::new(&format!("pg-{name}"), run_as)?;
        let port = crate::ports::free_port()?;
        let password = format!("pw-{}-{}", std::process::id(), port);
        Ok(PgInstance { name: name.to_string(), port, password, bin, run_as, process: None, dir })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin.program(program));
        if let Some(owner) = self.run_as {
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C");
        cmd
    }

    async fn run_to_completion(&self, what: &str, cmd: Command) -> anyhow::Result<()> {
        let log = self.dir.join(&format!("{what}.log"));
        let mut p = ManagedProcess::spawn(&format!("{}:{what}", self.name), cmd, &log)?;
        let status = p.wait_exit(Duration::from_secs(120)).await?;
        if !status.success() {
            bail!("{what} for {} failed ({status}):\n{}", self.name, p.log_tail(4000));
        }
        Ok(())
    }

    fn append_conf(&self, params: &[(String, String)]) -> anyhow::Result<()> {
        use std::io::Write;
        let path = self.data_dir().join("postgresql.conf");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        for (k, v) in params {
            writeln!(f, "{k} = {v}").context("writing postgresql.conf")?;
        }
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn password(&self) -> &str {
        &self.password
    }
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
    /// A libpq connection string for the superuser over TCP.
    pub fn dsn(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user={SUPERUSER} password={} dbname={dbname}", self.port, self.password)
    }
    /// The postmaster's process group (for survivor checks); None when not running.
    pub fn pgid(&self) -> Option<i32> {
        self.process.as_ref().map(|p| p.pgid().as_raw())
    }
    pub fn log(&self) -> String {
        self.process.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// Starts the postmaster and waits until it accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        if self.process.as_mut().is_some_and(|p| p.is_running()) {
            bail!("{} is already running", self.name);
        }
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-c", &format!("port={}", self.port)])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", &format!("unix_socket_directories={}", self.socket_dir().display())]);
        let log = self.dir.join("postgres.log");
        self.process = Some(ManagedProcess::spawn(&format!("postgres {}", self.name), cmd, &log)?);
        let dsn = self.dsn("postgres");
        let name = self.name.clone();
        let process = self.process.as_mut().context("process just started")?;
        wait_for(&format!("{name} to accept connections"), Duration::from_secs(60), || {
            let running = process.is_running();
            let log = process.log_tail(3000);
            let dsn = dsn.clone();
            async move {
                if !running {
                    // Not worth waiting for: fail at once with the log.
                    return Ok(Some(Err(anyhow::anyhow!("postgres exited during startup:\n{log}"))));
                }
                match tokio_postgres::connect(&dsn, NoTls).await {
                    Ok(_) => Ok(Some(Ok(()))),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await?
    }

    /// Stops PostgreSQL in the given mode and waits for it to exit.
    pub async fn stop(&mut self, mode: StopMode) -> anyhow::Result<()> {
        let Some(p) = self.process.as_mut() else { return Ok(()) };
        let sig = match mode {
            StopMode::Smart => Signal::SIGTERM,
            StopMode::Fast => Signal::SIGINT,
            StopMode::Immediate => Signal::SIGQUIT,
        };
        p.stop(sig, Duration::from_secs(60)).await?;
        Ok(())
    }

    /// kill -9 of the postmaster and all its children at once, like a node losing power; returns
    /// once none of them is left. PostgreSQL's children leave the postmaster's process group
    /// (each calls setsid), so the group's kill alone leaves them to notice the postmaster's
    /// death in their own time, still attached to the shared memory a restart would then
    /// refuse ("pre-existing shared memory block is still in use"). The postmaster is stopped
    /// first, so that it forks no child between the look at its children and the kill.
    pub fn kill9(&mut self) {
        let Some(p) = self.process.as_mut() else { return };
        let postmaster = p.pid().as_raw();
        let _ = nix::sys::signal::kill(p.pid(), Signal::SIGSTOP);
        crate::process::wait_until_stopped(postmaster, Duration::from_secs(5));
        let children = crate::process::children_of(postmaster);
        for &child in &children {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child), Signal::SIGKILL);
        }
        p.kill_group();
        crate::process::wait_gone(&children, Duration::from_secs(10));
    }

    /// Freezes every process of the instance (a hung postmaster).
    pub fn sigstop(&self) -> anyhow::Result<()> {
        self.process.as_ref().context("not running")?.signal_group(Signal::SIGSTOP)
    }

    /// Thaws an instance frozen with `sigstop`.
    pub fn sigcont(&self) -> anyhow::Result<()> {
        self.process.as_ref().context("not running")?.signal_group(Signal::SIGCONT)
    }

    /// A new superuser connection to `postgres` (its connection task runs on the current runtime).
    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_db("postgres").await
    }

    pub async fn connect_db(&self, dbname: &str) -> anyhow::Result<Client> {
        let (client, conn) = tokio_postgres::connect(&self.dsn(dbname), NoTls)
            .await
            .with_context(|| format!("connecting to {}", self.name))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL (simple protocol, several statements allowed) and returns the rows as text.
    /// Each call is its own connection, named `HARNESS_SQL` (`client_backends` leaves out the
    /// ones still leaving).
    pub async fn sql(&self, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
        let dsn = format!("{} application_name={HARNESS_SQL}", self.dsn("postgres"));
        let (client, conn) =
            tokio_postgres::connect(&dsn, NoTls).await.with_context(|| format!("connecting to {}", self.name))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let messages = client.simple_query(sql).await.with_context(|| format!("{}: {sql}", self.name))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some((0..row.len()).map(|i| row.get(i).map(str::to_string)).collect()),
                _ => None,
            })
            .collect())
    }

    /// The first column of the first row, or None when there is no row or it is NULL.
    pub async fn sql_value(&self, sql: &str) -> anyhow::Result<Option<String>> {
        Ok(self.sql(sql).await?.into_iter().next().and_then(|r| r.into_iter().next().flatten()))
    }

    /// Client backends besides the harness's own `sql` connections: with a pooler in front,
    /// its server connections. (The backend of an earlier `sql` call may still be on its way
    /// out: counted, it made a pool of 2 look like 3.)
    pub async fn client_backends(&self) -> anyhow::Result<u32> {
        let count = self
            .sql_value(&format!(
                "select count(*) from pg_stat_activity where backend_type = 'client backend' \
                 and application_name <> '{HARNESS_SQL}'"
            ))
            .await?;
        count.as_deref().unwrap_or_default().parse().context("counting client backends")
    }
}

/// The application_name of `PgInstance::sql`'s connections.
const HARNESS_SQL: &str = "pgha-harness-sql";

/// Settings every harness instance gets: small, fast, and ready for replication and rewind.
fn base_parameters() -> Vec<(String, String)> {
    [
        ("shared_buffers", "16MB"),
        ("max_connections", "50"),
        ("wal_level", "replica"),
        ("max_wal_senders", "10"),
        ("max_replication_slots", "10"),
        ("hot_standby", "on"),
        ("wal_log_hints", "on"),
        ("fsync", "off"),
        ("logging_collector", "off"),
        ("log_line_prefix", "'%m [%p] '"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}
