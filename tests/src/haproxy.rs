//! HAProxy (the Debian package) in front of a cluster's nodes, configured the way Patroni's docs
//! show: a `primary` listener whose servers pass `GET /primary` on the agent's REST API and a
//! `replicas` listener whose servers pass `GET /replica`, checked every second, marked down after
//! two failures and up after one success, sessions cut when a server goes down. Free ports on
//! 127.0.0.1, a scratch dir, killed on drop.

use crate::process::ManagedProcess;
use crate::scratch::ScratchDir;
use anyhow::Context;
use std::path::PathBuf;
use std::process::Command;

/// One backend server: the PostgreSQL port and the agent's REST API port that checks it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub name: String,
    pub pg_port: u16,
    pub api_port: u16,
}

pub struct HaProxy {
    pub primary_port: u16,
    pub replica_port: u16,
    process: ManagedProcess,
    _dir: ScratchDir,
}

/// `haproxy` on PATH or in /usr/sbin, if installed.
pub fn haproxy_bin() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    dirs.push("/usr/sbin".into());
    dirs.into_iter().map(|d| d.join("haproxy")).find(|p| p.is_file())
}

/// The configuration Patroni's documentation gives for HAProxy, for these backends.
pub fn config(primary_port: u16, replica_port: u16, backends: &[Backend]) -> String {
    let servers = |_: &str| {
        backends
            .iter()
            .map(|b| format!("    server {} 127.0.0.1:{} maxconn 100 check port {}\n", b.name, b.pg_port, b.api_port))
            .collect::<String>()
    };
    format!(
        "global
    maxconn 200

defaults
    mode tcp
    retries 2
    timeout client 30m
    timeout connect 4s
    timeout server 30m
    timeout check 5s

listen primary
    bind 127.0.0.1:{primary_port}
    option httpchk GET /primary
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{primary}
listen replicas
    bind 127.0.0.1:{replica_port}
    balance roundrobin
    option httpchk GET /replica
    http-check expect status 200
    default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions
{replicas}",
        primary = servers("primary"),
        replicas = servers("replicas"),
    )
}

impl HaProxy {
    /// Writes the config and starts HAProxy in the foreground; fails if it exits at once.
    pub async fn start(backends: &[Backend]) -> anyhow::Result<HaProxy> {
        let bin = haproxy_bin().context("haproxy not found: apt-get install -y haproxy")?;
        let dir = ScratchDir::new("haproxy", None)?;
        let primary_port = crate::ports::free_port()?;
        let replica_port = crate::ports::free_port()?;
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(primary_port, replica_port, backends)).context("writing haproxy.cfg")?;
        let check = Command::new(&bin).arg("-c").arg("-f").arg(&cfg).output().context("running haproxy -c")?;
        anyhow::ensure!(
            check.status.success(),
            "haproxy rejected its config: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let mut cmd = Command::new(&bin);
        cmd.arg("-db").arg("-f").arg(&cfg);
        let mut process = ManagedProcess::spawn("haproxy", cmd, &dir.join("haproxy.log"))?;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        anyhow::ensure!(process.is_running(), "haproxy exited at start:\n{}", process.log_tail(4000));
        Ok(HaProxy { primary_port, replica_port, process, _dir: dir })
    }

    pub fn log(&self) -> String {
        self.process.log()
    }
}
