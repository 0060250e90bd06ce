//! From a decoded request to a reply: table lookup, arity, MULTI queueing, and the call itself.

use crate::cmd;
use crate::connection::Client;
use crate::stats::Stats;
use crate::Shared;
use cairn_commands::{CommandSpec, CommandTable, Flags, Lookup};
use cairn_resp::Reply;
use cairn_store::{Env, Handler, Store};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A command that works on the connection or the server rather than only on data.
pub type ConnHandler = fn(&mut Call) -> Reply;

/// Everything a connection-level command may touch. A standalone server passes its store
/// already locked; in replicated mode `store` is None and a command that looks at data locks
/// each shard's store itself ([`Call::each_store`]).
pub struct Call<'a> {
    pub shared: &'a Shared,
    pub client: &'a mut Client,
    pub store: Option<&'a mut Store>,
    pub args: &'a [Vec<u8>],
    pub env: Env,
}

impl Call<'_> {
    /// Runs `f` on every shard's store: the locked one of a standalone server, or each shard's
    /// in turn (one lock at a time).
    pub fn each_store(&mut self, mut f: impl FnMut(&mut Store)) {
        match self.store.as_deref_mut() {
            Some(store) => f(store),
            None => {
                for (_, store) in self.shared.shards.stores() {
                    f(&mut store.lock());
                }
            }
        }
    }

    /// Runs `f` on the store of the shard that owns `slot`.
    pub fn slot_store<T>(&mut self, slot: usize, f: impl FnOnce(&mut Store) -> T) -> T {
        match self.store.as_deref_mut() {
            Some(store) => f(store),
            None => {
                let group = self.shared.shards.group_of_slot(slot);
                f(&mut self.shared.shards.store(group).lock())
            }
        }
    }
}

#[derive(Clone, Copy)]
pub enum Target {
    Store(Handler),
    Conn(ConnHandler),
}

/// The command table plus, for each command cairn implements, who runs it.
pub struct Table {
    pub commands: CommandTable,
    targets: HashMap<String, Target>,
}

impl Table {
    pub fn build() -> Table {
        let mut targets: HashMap<String, Target> = HashMap::new();
        for name in cairn_store::cmd::names() {
            targets.insert(
                name.to_string(),
                Target::Store(cairn_store::cmd::handler(name).expect("listed")),
            );
        }
        for (name, h) in cmd::COMMANDS.iter() {
            let previous = targets.insert(name.to_string(), Target::Conn(*h));
            assert!(previous.is_none(), "command {name} has two implementations");
        }
        // EVALSHA and EVALSHA_RO, FCALL and FCALL_RO become EVAL and EVAL_RO before they run
        // (`cmd/scripting.rs`, `functions.rs`).
        let implemented = |name: &str| {
            targets.contains_key(name)
                || matches!(name, "evalsha" | "evalsha_ro" | "fcall" | "fcall_ro")
                || targets
                    .keys()
                    .any(|k| k.strip_prefix(name).is_some_and(|r| r.starts_with('|')))
        };
        let commands = CommandTable::load(implemented);
        Table { commands, targets }
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn target_of(&self, spec: &CommandSpec) -> Option<Target> {
        self.targets.get(&spec.name).copied()
    }
}

/// Entry seeds: any value will do, but each entry gets its own.
pub fn next_seed() -> u64 {
    static SEED: AtomicU64 = AtomicU64::new(0);
    SEED.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ crate::now_ms()
}

/// Most requests run under one store lock: a pipeline takes the lock once per batch.
pub const MAX_BATCH: usize = 512;

/// Handles decoded requests in order, appending their replies to `out`, with the store locked
/// once. Stops after QUIT, and once `out` holds [`crate::connection::OUTPUT_FLUSH_BYTES`], so
/// that replies waiting for a slow reader stay bounded; the rest stay queued in `pending`.
pub fn handle_batch(
    shared: &Shared,
    client: &mut Client,
    pending: &mut VecDeque<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    let mut store = shared.shards.only().lock();
    while let Some(args) = pending.pop_front() {
        // A blocking command keeps its arguments, to run again when woken.
        let kept = crate::blocking::may_block(&args).then(|| args.clone());
        let reply = handle(shared, client, &mut store, args);
        if let Some(args) = kept {
            let outcome = crate::blocking::outcome_of(&reply);
            if crate::blocking::block_on(client, &args, outcome) {
                break;
            }
        }
        reply.encode(client.proto, out);
        if client.close_after_reply {
            pending.clear();
            break;
        }
        if out.len() >= crate::connection::OUTPUT_FLUSH_BYTES {
            break;
        }
    }
}

/// Handles one request and returns its reply.
pub fn handle(
    shared: &Shared,
    client: &mut Client,
    store: &mut Store,
    args: Vec<Vec<u8>>,
) -> Reply {
    Stats::add(&shared.stats.commands_processed, 1);
    let spec = match shared.table.commands.lookup(&args) {
        Lookup::Found(spec) => spec.clone(),
        Lookup::Error(e) => {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            shared.stats.error_reply(&e);
            shared.stats.commands.reject_lookup(&e);
            return e;
        }
    };
    if !crate::cmd::acl::unchecked(shared, client) {
        if let Some(refused) = crate::cmd::acl::refused(shared, client, &spec, &args) {
            return refused;
        }
    }
    let top = spec.name.split('|').next().unwrap_or_default();
    if let Some(refused) = crate::cmd::pubsub::refused_while_subscribed(client, top) {
        return refused;
    }
    // EVALSHA runs as EVAL with the script's text (see `cmd/scripting.rs`).
    let (spec, args) = match crate::cmd::scripting::resolve_here(shared, &args) {
        None => (spec, args),
        Some(Err(_)) if client.multi.is_some() => {
            let queued = crate::cmd::scripting::queued_noscript(&args);
            match shared.table.commands.lookup(&queued) {
                Lookup::Found(s) => (s.clone(), queued),
                Lookup::Error(e) => return e,
            }
        }
        Some(Err(e)) => return e,
        Some(Ok(resolved)) => match shared.table.commands.lookup(&resolved) {
            Lookup::Found(s) => (s.clone(), resolved),
            Lookup::Error(e) => return e,
        },
    };
    if let Some(queue) = client.multi.as_mut() {
        if !matches!(
            spec.name.as_str(),
            "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
        ) {
            if spec.flags.contains(Flags::NO_MULTI) {
                client.multi_failed = true;
                return Reply::error("ERR Command not allowed inside a transaction");
            }
            // Inside MULTI nothing blocks: XREAD's BLOCK is dropped, as Redis ignores it there.
            queue.push(cairn_store::cmd::blocking::without_block(args));
            return Reply::Status("QUEUED".into());
        }
    }
    call(shared, client, Some(store), &spec, &args)
}

/// Runs a command whose arity is checked, with the store locked (by the caller, so that EXEC can
/// hold one lock across its whole block).
pub fn call(
    shared: &Shared,
    client: &mut Client,
    store: Option<&mut Store>,
    spec: &Arc<CommandSpec>,
    args: &[Vec<u8>],
) -> Reply {
    let env = Env {
        now_ms: crate::now_ms(),
        seed: next_seed(),
        proto: client.proto,
    };
    *client.info.last_command.lock() = Some(spec.clone());
    let started = std::time::Instant::now();
    let reply = call_target(shared, client, store, spec, args, env);
    let failed = reply.is_error();
    let took = started.elapsed();
    shared.stats.commands.record(&spec.name, took, failed);
    shared.slowlog.consider(args, took, &client.info);
    if failed {
        shared.stats.error_reply(&reply);
    }
    reply
}

fn call_target(
    shared: &Shared,
    client: &mut Client,
    store: Option<&mut Store>,
    spec: &Arc<CommandSpec>,
    args: &[Vec<u8>],
    env: Env,
) -> Reply {
    match shared.table.target_of(spec) {
        Some(Target::Store(h)) => match store {
            Some(store) => {
                store.events.flags = shared.pubsub.keyspace_flags();
                let reply = store.execute(h, args, &env);
                if !store.events.list.is_empty() {
                    shared.pubsub.publish_events(store.events.take());
                }
                reply
            }
            None => {
                // Replicated mode runs data commands through the log (crate::replicated).
                Reply::error("ERR internal: a data command reached the server path")
            }
        },
        Some(Target::Conn(h)) => h(&mut Call {
            shared,
            client,
            store,
            args,
            env,
        }),
        None => cairn_commands::unknown_command(args),
    }
}

/// Drops a client's watches (EXEC, DISCARD, UNWATCH, RESET, disconnect).
pub fn forget_watches(shared: &Shared, client: &mut Client) {
    if client.watched.is_empty() {
        return;
    }
    let keys: Vec<Vec<u8>> = client.watched.drain(..).map(|(k, _)| k).collect();
    shared
        .shards
        .only()
        .lock()
        .watches
        .unwatch(client.id(), &keys);
}
