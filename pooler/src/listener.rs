//! The listening sockets: TCP on listen_addr:listen_port (`*` for every address, or a comma
//! separated list) and the Unix socket `<unix_socket_dir>/.s.PGSQL.<port>`. Owns accepting;
//! each accepted connection becomes a client task.

use crate::client;
use crate::runtime::Shared;
use crate::stream::Stream;
use crate::takeover::{take_listener, Handover, SocketName, Taken};
use crate::tcp::TcpOptions;
use std::path::PathBuf;
use std::sync::Arc;
use thiserror::Error;
use tokio::net::{TcpListener, UnixListener};

#[derive(Debug, Error)]
pub enum ListenError {
    #[error("cannot listen on {addr}: {source} (is another pooler or PostgreSQL using the port? change listen_port)")]
    Tcp { addr: String, source: std::io::Error },
    #[error("cannot create Unix socket {path}: {source} (check unix_socket_dir exists and is writable)")]
    Unix { path: PathBuf, source: std::io::Error },
    #[error("Unix socket {path}: cannot apply {setting}: {why}")]
    UnixSetting { path: PathBuf, setting: &'static str, why: String },
}

pub struct Listeners {
    tcp: Vec<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

impl Listeners {
    /// Binds listen_addr:listen_port and the Unix socket in unix_socket_dir, with
    /// unix_socket_mode and unix_socket_group; after `--takeover`, the sockets the old process
    /// had under the same names are used instead of new ones. Each is kept in `handover` too.
    pub async fn bind(
        config: &crate::config::PoolerConfig,
        mut taken: Option<&mut Taken>,
        handover: &Handover,
    ) -> Result<Listeners, ListenError> {
        let (listen_addr, port, unix_socket_dir) = (&config.listen_addr, config.listen_port, &config.unix_socket_dir);
        let mut tcp = Vec::new();
        for addr in listen_addr.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            let host = if addr == "*" { "0.0.0.0" } else { addr };
            let name = SocketName::Tcp(format!("{host}:{port}"));
            let failed = |source| ListenError::Tcp { addr: format!("{host}:{port}"), source };
            let listener = match take_listener(taken.as_deref_mut(), &name).map_err(failed)? {
                Some(listener) => TcpListener::from_std(listener).map_err(failed)?,
                None => TcpListener::bind((host, port)).await.map_err(failed)?,
            };
            if config.tcp_defer_accept > 0 {
                if let Err(e) = crate::tcp::set_defer_accept(&listener, config.tcp_defer_accept) {
                    tracing::warn!("cannot set TCP_DEFER_ACCEPT on {host}:{port} (tcp_defer_accept): {e}");
                }
            }
            handover.keep(name, &listener).map_err(failed)?;
            tcp.push(listener);
        }
        let unix = if unix_socket_dir.is_empty() {
            None
        } else {
            let path = PathBuf::from(unix_socket_dir).join(format!(".s.PGSQL.{port}"));
            let failed = |source| ListenError::Unix { path: path.clone(), source };
            let name = SocketName::Unix(path.clone());
            let listener = match take_listener(taken, &name).map_err(failed)? {
                Some(listener) => UnixListener::from_std(listener).map_err(failed)?,
                None => {
                    // A socket file left by a pooler that died; a live one would have failed
                    // the TCP bind.
                    let _ = std::fs::remove_file(&path);
                    UnixListener::bind(&path).map_err(failed)?
                }
            };
            socket_permissions(&path, config.unix_socket_mode, config.unix_socket_group.as_deref())?;
            handover.keep(name, &listener).map_err(failed)?;
            Some((listener, path))
        };
        Ok(Listeners { tcp, unix })
    }

    /// The TCP port actually bound (listen_port 0 picks a free one).
    pub fn tcp_port(&self) -> Option<u16> {
        self.tcp.first().and_then(|l| l.local_addr().ok()).map(|a| a.port())
    }

    /// Accepts until shutdown begins, or until a new process took the sockets over; this
    /// process's descriptors are closed on return, and the Unix socket file removed unless the
    /// new process serves it.
    pub async fn serve(self, shared: Arc<Shared>) {
        let mut tasks = Vec::new();
        for listener in self.tcp {
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut inherited = set_listener_options(&listener, TcpOptions::from_config(&shared.config()));
                loop {
                    match std::future::poll_fn(|cx| listener.poll_accept(cx)).await {
                        Ok((stream, peer)) => {
                            // TCP_NODELAY and the tcp_* options come from the listener (Linux
                            // copies them into accepted sockets); after a RELOAD changed them,
                            // the listener gets the new ones, and so does this socket, which
                            // was accepted with the old.
                            let wanted = TcpOptions::from_config(&shared.config());
                            if inherited != Some(wanted) {
                                inherited = set_listener_options(&listener, wanted);
                                if let Err(e) = wanted.apply_all(socket2::SockRef::from(&stream)) {
                                    tracing::warn!(%peer, "cannot set tcp_keepalive/tcp_user_timeout on a client socket: {e}");
                                }
                            }
                            tokio::spawn(client::serve(Stream::Tcp(stream), shared.clone()));
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            }));
        }
        let mut unix_path = None;
        if let Some((listener, path)) = self.unix {
            unix_path = Some(path);
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    match std::future::poll_fn(|cx| listener.poll_accept(cx)).await {
                        Ok((stream, _)) => {
                            tokio::spawn(client::serve(Stream::Unix(stream), shared.clone()));
                        }
                        Err(e) => accept_failed(e).await,
                    }
                }
            }));
        }
        // The accept loops end when shutdown begins: stopped from here, they need no shutdown
        // listener of their own (one looked at every accepted connection; its lock cost more
        // than the accept). A stopped loop closes its listener.
        let mut stopping = shared.shutdown.subscribe();
        let handed = tokio::select! {
            _ = stopping.wait() => false,
            _ = shared.handover.wait_handed() => true,
        };
        // Shutdown: the copies kept for a takeover would keep the sockets listening.
        shared.handover.forget();
        for task in &tasks {
            task.abort();
        }
        for task in tasks {
            let _ = task.await;
        }
        if let Some(path) = unix_path.filter(|_| !handed) {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The options accepted sockets will inherit, set on the listener: `Some` of them if they
/// are set, None if not (each accepted socket then gets them itself, as before the listener
/// could).
fn set_listener_options(listener: &TcpListener, options: TcpOptions) -> Option<TcpOptions> {
    match options.apply_all(socket2::SockRef::from(listener)) {
        Ok(()) => Some(options),
        Err(e) => {
            tracing::warn!("cannot set TCP_NODELAY/tcp_keepalive/tcp_user_timeout on the listening socket: {e}");
            None
        }
    }
}

/// unix_socket_group, then unix_socket_mode, on the socket file.
fn socket_permissions(path: &std::path::Path, mode: u32, group: Option<&str>) -> Result<(), ListenError> {
    use std::os::unix::fs::PermissionsExt;
    let failed = |setting, why: String| ListenError::UnixSetting { path: path.to_path_buf(), setting, why };
    if let Some(name) = group {
        let gid = match nix::unistd::Group::from_name(name) {
            Ok(Some(group)) => group.gid,
            Ok(None) => return Err(failed("unix_socket_group", format!("no group named {name:?} on this machine"))),
            Err(e) => return Err(failed("unix_socket_group", format!("cannot look up group {name:?}: {e}"))),
        };
        nix::unistd::chown(path, None, Some(gid))
            .map_err(|e| failed("unix_socket_group", format!("cannot give the socket to group {name:?}: {e}")))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| failed("unix_socket_mode", format!("cannot set mode {mode:04o}: {e}")))
}

/// Out of file descriptors and the like: log and back off instead of spinning.
async fn accept_failed(e: std::io::Error) {
    tracing::warn!("accept failed: {e}");
    crate::clock::sleep(std::time::Duration::from_millis(50)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defer_accept_of(listener: &TcpListener) -> libc::c_int {
        use std::os::fd::AsRawFd;
        let mut value: libc::c_int = -1;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live socket and an option buffer of the length given.
        let rc = unsafe {
            libc::getsockopt(
                listener.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_DEFER_ACCEPT,
                (&mut value as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        value
    }

    #[tokio::test]
    async fn tcp_listeners_defer_accept_as_tcp_defer_accept_says() {
        for (seconds, on) in [(1, true), (10, true), (0, false)] {
            let config = crate::config::PoolerConfig {
                listen_port: 0,
                unix_socket_dir: String::new(),
                tcp_defer_accept: seconds,
                ..Default::default()
            };
            let listeners = Listeners::bind(&config, None, &Handover::default()).await.unwrap();
            // Linux keeps it as SYN-ACK retransmissions and reads it back in seconds, rounded.
            let set = defer_accept_of(&listeners.tcp[0]);
            assert_eq!(set > 0, on, "tcp_defer_accept = {seconds}: the listener has {set}");
        }
        assert_eq!(crate::config::PoolerConfig::default().tcp_defer_accept, 1, "PgBouncer's default on Linux");
    }
}
