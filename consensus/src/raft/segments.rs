//! The files of the Raft log directory: numbered segment files that records are appended to, and
//! the small metadata files replaced atomically. Owns every `write`, `fsync`, `rename` and
//! `unlink` of the log; must not decode entries or decide Raft semantics (that is `log_store`).
//!
//! Blocking I/O: call it from `spawn_blocking` or at startup, never on an async worker.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::log_store::LogStoreError;
use super::record::{self, ScanEnd};

const SEGMENT_SUFFIX: &str = ".seg";
const TMP_SUFFIX: &str = ".tmp";

/// `<dir>/<first index, 20 digits>.seg`
pub(crate) fn segment_path(dir: &Path, first_index: u64) -> PathBuf {
    dir.join(format!("{first_index:020}{SEGMENT_SUFFIX}"))
}

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LogStoreError + 'a {
    move |source| LogStoreError::Io { action, path: path.to_path_buf(), source }
}

/// Makes renames, creations and deletions in `dir` durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), LogStoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error("fsync directory", dir))
}

/// Replaces `<dir>/<name>` with one record holding `payload`: write `<name>.tmp`, fsync it, rename
/// it over the old file, fsync the directory. A crash leaves either the old or the new file.
pub(crate) fn replace_meta(dir: &Path, name: &str, payload: &[u8]) -> Result<(), LogStoreError> {
    let tmp = dir.join(format!("{name}{TMP_SUFFIX}"));
    let dst = dir.join(name);
    let mut bytes = Vec::with_capacity(payload.len() + record::HEADER_LEN);
    record::encode(payload, true, &mut bytes);
    let mut file = File::create(&tmp).map_err(io_error("create", &tmp))?;
    file.write_all(&bytes).map_err(io_error("write", &tmp))?;
    file.sync_all().map_err(io_error("fsync", &tmp))?;
    drop(file);
    fs::rename(&tmp, &dst).map_err(io_error("rename into place", &dst))?;
    sync_dir(dir)
}

/// Reads the one record of a metadata file written by [`replace_meta`]; `None` if there is none.
pub(crate) fn read_meta(dir: &Path, name: &str, max_payload: usize) -> Result<Option<Vec<u8>>, LogStoreError> {
    let path = dir.join(name);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("read", &path)(e)),
    };
    let (found, end) = record::scan(&bytes, max_payload, false);
    let corrupt = |offset, reason| LogStoreError::Corrupt { path: path.clone(), offset, reason };
    match (found.as_slice(), end) {
        ([one], ScanEnd::Clean) => Ok(Some(bytes[one.payload_start..one.payload_end].to_vec())),
        (_, ScanEnd::Corrupt { offset, reason } | ScanEnd::TornTail { offset, reason }) => Err(corrupt(offset, reason)),
        (records, ScanEnd::Clean) => Err(corrupt(0, format!("expected one record, found {}", records.len()))),
    }
}

/// Removes `*.tmp` files that a crash during [`replace_meta`] left behind.
pub(crate) fn remove_stale_tmp_files(dir: &Path) -> Result<(), LogStoreError> {
    for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
        let path = entry.map_err(io_error("list", dir))?.path();
        if path.extension().is_some_and(|ext| ext == "tmp") {
            fs::remove_file(&path).map_err(io_error("remove stale", &path))?;
        }
    }
    Ok(())
}

/// One intact record recovered from a segment at open.
pub(crate) struct RecoveredRecord {
    /// First index of the segment (its file name).
    pub segment: u64,
    pub offset: u64,
    pub payload: Arc<[u8]>,
}

/// Where a record was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    pub segment: u64,
    pub offset: u64,
}

/// The segment files of one log directory and the handle of the newest.
pub(crate) struct SegmentDir {
    dir: PathBuf,
    /// First index of each segment -> its length in bytes.
    segments: BTreeMap<u64, u64>,
    /// Open handle of the newest segment, once written to.
    active: Option<(u64, File)>,
    /// Start a new segment when the newest has reached this size.
    segment_bytes: u64,
    /// A failed write could not be undone: refuse further writes.
    broken: bool,
}

impl SegmentDir {
    /// Lists and reads every segment, cuts a torn tail off the newest, deletes empty segments,
    /// and returns the intact records in log order.
    pub(crate) fn open(
        dir: &Path,
        segment_bytes: u64,
        max_payload: usize,
    ) -> Result<(Self, Vec<RecoveredRecord>), LogStoreError> {
        let mut firsts = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error("list", dir))? {
            let name = entry.map_err(io_error("list", dir))?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(first) = name.strip_suffix(SEGMENT_SUFFIX).and_then(|n| n.parse::<u64>().ok()) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();

        let mut segments = BTreeMap::new();
        let mut records = Vec::new();
        let mut removed_any = false;
        for (i, &first) in firsts.iter().enumerate() {
            let path = segment_path(dir, first);
            let bytes = fs::read(&path).map_err(io_error("read", &path))?;
            let newest = i + 1 == firsts.len();
            let (found, end) = record::scan(&bytes, max_payload, newest);
            let mut len = bytes.len() as u64;
            match end {
                ScanEnd::Clean => {}
                ScanEnd::Corrupt { offset, reason } => return Err(LogStoreError::Corrupt { path, offset, reason }),
                ScanEnd::TornTail { offset, reason } => {
                    tracing::warn!(
                        file = %path.display(),
                        offset,
                        cut_bytes = len - offset,
                        %reason,
                        "raft log: cutting off the torn tail of an append interrupted by a crash"
                    );
                    let file = OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
                    file.set_len(offset).map_err(io_error("truncate", &path))?;
                    file.sync_all().map_err(io_error("fsync", &path))?;
                    len = offset;
                }
            }
            if found.is_empty() {
                tracing::warn!(file = %path.display(), "raft log: removing empty segment");
                fs::remove_file(&path).map_err(io_error("remove", &path))?;
                removed_any = true;
                continue;
            }
            records.extend(found.iter().map(|f| RecoveredRecord {
                segment: first,
                offset: f.offset,
                payload: Arc::from(&bytes[f.payload_start..f.payload_end]),
            }));
            segments.insert(first, len);
        }
        if removed_any {
            sync_dir(dir)?;
        }
        let segment_dir = Self { dir: dir.to_path_buf(), segments, active: None, segment_bytes, broken: false };
        Ok((segment_dir, records))
    }

    /// Writes one batch of records (the payloads of consecutive entries starting at
    /// `first_index`) with one `write`, then `fdatasync`s; returns only once they are durable.
    pub(crate) fn append_batch(
        &mut self,
        first_index: u64,
        payloads: &[Arc<[u8]>],
    ) -> Result<Vec<Location>, LogStoreError> {
        if self.broken {
            return Err(LogStoreError::Broken);
        }
        let newest = self.segments.last_key_value().map(|(&first, &len)| (first, len));
        let (segment, old_len, created) = match newest {
            Some((first, len)) if len < self.segment_bytes => (first, len, false),
            _ => {
                let path = segment_path(&self.dir, first_index);
                let file = OpenOptions::new()
                    .append(true)
                    .create_new(true)
                    .open(&path)
                    .map_err(io_error("create segment", &path))?;
                self.segments.insert(first_index, 0);
                self.active = Some((first_index, file));
                (first_index, 0, true)
            }
        };
        let path = segment_path(&self.dir, segment);
        if self.active.as_ref().map(|(first, _)| *first) != Some(segment) {
            let file = OpenOptions::new().append(true).open(&path).map_err(io_error("open", &path))?;
            self.active = Some((segment, file));
        }

        let mut bytes = Vec::new();
        let mut locations = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads.iter().enumerate() {
            locations.push(Location { segment, offset: old_len + bytes.len() as u64 });
            record::encode(payload, i == 0, &mut bytes);
        }
        let Some((_, file)) = self.active.as_mut() else {
            return Err(LogStoreError::Broken);
        };
        let written = file.write_all(&bytes).and_then(|()| file.sync_data()).map_err(io_error("append to", &path));
        if let Err(e) = written {
            // Undo the partial write so that later appends do not follow garbage.
            let undone = file.set_len(old_len).and_then(|()| file.sync_all());
            if undone.is_err() {
                self.broken = true;
            }
            return Err(e);
        }
        if created {
            sync_dir(&self.dir)?;
        }
        self.segments.insert(segment, old_len + bytes.len() as u64);
        Ok(locations)
    }

    /// Removes every record from `at` on: later segments are deleted newest first, then the
    /// segment holding `at` is cut (or deleted when `at` is its first record). A crash part-way
    /// leaves a shorter but still contiguous log.
    pub(crate) fn truncate_at(&mut self, at: Location) -> Result<(), LogStoreError> {
        let later: Vec<u64> =
            self.segments.range((Bound::Excluded(at.segment), Bound::Unbounded)).map(|(&first, _)| first).collect();
        for &first in later.iter().rev() {
            self.remove_segment(first)?;
        }
        let mut removed_any = !later.is_empty();
        if at.offset == 0 {
            self.remove_segment(at.segment)?;
            removed_any = true;
        } else {
            let path = segment_path(&self.dir, at.segment);
            let file = OpenOptions::new().write(true).open(&path).map_err(io_error("open", &path))?;
            file.set_len(at.offset).map_err(io_error("truncate", &path))?;
            file.sync_all().map_err(io_error("fsync", &path))?;
            self.segments.insert(at.segment, at.offset);
        }
        if removed_any {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// Deletes the oldest segments whose every entry is at or below `purged_index`.
    /// `last_index` is the newest entry still in the log (`None` if the log is now empty).
    pub(crate) fn remove_purged(&mut self, purged_index: u64, last_index: Option<u64>) -> Result<(), LogStoreError> {
        let firsts: Vec<u64> = self.segments.keys().copied().collect();
        let mut removed_any = false;
        for (i, &first) in firsts.iter().enumerate() {
            let segment_last = match firsts.get(i + 1) {
                Some(&next) => next.checked_sub(1),
                None => last_index.filter(|&last| last >= first),
            };
            let fully_purged = match segment_last {
                Some(last) => last <= purged_index,
                None => true,
            };
            if !fully_purged {
                break;
            }
            self.remove_segment(first)?;
            removed_any = true;
        }
        if removed_any {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn remove_segment(&mut self, first: u64) -> Result<(), LogStoreError> {
        if self.active.as_ref().is_some_and(|(active, _)| *active == first) {
            self.active = None;
        }
        let path = segment_path(&self.dir, first);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error("remove segment", &path)(e)),
        }
        self.segments.remove(&first);
        Ok(())
    }
}
