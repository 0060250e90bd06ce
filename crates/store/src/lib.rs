//! cairn's state machine: the keyspace and the Redis data types, changed only by applying
//! commands.
//!
//! Determinism is the rule everything here keeps: applying the same commands with the same
//! [`Env`] (time and random seed, written into the log entry by the leader) gives the same state on
//! every replica. Nothing in this crate reads the clock or draws randomness of its own, and
//! iteration orders that a write can observe (SPOP, for example) come from insertion order, never
//! from a hash function's layout.
//!
//! Layout: [`keyspace`] holds keys partitioned by hash slot; [`value`] the types; [`exec`] the
//! context a command runs in and its helpers; [`cmd`] one file per command family; [`snapshot`]
//! the versioned, byte-exact dump of the whole keyspace.

pub mod blocking;
pub mod cmd;
pub mod entry;
pub mod exec;
pub mod glob;
pub mod keyspace;
pub mod moves;
pub mod notify;
pub mod numbers;
pub mod rng;
pub mod script;
mod script_libs;
pub mod slot;
pub mod snapshot;
pub mod stream;
pub mod txn;
pub mod value;
pub mod watch;

pub use exec::{Ctx, Env, Handler};
pub use keyspace::Keyspace;
pub use value::Value;

use cairn_resp::Reply;

/// Redis's command table (arity, flags, key positions), for what runs inside the store:
/// scripts' `redis.call`.
pub fn commands() -> &'static cairn_commands::CommandTable {
    static TABLE: std::sync::OnceLock<cairn_commands::CommandTable> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| cairn_commands::CommandTable::load(|_| true))
}

/// The state machine of one shard: the keyspace plus what WATCH needs.
#[derive(Default)]
pub struct Store {
    pub keyspace: Keyspace,
    pub watches: watch::Watches,
    /// Slots moving in or out of this shard.
    pub moves: moves::Moves,
    /// Modifications applied since start (Redis's `server.dirty`).
    pub dirty: u64,
    /// Keyspace notifications collected and not yet published.
    pub events: notify::Events,
    /// Cross-shard transactions: locks, and decisions kept as their primary.
    pub txns: txn::Txns,
}

impl Store {
    pub fn new() -> Store {
        Store::default()
    }

    /// A store that serves only `served` (a shard's initial slots).
    pub fn serving(served: keyspace::SlotSet) -> Store {
        let mut store = Store::default();
        store.keyspace.set_served_slots(served);
        store
    }

    /// Runs one command. `args[0]` is the name; the caller has checked arity.
    pub fn execute(&mut self, handler: Handler, args: &[Vec<u8>], env: &Env) -> Reply {
        let mut rng = rng::Rng::new(env.seed);
        let mut ctx = Ctx {
            ks: &mut self.keyspace,
            watches: &mut self.watches,
            moves: &mut self.moves,
            now_ms: env.now_ms,
            rng: &mut rng,
            proto: env.proto,
            dirty: 0,
            events: &mut self.events,
        };
        let reply = handler(&mut ctx, args);
        self.dirty += ctx.dirty;
        self.watches.blocked.wake_ready();
        reply
    }

    /// Removes up to `max` keys whose time has passed, earliest deadline first; returns them.
    /// This is active expiry: under replication the leader decides and replicates the deletes.
    pub fn expire_due(&mut self, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        let removed = self.keyspace.remove_expired(now_ms, max);
        for key in &removed {
            self.watches.touched(key);
            self.moves.modified(key);
            self.events.push(notify::EXPIRED, "expired", key);
        }
        self.dirty += removed.len() as u64;
        self.watches.blocked.wake_ready();
        removed
    }
}
