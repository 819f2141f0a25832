//! One client connection, from its first packet to its last: the startup phase (SSLRequest,
//! CancelRequest, StartupMessage, limits and login) in `login`, then the relay loop in `relay`.
//! Owns the client's socket and buffers; server connections are borrowed from its pool.

mod login;
mod relay;

use crate::protocol::{ErrorResponse, Severity};
use crate::runtime::Shared;
use crate::stream::Stream;
use bytes::BytesMut;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Serves one accepted client connection to its end. Never panics on client input; every
/// refusal is an ErrorResponse with PostgreSQL's or PgBouncer's SQLSTATE.
pub async fn serve(stream: Stream, shared: Arc<Shared>) {
    shared.stats.client_connections.fetch_add(1, Ordering::Relaxed);
    let _count = ClientCount(shared.clone());
    let login_timeout = crate::pool::secs(shared.config().client_login_timeout);
    let mut buf = BytesMut::new();
    // Boxed: the TLS handshake and the startup phase's state (authentication, a first server
    // login) are large and must not stay in the task of every idle client once they are done.
    let negotiate = Box::pin(login::negotiate_tls(stream, &mut buf, &shared));
    let negotiated = match login_timeout {
        Some(t) => tokio::time::timeout(t, negotiate).await.ok().flatten(),
        None => negotiate.await,
    };
    let Some(mut stream) = negotiated else { return };
    let login = Box::pin(login::login(&mut stream, &mut buf, &shared));
    let outcome = match login_timeout {
        Some(t) => match tokio::time::timeout(t, login).await {
            Ok(outcome) => outcome,
            Err(_) => {
                let _ = send_fatal(&mut stream, "08P01", "client_login_timeout").await;
                return;
            }
        },
        None => login.await,
    };
    match outcome {
        None => {}
        Some(login::Outcome::Pool(logged_in)) => relay::Relay::new(&shared, stream, buf, logged_in).run().await,
        Some(login::Outcome::Console(access, me)) => {
            let backend = crate::console::ConsoleBackend { shared: shared.clone() };
            let options = crate::admin::SessionOptions {
                idle_timeout: crate::pool::secs(shared.config().client_idle_timeout),
                ..Default::default()
            };
            let console = Box::pin(crate::admin::serve_admin(&mut stream, &mut buf, access, &backend, options));
            if let Err(e) = console.await {
                tracing::info!("admin console session ended: {e}");
            }
            // Out of the registry before the socket closes.
            drop(me);
        }
    }
}

/// Sends a FATAL ErrorResponse (best effort: the client may be gone).
pub(crate) async fn send_fatal(stream: &mut Stream, code: &str, message: &str) -> std::io::Result<()> {
    let bytes = ErrorResponse::new(Severity::Fatal, code, message).to_bytes();
    stream.send(&bytes).await
}

struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.stats.client_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An idle client costs its task's future plus a few small heap objects (session
    /// parameters, cancel key) and no buffer. The startup phase, a busy client's state (server
    /// I/O, checkout, waits), server logins, reset queries and the goodbye are boxed while they
    /// run, so the future is the relay's state (`Relay`, under 800 bytes) and its idle wait
    /// (readiness, shutdown, client_idle_timeout: about 450 bytes). Before they were boxed the
    /// future was 4.8 kB in a debug build; the bound is for debug builds, which lay futures out
    /// less tightly than release builds.
    #[tokio::test]
    async fn an_idle_client_task_stays_small() {
        let shared = Arc::new(Shared::new(crate::config::PoolerConfig::default(), None).expect("default config"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let socket = tokio::net::TcpStream::connect(listener.local_addr().expect("local addr")).await.expect("connect");
        let task = serve(Stream::Tcp(socket), shared);
        let size = std::mem::size_of_val(&task);
        assert!(size <= BOUND, "a client's task future is {size} bytes, more than {BOUND}: box the large, rare part");
    }

    const BOUND: usize = if cfg!(debug_assertions) { 2816 } else { 2048 };
}
