//! The crash-safe on-disk Raft log: openraft's `RaftLogStorage` and `RaftLogReader` over the
//! segment files of one directory, with the vote, the committed log id and the last purged log id
//! beside them. Owns the in-memory index (every entry's log id, location and encoded bytes) and the
//! rules of append/truncate/purge; must not interpret application data or touch the network.
//!
//! Layout of the directory:
//! - `<first index:020>.seg`: records (see `record`) whose payloads are JSON-encoded entries, in
//!   index order without holes; a new segment starts when the newest reaches `segment_bytes`.
//! - `vote`, `committed`, `purged`: one record each, JSON, replaced atomically.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{
    AnyError, LogId, OptionalSend, RaftLogId, RaftLogReader, RaftTypeConfig, StorageError, StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::record::MAX_PAYLOAD_LEN;
use super::segments::{self, Location, SegmentDir};

const VOTE_FILE: &str = "vote";
const COMMITTED_FILE: &str = "committed";
const PURGED_FILE: &str = "purged";

/// What can go wrong opening or writing the log. Open errors name the file and byte offset.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreError {
    #[error("raft log: cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "raft log: corrupt data in {} at byte offset {offset}: {reason}. This is not the torn tail of \
         a crash, so it is not repaired automatically: move this node's raft directory aside and \
         re-add the node to the cluster so that it copies the log from its peers",
        path.display()
    )]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("raft log: {} at byte offset {offset}: {problem}", path.display())]
    Inconsistent { path: PathBuf, offset: u64, problem: String },
    #[error(
        "raft log: entries up to index {committed} were committed, but the log ends at {last}: \
         durable entries are missing (disk or file damage); re-add this node from its peers"
    )]
    LostCommitted { committed: u64, last: String },
    #[error("raft log: append of index {found} does not follow the log, which expects {expected}")]
    NotContiguous { expected: u64, found: u64 },
    #[error("raft log: entry {index} encodes to {len} bytes, over the limit of {max}")]
    EntryTooLarge { index: u64, len: usize, max: usize },
    #[error("raft log: cannot encode {what}: {source}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("raft log: the background I/O task failed: {0}")]
    Task(String),
    #[error("raft log: an earlier failed write could not be undone; restart the node")]
    Broken,
}

/// Tunables of the on-disk log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogStoreOptions {
    /// Start a new segment file once the newest has reached this many bytes. Purge deletes whole
    /// segments only, so this is also the granularity of reclaiming disk space.
    pub segment_bytes: u64,
    /// Largest encoded entry accepted (and believed when reading a record length back).
    pub max_entry_bytes: usize,
    /// The committed log id is written to disk at most this often (it costs several fsyncs and
    /// changes on every write). A stale one on disk is safe: it is never ahead of the durable log,
    /// and a restarted member learns the rest from the leader before applying it.
    pub committed_persist_interval: std::time::Duration,
}

impl Default for LogStoreOptions {
    fn default() -> Self {
        Self {
            segment_bytes: 16 * 1024 * 1024,
            max_entry_bytes: 64 * 1024 * 1024,
            committed_persist_interval: std::time::Duration::from_secs(1),
        }
    }
}

/// One entry of the in-memory index.
struct IndexedEntry<C: RaftTypeConfig> {
    log_id: LogId<C::NodeId>,
    location: Location,
    /// The JSON of the entry as stored; decoded again on every read.
    payload: Arc<[u8]>,
}

/// What readers share with the writer.
struct LogIndex<C: RaftTypeConfig> {
    entries: BTreeMap<u64, IndexedEntry<C>>,
    last_purged: Option<LogId<C::NodeId>>,
}

type SharedIndex<C> = Arc<RwLock<LogIndex<C>>>;

/// The Raft log of one node, in one directory. Give it to `openraft::Raft::new` as the log store.
pub struct LogStore<C: RaftTypeConfig> {
    dir: PathBuf,
    options: LogStoreOptions,
    index: SharedIndex<C>,
    segments: Arc<Mutex<SegmentDir>>,
    vote: Option<Vote<C::NodeId>>,
    committed: Option<LogId<C::NodeId>>,
    /// When the committed log id was last written to disk.
    committed_persisted_at: Option<std::time::Instant>,
}

/// A cheap clone-able reader of the log for openraft's replication tasks.
pub struct LogReader<C: RaftTypeConfig> {
    index: SharedIndex<C>,
}

impl<C: RaftTypeConfig> Clone for LogReader<C> {
    fn clone(&self) -> Self {
        Self { index: self.index.clone() }
    }
}

fn decode<T: DeserializeOwned>(path: &Path, offset: u64, payload: &[u8]) -> Result<T, LogStoreError> {
    serde_json::from_slice(payload).map_err(|e| LogStoreError::Corrupt {
        path: path.to_path_buf(),
        offset,
        reason: format!("intact record that does not decode: {e}"),
    })
}

fn read_meta<T: DeserializeOwned>(dir: &Path, name: &str) -> Result<Option<T>, LogStoreError> {
    match segments::read_meta(dir, name, MAX_PAYLOAD_LEN)? {
        Some(payload) => decode(&dir.join(name), 0, &payload),
        None => Ok(None),
    }
}

fn poisoned() -> LogStoreError {
    LogStoreError::Task("a log lock was poisoned by a panicking thread".to_string())
}

/// Runs blocking file I/O off the async workers.
async fn blocking<T, F>(work: F) -> Result<T, LogStoreError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, LogStoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(work).await.map_err(|e| LogStoreError::Task(e.to_string()))?
}

impl<C: RaftTypeConfig> LogStore<C> {
    /// Opens (creating if needed) the log in `dir`, cutting off the torn tail a crash may have left.
    /// Blocking: call it at startup or from `spawn_blocking`.
    pub fn open(dir: impl Into<PathBuf>, options: LogStoreOptions) -> Result<Self, LogStoreError> {
        let dir = dir.into();
        if !dir.is_dir() {
            std::fs::create_dir_all(&dir).map_err(|source| LogStoreError::Io {
                action: "create directory",
                path: dir.clone(),
                source,
            })?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                segments::sync_dir(parent)?;
            }
        }
        segments::remove_stale_tmp_files(&dir)?;
        let vote: Option<Vote<C::NodeId>> = read_meta(&dir, VOTE_FILE)?;
        let committed: Option<LogId<C::NodeId>> = read_meta::<Option<_>>(&dir, COMMITTED_FILE)?.flatten();
        let last_purged: Option<LogId<C::NodeId>> = read_meta(&dir, PURGED_FILE)?;
        let purged_index = last_purged.as_ref().map(|p| p.index);

        let max_payload = options.max_entry_bytes.min(MAX_PAYLOAD_LEN);
        let (mut segment_dir, records) = SegmentDir::open(&dir, options.segment_bytes, max_payload)?;

        let mut entries = BTreeMap::new();
        let mut previous: Option<u64> = None;
        let mut previous_segment = None;
        for record in records {
            let path = segments::segment_path(&dir, record.segment);
            let inconsistent =
                |problem: String| LogStoreError::Inconsistent { path: path.clone(), offset: record.offset, problem };
            let entry: C::Entry = decode(&path, record.offset, &record.payload)?;
            let log_id = entry.get_log_id().clone();
            let index = log_id.index;
            if previous_segment != Some(record.segment) && index != record.segment {
                return Err(inconsistent(format!(
                    "segment's first entry has index {index}, but its name says {}",
                    record.segment
                )));
            }
            // Entries at or below the purge point may sit in partly purged segments; a jump is
            // only allowed out of that purged region.
            if let Some(prev) = previous {
                let prev_purged = purged_index.is_some_and(|p| prev <= p);
                if index != prev + 1 && !prev_purged {
                    return Err(inconsistent(format!("entry {index} follows entry {prev}: hole or overlap")));
                }
            }
            if purged_index.is_none_or_lt(index) {
                if entries.is_empty() {
                    if let Some(p) = purged_index {
                        if index != p + 1 {
                            return Err(inconsistent(format!(
                                "first entry after the purge point {p} is {index}: hole in the log"
                            )));
                        }
                    }
                }
                entries.insert(
                    index,
                    IndexedEntry {
                        log_id,
                        location: Location { segment: record.segment, offset: record.offset },
                        payload: record.payload,
                    },
                );
            }
            previous = Some(index);
            previous_segment = Some(record.segment);
        }
        let last_index = entries.keys().next_back().copied();
        if let Some(p) = purged_index {
            segment_dir.remove_purged(p, last_index)?;
        }
        if let Some(c) = &committed {
            let end = last_index.max(purged_index);
            if end.is_none_or_lt(c.index) {
                return Err(LogStoreError::LostCommitted {
                    committed: c.index,
                    last: end.map_or_else(|| "nothing".to_string(), |i| i.to_string()),
                });
            }
        }
        tracing::info!(
            dir = %dir.display(),
            first = ?entries.keys().next(),
            last = ?last_index,
            purged = ?purged_index,
            "raft log opened"
        );
        Ok(Self {
            dir,
            options,
            index: Arc::new(RwLock::new(LogIndex { entries, last_purged })),
            segments: Arc::new(Mutex::new(segment_dir)),
            vote,
            committed,
            committed_persisted_at: None,
        })
    }

    /// The directory this log lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn reader(&self) -> LogReader<C> {
        LogReader { index: self.index.clone() }
    }

    async fn save_meta<T: Serialize>(&self, name: &'static str, value: &T) -> Result<(), LogStoreError> {
        let payload = serde_json::to_vec(value).map_err(|source| LogStoreError::Encode { what: name, source })?;
        let dir = self.dir.clone();
        blocking(move || segments::replace_meta(&dir, name, &payload)).await
    }

    async fn append_entries<I>(&mut self, entries: I) -> Result<(), LogStoreError>
    where
        I: IntoIterator<Item = C::Entry>,
    {
        let (mut expected, purged_index) = {
            let index = self.index.read().map_err(|_| poisoned())?;
            let purged_index = index.last_purged.as_ref().map(|p| p.index);
            let expected = match (index.entries.keys().next_back(), purged_index) {
                (Some(&last), _) => Some(last + 1),
                (None, Some(purged)) => Some(purged + 1),
                (None, None) => None,
            };
            (expected, purged_index)
        };
        let mut batch = Vec::new();
        for entry in entries {
            let log_id = entry.get_log_id().clone();
            if purged_index.is_some_and(|p| log_id.index <= p) {
                // Already compacted into the snapshot; keeping it would leave a hole.
                tracing::debug!(index = log_id.index, "raft log: skipping append at or below the purge point");
                continue;
            }
            if let Some(want) = expected {
                if log_id.index != want {
                    return Err(LogStoreError::NotContiguous { expected: want, found: log_id.index });
                }
            }
            let payload =
                serde_json::to_vec(&entry).map_err(|source| LogStoreError::Encode { what: "log entry", source })?;
            let max = self.options.max_entry_bytes.min(MAX_PAYLOAD_LEN);
            if payload.len() > max {
                return Err(LogStoreError::EntryTooLarge { index: log_id.index, len: payload.len(), max });
            }
            expected = Some(log_id.index + 1);
            batch.push((log_id, Arc::<[u8]>::from(payload)));
        }
        let Some(first_index) = batch.first().map(|(log_id, _)| log_id.index) else {
            return Ok(());
        };
        let payloads: Vec<Arc<[u8]>> = batch.iter().map(|(_, payload)| payload.clone()).collect();
        let segment_dir = self.segments.clone();
        let locations = blocking(move || {
            let mut segment_dir = segment_dir.lock().map_err(|_| poisoned())?;
            segment_dir.append_batch(first_index, &payloads)
        })
        .await?;
        let mut index = self.index.write().map_err(|_| poisoned())?;
        for ((log_id, payload), location) in batch.into_iter().zip(locations) {
            index.entries.insert(log_id.index, IndexedEntry { log_id, location, payload });
        }
        Ok(())
    }

    async fn truncate_since(&mut self, since: u64) -> Result<(), LogStoreError> {
        let at = {
            let index = self.index.read().map_err(|_| poisoned())?;
            index.entries.range(since..).next().map(|(_, e)| e.location)
        };
        let Some(at) = at else { return Ok(()) };
        let segment_dir = self.segments.clone();
        blocking(move || segment_dir.lock().map_err(|_| poisoned())?.truncate_at(at)).await?;
        let mut index = self.index.write().map_err(|_| poisoned())?;
        index.entries.split_off(&since);
        Ok(())
    }

    async fn purge_upto(&mut self, log_id: LogId<C::NodeId>) -> Result<(), LogStoreError> {
        {
            let index = self.index.read().map_err(|_| poisoned())?;
            if index.last_purged.as_ref().is_some_and(|p| p.index >= log_id.index) {
                return Ok(());
            }
        }
        // Durable purge point first: a crash before the deletions only leaves extra files that
        // the next open removes.
        self.save_meta(PURGED_FILE, &log_id).await?;
        let last_index = {
            let mut index = self.index.write().map_err(|_| poisoned())?;
            let kept = index.entries.split_off(&log_id.index.saturating_add(1));
            index.entries = kept;
            index.last_purged = Some(log_id.clone());
            index.entries.keys().next_back().copied()
        };
        let segment_dir = self.segments.clone();
        let purged = log_id.index;
        blocking(move || segment_dir.lock().map_err(|_| poisoned())?.remove_purged(purged, last_index)).await
    }
}

/// `Option<u64>` is below `index` or absent.
trait BelowOrAbsent {
    fn is_none_or_lt(&self, index: u64) -> bool;
}

impl BelowOrAbsent for Option<u64> {
    fn is_none_or_lt(&self, index: u64) -> bool {
        match self {
            Some(value) => *value < index,
            None => true,
        }
    }
}

fn write_error<NID: openraft::NodeId>(e: LogStoreError) -> StorageError<NID> {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

/// Turns a `RangeBounds` into `[start, end)` without ever building an inverted range.
fn index_range<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => s,
        Bound::Excluded(&s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Bound::Included(e),
        Bound::Excluded(&e) => Bound::Excluded(e),
        Bound::Unbounded => Bound::Unbounded,
    };
    let empty = match end {
        Bound::Included(e) => e < start,
        Bound::Excluded(e) => e <= start,
        Bound::Unbounded => false,
    };
    (!empty).then_some((start, end))
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogReader<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        let Some(bounds) = index_range(&range) else {
            return Ok(Vec::new());
        };
        let payloads: Vec<(u64, Arc<[u8]>)> = {
            let index = self.index.read().map_err(|_| StorageIOError::read_logs(AnyError::new(&poisoned())))?;
            index.entries.range((Bound::Included(bounds.0), bounds.1)).map(|(&i, e)| (i, e.payload.clone())).collect()
        };
        let mut entries = Vec::with_capacity(payloads.len());
        for (i, payload) in payloads {
            let entry = serde_json::from_slice(&payload)
                .map_err(|e| StorageIOError::read_log_at_index(i, AnyError::new(&e)))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

impl<C: RaftTypeConfig> RaftLogReader<C> for LogStore<C> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, StorageError<C::NodeId>> {
        self.reader().try_get_log_entries(range).await
    }
}

impl<C: RaftTypeConfig> RaftLogStorage<C> for LogStore<C> {
    type LogReader = LogReader<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, StorageError<C::NodeId>> {
        let index = self.index.read().map_err(|_| StorageIOError::read_logs(AnyError::new(&poisoned())))?;
        let last_purged_log_id = index.last_purged.clone();
        let last_log_id = match index.entries.values().next_back() {
            Some(last) => Some(last.log_id.clone()),
            None => last_purged_log_id.clone(),
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.reader()
    }

    async fn save_vote(&mut self, vote: &Vote<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.save_meta(VOTE_FILE, vote).await.map_err(|e| StorageIOError::write_vote(AnyError::new(&e)))?;
        self.vote = Some(vote.clone());
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.vote.clone())
    }

    async fn save_committed(&mut self, committed: Option<LogId<C::NodeId>>) -> Result<(), StorageError<C::NodeId>> {
        let due = match self.committed_persisted_at {
            None => true,
            Some(at) => at.elapsed() >= self.options.committed_persist_interval,
        };
        if due {
            self.save_meta(COMMITTED_FILE, &committed).await.map_err(write_error)?;
            self.committed_persisted_at = Some(std::time::Instant::now());
        }
        self.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<C::NodeId>>, StorageError<C::NodeId>> {
        Ok(self.committed.clone())
    }

    /// Writes and `fdatasync`s the entries before returning, and only then reports them flushed.
    async fn append<I>(&mut self, entries: I, callback: LogFlushed<C>) -> Result<(), StorageError<C::NodeId>>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        match self.append_entries(entries).await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(io::Error::other(e.to_string())));
                Err(write_error(e))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.truncate_since(log_id.index).await.map_err(write_error)
    }

    async fn purge(&mut self, log_id: LogId<C::NodeId>) -> Result<(), StorageError<C::NodeId>> {
        self.purge_upto(log_id).await.map_err(write_error)
    }
}
