//! Patroni (the Debian package, 3.0.x) as the reference tool in benchmarks: one Patroni node on a
//! given etcd, with its PostgreSQL run as the same unprivileged OS user the pgha harness uses, on
//! free ports of 127.0.0.1 and a scratch dir. Killed like a lost machine (Patroni and every
//! PostgreSQL process), and on drop: Patroni starts the postmaster in its own session, so the
//! postmaster is killed by its pid file as well as Patroni's process group.

use crate::cluster::{REPLICATION_PASSWORD, SUPERUSER_PASSWORD};
use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use agent::postgres::binaries::{BinDir, DEFAULT_MAJOR};
use agent::postgres::os_user::{RunAs, DEFAULT_USER};
use anyhow::Context;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

/// Patroni's HA timing (whole seconds: Patroni 3.0 takes integers).
#[derive(Debug, Clone, Copy)]
pub struct PatroniTiming {
    pub ttl: u32,
    pub loop_wait: u32,
    pub retry_timeout: u32,
}

/// One Patroni node and its PostgreSQL.
pub struct PatroniNode {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
    process: Option<ManagedProcess>,
    config: PathBuf,
    run_as: Option<RunAs>,
    // Dropped last: the processes must be dead before the directory goes.
    dir: ScratchDir,
}

/// `patroni` on PATH, else an error that says how to install it.
pub fn patroni_bin() -> anyhow::Result<PathBuf> {
    let found = std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|p| p.join("patroni")).find(|p| p.is_file()));
    found.context("patroni not found on PATH: apt-get install -y patroni (Debian package, 3.0.x)")
}

impl PatroniNode {
    /// Writes the node's patroni.yml and starts Patroni (as the PostgreSQL OS user when root).
    pub fn start(
        name: &str,
        namespace: &str,
        scope: &str,
        etcd_hosts: &[String],
        timing: PatroniTiming,
    ) -> anyhow::Result<PatroniNode> {
        let run_as = RunAs::for_postgres(DEFAULT_USER)?;
        let dir = ScratchDir::new(&format!("patroni-{name}"), run_as)?;
        let pg_port = crate::ports::free_port()?;
        let api_port = crate::ports::free_port()?;
        let bin_dir = BinDir::locate(None, DEFAULT_MAJOR)?;
        let hosts =
            etcd_hosts.iter().map(|h| format!("'{}'", h.trim_start_matches("http://"))).collect::<Vec<_>>().join(", ");
        let d = dir.path().display();
        let config = format!(
            r#"scope: {scope}
namespace: {namespace}
name: {name}
log:
  level: INFO
restapi:
  listen: 127.0.0.1:{api_port}
  connect_address: 127.0.0.1:{api_port}
etcd3:
  hosts: [{hosts}]
bootstrap:
  dcs:
    ttl: {ttl}
    loop_wait: {lw}
    retry_timeout: {rt}
    maximum_lag_on_failover: 1048576
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        wal_level: replica
        hot_standby: 'on'
        max_wal_senders: 10
        max_replication_slots: 10
        wal_log_hints: 'on'
  initdb:
  - data-checksums
  - encoding: UTF8
  - locale: C
postgresql:
  listen: 127.0.0.1:{pg_port}
  connect_address: 127.0.0.1:{pg_port}
  data_dir: {d}/data
  bin_dir: {bin}
  pgpass: {d}/pgpass
  authentication:
    superuser:
      username: postgres
      password: {SUPERUSER_PASSWORD}
    replication:
      username: replicator
      password: {REPLICATION_PASSWORD}
  parameters:
    unix_socket_directories: '{d}'
    shared_buffers: 16MB
    max_connections: 40
    fsync: 'off'
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 scram-sha-256
  - host replication replicator 127.0.0.1/32 scram-sha-256
"#,
            ttl = timing.ttl,
            lw = timing.loop_wait,
            rt = timing.retry_timeout,
            bin = bin_dir.dir().display(),
        );
        let config_path = dir.join("patroni.yml");
        std::fs::write(&config_path, config).context("writing patroni.yml")?;
        let mut node =
            PatroniNode { name: name.to_string(), pg_port, api_port, process: None, config: config_path, run_as, dir };
        node.start_agent()?;
        Ok(node)
    }

    /// Starts Patroni (again) on the same config and data directory.
    pub fn start_agent(&mut self) -> anyhow::Result<()> {
        let mut cmd = Command::new(patroni_bin()?);
        cmd.arg(&self.config).current_dir(self.dir.path()).env("HOME", self.dir.path()).env("LC_ALL", "C.UTF-8");
        if let Some(owner) = self.run_as {
            cmd.uid(owner.uid.as_raw()).gid(owner.gid.as_raw());
        }
        let log = self.dir.join("patroni.log");
        self.process = Some(ManagedProcess::spawn(&format!("patroni {}", self.name), cmd, &log)?);
        Ok(())
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn postmaster_pid(&self) -> Option<i32> {
        let text = std::fs::read_to_string(self.data_dir().join("postmaster.pid")).ok()?;
        text.lines().next()?.trim().parse().ok()
    }

    /// Process group of Patroni itself (its PostgreSQL runs in a session of its own).
    pub fn agent_pgid(&self) -> Option<i32> {
        self.process.as_ref().map(|p| p.pgid().as_raw())
    }

    pub fn log(&self) -> String {
        self.process.as_ref().map(|p| p.log()).unwrap_or_default()
    }

    /// Like a machine losing power: kill -9 of Patroni and of every PostgreSQL process.
    pub fn kill_node(&mut self) {
        let postmaster = self.postmaster_pid();
        if let Some(mut p) = self.process.take() {
            p.kill_group();
        }
        if let Some(pid) = postmaster {
            kill_postgres_group(pid);
        }
    }
}

/// kill -9 of the process group of PostgreSQL process `pid` (the postmaster and all its children).
/// Patroni's postmaster is not a group leader (Patroni forks a session leader that then exits), so
/// the group comes from /proc. Does nothing when `pid` is not a running PostgreSQL (stale pid file).
pub fn kill_postgres_group(pid: i32) {
    if !is_postgres(pid) {
        return;
    }
    let pgrp = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(2)?.parse::<i32>().ok()));
    let _ = killpg(Pid::from_raw(pgrp.unwrap_or(pid)), Signal::SIGKILL);
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// Whether `pid` is a running PostgreSQL process (a stale pid file may name a reused pid).
pub fn is_postgres(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
}

impl Drop for PatroniNode {
    fn drop(&mut self) {
        self.kill_node();
    }
}
