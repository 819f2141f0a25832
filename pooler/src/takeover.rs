//! Online restart: `pgha pooler --takeover` asks the running pooler, over its takeover socket,
//! for its listening sockets (passed with SCM_RIGHTS), serves them, and says so; the old process
//! then stops accepting and serves the clients it has until they leave, as SHUTDOWN
//! WAIT_FOR_CLIENTS does. No connection is refused in between: both hold the same listening
//! sockets, so the kernel's accept queue is never closed. Cancel requests that reach the new
//! process for the old one's clients go back over the same connection. Owns the takeover
//! socket, its little protocol, and the link to the process taken over from.

use crate::protocol::{parse_startup_packet, CancelRequest, StartupPacket};
use crate::runtime::Shared;
use bytes::BytesMut;
use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

/// The first line a new process sends: the protocol's name and version, then its pid.
const REQUEST: &str = "PGHA-TAKEOVER 1";
/// The most sockets one pooler hands over (listen_addr's addresses, the Unix socket, metrics,
/// the takeover socket itself).
const MAX_SOCKETS: usize = 64;
/// The longest description of the sockets accepted.
const MAX_REPLY: usize = 64 * 1024;
/// How long either side waits for the other's next line.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new process that follows a cluster may take to read its DCS before it serves.
pub const CLUSTER_READ_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum TakeoverError {
    #[error("takeover: cannot reach the running pooler on {path}: {source}")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("takeover: talking to the running pooler on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("takeover: the running pooler refused: {0}")]
    Refused(String),
    #[error("takeover: the running pooler's answer is not understood: {0}")]
    Protocol(String),
    #[error(
        "takeover: no takeover socket: set takeover_socket, or unix_socket_dir (the socket is \
         then <unix_socket_dir>/.s.PGHA.<listen_port>.takeover)"
    )]
    NoSocket,
    #[error(
        "takeover: the cluster's DCS was not read within 15 s ([cluster]); the old pooler goes on \
         serving (check the DCS endpoints and this process's log)"
    )]
    ClusterNotRead,
}

/// What a handed-over socket is, named by the setting that made it: a TCP listener by its
/// `host:port` from listen_addr, the Unix socket and the takeover socket by their paths, the
/// metrics listener by metrics_listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketName {
    Tcp(String),
    Unix(PathBuf),
    Metrics(String),
    Control(PathBuf),
}

impl SocketName {
    fn line(&self) -> String {
        match self {
            SocketName::Tcp(a) => format!("tcp {a}"),
            SocketName::Unix(p) => format!("unix {}", p.display()),
            SocketName::Metrics(a) => format!("metrics {a}"),
            SocketName::Control(p) => format!("control {}", p.display()),
        }
    }

    fn parse(line: &str) -> Option<SocketName> {
        let (kind, name) = line.split_once(' ')?;
        Some(match kind {
            "tcp" => SocketName::Tcp(name.to_owned()),
            "unix" => SocketName::Unix(PathBuf::from(name)),
            "metrics" => SocketName::Metrics(name.to_owned()),
            "control" => SocketName::Control(PathBuf::from(name)),
            _ => return None,
        })
    }
}

/// A listening socket this process serves, kept (as a second descriptor of the same socket)
/// so that it can be handed to a successor.
pub struct Handable {
    pub name: SocketName,
    pub fd: OwnedFd,
}

/// The sockets this process could hand over, filled as they are bound.
#[derive(Default)]
pub struct Handover {
    sockets: Mutex<Vec<Handable>>,
    /// Set once a successor has taken them: the accept loops stop, the Unix socket file stays.
    handed: tokio::sync::watch::Sender<Option<u32>>,
}

impl Handover {
    /// Keeps a duplicate of `socket`'s descriptor under `name`.
    pub fn keep(&self, name: SocketName, socket: &impl std::os::fd::AsFd) -> std::io::Result<()> {
        let fd = socket.as_fd().try_clone_to_owned()?;
        self.sockets.lock().unwrap_or_else(|p| p.into_inner()).push(Handable { name, fd });
        Ok(())
    }

    /// Closes the kept descriptors: at shutdown, so that the listening sockets close with
    /// the accept loops' (new connections are refused), and after a takeover.
    pub fn forget(&self) {
        self.sockets.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The successor's pid once the sockets were handed over.
    pub fn handed_to(&self) -> Option<u32> {
        *self.handed.borrow()
    }

    /// Resolves once a successor serves the sockets (never, if none does).
    pub async fn wait_handed(&self) {
        let mut rx = self.handed.subscribe();
        if rx.wait_for(Option::is_some).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// The takeover socket's path: takeover_socket, or `<unix_socket_dir>/.s.PGHA.<port>.takeover`;
/// None if both are empty or takeover_socket is "off".
pub fn socket_path(config: &crate::config::PoolerConfig) -> Option<PathBuf> {
    match config.takeover_socket.as_str() {
        "off" => None,
        "" if config.unix_socket_dir.is_empty() => None,
        "" => Some(Path::new(&config.unix_socket_dir).join(format!(".s.PGHA.{}.takeover", config.listen_port))),
        path => Some(PathBuf::from(path)),
    }
}

/// What a new process got from the one it takes over from.
pub struct Taken {
    path: PathBuf,
    pub old_pid: u32,
    sockets: Vec<(SocketName, OwnedFd)>,
    link: StdUnixStream,
}

/// The old process's listening socket named `name`, if this process takes one over and the
/// old process had it: non-blocking, as the std listener type `L` (for tokio's `from_std`).
pub fn take_listener<L: From<OwnedFd>>(taken: Option<&mut Taken>, name: &SocketName) -> std::io::Result<Option<L>> {
    let Some(fd) = taken.and_then(|t| t.take(name)) else { return Ok(None) };
    socket2::SockRef::from(&fd).set_nonblocking(true)?;
    Ok(Some(L::from(fd)))
}

impl Taken {
    /// Takes the socket named `name`, if the old process had it.
    fn take(&mut self, name: &SocketName) -> Option<OwnedFd> {
        let at = self.sockets.iter().position(|(n, _)| n == name)?;
        Some(self.sockets.swap_remove(at).1)
    }

    /// Tells the old process that this one serves the sockets now (it stops accepting and
    /// closes the ones this process did not take), and from then on passes it the cancel
    /// requests this process has no client for.
    pub fn ready(mut self, shared: &Arc<Shared>) -> Result<(), TakeoverError> {
        let io = |source| TakeoverError::Io { path: self.path.clone(), source };
        for (name, _) in &self.sockets {
            tracing::info!(socket = %name.line(), "takeover: the old pooler's socket is not in this config; it closes");
        }
        self.link.write_all(b"READY\n").map_err(io)?;
        self.link.set_nonblocking(true).map_err(io)?;
        let link = tokio::net::UnixStream::from_std(self.link).map_err(io)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<CancelRequest>(1024);
        shared.cancels.set_predecessor(Some(tx));
        let shared = shared.clone();
        let old_pid = self.old_pid;
        tokio::spawn(async move {
            let (mut reader, mut writer) = link.into_split();
            let mut buf = BytesMut::with_capacity(64);
            let mut eof = [0u8; 1];
            loop {
                tokio::select! {
                    request = rx.recv() => {
                        let Some(request) = request else { break };
                        buf.clear();
                        request.encode(&mut buf);
                        if writer.write_all(&buf).await.is_err() {
                            break;
                        }
                    }
                    // The old process closes the link when it exits.
                    _ = reader.read(&mut eof) => break,
                }
            }
            shared.cancels.set_predecessor(None);
            tracing::info!(old_pid, "takeover: the old pooler has exited");
        });
        Ok(())
    }
}

/// Asks the pooler listening on `path` for its sockets. Blocking: run before serving.
pub fn take_over(path: &Path) -> Result<Taken, TakeoverError> {
    let io = |source| TakeoverError::Io { path: path.to_owned(), source };
    let mut link =
        StdUnixStream::connect(path).map_err(|source| TakeoverError::Connect { path: path.to_owned(), source })?;
    link.set_read_timeout(Some(STEP_TIMEOUT)).map_err(io)?;
    link.write_all(format!("{REQUEST} {}\n", std::process::id()).as_bytes()).map_err(io)?;
    let (mut text, fds) = receive_with_fds(&link).map_err(io)?;
    // The description may arrive in more than one read; the descriptors come with the first.
    while !text.ends_with(b"END\n") && !text.starts_with(b"ERROR ") {
        if text.len() > MAX_REPLY {
            return Err(TakeoverError::Protocol(format!("more than {MAX_REPLY} bytes without END")));
        }
        let mut more = [0u8; 4096];
        let n = link.read(&mut more).map_err(io)?;
        if n == 0 {
            return Err(TakeoverError::Protocol("the connection closed before END".into()));
        }
        text.extend_from_slice(&more[..n]);
    }
    let text = String::from_utf8(text).map_err(|_| TakeoverError::Protocol("not UTF-8".into()))?;
    if let Some(reason) = text.strip_prefix("ERROR ") {
        return Err(TakeoverError::Refused(reason.trim_end().to_owned()));
    }
    let (sockets, old_pid) = describe(&text, fds)?;
    Ok(Taken { path: path.to_owned(), old_pid, sockets, link })
}

/// Pairs the reply's lines (`OK 1 <pid>`, one per socket, `END`) with the descriptors.
fn describe(text: &str, fds: Vec<OwnedFd>) -> Result<(Vec<(SocketName, OwnedFd)>, u32), TakeoverError> {
    let mut lines = text.lines();
    let old_pid = match lines.next().and_then(|l| l.strip_prefix("OK 1 ")).map(str::parse::<u32>) {
        Some(Ok(pid)) => pid,
        _ => return Err(TakeoverError::Protocol(format!("unexpected first line in {text:?}"))),
    };
    let names: Vec<SocketName> = lines
        .take_while(|l| *l != "END")
        .map(|l| SocketName::parse(l).ok_or_else(|| TakeoverError::Protocol(format!("unknown socket line {l:?}"))))
        .collect::<Result<_, _>>()?;
    if names.len() != fds.len() {
        return Err(TakeoverError::Protocol(format!("{} sockets named, {} passed", names.len(), fds.len())));
    }
    Ok((names.into_iter().zip(fds).collect(), old_pid))
}

/// One recvmsg: the bytes and the descriptors that came with them (close-on-exec).
fn receive_with_fds(link: &StdUnixStream) -> std::io::Result<(Vec<u8>, Vec<OwnedFd>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    let mut data = vec![0u8; 8192];
    let mut space = nix::cmsg_space!([RawFd; MAX_SOCKETS]);
    let (bytes, fds) = {
        let mut iov = [IoSliceMut::new(&mut data)];
        let msg = recvmsg::<UnixAddr>(link.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
            .map_err(std::io::Error::from)?;
        let mut fds = Vec::new();
        for cmsg in msg.cmsgs().map_err(std::io::Error::from)? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: the kernel just installed these descriptors in this process for us.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
        (msg.bytes, fds)
    };
    data.truncate(bytes);
    Ok((data, fds))
}

/// Serves the takeover socket: a process of the same user (or root) that sends the request
/// gets this process's listening sockets; once it says READY, this process stops accepting,
/// and cancel requests it passes back are carried out here.
pub async fn serve(listener: UnixListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("takeover socket: accept failed: {e}");
                crate::clock::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if let Err(e) = same_user(&stream) {
            tracing::warn!("takeover socket: refused a process: {e}");
            continue;
        }
        let shared = shared.clone();
        // One at a time: a takeover in progress keeps the others waiting.
        match hand_over(stream, &shared).await {
            Ok(Some(link)) => {
                tokio::spawn(carry_out_cancels(link, shared));
                // The takeover socket itself went to the successor.
                return;
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("takeover: {e}; still serving"),
        }
    }
}

/// Only this process's user, or root, may take its sockets.
fn same_user(stream: &tokio::net::UnixStream) -> Result<(), String> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("cannot read its credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == me || cred.uid() == 0 {
        Ok(())
    } else {
        Err(format!("uid {} is neither this pooler's ({me}) nor root", cred.uid()))
    }
}

/// One takeover request. Some(link) once the successor serves the sockets; None if the request
/// was answered with an error or the successor gave up before READY (this process goes on
/// serving: its own descriptors were never closed).
async fn hand_over(
    mut stream: tokio::net::UnixStream,
    shared: &Arc<Shared>,
) -> Result<Option<tokio::net::UnixStream>, String> {
    let line = crate::clock::timeout(STEP_TIMEOUT, read_line(&mut stream))
        .await
        .map_err(|_| "no request within 30 s".to_owned())?
        .map_err(|e| format!("reading the request: {e}"))?;
    let Some(pid) = line.strip_prefix(REQUEST).and_then(|rest| rest.trim().parse::<u32>().ok()) else {
        let _ = stream.write_all(format!("ERROR expected \"{REQUEST} <pid>\", got {line:?}\n").as_bytes()).await;
        return Ok(None);
    };
    if shared.shutdown.is_stopping() || shared.shutdown.refuses_new_clients() {
        let _ = stream.write_all(b"ERROR this pooler is shutting down; start the new one without --takeover\n").await;
        return Ok(None);
    }
    let sockets: Vec<(SocketName, OwnedFd)> = shared
        .handover
        .sockets
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(dup)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("duplicating a socket: {e}"))?;
    let mut text = format!("OK 1 {}\n", std::process::id());
    for (name, _) in &sockets {
        text.push_str(&name.line());
        text.push('\n');
    }
    text.push_str("END\n");
    let fds: Vec<RawFd> = sockets.iter().map(|(_, fd)| fd.as_raw_fd()).collect();
    // The description is small: the socket takes it whole.
    stream.writable().await.map_err(|e| e.to_string())?;
    send_with_fds(&stream, text.as_bytes(), &fds).map_err(|e| format!("passing the sockets: {e}"))?;
    drop(sockets);
    tracing::info!(pid, "takeover: passed the listening sockets to a new pooler, waiting for it to serve them");
    match crate::clock::timeout(STEP_TIMEOUT, read_line(&mut stream)).await {
        Ok(Ok(line)) if line == "READY" => {}
        Ok(Ok(line)) => return Err(format!("the new pooler (pid {pid}) said {line:?} instead of READY")),
        Ok(Err(e)) => return Err(format!("the new pooler (pid {pid}) gave up before serving: {e}")),
        Err(_) => return Err(format!("the new pooler (pid {pid}) did not serve within 30 s")),
    }
    tracing::info!(
        pid,
        "takeover: the new pooler serves the listening sockets; this one stops accepting and serves its \
         connected clients until they leave (SIGTERM: disconnect them at their next transaction boundary)"
    );
    // The successor holds them now; a socket it did not take must not stay open here.
    shared.handover.forget();
    shared.handover.handed.send_replace(Some(pid));
    shared.shutdown.request(crate::shutdown::Signal::TakenOver);
    Ok(Some(stream))
}

fn dup(socket: &Handable) -> std::io::Result<(SocketName, OwnedFd)> {
    Ok((socket.name.clone(), socket.fd.try_clone()?))
}

fn send_with_fds(stream: &tokio::net::UnixStream, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let iov = [IoSlice::new(data)];
    let cmsgs = [ControlMessage::ScmRights(fds)];
    let sent =
        sendmsg::<UnixAddr>(stream.as_raw_fd(), &iov, &cmsgs, MsgFlags::empty(), None).map_err(std::io::Error::from)?;
    if sent != data.len() {
        return Err(std::io::Error::other(format!("sent {sent} of {} bytes", data.len())));
    }
    Ok(())
}

/// A line of at most 256 bytes, without its newline.
async fn read_line(stream: &mut tokio::net::UnixStream) -> std::io::Result<String> {
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if stream.read(&mut byte).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if byte[0] == b'\n' {
            return Ok(String::from_utf8_lossy(&line).into_owned());
        }
        if line.len() >= 256 {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "line longer than 256 bytes"));
        }
        line.push(byte[0]);
    }
}

/// The successor's link: each CancelRequest it passes back is carried out as if a client had
/// sent it here. Ends when the successor closes the link (or this process exits).
async fn carry_out_cancels(mut link: tokio::net::UnixStream, shared: Arc<Shared>) {
    let mut buf = BytesMut::with_capacity(512);
    loop {
        match link.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        loop {
            match parse_startup_packet(&buf) {
                Ok(Some((StartupPacket::Cancel(request), used))) => {
                    let _ = buf.split_to(used);
                    let timeout = crate::pool::secs(shared.config().server_connect_timeout).unwrap_or(STEP_TIMEOUT);
                    shared.cancels.cancel(&request, timeout).await;
                }
                Ok(None) => break,
                Ok(Some(_)) | Err(_) => {
                    tracing::warn!("takeover: the new pooler sent something other than a cancel request; link closed");
                    return;
                }
            }
        }
    }
}

/// This process's takeover socket at `path`: the old process's after `--takeover`, else a
/// fresh one (mode 0600: only this user may connect). Kept in `handover` for the next
/// successor.
pub fn listen(path: &Path, taken: Option<&mut Taken>, handover: &Handover) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let name = SocketName::Control(path.to_owned());
    let listener = match take_listener::<std::os::unix::net::UnixListener>(taken, &name)? {
        Some(listener) => UnixListener::from_std(listener)?,
        None => {
            // A file left by a pooler that died; a live one would have failed the TCP bind.
            let _ = std::fs::remove_file(path);
            let listener = UnixListener::bind(path)?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            listener
        }
    };
    handover.keep(name, &listener)?;
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lines_read_back_as_written() {
        for name in [
            SocketName::Tcp("127.0.0.1:6432".into()),
            SocketName::Tcp("::1:6432".into()),
            SocketName::Unix("/run/pgha dir/.s.PGSQL.6432".into()),
            SocketName::Metrics("0.0.0.0:9127".into()),
            SocketName::Control("/tmp/.s.PGHA.6432.takeover".into()),
        ] {
            assert_eq!(SocketName::parse(&name.line()), Some(name));
        }
        assert_eq!(SocketName::parse("udp 1.2.3.4:5"), None);
        assert_eq!(SocketName::parse("tcp"), None);
    }

    #[test]
    fn the_socket_path_comes_from_takeover_socket_or_the_unix_socket_dir() {
        let mut config = crate::config::PoolerConfig { listen_port: 6432, ..Default::default() };
        config.unix_socket_dir = "/run/pgha".into();
        assert_eq!(socket_path(&config), Some(PathBuf::from("/run/pgha/.s.PGHA.6432.takeover")));
        config.takeover_socket = "/var/run/x.sock".into();
        assert_eq!(socket_path(&config), Some(PathBuf::from("/var/run/x.sock")));
        config.takeover_socket = "off".into();
        assert_eq!(socket_path(&config), None);
        config.takeover_socket = String::new();
        config.unix_socket_dir = String::new();
        assert_eq!(socket_path(&config), None);
    }

    /// A reply names as many sockets as it passes, starts with OK and the pid, and any
    /// other shape is an error that says what came.
    #[test]
    fn replies_are_checked() {
        let fd = || std::fs::File::open("/dev/null").map(OwnedFd::from).unwrap();
        let (sockets, pid) = describe("OK 1 42\ntcp 127.0.0.1:1\nunix /tmp/s\nEND\n", vec![fd(), fd()]).unwrap();
        assert_eq!(pid, 42);
        assert_eq!(sockets[1].0, SocketName::Unix("/tmp/s".into()));
        let err = describe("OK 1 42\ntcp 127.0.0.1:1\nEND\n", vec![]).unwrap_err().to_string();
        assert!(err.contains("1 sockets named, 0 passed"), "{err}");
        let err = describe("HELLO\nEND\n", vec![]).unwrap_err().to_string();
        assert!(err.contains("unexpected first line"), "{err}");
        let err = describe("OK 1 42\nfifo /x\nEND\n", vec![fd()]).unwrap_err().to_string();
        assert!(err.contains("unknown socket line"), "{err}");
    }

    /// Descriptors passed over a socket pair arrive as working descriptors of the same socket:
    /// a TCP listener received this way accepts a connection made to the original's address.
    #[test]
    fn a_listener_passed_with_scm_rights_accepts_on_the_same_port() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
        runtime.block_on(async {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let (a, b) = tokio::net::UnixStream::pair().unwrap();
            let b = b.into_std().unwrap();
            b.set_nonblocking(false).unwrap();
            a.writable().await.unwrap();
            send_with_fds(&a, b"OK 1 7\ntcp x\nEND\n", &[listener.as_raw_fd()]).unwrap();
            drop(listener);
            let (text, fds) = receive_with_fds(&b).unwrap();
            let (sockets, old_pid) = describe(std::str::from_utf8(&text).unwrap(), fds).unwrap();
            let link = StdUnixStream::pair().unwrap().0;
            let mut taken = Taken { path: PathBuf::new(), old_pid, sockets, link };
            let name = SocketName::Tcp("x".into());
            let received: std::net::TcpListener = take_listener(Some(&mut taken), &name).unwrap().unwrap();
            // Handed out non-blocking, as tokio needs it.
            let nothing_yet = received.accept().map(|_| ()).unwrap_err();
            assert_eq!(nothing_yet.kind(), std::io::ErrorKind::WouldBlock);
            received.set_nonblocking(false).unwrap();
            let _client = std::net::TcpStream::connect(addr).unwrap();
            let (_, peer) = received.accept().unwrap();
            assert_eq!(peer.ip(), addr.ip());
        });
    }
}
