//! Errors of the backup crate. Each says what happened and, where the user can act, what to do.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A usage or state problem with a complete, actionable message.
    #[error("{0}")]
    Refused(String),
    #[error("repository {location}: cannot {action} {object}: {source}")]
    Store {
        location: String,
        action: &'static str,
        object: String,
        #[source]
        source: Box<object_store::Error>,
    },
    #[error(
        "{what} belongs to the cluster with system identifier {found}, but repository {location} holds cluster \
         {expected}: this is not the cluster the repository was made for; give this cluster its own `scope`"
    )]
    ForeignCluster { what: String, found: u64, expected: u64, location: String },
    #[error(
        "WAL file {name} is already archived in {location} with different content (stored SHA-256 {stored}, \
         this file {offered}): two servers are archiving into the same timeline (a split brain or a restored \
         copy with archiving on). Archiving stops here; find which server wrote {name} before touching the archive"
    )]
    WalConflict { name: String, location: String, stored: String, offered: String },
    #[error(
        "{object} in repository {location} is corrupt ({why}); it cannot be used. Run `pgha backup verify` to see \
         everything affected, and restore from another backup (--set)"
    )]
    Corrupt { object: String, location: String, why: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("PostgreSQL ({during}): {source}")]
    Postgres {
        during: String,
        #[source]
        source: tokio_postgres::Error,
    },
}

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> BackupError {
    let path = path.into();
    move |source| BackupError::Io { path, source }
}

pub(crate) fn pg(during: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> BackupError {
    let during = during.into();
    move |source| BackupError::Postgres { during, source }
}
