//! `archive-push` and `archive-get`: PostgreSQL's archive_command and restore_command. A pushed
//! file is compressed and checksummed; pushing the same content again succeeds, different
//! content under the same name is refused. A missing file on get is "not found" (exit 1 for
//! PostgreSQL), while a corrupt or unreachable one is an error that must stop recovery.

use crate::codec;
use crate::config::BackupConfig;
use crate::error::{io, BackupError, Result};
use crate::repo::{wal_object, Put, RepoInfo, Repository};
use crate::wal_name::{parse_history, segment_header, segno_of, TimelineSwitch, WalFile, DEFAULT_SEGMENT_SIZE};
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
    let raw = std::fs::read(wal_path).map_err(io(wal_path))?;
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
    let history = matches!(kind, WalFile::History { .. }).then(|| String::from_utf8_lossy(&raw).into_owned());
    let pushed = store(&repo, config.compression_level, &name, kind, raw).await?;
    if let (Some(text), Some(pg_wal)) = (history, wal_path.parent()) {
        backfill_ancestors(&repo, config.compression_level, &text, pg_wal, segment_size).await;
    }
    Ok(pushed)
}

/// Compresses and stores one WAL file under its name, create-if-absent.
async fn store(repo: &Repository, level: i32, name: &str, kind: WalFile, raw: Vec<u8>) -> Result<Pushed> {
    // Inline: archive-push runs one file on a single-threaded runtime with nothing to overlap.
    let (stored, sum) =
        codec::encode_wal(&raw, level).map_err(|e| BackupError::Refused(format!("compressing {name}: {e}")))?;
    let object = wal_object(kind.timeline(), name);
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
                    name: name.to_string(),
                    location: repo.location().to_string(),
                    stored: codec::hex(&existing),
                    offered: codec::hex(&sum),
                })
            }
        }
    }
}

/// Segments of the ancestor timelines (before their switch points) among `names`: what a
/// promoted server may still hold that its dead primary never archived.
pub fn ancestor_segments(history: &[TimelineSwitch], names: &[String], segment_size: u64) -> Vec<String> {
    let mut stretches = Vec::new();
    let mut begin = 0;
    for h in history {
        let switch_seg = segno_of(h.switch, segment_size);
        stretches.push((h.parent, begin, switch_seg));
        begin = switch_seg;
    }
    let mut out: Vec<String> = names
        .iter()
        .filter(|n| match WalFile::parse(n, segment_size) {
            Some(WalFile::Segment { timeline, segno }) => {
                stretches.iter().any(|&(tl, b, end)| tl == timeline && (b..end).contains(&segno))
            }
            _ => false,
        })
        .cloned()
        .collect();
    out.sort();
    out
}

/// After a promotion PostgreSQL archives the new timeline's history file; the segments of the old
/// timeline this server received by streaming are marked done without being archived, so those
/// the old primary had not archived when it died would leave a gap. They are pushed here from
/// `pg_wal` when the archive lacks them. Best effort: problems are logged, the history push stands.
async fn backfill_ancestors(repo: &Repository, level: i32, history: &str, pg_wal: &Path, segment_size: u64) {
    let history = match parse_history(history) {
        Ok(h) => h,
        Err(e) => return tracing::warn!("history file unreadable, no backfill of older timelines: {e}"),
    };
    let names: Vec<String> = match std::fs::read_dir(pg_wal) {
        Ok(dir) => dir.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).collect(),
        Err(e) => return tracing::warn!("cannot list {}: {e}; no backfill of older timelines", pg_wal.display()),
    };
    for name in ancestor_segments(&history, &names, segment_size) {
        let Some(kind) = WalFile::parse(&name, segment_size) else { continue };
        match repo.exists(&wal_object(kind.timeline(), &name)).await {
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => return tracing::warn!("backfill of older timelines stopped: {e}"),
        }
        let path = pg_wal.join(&name);
        let raw = match std::fs::read(&path) {
            Ok(raw) if raw.len() as u64 == segment_size => raw,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!("backfill: cannot read {}: {e}", path.display());
                continue;
            }
        };
        let sysid = segment_header(&raw).map(|(s, _)| s);
        let known = repo.info().await.ok().flatten().map(|i| i.system_identifier);
        if sysid.is_none() || sysid != known {
            tracing::warn!("backfill: {name} does not carry this repository's system identifier; skipped");
            continue;
        }
        match store(repo, level, &name, kind, raw).await {
            Ok(_) => tracing::info!("archived {name} of an older timeline that its primary had not archived"),
            Err(e) => tracing::warn!("backfill of {name}: {e}"),
        }
    }
}

/// Restores WAL file `name` (%f) to `destination` (%p).
pub async fn get(config: &BackupConfig, name: &str, destination: &Path) -> Result<Fetched> {
    match crate::prefetch::take(destination, name) {
        Ok(raw) => return write_atomically(destination, &raw).await.map(|()| Fetched::Restored),
        Err(crate::prefetch::Rejected::Absent) => {}
        Err(crate::prefetch::Rejected::Bad(why)) => {
            tracing::warn!("prefetched {name} not used ({why}); fetching it from the repository")
        }
    }
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
    write_atomically(destination, &raw).await?;
    Ok(Fetched::Restored)
}

/// Writes next to the destination and renames, so PostgreSQL never sees half a file.
async fn write_atomically(destination: &Path, raw: &[u8]) -> Result<()> {
    let tmp = destination.with_extension("pgha-tmp");
    tokio::fs::write(&tmp, raw).await.map_err(io(&tmp))?;
    tokio::fs::rename(&tmp, destination).await.map_err(io(destination))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wal_name::Lsn;

    #[test]
    fn only_ancestor_segments_before_each_switch_are_backfilled() {
        let seg = 16 << 20;
        // Timeline 1 ended in segment 5, timeline 2 in segment 9; this server is on timeline 3.
        let history = [
            TimelineSwitch { parent: 1, switch: Lsn(5 * seg + 0x60) },
            TimelineSwitch { parent: 2, switch: Lsn(9 * seg + 0x28) },
        ];
        let names: Vec<String> = [
            "000000010000000000000004",
            "000000010000000000000005", // holds the switch: timeline 2 has it
            "000000010000000000000006", // written after the switch on the old primary, or recycled
            "000000020000000000000004", // before timeline 2 began: not a real file of timeline 2
            "000000020000000000000008",
            "000000020000000000000009",
            "000000030000000000000009",
            "000000010000000000000003.partial",
            "00000002.history",
            "archive_status",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            ancestor_segments(&history, &names, seg),
            vec!["000000010000000000000004".to_string(), "000000020000000000000008".to_string()]
        );
    }
}
