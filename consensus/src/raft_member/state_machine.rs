//! openraft's state machine over the pure `Keyspace`: applies committed commands, tells the
//! `LeaseClock` which leases exist and the `WatchHub` what changed, and builds/installs snapshots
//! (the `KeyspaceSnapshot` JSON), kept in one fsync'd file in the member's data directory so a
//! restart resumes from it. Owns that file; must not read a clock to decide anything (it only
//! passes "now" to the lease clock, which arms deadlines solely on the leader).

use super::types::{MemberNode, TypeConfig};
use super::watch_hub::WatchHub;
use crate::keyspace::{Applied, Keyspace, KeyspaceSnapshot, LeaseClock};
use openraft::storage::RaftStateMachine;
use openraft::{
    AnyError, Entry, EntryPayload, ErrorSubject, ErrorVerb, LogId, OptionalSend, RaftSnapshotBuilder, Snapshot,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use tokio::time::Instant;

const SNAPSHOT_FILE: &str = "snapshot.json";

/// The last snapshot's metadata and data, as served to followers.
type CurrentSnapshot = Option<(SnapshotMeta<u64, MemberNode>, Vec<u8>)>;

/// The applied state every part of a member reads.
pub struct AppliedState {
    pub keyspace: Keyspace,
    pub last_applied: Option<LogId<u64>>,
    pub membership: StoredMembership<u64, MemberNode>,
}

/// What the state machine shares with the lease task and the client API.
pub struct Shared {
    pub state: RwLock<AppliedState>,
    pub clock: Mutex<LeaseClock<Instant>>,
    pub hub: WatchHub,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: RwLock::new(AppliedState {
                keyspace: Keyspace::new(),
                last_applied: None,
                membership: StoredMembership::default(),
            }),
            clock: Mutex::new(LeaseClock::new()),
            hub: WatchHub::new(),
        })
    }

    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, AppliedState> {
        // Poisoned only if an apply panicked; nothing else can be done than to go on reading.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, AppliedState> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn clock(&self) -> std::sync::MutexGuard<'_, LeaseClock<Instant>> {
        self.clock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the key space (restored or installed snapshot) and re-syncs clock and watchers.
    fn replace(&self, keyspace: Keyspace, meta: &SnapshotMeta<u64, MemberNode>) {
        let revision = keyspace.revision();
        let leases: Vec<_> = keyspace.leases().collect();
        {
            let mut state = self.write();
            state.keyspace = keyspace;
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
        }
        self.clock().track_all(leases, Instant::now());
        self.hub.reset(revision);
    }
}

/// The snapshot file: openraft's metadata and the key space.
#[derive(Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta<u64, MemberNode>,
    keyspace: KeyspaceSnapshot,
}

/// The built-in DCS's `RaftStateMachine`; clones share state.
#[derive(Clone)]
pub struct KeyspaceStateMachine {
    shared: Arc<Shared>,
    dir: PathBuf,
    current: Arc<Mutex<CurrentSnapshot>>,
}

fn io_error(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError<u64> {
    StorageIOError::new(subject, verb, AnyError::error(e.to_string())).into()
}

/// Writes `bytes` to `dir/name` atomically and durably: temporary file, fsync, rename, fsync dir.
fn write_durably(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()
}

impl KeyspaceStateMachine {
    /// Opens the state machine of the member whose snapshot lives in `dir`, restoring the last
    /// snapshot if there is one. Blocking (reads the file): call it at startup.
    pub fn open(dir: &Path, shared: Arc<Shared>) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut current = None;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: SnapshotFile = serde_json::from_slice(&bytes).map_err(|e| {
                    format!("raft snapshot {} is unreadable: {e}; move it aside and re-add this member", path.display())
                })?;
                let keyspace = Keyspace::restore(file.keyspace.clone()).map_err(|e| {
                    format!(
                        "raft snapshot {} is inconsistent: {e}; move it aside and re-add this member",
                        path.display()
                    )
                })?;
                shared.replace(keyspace, &file.meta);
                let data = serde_json::to_vec(&file.keyspace).map_err(|e| e.to_string())?;
                current = Some((file.meta, data));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read raft snapshot {}: {e}", path.display())),
        }
        Ok(KeyspaceStateMachine { shared, dir: dir.to_path_buf(), current: Arc::new(Mutex::new(current)) })
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    async fn persist(
        &self,
        meta: &SnapshotMeta<u64, MemberNode>,
        keyspace: KeyspaceSnapshot,
    ) -> Result<(), StorageError<u64>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let file = SnapshotFile { meta: meta.clone(), keyspace };
        let bytes = serde_json::to_vec(&file).map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?;
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || write_durably(&dir, SNAPSHOT_FILE, &bytes))
            .await
            .map_err(|e| io_error(subject.clone(), ErrorVerb::Write, e))?
            .map_err(|e| io_error(subject, ErrorVerb::Write, e))
    }

    fn set_current(&self, meta: SnapshotMeta<u64, MemberNode>, data: Vec<u8>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta, data));
    }
}

impl RaftSnapshotBuilder<TypeConfig> for KeyspaceStateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<u64>> {
        let (keyspace, last_applied, membership) = {
            let state = self.shared.read();
            (state.keyspace.snapshot(), state.last_applied, state.membership.clone())
        };
        let snapshot_id = match last_applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.leader_id.node_id, id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta { last_log_id: last_applied, last_membership: membership, snapshot_id };
        let data = serde_json::to_vec(&keyspace)
            .map_err(|e| io_error(ErrorSubject::Snapshot(Some(meta.signature())), ErrorVerb::Write, e))?;
        self.persist(&meta, keyspace).await?;
        self.set_current(meta.clone(), data.clone());
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for KeyspaceStateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<u64>>, StoredMembership<u64, MemberNode>), StorageError<u64>> {
        let state = self.shared.read();
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<u64>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        for entry in entries {
            let reply = {
                let mut state = self.shared.write();
                state.last_applied = Some(entry.log_id);
                match entry.payload {
                    EntryPayload::Blank => None,
                    EntryPayload::Normal(command) => Some(state.keyspace.apply(&command)),
                    EntryPayload::Membership(membership) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), membership);
                        None
                    }
                }
            };
            let reply = reply.unwrap_or_else(|| {
                let revision = self.shared.read().keyspace.revision();
                Applied {
                    revision,
                    outcome: Ok(crate::keyspace::Outcome::Txn(empty_txn(revision))),
                    events: vec![],
                    lease_changes: vec![],
                }
            });
            if !reply.lease_changes.is_empty() {
                self.shared.clock().observe(&reply.lease_changes, Instant::now());
            }
            if !reply.events.is_empty() {
                self.shared.hub.publish(reply.events.clone(), reply.revision);
            }
            replies.push(reply);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<u64>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<u64, MemberNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<u64>> {
        let subject = ErrorSubject::Snapshot(Some(meta.signature()));
        let data = snapshot.into_inner();
        let parsed: KeyspaceSnapshot =
            serde_json::from_slice(&data).map_err(|e| io_error(subject.clone(), ErrorVerb::Read, e))?;
        let keyspace = Keyspace::restore(parsed.clone()).map_err(|e| io_error(subject, ErrorVerb::Read, e))?;
        self.persist(meta, parsed).await?;
        self.shared.replace(keyspace, meta);
        self.set_current(meta.clone(), data);
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<u64>> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        Ok(current
            .as_ref()
            .map(|(meta, data)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(data.clone())) }))
    }
}

/// The reply to a log entry that is not a command (blank or membership): nothing changed.
fn empty_txn(revision: crate::kv::Revision) -> crate::kv::TxnResponse {
    crate::kv::TxnResponse { succeeded: true, revision, results: vec![] }
}
