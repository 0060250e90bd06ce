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
        let replies = self.store.lock().apply_entry(&entry);
        match &entry.op {
            // A pipeline's commands: one reply each, back to back, as the client expects them.
            Operation::Commands(_) | Operation::Expire(_) => {
                let mut out = Vec::new();
                for r in &replies {
                    r.encode(entry.proto, &mut out);
                }
                out
            }
            Operation::Transaction(_) => Reply::Array(replies).to_bytes(entry.proto),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        snapshot::write(&self.store.lock().keyspace)
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        self.store.lock().keyspace = snapshot::read(data).map_err(|e| e.to_string())?;
        Ok(())
    }
}
