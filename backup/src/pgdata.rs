//! The data directory as a backup sees it: which files and directories are copied and which
//! are skipped (as pg_basebackup skips them: WAL, temporary and runtime state, signal files).

use crate::error::{io, BackupError, Result};
use crate::manifest::ScannedFile;
use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Directories kept (created empty on restore) but whose contents are never copied.
const SKIP_CONTENTS: &[&str] =
    &["pg_wal", "pg_stat_tmp", "pg_replslot", "pg_dynshmem", "pg_notify", "pg_serial", "pg_snapshots", "pg_subtrans"];

/// Files never copied (anywhere for pg_internal.init, top level for the others).
const SKIP_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "backup_label.old",
    "tablespace_map",
    "tablespace_map.old",
    "standby.signal",
    "recovery.signal",
    "postgresql.auto.conf.tmp",
    "current_logfiles",
    "current_logfiles.tmp",
];

/// Whether a relative path is copied by a backup.
pub fn is_copied(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    if name == "pg_internal.init" || name.starts_with("pgsql_tmp") {
        return false;
    }
    if !rel.contains('/') && SKIP_FILES.contains(&rel) {
        return false;
    }
    !SKIP_CONTENTS.iter().any(|d| rel.starts_with(&format!("{d}/")))
}

/// Files and directories of a data directory.
#[derive(Debug, Default)]
pub struct Scan {
    pub files: BTreeMap<String, ScannedFile>,
    pub directories: BTreeMap<String, u32>,
}

/// Walks `data_dir`. Files vanishing during the walk are skipped (a table dropped meanwhile);
/// tablespaces are refused for now.
pub fn scan(data_dir: &Path) -> Result<Scan> {
    let mut out = Scan::default();
    let mut stack = vec![String::new()];
    while let Some(rel_dir) = stack.pop() {
        let dir = if rel_dir.is_empty() { data_dir.to_path_buf() } else { data_dir.join(&rel_dir) };
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(io(&dir)(e)),
        };
        for entry in entries {
            let entry = entry.map_err(io(&dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            if rel_dir == "pg_tblspc" {
                return Err(BackupError::Refused(format!(
                    "the cluster has a tablespace ({rel}); backups of clusters with tablespaces are not supported \
                     by this version of pgha"
                )));
            }
            // Follow a symlinked pg_wal (initdb -X) as a directory.
            let meta = match std::fs::metadata(entry.path()) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io(entry.path())(e)),
            };
            if meta.is_dir() {
                if name.starts_with("pgsql_tmp") {
                    continue;
                }
                out.directories.insert(rel.clone(), meta.permissions().mode() & 0o7777);
                if !SKIP_CONTENTS.contains(&rel.as_str()) {
                    stack.push(rel);
                } else if rel == "pg_wal" {
                    out.directories.insert("pg_wal/archive_status".into(), 0o700);
                }
            } else if meta.is_file() && is_copied(&rel) {
                out.files.insert(
                    rel,
                    ScannedFile { size: meta.len(), mtime: meta.mtime(), mode: meta.permissions().mode() & 0o7777 },
                );
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_state_is_skipped() {
        assert!(is_copied("base/5/16384"));
        assert!(is_copied("global/pg_control"));
        assert!(is_copied("postgresql.conf"));
        assert!(!is_copied("postmaster.pid"));
        assert!(!is_copied("pg_wal/000000010000000000000001"));
        assert!(!is_copied("base/5/pg_internal.init"));
        assert!(!is_copied("base/pgsql_tmp/pgsql_tmp123.0"));
        assert!(!is_copied("standby.signal"));
        assert!(is_copied("base/5/standby.signal"), "only the top-level signal files are runtime state");
    }
}
