//! Replicated mode: the keyspace is divided into shards (`crate::shards`), each one Raft group
//! on `--replicas` of the nodes (`crate::placement`). A request runs on the shard that owns its
//! keys; a request (or a MULTI/EXEC block) whose keys are in several shards runs as a
//! cross-shard transaction (`crate::cross`), and the keyless commands that look at the whole keyspace
//! (DBSIZE, KEYS, SCAN, RANDOMKEY, FLUSHALL, FLUSHDB) ask every shard and merge the answers.
//!
//! A write is proposed as a log entry (time, seed and protocol stamped here, on the node that
//! received it) and answered with the reply every replica computed when applying it. A read
//! waits for the leader's read barrier (ReadIndex: leadership confirmed by a quorum, everything
//! committed before it applied) and then runs against the local store. A node that is not the
//! leader, or holds no replica of the shard, relays the request to the leader's client port, so
//! plain clients work against any node; the leaders of different shards may be different nodes. Following Redis Cluster's
//! convention, a node's client port is its bus port - 10000.
//!
//! WATCH records each key with the log index it was watched at (after a read barrier); the EXEC
//! entry carries them and every replica aborts it the same way if a key changed since
//! (`cairn_store::watch`). A follower's client that WATCHes is relayed to the leader, whole
//! transaction and all.
//!
//! Not yet here: connection commands inside MULTI.

use crate::connection::Client;
use crate::dispatch::{self, Target};
use crate::Shared;
use cairn_commands::{CommandSpec, Flags, Lookup};
use cairn_replication::bus::PeerStream;
use cairn_replication::{GroupStatus, Node, NodeError};
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use cairn_store::slot::SLOTS;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a client waits for the cluster before getting `-TRYAGAIN`.
pub const WAIT: Duration = Duration::from_secs(5);
/// The longest reply relayed from the leader.
const MAX_RELAYED_REPLY: usize = 512 * 1024 * 1024 + 1024;

pub struct Replication {
    pub node: Arc<Node>,
    pub me: u64,
    /// The client address (bus port - 10000) of every node in `--initial-cluster`.
    pub client_addrs: HashMap<u64, SocketAddr>,
    /// The meta group's state as this node has applied it.
    pub meta: Arc<parking_lot::Mutex<crate::meta::MetaState>>,
    /// What the other nodes say of the groups they lead (see `placement.rs`): how requests
    /// for a shard this node holds no replica of find its leader.
    pub hints: crate::placement::Hints,
    /// Held while a replica is opened or deleted here (`crate::placement`), so that a replica
    /// opened for a move is never deleted on a decision taken about the one before it.
    pub placing: tokio::sync::Mutex<()>,
    /// The same users as `Shared::acl`, and the secret nodes show each other.
    pub acl: Arc<crate::acl::Acl>,
    /// Entries this node proposed and saw applied, per group (`/metrics`).
    pub proposals: parking_lot::Mutex<std::collections::BTreeMap<u64, u64>>,
    /// The cross-shard transactions this node coordinates (`crate::cross`).
    pub coordinator: crate::cross::Coordinator,
    /// `tls-cluster yes`: the mutual TLS of the bus, which this node's connections to the
    /// others' client ports use too (see [`PeerStream`]).
    pub peer_tls: Option<cairn_replication::bus::BusTls>,
}

impl Replication {
    /// This node's view of shard `group` (a copy), once the group is open.
    pub fn group(&self, group: u64) -> Option<GroupStatus> {
        self.node.status().borrow().groups.get(&group).cloned()
    }

    /// This node's view of every shard's group it holds, by id (the meta group left out).
    pub fn groups(&self) -> std::collections::BTreeMap<u64, GroupStatus> {
        let mut groups = self.all_groups();
        groups.remove(&crate::meta::GROUP);
        groups
    }

    /// This node's view of every group it holds, the meta group's included.
    pub fn all_groups(&self) -> std::collections::BTreeMap<u64, GroupStatus> {
        self.node.status().borrow().groups.clone()
    }

    /// The leader of shard `group` as this node knows it: from its own replica, or for a
    /// shard it holds none of, as the leader last said.
    pub fn leader_of(&self, group: u64) -> Option<u64> {
        match self.node.status().borrow().groups.get(&group) {
            Some(g) if !g.voters.is_empty() => g.leader,
            _ => self.hints.leader(group),
        }
    }

    /// Whether this node holds a replica of `group` that serves: one that was sent the
    /// group's state (a new replica waits for its first snapshot with no configuration).
    pub fn hosts(&self, group: u64) -> bool {
        self.node
            .status()
            .borrow()
            .groups
            .get(&group)
            .is_some_and(|g| !g.voters.is_empty())
    }

    /// Shard `group` as this node sees it: its own replica's status, or for a shard it holds
    /// no serving replica of, what the leader last said (leader, term, voters and learners
    /// only).
    pub fn view(&self, group: u64) -> Option<GroupStatus> {
        self.group(group)
            .filter(|g| !g.voters.is_empty())
            .or_else(|| self.hints.view(group))
    }

    /// Why a request for `group` cannot run here: this node holds no replica of it (the
    /// caller relays to the leader the others named, or waits while none is known).
    fn not_here(&self, group: u64) -> Option<NodeError> {
        (!self.hosts(group)).then(|| NodeError::NotLeader {
            group,
            leader: self.hints.leader(group).filter(|&l| l != self.me),
        })
    }

    /// Where node `id` serves clients: from `--initial-cluster`, or for a member added later,
    /// from the bus address its conf change carried (by the same convention, port - 10000).
    pub fn client_addr(&self, id: u64) -> Option<SocketAddr> {
        if let Some(&a) = self.client_addrs.get(&id) {
            return Some(a);
        }
        let status = self.node.status();
        let groups = &status.borrow().groups;
        groups.values().find_map(|g| added_client_addr(g, id))
    }

    /// Every known member's client address, by id.
    pub fn all_client_addrs(&self) -> std::collections::BTreeMap<u64, SocketAddr> {
        let mut all: std::collections::BTreeMap<u64, SocketAddr> =
            self.client_addrs.iter().map(|(&k, &v)| (k, v)).collect();
        for g in self.all_groups().values() {
            for &id in g.members.keys() {
                if let Some(a) = added_client_addr(g, id) {
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
    /// The protocol its replies come in (the client's when it was opened: a client that
    /// changes protocol with HELLO opens new ones).
    proto: Protocol,
    stream: PeerStream,
    buf: Vec<u8>,
}

impl Relay {
    /// Whether the leader closed this idle connection, checked before reuse so that a write
    /// is never sent on a connection already known dead and then reported as possibly applied.
    fn closed(&self) -> bool {
        cairn_replication::bus::peer_closed(self.stream.tcp())
    }
}

/// How long a command that met a cross-shard transaction's lock waits before trying again.
const LOCK_PAUSE: Duration = Duration::from_millis(2);

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

/// Proposes `entry` to shard `group`, waiting while no leader is known (see
/// [`while_leaderless`]).
async fn propose(
    repl: &Replication,
    group: u64,
    entry: &LogEntry,
) -> Result<Result<Vec<u8>, NodeError>, tokio::time::error::Elapsed> {
    let outcome = while_leaderless(|| async {
        match repl.not_here(group) {
            Some(e) => Err(e),
            None => repl.node.propose(group, entry.encode()).await,
        }
    })
    .await;
    if matches!(outcome, Ok(Ok(_))) {
        *repl.proposals.lock().entry(group).or_default() += 1;
    }
    outcome
}

/// Returns once reading the local store is linearizable: at once while this node holds a
/// read lease whose index is applied here, else after a read barrier (waiting while no leader
/// is known, see [`while_leaderless`]).
pub(crate) async fn barrier(
    shared: &Shared,
    repl: &Replication,
    group: u64,
) -> Result<Result<(), NodeError>, tokio::time::error::Elapsed> {
    if let Some(index) = repl.node.lease_read_index(group) {
        if shared.shards.store(group).lock().watches.log_index() >= index {
            return Ok(Ok(()));
        }
    }
    while_leaderless(|| async {
        match repl.not_here(group) {
            Some(e) => Err(e),
            None => repl.node.read_barrier(group).await,
        }
    })
    .await
}

fn tryagain(why: &str) -> Reply {
    Reply::error(format!("TRYAGAIN {why}"))
}

/// A write whose outcome this node cannot know: it may have been applied. Not `-TRYAGAIN`,
/// which Redis clients take to mean "not executed" and retry on their own (an INCR could then
/// apply twice): a client must check before it tries again.
fn uncertain(why: &str) -> Reply {
    Reply::error(format!(
        "UNCERTAIN {why}; the command may or may not have been applied"
    ))
}

/// Where a data command runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Route {
    /// On this shard: it owns every key (or the command was sent to it with CAIRN.SHARD).
    Shard(u64),
    /// Its keys are in different shards.
    CrossShard,
    /// It names no key: it concerns the whole keyspace.
    Keyless,
}

fn route(shared: &Shared, spec: &CommandSpec, args: &[Vec<u8>]) -> Route {
    let keys = spec.key_positions(args);
    // A script without keys runs on one shard: the one holding slot 0, whatever it touches
    // (it can only reach keys of that shard's slots).
    if keys.is_empty() && matches!(spec.name.as_str(), "eval" | "eval_ro") {
        return Route::Shard(shared.shards.group_of_slot(0));
    }
    match shared
        .shards
        .group_of_keys(keys.iter().map(|&i| args[i].as_slice()))
    {
        Ok(Some(group)) => Route::Shard(group),
        Ok(None) => Route::Keyless,
        Err(crate::shards::CrossShard) => Route::CrossShard,
    }
}

/// The shard a keyless command runs on when there is only one; None when there are several
/// (the command must ask each, see [`fan_out`]).
fn sole_shard(shared: &Shared) -> Option<u64> {
    let mut groups = shared.shards.stores().map(|(g, _)| g);
    match (groups.next(), groups.next()) {
        (Some(g), None) => Some(g),
        _ => None,
    }
}

/// `CAIRN.SHARD <group> <command> [args...]`: runs a data command on one shard, keys or no
/// keys. Nodes send it to each other to ask every shard's leader for its part of a keyless
/// command; it is not meant for clients (who never need it), but harmless.
fn shard_override(shared: &Shared, args: &[Vec<u8>]) -> Result<(u64, Vec<Vec<u8>>), Reply> {
    let group = args
        .get(1)
        .and_then(|g| std::str::from_utf8(g).ok())
        .and_then(|g| g.parse::<u64>().ok())
        .filter(|g| shared.shards.stores().any(|(s, _)| s == *g));
    match (group, args.len() > 2) {
        (Some(g), true) => Ok((g, args[2..].to_vec())),
        _ => Err(Reply::error(
            "ERR usage: CAIRN.SHARD <shard> <command> [arg ...] with an existing shard",
        )),
    }
}

fn with_shard_prefix(group: u64, args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = vec![b"CAIRN.SHARD".to_vec(), group.to_string().into_bytes()];
    out.extend_from_slice(args);
    out
}

pub fn encode_request(args: &[Vec<u8>]) -> Vec<u8> {
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
    /// Its requests go to this leader until EXEC, DISCARD, UNWATCH or RESET.
    Live(u64),
    /// The connection to the leader broke: the watch and any queued commands are gone, so every
    /// request fails until the transaction ends (none may run outside it by mistake).
    Broken,
}

/// The most argument bytes one pipelined run of writes carries in one log entry.
const MAX_RUN_BYTES: usize = 1024 * 1024;

/// The most reads run (or relayed) together. Their replies are all held before any is
/// written, and a reply may be a large value: this bounds what one connection whose client
/// does not read can make a node hold (the hostile-client test pipelined 1 MB GETs and made a
/// node grow by 2 GB before this bound).
const MAX_READ_RUN: usize = 16;

/// A request that can share a log entry (writes) or a read barrier (reads) with its neighbours
/// in a pipeline.
enum Plain {
    Write(u64),
    Read(cairn_store::Handler, u64),
}

fn plain(shared: &Shared, client: &mut Client, args: &[Vec<u8>]) -> Option<Plain> {
    // In MULTI, or subscribed (some commands are refused then), or with permissions to check,
    // each request runs alone.
    if client.multi.is_some()
        || client.subs.is_some()
        || !crate::cmd::acl::unchecked(shared, client)
    {
        return None;
    }
    let Lookup::Found(spec) = shared.table.commands.lookup(args) else {
        return None;
    };
    // A command that may block runs alone (see `crate::blocking`).
    if crate::blocking::may_block(args)
        && cairn_store::cmd::blocking::blocking_form(&spec.name, args).is_some()
    {
        return None;
    }
    let group = match route(shared, spec, args) {
        Route::Shard(g) => g,
        Route::Keyless => sole_shard(shared)?,
        Route::CrossShard => return None,
    };
    match shared.table.target_of(spec) {
        Some(Target::Store(_)) if spec.is_write() => Some(Plain::Write(group)),
        Some(Target::Store(h)) => Some(Plain::Read(h, group)),
        _ => None,
    }
}

/// Handles the next requests of a connection's pipeline, appending their replies to `out`: a
/// run of plain writes to one shard becomes one log entry (one proposal, applied atomically,
/// one reply per command), a run of plain reads of one shard shares one read barrier; anything
/// else runs alone.
pub async fn handle_pending(
    shared: &Shared,
    client: &mut Client,
    pending: &mut VecDeque<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    let before = pending.len();
    handle_some(shared, client, pending, out).await;
    // (A blocked command's retries count as commands, as Redis counts them.)
    crate::stats::Stats::add(
        &shared.stats.commands_processed,
        before.saturating_sub(pending.len()) as u64,
    );
}

async fn handle_some(
    shared: &Shared,
    client: &mut Client,
    pending: &mut VecDeque<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    if pending.is_empty() {
        return;
    }
    if client.watch_relay.is_some() {
        let args = pending.pop_front().expect("front");
        out.extend_from_slice(&relay_watching(client, args).await);
        return;
    }
    if let Some(n) = spread_prefix(shared, client, pending) {
        let batch: Vec<_> = pending.drain(..n).collect();
        out.extend_from_slice(&spread(shared, client, batch).await);
        return;
    }
    handle_run(shared, client, pending, out).await
}

const INDETERMINATE_RELAY: &str = "lost the connection to the leader";

/// The most requests of a pipeline handled together by [`spread`].
const MAX_SPREAD: usize = 1024;

/// How many requests at the front of `pending` are plain reads and writes that [`spread`]
/// should handle: None unless some of them go to another node (then they are worth sending
/// there together, while this node works on its own).
fn spread_prefix(
    shared: &Shared,
    client: &mut Client,
    pending: &VecDeque<Vec<Vec<u8>>>,
) -> Option<usize> {
    // A lone request (the usual case) never spreads: decide that before any lookup or lock.
    if pending.len() < 2 || shared.shards.len() < 2 {
        return None;
    }
    let repl = shared.replication.as_ref()?;
    if shared.config.lock().cluster_redirects {
        return None;
    }
    let mut n = 0;
    let mut elsewhere = false;
    let mut first_group = None;
    let mut mixed = false;
    let mut bytes = 0;
    let mut reads = 0;
    for args in pending.iter().take(MAX_SPREAD) {
        let group = match plain(shared, client, args) {
            Some(Plain::Write(g)) => g,
            Some(Plain::Read(_, g)) if reads < MAX_READ_RUN => {
                reads += 1;
                g
            }
            _ => break,
        };
        bytes += args.iter().map(Vec::len).sum::<usize>();
        if bytes > MAX_RUN_BYTES && n > 0 {
            break;
        }
        elsewhere |= repl.leader_of(group).is_some_and(|l| l != repl.me);
        mixed |= *first_group.get_or_insert(group) != group;
        n += 1;
    }
    ((elsewhere || mixed) && n > 1).then_some(n)
}

/// A pipeline of plain reads and writes over several shards led by different nodes: the
/// requests for each other node go there in one batch, all sent before this node handles its
/// own (in order, as runs per shard), and the replies come back in request order. Requests
/// for one shard run in their order; requests for different shards may run in any order
/// relative to each other, as they would through a Redis Cluster client (no reply is sent
/// before every request of the batch has been received, so no client can tell).
async fn spread(shared: &Shared, client: &mut Client, batch: Vec<Vec<Vec<u8>>>) -> Vec<u8> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let proto = client.proto;
    // Each request's shard and whether it writes, looked up once.
    let kinds: Vec<(u64, bool)> = batch
        .iter()
        .map(|args| match plain(shared, client, args) {
            Some(Plain::Write(g)) => (g, true),
            Some(Plain::Read(_, g)) => (g, false),
            None => unreachable!("spread_prefix checked every request"),
        })
        .collect();
    // Target node per request: None for this node.
    let target: Vec<Option<u64>> = kinds
        .iter()
        .map(|&(group, _)| repl.leader_of(group).filter(|&l| l != repl.me))
        .collect();
    let mut replies: Vec<Option<Vec<u8>>> = vec![None; batch.len()];
    // Send every other node its part first.
    let mut sent: Vec<(Relay, Vec<usize>, bool)> = Vec::new();
    let mut remotes: Vec<u64> = target.iter().flatten().copied().collect();
    remotes.sort_unstable();
    remotes.dedup();
    for leader in remotes {
        let idx: Vec<usize> = (0..batch.len())
            .filter(|&i| target[i] == Some(leader))
            .collect();
        let writes = idx.iter().any(|&i| kinds[i].1);
        let proto = client.proto;
        client.relays.retain(|r| !r.closed() && r.proto == proto);
        let relay = match client.relays.iter().position(|r| r.leader == leader) {
            Some(at) => Some(client.relays.remove(at)),
            None => match repl.client_addr(leader) {
                Some(addr) => open_relay(repl, addr, leader, proto).await,
                None => None,
            },
        };
        let requests: Vec<Vec<Vec<u8>>> = idx.iter().map(|&i| batch[i].clone()).collect();
        if let Some(mut r) = relay {
            if relay_send(&mut r, &requests).await.is_some() {
                sent.push((r, idx, writes));
            } else if writes {
                // Some of it may have arrived: the writes may have run there.
                for i in idx {
                    replies[i] = Some(uncertain(INDETERMINATE_RELAY).to_bytes(proto));
                }
            }
        }
        // Otherwise nothing reached that node: these run here, through the usual path (which
        // waits for, or relays to, their shards' leaders).
    }
    let relayed: std::collections::HashSet<usize> = sent
        .iter()
        .flat_map(|(_, idx, _)| idx.iter().copied())
        .chain((0..batch.len()).filter(|&i| replies[i].is_some()))
        .collect();
    // This node's own part (and whatever could not be sent), shard after shard, in order
    // within each shard: one run (one entry, or one read barrier) per shard instead of one per
    // change of shard.
    let mut local_idx: Vec<usize> = (0..batch.len()).filter(|i| !relayed.contains(i)).collect();
    local_idx.sort_by_key(|&i| kinds[i].0);
    let mut local: VecDeque<Vec<Vec<u8>>> = local_idx.iter().map(|&i| batch[i].clone()).collect();
    let mut at = 0;
    while !local.is_empty() {
        let before = local.len();
        let mut out = Vec::new();
        handle_run(shared, client, &mut local, &mut out).await;
        // Split the run's replies back to their requests.
        let done = before - local.len();
        let limits = cairn_resp::Limits::default();
        let mut rest = &out[..];
        for &i in &local_idx[at..at + done] {
            let n = cairn_resp::reply_frame_len(rest, &limits)
                .ok()
                .flatten()
                .unwrap_or(rest.len());
            replies[i] = Some(rest[..n].to_vec());
            rest = &rest[n..];
        }
        at += done;
    }
    // Then the other nodes' replies.
    for (mut r, idx, writes) in sent {
        match relay_receive(&mut r, idx.len()).await {
            Some(got) => {
                for (i, reply) in idx.into_iter().zip(got) {
                    replies[i] = Some(reply);
                }
                if client.relays.len() >= MAX_RELAYS {
                    client.relays.remove(0);
                }
                client.relays.push(r);
            }
            None => {
                let reply = if writes {
                    uncertain(INDETERMINATE_RELAY)
                } else {
                    tryagain("lost the connection to the leader")
                };
                for i in idx {
                    replies[i] = Some(reply.to_bytes(proto));
                }
            }
        }
    }
    replies
        .into_iter()
        .map(|r| r.unwrap_or_else(|| tryagain("internal: no reply").to_bytes(proto)))
        .collect::<Vec<_>>()
        .concat()
}

/// Handles one run from the front of `pending` (a run of plain writes or reads of one shard,
/// or one other request), appending its replies to `out`.
async fn handle_run(
    shared: &Shared,
    client: &mut Client,
    pending: &mut VecDeque<Vec<Vec<u8>>>,
    out: &mut Vec<u8>,
) {
    let Some(first) = pending.front() else {
        return;
    };
    match plain(shared, client, first) {
        Some(Plain::Write(group)) => {
            let mut run = Vec::new();
            let mut bytes = 0;
            while let Some(args) = pending.front() {
                if !run.is_empty()
                    && (bytes >= MAX_RUN_BYTES
                        || !matches!(plain(shared, client, args), Some(Plain::Write(g)) if g == group))
                {
                    break;
                }
                bytes += args.iter().map(Vec::len).sum::<usize>();
                run.push(pending.pop_front().expect("front"));
            }
            out.extend_from_slice(&write(shared, client, group, run, None, false).await);
        }
        Some(Plain::Read(h, group)) => {
            let mut run = vec![(pending.pop_front().expect("front"), h)];
            while let Some(args) = pending.front().filter(|_| run.len() < MAX_READ_RUN) {
                match plain(shared, client, args) {
                    Some(Plain::Read(h, g)) if g == group => {
                        run.push((pending.pop_front().expect("front"), h))
                    }
                    _ => break,
                }
            }
            out.extend_from_slice(&read(shared, client, group, run, false).await);
        }
        None => {
            let args = pending.pop_front().expect("front");
            let kept = crate::blocking::may_block(&args).then(|| args.clone());
            let reply = handle(shared, client, args).await;
            if let Some(args) = kept {
                let outcome = crate::blocking::outcome_of_bytes(&reply);
                if crate::blocking::block_on(client, &args, outcome) {
                    return;
                }
            }
            out.extend_from_slice(&reply);
        }
    }
}

/// Handles one request in replicated mode; returns the encoded reply.
pub async fn handle(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    if args[0].len() > 6 && args[0][..6].eq_ignore_ascii_case(b"cairn.") {
        if args[0].eq_ignore_ascii_case(b"cairn.relay") {
            return relay_hello(shared, client, &args);
        }
        // The cluster's own commands: for its nodes, and for users who may run everything.
        if !crate::cmd::acl::unchecked(shared, client) {
            return Reply::error(
                "NOPERM this user has no permissions to run the cluster's internal commands",
            )
            .to_bytes(client.proto);
        }
    }
    if args[0].eq_ignore_ascii_case(b"cairn.member") {
        return crate::cmd::member::member(shared, client, args).await;
    }
    if args[0].eq_ignore_ascii_case(b"cairn.backup") {
        return crate::cmd::backup::command(shared, client, args).await;
    }
    if args[0].eq_ignore_ascii_case(b"cairn.publish") {
        return crate::cmd::pubsub::deliver_forwarded(shared, &args).to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.interest") {
        return shared.pubsub.interest_of(&args).to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.watchindex") {
        return watch_index_here(shared, &args).await.to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.txnread") {
        return crate::cross::read_here(shared, &args)
            .await
            .to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.script") {
        return crate::cmd::scripting::get_for_node(shared, &args).to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.leaders") {
        return crate::placement::leaders(shared).to_bytes(client.proto);
    }
    if args[0].eq_ignore_ascii_case(b"cairn.placement") {
        return crate::cmd::placement::command(shared, client, args).await;
    }
    if args[0].eq_ignore_ascii_case(b"cairn.reshard") {
        return crate::cmd::reshard::command(shared, client, args).await;
    }
    if args[0].eq_ignore_ascii_case(b"cairn.shard") {
        // A meta group step (see `meta.rs`): group 0 is no shard.
        if args.len() > 3
            && args[1] == b"0"
            && args[2].eq_ignore_ascii_case(crate::meta::NAME.as_bytes())
        {
            return propose_to(shared, client, crate::meta::GROUP, args[2..].to_vec()).await;
        }
        return match shard_override(shared, &args) {
            // A slot move's step (see `cmd/reshard.rs`) or a cross-shard transaction's (see
            // `cross.rs`): not in the command table.
            Ok((group, args))
                if args[0].eq_ignore_ascii_case(cairn_store::cmd::migrate::NAME.as_bytes())
                    || args[0].eq_ignore_ascii_case(cairn_store::txn::NAME.as_bytes()) =>
            {
                propose_to(shared, client, group, args).await
            }
            Ok((group, args)) => handle_on(shared, client, args, Some(group)).await,
            Err(e) => e.to_bytes(client.proto),
        };
    }
    handle_on(shared, client, args, None).await
}

/// What a node's connection to another node says first: `CAIRN.RELAY [<node secret>]`.
pub(crate) fn relay_greeting(repl: &Replication) -> Vec<Vec<u8>> {
    let mut hello = vec![b"CAIRN.RELAY".to_vec()];
    if let Some(secret) = repl.acl.node_secret.read().clone() {
        hello.push(secret.into_bytes());
    }
    hello
}

/// `CAIRN.RELAY [secret]`: another node's connection, which runs requests that were checked
/// where they arrived. It must show the cluster's node secret once there is one (see
/// `crate::meta`: the first ACL change makes one); before, nothing is protected yet.
fn relay_hello(shared: &Shared, client: &mut Client, args: &[Vec<u8>]) -> Vec<u8> {
    let secret = shared.acl.node_secret.read().clone();
    let ok = match (&secret, args.get(1)) {
        (None, _) => true,
        (Some(s), Some(shown)) => crate::acl::constant_eq(s.as_bytes(), shown),
        (Some(_), None) => false,
    };
    if !ok || args.len() > 2 {
        return Reply::error("NOPERM this connection did not show the cluster's node secret")
            .to_bytes(client.proto);
    }
    let tls_cluster = shared
        .replication
        .as_ref()
        .is_some_and(|r| r.peer_tls.is_some());
    if tls_cluster && !client.cluster_tls {
        return Reply::error(
            "NOPERM with tls-cluster, nodes connect to each other over the cluster's TLS",
        )
        .to_bytes(client.proto);
    }
    client.internal = true;
    // Its blocking commands must not wait here: the other node's client does the waiting.
    client.relaying_for_a_node = true;
    Reply::OK.to_bytes(client.proto)
}

/// ACL changes go through the meta group: the change as a `CAIRN.META ACL` entry's tail.
fn acl_change(name: &str, args: &[Vec<u8>]) -> Option<Vec<Vec<u8>>> {
    match name {
        "acl|setuser" => {
            let mut change = vec![b"SETUSER".to_vec(), args[2].clone()];
            change.extend(crate::acl::hash_rules(&args[3..]));
            Some(change)
        }
        "acl|deluser" => {
            let mut change = vec![b"DELUSER".to_vec()];
            change.extend(args[2..].iter().cloned());
            Some(change)
        }
        "config|set" if args.len() == 4 && args[2].eq_ignore_ascii_case(b"requirepass") => {
            let mut change = vec![b"SETUSER".to_vec(), b"default".to_vec()];
            change.extend(crate::cmd::acl::requirepass_rules(&args[3]));
            Some(change)
        }
        _ => None,
    }
}

/// Handles one request, on shard `forced` when given, else where its keys are.
async fn handle_on(
    shared: &Shared,
    client: &mut Client,
    args: Vec<Vec<u8>>,
    forced: Option<u64>,
) -> Vec<u8> {
    let proto = client.proto;
    let spec = match shared.table.commands.lookup(&args) {
        Lookup::Found(spec) => spec.clone(),
        Lookup::Error(e) => {
            if client.multi.is_some() {
                client.multi_failed = true;
            }
            shared.stats.error_reply(&e);
            shared.stats.commands.reject_lookup(&e);
            return e.to_bytes(proto);
        }
    };
    if !crate::cmd::acl::unchecked(shared, client) {
        if let Some(refused) = crate::cmd::acl::refused(shared, client, &spec, &args) {
            return refused.to_bytes(proto);
        }
    }
    let top = spec.name.split('|').next().unwrap_or_default();
    if let Some(refused) = crate::cmd::pubsub::refused_while_subscribed(client, top) {
        return refused.to_bytes(proto);
    }
    // EVALSHA runs as EVAL with the script's text (see `cmd/scripting.rs`).
    let (spec, args) = match crate::cmd::scripting::resolve(shared, &args).await {
        None => (spec, args),
        Some(Err(_)) if client.multi.is_some() => {
            let queued = crate::cmd::scripting::queued_noscript(&args);
            match shared.table.commands.lookup(&queued) {
                Lookup::Found(s) => (s.clone(), queued),
                Lookup::Error(e) => return e.to_bytes(proto),
            }
        }
        Some(Err(e)) => return e.to_bytes(proto),
        Some(Ok(resolved)) => match shared.table.commands.lookup(&resolved) {
            Lookup::Found(s) => (s.clone(), resolved),
            Lookup::Error(e) => return e.to_bytes(proto),
        },
    };
    if client.multi.is_none() {
        if let Some(change) = acl_change(&spec.name, &args) {
            // Checked here first, with the clear passwords, for Redis's error text.
            if spec.name == "acl|setuser" {
                if let Err(e) = shared.acl.check_set_user(&args[2], &args[3..]) {
                    return Reply::error(e).to_bytes(proto);
                }
            }
            return crate::cmd::acl::cluster_change(shared, client, change).await;
        }
    }
    let target = shared.table.target_of(&spec);
    let place = forced.map_or_else(|| route(shared, &spec, &args), Route::Shard);
    if let Some(queue) = client.multi.as_mut() {
        if !matches!(
            spec.name.as_str(),
            "exec" | "discard" | "multi" | "watch" | "quit" | "reset"
        ) {
            let publish = is_publish(&spec.name);
            let refused = if publish {
                None // not data: it runs at EXEC, beside the transaction (see `exec`)
            } else if spec.flags.contains(Flags::NO_MULTI)
                || !matches!(target, Some(Target::Store(_)))
            {
                Some(Reply::error(
                    "ERR only data commands can be queued in MULTI in replicated mode",
                ))
            } else if place == Route::Keyless && sole_shard(shared).is_none() {
                Some(Reply::error(format!(
                    "ERR {} concerns every shard and cannot be queued in MULTI on a sharded cluster",
                    spec.name.to_ascii_uppercase()
                )))
            } else {
                None
            };
            if let Some(e) = refused {
                client.multi_failed = true;
                return e.to_bytes(proto);
            }
            // Inside MULTI nothing blocks: XREAD's BLOCK is dropped, as Redis ignores it there.
            queue.push(cairn_store::cmd::blocking::without_block(args));
            return Reply::Status("QUEUED".into()).to_bytes(proto);
        }
    }
    let group = match place {
        Route::Shard(g) => Some(g),
        Route::Keyless => sole_shard(shared),
        Route::CrossShard => None,
    };
    match (spec.name.as_str(), target) {
        ("watch", _) => watch(shared, client, args).await,
        (name, _) if crate::cmd::scripting::is_function_change(name) => {
            // The cluster's libraries change through its meta group, on every node at once.
            let mut change = vec![crate::meta::NAME.as_bytes().to_vec(), b"FUNCTION".to_vec()];
            change.extend(args[1..].iter().cloned());
            let mut applied_here = shared.functions.changes();
            let reply = propose_to(shared, client, crate::meta::GROUP, change).await;
            // The meta group's leader applied it; this node may not have yet. The client's next
            // command here (FCALL, FUNCTION LIST) must see the change: wait for it, briefly.
            // (A change that succeeded there succeeds here: every node applies the same log.)
            if !reply.starts_with(b"-") {
                let _ = tokio::time::timeout(Duration::from_secs(2), applied_here.changed()).await;
            }
            reply
        }
        ("script|flush", _) => {
            let reply = dispatch::call(shared, client, None, &spec, &args);
            if matches!(reply, Reply::Status(_)) {
                crate::cmd::scripting::flush_everywhere(shared).await;
            }
            reply.to_bytes(proto)
        }
        ("exec", _) => exec(shared, client).await,
        ("unwatch" | "discard" | "reset", _) => {
            client.watched_at.clear();
            client.watched_cross.clear();
            dispatch::call(shared, client, None, &spec, &args).to_bytes(client.proto)
        }
        (_, Some(Target::Store(_))) if place == Route::CrossShard => {
            crate::cross::command(shared, client, args).await
        }
        (_, Some(Target::Store(_))) if group.is_none() => {
            fan_out(shared, client, &spec, args).await
        }
        (_, Some(Target::Store(_))) if spec.is_write() => {
            let group = group.expect("checked above");
            write(shared, client, group, vec![args], None, forced.is_some()).await
        }
        (_, Some(Target::Store(handler))) => {
            let group = group.expect("checked above");
            read(
                shared,
                client,
                group,
                vec![(args, handler)],
                forced.is_some(),
            )
            .await
        }
        _ => {
            let reply = dispatch::call(shared, client, None, &spec, &args);
            // In the protocol the command left the connection in: HELLO 3 answers in RESP3.
            reply.to_bytes(client.proto)
        }
    }
}

/// The shard a transaction runs on: the one owning every key it queued and watched. None
/// when they are in different shards (the transaction cannot run: `-CROSSSLOT`).
fn transaction_shard(
    shared: &Shared,
    queue: &[Vec<Vec<u8>>],
    watched: &[(Vec<u8>, u64)],
) -> Option<u64> {
    let mut keys: Vec<&[u8]> = watched.iter().map(|(k, _)| k.as_slice()).collect();
    for args in queue {
        if let Lookup::Found(spec) = shared.table.commands.lookup(args) {
            keys.extend(spec.key_positions(args).iter().map(|&i| args[i].as_slice()));
        }
    }
    match shared.shards.group_of_keys(keys) {
        Ok(Some(g)) => Some(g),
        // No key at all (only keyless commands, allowed on a one-shard cluster): any shard.
        Ok(None) => shared.shards.stores().map(|(g, _)| g).next(),
        Err(crate::shards::CrossShard) => None,
    }
}

fn is_publish(name: &str) -> bool {
    matches!(name, "publish" | "spublish")
}

/// EXEC. PUBLISH and SPUBLISH are not replicated data: the transaction's entry holds the
/// other commands, and they run here once it has (not at all if it aborted or failed), their
/// replies put back in their places.
async fn exec(shared: &Shared, client: &mut Client) -> Vec<u8> {
    let proto = client.proto;
    let Some(mut queue) = client.multi.take() else {
        return Reply::error("ERR EXEC without MULTI").to_bytes(proto);
    };
    let publish_at: Vec<usize> = (0..queue.len())
        .filter(|&i| {
            matches!(shared.table.commands.lookup(&queue[i]), Lookup::Found(s) if is_publish(&s.name))
        })
        .collect();
    if publish_at.is_empty() || client.multi_failed {
        return exec_queue(shared, client, queue).await;
    }
    let mut publishes = Vec::with_capacity(publish_at.len());
    for &i in publish_at.iter().rev() {
        publishes.push((i, queue.remove(i)));
    }
    publishes.reverse();
    let data = queue.len();
    let reply = exec_queue(shared, client, queue).await;
    let mut items = match split_array(&reply) {
        Some(items) if items.len() == data => items,
        _ => return reply, // aborted (nil) or failed (an error): no message goes out
    };
    for (i, cmd) in publishes {
        let answer = match shared.table.commands.lookup(&cmd) {
            Lookup::Found(spec) => {
                let spec = spec.clone();
                dispatch::call(shared, client, None, &spec, &cmd)
            }
            Lookup::Error(e) => e,
        };
        items.insert(i, answer.to_bytes(proto));
    }
    let mut out = format!("*{}\r\n", items.len()).into_bytes();
    for item in items {
        out.extend_from_slice(&item);
    }
    out
}

/// The encoded elements of an encoded array reply; None for anything else (nil, an error).
fn split_array(reply: &[u8]) -> Option<Vec<Vec<u8>>> {
    let spans = frame_spans(reply, true)?;
    Some(spans.into_iter().map(|r| reply[r].to_vec()).collect())
}

/// Where each encoded reply in `bytes` lies: consecutive frames, or (`array`) the elements of
/// one array reply. None unless the bytes are exactly that.
fn frame_spans(bytes: &[u8], array: bool) -> Option<Vec<std::ops::Range<usize>>> {
    let limits = cairn_resp::decode::Limits::default();
    let mut pos = 0;
    let mut left = usize::MAX;
    if array {
        if bytes.first() != Some(&b'*') {
            return None;
        }
        let end = bytes.windows(2).position(|w| w == b"\r\n")?;
        left = usize::try_from(cairn_resp::decode::parse_i64(&bytes[1..end])?).ok()?;
        pos = end + 2;
    }
    let mut spans = Vec::new();
    while pos < bytes.len() && left > 0 {
        let len = cairn_resp::decode::reply_frame_len(&bytes[pos..], &limits).ok()??;
        spans.push(pos..pos + len);
        pos += len;
        left -= 1;
    }
    (pos == bytes.len() && (!array || left == 0)).then_some(spans)
}

async fn exec_queue(shared: &Shared, client: &mut Client, queue: Vec<Vec<Vec<u8>>>) -> Vec<u8> {
    let proto = client.proto;
    client
        .info
        .in_multi
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let watched = std::mem::take(&mut client.watched_at);
    let watched_cross = std::mem::take(&mut client.watched_cross);
    if std::mem::take(&mut client.multi_failed) {
        return Reply::error("EXECABORT Transaction discarded because of previous errors.")
            .to_bytes(proto);
    }
    if queue.is_empty() && watched.is_empty() && watched_cross.is_empty() {
        return Reply::Array(vec![]).to_bytes(proto);
    }
    let single = transaction_shard(shared, &queue, &watched).filter(|_| watched_cross.is_empty());
    let Some(group) = single else {
        // Keys in several shards: the cross-shard protocol (`cross.rs`), every watch with it.
        let mut all = watched_cross;
        if let Some(g) = client.watched_group.take() {
            all.extend(
                watched
                    .into_iter()
                    .map(|(key, index)| crate::cross::Watched {
                        key,
                        group: g,
                        index,
                    }),
            );
        }
        let started = std::time::Instant::now();
        let names = command_names(shared, queue.iter());
        let reply = crate::cross::run(shared, proto, &queue, &all, true)
            .await
            .to_bytes(proto);
        record_commands(shared, &names, started, &reply, true);
        return reply;
    };
    // Watch indexes are positions in one shard's log: if the keys' slots moved to another
    // shard since WATCH, whether they changed cannot be told, so the transaction aborts as
    // if they had (clients retry that).
    if !watched.is_empty() && client.watched_group.take() != Some(group) {
        return Reply::NilArray.to_bytes(proto);
    }
    write(shared, client, group, queue, Some(watched), false).await
}

/// WATCH under replication: after a read barrier on the leader, each key is recorded with the
/// index of the last applied entry; the EXEC entry carries them and every replica checks them
/// when applying it. A follower sends the WATCH, and then the whole transaction, to the leader
/// of the first watched key's shard. Keys of other shards are watched from there by asking
/// their leaders for a position in their logs (`CAIRN.WATCHINDEX`); EXEC then runs as a
/// cross-shard transaction, whose PREPARE checks them (`cross.rs`).
async fn watch(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    if client.multi.is_some() {
        return Reply::error("ERR WATCH inside MULTI is not allowed").to_bytes(proto);
    }
    let repl = shared.replication.as_ref().expect("replicated mode");
    let group = match client
        .watched_group
        .filter(|_| !client.watched_at.is_empty())
    {
        Some(g) => g,
        None => shared.shards.group_of_key(&args[1]),
    };
    match barrier(shared, repl, group).await {
        Ok(Ok(())) => {
            let index = shared.shards.store(group).lock().watches.log_index();
            // A set, not a scan per key: WATCH with many keys stays linear.
            let mut seen: std::collections::HashSet<Vec<u8>> = client
                .watched_at
                .iter()
                .map(|(k, _)| k.clone())
                .chain(client.watched_cross.iter().map(|w| w.key.clone()))
                .collect();
            let mut others: std::collections::BTreeMap<u64, Vec<Vec<u8>>> = Default::default();
            for key in &args[1..] {
                if !seen.insert(key.clone()) {
                    continue;
                }
                match shared.shards.group_of_key(key) {
                    g if g == group => client.watched_at.push((key.clone(), index)),
                    g => others.entry(g).or_default().push(key.clone()),
                }
            }
            client.watched_group = Some(group);
            for (g, keys) in others {
                let index = match watch_index(shared, client, g).await {
                    Ok(i) => i,
                    Err(e) => return e.to_bytes(proto),
                };
                client
                    .watched_cross
                    .extend(keys.into_iter().map(|key| crate::cross::Watched {
                        key,
                        group: g,
                        index,
                    }));
            }
            Reply::OK.to_bytes(proto)
        }
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me && client.watched_at.is_empty() && client.watched_cross.is_empty() => {
            // The node the WATCH reached may not be `l`: an unreachable leader is followed to
            // the next one. The rest of the transaction goes to the one that has the watch.
            match relay_via(shared, client, Some(group), l, &[args], true, 1).await {
                Ok((reply, via)) => {
                    if reply.starts_with(b"+") {
                        client.watch_relay = Some(WatchRelay::Live(via));
                    }
                    reply
                }
                Err(e) => e.into_reply().to_bytes(proto),
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

/// The position in shard `group`'s log a WATCH of its keys starts from: its leader's applied
/// index after a read barrier, asked of the leader when that is another node.
async fn watch_index(shared: &Shared, client: &mut Client, group: u64) -> Result<u64, Reply> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    match barrier(shared, repl, group).await {
        Ok(Ok(())) => Ok(shared.shards.store(group).lock().watches.log_index()),
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me => {
            let ask = vec![b"CAIRN.WATCHINDEX".to_vec(), group.to_string().into_bytes()];
            let bytes = relay_to(shared, client, l, &[ask], false, 1).await?;
            match cairn_resp::parse_reply(&bytes) {
                Some(Reply::Int(n)) if n >= 0 => Ok(n as u64),
                Some(e @ Reply::Error(_)) => Err(e),
                _ => Err(tryagain("a watched key's shard gave no position, retry")),
            }
        }
        _ => Err(tryagain(
            "no leader reachable for a watched key's shard, retry",
        )),
    }
}

/// `CAIRN.WATCHINDEX <group>`: [`watch_index`] asked of this node, the shard's leader.
async fn watch_index_here(shared: &Shared, args: &[Vec<u8>]) -> Reply {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let group = args
        .get(1)
        .and_then(|g| std::str::from_utf8(g).ok())
        .and_then(|g| g.parse::<u64>().ok())
        .filter(|&g| shared.shards.has(g));
    let Some(group) = group else {
        return Reply::error("ERR usage: CAIRN.WATCHINDEX <shard>");
    };
    match barrier(shared, repl, group).await {
        Ok(Ok(())) => Reply::Int(shared.shards.store(group).lock().watches.log_index() as i64),
        _ => tryagain("not the shard's leader, retry"),
    }
}

fn lost_watch() -> Reply {
    Reply::error(
        "ERR the connection to the leader was lost during WATCH/MULTI; the transaction is \
         aborted (end it with EXEC, DISCARD or UNWATCH)",
    )
}

/// A request from a client whose WATCH lives on the leader: it goes there on the same
/// connection (never resent), until the transaction ends.
async fn relay_watching(client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let ends = matches!(
        name.as_str(),
        "exec" | "discard" | "unwatch" | "reset" | "quit"
    );
    let reply = match client.watch_relay {
        Some(WatchRelay::Live(l)) => {
            // Only the connection that carried the WATCH may carry the rest: the watch lives in
            // that connection's state on the leader, so a fresh connection would run the
            // transaction unwatched (a lost update, found by the five-node fault test when a
            // leader was restarted between a relayed WATCH and its EXEC).
            let at = client
                .relays
                .iter()
                .position(|r| r.leader == l && !r.closed());
            let replies = match at {
                Some(at) => relay_on(&mut client.relays[at], std::slice::from_ref(&args)).await,
                None => None,
            };
            match (replies, at) {
                (Some(mut replies), _) => replies.pop().unwrap_or_default(),
                (None, at) => {
                    if let Some(at) = at {
                        client.relays.remove(at);
                    }
                    client.watch_relay = Some(WatchRelay::Broken);
                    if name == "exec" && at.is_some() {
                        // The EXEC was sent: the leader may have run it.
                        uncertain("lost the connection to the leader during EXEC").to_bytes(proto)
                    } else {
                        lost_watch().to_bytes(proto)
                    }
                }
            }
        }
        _ => {
            client.watch_relay = Some(WatchRelay::Broken);
            lost_watch().to_bytes(proto)
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

/// Proposes one command to shard `group` whatever its keys, through the shard's leader:
/// the reply, or the error to give.
pub async fn propose_to(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    cmd: Vec<Vec<u8>>,
) -> Vec<u8> {
    write(shared, client, group, vec![cmd], None, true).await
}

/// Proposes commands to shard `group` as one entry (a transaction when `block`), relaying to
/// the shard's leader when this node is not it (with CAIRN.SHARD when `forced`: the commands
/// were sent to this shard whatever their keys). Returns one reply per command, or one for a
/// transaction.
async fn write(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    cmds: Vec<Vec<Vec<u8>>>,
    transaction: Option<Vec<(Vec<u8>, u64)>>,
    forced: bool,
) -> Vec<u8> {
    let started = std::time::Instant::now();
    let names = command_names(shared, cmds.iter());
    let block = transaction.is_some();
    // What the slow log would keep of the first command (bounded), in case it is slow.
    let first = cmds
        .first()
        .filter(|_| shared.slowlog.enabled())
        .map(|args| crate::cmd::slowlog::summarize(args));
    let reply = write_entry(shared, client, group, cmds, transaction, forced).await;
    record_commands(shared, &names, started, &reply, block);
    if let Some(args) = first {
        shared
            .slowlog
            .consider_summary(args, started.elapsed(), &client.info);
    }
    reply
}

/// The command-table names of `cmds` (for INFO commandstats and `/metrics`).
fn command_names<'a>(
    shared: &Shared,
    cmds: impl Iterator<Item = &'a Vec<Vec<u8>>>,
) -> Vec<Arc<CommandSpec>> {
    cmds.filter_map(|args| match shared.table.commands.lookup(args) {
        Lookup::Found(spec) => Some(spec.clone()),
        Lookup::Error(_) => None,
    })
    .collect()
}

/// Counts a run of commands answered by `reply` (one frame per command, or for a
/// transaction one array of them): each took the run's time, and failed if its reply is an
/// error. Replies that cannot be told apart (an aborted transaction, a relayed error) count
/// every command as failed or none.
fn record_commands(
    shared: &Shared,
    names: &[Arc<CommandSpec>],
    started: std::time::Instant,
    reply: &[u8],
    transaction: bool,
) {
    let took = started.elapsed();
    let spans = if names.len() == 1 && !transaction {
        None // one command, one reply
    } else {
        frame_spans(reply, transaction).filter(|s| s.len() == names.len())
    };
    for (i, name) in names.iter().enumerate() {
        // Each command's own reply; the whole one when the replies do not parse apart.
        let own = spans.as_ref().map_or(reply, |s| &reply[s[i].clone()]);
        let failed = own.first() == Some(&b'-');
        shared.stats.commands.record(&name.name, took, failed);
        if failed {
            shared.stats.error_bytes(own);
        }
    }
}

async fn write_entry(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    cmds: Vec<Vec<Vec<u8>>>,
    transaction: Option<Vec<(Vec<u8>, u64)>>,
    forced: bool,
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
    let mut entry = LogEntry {
        now_ms: crate::now_ms(),
        seed: dispatch::next_seed(),
        proto,
        op,
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match propose(repl, group, &entry).await {
            // A key was locked by a cross-shard transaction: every replica refused the whole
            // entry, so it is asked again (with a fresh time) once the lock has had a moment.
            Ok(Ok(reply))
                if reply
                    .get(1..)
                    .is_some_and(|r| r.starts_with(cairn_store::txn::LOCKED.as_bytes()))
                    && tokio::time::Instant::now() + LOCK_PAUSE < deadline =>
            {
                tokio::time::sleep(LOCK_PAUSE).await;
                entry.now_ms = crate::now_ms();
            }
            Ok(Ok(reply)) => return reply,
            // The watch was taken here and cannot travel with a relayed EXEC: nothing ran, so the
            // transaction aborts as if a watched key had changed (clients retry that).
            Ok(Err(NodeError::NotLeader { .. })) if watching => {
                return Reply::NilArray.to_bytes(proto)
            }
            Ok(Err(NodeError::NotLeader {
                leader: Some(l), ..
            })) if l != repl.me => {
                // The commands come back out of the entry only on this (rare) path: the common one
                // never copies them.
                if !block && !forced {
                    if let Operation::Commands(cmds) = &entry.op {
                        if let Some(moved) = redirects(shared, repl, l, cmds, proto) {
                            return moved;
                        }
                    }
                }
                let mut requests = match &entry.op {
                    Operation::Commands(c) | Operation::Transaction(c) => c.clone(),
                    Operation::WatchedTransaction { cmds, .. } => cmds.clone(),
                    Operation::Expire(_) => unreachable!("write() proposes commands"),
                };
                if forced {
                    requests = requests
                        .iter()
                        .map(|r| with_shard_prefix(group, r))
                        .collect();
                }
                let keep = if block {
                    requests.insert(0, vec![b"MULTI".to_vec()]);
                    requests.push(vec![b"EXEC".to_vec()]);
                    1
                } else {
                    requests.len()
                };
                match relay(shared, client, group, l, &requests, true, keep).await {
                    Ok(reply) => return reply,
                    // This node took over meanwhile and nothing was sent: propose here.
                    Err(RelayError::Retry) if tokio::time::Instant::now() < deadline => continue,
                    Err(e) => return fail(e.into_reply()),
                }
            }
            Ok(Err(NodeError::NotLeader { .. })) => {
                return fail(tryagain("no leader elected yet, retry"))
            }
            Ok(Err(NodeError::Indeterminate { .. })) => {
                return fail(uncertain("leadership changed while the command waited"))
            }
            Ok(Err(NodeError::Busy)) => return fail(tryagain("node busy")),
            Ok(Err(NodeError::Stopped(why))) => {
                return fail(Reply::error(format!("ERR replication stopped: {why}")))
            }
            Err(_) => return fail(uncertain("timed out waiting for the cluster")),
        }
    }
}

/// Linearizable reads of shard `group`: one read barrier on its leader, then each command
/// against the local store. A follower relays them to the leader (see [`write`] for `forced`).
async fn read(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    run: Vec<(Vec<Vec<u8>>, cairn_store::Handler)>,
    forced: bool,
) -> Vec<u8> {
    let started = std::time::Instant::now();
    let names = command_names(shared, run.iter().map(|(args, _)| args));
    let reply = read_run(shared, client, group, run, forced).await;
    record_commands(shared, &names, started, &reply, false);
    reply
}

async fn read_run(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    run: Vec<(Vec<Vec<u8>>, cairn_store::Handler)>,
    forced: bool,
) -> Vec<u8> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let proto = client.proto;
    let fail = |reply: Reply| reply.to_bytes(proto).repeat(run.len());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match barrier(shared, repl, group).await {
            Ok(Ok(())) => {
                // A key a cross-shard transaction holds is read once it is released: the
                // transaction may still write it (see `cairn_store::txn`).
                let locked = {
                    let store = shared.shards.store(group).lock();
                    run.iter()
                        .any(|(args, _)| crate::shard::meets_lock(&store, args))
                };
                if locked {
                    if tokio::time::Instant::now() + LOCK_PAUSE >= deadline {
                        return fail(Reply::error(cairn_store::txn::LOCKED));
                    }
                    tokio::time::sleep(LOCK_PAUSE).await;
                    continue;
                }
                let mut out = Vec::new();
                let mut store = shared.shards.store(group).lock();
                // (Locked since the look above? Then the lock's PREPARE applied after this
                // read's barrier: the read is ordered before the transaction, as it may be.)
                for (args, handler) in &run {
                    // The barrier put this replica past any hand-over of the slot that came
                    // before the read: a slot it no longer serves may have changed elsewhere.
                    if let Some(slot) = crate::shard::unserved_slot(&store, args) {
                        crate::shard::not_served(slot).encode(proto, &mut out);
                        continue;
                    }
                    let env = cairn_store::Env {
                        now_ms: crate::now_ms(),
                        seed: dispatch::next_seed(),
                        proto,
                    };
                    store.execute(*handler, args, &env).encode(proto, &mut out);
                }
                return out;
            }
            Ok(Err(NodeError::NotLeader {
                leader: Some(l), ..
            })) if l != repl.me => {
                let requests: Vec<_> = run
                    .iter()
                    .map(|(a, _)| {
                        if forced {
                            with_shard_prefix(group, a)
                        } else {
                            a.clone()
                        }
                    })
                    .collect();
                if !forced {
                    if let Some(moved) = redirects(shared, repl, l, &requests, proto) {
                        return moved;
                    }
                }
                match relay(shared, client, group, l, &requests, false, requests.len()).await {
                    Ok(reply) => return reply,
                    Err(RelayError::Retry) if tokio::time::Instant::now() < deadline => continue,
                    Err(e) => return fail(e.into_reply()),
                }
            }
            Ok(Err(NodeError::Stopped(why))) => {
                return fail(Reply::error(format!("ERR replication stopped: {why}")))
            }
            Ok(Err(_)) | Err(_) => return fail(tryagain("no leader reachable, retry")),
        }
    }
}

/// Why a relay gave no replies.
enum RelayError {
    /// Nothing was sent, and now this node leads the shard (or nobody does): the caller asks
    /// again here.
    Retry,
    /// The error to answer each request with.
    Reply(Reply),
}

impl RelayError {
    fn into_reply(self) -> Reply {
        match self {
            RelayError::Retry => tryagain("the leader changed, retry"),
            RelayError::Reply(r) => r,
        }
    }
}

/// The most relay connections one client keeps open (one per node it talked to).
const MAX_RELAYS: usize = 16;

/// Sends `requests` to the client port of `leader`, the leader of shard `group`, and returns the
/// last `keep` replies, or the error to answer each request with. A write is never sent twice:
/// once it may have reached the leader, a failure is reported as indeterminate (the leader may
/// have applied it). A read has no effect, so it is retried once on a fresh connection when a
/// cached one turns out to be dead.
async fn relay(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    leader: u64,
    requests: &[Vec<Vec<u8>>],
    is_write: bool,
    keep: usize,
) -> Result<Vec<u8>, RelayError> {
    relay_via(
        shared,
        client,
        Some(group),
        leader,
        requests,
        is_write,
        keep,
    )
    .await
    .map(|(reply, _)| reply)
}

/// As [`relay`], to node `leader` whatever it leads (a transaction relayed since its WATCH).
pub(crate) async fn relay_to(
    shared: &Shared,
    client: &mut Client,
    leader: u64,
    requests: &[Vec<Vec<u8>>],
    is_write: bool,
    keep: usize,
) -> Result<Vec<u8>, Reply> {
    relay_via(shared, client, None, leader, requests, is_write, keep)
        .await
        .map(|(reply, _)| reply)
        .map_err(RelayError::into_reply)
}

async fn relay_via(
    shared: &Shared,
    client: &mut Client,
    group: Option<u64>,
    leader: u64,
    requests: &[Vec<Vec<u8>>],
    is_write: bool,
    keep: usize,
) -> Result<(Vec<u8>, u64), RelayError> {
    let proto = client.proto;
    let repl = shared.replication.as_ref().expect("replicated mode");
    let attempts = if is_write { 1 } else { 2 };
    for _ in 0..attempts {
        client.relays.retain(|r| !r.closed() && r.proto == proto);
        let at = match client.relays.iter().position(|r| r.leader == leader) {
            Some(at) => at,
            None => {
                // Nothing was sent: the command definitely did not run.
                let r = connect_leader(repl, group, leader, proto).await?;
                if let Some(old) = client.relays.iter().position(|o| o.leader == r.leader) {
                    client.relays.remove(old);
                }
                if client.relays.len() >= MAX_RELAYS {
                    client.relays.remove(0);
                }
                client.relays.push(r);
                client.relays.len() - 1
            }
        };
        match relay_on(&mut client.relays[at], requests).await {
            Some(replies) => {
                let from = replies.len().saturating_sub(keep);
                return Ok((replies[from..].concat(), client.relays[at].leader));
            }
            None => {
                client.relays.remove(at);
            }
        }
    }
    Err(RelayError::Reply(if is_write {
        uncertain("lost the connection to the leader")
    } else {
        tryagain("lost the connection to the leader")
    }))
}

/// Opens a relay connection to `leader`. A leader that cannot be reached may just have
/// stepped down (a graceful shutdown hands leadership over, then exits): until `WAIT` runs
/// out, keep trying whichever node this one now knows as the leader of `group` (when there is
/// a group to follow).
async fn connect_leader(
    repl: &Replication,
    group: Option<u64>,
    leader: u64,
    proto: Protocol,
) -> Result<Relay, RelayError> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut leader = leader;
    loop {
        if let Some(addr) = repl.client_addr(leader) {
            if let Some(r) = open_relay(repl, addr, leader, proto).await {
                return Ok(r);
            }
        }
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(RelayError::Reply(tryagain("cannot reach the leader")));
        }
        tokio::time::sleep(RETRY_PAUSE).await;
        match group.and_then(|g| repl.leader_of(g)) {
            Some(l) if l != repl.me => leader = l,
            // This node leads now, or nobody does: the caller starts over.
            _ => return Err(RelayError::Retry),
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

/// Sends one command that changes state to node `leader`, once (see [`relay`]).
pub async fn relay_once(
    shared: &Shared,
    client: &mut Client,
    leader: u64,
    args: Vec<Vec<u8>>,
) -> Result<Vec<u8>, Reply> {
    relay_to(shared, client, leader, &[args], true, 1).await
}

pub(crate) async fn open_relay(
    repl: &Replication,
    addr: SocketAddr,
    leader: u64,
    proto: Protocol,
) -> Option<Relay> {
    let within = Duration::from_secs(2);
    let connect = PeerStream::connect(addr, repl.peer_tls.as_ref(), within);
    let stream = tokio::time::timeout(within, connect).await.ok()?.ok()?;
    let mut r = Relay {
        leader,
        proto,
        stream,
        buf: Vec::new(),
    };
    let mut hello = vec![relay_greeting(repl)];
    if proto == Protocol::Resp3 {
        hello.push(vec![b"HELLO".to_vec(), b"3".to_vec()]);
    }
    let replies = relay_on(&mut r, &hello).await?;
    // A refused greeting (a wrong node secret, no cluster TLS) leaves an ordinary client's
    // connection: nothing is relayed on it.
    if !replies[0].starts_with(b"+") || replies.iter().any(|reply| reply.starts_with(b"-")) {
        tracing::debug!(node = leader, reply = %String::from_utf8_lossy(&replies[0]).trim_end(), "another node refused this node's connection");
        return None;
    }
    Some(r)
}

/// Writes the requests and reads one reply per request.
pub(crate) async fn relay_on(r: &mut Relay, requests: &[Vec<Vec<u8>>]) -> Option<Vec<Vec<u8>>> {
    relay_send(r, requests).await?;
    relay_receive(r, requests.len()).await
}

/// Writes the requests (the first half of [`relay_on`]).
async fn relay_send(r: &mut Relay, requests: &[Vec<Vec<u8>>]) -> Option<()> {
    let bytes: Vec<u8> = requests.iter().flat_map(|a| encode_request(a)).collect();
    let send = async {
        r.stream.write_all(&bytes).await?;
        // TLS holds records until flushed.
        r.stream.flush().await
    };
    tokio::time::timeout(WAIT, send).await.ok()?.ok()
}

/// Reads `count` replies (the second half of [`relay_on`]).
async fn relay_receive(r: &mut Relay, count: usize) -> Option<Vec<Vec<u8>>> {
    let limits = cairn_resp::Limits {
        max_bulk_len: MAX_RELAYED_REPLY,
        ..Default::default()
    };
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
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

/// A keyless data command on a sharded cluster: asked of every shard (each on its leader, as
/// CAIRN.SHARD when that is another node), the answers merged as one keyspace would give
/// them. SCAN's cursor stays a slot number, as on one node: each shard owns a run of slots,
/// so the cursor says which shard to continue in. FLUSHALL/FLUSHDB empty shard after shard
/// (not atomically across shards).
async fn fan_out(
    shared: &Shared,
    client: &mut Client,
    spec: &CommandSpec,
    args: Vec<Vec<u8>>,
) -> Vec<u8> {
    let started = std::time::Instant::now();
    let reply = fan_out_to_shards(shared, client, spec, args).await;
    let failed = reply.first() == Some(&b'-');
    shared
        .stats
        .commands
        .record(&spec.name, started.elapsed(), failed);
    if failed {
        shared.stats.error_bytes(&reply);
    }
    reply
}

async fn fan_out_to_shards(
    shared: &Shared,
    client: &mut Client,
    spec: &CommandSpec,
    args: Vec<Vec<u8>>,
) -> Vec<u8> {
    let proto = client.proto;
    let groups = keyless_groups(shared);
    let name = spec.name.as_str();
    if name == "scan" {
        return scan(shared, client, spec, args).await.to_bytes(proto);
    }
    let start = match name {
        // A random shard first, then the next ones until one has a key.
        "randomkey" => dispatch::next_seed() as usize % groups.len().max(1),
        _ => 0,
    };
    let mut total = 0i64;
    let mut items = Vec::new();
    for i in 0..groups.len() {
        let group = groups[(start + i) % groups.len()];
        let reply = match on_shard(shared, client, spec, group, &args).await {
            Ok(r) => r,
            Err(e) => return e.to_bytes(proto),
        };
        match (name, reply) {
            ("dbsize", Reply::Int(n)) => total += n,
            ("keys", Reply::Array(keys)) => items.extend(keys),
            ("randomkey", Reply::Nil) => {}
            ("randomkey", key @ Reply::Bulk(_)) => return key.to_bytes(proto),
            ("flushall" | "flushdb", Reply::Status(_)) => {}
            (_, e @ Reply::Error(_)) => return e.to_bytes(proto),
            (_, other) if groups.len() == 1 => return other.to_bytes(proto),
            (_, _) => {
                return Reply::error(format!(
                    "ERR {} is not supported on a sharded cluster",
                    name.to_ascii_uppercase()
                ))
                .to_bytes(proto)
            }
        }
    }
    match name {
        "dbsize" => Reply::Int(total),
        "keys" => Reply::Array(items),
        "randomkey" => Reply::Nil,
        _ => Reply::OK,
    }
    .to_bytes(proto)
}

/// SCAN over the shards: the cursor is the slot to go on from (as on one node), its owner the
/// shard asked. A shard that reaches the end of its slots hands the cursor to the next shard's
/// first slot.
async fn scan(
    shared: &Shared,
    client: &mut Client,
    spec: &CommandSpec,
    args: Vec<Vec<u8>>,
) -> Reply {
    let Ok(cursor) = cairn_store::cmd::keys::parse_scan_cursor(&args[1]) else {
        return Reply::error("ERR invalid cursor");
    };
    let covered = keyless_groups(shared);
    // The first slot at or after `from` in a shard this scan covers.
    let next_covered =
        |from: usize| (from..SLOTS).find(|&s| covered.contains(&shared.shards.group_of_slot(s)));
    let finished = || Reply::Array(vec![Reply::bulk(b"0".to_vec()), Reply::Array(vec![])]);
    // Past the last slot, or past the last covered one: a finished scan, as one node answers.
    let Some(slot) = usize::try_from(cursor).ok().and_then(next_covered) else {
        return finished();
    };
    let group = shared.shards.group_of_slot(slot);
    let end = (slot..SLOTS)
        .find(|&s| shared.shards.group_of_slot(s) != group)
        .unwrap_or(SLOTS);
    let mut args = args;
    args[1] = slot.to_string().into_bytes();
    let reply = match on_shard(shared, client, spec, group, &args).await {
        Ok(r) => r,
        Err(e) => return e,
    };
    let Reply::Array(mut parts) = reply else {
        return reply;
    };
    let next = match parts.first() {
        Some(Reply::Bulk(c)) => std::str::from_utf8(c)
            .ok()
            .and_then(|c| c.parse::<usize>().ok()),
        _ => None,
    };
    let next = match next {
        Some(n) if n != 0 && n < end => n,
        Some(_) => next_covered(end).unwrap_or(0),
        None => return Reply::Array(parts),
    };
    parts[0] = Reply::bulk(next.to_string().into_bytes());
    Reply::Array(parts)
}

/// The shards a keyless command covers: every shard for plain clients (any node stands for
/// the whole keyspace), or, with `cluster-redirects` on, the shards this node leads, which is
/// what a Redis Cluster node answers for: cluster clients send DBSIZE, KEYS, SCAN, FLUSHALL to
/// every master and add the answers up.
fn keyless_groups(shared: &Shared) -> Vec<u64> {
    let all = shared.shards.stores().map(|(g, _)| g);
    if !shared.config.lock().cluster_redirects {
        return all.collect();
    }
    let repl = shared.replication.as_ref().expect("replicated mode");
    all.filter(|&g| repl.leader_of(g) == Some(repl.me))
        .collect()
}

/// Runs `args` on shard `group` (its leader, wherever it is) and returns the parsed reply, or
/// the error reply to give.
async fn on_shard(
    shared: &Shared,
    client: &mut Client,
    spec: &CommandSpec,
    group: u64,
    args: &[Vec<u8>],
) -> Result<Reply, Reply> {
    // (Uncounted: the command that fans out is counted once, by `fan_out`.)
    let bytes = if spec.is_write() {
        write_entry(shared, client, group, vec![args.to_vec()], None, true).await
    } else {
        let Some(Target::Store(h)) = shared.table.target_of(spec) else {
            return Err(Reply::error("ERR not a data command"));
        };
        read_run(shared, client, group, vec![(args.to_vec(), h)], true).await
    };
    cairn_resp::parse_reply(&bytes)
        .ok_or_else(|| Reply::error("ERR a shard answered with a reply that could not be merged"))
}

/// Active expiry under replication: each shard's leader proposes the removal of keys it finds
/// due; followers leave expiry to the log.
pub async fn expire_due(shared: &Shared, repl: &Replication) -> usize {
    let mut removed = 0;
    for (group, g) in repl.groups() {
        if g.is_leader {
            removed += expire_due_in(shared, repl, group).await;
        }
    }
    removed
}

async fn expire_due_in(shared: &Shared, repl: &Replication, group: u64) -> usize {
    let now = crate::now_ms();
    let due = shared
        .shards
        .store(group)
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
    match tokio::time::timeout(WAIT, repl.node.propose(group, entry.encode())).await {
        Ok(Ok(reply)) => std::str::from_utf8(&reply)
            .ok()
            .and_then(|s| s.trim_start_matches(':').trim().parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}
