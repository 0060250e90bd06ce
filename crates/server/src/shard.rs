//! A shard's state machine under replication: the store, applied one log entry at a time.
//!
//! The reply bytes it returns are what the proposing client receives, encoded in that client's
//! protocol (carried in the entry). Every replica computes the same bytes, so whichever node
//! answers, the answer is the same. The store is shared with readers: a linearizable read runs
//! against it after the node's read barrier.

use cairn_replication::StateMachine;
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use cairn_store::{snapshot, Store};
use parking_lot::Mutex;
use std::sync::Arc;

#[derive(Default, Clone)]
pub struct ShardMachine {
    pub store: Arc<Mutex<Store>>,
}

/// A shard snapshot: the keyspace plus the WATCH stamps, which are replicated state too.
/// Layout: `MAGIC | version u8 | index u64 | keyspace len u64 | keyspace | flushed_at u64 |
/// count u32 | (bucket u32, stamp u64)...`. A snapshot without the magic is a bare keyspace.
const MAGIC: &[u8; 4] = b"CRSM";
const VERSION: u8 = 1;

impl StateMachine for ShardMachine {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        let mut store = self.store.lock();
        store.watches.set_log_index(index);
        let entry = match LogEntry::decode(data) {
            Ok(e) => e,
            // Every replica decodes the same bytes the same way, so this stays deterministic.
            Err(e) => return Reply::error(format!("ERR {e}")).to_bytes(Protocol::Resp2),
        };
        if let Operation::WatchedTransaction { watched, .. } = &entry.op {
            if store.watch_conflict(watched, entry.now_ms) {
                return Reply::NilArray.to_bytes(entry.proto);
            }
        }
        let replies = store.apply_entry(&entry);
        drop(store);
        match &entry.op {
            // A pipeline's commands: one reply each, back to back, as the client expects them.
            Operation::Commands(_) | Operation::Expire(_) => {
                let mut out = Vec::new();
                for r in &replies {
                    r.encode(entry.proto, &mut out);
                }
                out
            }
            Operation::Transaction(_) | Operation::WatchedTransaction { .. } => {
                Reply::Array(replies).to_bytes(entry.proto)
            }
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        // Slot by slot, taking the lock for one slot at a time: a big keyspace takes seconds
        // to write, and connections (whose tokio workers also carry the cluster bus) must not
        // wait that long. Nothing changes the store meanwhile: only apply writes to it, and
        // the driver holds applies back while a snapshot is being taken.
        let mut keyspace = snapshot::begin(&self.store.lock().keyspace);
        for slot in 0..cairn_store::slot::SLOTS {
            snapshot::write_slot(&self.store.lock().keyspace, slot, &mut keyspace);
        }
        let keyspace = snapshot::finish(keyspace);
        let store = self.store.lock();
        let (flushed_at, stamps) = store.watches.stamps();
        let mut out = Vec::with_capacity(keyspace.len() + 32 + stamps.len() * 12);
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&store.watches.log_index().to_le_bytes());
        out.extend_from_slice(&(keyspace.len() as u64).to_le_bytes());
        out.extend_from_slice(&keyspace);
        out.extend_from_slice(&flushed_at.to_le_bytes());
        out.extend_from_slice(&(stamps.len() as u32).to_le_bytes());
        for (bucket, stamp) in stamps {
            out.extend_from_slice(&bucket.to_le_bytes());
            out.extend_from_slice(&stamp.to_le_bytes());
        }
        out
    }

    /// Serializes on another thread: the driver applies nothing meanwhile, so the store this
    /// reads (under its lock, like any reader) is the state at the snapshot's index.
    fn snapshot_job(&self) -> Option<cairn_replication::driver::SnapshotJob> {
        let me = ShardMachine {
            store: self.store.clone(),
        };
        Some(Box::new(move || me.snapshot()))
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let Some(rest) = data.strip_prefix(MAGIC) else {
            self.store.lock().keyspace = snapshot::read(data).map_err(|e| e.to_string())?;
            return Ok(());
        };
        let bad = || "shard snapshot is truncated or malformed".to_string();
        let mut pos: usize = 0;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = rest
                .get(pos..pos.checked_add(n).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            pos += n;
            Ok(s)
        };
        let version = take(1)?[0];
        if version != VERSION {
            return Err(format!("shard snapshot version {version} is unknown"));
        }
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let index = u64_at(take(8)?);
        let len = usize::try_from(u64_at(take(8)?)).map_err(|_| bad())?;
        let keyspace = snapshot::read(take(len)?).map_err(|e| e.to_string())?;
        let flushed_at = u64_at(take(8)?);
        let count = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
        let mut stamps = Vec::with_capacity(count.min(cairn_store::watch::STAMP_BUCKETS));
        for _ in 0..count {
            let bucket = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes"));
            stamps.push((bucket, u64_at(take(8)?)));
        }
        if pos != rest.len() {
            return Err(bad());
        }
        let mut store = self.store.lock();
        store.keyspace = keyspace;
        store.watches.restore_stamps(index, flushed_at, &stamps);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Operation) -> Vec<u8> {
        LogEntry {
            now_ms: 1_000,
            seed: 7,
            proto: Protocol::Resp2,
            op,
        }
        .encode()
    }

    fn set(key: &str, value: &str) -> Vec<u8> {
        let args = ["SET", key, value].map(|a| a.as_bytes().to_vec()).to_vec();
        entry(Operation::Commands(vec![args]))
    }

    fn watched_set(key: &str, since: u64) -> Vec<u8> {
        entry(Operation::WatchedTransaction {
            watched: vec![(key.as_bytes().to_vec(), since)],
            cmds: vec![["SET", key, "tx"].map(|a| a.as_bytes().to_vec()).to_vec()],
        })
    }

    /// A replica restored from a snapshot decides every watched transaction exactly as one that
    /// applied the whole log: the stamps travel in the snapshot.
    #[test]
    fn watch_decisions_survive_a_snapshot() {
        let mut a = ShardMachine::default();
        a.apply(1, &set("k", "1"));
        a.apply(2, &set("other", "1"));
        a.apply(3, &set("k", "2"));
        let mut b = ShardMachine::default();
        b.restore(&a.snapshot()).unwrap();
        for m in [&mut a, &mut b] {
            // Watched at 2, changed at 3: aborted, nothing written.
            assert_eq!(m.apply(4, &watched_set("k", 2)), b"*-1\r\n");
            // Watched at 3: runs.
            assert_eq!(m.apply(5, &watched_set("k", 3)), b"*1\r\n+OK\r\n");
            // The transaction itself stamped k at 5.
            assert_eq!(m.apply(6, &watched_set("k", 4)), b"*-1\r\n");
        }
        assert_eq!(
            snapshot::digest(&a.store.lock().keyspace),
            snapshot::digest(&b.store.lock().keyspace)
        );
        // Damage is refused, not misread.
        let snap = a.snapshot();
        assert!(b.restore(&snap[..snap.len() - 1]).is_err());
    }
}
