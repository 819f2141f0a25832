//! `archive-push` and `archive-get`: PostgreSQL's archive_command and restore_command. A pushed
//! file is compressed and checksummed; pushing the same content again succeeds, different
//! content under the same name is refused. A missing file on get is "not found" (exit 1 for
//! PostgreSQL), while a corrupt or unreachable one is an error that must stop recovery.

use crate::codec;
use crate::config::BackupConfig;
use crate::error::{io, BackupError, Result};
use crate::repo::{wal_object, Put, RepoInfo, Repository};
use crate::wal_name::{segment_header, WalFile, DEFAULT_SEGMENT_SIZE};
use bytes::Bytes;
use std::path::Path;

/// What archive-push did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Stored,
    /// The same content was already archived (a retry after a crash, or another node).
    AlreadyArchived,
}

/// What archive-get found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetched {
    Restored,
    NotInArchive,
}

fn file_name(path: &Path) -> Result<String> {
    path.file_name()
        .and_then(|n| n.to_str())
        .map(str::to_string)
        .ok_or_else(|| BackupError::Refused(format!("{} has no file name", path.display())))
}

/// Archives the WAL file at `wal_path` (PostgreSQL's %p, relative to the data directory).
pub async fn push(config: &BackupConfig, wal_path: &Path) -> Result<Pushed> {
    let name = file_name(wal_path)?;
    let raw = tokio::fs::read(wal_path).await.map_err(io(wal_path))?;
    let repo = Repository::open(config)?;
    let known = repo.info().await?;
    let segment_size = match segment_header(&raw) {
        Some((sysid, seg_size)) => {
            let info = RepoInfo { system_identifier: sysid, segment_size: seg_size as u64 };
            let stored = match known {
                Some(k) => k,
                None => repo.claim(&info, &format!("WAL file {name}")).await?,
            };
            if stored.system_identifier != sysid {
                return Err(BackupError::ForeignCluster {
                    what: format!("WAL file {name}"),
                    found: sysid,
                    expected: stored.system_identifier,
                    location: repo.location().to_string(),
                });
            }
            stored.segment_size
        }
        None => known.map_or(DEFAULT_SEGMENT_SIZE, |k| k.segment_size),
    };
    let kind = WalFile::parse(&name, segment_size).ok_or_else(|| {
        BackupError::Refused(format!(
            "{name} is not a WAL segment, history or backup file name; archive_command must pass %p"
        ))
    })?;
    let level = config.compression_level;
    let (stored, sum) = tokio::task::spawn_blocking(move || codec::encode_wal(&raw, level))
        .await
        .map_err(|e| BackupError::Refused(format!("compression task failed: {e}")))?
        .map_err(io(wal_path))?;
    let object = wal_object(kind.timeline(), &name);
    match repo.put_new(&object, Bytes::from(stored)).await? {
        Put::Created => Ok(Pushed::Stored),
        Put::AlreadyThere => {
            let head = repo.get_prefix(&object, codec::WAL_HEADER_LEN as u64).await?.unwrap_or_default();
            let (existing, _) = codec::wal_header(&head).map_err(|why| BackupError::Corrupt {
                object: object.clone(),
                location: repo.location().to_string(),
                why,
            })?;
            if existing == sum {
                Ok(Pushed::AlreadyArchived)
            } else {
                Err(BackupError::WalConflict {
                    name,
                    location: repo.location().to_string(),
                    stored: codec::hex(&existing),
                    offered: codec::hex(&sum),
                })
            }
        }
    }
}

/// Restores WAL file `name` (%f) to `destination` (%p).
pub async fn get(config: &BackupConfig, name: &str, destination: &Path) -> Result<Fetched> {
    let repo = Repository::open(config)?;
    let segment_size = repo.info().await?.map_or(DEFAULT_SEGMENT_SIZE, |i| i.segment_size);
    let Some(kind) = WalFile::parse(name, segment_size) else {
        return Ok(Fetched::NotInArchive);
    };
    let object = wal_object(kind.timeline(), name);
    let Some(stored) = repo.get(&object).await? else { return Ok(Fetched::NotInArchive) };
    let raw = tokio::task::spawn_blocking(move || codec::decode_wal(&stored))
        .await
        .map_err(|e| BackupError::Refused(format!("decompression task failed: {e}")))?
        .map_err(|why| BackupError::Corrupt { object, location: repo.location().to_string(), why })?;
    // Write next to the destination and rename, so PostgreSQL never sees half a file.
    let tmp = destination.with_extension("pgha-tmp");
    tokio::fs::write(&tmp, &raw).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, destination).await.map_err(io(destination))?;
    Ok(Fetched::Restored)
}
