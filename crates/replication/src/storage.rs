//! Raft log storage on raft-engine: one engine for every Raft group on a node.
//!
//! raft-rs reads a group's log through [`GroupStorage`] (its `raft::Storage`). Writes go the
//! other way, batched: the multi-raft driver stages every group's entries, hard state and
//! snapshots of one round into a single [`LogBatch`] ([`GroupStorage::stage`]), writes it once
//! with fsync ([`LogEngine::write`]), and only then publishes what it wrote
//! ([`GroupStorage::commit`]). So a reader never sees state that is not on disk, and one fsync
//! covers every group of the round.
//!
//! Per group, besides entries, three records are kept: the hard state, the conf state, and the
//! truncation point (index and term of the last entry compacted away or covered by a snapshot,
//! which raft needs to match the entry before the first one kept).

use parking_lot::RwLock;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, Config, Engine, LogBatch, MessageExt};
use std::path::Path;
use std::sync::Arc;

const KEY_HARD_STATE: &[u8] = b"hard_state";
const KEY_CONF_STATE: &[u8] = b"conf_state";
const KEY_TRUNCATED: &[u8] = b"truncated";
/// The newest snapshot (metadata and state-machine data) this group has taken or installed.
const KEY_SNAPSHOT: &[u8] = b"snapshot";
/// The addresses of members added by conf changes (see `members.rs`).
const KEY_MEMBERS: &[u8] = b"members";
/// The pseudo-group whose records name the groups removed from this node.
const TOMBSTONES: u64 = u64::MAX;

#[derive(Debug, thiserror::Error)]
pub enum StorageFault {
    #[error("raft-engine: {0}")]
    Engine(#[from] raft_engine::Error),
    #[error("protobuf: {0}")]
    Codec(#[from] protobuf::ProtobufError),
    /// An append that would leave a hole or rewrite compacted entries: a driver bug, refused
    /// here rather than left to raft-engine's panic.
    #[error("group {group}: cannot append at {index}: log holds {first}..={last}")]
    BadAppend {
        group: u64,
        index: u64,
        first: u64,
        last: u64,
    },
}

/// Teaches raft-engine how to index raft-rs entries.
pub struct RaftEntries;

impl MessageExt for RaftEntries {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// The node's one log engine.
///
/// One engine per thread that reads entries: raft-engine caches decoded blocks in a
/// thread-local keyed by file position, and two engines read on one thread can be handed each
/// other's blocks (seen as a panic in `read_entry_from_file`). A node has one engine and drives
/// it from its own thread; in-process test clusters give every node its own thread.
#[derive(Clone)]
pub struct LogEngine {
    engine: Arc<Engine>,
    /// Writes, fsyncs and their latency, for INFO and `/metrics`.
    pub stats: Arc<WriteStats>,
    dir: std::path::PathBuf,
}

/// Bytes of the files under `dir` (a log's folder) now.
pub fn disk_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Upper bounds (µs) of the fsync latency histogram's buckets: powers of two up to 16.8 s.
pub const SYNC_BUCKETS: usize = 25;

/// What the log's writes cost: counted on the driver's thread, read anywhere.
#[derive(Default)]
pub struct WriteStats {
    /// Batches written, and those of them written with an fsync.
    pub writes: std::sync::atomic::AtomicU64,
    pub synced: std::sync::atomic::AtomicU64,
    /// Bytes written to the log.
    pub bytes: std::sync::atomic::AtomicU64,
    /// Total microseconds of the synced writes, and their count per power-of-two bucket
    /// (`1 << i` µs; the last bucket counts everything slower).
    pub sync_usec: std::sync::atomic::AtomicU64,
    pub sync_buckets: [std::sync::atomic::AtomicU64; SYNC_BUCKETS + 1],
}

impl LogEngine {
    /// Opens (or creates) the log in `dir`. A torn tail from a crash is dropped on recovery
    /// (raft-engine's tolerate-tail-corruption mode), never served.
    pub fn open(dir: &Path) -> Result<LogEngine, StorageFault> {
        Self::open_with(dir, None)
    }

    /// Like [`LogEngine::open`], with log files of about `file_bytes` each (raft-engine's
    /// default: 128 MB). Files are the unit [`LogEngine::purge_expired_files`] deletes.
    pub fn open_with(dir: &Path, file_bytes: Option<u64>) -> Result<LogEngine, StorageFault> {
        let mut config = Config {
            dir: dir.display().to_string(),
            ..Config::default()
        };
        if let Some(bytes) = file_bytes {
            config.target_file_size = raft_engine::ReadableSize(bytes);
            config.purge_threshold = raft_engine::ReadableSize(bytes.saturating_mul(4));
        }
        Ok(LogEngine {
            engine: Arc::new(Engine::open(config)?),
            stats: Arc::default(),
            dir: dir.to_path_buf(),
        })
    }

    /// The folder the log is in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a round's batch with one fsync. An error here means the disk failed: the caller
    /// must stop accepting writes (fail-stop), since what raft believes persisted may not be.
    pub fn write(&self, batch: &mut LogBatch) -> Result<usize, StorageFault> {
        self.write_with(batch, true)
    }

    /// Writes a batch, with an fsync only when `sync`. Unsynced writes are for what raft can
    /// afford to lose in a crash (a commit index moving forward).
    pub fn write_with(&self, batch: &mut LogBatch, sync: bool) -> Result<usize, StorageFault> {
        use std::sync::atomic::Ordering::Relaxed;
        let started = std::time::Instant::now();
        let bytes = self.engine.write(batch, sync)?;
        let s = &self.stats;
        s.writes.fetch_add(1, Relaxed);
        s.bytes.fetch_add(bytes as u64, Relaxed);
        if sync {
            let us = started.elapsed().as_micros() as u64;
            s.synced.fetch_add(1, Relaxed);
            s.sync_usec.fetch_add(us, Relaxed);
            let bucket = (0..SYNC_BUCKETS)
                .find(|&i| us <= 1 << i)
                .unwrap_or(SYNC_BUCKETS);
            s.sync_buckets[bucket].fetch_add(1, Relaxed);
        }
        Ok(bytes)
    }

    /// Groups with anything stored (the tombstone record left out).
    pub fn groups(&self) -> Vec<u64> {
        let mut groups = self.engine.raft_groups();
        groups.retain(|&g| g != TOMBSTONES);
        groups
    }

    /// Deletes everything stored for group `id` and leaves a tombstone, in one synced write:
    /// the group was removed from this node, which must never bootstrap it again from its
    /// initial voters (it could then vote, and count towards a quorum, with none of the log
    /// it had acknowledged). It may still join the group again later as a new member.
    pub fn remove_group(&self, id: u64) -> Result<(), StorageFault> {
        let mut batch = LogBatch::default();
        batch.add_command(id, Command::Clean);
        batch.put(TOMBSTONES, id.to_le_bytes().to_vec(), vec![1])?;
        self.engine.write(&mut batch, true)?;
        Ok(())
    }

    /// Whether group `id` was removed from this node (see [`LogEngine::remove_group`]).
    pub fn was_removed(&self, id: u64) -> bool {
        self.engine.get(TOMBSTONES, &id.to_le_bytes()).is_some()
    }

    /// Deletes log files that hold only compacted entries, and names the groups whose old
    /// entries keep other files alive (they should snapshot and compact). Call periodically:
    /// without it the log directory only grows.
    pub fn purge_expired_files(&self) -> Result<Vec<u64>, StorageFault> {
        Ok(self.engine.purge_expired_files()?)
    }

    /// The storage of one group, loaded from what is on disk.
    pub fn group(&self, id: u64) -> Result<GroupStorage, StorageFault> {
        let e = &self.engine;
        let hard_state = e
            .get_message::<HardState>(id, KEY_HARD_STATE)?
            .unwrap_or_default();
        let conf_state = e
            .get_message::<ConfState>(id, KEY_CONF_STATE)?
            .unwrap_or_default();
        let truncated = e
            .get_message::<SnapshotMetadata>(id, KEY_TRUNCATED)?
            .unwrap_or_default();
        let snapshot = e.get_message::<Snapshot>(id, KEY_SNAPSHOT)?;
        let last_index = e.last_index(id).unwrap_or(0).max(truncated.index);
        let core = Core {
            hard_state,
            conf_state,
            truncated_index: truncated.index,
            truncated_term: truncated.term,
            last_index,
            snapshot,
            snapshot_wanted: false,
        };
        Ok(GroupStorage {
            id,
            engine: self.engine.clone(),
            core: Arc::new(RwLock::new(core)),
        })
    }
}

struct Core {
    hard_state: HardState,
    conf_state: ConfState,
    /// The last index compacted away or covered by a snapshot, and its term.
    truncated_index: u64,
    truncated_term: u64,
    last_index: u64,
    /// The newest state-machine snapshot this node can send to a lagging peer.
    snapshot: Option<Snapshot>,
    /// A peer needed a snapshot that `snapshot` cannot be: the driver takes a fresh one.
    snapshot_wanted: bool,
}

impl Core {
    fn first_index(&self) -> u64 {
        self.truncated_index + 1
    }
}

/// What one group staged into a batch, to publish once the batch is on disk.
#[derive(Default, Debug)]
#[must_use = "commit it after the batch is written, or readers never see it"]
pub struct Staged {
    last_index: Option<u64>,
    hard_state: Option<HardState>,
    conf_state: Option<ConfState>,
    truncated: Option<(u64, u64)>,
    snapshot: Option<Snapshot>,
    /// Entries, a snapshot, or a new term or vote: raft must not act on these before they are
    /// on disk. A hard state that only moves the commit index needs no fsync.
    durable: bool,
}

impl Staged {
    /// Whether the batch this was staged into must be fsynced.
    pub fn needs_sync(&self) -> bool {
        self.durable
    }
}

/// One Raft group's log, shared between raft-rs (reads) and the driver (staged writes).
#[derive(Clone)]
pub struct GroupStorage {
    id: u64,
    engine: Arc<Engine>,
    core: Arc<RwLock<Core>>,
}

impl GroupStorage {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether a peer asked for a snapshot newer than the one there is (and forgets it).
    pub fn take_snapshot_wanted(&self) -> bool {
        std::mem::take(&mut self.core.write().snapshot_wanted)
    }

    /// Stages a Ready's persistent parts: an incoming snapshot (which replaces the whole log),
    /// new entries (which may overwrite a conflicting tail), and the hard state.
    pub fn stage(
        &self,
        batch: &mut LogBatch,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<Staged, StorageFault> {
        let core = self.core.read();
        let mut staged = Staged::default();
        let (mut first, mut last) = (core.first_index(), core.last_index);
        if let Some(snap) = snapshot {
            let meta = snap.get_metadata();
            batch.add_command(self.id, Command::Clean);
            let truncated = SnapshotMetadata {
                index: meta.index,
                term: meta.term,
                ..Default::default()
            };
            batch.put_message(self.id, KEY_TRUNCATED.to_vec(), &truncated)?;
            batch.put_message(self.id, KEY_CONF_STATE.to_vec(), meta.get_conf_state())?;
            batch.put_message(self.id, KEY_SNAPSHOT.to_vec(), snap)?;
            staged.snapshot = Some(snap.clone());
            staged.truncated = Some((meta.index, meta.term));
            staged.conf_state = Some(meta.get_conf_state().clone());
            staged.last_index = Some(meta.index);
            first = meta.index + 1;
            last = meta.index;
            staged.durable = true;
        }
        if let Some(head) = entries.first() {
            if head.index < first || head.index > last + 1 {
                return Err(StorageFault::BadAppend {
                    group: self.id,
                    index: head.index,
                    first,
                    last,
                });
            }
            debug_assert!(
                entries.windows(2).all(|w| w[1].index == w[0].index + 1),
                "entries are contiguous"
            );
            batch.add_entries::<RaftEntries>(self.id, entries)?;
            staged.last_index = Some(entries.last().expect("non-empty").index);
            staged.durable = true;
        }
        if let Some(hs) = hard_state {
            staged.durable |= hs.term != core.hard_state.term || hs.vote != core.hard_state.vote;
            batch.put_message(self.id, KEY_HARD_STATE.to_vec(), hs)?;
            staged.hard_state = Some(hs.clone());
        }
        Ok(staged)
    }

    /// Stages a membership change that was applied.
    pub fn stage_conf_state(
        &self,
        batch: &mut LogBatch,
        cs: &ConfState,
        staged: &mut Staged,
    ) -> Result<(), StorageFault> {
        batch.put_message(self.id, KEY_CONF_STATE.to_vec(), cs)?;
        staged.conf_state = Some(cs.clone());
        Ok(())
    }

    /// The member record last staged (see `members.rs`), if any.
    pub fn load_members(&self) -> Option<Vec<u8>> {
        self.engine.get(self.id, KEY_MEMBERS)
    }

    /// Stages a new member record; it is durable with the batch.
    pub fn stage_members(&self, batch: &mut LogBatch, record: Vec<u8>) -> Result<(), StorageFault> {
        batch.put(self.id, KEY_MEMBERS.to_vec(), record)?;
        Ok(())
    }

    /// Publishes what [`GroupStorage::stage`] wrote, after the batch is on disk.
    pub fn commit(&self, staged: Staged) {
        let mut core = self.core.write();
        if let Some((index, term)) = staged.truncated {
            core.truncated_index = index;
            core.truncated_term = term;
        }
        if let Some(last) = staged.last_index {
            core.last_index = last;
        }
        if let Some(hs) = staged.hard_state {
            core.hard_state = hs;
        }
        if let Some(cs) = staged.conf_state {
            core.conf_state = cs;
        }
        if let Some(snap) = staged.snapshot {
            core.snapshot = Some(snap);
        }
        debug_assert!(
            core.truncated_index <= core.last_index,
            "truncated {} > last {}",
            core.truncated_index,
            core.last_index
        );
    }

    /// Makes a snapshot taken by this node durable and offers it to lagging peers. The log up to
    /// its index may be compacted afterwards, never before.
    pub fn save_snapshot(
        &self,
        snapshot: Snapshot,
        engine: &LogEngine,
    ) -> Result<(), StorageFault> {
        let mut batch = LogBatch::default();
        batch.put_message(self.id, KEY_SNAPSHOT.to_vec(), &snapshot)?;
        engine.write(&mut batch)?;
        self.core.write().snapshot = Some(snapshot);
        Ok(())
    }

    /// The newest durable snapshot, which a restarting node restores before replaying the log.
    pub fn latest_snapshot(&self) -> Option<Snapshot> {
        self.core.read().snapshot.clone()
    }

    /// Drops log entries up to and including `index` (which must be applied), remembering its
    /// term. The truncation point is made durable before any entry is dropped.
    pub fn compact(&self, index: u64, engine: &LogEngine) -> Result<(), StorageFault> {
        let (current, last) = {
            let core = self.core.read();
            (core.truncated_index, core.last_index)
        };
        if index <= current || index > last {
            return Ok(());
        }
        let term = raft::Storage::term(self, index).map_err(|_| StorageFault::BadAppend {
            group: self.id,
            index,
            first: current + 1,
            last,
        })?;
        let mut batch = LogBatch::default();
        let meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        batch.put_message(self.id, KEY_TRUNCATED.to_vec(), &meta)?;
        engine.write(&mut batch)?;
        {
            let mut core = self.core.write();
            core.truncated_index = index;
            core.truncated_term = term;
        }
        self.engine.compact_to(self.id, index + 1);
        Ok(())
    }
}

fn unavailable() -> raft::Error {
    raft::Error::Store(StorageError::Unavailable)
}

impl raft::Storage for GroupStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        let core = self.core.read();
        Ok(RaftState::new(
            core.hard_state.clone(),
            core.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let core = self.core.read();
        if low < core.first_index() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > core.last_index + 1 || low > high {
            return Err(unavailable());
        }
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        if low == high {
            return Ok(out);
        }
        let max_size = max_size.into();
        self.engine
            .fetch_entries_to::<RaftEntries>(
                self.id,
                low,
                high,
                max_size.map(|m| m as usize),
                &mut out,
            )
            .map_err(|e| raft::Error::Store(StorageError::Other(Box::new(e))))?;
        // raft's rule: at least one entry, then as many as fit in max_size.
        raft::util::limit_size(&mut out, max_size);
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let core = self.core.read();
        if idx == core.truncated_index {
            return Ok(core.truncated_term);
        }
        if idx < core.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > core.last_index {
            return Err(unavailable());
        }
        match self.engine.get_entry::<RaftEntries>(self.id, idx) {
            Ok(Some(e)) => Ok(e.term),
            Ok(None) => Err(unavailable()),
            Err(e) => Err(raft::Error::Store(StorageError::Other(Box::new(e)))),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.core.read().last_index)
    }

    /// The newest snapshot, unless it is older than `request_index` or its configuration
    /// does not name `to` (a member added since, which would refuse it): then raft is told to
    /// ask again later, and the driver takes a fresh snapshot (see [`Self::take_snapshot_wanted`]),
    /// whatever its usual schedule. Without that, a member added to an idle group would wait
    /// for a snapshot that never comes.
    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut core = self.core.write();
        if let Some(s) = &core.snapshot {
            let cs = s.get_metadata().get_conf_state();
            let names = |ids: &[u64]| ids.contains(&to);
            let knows_to = names(&cs.voters)
                || names(&cs.learners)
                || names(&cs.voters_outgoing)
                || names(&cs.learners_next);
            if s.get_metadata().index >= request_index && knows_to {
                return Ok(s.clone());
            }
        }
        core.snapshot_wanted = true;
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ))
    }
}
