//! The boundary between the admin console and the pooler it controls: `AdminBackend`, which
//! the pool side implements, and the errors its commands return (PgBouncer's texts).

use super::command::ShutdownMode;
use super::rows::{ConfigRow, DatabaseRow, Lists, MemRow, PoolRow, PoolerState, SocketRow, StatsRow, UserRow};
use async_trait::async_trait;
use std::time::Duration;
use thiserror::Error;

/// What SHOW VERSION reports unless the backend says otherwise. It starts with PgBouncer's
/// form so that tools parsing `PgBouncer X.Y.Z` keep working.
pub const VERSION: &str = concat!("PgBouncer 1.25.2 compatible (pgha ", env!("CARGO_PKG_VERSION"), ")");

/// A console command that could not be carried out. The text is PgBouncer's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AdminError {
    #[error("no such database: {0}")]
    NoSuchDatabase(String),
    #[error("cannot {verb} admin db: {db}")]
    AdminDatabase { verb: &'static str, db: String },
    #[error("already suspended/paused")]
    AlreadyPaused,
    #[error("pooler is not paused/suspended")]
    NotPaused,
    #[error("database {0} is not paused")]
    DatabaseNotPaused(String),
    #[error("pooler is shutting down")]
    ShuttingDown,
    #[error("client not found")]
    ClientNotFound,
    /// PAUSE did not drain in time; the pause stays in force until RESUME.
    #[error("PAUSE timed out after {:?} with {busy} server connection(s) still in use; RESUME cancels it", .after)]
    PauseTimeout { after: Duration, busy: u32 },
    /// A RESUME arrived while this PAUSE was waiting for servers to drain.
    #[error("PAUSE cancelled by RESUME")]
    PauseCancelled,
    #[error("RELOAD failed, see logs for additional details")]
    ReloadFailed,
    #[error("SET failed: {0}")]
    SetFailed(String),
    #[error("{0} is not supported by this pooler")]
    NotSupported(&'static str),
    #[error("{0}")]
    Failed(String),
}

impl AdminError {
    /// The SQLSTATE sent with the error: PgBouncer uses 08P01 for console errors and F0000
    /// (config_file_error) for a failed RELOAD.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AdminError::ReloadFailed => "F0000",
            _ => "08P01",
        }
    }
}

/// What the console needs from the pooler. Every method is called from the console's session
/// task; implementations share state with the pools through their own synchronisation.
///
/// Contract for the commands (PgBouncer's semantics, plus the guarantees the console relies on):
/// - `pause(db)`: stop handing out server connections for `db` (all databases if `None`) and
///   return once every server connection of it has been released (transaction mode: at the
///   end of the transaction; session mode: when the client leaves). Bounded: after the
///   implementation's timeout return `AdminError::PauseTimeout`, leaving the pause in force
///   (clients keep waiting) until RESUME. Idempotent: pausing what is already paused returns
///   `AlreadyPaused` at once (PgBouncer's answer) and must not disturb the pending pause.
///   A `resume` that arrives while a `pause` is still draining must make that pending `pause`
///   return `PauseCancelled` promptly (never leave it waiting out its timeout) and release
///   every waiting client.
/// - `resume(db)`: undo PAUSE, KILL or SUSPEND; `NotPaused` / `DatabaseNotPaused` otherwise.
/// - `kill(db)`: close every client and server connection of `db` (all but the admin console
///   if `None`) at once; new clients of it wait until RESUME.
/// - `kill_client(id)`: close one client (id from SHOW CLIENTS) and its server connection.
/// - `reconnect(db)`: mark server connections close_needed; each closes when released.
/// - `wait_close(db)`: return once no server connection of `db` is close_needed (bounded like
///   pause; `Failed` with a reason on timeout).
/// - `disable(db)` / `enable(db)`: refuse / accept new clients of `db`.
/// - `reload()`: re-read the configuration and the auth file without dropping clients;
///   `ReloadFailed` keeps the old configuration in force.
/// - `shutdown(mode)`: `Immediate` may not return at all (the process exits); the other modes
///   return once the shutdown has started (stop accepting), the process exits later.
/// - `suspend()` and `set()` may answer `NotSupported`.
#[async_trait]
pub trait AdminBackend: Send + Sync {
    async fn pools(&self) -> Vec<PoolRow>;
    async fn stats(&self) -> Vec<StatsRow>;
    async fn servers(&self) -> Vec<SocketRow>;
    async fn clients(&self) -> Vec<SocketRow>;
    async fn databases(&self) -> Vec<DatabaseRow>;
    async fn users(&self) -> Vec<UserRow>;
    async fn config(&self) -> Vec<ConfigRow>;
    async fn lists(&self) -> Lists;
    async fn state(&self) -> PoolerState;
    async fn mem(&self) -> Vec<MemRow> {
        Vec::new()
    }
    fn version(&self) -> String {
        VERSION.to_string()
    }

    async fn pause(&self, db: Option<&str>) -> Result<(), AdminError>;
    async fn resume(&self, db: Option<&str>) -> Result<(), AdminError>;
    async fn kill(&self, db: Option<&str>) -> Result<(), AdminError>;
    async fn kill_client(&self, id: u64) -> Result<(), AdminError>;
    async fn reconnect(&self, db: Option<&str>) -> Result<(), AdminError>;
    async fn wait_close(&self, db: Option<&str>) -> Result<(), AdminError>;
    async fn disable(&self, db: &str) -> Result<(), AdminError>;
    async fn enable(&self, db: &str) -> Result<(), AdminError>;
    async fn reload(&self) -> Result<(), AdminError>;
    async fn shutdown(&self, mode: ShutdownMode) -> Result<(), AdminError>;
    async fn suspend(&self) -> Result<(), AdminError> {
        Err(AdminError::NotSupported("SUSPEND (online restart by socket hand-over)"))
    }
    async fn set(&self, key: &str, value: &str) -> Result<(), AdminError> {
        let _ = (key, value);
        Err(AdminError::NotSupported("SET (edit pooler.toml and RELOAD)"))
    }
}
