//! The TCP options PgBouncer sets on every client and server socket: keepalive
//! (tcp_keepalive, tcp_keepidle, tcp_keepintvl, tcp_keepcnt) and TCP_USER_TIMEOUT
//! (tcp_user_timeout). They are what notices a peer that vanished without closing: a server
//! host that lost power mid-query, a client behind a NAT that forgot the connection.

use crate::config::PoolerConfig;
use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::time::Duration;

/// The settings, read once per new socket. `None`: leave the system's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcpOptions {
    pub keepalive: bool,
    pub keepidle: Option<Duration>,
    pub keepintvl: Option<Duration>,
    pub keepcnt: Option<u32>,
    pub user_timeout: Option<Duration>,
}

impl TcpOptions {
    pub fn from_config(c: &PoolerConfig) -> TcpOptions {
        let secs = |s: u32| (s > 0).then(|| Duration::from_secs(s.into()));
        TcpOptions {
            keepalive: c.tcp_keepalive,
            keepidle: secs(c.tcp_keepidle),
            keepintvl: secs(c.tcp_keepintvl),
            keepcnt: (c.tcp_keepcnt > 0).then_some(c.tcp_keepcnt),
            user_timeout: (c.tcp_user_timeout > 0).then(|| Duration::from_millis(c.tcp_user_timeout.into())),
        }
    }

    /// Sets the options on a connected TCP socket (not on Unix sockets, which have none).
    pub fn apply(&self, socket: SockRef<'_>) -> io::Result<()> {
        if self.keepalive {
            let mut params = TcpKeepalive::new();
            if let Some(idle) = self.keepidle {
                params = params.with_time(idle);
            }
            if let Some(interval) = self.keepintvl {
                params = params.with_interval(interval);
            }
            if let Some(count) = self.keepcnt {
                params = params.with_retries(count);
            }
            // SO_KEEPALIVE, then only the timings that are set.
            socket.set_tcp_keepalive(&params)?;
        }
        if let Some(timeout) = self.user_timeout {
            socket.set_tcp_user_timeout(Some(timeout))?;
        }
        Ok(())
    }

    /// Sets every option with TCP_NODELAY, the system's default where a setting leaves it (a
    /// RELOAD may have set it before). On a listening socket: Linux copies them all into each
    /// connection it accepts, so client sockets need no system call of their own.
    pub fn apply_all(&self, socket: SockRef<'_>) -> io::Result<()> {
        let system = SystemKeepalive::get();
        socket.set_tcp_nodelay(true)?;
        socket.set_tcp_keepalive(
            &TcpKeepalive::new()
                .with_time(self.keepidle.unwrap_or(system.idle))
                .with_interval(self.keepintvl.unwrap_or(system.interval))
                .with_retries(self.keepcnt.unwrap_or(system.count)),
        )?;
        // set_tcp_keepalive turns SO_KEEPALIVE on: then as asked.
        socket.set_keepalive(self.keepalive)?;
        socket.set_tcp_user_timeout(self.user_timeout)
    }
}

/// TCP_DEFER_ACCEPT (tcp_defer_accept) on a listening socket: accept() sees a connection
/// once its first bytes are in, or after about `seconds`.
pub fn set_defer_accept(listener: &impl std::os::fd::AsRawFd, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    // SAFETY: the descriptor is a live socket borrowed for the call, and the option value is
    // a c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The kernel's keepalive timings for sockets that set none (net.ipv4.tcp_keepalive_*), read
/// once; Linux's own defaults if they cannot be read.
#[derive(Debug, Clone, Copy)]
struct SystemKeepalive {
    idle: Duration,
    interval: Duration,
    count: u32,
}

impl SystemKeepalive {
    fn get() -> SystemKeepalive {
        static SYSTEM: std::sync::OnceLock<SystemKeepalive> = std::sync::OnceLock::new();
        *SYSTEM.get_or_init(|| {
            let read = |name: &str, default: u32| {
                std::fs::read_to_string(format!("/proc/sys/net/ipv4/{name}"))
                    .ok()
                    .and_then(|v| v.trim().parse::<u32>().ok())
                    .unwrap_or(default)
            };
            SystemKeepalive {
                idle: Duration::from_secs(read("tcp_keepalive_time", 7200).into()),
                interval: Duration::from_secs(read("tcp_keepalive_intvl", 75).into()),
                count: read("tcp_keepalive_probes", 9),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};

    fn connected() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    #[test]
    fn defaults_turn_keepalive_on_with_the_systems_timings() {
        let options = TcpOptions::from_config(&PoolerConfig::default());
        assert_eq!(options, TcpOptions { keepalive: true, ..Default::default() });
        let (socket, _peer) = connected();
        let before = SockRef::from(&socket);
        let (idle, interval, count) = (
            before.tcp_keepalive_time().unwrap(),
            before.tcp_keepalive_interval().unwrap(),
            before.tcp_keepalive_retries().unwrap(),
        );
        assert!(!before.keepalive().unwrap());
        options.apply(SockRef::from(&socket)).unwrap();
        let after = SockRef::from(&socket);
        assert!(after.keepalive().unwrap());
        assert_eq!(after.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(after.tcp_keepalive_interval().unwrap(), interval);
        assert_eq!(after.tcp_keepalive_retries().unwrap(), count);
        assert_eq!(after.tcp_user_timeout().unwrap(), None);
    }

    #[test]
    fn set_timings_and_user_timeout_reach_the_socket() {
        let config = PoolerConfig {
            tcp_keepidle: 37,
            tcp_keepintvl: 11,
            tcp_keepcnt: 4,
            tcp_user_timeout: 2500,
            ..Default::default()
        };
        let (socket, _peer) = connected();
        TcpOptions::from_config(&config).apply(SockRef::from(&socket)).unwrap();
        let s = SockRef::from(&socket);
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(37));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(11));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(2500)));
    }

    /// What `apply_all` sets, an accepted connection has; a second call with the
    /// defaults puts back the system's timings and turns keepalive and the timeout off.
    #[test]
    fn accepted_sockets_inherit_the_listeners_options_and_a_change_back_resets_them() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let accept = || {
            let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            listener.accept().unwrap().0
        };
        let plain = accept();
        let system = SockRef::from(&plain);
        let (idle, interval, count) = (
            system.tcp_keepalive_time().unwrap(),
            system.tcp_keepalive_interval().unwrap(),
            system.tcp_keepalive_retries().unwrap(),
        );
        let set = TcpOptions {
            keepalive: true,
            keepidle: Some(Duration::from_secs(37)),
            keepintvl: Some(Duration::from_secs(11)),
            keepcnt: Some(4),
            user_timeout: Some(Duration::from_millis(2500)),
        };
        set.apply_all(SockRef::from(&listener)).unwrap();
        let socket = accept();
        let s = SockRef::from(&socket);
        assert!(s.tcp_nodelay().unwrap());
        assert!(s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(37));
        assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(11));
        assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
        assert_eq!(s.tcp_user_timeout().unwrap(), Some(Duration::from_millis(2500)));
        TcpOptions { keepalive: false, ..Default::default() }.apply_all(SockRef::from(&listener)).unwrap();
        let socket = accept();
        let s = SockRef::from(&socket);
        assert!(!s.keepalive().unwrap());
        assert_eq!(s.tcp_keepalive_time().unwrap(), idle);
        assert_eq!(s.tcp_keepalive_interval().unwrap(), interval);
        assert_eq!(s.tcp_keepalive_retries().unwrap(), count);
        assert_eq!(s.tcp_user_timeout().unwrap(), None);
    }

    #[test]
    fn keepalive_off_leaves_the_socket_alone() {
        let config = PoolerConfig { tcp_keepalive: false, ..Default::default() };
        let (socket, _peer) = connected();
        TcpOptions::from_config(&config).apply(SockRef::from(&socket)).unwrap();
        assert!(!SockRef::from(&socket).keepalive().unwrap());
    }
}
