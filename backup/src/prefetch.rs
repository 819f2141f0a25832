//! archive-get prefetch (pgBackRest's asynchronous archive-get): when PostgreSQL asks for segment
//! N, a detached worker fetches N+1..N+k into a spool directory beside `%p` (`pg_wal/pgha-prefetch`,
//! which base backups and pg_basebackup skip), so the next calls are served without the
//! repository. A spooled file is the stored object as fetched (header with SHA-256, zstd frame),
//! written to a temporary name and renamed. It is served only when its SHA-256 matches, it is a
//! full segment, its first page names the same timeline and position as the file name, and its
//! system identifier is the one in this data directory's pg_control; anything else is deleted
//! and the repository is asked instead. A served file is removed.

use crate::codec;
use crate::config::BackupConfig;
use crate::error::{BackupError, Result};
use crate::repo::{wal_object, Repository};
use crate::wal_name::{segment_header, segment_name, WalFile};
use std::path::{Path, PathBuf};

/// Name of the spool directory, inside the directory of `%p` (pg_wal).
pub const SPOOL_DIR: &str = "pgha-prefetch";
const LOCK: &str = ".lock";
const TMP_SUFFIX: &str = ".tmp";

/// The spool directory for a restore_command destination (`pg_wal/RECOVERYXLOG`).
pub fn spool_dir(destination: &Path) -> PathBuf {
    destination.parent().unwrap_or(Path::new(".")).join(SPOOL_DIR)
}

/// The data directory of a destination in its pg_wal, for its pg_control.
fn pg_control(destination: &Path) -> PathBuf {
    destination.parent().unwrap_or(Path::new(".")).join("..").join("global/pg_control")
}

/// Why a spooled file was not served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    Absent,
    Bad(String),
}

/// Checks a spooled object for `name`: decoded WAL when it is the right segment of this cluster.
pub fn check(stored: &[u8], name: &str, system_identifier: u64) -> Result<Vec<u8>, String> {
    let raw = codec::decode_wal(stored)?;
    let (sysid, seg_size) = segment_header(&raw).ok_or("no long page header")?;
    if sysid != system_identifier {
        return Err(format!("system identifier {sysid}, this cluster is {system_identifier}"));
    }
    if raw.len() as u64 != seg_size as u64 {
        return Err(format!("{} bytes, segments are {seg_size}", raw.len()));
    }
    let Some(WalFile::Segment { timeline, segno }) = WalFile::parse(name, seg_size as u64) else {
        return Err("not a segment name".into());
    };
    let tli = u32::from_le_bytes(raw[4..8].try_into().map_err(|_| "short header")?);
    let pageaddr = u64::from_le_bytes(raw[8..16].try_into().map_err(|_| "short header")?);
    if tli != timeline || pageaddr != segno * seg_size as u64 {
        return Err(format!("its first page is timeline {tli} at {pageaddr:X}, the name says timeline {timeline}"));
    }
    Ok(raw)
}

/// Takes `name` from the spool: Ok(raw) when a valid copy is there; the file is removed either way.
pub fn take(destination: &Path, name: &str) -> Result<Vec<u8>, Rejected> {
    let path = spool_dir(destination).join(name);
    let stored = match std::fs::read(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Rejected::Absent),
        Err(e) => return Err(Rejected::Bad(e.to_string())),
    };
    let _ = std::fs::remove_file(&path);
    let control = std::fs::read(pg_control(destination)).map_err(|e| Rejected::Bad(format!("pg_control: {e}")))?;
    let sysid = control.get(..8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
    let sysid = sysid.ok_or_else(|| Rejected::Bad("pg_control is too short".into()))?;
    check(&stored, name, sysid).map_err(Rejected::Bad)
}

/// The `count` segment names after `name` on its timeline (none when `name` is not a segment).
pub fn window(name: &str, count: usize, segment_size: u64) -> Vec<String> {
    match WalFile::parse(name, segment_size) {
        Some(WalFile::Segment { timeline, segno }) => {
            (1..=count as u64).map(|i| segment_name(timeline, segno + i, segment_size)).collect()
        }
        _ => Vec::new(),
    }
}

/// Whether fewer than half of `wanted` are spooled (then a worker is worth starting).
pub fn needs_worker(destination: &Path, wanted: &[String]) -> bool {
    let spool = spool_dir(destination);
    let present = wanted.iter().filter(|n| spool.join(n).is_file()).count();
    present * 2 < wanted.len()
}

/// The worker: fetches the `archive_get_prefetch` segments after `after` (in order, stopping at
/// the first one not archived yet) into the spool and removes other spooled files. Only one worker runs per spool (a lock
/// file); a second one returns at once.
pub async fn fill(config: &BackupConfig, spool: &Path, after: &str) -> Result<usize> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e: std::io::Error| BackupError::Io { path: p, source: e }
    };
    std::fs::create_dir_all(spool).map_err(io(spool))?;
    let lock_path = spool.join(LOCK);
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path);
    let lock = lock.map_err(io(&lock_path))?;
    // SAFETY: flock on a file descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Ok(0);
    }
    let repo = Repository::open(config)?;
    let info = repo.info().await?;
    let sysid = info.as_ref().map(|i| i.system_identifier);
    let segment_size = info.map_or(crate::wal_name::DEFAULT_SEGMENT_SIZE, |i| i.segment_size);
    let wanted = window(after, config.archive_get_prefetch, segment_size);
    for entry in std::fs::read_dir(spool).map_err(io(spool))?.flatten() {
        let n = entry.file_name().to_string_lossy().into_owned();
        if n != LOCK && !wanted.contains(&n) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let mut fetched = 0;
    for name in &wanted {
        let path = spool.join(name);
        if path.is_file() {
            continue;
        }
        let Some(kind) = WalFile::parse(name, segment_size) else { break };
        let Some(stored) = repo.get(&wal_object(kind.timeline(), name)).await? else { break };
        // Checked here too, so a bad object is not spooled (and checked again when served).
        if let Err(why) = check(&stored, name, sysid.unwrap_or_default()) {
            tracing::warn!("prefetch: {name} in {} is not usable ({why}); not spooled", repo.location());
            break;
        }
        let tmp = spool.join(format!("{name}{TMP_SUFFIX}"));
        std::fs::write(&tmp, &stored).map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        fetched += 1;
    }
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake 1 MiB segment whose first page has a long header.
    fn segment(tli: u32, segno: u64, sysid: u64) -> Vec<u8> {
        let size = 1u64 << 20;
        let mut raw = vec![0u8; size as usize];
        raw[0..2].copy_from_slice(&0xD110u16.to_le_bytes());
        raw[2..4].copy_from_slice(&0x0002u16.to_le_bytes());
        raw[4..8].copy_from_slice(&tli.to_le_bytes());
        raw[8..16].copy_from_slice(&(segno * size).to_le_bytes());
        raw[24..32].copy_from_slice(&sysid.to_le_bytes());
        raw[32..36].copy_from_slice(&(size as u32).to_le_bytes());
        raw
    }

    #[test]
    fn only_the_right_segment_of_this_cluster_passes() {
        let size = 1u64 << 20;
        let name = segment_name(2, 7, size);
        let (stored, _) = codec::encode_wal(&segment(2, 7, 42), 1).unwrap();
        assert!(check(&stored, &name, 42).is_ok());
        assert!(check(&stored, &name, 43).unwrap_err().contains("system identifier"));
        assert!(check(&stored, &segment_name(1, 7, size), 42).unwrap_err().contains("the name says timeline 1"));
        assert!(check(&stored, &segment_name(2, 8, size), 42).is_err());
        let mut bad = stored.clone();
        let last = bad.len() - 5;
        bad[last] ^= 1;
        assert!(check(&bad, &name, 42).is_err());
    }

    #[test]
    fn the_window_follows_the_timeline() {
        let size = 16u64 << 20;
        assert_eq!(
            window("0000000200000000000000FE", 3, size),
            vec!["0000000200000000000000FF", "000000020000000100000000", "000000020000000100000001"]
        );
        assert!(window("00000002.history", 3, size).is_empty());
    }
}
