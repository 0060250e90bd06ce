//! WATCH bookkeeping: which clients watch which keys, and which of them saw a watched key change.
//!
//! Under replication a watch cannot live in one node's memory: the EXEC is decided when its log
//! entry is applied, on every replica. So the log itself stamps modifications: each key hashes
//! to one of [`STAMP_BUCKETS`] buckets, and a bucket holds the index of the last log entry that
//! modified any of its keys. A watch is a (key, index) pair taken after a read barrier; the
//! transaction aborts if the key's bucket was stamped after that index. Buckets are shared, so
//! an EXEC may abort because another key in the bucket changed (odds about one in 65,536 per
//! write in between); it never succeeds when its key changed. The stamps are part of the
//! replicated state: snapshots carry them.

use foldhash::fast::RandomState;
use std::collections::{HashMap, HashSet};

/// Buckets of modification stamps under replication.
pub const STAMP_BUCKETS: usize = 1 << 16;

#[derive(Default)]
pub struct Watches {
    by_key: HashMap<Vec<u8>, HashSet<u64, RandomState>, RandomState>,
    /// Clients whose EXEC must fail.
    dirty: HashSet<u64, RandomState>,
    /// Replicated mode: the index of the log entry being applied (0: not replicated).
    index: u64,
    /// Per bucket, the last index that modified a key in it (empty until replicated).
    stamps: Vec<u64>,
    /// The last index that modified every key (FLUSHDB, FLUSHALL).
    flushed_at: u64,
    /// Clients blocked on keys of this store, woken when those keys change.
    pub blocked: crate::blocking::Blocked,
}

fn bucket(key: &[u8]) -> usize {
    (crate::snapshot::fnv1a(key) as usize) % STAMP_BUCKETS
}

impl Watches {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    pub fn watch(&mut self, client: u64, key: &[u8]) {
        self.by_key.entry(key.to_vec()).or_default().insert(client);
    }

    /// Forgets everything `client` watched (EXEC, DISCARD, UNWATCH, disconnect).
    pub fn unwatch(&mut self, client: u64, keys: &[Vec<u8>]) {
        for key in keys {
            if let Some(set) = self.by_key.get_mut(key) {
                set.remove(&client);
                if set.is_empty() {
                    self.by_key.remove(key);
                }
            }
        }
        self.dirty.remove(&client);
    }

    /// Replicated mode: the log entry at `index` is about to be applied; its modifications are
    /// stamped with it.
    pub fn set_log_index(&mut self, index: u64) {
        if self.stamps.is_empty() {
            self.stamps = vec![0; STAMP_BUCKETS];
        }
        self.index = index;
    }

    /// The index of the last log entry applied (0 when not replicated).
    pub fn log_index(&self) -> u64 {
        self.index
    }

    /// Records that `key` changed: stamps its bucket and fails local watchers' EXEC.
    pub fn touched(&mut self, key: &[u8]) {
        if let Some(s) = self.stamps.get_mut(bucket(key)) {
            *s = self.index;
        }
        self.blocked.touched(key);
        if !self.by_key.is_empty() {
            self.signal(key);
        }
    }

    /// Whether `key` may have changed after log index `since` (see the module notes).
    pub fn changed_since(&self, key: &[u8], since: u64) -> bool {
        self.flushed_at > since || self.stamps.get(bucket(key)).is_some_and(|&s| s > since)
    }

    /// The stamps, for a snapshot: (flushed_at, every non-zero bucket).
    pub fn stamps(&self) -> (u64, Vec<(u32, u64)>) {
        let set = self
            .stamps
            .iter()
            .enumerate()
            .filter(|(_, &s)| s > 0)
            .map(|(b, &s)| (b as u32, s))
            .collect();
        (self.flushed_at, set)
    }

    /// Replaces the stamps with a snapshot's; `index` is the snapshot's log index.
    pub fn restore_stamps(&mut self, index: u64, flushed_at: u64, set: &[(u32, u64)]) {
        self.stamps = vec![0; STAMP_BUCKETS];
        for &(b, s) in set {
            if let Some(slot) = self.stamps.get_mut(b as usize) {
                *slot = s;
            }
        }
        self.flushed_at = flushed_at;
        self.index = index;
    }

    pub fn signal(&mut self, key: &[u8]) {
        if let Some(clients) = self.by_key.get(key) {
            self.dirty.extend(clients.iter().copied());
        }
    }

    /// Every watcher becomes dirty (FLUSHDB/FLUSHALL touch every key).
    pub fn signal_all(&mut self) {
        self.flushed_at = self.index;
        for clients in self.by_key.values() {
            self.dirty.extend(clients.iter().copied());
        }
    }

    pub fn is_dirty(&self, client: u64) -> bool {
        self.dirty.contains(&client)
    }
}
