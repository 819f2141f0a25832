//! A fault-injecting TCP relay for partition tests: clients connect to the relay, which forwards to
//! a target. At run time a test can cut live connections, refuse new ones, blackhole one direction,
//! or add delay, and heal again. Everything stops when the relay is dropped.

use anyhow::Context;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which way bytes flow through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Client to target.
    Upstream,
    /// Target to client.
    Downstream,
}

/// The relay's current faults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// New connections are reset as soon as they are accepted.
    pub refuse_new: bool,
    /// Bytes from the client are dropped (the client's writes succeed, nothing arrives).
    pub blackhole_upstream: bool,
    /// Bytes from the target are dropped.
    pub blackhole_downstream: bool,
    /// Added to every chunk forwarded, in both directions.
    pub delay: Duration,
    /// Bumped to cut every connection open at that moment.
    cut_epoch: u64,
}

pub struct FaultRelay {
    listen: SocketAddr,
    faults: Arc<watch::Sender<Faults>>,
    accept_task: JoinHandle<()>,
}

impl FaultRelay {
    /// Starts a relay on a free port of 127.0.0.1 forwarding to `target`.
    pub async fn start(target: SocketAddr) -> anyhow::Result<FaultRelay> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the relay")?;
        let listen = listener.local_addr()?;
        let (tx, _) = watch::channel(Faults::default());
        let faults = Arc::new(tx);
        let accept_faults = faults.clone();
        let accept_task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                let rx = accept_faults.subscribe();
                if rx.borrow().refuse_new {
                    reset(&client);
                    continue;
                }
                conns.spawn(relay_connection(client, target, rx));
                while conns.try_join_next().is_some() {}
            }
        });
        Ok(FaultRelay { listen, faults, accept_task })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn faults(&self) -> Faults {
        *self.faults.borrow()
    }

    fn change(&self, f: impl FnOnce(&mut Faults)) {
        self.faults.send_modify(f);
    }

    /// Full partition: live connections are cut and new ones refused.
    pub fn partition(&self) {
        self.change(|f| {
            f.refuse_new = true;
            f.cut_epoch += 1;
        });
    }

    /// Removes every fault: new connections pass again (cut ones stay cut).
    pub fn heal(&self) {
        self.change(|f| {
            let epoch = f.cut_epoch;
            *f = Faults { cut_epoch: epoch, ..Faults::default() };
        });
    }

    /// Resets every connection open now; new ones are unaffected.
    pub fn cut_existing(&self) {
        self.change(|f| f.cut_epoch += 1);
    }

    pub fn refuse_new(&self, on: bool) {
        self.change(|f| f.refuse_new = on);
    }

    /// Silently drops the bytes flowing in `dir` (an asymmetric partition), or stops doing so.
    pub fn blackhole(&self, dir: Direction, on: bool) {
        self.change(|f| match dir {
            Direction::Upstream => f.blackhole_upstream = on,
            Direction::Downstream => f.blackhole_downstream = on,
        });
    }

    pub fn set_delay(&self, delay: Duration) {
        self.change(|f| f.delay = delay);
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        // Dropping the accept task's JoinSet aborts every connection task.
        self.accept_task.abort();
    }
}

/// Closes with RST rather than FIN, as a broken network path looks to the peer.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn relay_connection(client: TcpStream, target: SocketAddr, mut faults: watch::Receiver<Faults>) {
    let epoch = faults.borrow().cut_epoch;
    let server = match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        _ => {
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let fds = [client.as_raw_fd(), server.as_raw_fd()];
    let (cr, cw) = client.into_split();
    let (sr, sw) = server.into_split();
    let up = pump(cr, sw, Direction::Upstream, faults.clone());
    let down = pump(sr, cw, Direction::Downstream, faults.clone());
    let both = async { tokio::join!(up, down) };
    tokio::pin!(both);
    let cut = async {
        loop {
            if faults.changed().await.is_err() {
                return;
            }
            if faults.borrow().cut_epoch != epoch {
                return;
            }
        }
    };
    tokio::select! {
        _ = &mut both => {}
        _ = cut => {
            for fd in fds {
                // SAFETY: both sockets are owned by `both`, which is alive until the end of this
                // function, so the descriptors are still open and ours.
                let fd = unsafe { BorrowedFd::borrow_raw(fd) };
                let _ = socket2::SockRef::from(&fd).set_linger(Some(Duration::ZERO));
            }
        }
    }
    // Dropping `both` closes the sockets; after a cut they are reset (RST), not closed gracefully.
}

/// Forwards one direction until EOF or error; returns the halves so the caller decides how to close.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    dir: Direction,
    faults: watch::Receiver<Faults>,
) -> (OwnedReadHalf, OwnedWriteHalf) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let f = *faults.borrow();
        let dropped = match dir {
            Direction::Upstream => f.blackhole_upstream,
            Direction::Downstream => f.blackhole_downstream,
        };
        if dropped {
            continue;
        }
        if !f.delay.is_zero() {
            tokio::time::sleep(f.delay).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
    (from, to)
}
