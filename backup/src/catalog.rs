//! Reading the repository's contents: complete backups (those with a manifest), leftovers of
//! interrupted ones, and an index of the archived WAL with the time each file arrived.

use crate::continuity::WalIndex;
use crate::error::{BackupError, Result};
use crate::manifest::Manifest;
use crate::repo::{manifest_object, Repository};
use crate::wal_name::{parse_history, WalFile, DEFAULT_SEGMENT_SIZE};
use std::collections::BTreeMap;

/// Every complete backup, oldest first.
pub async fn manifests(repo: &Repository) -> Result<Vec<Manifest>> {
    let mut out = Vec::new();
    for label in repo.list_dirs("backups").await? {
        if let Some(m) = manifest(repo, &label).await? {
            out.push(m);
        }
    }
    out.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.label.cmp(&b.label)));
    Ok(out)
}

/// One backup's manifest; None when the backup is absent or was interrupted.
pub async fn manifest(repo: &Repository, label: &str) -> Result<Option<Manifest>> {
    let object = manifest_object(label);
    let Some(bytes) = repo.get(&object).await? else { return Ok(None) };
    serde_json::from_slice(&bytes).map(Some).map_err(|e| BackupError::Corrupt {
        object,
        location: repo.location().to_string(),
        why: format!("manifest is not valid: {e}"),
    })
}

/// Labels of backup directories without a manifest: interrupted backups (or one running now).
pub async fn leftovers(repo: &Repository) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for label in repo.list_dirs("backups").await? {
        if !repo.exists(&manifest_object(&label)).await? {
            out.push(label);
        }
    }
    Ok(out)
}

/// The archive: which segments exist, the history files, and when each segment arrived.
pub struct Archive {
    pub index: WalIndex,
    /// (timeline, segno) → time the object was written (≈ when PostgreSQL finished the segment).
    pub arrived: BTreeMap<(u32, u64), chrono::DateTime<chrono::Utc>>,
    /// Every WAL object: relative path → parsed name.
    pub objects: Vec<(String, WalFile)>,
}

pub async fn archive(repo: &Repository) -> Result<Archive> {
    let segment_size = repo.info().await?.map_or(DEFAULT_SEGMENT_SIZE, |i| i.segment_size);
    let mut index = WalIndex { segment_size, ..Default::default() };
    let mut arrived = BTreeMap::new();
    let mut objects = Vec::new();
    for item in repo.list("wal").await? {
        let Some(name) = item.path.rsplit('/').next().and_then(|n| n.strip_suffix(".zst")) else { continue };
        let Some(file) = WalFile::parse(name, segment_size) else { continue };
        match file {
            WalFile::Segment { timeline, segno } => {
                arrived.insert((timeline, segno), item.modified);
            }
            WalFile::History { timeline } => {
                let raw = match repo.get(&item.path).await? {
                    Some(stored) => crate::codec::decode_wal(&stored).map_err(|why| BackupError::Corrupt {
                        object: item.path.clone(),
                        location: repo.location().to_string(),
                        why,
                    })?,
                    None => continue,
                };
                let history = parse_history(&String::from_utf8_lossy(&raw)).map_err(|why| BackupError::Corrupt {
                    object: item.path.clone(),
                    location: repo.location().to_string(),
                    why,
                })?;
                index.histories.insert(timeline, history);
            }
            WalFile::Other { .. } => {}
        }
        index.add(file);
        objects.push((item.path, file));
    }
    Ok(Archive { index, arrived, objects })
}
