//! Graceful shutdown on SIGTERM or SIGINT: stop accepting, let each client finish its
//! transaction (a client is told and disconnected at its next transaction boundary), bounded by
//! shutdown_timeout; SIGQUIT, or a second SIGTERM/SIGINT, stops at once. This is PgBouncer
//! 1.23's SIGINT ("safe shutdown") and SIGQUIT; PgBouncer's SIGTERM waits, unbounded, for
//! clients to disconnect, which a supervisor's stop timeout would end with SIGKILL.

use tokio::sync::watch;

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
    /// SIGTERM or SIGINT: drain, then exit.
    Graceful,
    /// SIGQUIT (or a second SIGTERM/SIGINT): exit now.
    Immediate,
    /// SHUTDOWN WAIT_FOR_CLIENTS: refuse new clients, exit once the connected ones have left.
    WaitForClients,
    /// A `--takeover` successor serves the listening sockets: serve every connection already
    /// accepted (logins in progress too), exit once none is left.
    TakenOver,
}

/// The process's shutdown signals, installed once: call [`Signals::next`] for each one.
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    /// The next SIGTERM/SIGINT (graceful) or SIGQUIT (immediate).
    pub async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Graceful,
            _ = self.int.recv() => Signal::Graceful,
            _ = self.quit.recv() => Signal::Immediate,
        }
    }
}
