//! The backup manifest: what one backup holds (every file with its size, mtime, mode and the
//! SHA-256 of each stored chunk), where its data lives (this backup or an earlier one it
//! references), and the WAL positions and times that make it restorable. Written last: a backup
//! is listed only once its manifest exists. Pure data plus the incremental planning and diff.

use crate::wal_name::Lsn;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Manifest format version.
pub const MANIFEST_FORMAT: u32 = 1;

/// Full copies everything; incremental references files unchanged since its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    Incr,
}

/// One stored chunk of a file: its raw length and the SHA-256 (hex) of its raw bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub size: u64,
    pub sha256: String,
    /// Bytes stored in the repository (compressed).
    pub stored: u64,
}

/// One file of the data directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    pub mode: u32,
    pub chunks: Vec<Chunk>,
    /// The label of the backup whose data objects hold this file (None: this backup).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    /// Block numbers whose page checksum was wrong when read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt_pages: Vec<u32>,
}

impl FileEntry {
    /// The label of the backup whose objects hold the data.
    pub fn data_label<'a>(&'a self, own: &'a str) -> &'a str {
        self.reference.as_deref().unwrap_or(own)
    }
    pub fn stored_size(&self) -> u64 {
        self.chunks.iter().map(|c| c.stored).sum()
    }
}

/// Everything about one completed backup.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub label: String,
    pub kind: BackupKind,
    /// The backup an incremental was taken against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub system_identifier: u64,
    pub pg_version: u32,
    pub segment_size: u64,
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub stop_lsn: Lsn,
    /// Server clock at pg_backup_start / after pg_backup_stop, RFC 3339.
    pub start_time: String,
    pub stop_time: String,
    /// Next transaction id when the backup stopped: targets from this xid on are after it.
    pub stop_next_xid: u64,
    pub from_standby: bool,
    pub compression_level: i32,
    pub data_checksums: bool,
    pub backup_label: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tablespace_map: Option<String>,
    /// Directories to create (relative path → mode), including empty ones.
    pub directories: BTreeMap<String, u32>,
    pub files: BTreeMap<String, FileEntry>,
    /// Wall time of the backup in seconds.
    pub duration_secs: f64,
}

impl Manifest {
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }
    /// Bytes this backup added to the repository (referenced files excluded).
    pub fn stored_size(&self) -> u64 {
        self.files.values().filter(|f| f.reference.is_none()).map(FileEntry::stored_size).sum()
    }
    /// Labels of earlier backups this one needs (its data references).
    pub fn references(&self) -> std::collections::BTreeSet<String> {
        self.files.values().filter_map(|f| f.reference.clone()).collect()
    }
    pub fn corrupt_page_count(&self) -> usize {
        self.files.values().map(|f| f.corrupt_pages.len()).sum()
    }
}

/// A file found in the data directory when a backup starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScannedFile {
    pub size: u64,
    pub mtime: i64,
    pub mode: u32,
}

/// What an incremental backup does with one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilePlan {
    /// Read, compress, checksum and store it.
    Copy,
    /// Unchanged since `parent`: reuse its entry (data stays where the parent's entry points).
    Reference(FileEntry),
}

/// Decides per file whether an incremental backup must copy it. A file is reused only when its
/// size and mtime are those recorded in the parent and its mtime is at least one second older
/// than the parent's start (a file written in the same second could change again without its
/// mtime moving). Files recorded with corrupt pages are always copied again.
pub fn plan_incremental(
    parent: Option<&Manifest>,
    parent_start_epoch: i64,
    scanned: &BTreeMap<String, ScannedFile>,
) -> BTreeMap<String, FilePlan> {
    scanned
        .iter()
        .map(|(path, f)| {
            let reuse = parent.and_then(|p| {
                let old = p.files.get(path)?;
                let unchanged = old.size == f.size
                    && old.mtime == f.mtime
                    && f.mtime < parent_start_epoch - 1
                    && old.corrupt_pages.is_empty();
                unchanged.then(|| FileEntry {
                    reference: Some(old.data_label(&p.label).to_string()),
                    mode: f.mode,
                    ..old.clone()
                })
            });
            (path.clone(), reuse.map_or(FilePlan::Copy, FilePlan::Reference))
        })
        .collect()
}

/// The difference between two file sets: what a delta restore must fetch or delete.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileDiff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
}

/// Compares files by size and chunk checksums (not by mtime or reference).
pub fn diff(old: &BTreeMap<String, FileEntry>, new: &BTreeMap<String, FileEntry>) -> FileDiff {
    let mut d = FileDiff::default();
    for (path, n) in new {
        match old.get(path) {
            None => d.added.push(path.clone()),
            Some(o)
                if o.size != n.size || o.chunks.iter().map(|c| &c.sha256).ne(n.chunks.iter().map(|c| &c.sha256)) =>
            {
                d.changed.push(path.clone())
            }
            Some(_) => {}
        }
    }
    d.removed = old.keys().filter(|p| !new.contains_key(*p)).cloned().collect();
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn entry(size: u64, mtime: i64, sum: &str) -> FileEntry {
        FileEntry {
            size,
            mtime,
            mode: 0o600,
            chunks: vec![Chunk { size, sha256: sum.to_string(), stored: size / 2 }],
            reference: None,
            corrupt_pages: vec![],
        }
    }

    fn manifest(label: &str, files: BTreeMap<String, FileEntry>) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            label: label.into(),
            kind: BackupKind::Full,
            parent: None,
            system_identifier: 1,
            pg_version: 150000,
            segment_size: 16 << 20,
            timeline: 1,
            start_lsn: Lsn(0),
            stop_lsn: Lsn(1),
            start_time: "2026-01-01T00:00:00Z".into(),
            stop_time: "2026-01-01T00:00:01Z".into(),
            stop_next_xid: 1000,
            from_standby: false,
            compression_level: 1,
            data_checksums: true,
            backup_label: String::new(),
            tablespace_map: None,
            directories: BTreeMap::new(),
            files,
            duration_secs: 1.0,
        }
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let mut files = BTreeMap::new();
        files.insert("base/1/1".to_string(), entry(8192, 10, "ab"));
        let m = manifest("20260101-000000F", files);
        let text = serde_json::to_string(&m).unwrap_or_default();
        let back: Result<Manifest, _> = serde_json::from_str(&text);
        assert_eq!(back.ok(), Some(m));
    }

    #[test]
    fn recent_files_are_copied_even_if_they_look_unchanged() {
        let mut files = BTreeMap::new();
        files.insert("a".to_string(), entry(10, 100, "x"));
        files.insert("b".to_string(), entry(10, 199, "y"));
        let parent = manifest("P", files);
        let scanned: BTreeMap<_, _> = [
            ("a".to_string(), ScannedFile { size: 10, mtime: 100, mode: 0o600 }),
            ("b".to_string(), ScannedFile { size: 10, mtime: 199, mode: 0o600 }),
        ]
        .into();
        let plan = plan_incremental(Some(&parent), 200, &scanned);
        assert!(matches!(&plan["a"], FilePlan::Reference(e) if e.reference.as_deref() == Some("P")));
        assert_eq!(plan["b"], FilePlan::Copy);
    }

    fn arb_files() -> impl Strategy<Value = BTreeMap<String, FileEntry>> {
        prop::collection::btree_map("[a-e]{1,2}", (0u64..4, 0i64..4, "[xyz]"), 0..12)
            .prop_map(|m| m.into_iter().map(|(k, (s, t, c))| (k, entry(s, t, &c))).collect())
    }

    fn arb_scan() -> impl Strategy<Value = BTreeMap<String, ScannedFile>> {
        prop::collection::btree_map("[a-e]{1,2}", (0u64..4, 0i64..4), 0..12).prop_map(|m| {
            m.into_iter().map(|(k, (size, mtime))| (k, ScannedFile { size, mtime, mode: 0o600 })).collect()
        })
    }

    proptest! {
        #[test]
        fn incremental_references_exactly_the_unchanged_old_files(
            parent_files in arb_files(), scanned in arb_scan(), start in 0i64..6
        ) {
            let parent = manifest("P", parent_files.clone());
            let plan = plan_incremental(Some(&parent), start, &scanned);
            prop_assert_eq!(plan.keys().collect::<Vec<_>>(), scanned.keys().collect::<Vec<_>>());
            for (path, p) in &plan {
                let s = &scanned[path];
                let old = parent_files.get(path);
                let should_reuse = old.is_some_and(|o| o.size == s.size && o.mtime == s.mtime && s.mtime < start - 1);
                match p {
                    FilePlan::Copy => prop_assert!(!should_reuse),
                    FilePlan::Reference(e) => {
                        prop_assert!(should_reuse);
                        let o = old.cloned().unwrap_or_else(|| entry(0, 0, ""));
                        prop_assert_eq!(&e.chunks, &o.chunks);
                        prop_assert_eq!(e.reference.as_deref(), Some("P"));
                    }
                }
            }
            // Without a parent everything is copied.
            let plan = plan_incremental(None, start, &scanned);
            prop_assert!(plan.values().all(|p| *p == FilePlan::Copy));
        }

        #[test]
        fn diff_partitions_paths_and_applying_it_gives_the_new_set(old in arb_files(), new in arb_files()) {
            let d = diff(&old, &new);
            let mut applied = old.clone();
            for p in &d.removed { applied.remove(p); }
            for p in d.added.iter().chain(&d.changed) { applied.insert(p.clone(), new[p].clone()); }
            // Unchanged files keep the old entry; compare by content.
            prop_assert_eq!(diff(&applied, &new), FileDiff::default());
            prop_assert_eq!(applied.keys().collect::<Vec<_>>(), new.keys().collect::<Vec<_>>());
            for p in &d.added { prop_assert!(!old.contains_key(p)); }
            for p in &d.removed { prop_assert!(!new.contains_key(p)); }
            prop_assert_eq!(diff(&new, &new), FileDiff::default());
        }
    }
}
