//! Commands, MULTI/EXEC blocks and WATCHes over keys in several shards: the coordinator's side
//! of `cairn_store::txn`'s protocol (read docs/transactions.md first).
//!
//! The node a client asked coordinates: it prepares every participant shard at once (locking
//! the keys and reading them), runs the commands itself on what it read, exactly as a replica
//! would run them (the same store code, its own clock and seed fixed for the run), and turns the
//! keys that changed into writes. A run that changed nothing releases the locks and answers;
//! otherwise the writes go to the primary shard as one `COMMIT` entry (the commit point), then
//! to the other shards (`APPLY`), and the client gets its reply; the primary forgets the
//! decision in the background ([`finisher`]). Every key stays locked until its shard applied
//! the outcome, so nobody can read around the transaction, and the client's next command does
//! not meet its own locks.
//!
//! [`recover`] runs on every node: a shard it leads that still holds locks past their deadline
//! (a coordinator died, or lost its way) asks the primary for the decision and applies or
//! releases; a primary's decisions that linger are pushed out to their shards and forgotten.

use crate::connection::Client;
use crate::Shared;
use cairn_commands::Lookup;
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use cairn_store::txn::{self, Record};
use cairn_store::Store;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How long a transaction's locks are its own: past this (and [`GRACE_MS`]), the shards
/// holding them have the primary decide, which aborts what is not committed by then.
pub const DEADLINE_MS: u64 = 2_000;
/// Added to a deadline before a shard resolves a lock itself: nodes' clocks differ a little.
const GRACE_MS: u64 = 500;
/// How long a primary keeps a commit decision before pushing it out itself (its coordinator
/// normally finishes and forgets it within milliseconds).
const LINGER_MS: u64 = 2_000;
/// The most transactions finishing in the background at once on a node, and queued for it.
const FINISHING: usize = 256;
const FINISH_QUEUE: usize = 4096;
/// Internal clients kept for steps (each keeps its connections to other nodes).
const POOL: usize = 1024;

/// Records to write, by shard.
type Writes = BTreeMap<u64, Vec<Record>>;

/// A watched key of a transaction: the shard and log index it was watched at.
#[derive(Clone, Debug)]
pub struct Watched {
    pub key: Vec<u8>,
    pub group: u64,
    pub index: u64,
}

/// A committed transaction whose decision its primary may forget: every shard applied it.
struct Finish {
    id: Vec<u8>,
    primary: u64,
}

/// The coordinator's state on a node.
pub struct Coordinator {
    pool: parking_lot::Mutex<Vec<Client>>,
    seq: AtomicU64,
    queue: tokio::sync::mpsc::Sender<Finish>,
    queued: parking_lot::Mutex<Option<tokio::sync::mpsc::Receiver<Finish>>>,
    /// Commands and blocks run over shards; of them, those that wrote (committed); tries that
    /// were refused and made again; transactions resolved by recovery (INFO, tests).
    pub runs: AtomicU64,
    pub committed: AtomicU64,
    /// Read-only runs answered from a validated snapshot, without log entries.
    pub snapshots: AtomicU64,
    pub retried: AtomicU64,
    pub recovered: AtomicU64,
}

impl Default for Coordinator {
    fn default() -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel(FINISH_QUEUE);
        Coordinator {
            pool: Default::default(),
            seq: AtomicU64::new(1),
            queue: tx,
            queued: parking_lot::Mutex::new(Some(rx)),
            runs: AtomicU64::new(0),
            committed: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
        }
    }
}

fn coordinator(shared: &Shared) -> &Coordinator {
    &shared
        .replication
        .as_ref()
        .expect("replicated mode")
        .coordinator
}

/// Proposes one CAIRN.TXN step to shard `group` (through its leader): its reply, or the error
/// text it gave.
async fn step(shared: &Shared, group: u64, args: Vec<Vec<u8>>) -> Result<Reply, String> {
    let mut client = coordinator(shared)
        .pool
        .lock()
        .pop()
        .unwrap_or_else(|| Client::internal(shared));
    let mut cmd = Vec::with_capacity(args.len() + 1);
    cmd.push(txn::NAME.as_bytes().to_vec());
    cmd.extend(args);
    let bytes = crate::replicated::propose_to(shared, &mut client, group, cmd).await;
    {
        let mut pool = coordinator(shared).pool.lock();
        if pool.len() < POOL {
            pool.push(client);
        }
    }
    match cairn_resp::parse_reply(&bytes) {
        Some(Reply::Error(e)) => Err(e.into_owned()),
        Some(r) => Ok(r),
        None => Err("ERR a shard answered with a reply that could not be read".into()),
    }
}

fn arg(x: impl ToString) -> Vec<u8> {
    x.to_string().into_bytes()
}

fn push_records(out: &mut Vec<Vec<u8>>, records: &[Record]) {
    out.push(arg(records.len()));
    for r in records {
        out.push(r.key.clone());
        out.push(arg(r.expire_at));
        out.push(r.dump.clone());
    }
}

/// Records from a reply's items (`[key, expire-at, dump or nil]` each).
fn records_of(items: &[Reply]) -> Option<Vec<Record>> {
    items
        .iter()
        .map(|item| match item {
            Reply::Array(r) if r.len() == 3 => Some(Record {
                key: match &r[0] {
                    Reply::Bulk(k) => k.clone(),
                    _ => return None,
                },
                expire_at: match r[1] {
                    Reply::Int(n) => n,
                    _ => return None,
                },
                dump: match &r[2] {
                    Reply::Bulk(d) => d.clone(),
                    _ => Vec::new(),
                },
            }),
            _ => None,
        })
        .collect()
}

/// Runs `futures` together, their results in order.
async fn all<T>(futures: Vec<impl std::future::Future<Output = T>>) -> Vec<T> {
    futures_util::future::join_all(futures).await
}

enum Attempt {
    Done(Reply),
    /// Nothing happened (every lock taken is released or will be by recovery): try again.
    Again(String),
}

/// The keys of `cmds` (and the watched ones) by shard, as routing has them now: None when a
/// watched key's slot moved since WATCH (the transaction then aborts as if it had changed).
type Parts = BTreeMap<u64, (Vec<Vec<u8>>, Vec<(Vec<u8>, u64)>)>;

fn participants(shared: &Shared, cmds: &[Vec<Vec<u8>>], watched: &[Watched]) -> Option<Parts> {
    let mut parts: Parts = BTreeMap::new();
    for args in cmds {
        if let Lookup::Found(spec) = shared.table.commands.lookup(args) {
            for i in spec.key_positions(args) {
                let key = &args[i];
                let group = shared.shards.group_of_key(key);
                parts.entry(group).or_default().0.push(key.clone());
            }
        }
    }
    for w in watched {
        if shared.shards.group_of_key(&w.key) != w.group {
            return None;
        }
        parts
            .entry(w.group)
            .or_default()
            .1
            .push((w.key.clone(), w.index));
    }
    for (keys, _) in parts.values_mut() {
        keys.sort();
        keys.dedup();
    }
    Some(parts)
}

/// One try at running `cmds` (as one transaction when `block`, else as one command) over
/// shards.
async fn attempt(
    shared: &Shared,
    proto: Protocol,
    cmds: &[Vec<Vec<u8>>],
    watched: &[Watched],
    block: bool,
) -> Attempt {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let Some(parts) = participants(shared, cmds, watched) else {
        return Attempt::Done(Reply::NilArray);
    };
    let Some(&primary) = parts.keys().next() else {
        return Attempt::Done(Reply::error("ERR a cross-shard transaction without keys"));
    };
    // Reads first try without the log: see `snapshot_read`.
    if read_only(shared, cmds) {
        if let Some(values) = snapshot_read(shared, &parts).await {
            coordinator(shared)
                .snapshots
                .fetch_add(1, Ordering::Relaxed);
            let (reply, mut scratch) = run_on(shared, values, cmds, proto, block, crate::now_ms());
            publish_events(shared, &mut scratch);
            return Attempt::Done(reply);
        }
    }
    let seq = coordinator(shared).seq.fetch_add(1, Ordering::Relaxed);
    let id = format!("{}.{seq}.{:x}", repl.me, crate::dispatch::next_seed()).into_bytes();
    // The transaction's time: when it began, as a single-shard command's is when it was
    // proposed (a TTL it sets counts from here).
    let now = crate::now_ms();
    let deadline = now + DEADLINE_MS;
    let groups: Vec<u64> = parts.keys().copied().collect();

    // 1. Lock and read everywhere at once.
    let prepares = parts.iter().map(|(&group, (keys, watches))| {
        let mut args = vec![
            b"prepare".to_vec(),
            id.clone(),
            arg(primary),
            arg(deadline),
            arg(keys.len()),
        ];
        args.extend(keys.iter().cloned());
        for (k, index) in watches {
            args.push(k.clone());
            args.push(arg(index));
        }
        async move { (group, step(shared, group, args).await) }
    });
    let mut values: Vec<(u64, Record)> = Vec::new();
    let mut failure = None;
    let mut watch_changed = false;
    for (group, outcome) in all(prepares.collect()).await {
        match outcome {
            Ok(Reply::Array(items)) => match records_of(&items) {
                Some(records) => values.extend(records.into_iter().map(|r| (group, r))),
                None => failure = Some("ERR a shard's prepared values could not be read".into()),
            },
            Ok(Reply::Int(0)) => watch_changed = true,
            Ok(other) => failure = Some(format!("ERR unexpected prepare reply {other:?}")),
            Err(e) => failure = Some(e),
        }
    }
    if watch_changed || failure.is_some() {
        // Wherever a lock may have been taken (a lost reply too): RELEASE of what is not
        // prepared does nothing, and what this misses recovery resolves.
        release(shared, &id, &groups).await;
        return match failure {
            Some(why) if !watch_changed => Attempt::Again(why),
            _ => Attempt::Done(Reply::NilArray),
        };
    }

    // 2. Run the commands on what was read, as a replica would.
    let before = values.iter().map(|(_, r)| r.clone()).collect();
    let (reply, mut scratch) = run_on(shared, before, cmds, proto, block, now);
    let mut writes: Writes = groups.iter().map(|&g| (g, vec![])).collect();
    for (group, was) in &values {
        let after = scratch.record_of(&was.key, now);
        if after.expire_at != was.expire_at || after.dump != was.dump {
            writes.get_mut(group).expect("a participant").push(after);
        }
    }
    if writes.values().all(Vec::is_empty) {
        // Released before the reply: the client's next command must not meet its own locks.
        release(shared, &id, &groups).await;
        publish_events(shared, &mut scratch);
        return Attempt::Done(reply);
    }

    // 3. Commit: one entry in the primary's log decides.
    let mut args = vec![b"commit".to_vec(), id.clone()];
    let own = writes.remove(&primary).unwrap_or_default();
    args.push(arg(primary));
    push_records(&mut args, &own);
    for (group, records) in &writes {
        args.push(arg(group));
        push_records(&mut args, records);
    }
    let committed =
        match step(shared, primary, args).await {
            Ok(Reply::Int(1)) => true,
            Err(e) if e.starts_with("TXNABORT") => false,
            // Not known: the primary decides abort for it once its deadline has passed, so ask.
            _ => match decision(shared, primary, &id).await {
                Some(c) => c,
                None => return Attempt::Done(Reply::error(
                    "UNCERTAIN lost the shards during a cross-shard commit; the command may or \
                     may not have been applied",
                )),
            },
        };
    if !committed {
        release(shared, &id, &groups).await;
        return Attempt::Again("the transaction was aborted by recovery".into());
    }
    coordinator(shared)
        .committed
        .fetch_add(1, Ordering::Relaxed);
    // The other shards' writes before the reply (the client's next command must not meet the
    // locks); what fails here recovery pushes out from the decision. Forgetting the decision
    // can wait.
    if push_out(shared, &id, &writes).await {
        finish(shared, Finish { id, primary }).await;
    }
    publish_events(shared, &mut scratch);
    Attempt::Done(reply)
}

/// Publishes the keyspace notifications the commands emitted on the scratch store, once the
/// transaction took effect and before its reply, as a single-shard command's leader does
/// (the shards' own entries carry values, not events).
fn publish_events(shared: &Shared, scratch: &mut Store) {
    let mut events = scratch.events.take();
    // A key that expired in between is reported by its shard's own expiry, not twice.
    events.retain(|e| e.name != "expired");
    if !events.is_empty() {
        shared.pubsub.publish_events(events);
    }
}

/// Runs `cmds` on a store holding `values` (one transaction when `block`) at time `now`, with
/// a fresh seed: the reply, and the store as the commands left it (with the keyspace
/// notifications the node's setting asks for).
fn run_on(
    shared: &Shared,
    values: Vec<Record>,
    cmds: &[Vec<Vec<u8>>],
    proto: Protocol,
    block: bool,
    now: u64,
) -> (Reply, Store) {
    let mut scratch = Store::new();
    scratch.write_records(&values);
    scratch.events.flags = shared.pubsub.keyspace_flags();
    let entry = LogEntry {
        now_ms: now,
        seed: crate::dispatch::next_seed(),
        proto,
        op: if block {
            Operation::Transaction(cmds.to_vec())
        } else {
            Operation::Commands(cmds.to_vec())
        },
    };
    let mut replies = scratch.apply_entry(&entry);
    let reply = if block {
        Reply::Array(replies)
    } else {
        replies.pop().unwrap_or(Reply::Nil)
    };
    (reply, scratch)
}

/// Whether every command of `cmds` only reads.
fn read_only(shared: &Shared, cmds: &[Vec<Vec<u8>>]) -> bool {
    cmds.iter().all(|args| {
        matches!(shared.table.commands.lookup(args), Lookup::Found(spec) if !spec.is_write())
    })
}

/// A consistent read of keys in several shards without log entries: each shard's leader reads
/// them after a read barrier (refusing if any is locked by a transaction) and notes its log
/// position; once every shard has answered, each is asked again (after another barrier)
/// whether any of those keys changed since its position, or is locked, and whether a watched
/// key changed since its WATCH. If none did, every value held from its read until the check,
/// so all of them held together at the moment the last read was taken: a snapshot as
/// linearizable as a single read. Any doubt (a change, a lock, a shard that does not answer)
/// gives None, and the transaction takes the locking path.
async fn snapshot_read(shared: &Shared, parts: &Parts) -> Option<Vec<Record>> {
    let reads = parts.iter().map(|(&group, (keys, _))| {
        let mut args = vec![b"CAIRN.TXNREAD".to_vec(), b"READ".to_vec(), arg(group)];
        args.extend(keys.iter().cloned());
        async move { (group, ask_leader(shared, group, args).await) }
    });
    let mut values = Vec::new();
    let mut positions = BTreeMap::new();
    for (group, answer) in all(reads.collect()).await {
        let Some(Reply::Array(items)) = answer else {
            return None;
        };
        let Some(Reply::Int(index)) = items.first() else {
            return None;
        };
        positions.insert(group, *index);
        values.extend(records_of(&items[1..])?);
    }
    let checks = parts.iter().map(|(&group, (keys, watches))| {
        let mut args = vec![
            b"CAIRN.TXNREAD".to_vec(),
            b"CHECK".to_vec(),
            arg(group),
            arg(positions[&group]),
            arg(keys.len()),
        ];
        args.extend(keys.iter().cloned());
        for (k, index) in watches {
            args.push(k.clone());
            args.push(arg(index));
        }
        ask_leader(shared, group, args)
    });
    let ok = all(checks.collect())
        .await
        .iter()
        .all(|a| matches!(a, Some(Reply::Int(1))));
    ok.then_some(values)
}

/// Asks shard `group`'s leader (this node or another) a `CAIRN.TXNREAD` question.
async fn ask_leader(shared: &Shared, group: u64, args: Vec<Vec<u8>>) -> Option<Reply> {
    let repl = shared.replication.as_ref()?;
    match repl.leader_of(group) {
        Some(l) if l != repl.me => ask_node(shared, l, args).await,
        _ => Some(read_here(shared, &args).await),
    }
}

/// Asks node `node` one question that changes nothing (so it may be asked twice) over one of
/// the pooled internal clients' connections, kept open for the next question.
pub(crate) async fn ask_node(shared: &Shared, node: u64, args: Vec<Vec<u8>>) -> Option<Reply> {
    let mut client = coordinator(shared)
        .pool
        .lock()
        .pop()
        .unwrap_or_else(|| Client::internal(shared));
    let answer = crate::replicated::relay_to(shared, &mut client, node, &[args], false, 1).await;
    {
        let mut pool = coordinator(shared).pool.lock();
        if pool.len() < POOL {
            pool.push(client);
        }
    }
    cairn_resp::parse_reply(&answer.ok()?)
}

/// `CAIRN.TXNREAD READ <group> <key>...` → `[log index, record...]`, or an error if this node
/// does not lead the shard or a key is locked or not served here. `CAIRN.TXNREAD CHECK <group>
/// <index> <n> <key>... [<watched key> <watch index>]...` → 1 when none of the keys changed
/// since `index` or is locked or moved away, and no watched key changed since its index; else 0.
/// Both on the leader, after a read barrier (see [`snapshot_read`]).
pub async fn read_here(shared: &Shared, args: &[Vec<u8>]) -> Reply {
    let Some(repl) = shared.replication.as_ref() else {
        return Reply::error("ERR not a cluster");
    };
    let number = |i: usize| -> Option<u64> { std::str::from_utf8(args.get(i)?).ok()?.parse().ok() };
    let (Some(sub), Some(group)) = (args.get(1), number(2)) else {
        return Reply::error("ERR usage: CAIRN.TXNREAD READ|CHECK <shard> ...");
    };
    if !shared.shards.has(group) {
        return Reply::error("ERR no such shard");
    }
    if !matches!(
        crate::replicated::barrier(shared, repl, group).await,
        Ok(Ok(()))
    ) {
        return Reply::error("TRYAGAIN not the shard's leader");
    }
    let store = shared.shards.store(group).lock();
    let usable = |k: &[u8]| {
        store.keyspace.serves(cairn_store::slot::key_slot(k)) && !store.txns.is_locked(k)
    };
    if sub.eq_ignore_ascii_case(b"read") {
        let keys = &args[3..];
        if !keys.iter().all(|k| usable(k)) {
            return Reply::error("TRYAGAIN a key is locked or not served here");
        }
        let now = crate::now_ms();
        let mut items = vec![Reply::Int(store.watches.log_index() as i64)];
        items.extend(keys.iter().map(|k| {
            let r = store.record_of(k, now);
            Reply::Array(vec![
                Reply::Bulk(r.key),
                Reply::Int(r.expire_at),
                if r.expire_at < 0 {
                    Reply::Nil
                } else {
                    Reply::Bulk(r.dump)
                },
            ])
        }));
        return Reply::Array(items);
    }
    let (Some(index), Some(n)) = (number(3), number(4)) else {
        return Reply::error("ERR usage: CAIRN.TXNREAD CHECK <shard> <index> <n> <key>...");
    };
    let n = n as usize;
    let Some(keys) = args.get(5..5 + n) else {
        return Reply::error("ERR usage: CAIRN.TXNREAD CHECK <shard> <index> <n> <key>...");
    };
    let mut unchanged = keys
        .iter()
        .all(|k| usable(k) && !store.watches.changed_since(k, index));
    for w in args[5 + n..].chunks(2) {
        let since = w
            .get(1)
            .and_then(|i| std::str::from_utf8(i).ok()?.parse().ok());
        unchanged &= match since {
            Some(since) => {
                usable(&w[0]) && !store.watch_conflict(&[(w[0].clone(), since)], crate::now_ms())
            }
            None => false,
        };
    }
    Reply::Int(i64::from(unchanged))
}

/// The primary's decision on `id` (RESOLVE, which decides abort once the deadline has
/// passed): waits while it is pending, for a bounded time. None when it cannot be learned.
async fn decision(shared: &Shared, primary: u64, id: &[u8]) -> Option<bool> {
    let until = tokio::time::Instant::now() + Duration::from_millis(DEADLINE_MS + 3 * GRACE_MS);
    while tokio::time::Instant::now() < until {
        let args = vec![b"resolve".to_vec(), id.to_vec(), arg(primary)];
        match step(shared, primary, args).await {
            Ok(Reply::Array(items)) if items.first() == Some(&Reply::Int(1)) => return Some(true),
            Ok(Reply::Int(0)) => return Some(false),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    None
}

async fn release(shared: &Shared, id: &[u8], groups: &[u64]) {
    let steps = groups
        .iter()
        .map(|&g| step(shared, g, vec![b"release".to_vec(), id.to_vec()]));
    all(steps.collect()).await;
}

/// Hands a decision to forget to [`finisher`]; done here when the queue is full.
async fn finish(shared: &Shared, f: Finish) {
    match coordinator(shared).queue.try_send(f) {
        Ok(()) => {}
        Err(tokio::sync::mpsc::error::TrySendError::Full(f))
        | Err(tokio::sync::mpsc::error::TrySendError::Closed(f)) => finish_now(shared, f).await,
    }
}

async fn finish_now(shared: &Shared, f: Finish) {
    let _ = step(shared, f.primary, vec![b"forget".to_vec(), f.id]).await;
}

/// Applies each shard's writes (APPLY is idempotent); true when every shard confirmed.
async fn push_out(shared: &Shared, id: &[u8], writes: &Writes) -> bool {
    let steps = writes.iter().map(|(&g, records)| {
        let mut args = vec![b"apply".to_vec(), id.to_vec()];
        push_records(&mut args, records);
        step(shared, g, args)
    });
    all(steps.collect()).await.iter().all(Result::is_ok)
}

/// Forgets committed transactions' decisions in the background, a bounded number at once.
pub async fn finisher(shared: Arc<Shared>) {
    if shared.replication.is_none() {
        return;
    }
    let Some(mut rx) = coordinator(&shared).queued.lock().take() else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(FINISHING));
    while let Some(f) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            finish_now(&shared, f).await;
            drop(permit);
        });
    }
}

/// Resolves, on the shards this node leads, locks past their deadline and decisions left
/// behind. Runs for the node's life.
pub async fn recover(shared: Arc<Shared>) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = shutdown.changed() => return,
        }
        for (group, g) in repl.groups() {
            if g.is_leader {
                recover_shard(&shared, group).await;
            }
        }
    }
}

async fn recover_shard(shared: &Shared, group: u64) {
    let now = crate::now_ms();
    let (stuck, lingering) = {
        let store = shared.shards.store(group).lock();
        let stuck: Vec<(Vec<u8>, u64)> = store
            .txns
            .prepared
            .iter()
            .filter(|(_, p)| p.deadline + GRACE_MS < now)
            .map(|(id, p)| (id.clone(), p.primary))
            .take(64)
            .collect();
        let lingering: Vec<(Vec<u8>, Writes)> = store
            .txns
            .decisions
            .iter()
            .filter_map(|(id, d)| match d {
                txn::Decision::Commit { at, writes } if at + LINGER_MS < now => {
                    Some((id.clone(), writes.clone()))
                }
                _ => None,
            })
            .take(16)
            .collect();
        (stuck, lingering)
    };
    let c = coordinator(shared);
    for (id, primary) in stuck {
        let asked = vec![b"resolve".to_vec(), id.clone(), arg(group)];
        let resolved = match step(shared, primary, asked).await {
            Ok(Reply::Array(items)) if items.first() == Some(&Reply::Int(1)) => {
                match records_of(&items[1..]) {
                    Some(records) if primary != group => {
                        let mut args = vec![b"apply".to_vec(), id.clone()];
                        push_records(&mut args, &records);
                        step(shared, group, args).await.is_ok()
                    }
                    _ => false,
                }
            }
            // Aborted (on the primary itself, RESOLVE released the locks already).
            Ok(Reply::Int(0)) if primary == group => true,
            Ok(Reply::Int(0)) => step(shared, group, vec![b"release".to_vec(), id.clone()])
                .await
                .is_ok(),
            _ => false,
        };
        if resolved {
            c.recovered.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                group,
                id = %String::from_utf8_lossy(&id),
                "resolved a cross-shard transaction left behind by its coordinator"
            );
        }
    }
    for (id, writes) in lingering {
        if push_out(shared, &id, &writes).await {
            let _ = step(shared, group, vec![b"forget".to_vec(), id]).await;
        }
    }
}

/// Runs `cmds` over shards (one transaction when `block`), trying again while a try is
/// refused (a key locked by another transaction, a slot moving, a leader changing), for at
/// most [`crate::replicated::WAIT`].
pub async fn run(
    shared: &Shared,
    proto: Protocol,
    cmds: &[Vec<Vec<u8>>],
    watched: &[Watched],
    block: bool,
) -> Reply {
    coordinator(shared).runs.fetch_add(1, Ordering::Relaxed);
    let until = tokio::time::Instant::now() + crate::replicated::WAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match attempt(shared, proto, cmds, watched, block).await {
            Attempt::Done(reply) => return reply,
            Attempt::Again(why) => {
                coordinator(shared).retried.fetch_add(1, Ordering::Relaxed);
                // Randomized, growing pauses: two transactions that keep meeting each other's
                // locks stop meeting.
                let jitter = crate::dispatch::next_seed() % (pause.as_micros() as u64 + 1);
                let wait = pause + Duration::from_micros(jitter);
                if tokio::time::Instant::now() + wait >= until {
                    let why = why.strip_prefix("TRYAGAIN ").unwrap_or(&why).to_string();
                    return Reply::error(format!("TRYAGAIN cross-shard transaction: {why}"));
                }
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// One command whose keys are in several shards.
pub async fn command(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let started = std::time::Instant::now();
    let name = match shared.table.commands.lookup(&args) {
        Lookup::Found(spec) => spec.name.clone(),
        Lookup::Error(e) => return e.to_bytes(client.proto),
    };
    let reply = run(shared, client.proto, &[args], &[], false).await;
    let failed = matches!(reply, Reply::Error(_));
    shared
        .stats
        .commands
        .record(&name, started.elapsed(), failed);
    if failed {
        shared.stats.error_reply(&reply);
    }
    reply.to_bytes(client.proto)
}
