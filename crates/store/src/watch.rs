//! WATCH bookkeeping: which clients watch which keys, and which of them saw a watched key change.

use foldhash::fast::RandomState;
use std::collections::{HashMap, HashSet};

#[derive(Default)]
pub struct Watches {
    by_key: HashMap<Vec<u8>, HashSet<u64, RandomState>, RandomState>,
    /// Clients whose EXEC must fail.
    dirty: HashSet<u64, RandomState>,
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

    pub fn signal(&mut self, key: &[u8]) {
        if let Some(clients) = self.by_key.get(key) {
            self.dirty.extend(clients.iter().copied());
        }
    }

    /// Every watcher becomes dirty (FLUSHDB/FLUSHALL touch every key).
    pub fn signal_all(&mut self) {
        for clients in self.by_key.values() {
            self.dirty.extend(clients.iter().copied());
        }
    }

    pub fn is_dirty(&self, client: u64) -> bool {
        self.dirty.contains(&client)
    }
}
