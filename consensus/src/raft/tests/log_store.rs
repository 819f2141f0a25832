//! The on-disk log against openraft's storage conformance suite, across reopen, and after crashes
//! that cut or garble the newest segment.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use openraft::storage::{RaftLogStorage, RaftLogStorageExt};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{AnyError, Entry, EntryPayload, RaftLogReader, StorageError, StorageIOError, Vote};
use proptest::prelude::*;
use tempfile::TempDir;

use crate::raft::test_support::{MemStateMachine, TestConfig, TestWrite};
use crate::raft::{LogStore, LogStoreError, LogStoreOptions};

struct Builder {
    options: LogStoreOptions,
}

impl StoreBuilder<TestConfig, LogStore<TestConfig>, MemStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<TestConfig>, MemStateMachine), StorageError<u64>> {
        let dir = tempfile::tempdir().map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        let store = LogStore::open(dir.path(), self.options.clone())
            .map_err(|e| StorageIOError::write_logs(AnyError::new(&e)))?;
        Ok((dir, store, MemStateMachine::default()))
    }
}

fn tiny_segments() -> LogStoreOptions {
    LogStoreOptions { segment_bytes: 200, ..LogStoreOptions::default() }
}

#[test]
fn passes_openraft_storage_suite() {
    Suite::test_all(Builder { options: LogStoreOptions::default() }).unwrap();
}

#[test]
fn passes_openraft_storage_suite_with_a_segment_per_few_entries() {
    Suite::test_all(Builder { options: tiny_segments() }).unwrap();
}

fn entry(term: u64, index: u64, value_len: usize) -> Entry<TestConfig> {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(TestWrite { key: format!("key{index}"), value: "v".repeat(value_len) }),
    }
}

fn open(dir: &Path) -> LogStore<TestConfig> {
    LogStore::open(dir, tiny_segments()).unwrap()
}

async fn read_all(store: &mut LogStore<TestConfig>) -> Vec<String> {
    let entries = store.try_get_log_entries(..).await.unwrap();
    entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect()
}

fn encoded(entries: &[Entry<TestConfig>]) -> Vec<String> {
    entries.iter().map(|e| serde_json::to_string(e).unwrap()).collect()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn vote_committed_purge_and_truncate_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let written: Vec<_> = (1..=20).map(|i| entry(2, i, 10)).collect();
    {
        let mut store = open(dir.path());
        for e in &written {
            store.blocking_append([e.clone()]).await.unwrap();
        }
        store.save_vote(&Vote::new_committed(2, 1)).await.unwrap();
        store.save_committed(Some(log_id(2, 1, 12))).await.unwrap();
        let before = segment_files(dir.path()).len();
        store.purge(log_id(2, 1, 5)).await.unwrap();
        assert!(segment_files(dir.path()).len() < before, "purge deletes whole segments");
        store.truncate(log_id(2, 1, 18)).await.unwrap();
    }
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(Vote::new_committed(2, 1)));
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(2, 1, 12)));
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(2, 1, 5)));
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 17)));
    assert_eq!(read_all(&mut store).await, encoded(&written[5..17]));

    // The log goes on where it was cut, across another reopen.
    store.blocking_append([entry(3, 18, 3), entry(3, 19, 3)]).await.unwrap();
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(3, 1, 19)));
    assert_eq!(read_all(&mut store).await.len(), 14);
}

#[tokio::test]
async fn purge_past_the_end_empties_the_log_and_appends_resume_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    store.blocking_append((1..=5).map(|i| entry(1, i, 50))).await.unwrap();
    store.purge(log_id(1, 1, 9)).await.unwrap();
    assert!(segment_files(dir.path()).is_empty());
    assert!(store.blocking_append([entry(1, 12, 1)]).await.is_err(), "a hole is refused");
    // Entries already compacted away are skipped rather than stored below the purge point.
    store.blocking_append([entry(1, 7, 1)]).await.unwrap();
    assert_eq!(store.get_log_state().await.unwrap().last_log_id, Some(log_id(1, 1, 9)));
    store.blocking_append([entry(1, 10, 1)]).await.unwrap();
    drop(store);
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 9)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 10)));
    #[allow(clippy::reversed_empty_ranges)]
    let inverted = store.try_get_log_entries(8..3).await.unwrap();
    assert!(inverted.is_empty());
}

/// Writes `sizes.len()` entries in batches of `batch`, returning them.
async fn write_log(dir: &Path, sizes: &[usize], batch: usize) -> Vec<Entry<TestConfig>> {
    let mut store = open(dir);
    let written: Vec<_> = sizes.iter().enumerate().map(|(i, &n)| entry(1, i as u64 + 1, n)).collect();
    for chunk in written.chunks(batch) {
        store.blocking_append(chunk.to_vec()).await.unwrap();
    }
    written
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// A crash can leave the newest segment cut at any byte. Reopening keeps every entry of the
    /// older segments and every record wholly before the cut, never anything garbled, and the
    /// log keeps working.
    #[test]
    fn a_cut_anywhere_in_the_newest_segment_reopens_as_a_prefix(
        sizes in prop::collection::vec(1usize..60, 1..30),
        batch in 1usize..4,
        cut_fraction in 0.0f64..=1.0,
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let written = write_log(dir.path(), &sizes, batch).await;
            let newest = segment_files(dir.path()).pop().unwrap();
            let newest_first: u64 = newest.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            let len = fs::metadata(&newest).unwrap().len();
            let cut = (len as f64 * cut_fraction) as u64;
            OpenOptions::new().write(true).open(&newest).unwrap().set_len(cut).unwrap();

            let mut store = open(dir.path());
            let got = read_all(&mut store).await;
            let all = encoded(&written);
            prop_assert_eq!(&got[..], &all[..got.len()], "reopened log is a prefix");
            prop_assert!(got.len() as u64 >= newest_first - 1, "older segments are intact");
            if cut == len {
                prop_assert_eq!(got.len(), all.len());
            }
            let next = got.len() as u64 + 1;
            store.blocking_append([entry(2, next, 5)]).await.unwrap();
            drop(store);
            let mut store = open(dir.path());
            prop_assert_eq!(read_all(&mut store).await.len() as u64, next);
            Ok(())
        })?;
    }

    /// Half-written garbage after the last durable record is cut off on reopen.
    #[test]
    fn garbage_after_the_last_record_is_cut_off(
        sizes in prop::collection::vec(1usize..60, 1..10),
        garbage in prop::collection::vec(any::<u8>(), 1..300),
    ) {
        runtime().block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let written = write_log(dir.path(), &sizes, 2).await;
            let newest = segment_files(dir.path()).pop().unwrap();
            OpenOptions::new().append(true).open(&newest).unwrap().write_all(&garbage).unwrap();
            let mut store = open(dir.path());
            prop_assert_eq!(read_all(&mut store).await, encoded(&written));
            Ok(())
        })?;
    }
}

#[tokio::test]
async fn a_zero_filled_tail_is_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let written = write_log(dir.path(), &[10, 20, 30], 1).await;
    let newest = segment_files(dir.path()).pop().unwrap();
    OpenOptions::new().append(true).open(&newest).unwrap().write_all(&[0u8; 4096]).unwrap();
    let mut store = open(dir.path());
    assert_eq!(read_all(&mut store).await, encoded(&written));
}

fn flip_byte(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 0x5a;
    fs::write(path, bytes).unwrap();
}

#[tokio::test]
async fn damage_in_an_older_segment_is_an_error_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    write_log(dir.path(), &[40; 12], 1).await;
    let files = segment_files(dir.path());
    assert!(files.len() > 2);
    flip_byte(&files[0], 20);
    let err = LogStore::<TestConfig>::open(dir.path(), tiny_segments()).err().unwrap();
    assert!(matches!(err, LogStoreError::Corrupt { offset: 0, .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("00000000000000000001.seg") && message.contains("offset 0"), "{message}");
}

#[tokio::test]
async fn damage_before_a_later_batch_of_the_newest_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogStoreOptions::default();
    {
        let mut store = LogStore::<TestConfig>::open(dir.path(), options.clone()).unwrap();
        for i in 1..=3 {
            store.blocking_append([entry(1, i, 10)]).await.unwrap();
        }
    }
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    flip_byte(&files[0], 12);
    let err = LogStore::<TestConfig>::open(dir.path(), options).err().unwrap();
    assert!(matches!(err, LogStoreError::Corrupt { offset: 0, .. }), "{err}");
}

#[tokio::test]
async fn losing_committed_entries_is_an_error_not_a_silent_cut() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut store = open(dir.path());
        store.blocking_append([entry(1, 1, 10), entry(1, 2, 10)]).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
    }
    // Simulates a disk that lost the synced tail.
    let newest = segment_files(dir.path()).pop().unwrap();
    let len = fs::metadata(&newest).unwrap().len();
    OpenOptions::new().write(true).open(&newest).unwrap().set_len(len - 3).unwrap();
    let err = LogStore::<TestConfig>::open(dir.path(), tiny_segments()).err().unwrap();
    assert!(matches!(err, LogStoreError::LostCommitted { committed: 2, .. }), "{err}");
}

/// The committed log id reaches the disk at most once per interval: after a crash the one read
/// back may be older than the last saved, never newer, and never beyond the durable log.
#[tokio::test]
async fn committed_is_persisted_at_most_once_per_interval_and_never_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let options = LogStoreOptions {
        committed_persist_interval: std::time::Duration::from_secs(3600),
        ..LogStoreOptions::default()
    };
    {
        let mut store = LogStore::<TestConfig>::open(dir.path(), options.clone()).unwrap();
        for i in 1..=5 {
            store.blocking_append([entry(1, i, 10)]).await.unwrap();
        }
        store.save_committed(Some(log_id(1, 1, 2))).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 5))).await.unwrap();
        assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 5)));
    }
    let mut store = LogStore::<TestConfig>::open(dir.path(), options).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 2)));
    drop(store);
    let every_time =
        LogStoreOptions { committed_persist_interval: std::time::Duration::ZERO, ..LogStoreOptions::default() };
    {
        let mut store = LogStore::<TestConfig>::open(dir.path(), every_time.clone()).unwrap();
        store.save_committed(Some(log_id(1, 1, 3))).await.unwrap();
        store.save_committed(Some(log_id(1, 1, 4))).await.unwrap();
    }
    let mut store = LogStore::<TestConfig>::open(dir.path(), every_time).unwrap();
    assert_eq!(store.read_committed().await.unwrap(), Some(log_id(1, 1, 4)));
}
