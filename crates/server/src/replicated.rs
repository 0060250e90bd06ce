//! Replicated mode: the keyspace is one Raft group across the nodes of `--initial-cluster`.
//!
//! A write is proposed as a log entry (time, seed and protocol stamped here, on the node that
//! received it) and answered with the reply every replica computed when applying it. A read
//! waits for the leader's read barrier (ReadIndex: leadership confirmed by a quorum, everything
//! committed before it applied) and then runs against the local store. A node that is not the
//! leader relays the request to the leader's client port, so plain clients work against any
//! node. Following Redis Cluster's convention, a node's client port is its bus port - 10000.
//!
//! WATCH records each key with the log index it was watched at (after a read barrier); the EXEC
//! entry carries them and every replica aborts it the same way if a key changed since
//! (`cairn_store::watch`). A follower's client that WATCHes is relayed to the leader, whole
//! transaction and all.
//!
//! Not yet here: connection commands inside MULTI, `-MOVED` for cluster-aware clients, many
//! groups.

use crate::connection::Client;
use crate::dispatch::{self, Target};
use crate::Shared;
use cairn_commands::{Flags, Lookup};
use cairn_replication::{GroupStatus, Node, NodeError};
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The one Raft group holding the keyspace.
pub const GROUP: u64 = 1;
/// How long a client waits for the cluster before getting `-TRYAGAIN`.
pub const WAIT: Duration = Duration::from_secs(5);
/// The longest reply relayed from the leader.
const MAX_RELAYED_REPLY: usize = 512 * 1024 * 1024 + 1024;

pub struct Replication {
    pub node: Arc<Node>,
    pub me: u64,
    /// The client address (bus port - 10000) of every node in `--initial-cluster`.
    pub client_addrs: HashMap<u64, SocketAddr>,
}

impl Replication {
    /// This node's view of the keyspace's group (a copy), once the group is open.
    pub fn group(&self) -> Option<GroupStatus> {
        self.node.status().borrow().groups.get(&GROUP).cloned()
    }

    /// Where node `id` serves clients: from `--initial-cluster`, or for a member added later,
    /// from the bus address its conf change carried (by the same convention, port - 10000).
    pub fn client_addr(&self, id: u64) -> Option<SocketAddr> {
        if let Some(&a) = self.client_addrs.get(&id) {
            return Some(a);
        }
        added_client_addr(&self.group()?, id)
    }

    /// Every known member's client address, by id.
    pub fn all_client_addrs(&self) -> std::collections::BTreeMap<u64, SocketAddr> {
        let mut all: std::collections::BTreeMap<u64, SocketAddr> =
            self.client_addrs.iter().map(|(&k, &v)| (k, v)).collect();
        if let Some(g) = self.group() {
            for &id in g.members.keys() {
                if let Some(a) = added_client_addr(&g, id) {
                    all.entry(id).or_insert(a);
                }
            }
        }
        all
    }
}

/// The client address of a member added by a conf change (its bus address's port - 10000).
fn added_client_addr(g: &GroupStatus, id: u64) -> Option<SocketAddr> {
    let bus: SocketAddr = g.members.get(&id)?.parse().ok()?;
    Some(SocketAddr::new(bus.ip(), bus.port().checked_sub(10000)?))
}

/// A client's connection to the leader, for relaying.
pub struct Relay {
    leader: u64,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Relay {
    /// Whether the leader closed this idle connection, checked before reuse so that a write
    /// is never sent on a connection already known dead and then reported as possibly applied.
    fn closed(&self) -> bool {
        cairn_replication::bus::peer_closed(&self.stream)
    }
}

/// How long to pause before asking again while the group has no leader, or its leader is
/// handing leadership over (raft drops proposals meanwhile) or is too busy to queue more.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Whether `e` says the request was certainly not started and a leader may appear soon.
fn worth_waiting(e: &NodeError) -> bool {
    matches!(
        e,
        NodeError::Busy | NodeError::NotLeader { leader: None, .. }
    )
}

/// Runs `attempt` until it gives something other than a `worth_waiting` error, pausing
/// `RETRY_PAUSE` between tries, for at most `WAIT`: the caller sees latency instead of an error
/// during an election or a leadership transfer. Retrying is safe because those errors mean the
/// request never reached raft.
async fn while_leaderless<T, F, Fut>(
    mut attempt: F,
) -> Result<Result<T, NodeError>, tokio::time::error::Elapsed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, NodeError>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Err(e))
                if worth_waiting(&e) && tokio::time::Instant::now() + RETRY_PAUSE < deadline =>
            {
                tokio::time::sleep(RETRY_PAUSE).await
            }
            other => return other,
        }
    }
}

/// Proposes `entry`, waiting while no leader is known (see [`while_leaderless`]).
async fn propose(
    repl: &Replication,
    entry: &LogEntry,
) -> Result<Result<Vec<u8>, NodeError>, tokio::time::error::Elapsed> {
    while_leaderless(|| repl.node.propose(GROUP, entry.encode())).await
}

/// Returns once reading the local store is linearizable: at once while this node holds a
/// read lease whose index is applied here, else after a read barrier (waiting while no leader
/// is known, see [`while_leaderless`]).
async fn barrier(
    shared: &Shared,
    repl: &Replication,
) -> Result<Result<(), NodeError>, tokio::time::error::Elapsed> {
    if let Some(index) = repl.node.lease_read_index(GROUP) {
        if shared.store.lock().watches.log_index() >= index {
            return Ok(Ok(()));
        }
    }
    while_leaderless(|| repl.node.read_barrier(GROUP)).await
}

fn tryagain(why: &str) -> Reply {
    Reply::error(format!("TRYAGAIN {why}"))
}

fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A follower's client that WATCHed through the leader.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WatchRelay {
    /// Its requests go to the leader until EXEC, DISCARD, UNWATCH or RESET.
    Live,
    /// The connection to the leader broke: the watch and any queued commands are gone, so every
    /// request fails until the transaction ends (none may run outside it by mistake).
    Broken,
}

/// The most argument bytes one pipelined run of writes carries in one log entry.
const MAX_RUN_BYTES: usize = 1024 * 1024;

/// A request that can share a log entry (writes) or a read barrier (reads) with its neighbours
/// in a pipeline.
enum Plain {
    Write,
    Read(cairn_store::Handler),
}

fn plain(shared: &Shared, client: &Client, args: &[Vec<u8>]) -> Option<Plain> {
    if client.multi.is_some() {
        return None;
    }
    let Lookup::Found(spec) = shared.table.commands.lookup(args) else {
        return None;
    };
    match shared.table.target_of(spec) {
        Some(Target::Store(_)) if spec.is_write() => Some(Plain::Write),
        Some(Target::Store(h)) => Some(Plain::Read(h)),
        _ => None,
    }
}

/// Handles the next requests of a connection's pipeline, appending their replies to `out`: a
/// run of plain writes becomes one log entry (one proposal, applied atomically, one reply per
/// command), a run of plain reads shares one read barrier; anything else runs alone.
pub async fn handle_pending(
    shared: &Shared,
    client: &mut Client,
    pending: &mut VecDeque<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    let Some(first) = pending.front() else {
        return;
    };
    if client.watch_relay.is_some() {
        let args = pending.pop_front().expect("front");
        out.extend_from_slice(&relay_watching(shared, client, args).await);
        return;
    }
    match plain(shared, client, first) {
        Some(Plain::Write) => {
            let mut run = Vec::new();
            let mut bytes = 0;
            while let Some(args) = pending.front() {
                if !run.is_empty()
                    && (bytes >= MAX_RUN_BYTES
                        || !matches!(plain(shared, client, args), Some(Plain::Write)))
                {
                    break;
                }
                bytes += args.iter().map(Vec::len).sum::<usize>();
                run.push(pending.pop_front().expect("front"));
            }
            out.extend_from_slice(&write(shared, client, run, None).await);
        }
        Some(Plain::Read(h)) => {
            let mut run = vec![(pending.pop_front().expect("front"), h)];
            while let Some(args) = pending.front() {
                let Some(Plain::Read(h)) = plain(shared, client, args) else {
                    break;
                };
                run.push((pending.pop_front().expect("front"), h));
            }
            out.extend_from_slice(&read(shared, client, run).await);
        }
        None => {
            let args = pending.pop_front().expect("front");
            out.extend_from_slice(&handle(shared, client, args).await);
        }
    }
}

/// Handles one request in replicated mode; returns the encoded reply.
pub async fn handle(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    if args[0].eq_ignore_ascii_case(b"cairn.member") {
        return crate::cmd::member::member(shared, client, args).await;
    }
    let spec = match shared.table.commands.lookup(&args) {
        Lookup::Found(spec) => spec.clone(),
        Lookup::Error(e) => {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            return e.to_bytes(proto);
        }
    };
    let target = shared.table.target_of(&spec);
    if let Some(queue) = client.multi.as_mut() {
        if !matches!(
            spec.name.as_str(),
            "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
        ) {
            if spec.flags.contains(Flags::NO_MULTI) || !matches!(target, Some(Target::Store(_))) {
                client.multi_failed = true;
                return Reply::error(
                    "ERR only data commands can be queued in MULTI in replicated mode",
                )
                .to_bytes(proto);
            }
            queue.push(args);
            return Reply::Status("QUEUED".into()).to_bytes(proto);
        }
    }
    match (spec.name.as_str(), target) {
        ("watch", _) => watch(shared, client, args).await,
        ("exec", _) => exec(shared, client).await,
        ("unwatch" | "discard" | "reset", _) => {
            client.watched_at.clear();
            let mut store = shared.store.lock();
            dispatch::call(shared, client, &mut store, &spec, &args).to_bytes(proto)
        }
        (_, Some(Target::Store(_))) if spec.is_write() => {
            write(shared, client, vec![args], None).await
        }
        (_, Some(Target::Store(handler))) => read(shared, client, vec![(args, handler)]).await,
        _ => {
            let mut store = shared.store.lock();
            dispatch::call(shared, client, &mut store, &spec, &args).to_bytes(proto)
        }
    }
}

async fn exec(shared: &Shared, client: &mut Client) -> Vec<u8> {
    let proto = client.proto;
    let Some(queue) = client.multi.take() else {
        return Reply::error("ERR EXEC without MULTI").to_bytes(proto);
    };
    client
        .info
        .in_multi
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let watched = std::mem::take(&mut client.watched_at);
    if std::mem::take(&mut client.multi_failed) {
        return Reply::error("EXECABORT Transaction discarded because of previous errors.")
            .to_bytes(proto);
    }
    if queue.is_empty() && watched.is_empty() {
        return Reply::Array(vec![]).to_bytes(proto);
    }
    write(shared, client, queue, Some(watched)).await
}

/// WATCH under replication: after a read barrier on the leader, each key is recorded with the
/// index of the last applied entry; the EXEC entry carries them and every replica checks them
/// when applying it. A follower sends the WATCH, and then the whole transaction, to the leader.
async fn watch(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    if client.multi.is_some() {
        return Reply::error("ERR WATCH inside MULTI is not allowed").to_bytes(proto);
    }
    let repl = shared.replication.as_ref().expect("replicated mode");
    match barrier(shared, repl).await {
        Ok(Ok(())) => {
            let index = shared.store.lock().watches.log_index();
            // A set, not a scan per key: WATCH with many keys stays linear.
            let mut seen: std::collections::HashSet<Vec<u8>> =
                client.watched_at.iter().map(|(k, _)| k.clone()).collect();
            for key in &args[1..] {
                if seen.insert(key.clone()) {
                    client.watched_at.push((key.clone(), index));
                }
            }
            Reply::OK.to_bytes(proto)
        }
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me && client.watched_at.is_empty() => {
            match relay(shared, client, l, &[args], true, 1).await {
                Ok(reply) => {
                    if reply.starts_with(b"+") {
                        client.watch_relay = Some(WatchRelay::Live);
                    }
                    reply
                }
                Err(e) => e.to_bytes(proto),
            }
        }
        Ok(Err(NodeError::NotLeader { .. })) => {
            tryagain("the leader changed while watching; UNWATCH and retry").to_bytes(proto)
        }
        Ok(Err(NodeError::Stopped(why))) => {
            Reply::error(format!("ERR replication stopped: {why}")).to_bytes(proto)
        }
        Ok(Err(_)) | Err(_) => tryagain("no leader reachable, retry").to_bytes(proto),
    }
}

/// A request from a client whose WATCH lives on the leader: it goes there on the same
/// connection (never resent), until the transaction ends.
async fn relay_watching(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let ends = matches!(
        name.as_str(),
        "exec" | "discard" | "unwatch" | "reset" | "quit"
    );
    let leader = client.relay.as_ref().map(|r| r.leader);
    let reply = match (client.watch_relay, leader) {
        (Some(WatchRelay::Live), Some(l)) => {
            match relay(shared, client, l, std::slice::from_ref(&args), true, 1).await {
                Ok(reply) => reply,
                Err(e) => {
                    client.watch_relay = Some(WatchRelay::Broken);
                    e.to_bytes(proto)
                }
            }
        }
        _ => {
            client.watch_relay = Some(WatchRelay::Broken);
            Reply::error(
                "ERR the connection to the leader was lost during WATCH/MULTI; the transaction \
                 is aborted (end it with EXEC, DISCARD or UNWATCH)",
            )
            .to_bytes(proto)
        }
    };
    if ends {
        client.watch_relay = None;
        if name == "quit" {
            client.close_after_reply = true;
        }
    }
    reply
}

/// Proposes commands as one entry (a transaction when `block`), relaying to the leader when
/// this node is not it. Returns one reply per command, or one for a transaction.
async fn write(
    shared: &Shared,
    client: &mut Client,
    cmds: Vec<Vec<Vec<u8>>>,
    transaction: Option<Vec<(Vec<u8>, u64)>>,
) -> Vec<u8> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let block = transaction.is_some();
    let watching = transaction.as_ref().is_some_and(|w| !w.is_empty());
    let replies = if block { 1 } else { cmds.len() };
    let proto = client.proto;
    let fail = |reply: Reply| reply.to_bytes(proto).repeat(replies);
    let op = match transaction {
        Some(watched) if !watched.is_empty() => Operation::WatchedTransaction { watched, cmds },
        Some(_) => Operation::Transaction(cmds),
        None => Operation::Commands(cmds),
    };
    let entry = LogEntry {
        now_ms: crate::now_ms(),
        seed: dispatch::next_seed(),
        proto,
        op,
    };
    match propose(repl, &entry).await {
        Ok(Ok(reply)) => reply,
        // The watch was taken here and cannot travel with a relayed EXEC: nothing ran, so the
        // transaction aborts as if a watched key had changed (clients retry that).
        Ok(Err(NodeError::NotLeader { .. })) if watching => Reply::NilArray.to_bytes(proto),
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me => {
            // The commands come back out of the entry only on this (rare) path: the common one
            // never copies them.
            if !block {
                if let Operation::Commands(cmds) = &entry.op {
                    if let Some(moved) = redirects(shared, repl, l, cmds, proto) {
                        return moved;
                    }
                }
            }
            let mut requests = match entry.op {
                Operation::Commands(c) | Operation::Transaction(c) => c,
                Operation::WatchedTransaction { cmds, .. } => cmds,
                Operation::Expire(_) => unreachable!("write() proposes commands"),
            };
            let keep = if block {
                requests.insert(0, vec![b"MULTI".to_vec()]);
                requests.push(vec![b"EXEC".to_vec()]);
                1
            } else {
                requests.len()
            };
            match relay(shared, client, l, &requests, true, keep).await {
                Ok(reply) => reply,
                Err(e) => fail(e),
            }
        }
        Ok(Err(NodeError::NotLeader { .. })) => fail(tryagain("no leader elected yet, retry")),
        Ok(Err(NodeError::Indeterminate { .. })) => fail(tryagain(
            "leadership changed; the command may or may not have been applied",
        )),
        Ok(Err(NodeError::Busy)) => fail(tryagain("node busy")),
        Ok(Err(NodeError::Stopped(why))) => {
            fail(Reply::error(format!("ERR replication stopped: {why}")))
        }
        Err(_) => fail(tryagain(
            "timed out waiting for the cluster; the command may or may not have been applied",
        )),
    }
}

/// Linearizable reads: one read barrier on the leader, then each command against the local
/// store. A follower relays them to the leader.
async fn read(
    shared: &Shared,
    client: &mut Client,
    run: Vec<(Vec<Vec<u8>>, cairn_store::Handler)>,
) -> Vec<u8> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let proto = client.proto;
    let fail = |reply: Reply| reply.to_bytes(proto).repeat(run.len());
    match barrier(shared, repl).await {
        Ok(Ok(())) => {
            let mut out = Vec::new();
            let mut store = shared.store.lock();
            for (args, handler) in &run {
                let env = cairn_store::Env {
                    now_ms: crate::now_ms(),
                    seed: dispatch::next_seed(),
                    proto,
                };
                store.execute(*handler, args, &env).encode(proto, &mut out);
            }
            out
        }
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me => {
            let requests: Vec<_> = run.iter().map(|(a, _)| a.clone()).collect();
            if let Some(moved) = redirects(shared, repl, l, &requests, proto) {
                return moved;
            }
            match relay(shared, client, l, &requests, false, requests.len()).await {
                Ok(reply) => reply,
                Err(e) => fail(e),
            }
        }
        Ok(Err(NodeError::Stopped(why))) => {
            fail(Reply::error(format!("ERR replication stopped: {why}")))
        }
        Ok(Err(_)) | Err(_) => fail(tryagain("no leader reachable, retry")),
    }
}

/// Sends `requests` to the leader's client port and returns the last `keep` replies, or the
/// error to answer each request with. A write is never sent twice: once it may have reached the
/// leader, a failure is reported as indeterminate (the leader may have applied it). A read has
/// no effect, so it is retried once on a fresh connection when a cached one turns out to be
/// dead.
async fn relay(
    shared: &Shared,
    client: &mut Client,
    leader: u64,
    requests: &[Vec<Vec<u8>>],
    is_write: bool,
    keep: usize,
) -> Result<Vec<u8>, Reply> {
    let proto = client.proto;
    let repl = shared.replication.as_ref().expect("replicated mode");
    let attempts = if is_write { 1 } else { 2 };
    for _ in 0..attempts {
        if client
            .relay
            .as_ref()
            .is_some_and(|r| r.leader != leader || r.closed())
        {
            client.relay = None;
        }
        if client.relay.is_none() {
            // Nothing was sent: the command definitely did not run.
            client.relay = Some(connect_leader(repl, leader, proto).await?);
        }
        let r = client.relay.as_mut().expect("open");
        match relay_on(r, requests).await {
            Some(replies) => {
                let from = replies.len().saturating_sub(keep);
                return Ok(replies[from..].concat());
            }
            None => client.relay = None,
        }
    }
    Err(if is_write {
        tryagain("lost the connection to the leader; the command may or may not have been applied")
    } else {
        tryagain("lost the connection to the leader")
    })
}

/// Opens a relay connection to `leader`. A leader that cannot be reached may just have
/// stepped down (a graceful shutdown hands leadership over, then exits): until `WAIT` runs
/// out, keep trying whichever node this one now knows as leader.
async fn connect_leader(repl: &Replication, leader: u64, proto: Protocol) -> Result<Relay, Reply> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut leader = leader;
    loop {
        if let Some(addr) = repl.client_addr(leader) {
            if let Some(r) = open_relay(addr, leader, proto).await {
                return Ok(r);
            }
        }
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(tryagain("cannot reach the leader"));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        match repl.group().and_then(|g| g.leader) {
            Some(l) if l != repl.me => leader = l,
            // This node leads now, or nobody does: the caller starts over.
            _ => return Err(tryagain("the leader changed, retry")),
        }
    }
}

/// With `cluster-redirects` on, the `-MOVED` replies (one per command) that send a
/// cluster-aware client to the leader; None to relay instead (redirects off, or a command
/// without keys, which a cluster client could not route by slot).
fn redirects(
    shared: &Shared,
    repl: &Replication,
    leader: u64,
    cmds: &[Vec<Vec<u8>>],
    proto: Protocol,
) -> Option<Vec<u8>> {
    if !shared.config.lock().cluster_redirects {
        return None;
    }
    let addr = repl.client_addr(leader)?;
    let mut out = Vec::new();
    for args in cmds {
        let Lookup::Found(spec) = shared.table.commands.lookup(args) else {
            return None;
        };
        let first = *spec.key_positions(args).first()?;
        let slot = cairn_store::slot::key_slot(&args[first]);
        Reply::error(format!("MOVED {slot} {addr}")).encode(proto, &mut out);
    }
    Some(out)
}

/// Sends one command that changes state to the leader, once (see [`relay`]).
pub async fn relay_once(
    shared: &Shared,
    client: &mut Client,
    leader: u64,
    args: Vec<Vec<u8>>,
) -> Result<Vec<u8>, Reply> {
    relay(shared, client, leader, &[args], true, 1).await
}

async fn open_relay(addr: SocketAddr, leader: u64, proto: Protocol) -> Option<Relay> {
    let stream = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let _ = stream.set_nodelay(true);
    let mut r = Relay {
        leader,
        stream,
        buf: Vec::new(),
    };
    if proto == Protocol::Resp3 {
        relay_on(&mut r, &[vec![b"HELLO".to_vec(), b"3".to_vec()]]).await?;
    }
    Some(r)
}

/// Writes the requests and reads one reply per request.
async fn relay_on(r: &mut Relay, requests: &[Vec<Vec<u8>>]) -> Option<Vec<Vec<u8>>> {
    let bytes: Vec<u8> = requests.iter().flat_map(|a| encode_request(a)).collect();
    tokio::time::timeout(WAIT, r.stream.write_all(&bytes))
        .await
        .ok()?
        .ok()?;
    let limits = cairn_resp::Limits {
        max_bulk_len: MAX_RELAYED_REPLY,
        ..Default::default()
    };
    let mut replies = Vec::with_capacity(requests.len());
    for _ in requests {
        loop {
            if let Some(n) = cairn_resp::reply_frame_len(&r.buf, &limits).ok()? {
                replies.push(r.buf.drain(..n).collect());
                break;
            }
            if r.buf.len() > MAX_RELAYED_REPLY {
                return None;
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = tokio::time::timeout(WAIT, r.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            r.buf.extend_from_slice(&chunk[..n]);
        }
    }
    Some(replies)
}

/// Active expiry under replication: the leader proposes the removal of keys it finds due;
/// followers leave expiry to the log.
pub async fn expire_due(shared: &Shared, repl: &Replication) -> usize {
    if !repl
        .node
        .status()
        .borrow()
        .groups
        .get(&GROUP)
        .is_some_and(|g| g.is_leader)
    {
        return 0;
    }
    let now = crate::now_ms();
    let due = shared
        .store
        .lock()
        .due_keys(now, crate::expiry::MAX_PER_CYCLE);
    if due.is_empty() {
        return 0;
    }
    let entry = LogEntry {
        now_ms: now,
        seed: dispatch::next_seed(),
        proto: Protocol::Resp2,
        op: Operation::Expire(due),
    };
    match tokio::time::timeout(WAIT, repl.node.propose(GROUP, entry.encode())).await {
        Ok(Ok(reply)) => std::str::from_utf8(&reply)
            .ok()
            .and_then(|s| s.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}
