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

impl StateMachine for ShardMachine {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let entry = match LogEntry::decode(data) {
            Ok(e) => e,
            // Every replica decodes the same bytes the same way, so this stays deterministic.
            Err(e) => return Reply::error(format!("ERR {e}")).to_bytes(Protocol::Resp2),
        };
        let mut replies = self.store.lock().apply_entry(&entry);
        let reply = match &entry.op {
            Operation::Commands(cmds) if cmds.len() == 1 => {
                replies.pop().expect("one reply per command")
            }
            Operation::Commands(_) | Operation::Transaction(_) => Reply::Array(replies),
            Operation::Expire(_) => replies.pop().expect("one reply"),
        };
        reply.to_bytes(entry.proto)
    }

    fn snapshot(&self) -> Vec<u8> {
        snapshot::write(&self.store.lock().keyspace)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.store.lock().keyspace = snapshot::read(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}
