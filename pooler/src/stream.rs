//! One byte stream to a client or a server, TCP, Unix socket or TLS over TCP, so the relay loop
//! is written once for all. Owns nothing but the socket; buffering and framing live in the
//! callers, certificates and handshakes in `tls`.

use crate::ring::homed::Homed;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
    /// A client that asked for TLS (SSLRequest answered 'S').
    TlsClient(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// A server reached with server_tls_sslmode.
    TlsServer(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A parked client's socket, out of the runtime (`crate::client::parking`), or an idle
    /// server connection between two engines (`for_pool`): the next I/O, or `adopt`, puts it
    /// on the engine of the thread that uses it. None only for a moment while it changes hands
    /// (or for a connection whose socket was closed on the ring).
    Detached(Option<Detached>),
    /// A plain socket on the io_uring relaying thread (`crate::ring`); used only there.
    Ring(Homed),
}

/// Unsent bytes above which a write to a ring socket waits for the sends to drain.
const RING_UNSENT_LIMIT: usize = 256 * 1024;

/// A plain socket without a tokio registration.
#[derive(Debug)]
pub enum Detached {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl Detached {
    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match self {
            Detached::Tcp(s) => s.as_raw_fd(),
            Detached::Unix(s) => s.as_raw_fd(),
        }
    }
}

fn detached() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the socket is parked")
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stream::Tcp(s) => f.debug_tuple("Tcp").field(s).finish(),
            Stream::Unix(s) => f.debug_tuple("Unix").field(s).finish(),
            Stream::TlsClient(s) => f.debug_tuple("TlsClient").field(s.get_ref().0).finish(),
            Stream::TlsServer(s) => f.debug_tuple("TlsServer").field(s.get_ref().0).finish(),
            Stream::Detached(s) => f.debug_tuple("Detached").field(s).finish(),
            Stream::Ring(s) => f.debug_tuple("Ring").field(s).finish(),
        }
    }
}

impl Stream {
    /// Takes a plain socket out of the runtime (its tokio registration is dropped); TLS
    /// streams are refused (`Unsupported`) and stay as they are.
    pub fn detach(&mut self) -> io::Result<std::os::fd::RawFd> {
        if !matches!(self, Stream::Tcp(_) | Stream::Unix(_) | Stream::Ring(_)) {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let socket = match std::mem::replace(self, Stream::Detached(None)) {
            Stream::Tcp(s) => Detached::Tcp(s.into_std()?),
            Stream::Unix(s) => Detached::Unix(s.into_std()?),
            Stream::Ring(h) => {
                let unix = h.unix;
                match h.into_fd() {
                    Ok(fd) if unix => Detached::Unix(std::os::unix::net::UnixStream::from(fd)),
                    Ok(fd) => Detached::Tcp(std::net::TcpStream::from(fd)),
                    Err(h) => {
                        *self = Stream::Ring(h);
                        return Err(io::Error::new(io::ErrorKind::WouldBlock, "the ring socket is busy"));
                    }
                }
            }
            _ => return Err(detached()),
        };
        let fd = socket.as_raw_fd();
        *self = Stream::Detached(Some(socket));
        Ok(fd)
    }

    /// Puts a detached socket back into the runtime (call it on a runtime thread).
    pub fn attach(&mut self) -> io::Result<()> {
        let Stream::Detached(socket) = self else { return Ok(()) };
        *self = match socket.take() {
            Some(Detached::Tcp(s)) => Stream::Tcp(TcpStream::from_std(s)?),
            Some(Detached::Unix(s)) => Stream::Unix(UnixStream::from_std(s)?),
            None => return Err(detached()),
        };
        Ok(())
    }

    /// Puts a plain socket on the engine of this thread: the ring's on the io_uring relaying
    /// thread (`multishot`: its receive stays armed, for a client; a server connection
    /// receives once per read, so that it leaves the ring at once when it goes back to the
    /// pool), tokio's elsewhere. TLS streams stay as they are.
    pub fn adopt(&mut self, multishot: bool) -> io::Result<()> {
        let on_ring = crate::ring::executor::ring_id().is_some();
        match self {
            Stream::Ring(h) if h.is_home() => return Ok(()),
            Stream::Ring(_) => return Err(io::Error::other("a ring socket was used off its ring's thread")),
            Stream::Detached(_) if !on_ring => return self.attach(),
            Stream::Tcp(_) | Stream::Unix(_) if on_ring => {
                self.detach()?;
            }
            Stream::Detached(_) => {}
            _ => return Ok(()),
        }
        let (fd, unix): (std::os::fd::OwnedFd, bool) = match std::mem::replace(self, Stream::Detached(None)) {
            Stream::Detached(Some(Detached::Tcp(s))) => (s.into(), false),
            Stream::Detached(Some(Detached::Unix(s))) => (s.into(), true),
            _ => return Err(detached()),
        };
        *self = Stream::Ring(Homed::new(fd, unix, multishot)?);
        Ok(())
    }

    /// Before an idle server connection goes back to the pool: a ring socket leaves the ring
    /// (`Detached`), so that any thread may take it next. False if it could not (something in
    /// flight or unread: its state is unknown); its socket is then closed here, on the ring.
    pub fn for_pool(&mut self) -> bool {
        if !matches!(self, Stream::Ring(_)) {
            return true;
        }
        if self.detach().is_ok() {
            return true;
        }
        *self = Stream::Detached(None);
        false
    }

    /// The client's IP address (TCP and TLS); None for a Unix socket.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer_addr().map(|a| a.ip())
    }

    /// The TCP peer's address and port; None over a Unix socket.
    pub fn peer_addr(&self) -> Option<std::net::SocketAddr> {
        let tcp = match self {
            Stream::Tcp(s) => s,
            Stream::TlsClient(s) => s.get_ref().0,
            Stream::TlsServer(s) => s.get_ref().0,
            Stream::Ring(h) if !h.unix => return socket2::SockRef::from(h).peer_addr().ok()?.as_socket(),
            _ => return None,
        };
        tcp.peer_addr().ok()
    }

    /// The process at the other end of a Unix socket, if the kernel says.
    pub fn peer_pid(&self) -> Option<i32> {
        let Stream::Unix(s) = self else { return None };
        s.peer_cred().ok()?.pid()
    }

    /// The operating-system user of the process at the other end of a Unix socket
    /// (SO_PEERCRED); None for TCP or when it cannot be told.
    pub fn peer_user(&self) -> Option<String> {
        let Stream::Unix(s) = self else { return None };
        let uid = s.peer_cred().ok()?.uid();
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map(|u| u.name)
    }

    /// The certificate a TLS client presented (its own, the first of its chain), which the
    /// handshake checked against client_tls_ca_file.
    pub fn peer_certificate(&self) -> Option<&[u8]> {
        let Stream::TlsClient(s) = self else { return None };
        s.get_ref().1.peer_certificates()?.first().map(|cert| cert.as_ref())
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::TlsClient(_) | Stream::TlsServer(_))
    }

    /// `TLSv1.3/TLS_AES_256_GCM_SHA384` as PgBouncer's SHOW CLIENTS/SERVERS print it; empty
    /// without TLS.
    pub fn tls_description(&self) -> String {
        let conn: &rustls::CommonState = match self {
            Stream::TlsClient(s) => s.get_ref().1,
            Stream::TlsServer(s) => s.get_ref().1,
            _ => return String::new(),
        };
        let version = conn.protocol_version().and_then(|v| v.as_str()).unwrap_or("TLS");
        let suite = conn.negotiated_cipher_suite().and_then(|s| s.suite().as_str()).unwrap_or("");
        let suite = suite.strip_prefix("TLS13_").map_or(suite.to_string(), |s| format!("TLS_{s}"));
        format!("{}/{suite}", version.replace('_', "."))
    }

    /// Writes all of `bytes` and, with TLS, flushes: rustls may keep the last records when the
    /// socket is full, and nothing else would push them out while the relay waits to read.
    ///
    /// A plain socket with room takes the bytes in one system call (the usual case: a message
    /// or a few), without the write future and its readiness registration; what does not fit
    /// waits for the socket to drain. Straight to the socket, not through tokio's `try_io`: a
    /// socket the runtime has not yet seen writable (a client accepted a moment ago) has room
    /// all the same, and `try_io` would send nothing and wait for the event. When there is no
    /// room, the wait's own failed write clears tokio's readiness.
    pub async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        use tokio::io::AsyncWriteExt;
        if matches!(self, Stream::Detached(_)) {
            self.adopt(false)?;
        }
        if let Stream::Ring(h) = self {
            return ring_send(h, bytes, &[]).await;
        }
        let written = match self {
            Stream::Tcp(s) => send_now(s.as_raw_fd(), bytes),
            Stream::Unix(s) => send_now(s.as_raw_fd(), bytes),
            _ => Ok(0),
        };
        let rest = match written {
            Ok(n) => &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
            Err(e) => return Err(e),
        };
        if rest.is_empty() {
            return Ok(());
        }
        self.write_all(rest).await?;
        if self.is_tls() {
            self.flush().await?;
        }
        Ok(())
    }

    /// After a client's Terminate: if its FIN has come in too (it closed, or shut down its
    /// writing side), the socket is set to close with a reset (SO_LINGER 0). A client that still has its side open is left to the FIN handshake: it may
    /// be waiting for the pooler to close first. Looks at the readiness the runtime already
    /// holds; no system call unless the reset is set.
    pub fn reset_on_close_if_peer_closed(&self) {
        if let Stream::Ring(h) = self {
            if h.get().is_ok_and(|s| s.peer_closed()) {
                let _ = socket2::SockRef::from(h).set_linger(Some(std::time::Duration::ZERO));
            }
            return;
        }
        let Stream::Tcp(s) = self else { return };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let ready = std::pin::pin!(s.ready(tokio::io::Interest::READABLE));
        if let Poll::Ready(Ok(r)) = std::future::Future::poll(ready, &mut cx) {
            if r.is_read_closed() {
                // If it cannot be set, the close is the usual FIN handshake.
                let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
            }
        }
    }

    /// Writes `first` then `second` as `send` writes one buffer: on a plain socket with room,
    /// both in one system call (a rewritten message head and the client's bytes after it,
    /// without copying them together first).
    pub async fn send_pair(&mut self, first: &[u8], second: &[u8]) -> io::Result<()> {
        if let Stream::Ring(h) = self {
            return ring_send(h, first, second).await;
        }
        let written = match self {
            Stream::Tcp(s) => send_pair_now(s.as_raw_fd(), first, second),
            Stream::Unix(s) => send_pair_now(s.as_raw_fd(), first, second),
            _ => Ok(0),
        };
        let n = match written {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(e) => return Err(e),
        };
        if n < first.len() {
            self.send(&first[n..]).await?;
            return self.send(second).await;
        }
        match second.get(n - first.len()..) {
            Some(rest) if !rest.is_empty() => self.send(rest).await,
            _ => Ok(()),
        }
    }

    /// Waits until the socket has bytes (or EOF) without holding a buffer. With TLS, call it
    /// only after `try_read_buf` said `WouldBlock` (decrypted bytes may be buffered otherwise).
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
            Stream::TlsClient(s) => s.get_ref().0.readable().await,
            Stream::TlsServer(s) => s.get_ref().0.readable().await,
            Stream::Detached(_) => Err(detached()),
            Stream::Ring(_) => std::future::poll_fn(|cx| self.poll_read_ready(cx)).await,
        }
    }

    /// Readiness to read, as a poll: the waker goes into the socket's own slot, so a future
    /// built on it holds no waiter node of its own (an idle client's wait stays small).
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
            Stream::TlsClient(s) => s.get_ref().0.poll_read_ready(cx),
            Stream::TlsServer(s) => s.get_ref().0.poll_read_ready(cx),
            Stream::Detached(_) => Poll::Ready(Err(detached())),
            Stream::Ring(h) => match h.get() {
                Ok(socket) => socket.poll_readable(cx),
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    /// `poll_read_buf` for a read that most likely finds nothing (the server's answer just
    /// after the request went out, the client while its transaction runs): a plain socket's
    /// readiness is looked at first, and when there is none that registers the waker for half
    /// the work of a read attempt (callgrind: about 130 instructions against 280). With
    /// readiness the read follows. A TLS stream reads at once: rustls may hold decrypted bytes
    /// that the socket will not signal again.
    pub fn poll_read_expecting_nothing(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut bytes::BytesMut,
    ) -> Poll<io::Result<usize>> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => std::task::ready!(self.poll_read_ready(cx))?,
            Stream::Ring(h) => {
                return match h.get() {
                    Ok(socket) => socket.poll_read_buf(cx, buf),
                    Err(e) => Poll::Ready(Err(e)),
                }
            }
            _ => {}
        }
        tokio_util::io::poll_read_buf(Pin::new(self), cx, buf)
    }

    /// Reads what is there now into `buf` without waiting; `WouldBlock` if nothing is.
    ///
    /// Plain sockets go through `poll_read`, which forgets the socket's readiness after a
    /// short read: the next read then waits for the next edge instead of costing a `recv`
    /// that fails with EAGAIN (`try_read_buf` keeps the readiness until a read fails, which
    /// was one wasted system call per transaction).
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(_) | Stream::Unix(_) => {
                use std::future::Future;
                use tokio::io::AsyncReadExt;
                if buf.capacity() == buf.len() {
                    buf.reserve(4096);
                }
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let read = std::pin::pin!(self.read_buf(buf));
                match read.poll(&mut cx) {
                    Poll::Ready(r) => r,
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
            Stream::Detached(_) => Err(detached()),
            Stream::Ring(h) => h.get()?.try_read_buf(buf),
            tls => {
                let mut cx = Context::from_waker(std::task::Waker::noop());
                let mut chunk = [0u8; 4096];
                let mut read = ReadBuf::new(&mut chunk);
                match Pin::new(tls).poll_read(&mut cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        buf.extend_from_slice(read.filled());
                        Ok(read.filled().len())
                    }
                    Poll::Ready(Err(e)) => Err(e),
                    Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
                }
            }
        }
    }

    /// True if the peer closed the socket or sent something unasked (an idle server that
    /// terminated the session): such a connection must not be handed out. With TLS any record
    /// (a close_notify, an alert) counts: an idle server has nothing to say.
    pub fn is_closed_or_dirty(&self) -> bool {
        let mut probe = [0u8; 1];
        let r = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
            Stream::TlsClient(s) => s.get_ref().0.try_read(&mut probe),
            Stream::TlsServer(s) => s.get_ref().0.try_read(&mut probe),
            Stream::Detached(None) => return true,
            Stream::Detached(Some(s)) => return crate::ring::socket::peer_spoke(s.as_raw_fd()),
            Stream::Ring(h) => return h.get().map_or(true, |s| s.is_closed_or_dirty()),
        };
        !matches!(r, Err(ref e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

/// `first` then `second` queued on a ring socket; waits for the sends to drain only when
/// more than `RING_UNSENT_LIMIT` is queued (a peer that does not read).
async fn ring_send(h: &Homed, first: &[u8], second: &[u8]) -> io::Result<()> {
    let unsent = {
        let socket = h.get()?;
        socket.write_pair(first, second)?;
        socket.unsent()
    };
    if unsent > RING_UNSENT_LIMIT {
        std::future::poll_fn(|cx| match h.get() {
            Ok(socket) => socket.poll_flush(cx),
            Err(e) => Poll::Ready(Err(e)),
        })
        .await?;
    }
    Ok(())
}

/// send(2) on a non-blocking socket as one system call. Not through the C library's `send`:
/// that is a cancellation point, which in a process with more than one thread (the pooler has
/// its timer thread) wraps every call in two more, and tokio's `try_write` adds two layers of
/// its own on the relay's every message. `try_io` around it keeps tokio's readiness right:
/// `WouldBlock` clears it, so the next write waits for the socket to drain.
fn send_pair_now(fd: RawFd, first: &[u8], second: &[u8]) -> io::Result<usize> {
    let mut parts = [
        libc::iovec { iov_base: first.as_ptr() as *mut libc::c_void, iov_len: first.len() },
        libc::iovec { iov_base: second.as_ptr() as *mut libc::c_void, iov_len: second.len() },
    ];
    // SAFETY: an all-zero msghdr is valid (no address, no control data).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = parts.as_mut_ptr();
    message.msg_iovlen = parts.len() as _;
    loop {
        // Straight to the system call, as `send_now`: libc's wrapper adds cancellation
        // bookkeeping on every call.
        // SAFETY: the two iovecs point at `first` and `second`, valid for reads of their
        // lengths during the call, and the kernel only reads them and `message`; `fd` is the
        // open socket of the stream that called us.
        let sent = unsafe { libc::syscall(libc::SYS_sendmsg, fd, &message as *const libc::msghdr, libc::MSG_NOSIGNAL) };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

fn send_now(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is valid for reads of `bytes.len()` bytes during the call and the
        // kernel only reads it; `fd` is the open socket of the stream that called us; no
        // address is passed (null, 0), as for a connected socket.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_sendto,
                fd,
                bytes.as_ptr(),
                bytes.len(),
                libc::MSG_NOSIGNAL,
                std::ptr::null::<libc::sockaddr>(),
                0 as libc::socklen_t,
            )
        };
        if sent >= 0 {
            return Ok(sent as usize);
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Detached(_) => Poll::Ready(Err(detached())),
            Stream::Ring(h) => {
                let socket = match h.get() {
                    Ok(socket) => socket,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                let n = std::task::ready!(socket.poll_read_into(cx, buf.initialize_unfilled()))?;
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Detached(_) => Poll::Ready(Err(detached())),
            Stream::Ring(h) => {
                let socket = match h.get() {
                    Ok(socket) => socket,
                    Err(e) => return Poll::Ready(Err(e)),
                };
                if socket.unsent() > RING_UNSENT_LIMIT {
                    std::task::ready!(socket.poll_flush(cx))?;
                }
                Poll::Ready(socket.write(buf).map(|()| buf.len()))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Detached(_) => Poll::Ready(Err(detached())),
            Stream::Ring(h) => match h.get() {
                Ok(socket) => socket.poll_flush(cx),
                Err(e) => Poll::Ready(Err(e)),
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::TlsClient(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::TlsServer(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Detached(_) => Poll::Ready(Err(detached())),
            Stream::Ring(h) => {
                match h.get() {
                    Ok(socket) => std::task::ready!(socket.poll_flush(cx))?,
                    Err(e) => return Poll::Ready(Err(e)),
                }
                Poll::Ready(socket2::SockRef::from(&*h).shutdown(std::net::Shutdown::Write))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    /// `send_pair` delivers `first` then `second`, whole and in order, whether the socket
    /// takes them in one call, part of one, or needs to drain first (a 4 kB send buffer and a
    /// reader that only starts after the first attempt).
    async fn pair_arrives(first: Vec<u8>, second: Vec<u8>, split: bool) {
        let (a, mut b) = if split {
            let (x, y) = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| {
                    let c = std::net::TcpStream::connect(l.local_addr()?)?;
                    Ok((c, l.accept()?.0))
                })
                .unwrap();
            socket2::SockRef::from(&x).set_send_buffer_size(4096).unwrap();
            x.set_nonblocking(true).unwrap();
            y.set_nonblocking(true).unwrap();
            (Stream::Tcp(TcpStream::from_std(x).unwrap()), Stream::Tcp(TcpStream::from_std(y).unwrap()))
        } else {
            let (x, y) = UnixStream::pair().unwrap();
            (Stream::Unix(x), Stream::Unix(y))
        };
        let expected: Vec<u8> = first.iter().chain(second.iter()).copied().collect();
        let total = expected.len();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; total];
            b.read_exact(&mut got).await.map(|_| got)
        });
        let mut a = a;
        a.send_pair(&first, &second).await.unwrap();
        assert_eq!(reader.await.unwrap().unwrap(), expected);
    }

    /// A plain socket's `poll_read` keeps the readiness after a read that filled the buffer
    /// (the rest is read without a new edge) and reads the peer's close as 0, on TCP and on
    /// Unix sockets; after a short read the next read waits for the writer.
    async fn reads_follow_readiness(mut reader: Stream, mut writer: Stream) {
        use std::time::Duration;
        writer.send(b"0123456789").await.unwrap();
        let mut four = [0u8; 4];
        reader.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"0123");
        let mut buf = bytes::BytesMut::with_capacity(64);
        // Full reads left the readiness set: the rest is there at once.
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read_buf(&mut buf)).await.unwrap().unwrap();
        assert_eq!(&buf[..n], b"456789");
        // That read was short: nothing more until the writer sends again.
        assert_eq!(reader.try_read_buf(&mut buf).map_err(|e| e.kind()), Err(io::ErrorKind::WouldBlock));
        assert!(tokio::time::timeout(Duration::from_millis(50), reader.read_buf(&mut buf)).await.is_err());
        writer.send(b"ab").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read_buf(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 2);
        assert_eq!(&buf[..], b"456789ab");
        drop(writer);
        let n = tokio::time::timeout(Duration::from_secs(5), reader.read_buf(&mut buf)).await.unwrap().unwrap();
        assert_eq!(n, 0, "the peer's close reads as 0");
    }

    /// Runs `check(reader, writer)` on a connected pair of Unix sockets, then of TCP sockets.
    fn on_unix_and_tcp<F: std::future::Future<Output = ()>>(check: impl Fn(Stream, Stream) -> F) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let (x, y) = UnixStream::pair().unwrap();
            check(Stream::Unix(x), Stream::Unix(y)).await;
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let connect = TcpStream::connect(listener.local_addr().unwrap());
            let (accepted, connected) = tokio::join!(listener.accept(), connect);
            check(Stream::Tcp(accepted.unwrap().0), Stream::Tcp(connected.unwrap())).await;
        });
    }

    #[test]
    fn a_read_that_fills_the_buffer_leaves_the_rest_readable_at_once() {
        on_unix_and_tcp(reads_follow_readiness);
    }

    /// A task waker that records that it was woken.
    struct Flag(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// `poll_read_expecting_nothing` with nothing there registers the task, which the
    /// writer's bytes then wake; with bytes there it reads them in the same poll; it reads the
    /// peer's close as 0.
    async fn read_expecting_nothing(mut reader: Stream, mut writer: Stream) {
        use std::sync::atomic::Ordering::SeqCst;
        use std::time::Duration;
        let flag = std::sync::Arc::new(Flag(false.into()));
        let waker = std::task::Waker::from(flag.clone());
        let mut cx = Context::from_waker(&waker);
        let mut buf = bytes::BytesMut::with_capacity(64);
        assert!(reader.poll_read_expecting_nothing(&mut cx, &mut buf).is_pending());
        writer.send(b"abc").await.unwrap();
        let woken = tokio::time::timeout(Duration::from_secs(5), async {
            while !flag.0.load(SeqCst) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert!(woken.await.is_ok(), "the writer's bytes wake the registered task");
        assert!(matches!(reader.poll_read_expecting_nothing(&mut cx, &mut buf), Poll::Ready(Ok(3))));
        assert_eq!(&buf[..], b"abc");
        // A short read: nothing more, and the task is registered again.
        flag.0.store(false, SeqCst);
        assert!(reader.poll_read_expecting_nothing(&mut cx, &mut buf).is_pending());
        writer.send(b"de").await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), reader.readable()).await.unwrap().unwrap();
        assert!(flag.0.load(SeqCst));
        assert!(matches!(reader.poll_read_expecting_nothing(&mut cx, &mut buf), Poll::Ready(Ok(2))));
        assert_eq!(&buf[..], b"abcde");
        drop(writer);
        tokio::time::timeout(Duration::from_secs(5), reader.readable()).await.unwrap().unwrap();
        assert!(matches!(reader.poll_read_expecting_nothing(&mut cx, &mut buf), Poll::Ready(Ok(0))));
    }

    #[test]
    fn a_read_expecting_nothing_registers_the_task_and_reads_what_is_there() {
        on_unix_and_tcp(read_expecting_nothing);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
        #[test]
        fn send_pair_delivers_both_parts_in_order(
            first in proptest::collection::vec(any::<u8>(), 0..300_000),
            second in proptest::collection::vec(any::<u8>(), 0..300_000),
            split in any::<bool>(),
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap();
            runtime.block_on(pair_arrives(first, second, split));
        }
    }
}
