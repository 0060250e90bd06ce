//! A shard's state machine under replication: the store, applied one log entry at a time.
//!
//! The reply bytes it returns are what the proposing client receives, encoded in that client's
//! protocol (carried in the entry). Every replica computes the same bytes, so whichever node
//! answers, the answer is the same. The store is shared with readers: a linearizable read runs
//! against it after the node's read barrier.
//!
//! Whether the shard serves a key's slot is decided here, at apply, in log order: a command
//! whose keys are in a slot this shard does not serve at that point of its log (the slot is
//! moving, or has moved) answers `-TRYAGAIN` on every replica and changes nothing. That check,
//! not the routing map, is what keeps two shards from ever accepting writes for one slot.

use crate::shards::SlotOwners;
use cairn_commands::{CommandTable, Lookup};
use cairn_replication::StateMachine;
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use cairn_store::keyspace::SlotSet;
use cairn_store::moves::Moves;
use cairn_store::{snapshot, Store};
use parking_lot::Mutex;
use std::sync::{Arc, OnceLock};

#[derive(Default, Clone)]
pub struct ShardMachine {
    pub store: Arc<Mutex<Store>>,
    /// This shard's group id and the node's slot → shard map, told of every slot this shard
    /// comes to serve (None in tests of the machine alone).
    pub routes: Option<(u64, Arc<SlotOwners>)>,
    /// Where keyspace notifications go: published by the leader only, once per change
    /// (None in tests of the machine alone).
    pub events: Option<Arc<crate::pubsub::Hub>>,
    /// Whether this replica led the group when its latest entries were applied.
    pub leading: bool,
}

/// Key positions of any Redis command, for the apply-time slot check.
fn key_table() -> &'static CommandTable {
    static TABLE: OnceLock<CommandTable> = OnceLock::new();
    TABLE.get_or_init(|| CommandTable::load(|_| true))
}

/// The first slot of `args`'s keys that `store` does not serve, if any.
pub fn unserved_slot(store: &Store, args: &[Vec<u8>]) -> Option<usize> {
    // A shard that serves every slot (a one-shard cluster) needs no look at the keys.
    if store.keyspace.served().is_all() {
        return None;
    }
    let Lookup::Found(spec) = key_table().lookup(args) else {
        return None;
    };
    spec.key_positions(args)
        .into_iter()
        .map(|i| cairn_store::slot::key_slot(&args[i]))
        .find(|&slot| !store.keyspace.serves(slot))
}

/// Whether `args` would touch a key a cross-shard transaction holds here (a keyless write,
/// FLUSHALL say, touches them all). The steps of slot moves and of transactions themselves are
/// not in the command table and never meet a lock.
pub fn meets_lock(store: &Store, args: &[Vec<u8>]) -> bool {
    if store.txns.locks.is_empty() {
        return false;
    }
    let Lookup::Found(spec) = key_table().lookup(args) else {
        return false;
    };
    let keys = spec.key_positions(args);
    if keys.is_empty() {
        return spec.is_write();
    }
    keys.into_iter().any(|i| store.txns.is_locked(&args[i]))
}

/// The answer to a command for a slot this shard does not serve (any more, or yet).
pub fn not_served(slot: usize) -> Reply {
    Reply::error(format!(
        "TRYAGAIN Slot {slot} is moving between shards or has moved, retry"
    ))
}

/// A shard snapshot: the keyspace plus the WATCH stamps, which are replicated state too.
/// Layout: `MAGIC | version u8 | index u64 | keyspace len u64 | keyspace | flushed_at u64 |
/// count u32 | (bucket u32, stamp u64)... | served slots (256 × u64) | moves | transactions`
/// (slots and moves since version 2, see `Moves::encode`; transactions since version 3, see
/// `Txns::encode`). A snapshot without the magic is a bare keyspace.
const MAGIC: &[u8; 4] = b"CRSM";
const VERSION: u8 = 3;

impl ShardMachine {
    /// Tells the node's slot map of the slots this shard just came to serve.
    fn publish_acquired(&self, store: &mut Store) {
        if store.moves.acquired.is_empty() {
            return;
        }
        let acquired = std::mem::take(&mut store.moves.acquired);
        if let Some((group, owners)) = &self.routes {
            for (slot, epoch) in acquired {
                owners.claim(slot as usize, *group, epoch);
            }
        }
    }
}

impl StateMachine for ShardMachine {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        let reply = self.apply_entry(index, data);
        match &self.events {
            // (Collected only then: see `apply_entry`.)
            Some(hub) if self.leading && (hub.keyspace_flags() != 0 || hub.keys_wanted()) => {
                let (events, keys) = {
                    let mut store = self.store.lock();
                    (store.events.take(), std::mem::take(&mut store.events.keys))
                };
                if !events.is_empty() {
                    hub.publish_events(events);
                }
                if !keys.is_empty() {
                    hub.wake_others(keys);
                }
            }
            _ => {}
        }
        reply
    }

    fn set_leading(&mut self, leading: bool) {
        self.leading = leading;
    }

    fn snapshot(&self) -> Vec<u8> {
        self.snapshot_bytes()
    }

    fn snapshot_job(&self) -> Option<cairn_replication::driver::SnapshotJob> {
        self.snapshot_job_of()
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.restore_bytes(data)
    }
}

impl ShardMachine {
    /// Applies one entry; keyspace notifications are collected only on the leader.
    fn apply_entry(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        let mut store = self.store.lock();
        (store.events.flags, store.events.collect_keys) = match &self.events {
            Some(hub) if self.leading => (hub.keyspace_flags(), hub.keys_wanted()),
            _ => (0, false),
        };
        // Anything left from an entry whose events were not published (the setting changed
        // in between) is stale.
        store.events.list.clear();
        store.events.keys.clear();
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
        // A command on a key a cross-shard transaction holds refuses the whole entry, on every
        // replica alike; the node that proposed it asks again (`replicated::write_entry`).
        match &entry.op {
            Operation::Commands(cmds)
            | Operation::Transaction(cmds)
            | Operation::WatchedTransaction { cmds, .. }
                if cmds.iter().any(|c| meets_lock(&store, c)) =>
            {
                store.txns.clock = store.txns.clock.max(entry.now_ms);
                let locked = Reply::error(cairn_store::txn::LOCKED);
                return match &entry.op {
                    Operation::Commands(cmds) => locked.to_bytes(entry.proto).repeat(cmds.len()),
                    _ => locked.to_bytes(entry.proto),
                };
            }
            _ => {}
        }
        // Commands for slots this shard does not serve are refused here, in log order.
        // (Only a run with a refused command pays for the per-command list.)
        let refused: Vec<Option<usize>> = match &entry.op {
            Operation::Commands(cmds)
                if cmds.iter().any(|c| unserved_slot(&store, c).is_some()) =>
            {
                cmds.iter().map(|c| unserved_slot(&store, c)).collect()
            }
            Operation::Commands(_) => Vec::new(),
            Operation::Transaction(cmds) | Operation::WatchedTransaction { cmds, .. } => {
                let watched = match &entry.op {
                    Operation::WatchedTransaction { watched, .. } => watched.as_slice(),
                    _ => &[],
                };
                let slot = cmds
                    .iter()
                    .find_map(|c| unserved_slot(&store, c))
                    .or_else(|| {
                        watched
                            .iter()
                            .map(|(k, _)| cairn_store::slot::key_slot(k))
                            .find(|&s| !store.keyspace.serves(s))
                    });
                if let Some(slot) = slot {
                    return not_served(slot).to_bytes(entry.proto);
                }
                Vec::new()
            }
            Operation::Expire(_) => Vec::new(),
        };
        if refused.iter().any(Option::is_some) {
            let Operation::Commands(cmds) = &entry.op else {
                unreachable!("only command runs are refused per command")
            };
            let served: Vec<Vec<Vec<u8>>> = cmds
                .iter()
                .zip(&refused)
                .filter(|(_, r)| r.is_none())
                .map(|(c, _)| c.clone())
                .collect();
            let ran = LogEntry {
                op: Operation::Commands(served),
                ..entry.clone()
            };
            let mut replies = store.apply_entry(&ran).into_iter();
            let mut out = Vec::new();
            for r in &refused {
                match r {
                    Some(slot) => not_served(*slot).encode(entry.proto, &mut out),
                    None => replies
                        .next()
                        .expect("one reply per command")
                        .encode(entry.proto, &mut out),
                }
            }
            return out;
        }
        let replies = store.apply_entry(&entry);
        self.publish_acquired(&mut store);
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

    fn snapshot_bytes(&self) -> Vec<u8> {
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
        for w in store.keyspace.served().words() {
            out.extend_from_slice(&w.to_le_bytes());
        }
        store.moves.encode(&mut out);
        store.txns.encode(&mut out);
        out
    }

    /// Serializes on another thread: the driver applies nothing meanwhile, so the store this
    /// reads (under its lock, like any reader) is the state at the snapshot's index.
    fn snapshot_job_of(&self) -> Option<cairn_replication::driver::SnapshotJob> {
        let me = ShardMachine {
            store: self.store.clone(),
            ..ShardMachine::default()
        };
        Some(Box::new(move || me.snapshot_bytes()))
    }

    fn restore_bytes(&mut self, data: &[u8]) -> Result<(), String> {
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
        if !(1..=VERSION).contains(&version) {
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
        // Version 1 predates moves: the shard keeps the slots it was created with.
        let mut slots = None;
        if version >= 2 {
            let mut words = [0u64; cairn_store::slot::SLOTS / 64];
            for w in words.iter_mut() {
                *w = u64_at(take(8)?);
            }
            let (moves, used) = Moves::decode(&rest[pos..]).ok_or_else(bad)?;
            pos += used;
            slots = Some((SlotSet::from_words(words), moves));
        }
        let mut txns = cairn_store::txn::Txns::default();
        if version >= 3 {
            let (t, used) = cairn_store::txn::Txns::decode(&rest[pos..]).ok_or_else(bad)?;
            pos += used;
            txns = t;
        }
        if pos != rest.len() {
            return Err(bad());
        }
        let mut store = self.store.lock();
        let served = match slots {
            Some((served, moves)) => {
                store.moves = moves;
                served
            }
            None => store.keyspace.served().clone(),
        };
        store.keyspace = keyspace;
        store.keyspace.set_served_slots(served);
        store.txns = txns;
        store.watches.restore_stamps(index, flushed_at, &stamps);
        // The map learns every slot this shard serves since it last moved.
        let claims: Vec<(u16, u64)> = store.moves.epochs.iter().map(|(&s, &e)| (s, e)).collect();
        if let Some((group, owners)) = &self.routes {
            for (slot, epoch) in claims {
                if store.keyspace.serves(slot as usize) {
                    owners.claim(slot as usize, *group, epoch);
                }
            }
        }
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

    fn migrate(args: &[&str]) -> Vec<u8> {
        let mut argv = vec![cairn_store::cmd::migrate::NAME.as_bytes().to_vec()];
        argv.extend(args.iter().map(|a| a.as_bytes().to_vec()));
        entry(Operation::Commands(vec![argv]))
    }

    /// Once a slot is handed over, every replica refuses its commands at apply (others in the
    /// same entry still run); a replica restored from a snapshot taken mid-move refuses the
    /// same and goes on with the move; and the routing map learns the new owner from the
    /// target's ACQUIRE, newest epoch first.
    #[test]
    fn slot_ownership_is_decided_at_apply_and_travels_in_snapshots() {
        let owners = crate::shards::Shards::even(2).owners().clone();
        let slot = cairn_store::slot::key_slot(b"k");
        assert_eq!(owners.group(slot), 1, "k is in shard 1 of two");
        let mut source = ShardMachine {
            store: Arc::new(Mutex::new(Store::new())),
            routes: Some((1, owners.clone())),
            ..ShardMachine::default()
        };
        source.apply(1, &set("k", "v"));
        let s = slot.to_string();
        assert_eq!(
            source.apply(2, &migrate(&["OUT", &s, "2"])),
            b"*2\r\n:2\r\n:0\r\n"
        );
        assert_eq!(
            source.apply(3, &migrate(&["RELEASE", &s, "2", "5"])),
            b"*2\r\n:1\r\n:0\r\n"
        );
        let both = entry(Operation::Commands(vec![
            ["SET", "k", "new"].map(|a| a.as_bytes().to_vec()).to_vec(),
            ["SET", "other", "1"]
                .map(|a| a.as_bytes().to_vec())
                .to_vec(),
        ]));
        let refused =
            format!("-TRYAGAIN Slot {slot} is moving between shards or has moved, retry\r\n");
        let mut restored = ShardMachine::default();
        restored.restore(&source.snapshot()).unwrap();
        for m in [&mut source, &mut restored] {
            let reply = m.apply(4, &both);
            assert_eq!(reply, format!("{refused}+OK\r\n").into_bytes());
            let tx = entry(Operation::Transaction(vec![["GET", "k"]
                .map(|a| a.as_bytes().to_vec())
                .to_vec()]));
            assert_eq!(m.apply(5, &tx), refused.as_bytes());
            // The move goes on from the snapshot: the key is still pending, frozen at "v".
            let take = m.apply(6, &migrate(&["TAKE", &s, "2", "10", "1000"]));
            assert!(
                String::from_utf8_lossy(&take).contains("$1\r\nk\r\n"),
                "{take:?}"
            );
        }
        // The target acquires with epoch 1: the map follows; an older claim does not undo it.
        let mut target = ShardMachine {
            store: Arc::new(Mutex::new(Store::serving(SlotSet::none()))),
            routes: Some((2, owners.clone())),
            ..ShardMachine::default()
        };
        target.apply(1, &migrate(&["IN", &s, "1", "2"]));
        assert_eq!(
            target.apply(2, &migrate(&["ACQUIRE", &s, "2", "1"])),
            b"+OK\r\n"
        );
        assert_eq!((owners.group(slot), owners.epoch(slot)), (2, 1));
        owners.claim(slot, 1, 0);
        assert_eq!(owners.group(slot), 2);
        assert_eq!(target.apply(3, &set("k", "there")), b"+OK\r\n");
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
