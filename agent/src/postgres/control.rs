//! Driving the local PostgreSQL: initdb, the managed configuration files, start (as primary or
//! standby), stop, kill, promote, clone (pg_basebackup), rewind (pg_rewind), and probes with
//! timeouts. The postmaster runs as the agent's child in its own process group with a
//! parent-death signal: if the agent dies, PostgreSQL stops too, so a primary is never left
//! running without the agent that fences it.

use super::binaries::BinDir;
use super::os_user::RunAs;
use crate::ha::Lsn;
use crate::status::ReplicationRow;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_postgres::{NoTls, SimpleQueryMessage};

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error("{program} failed: {detail}")]
    Program { program: String, detail: String },
    #[error("{0}")]
    Io(String),
    #[error("PostgreSQL did not {what} within {timeout:?}; log: {log}")]
    Timeout { what: String, timeout: Duration, log: String },
    #[error("query failed: {0}")]
    Query(String),
}

/// What `pgha backup restore` writes to postgresql.auto.conf for its recovery, and a promoted
/// restore leaves behind (restore_command goes too: the agent's own, if any, is in pgha.conf).
const RECOVERY_TARGET_SETTINGS: [&str; 8] = [
    "recovery_target",
    "recovery_target_time",
    "recovery_target_lsn",
    "recovery_target_xid",
    "recovery_target_name",
    "recovery_target_action",
    "recovery_target_inclusive",
    "restore_command",
];

/// A login PostgreSQL user and its password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <password hidden>)", self.username)
    }
}

/// How PostgreSQL should stop (pg_ctl's modes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    Fast,
    Immediate,
}

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub in_recovery: bool,
    pub timeline: u32,
    /// Primary: current WAL position; replica: replay position.
    pub position: Lsn,
    pub received: Option<Lsn>,
    pub receiver_status: Option<String>,
    pub received_timeline: Option<u32>,
    pub server_version: u32,
    /// Settings changed in the configuration files that take effect only after a restart.
    pub pending_restart: Vec<String>,
    /// pg_postmaster_start_time() as Patroni prints it (`2026-12-05 11:35:00.123 UTC`).
    pub postmaster_start_time: Option<String>,
    /// A primary's WAL senders, as `/patroni` lists them (`replication`); empty on a standby.
    pub replication: Vec<ReplicationRow>,
    /// pg_postmaster_start_time() in milliseconds since the epoch.
    pub postmaster_start_ms: Option<i64>,
    /// A standby: the commit time of the last transaction replayed (pg_last_xact_replay_timestamp),
    /// milliseconds since the epoch.
    pub replayed_xact_ms: Option<i64>,
    /// A standby: replay paused (pg_is_wal_replay_paused()).
    pub replay_paused: bool,
    /// The physical replication slots this server has and their restart_lsn (None before a
    /// slot reserved WAL): the leader checks its members' every tick from here, and every member
    /// its permanent ones, without a query of their own.
    pub slot_positions: std::collections::BTreeMap<String, Option<Lsn>>,
}

impl Probe {
    /// The names of the server's physical slots.
    pub fn slot_names(&self) -> Vec<String> {
        self.slot_positions.keys().cloned().collect()
    }
}

/// Everything needed to run one node's PostgreSQL.
pub struct LocalPostgres {
    pub bin: BinDir,
    pub data_dir: PathBuf,
    pub run_as: Option<RunAs>,
    pub listen: std::net::SocketAddr,
    /// Private directory for the Unix socket and logs.
    pub run_dir: PathBuf,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// Extra parameters written into the managed config file.
    pub parameters: Vec<(String, String)>,
    /// pg_basebackup `--max-rate` for clones.
    pub basebackup_max_rate: Option<String>,
    /// synchronous_standby_names while the agent manages it (synchronous mode, as primary, or
    /// right before a promotion in strict mode): written after `parameters`, so it wins over one
    /// set there.
    pub synchronous_standby_names: Option<String>,
    postmaster: Option<Child>,
}

/// What `LocalPostgres::new` needs.
pub struct PgSettings {
    pub bin: BinDir,
    pub data_dir: PathBuf,
    pub run_as: Option<RunAs>,
    pub listen: std::net::SocketAddr,
    pub run_dir: PathBuf,
    pub superuser: Credentials,
    pub replication: Credentials,
    pub parameters: Vec<(String, String)>,
    pub basebackup_max_rate: Option<String>,
}

impl LocalPostgres {
    pub fn new(s: PgSettings) -> Self {
        LocalPostgres {
            bin: s.bin,
            data_dir: s.data_dir,
            run_as: s.run_as,
            listen: s.listen,
            run_dir: s.run_dir,
            superuser: s.superuser,
            replication: s.replication,
            parameters: s.parameters,
            basebackup_max_rate: s.basebackup_max_rate,
            synchronous_standby_names: None,
            postmaster: None,
        }
    }

    fn command(&self, program: &str) -> Command {
        self.command_at(&self.bin.program(program))
    }

    /// A program run as the PostgreSQL OS user from the run directory, with no input.
    fn command_at(&self, program: &Path) -> Command {
        let mut cmd = Command::new(program);
        if let Some(owner) = self.run_as {
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        cmd.env("LC_ALL", "C").current_dir(&self.run_dir).stdin(Stdio::null());
        cmd
    }

    async fn run(&self, what: &str, cmd: Command, timeout: Duration) -> Result<String, PgError> {
        run_program(what, cmd, timeout).await
    }

    /// Creates the run directory (socket, logs) owned by the PostgreSQL user.
    pub fn prepare_dirs(&self) -> Result<(), PgError> {
        std::fs::create_dir_all(&self.run_dir).map_err(|e| PgError::Io(format!("{}: {e}", self.run_dir.display())))?;
        if let Some(owner) = self.run_as {
            owner.chown(&self.run_dir).map_err(|e| PgError::Io(e.to_string()))?;
            if let Some(parent) = self.data_dir.parent() {
                std::fs::create_dir_all(parent).map_err(|e| PgError::Io(format!("{}: {e}", parent.display())))?;
            }
        }
        Ok(())
    }

    /// Whether the data directory holds a cluster.
    pub fn has_data(&self) -> bool {
        self.data_dir.join("PG_VERSION").is_file()
    }

    /// Makes the data directory with `pgha backup restore` (this binary, as the PostgreSQL OS
    /// user) from the repository of `backup_config`, to the target in `target_args`; the restore
    /// writes the recovery settings and recovery.signal.
    pub async fn restore_from_backup(
        &self,
        pgha: &Path,
        backup_config: &Path,
        target_args: &[String],
    ) -> Result<(), PgError> {
        self.restore_job(pgha, backup_config, target_args)?.await
    }

    /// [`Self::restore_from_backup`] as a future that owns what it needs, for a background task
    /// (a running cluster's restore, during which the leader keeps its lock).
    pub fn restore_job(
        &self,
        pgha: &Path,
        backup_config: &Path,
        target_args: &[String],
    ) -> Result<impl std::future::Future<Output = Result<(), PgError>> + Send + 'static, PgError> {
        self.prepare_dirs()?;
        let mut cmd = self.command_at(pgha);
        cmd.arg("backup").arg("--config").arg(backup_config).arg("restore").arg("--to-dir").arg(&self.data_dir);
        cmd.args(target_args);
        Ok(async move { run_program("pgha backup restore", cmd, Duration::from_secs(24 * 3600)).await.map(|_| ()) })
    }

    /// `pgha backup create` of this node's data directory (this binary, as the PostgreSQL OS
    /// user, over the private socket) into the repository of `backup_config`, as a future that
    /// owns what it needs; its output (the line naming the backup) when it succeeds.
    pub fn backup_job(
        &self,
        pgha: &Path,
        backup_config: &Path,
        kind: &str,
    ) -> Result<impl std::future::Future<Output = Result<String, PgError>> + Send + 'static, PgError> {
        self.prepare_dirs()?;
        let conninfo = format!(
            "host={} port={} user={} dbname=postgres application_name=pgha_backup",
            self.run_dir.display(),
            self.listen.port(),
            self.superuser.username
        );
        let mut cmd = self.command_at(pgha);
        cmd.arg("backup").arg("--config").arg(backup_config).arg("create").args(["--type", kind]);
        cmd.arg("--data-dir").arg(&self.data_dir).arg("--conninfo").arg(conninfo);
        Ok(async move { run_program("pgha backup create", cmd, Duration::from_secs(24 * 3600)).await })
    }

    /// Before a running cluster is restored: switches to a new WAL segment so that the one
    /// holding the last commits can be archived. None without archive_mode; the segment to wait
    /// for otherwise ([`Self::archived_through`]).
    pub async fn switch_wal_for_archive(&self) -> Result<Option<String>, PgError> {
        let mode = self.query_value("show archive_mode", Duration::from_secs(5)).await?;
        if mode.as_deref() == Some("off") {
            return Ok(None);
        }
        let segment = self
            .query_value("select pg_walfile_name(pg_switch_wal())", Duration::from_secs(5))
            .await?
            .ok_or_else(|| PgError::Query("pg_switch_wal() gave no segment".into()))?;
        Ok(Some(segment))
    }

    /// Whether the archiver has pushed `segment` (or a later segment of its timeline).
    pub async fn archived_through(&self, segment: &str) -> Result<bool, PgError> {
        let last = self
            .query_value("select coalesce(last_archived_wal, '') from pg_stat_archiver", Duration::from_secs(5))
            .await?
            .unwrap_or_default();
        // Segment names of one timeline sort by position.
        Ok(last.len() == segment.len() && last.as_str() >= segment)
    }

    /// After a restore: waits until recovery reached its target and PostgreSQL promoted itself,
    /// then removes the restore's recovery target settings (a later standby of this data
    /// directory, or of a clone of it, must not stop at that target).
    pub async fn finish_point_in_time_recovery(&mut self, timeout: Duration) -> Result<(), PgError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return Err(PgError::Program {
                    program: "postgres (point-in-time recovery)".into(),
                    detail: self.log_tail(),
                });
            }
            let in_recovery = self.query_value("select pg_is_in_recovery()::text", Duration::from_secs(5)).await;
            if matches!(in_recovery.as_ref().map(Option::as_deref), Ok(Some("false"))) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout { what: "finish recovery".into(), timeout, log: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        self.reset_recovery_targets().await
    }

    /// Removes a restore's recovery target settings from postgresql.auto.conf (a promoted server
    /// keeps them only as inert values until its next restart) and reloads.
    pub async fn reset_recovery_targets(&self) -> Result<(), PgError> {
        // One statement per query: ALTER SYSTEM refuses to run inside the implicit transaction of
        // a multi-statement query.
        for setting in RECOVERY_TARGET_SETTINGS {
            self.query(&format!("alter system reset {setting}"), Duration::from_secs(30)).await?;
        }
        self.query("select pg_reload_conf()", Duration::from_secs(30)).await.map(|_| ())
    }

    /// Before a planned demotion: waits up to `limit` until no client transaction is open (the
    /// pooler holds new ones meanwhile), so that a switchover is a pause for clients rather than
    /// an error. Returns how many were still open at the end (they are cut by the stop).
    pub async fn drain_client_transactions(&self, limit: Duration) -> u64 {
        let sql = "select count(*)::text from pg_stat_activity where backend_type = 'client backend' \
                   and pid <> pg_backend_pid() and xact_start is not null";
        let deadline = Instant::now() + limit;
        loop {
            let open = self.query_value(sql, Duration::from_secs(1)).await.ok().flatten().and_then(|v| v.parse().ok());
            match open {
                Some(0) | None => return 0,
                Some(n) if Instant::now() >= deadline => return n,
                Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Removes the (stopped) data directory: the first half of an explicit reinitialize.
    pub fn remove_data_dir(&self) -> Result<(), PgError> {
        match std::fs::remove_dir_all(&self.data_dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::Io(format!("removing {}: {e}", self.data_dir.display()))),
        }
    }

    /// The system identifier from global/pg_control (its first 8 bytes).
    pub fn system_identifier(&self) -> Option<u64> {
        let bytes = std::fs::read(self.data_dir.join("global/pg_control")).ok()?;
        let first: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(first))
    }

    /// initdb with data checksums, SCRAM for TCP, trust on the private Unix socket.
    pub async fn initdb(&self) -> Result<(), PgError> {
        self.prepare_dirs()?;
        let pwfile = self.run_dir.join("initdb.pw");
        std::fs::write(&pwfile, format!("{}\n", self.superuser.password)).map_err(|e| PgError::Io(e.to_string()))?;
        if let Some(owner) = self.run_as {
            owner.chown(&pwfile).map_err(|e| PgError::Io(e.to_string()))?;
        }
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args([
                "--data-checksums",
                "--encoding=UTF8",
                "--locale=C",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
            ])
            .args(["-U", &self.superuser.username])
            .arg(format!("--pwfile={}", pwfile.display()));
        let result = self.run("initdb", cmd, Duration::from_secs(300)).await;
        let _ = std::fs::remove_file(&pwfile);
        result.map(|_| ())
    }

    /// Clones `source` (host:port) with pg_basebackup as the replication user.
    pub async fn clone_from(&self, source: &str) -> Result<(), PgError> {
        self.base_backup(source)?.await
    }

    /// The clone of `clone_from` as a future that owns what it needs, for a background task.
    /// Dropping it (cancelling the task) kills pg_basebackup; the half-cloned directory then
    /// stays for the caller to remove.
    pub fn base_backup(
        &self,
        source: &str,
    ) -> Result<impl std::future::Future<Output = Result<(), PgError>> + Send + 'static, PgError> {
        self.prepare_dirs()?;
        let (host, port) = source.rsplit_once(':').unwrap_or((source, "5432"));
        let mut cmd = self.command("pg_basebackup");
        cmd.arg("-D")
            .arg(&self.data_dir)
            .args(["-h", host, "-p", port, "-U", &self.replication.username])
            .args(["--checkpoint=fast", "--wal-method=stream", "--no-password"])
            .env("PGPASSWORD", &self.replication.password);
        if let Some(rate) = &self.basebackup_max_rate {
            cmd.arg(format!("--max-rate={rate}"));
        }
        let data_dir = self.data_dir.clone();
        Ok(async move {
            if let Err(e) = run_program("pg_basebackup", cmd, Duration::from_secs(3600)).await {
                // Leave no half-cloned directory that could later pass for a data directory.
                let _ = std::fs::remove_dir_all(&data_dir);
                return Err(e);
            }
            Ok(())
        })
    }

    /// Rewinds the (stopped) data directory against `source` so it can follow it.
    pub async fn rewind_from(&self, source: &str) -> Result<(), PgError> {
        // pg_rewind needs a cleanly shut down target: run crash recovery in single-user mode first.
        let mut single = self.command("postgres");
        single.arg("--single").arg("-D").arg(&self.data_dir).args(["-c", "archive_mode=off", "postgres"]);
        let _ = self.run("postgres --single (crash recovery before pg_rewind)", single, Duration::from_secs(600)).await;
        let (host, port) = source.rsplit_once(':').unwrap_or((source, "5432"));
        let conninfo = format!(
            "host={host} port={port} user={} password={} dbname=postgres",
            self.superuser.username, self.superuser.password
        );
        // Right after a promotion the source's control file still names the old timeline until
        // its end-of-recovery checkpoint; pg_rewind would then see nothing to do. Force it.
        let checkpoint = async {
            let (client, conn) = tokio_postgres::connect(&format!("{conninfo} connect_timeout=5"), NoTls).await.ok()?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            client.batch_execute("CHECKPOINT").await.ok()
        };
        if tokio::time::timeout(Duration::from_secs(60), checkpoint).await.ok().flatten().is_none() {
            tracing::warn!("could not run CHECKPOINT on the rewind source {source}; pg_rewind may find nothing to do");
        }
        let mut cmd = self.command("pg_rewind");
        cmd.arg("-D").arg(&self.data_dir).arg(format!("--source-server={conninfo}"));
        let out = self.run("pg_rewind", cmd, Duration::from_secs(3600)).await?;
        // pg_rewind says where the timelines diverged, or that no rewind was required.
        let summary = out.lines().find(|l| l.contains("diverged") || l.contains("no rewind")).unwrap_or("done");
        tracing::info!("pg_rewind against {host}:{port}: {}", summary.trim());
        Ok(())
    }

    /// Writes the managed settings (`pgha.conf`, pg_hba.conf) and the standby signal for `primary`
    /// (None: run as primary).
    pub fn write_config(&self, follow: Option<(&str, &str)>, standby: bool) -> Result<(), PgError> {
        let io = |e: std::io::Error| PgError::Io(e.to_string());
        let conf = self.data_dir.join("postgresql.conf");
        let text = std::fs::read_to_string(&conf).map_err(io)?;
        if !text.contains("include 'pgha.conf'") {
            std::fs::write(&conf, format!("{text}\n# Managed by pgha: settings below win.\ninclude 'pgha.conf'\n"))
                .map_err(io)?;
        }
        let mut lines = vec![
            "# Written by the pgha agent on every start; edit the agent config instead.".to_string(),
            format!("listen_addresses = '{}'", self.listen.ip()),
            format!("port = {}", self.listen.port()),
            format!("unix_socket_directories = '{}'", self.run_dir.display()),
            "wal_level = replica".into(),
            "hot_standby = on".into(),
            "wal_log_hints = on".into(),
            "max_wal_senders = 10".into(),
            "max_replication_slots = 10".into(),
            "wal_keep_size = '128MB'".into(),
            "recovery_target_timeline = 'latest'".into(),
        ];
        if let Some((addr, slot)) = follow {
            let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "5432"));
            lines.push(format!(
                "primary_conninfo = 'host={host} port={port} user={} password={} application_name={slot}'",
                self.replication.username,
                self.replication.password.replace('\'', "''")
            ));
            lines.push(format!("primary_slot_name = '{slot}'"));
        }
        for (k, v) in &self.parameters {
            lines.push(format!("{k} = {v}"));
        }
        // A standby ignores the setting; it keeps only '*', which strict synchronous mode sets
        // right before a promotion (a list of names would outlive the node's time as primary).
        if let Some(names) = self.synchronous_standby_names.as_ref().filter(|n| !standby || n.as_str() == "*") {
            lines.push(format!("synchronous_standby_names = '{}'", names.replace('\'', "''")));
        }
        std::fs::write(self.data_dir.join("pgha.conf"), lines.join("\n") + "\n").map_err(io)?;
        let hba = [
            "# Written by the pgha agent.",
            "local all all trust",
            "host replication all 0.0.0.0/0 scram-sha-256",
            "host replication all ::/0 scram-sha-256",
            "host all all 0.0.0.0/0 scram-sha-256",
            "host all all ::/0 scram-sha-256",
        ];
        std::fs::write(self.data_dir.join("pg_hba.conf"), hba.join("\n") + "\n").map_err(io)?;
        let signal = self.data_dir.join("standby.signal");
        if standby {
            std::fs::write(&signal, "").map_err(io)?;
        } else if signal.exists() {
            std::fs::remove_file(&signal).map_err(io)?;
        }
        if let Some(owner) = self.run_as {
            for f in ["pgha.conf", "pg_hba.conf", "postgresql.conf", "standby.signal"] {
                let p = self.data_dir.join(f);
                if p.exists() {
                    owner.chown(&p).map_err(|e| PgError::Io(e.to_string()))?;
                }
            }
        }
        Ok(())
    }

    pub fn log_path(&self) -> PathBuf {
        self.run_dir.join("postgresql.log")
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        text.get(start..).unwrap_or("").to_string()
    }

    /// Whether our postmaster child is alive.
    pub fn is_running(&mut self) -> bool {
        match self.postmaster.as_mut().map(|c| c.try_wait()) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.postmaster = None;
                false
            }
            None => false,
        }
    }

    /// Starts the postmaster (config must be written) and waits until it accepts connections.
    pub async fn start(&mut self, timeout: Duration) -> Result<(), PgError> {
        if self.is_running() {
            return Ok(());
        }
        // A stale pid file from a killed postmaster would block the start.
        let pid_file = self.data_dir.join("postmaster.pid");
        if pid_file.exists() && !postmaster_alive(&pid_file) {
            let _ = std::fs::remove_file(&pid_file);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| PgError::Io(format!("opening the PostgreSQL log: {e}")))?;
        let log2 = log.try_clone().map_err(|e| PgError::Io(e.to_string()))?;
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(&self.data_dir).stdout(log).stderr(log2).process_group(0);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| PgError::Io(format!("starting postgres: {e}")))?;
        self.postmaster = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if !self.is_running() {
                return Err(PgError::Program { program: "postgres".into(), detail: self.log_tail() });
            }
            if self.connect(Duration::from_secs(1)).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(PgError::Timeout { what: "accept connections".into(), timeout, log: self.log_tail() });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops PostgreSQL; kills it if it does not stop within `timeout`.
    pub async fn stop(&mut self, mode: StopMode, timeout: Duration) {
        let Some(pid) = self.postmaster.as_ref().map(|c| c.id() as i32) else { return };
        let sig = match mode {
            StopMode::Fast => nix::sys::signal::Signal::SIGINT,
            StopMode::Immediate => nix::sys::signal::Signal::SIGQUIT,
        };
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
        let deadline = Instant::now() + timeout;
        while self.is_running() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill();
    }

    /// kill -9 of the postmaster's whole process group (fencing).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.postmaster.take() {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGCONT);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// The postmaster's pid, when we run one.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.postmaster.as_ref().map(Child::id)
    }

    /// A superuser connection over the private Unix socket.
    pub async fn connect(&self, timeout: Duration) -> Result<tokio_postgres::Client, PgError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.run_dir)
            .port(self.listen.port())
            .user(&self.superuser.username)
            .dbname("postgres")
            .application_name("pgha")
            .connect_timeout(timeout);
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(NoTls))
            .await
            .map_err(|_| PgError::Query("connect timed out".into()))?
            .map_err(|e| PgError::Query(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Runs SQL over a fresh connection, bounded by `timeout`; returns rows as text.
    pub async fn query(&self, sql: &str, timeout: Duration) -> Result<Vec<Vec<Option<String>>>, PgError> {
        let fut = async {
            let client = self.connect(timeout).await?;
            let msgs = client.simple_query(sql).await.map_err(|e| {
                PgError::Query(match e.as_db_error() {
                    Some(db) => format!("{}: {}", db.code().code(), db.message()),
                    None => e.to_string(),
                })
            })?;
            Ok::<_, PgError>(
                msgs.into_iter()
                    .filter_map(|m| match m {
                        SimpleQueryMessage::Row(r) => {
                            Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                        }
                        _ => None,
                    })
                    .collect(),
            )
        };
        tokio::time::timeout(timeout, fut).await.map_err(|_| PgError::Query(format!("no answer within {timeout:?}")))?
    }

    /// The first column of the first row of `sql` (None for no row or NULL).
    pub async fn query_value(&self, sql: &str, timeout: Duration) -> Result<Option<String>, PgError> {
        Ok(self.query(sql, timeout).await?.into_iter().next().and_then(|row| row.into_iter().next()).flatten())
    }

    /// Probes role, timeline and positions; an error or timeout means "not answering".
    pub async fn probe(&self, timeout: Duration) -> Result<Probe, PgError> {
        let sql = "select pg_is_in_recovery(), current_setting('server_version_num'), \
                   case when pg_is_in_recovery() then pg_last_wal_replay_lsn()::text else pg_current_wal_lsn()::text end, \
                   case when pg_is_in_recovery() then null else substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) end, \
                   pg_last_wal_receive_lsn()::text, \
                   (select status from pg_stat_wal_receiver), (select received_tli::text from pg_stat_wal_receiver), \
                   (select timeline_id::text from pg_control_checkpoint()), \
                   (select string_agg(name, ',' order by name) from pg_settings where pending_restart), \
                   (select string_agg(slot_name || '=' || coalesce(restart_lsn::text, ''), ',' order by slot_name) \
                   from pg_replication_slots where slot_type = 'physical'), \
                   to_char(pg_postmaster_start_time(), 'YYYY-MM-DD HH24:MI:SS.MS TZ'), \
                   (select json_agg(json_build_object('usename', usename, 'application_name', application_name, \
                   'client_addr', host(client_addr), 'state', state, 'sync_state', sync_state, \
                   'sync_priority', sync_priority, 'flush', flush_lsn) order by application_name) \
                   from pg_stat_replication), \
                   (extract(epoch from pg_postmaster_start_time()) * 1000)::bigint::text, \
                   case when pg_is_in_recovery() then (extract(epoch from pg_last_xact_replay_timestamp()) * 1000)::bigint::text end, \
                   case when pg_is_in_recovery() then pg_is_wal_replay_paused()::text end";
        let rows = self.query(sql, timeout).await?;
        let row = rows.into_iter().next().ok_or_else(|| PgError::Query("probe returned no row".into()))?;
        let col = |i: usize| row.get(i).cloned().flatten();
        let in_recovery = col(0).as_deref() == Some("t");
        let received_timeline = col(6).and_then(|s| s.parse().ok());
        let checkpoint_tl: Option<u32> = col(7).and_then(|s| s.parse().ok());
        let timeline = if in_recovery {
            received_timeline.or(checkpoint_tl)
        } else {
            col(3).and_then(|h| u32::from_str_radix(&h, 16).ok()).or(checkpoint_tl)
        }
        .unwrap_or(1);
        Ok(Probe {
            in_recovery,
            timeline,
            position: col(2).and_then(|s| Lsn::parse(&s)).unwrap_or_default(),
            received: col(4).and_then(|s| Lsn::parse(&s)),
            receiver_status: col(5),
            received_timeline,
            server_version: col(1).and_then(|s| s.parse().ok()).unwrap_or(0),
            pending_restart: col(8).map(|s| s.split(',').map(str::to_string).collect()).unwrap_or_default(),
            slot_positions: col(9)
                .map(|list| {
                    list.split(',')
                        .filter_map(|pair| pair.split_once('='))
                        .map(|(name, lsn)| (name.to_string(), Lsn::parse(lsn)))
                        .collect()
                })
                .unwrap_or_default(),
            postmaster_start_time: col(10),
            replication: col(11).map(|json| replication_rows(&json)).unwrap_or_default(),
            postmaster_start_ms: col(12).and_then(|s| s.parse().ok()),
            replayed_xact_ms: col(13).and_then(|s| s.parse().ok()),
            replay_paused: col(14).as_deref() == Some("true"),
        })
    }

    /// Promotes the standby, waiting up to `wait` (whole seconds, at least one) for the promotion
    /// to finish. Ok(false): still promoting when the wait ended (PostgreSQL goes on; asking
    /// again waits again). The caller bounds the wait by its leader lease, which it must go
    /// on refreshing while a slow promotion runs.
    pub async fn promote(&self, wait: Duration) -> Result<bool, PgError> {
        let secs = wait.as_secs().max(1);
        let promoted =
            self.query_value(&format!("select pg_promote(true, {secs})"), Duration::from_secs(secs + 2)).await?;
        match promoted.as_deref() {
            Some("t") => {}
            Some("f") => return Ok(false),
            other => return Err(PgError::Query(format!("pg_promote returned {other:?}"))),
        }
        // Publish the new timeline in pg_control soon, so the old primary can be rewound; in the
        // background, because a checkpoint on a loaded machine can outlast the lease.
        match self.connect(Duration::from_secs(5)).await {
            Ok(client) => {
                tokio::spawn(async move {
                    if let Err(e) = client.simple_query("CHECKPOINT").await {
                        tracing::warn!("the checkpoint after the promotion failed: {e}");
                    }
                });
            }
            Err(e) => tracing::warn!("cannot connect for the checkpoint after the promotion: {e}"),
        }
        Ok(true)
    }

    /// Creates the replication user and a physical slot for each member (on the primary).
    pub async fn ensure_roles_and_slots(&self, slots: &[String], timeout: Duration) -> Result<(), PgError> {
        let user = &self.replication.username;
        let pw = self.replication.password.replace('\'', "''");
        let mut sql = format!(
            "do $$ begin if not exists (select from pg_roles where rolname = '{user}') then \
             create role \"{user}\" with login replication password '{pw}'; end if; end $$;"
        );
        for slot in slots {
            sql.push_str(&format!(
                "select pg_create_physical_replication_slot('{slot}') where not exists \
                 (select from pg_replication_slots where slot_name = '{slot}');"
            ));
        }
        self.query(&sql, timeout).await.map(|_| ())
    }

    /// Creates a physical slot that reserves WAL at once (a permanent slot), unless it exists;
    /// on a standby too (it then reserves from the replay position).
    pub async fn create_reserving_slot(&self, slot: &str, timeout: Duration) -> Result<(), PgError> {
        if !crate::ha::member_slots::is_slot_name(slot) {
            return Err(PgError::Query(format!("{slot:?} is not a slot name pgha makes")));
        }
        let sql = format!(
            "select pg_create_physical_replication_slot('{slot}', true) where not exists \
             (select from pg_replication_slots where slot_name = '{slot}')"
        );
        self.query(&sql, timeout).await.map(|_| ())
    }

    /// Moves a physical slot forward to `to` (PostgreSQL never moves it back, nor past what
    /// this server has written or, on a standby, replayed).
    pub async fn advance_slot(&self, slot: &str, to: Lsn, timeout: Duration) -> Result<(), PgError> {
        if !crate::ha::member_slots::is_slot_name(slot) {
            return Err(PgError::Query(format!("{slot:?} is not a slot name pgha makes")));
        }
        self.query(&format!("select pg_replication_slot_advance('{slot}', '{to}')"), timeout).await.map(|_| ())
    }

    /// Drops a physical slot if no walsender holds it. Ok(false): it is active (or gone).
    pub async fn drop_inactive_slot(&self, slot: &str, timeout: Duration) -> Result<bool, PgError> {
        if !crate::ha::member_slots::is_slot_name(slot) {
            return Err(PgError::Query(format!("{slot:?} is not a slot name pgha makes")));
        }
        let dropped = self
            .query_value(
                &format!(
                    "select count(pg_drop_replication_slot(slot_name)) from pg_replication_slots \
                     where slot_name = '{slot}' and slot_type = 'physical' and not active"
                ),
                timeout,
            )
            .await?;
        Ok(dropped.as_deref() == Some("1"))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.kill();
    }
}

fn postmaster_alive(pid_file: &Path) -> bool {
    let Ok(text) = std::fs::read_to_string(pid_file) else { return false };
    let Some(pid) = text.lines().next().and_then(|l| l.trim().parse::<i32>().ok()) else { return false };
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Runs a PostgreSQL program to completion within `timeout` (killed if the future is dropped).
async fn run_program(what: &str, mut cmd: Command, timeout: Duration) -> Result<String, PgError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = tokio::process::Command::from(cmd).kill_on_drop(true).output();
    let out = tokio::time::timeout(timeout, child)
        .await
        .map_err(|_| PgError::Timeout { what: format!("finish {what}"), timeout, log: String::new() })?
        .map_err(|e| PgError::Io(format!("running {what}: {e}")))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(PgError::Program { program: what.into(), detail: text.trim().chars().take(2000).collect() });
    }
    Ok(text)
}

/// The probe's pg_stat_replication rows, aggregated as JSON by the server. A row without an
/// application_name is left out (synchronous mode could not name that standby anyway).
fn replication_rows(json: &str) -> Vec<ReplicationRow> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json).unwrap_or_default();
    let text = |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
    rows.iter()
        .filter_map(|r| {
            Some(ReplicationRow {
                usename: text(r, "usename").unwrap_or_default(),
                application_name: text(r, "application_name")?,
                client_addr: text(r, "client_addr"),
                state: text(r, "state").unwrap_or_default(),
                sync_state: text(r, "sync_state").unwrap_or_default(),
                sync_priority: r.get("sync_priority").and_then(|v| v.as_i64()).unwrap_or(0) as i32,
                flush: text(r, "flush").and_then(|l| Lsn::parse(&l)),
            })
        })
        .collect()
}

/// Replication slot name for a member (PostgreSQL allows lower-case letters, digits, underscore).
pub fn slot_name(member: &str) -> String {
    member.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::replication_rows;

    #[test]
    fn replication_rows_read_the_servers_json_and_keep_a_unix_socket_standby() {
        let json = r#"[{"usename":"replicator","application_name":"node2","client_addr":"127.0.0.1","state":"streaming","sync_state":"sync","sync_priority":1,"flush":"0/3000060"},
                      {"usename":"replicator","application_name":"node3","client_addr":null,"state":"catchup","sync_state":"async","sync_priority":0},
                      {"usename":"replicator","application_name":null}]"#;
        let rows = replication_rows(json);
        assert_eq!(rows.len(), 2, "a row without an application_name is left out: {rows:?}");
        assert_eq!(
            (
                rows[0].usename.as_str(),
                rows[0].client_addr.as_deref(),
                rows[0].sync_state.as_str(),
                rows[0].sync_priority
            ),
            ("replicator", Some("127.0.0.1"), "sync", 1)
        );
        assert_eq!((rows[1].client_addr.as_deref(), rows[1].state.as_str()), (None, "catchup"));
        assert_eq!((rows[0].flush, rows[1].flush), (Some(crate::ha::Lsn(0x3000060)), None));
        assert!(replication_rows("not json").is_empty());
    }
}
