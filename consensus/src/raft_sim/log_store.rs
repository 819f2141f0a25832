//! The simulation's Raft log store: the state `LogStore` makes durable (vote, committed id, purge
//! point, entries), kept in memory that outlives a simulated crash. `append` stores the entries
//! before reporting them flushed, so a crash keeps exactly what was acknowledged as fsync'd, as
//! the on-disk store does; what a crash loses is everything else (the applied key space, the lease
//! clock, in-flight RPCs), and the restarted node rebuilds it from its snapshot and this log.

use super::super::raft_member::TypeConfig;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, Vote};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};

/// What survives a crash of one node.
#[derive(Default)]
pub struct DurableLog {
    vote: Option<Vote<u64>>,
    committed: Option<LogId<u64>>,
    last_purged: Option<LogId<u64>>,
    entries: BTreeMap<u64, Entry<TypeConfig>>,
}

/// One node's log; clones share the durable state (a restart opens a new clone).
#[derive(Clone, Default)]
pub struct MemLog {
    durable: Arc<Mutex<DurableLog>>,
}

impl MemLog {
    fn lock(&self) -> MutexGuard<'_, DurableLog> {
        self.durable.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The index of the last entry held (or purged): for the trace.
    pub fn last_index(&self) -> Option<u64> {
        let log = self.lock();
        log.entries.keys().next_back().copied().or(log.last_purged.map(|p| p.index))
    }
}

impl RaftLogReader<TypeConfig> for MemLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<u64>> {
        Ok(self.lock().entries.range(range).map(|(_, e)| e.clone()).collect())
    }
}

impl RaftLogStorage<TypeConfig> for MemLog {
    type LogReader = MemLog;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<u64>> {
        let log = self.lock();
        let last_log_id = log.entries.values().next_back().map(|e| e.log_id).or(log.last_purged);
        Ok(LogState { last_purged_log_id: log.last_purged, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<u64>) -> Result<(), StorageError<u64>> {
        self.lock().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<u64>>, StorageError<u64>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<u64>>) -> Result<(), StorageError<u64>> {
        self.lock().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<u64>>, StorageError<u64>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        {
            let mut log = self.lock();
            for entry in entries {
                log.entries.insert(entry.log_id.index, entry);
            }
        }
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        self.lock().entries.split_off(&log_id.index);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<u64>) -> Result<(), StorageError<u64>> {
        let mut log = self.lock();
        if log.last_purged.is_some_and(|p| p.index >= log_id.index) {
            return Ok(());
        }
        log.entries = log.entries.split_off(&(log_id.index + 1));
        log.last_purged = Some(log_id);
        Ok(())
    }
}
