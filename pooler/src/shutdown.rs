//! Graceful shutdown on SIGTERM: stop accepting, let each client finish its transaction (a
//! client is told and disconnected at its next transaction boundary), bounded by
//! [`DRAIN_TIMEOUT`]; SIGINT stops at once, as in PgBouncer.

use std::time::Duration;
use tokio::sync::watch;

/// How long SIGTERM waits for transactions in progress before exiting anyway.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Shutdown {
    tx: watch::Sender<bool>,
    /// A shutdown the admin console asked for (SHUTDOWN WAIT_FOR_CLIENTS / WAIT_FOR_SERVERS).
    requested: watch::Sender<Option<Signal>>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { tx: watch::channel(false).0, requested: watch::channel(None).0 }
    }
}

impl Shutdown {
    /// The admin console asks the process to stop as `signal` would.
    pub fn request(&self, signal: Signal) {
        self.requested.send_replace(Some(signal));
    }

    /// SHUTDOWN WAIT_FOR_CLIENTS is in progress: new clients are refused, connected ones
    /// carry on until they leave.
    pub fn refuses_new_clients(&self) -> bool {
        *self.requested.borrow() == Some(Signal::WaitForClients)
    }

    /// Resolves with the console's request, if one is ever made.
    pub async fn requested(&self) -> Signal {
        let mut rx = self.requested.subscribe();
        let signal = match rx.wait_for(Option::is_some).await {
            Ok(signal) => signal.unwrap_or(Signal::Graceful),
            Err(_) => return std::future::pending().await,
        };
        signal
    }

    pub fn begin(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> Stopping {
        Stopping(self.tx.subscribe())
    }
}

pub struct Stopping(watch::Receiver<bool>);

impl Stopping {
    /// Resolves once shutdown has begun.
    pub async fn wait(&mut self) {
        if self.0.wait_for(|stopping| *stopping).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What ended the pooler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: drain, then exit.
    Graceful,
    /// SIGINT: exit now.
    Immediate,
    /// SHUTDOWN WAIT_FOR_CLIENTS: refuse new clients, exit once the connected ones have left.
    WaitForClients,
}

/// Waits for SIGTERM or SIGINT; pending forever if handlers cannot be installed.
pub async fn signal() -> Signal {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => Signal::Graceful,
        _ = int.recv() => Signal::Immediate,
    }
}
