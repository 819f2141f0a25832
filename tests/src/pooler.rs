//! A real `pgha pooler` in front of a harness PostgreSQL: a generated pooler.toml (free port on
//! 127.0.0.1, a Unix socket in a scratch dir, a userlist.txt with the superuser's password for
//! the server login, extra settings from the test), readiness, DSNs and clients.

use crate::pgha::PghaProcess;
use crate::postgres::{PgInstance, SUPERUSER};
use crate::scratch::ScratchDir;
use crate::wait::wait_for;
use anyhow::Context;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

pub struct PoolerProcess {
    process: PghaProcess,
    port: u16,
    dir: ScratchDir,
    password: String,
}

/// The pooler.toml for `pg`: `settings` are top-level lines (pool_mode = "transaction", ...).
/// Clients are trusted unless `settings` sets auth_type.
pub fn pooler_config(pg: &PgInstance, port: u16, dir: &Path, settings: &str) -> String {
    let trust = if settings.contains("auth_type") { "" } else { "auth_type = \"trust\"\n" };
    format!(
        "listen_addr = \"127.0.0.1\"\nlisten_port = {port}\nunix_socket_dir = \"{dir}\"\n{trust}\
         auth_file = \"{dir}/userlist.txt\"\n{settings}\n\n[databases.postgres]\nhost = \"127.0.0.1\"\nport = {pg_port}\n",
        dir = dir.display(),
        pg_port = pg.port(),
    )
}

impl PoolerProcess {
    /// Starts `pgha pooler` in front of `pg` and waits until it serves a query.
    /// With an auth_type in `settings`, readiness is checked with the superuser's password.
    pub async fn start(pg: &PgInstance, settings: &str) -> anyhow::Result<PoolerProcess> {
        Self::start_probing(pg, settings, false).await
    }

    /// Like [`PoolerProcess::start`], with readiness checked over the Unix socket (for settings
    /// that refuse plain-text TCP clients, such as client_tls_sslmode = "require").
    pub async fn start_probing_unix(pg: &PgInstance, settings: &str) -> anyhow::Result<PoolerProcess> {
        Self::start_probing(pg, settings, true).await
    }

    /// Like [`PoolerProcess::start`], with readiness checked by an extended-protocol query (for
    /// settings that refuse the simple protocol, such as disable_pqexec).
    pub async fn start_extended(pg: &PgInstance, settings: &str) -> anyhow::Result<PoolerProcess> {
        Self::start_with(pg, settings, false, true).await
    }

    async fn start_probing(pg: &PgInstance, settings: &str, unix: bool) -> anyhow::Result<PoolerProcess> {
        Self::start_with(pg, settings, unix, false).await
    }

    async fn start_with(pg: &PgInstance, settings: &str, unix: bool, extended: bool) -> anyhow::Result<PoolerProcess> {
        let dir = ScratchDir::new("pooler", None)?;
        std::fs::write(dir.join("userlist.txt"), format!("\"{SUPERUSER}\" \"{}\"\n", pg.password()))
            .context("writing userlist.txt")?;
        let port = crate::ports::free_port()?;
        let config = pooler_config(pg, port, dir.path(), settings);
        let process = PghaProcess::start("pooler", &["pooler"], &config)?;
        let pooler = PoolerProcess { process, port, dir, password: pg.password().to_owned() };
        wait_for("the pooler to answer SELECT 1", Duration::from_secs(15), || async {
            let dsn = if unix { pooler.unix_dsn("postgres") } else { pooler.dsn("postgres") };
            let dsn = format!("{dsn} password={}", pooler.password);
            let client = pooler.connect_dsn(&dsn).await?;
            if extended {
                client.query_one("select 1", &[]).await?;
            } else {
                client.simple_query("select 1").await?;
            }
            Ok(Some(()))
        })
        .await
        .with_context(|| format!("pooler log:\n{}", pooler.log()))?;
        Ok(pooler)
    }

    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }
    pub fn log(&self) -> String {
        self.process.log()
    }
    pub fn process(&mut self) -> &mut PghaProcess {
        &mut self.process
    }

    /// libpq/tokio-postgres DSN over TCP (no password: the pooler trusts clients here).
    pub fn dsn(&self, dbname: &str) -> String {
        format!("host=127.0.0.1 port={} user={SUPERUSER} dbname={dbname}", self.port)
    }

    /// DSN over the pooler's Unix socket.
    pub fn unix_dsn(&self, dbname: &str) -> String {
        format!("host={} port={} user={SUPERUSER} dbname={dbname}", self.dir.path().display(), self.port)
    }

    pub async fn connect(&self) -> anyhow::Result<Client> {
        self.connect_dsn(&self.dsn("postgres")).await
    }

    pub async fn connect_dsn(&self, dsn: &str) -> anyhow::Result<Client> {
        let (client, conn) = tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(dsn, NoTls))
            .await
            .context("connecting through the pooler timed out")?
            .context("connecting through the pooler")?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

/// The server error (ErrorResponse) in a failed connect or query, if there was one.
pub fn server_error(err: &anyhow::Error) -> Option<&tokio_postgres::error::DbError> {
    err.chain().find_map(|e| e.downcast_ref::<tokio_postgres::Error>()).and_then(|e| e.as_db_error())
}

/// (SQLSTATE, message) of the ErrorResponse a refused login got; panics without one.
pub fn refusal(err: anyhow::Error) -> (String, String) {
    let db = server_error(&err).unwrap_or_else(|| panic!("expected an ErrorResponse, got {err:#}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// A protocol 3.0 StartupMessage with `params` (name, value), for tests that speak to the
/// pooler below what tokio-postgres lets them send.
pub fn startup_packet(params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for (name, value) in params {
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    packet
}

/// Logs in as `postgres` to database `postgres` over plain TCP with a raw StartupMessage (a
/// trusting pooler) and reads up to the first ReadyForQuery, within 5 s: a socket for tests
/// that then speak the protocol themselves.
pub async fn raw_login(port: u16) -> anyhow::Result<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(&startup_packet(&[("user", "postgres"), ("database", "postgres")])).await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(6).any(|w| w == b"Z\0\0\0\x05I") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .context("no ReadyForQuery within 5 s")??;
        anyhow::ensure!(n > 0, "closed during login: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    Ok(s)
}

/// `GET <path>` on `addr` over plain HTTP/1.1 (for /metrics); the body, bounded by 5 s.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await?;
        let text = String::from_utf8(response).context("the HTTP response is not UTF-8")?;
        let (head, body) = text.split_once("\r\n\r\n").context("no end of HTTP headers")?;
        anyhow::ensure!(head.starts_with("HTTP/1.1 200"), "GET {path}: {head}");
        anyhow::ensure!(!head.to_ascii_lowercase().contains("transfer-encoding: chunked"), "chunked body");
        Ok(body.to_owned())
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.context("GET timed out")?
}

/// The value of the sample `name{labels}` (labels exactly as rendered) in a Prometheus text.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// The rows of an admin console SHOW as name -> value maps, by the RowDescription's column names.
pub async fn show(admin: &Client, what: &str) -> Vec<std::collections::HashMap<String, String>> {
    let messages = admin.simple_query(&format!("SHOW {what}")).await.unwrap();
    messages
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A TCP socket of another process, duplicated into this one (`pidfd_getfd`) so its options
/// can be read as that process set them. Dropping it closes only the duplicate.
pub struct ForeignSocket {
    pub local: std::net::SocketAddr,
    pub peer: std::net::SocketAddr,
    pub socket: socket2::Socket,
}

/// The connected TCP sockets of process `pid` (needs the right to ptrace it: root, or the same
/// user with ptrace_scope 0).
pub fn tcp_sockets_of(pid: i32) -> anyhow::Result<Vec<ForeignSocket>> {
    use std::os::fd::FromRawFd;
    // SAFETY: plain system calls on integers; the descriptors they return are new and owned
    // by the `OwnedFd`/`Socket` built from them right away.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    anyhow::ensure!(pidfd >= 0, "pidfd_open({pid}): {}", std::io::Error::last_os_error());
    let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(pidfd as i32) };
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("listing the process's descriptors")? {
        let entry = entry?;
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        if !is_socket {
            continue;
        }
        let dup = unsafe { libc::syscall(libc::SYS_pidfd_getfd, std::os::fd::AsRawFd::as_raw_fd(&pidfd), fd, 0) };
        if dup < 0 {
            // Closed since the listing.
            continue;
        }
        let socket = unsafe { socket2::Socket::from_raw_fd(dup as i32) };
        let (Ok(local), Ok(peer)) = (socket.local_addr(), socket.peer_addr()) else { continue };
        if let (Some(local), Some(peer)) = (local.as_socket(), peer.as_socket()) {
            sockets.push(ForeignSocket { local, peer, socket });
        }
    }
    Ok(sockets)
}

/// Clients that each open a new connection for every query, over TCP and the Unix socket,
/// until stopped: what an application sees while the pooler is replaced or its cluster
/// changes.
pub struct ConnectionLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU32>,
    failures: Arc<Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ConnectionLoad {
    /// One client per DSN.
    pub fn start(dsns: Vec<String>) -> ConnectionLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU32::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let tasks = dsns
            .into_iter()
            .map(|dsn| {
                let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let attempt = async {
                            let (client, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await?;
                            let conn = tokio::spawn(conn);
                            client.simple_query("select 1").await?;
                            drop(client);
                            let _ = conn.await;
                            Ok::<(), tokio_postgres::Error>(())
                        };
                        match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                            Ok(Ok(())) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(Err(e)) => {
                                failures.lock().unwrap_or_else(|p| p.into_inner()).push(format!("{dsn}: {e:?}"))
                            }
                            Err(_) => failures
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push(format!("{dsn}: no answer within 10 s")),
                        }
                    }
                })
            })
            .collect();
        ConnectionLoad { stop, ok, failures, tasks }
    }

    /// Queries answered so far.
    pub fn succeeded(&self) -> u32 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Connections or queries that failed so far, with their errors.
    pub fn failures(&self) -> Vec<String> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops the clients and checks that none failed and that queries went on after the
    /// `before` answered until then (a takeover, a switchover); prints the counts.
    pub async fn stop_expecting_no_failure(self, before: u32) -> u32 {
        let (ok, failures) = self.stop().await;
        eprintln!("new connections, each with a query: {before} before, {ok} in all, {} failed", failures.len());
        assert!(failures.is_empty(), "connections failed:\n{}", failures.join("\n"));
        assert!(ok > before, "the load did not go on ({before} queries before, {ok} in all)");
        ok
    }

    /// Stops the clients: (queries answered, failures).
    pub async fn stop(mut self) -> (u32, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
        (self.succeeded(), self.failures())
    }
}

/// A test that failed half way stops its clients too.
impl Drop for ConnectionLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
