//! pgha backup: base backups, WAL archiving (archive-push / archive-get), point-in-time
//! recovery, verify and retention over local and S3-compatible repositories.
//!
//! Pure cores (manifest planning and diff, WAL names and continuity, recovery targets,
//! retention, page checksums, codecs) are separate from the modules doing I/O (repo, archive,
//! create, restore, verify, expire), so callers such as a future scheduler or `pgha ctl` PITR
//! are thin.

pub mod archive;
pub mod catalog;
pub mod codec;
pub mod commands;
pub mod config;
pub mod continuity;
pub mod create;
pub mod error;
pub mod expire;
pub mod manifest;
pub mod page_checksum;
pub mod pgdata;
pub mod prefetch;
pub mod repo;
pub mod report;
pub mod restore;
pub mod target;
pub mod wal_name;

pub use config::BackupConfig;
pub use error::BackupError;
