//! CAIRN.RESHARD: moving slots between shards while both keep serving.
//!
//! `CAIRN.RESHARD MOVE <first-slot> <last-slot> <to-shard>` moves each slot of the range that
//! another shard serves, one slot at a time, and answers the number moved once all are done.
//! `CAIRN.RESHARD SPLIT <shard>` creates a new shard (a committed entry in the meta group,
//! see `meta.rs`: every node opens its Raft group, with the voters of the shard split) and
//! moves the upper half of the shard's slots to it; it answers `[new shard, slots moved]`.
//! `CAIRN.RESHARD REBALANCE` evens out the number of slots per shard (after a split, say),
//! moving slots from the shards with more than their share to those with less, and answers
//! the number moved.
//! `CAIRN.RESHARD MAP` lists the meta group's records of moved slots (as this node has applied
//! them): `slots a-b: shard g epoch e`.
//! `CAIRN.RESHARD CANCEL` stops the moves this node coordinates (a slot already handed over
//! still finishes); `CAIRN.RESHARD STATUS` lists the moves in progress.
//!
//! A node coordinates a move by proposing the `CAIRN.MIGRATE` steps of `cairn_store::moves`
//! to each shard's leader (`CAIRN.SHARD <shard> CAIRN.MIGRATE ...` when that is another node).
//! The steps are replicated state, so a move outlives its coordinator: on every node a
//! watchdog looks, for each shard the node leads, at the slots moving out; one that has not
//! progressed for [`STALLED`] is taken over with a new attempt, which fences off the old
//! coordinator's steps. A slot handed over (`RELEASE`) is always taken to the end. A target
//! left holding a copy for an attempt its source no longer has (a cancel whose `ABORT` was
//! lost) drops it the same way, after [`STALLED`].

use crate::connection::Client;
use crate::{replicated, Shared};
use cairn_resp::Reply;
use cairn_store::slot::SLOTS;
use parking_lot::Mutex;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Keys (and bytes) one TAKE hands out: one LOAD entry stays at most about this large.
const TAKE_KEYS: u64 = 512;
const TAKE_BYTES: u64 = 1024 * 1024;
/// RELEASE waits until at most this many keys are pending: they are what is copied while
/// neither shard serves the slot.
const RELEASE_AT: u64 = 128;
/// Copy rounds of one attempt before it gives up on catching up with the writes.
const MAX_ROUNDS: usize = 10_000;
/// Attempts at one slot before the move fails.
const MAX_ATTEMPTS: usize = 30;
/// A move that shows no progress this long is taken over by the source shard's leader.
pub const STALLED: Duration = Duration::from_secs(5);

/// The moves this node coordinates.
#[derive(Default)]
pub struct Jobs {
    /// Slots being moved by a coordinator on this node.
    active: Mutex<BTreeSet<u16>>,
    cancel: AtomicBool,
    /// What the watchdog saw of each outgoing slot, and when it last changed.
    seen: Mutex<HashMap<u16, (Progress, Instant)>>,
    /// Incoming slots (target shard, attempt) whose source has no such attempt, since when.
    orphans: Mutex<HashMap<(u64, u16, u64), Instant>>,
}

/// A slot move's progress as its source shard records it: (shard, attempt, keys pending,
/// handed over).
type Progress = (u64, u64, usize, bool);

/// An `ERR` reply (shared by the cluster administration commands).
pub(crate) fn err(msg: impl Into<String>) -> Reply {
    Reply::error(format!("ERR {}", msg.into()))
}

/// A non-negative integer argument.
pub(crate) fn number(arg: &[u8]) -> Option<u64> {
    std::str::from_utf8(arg).ok()?.parse().ok()
}

pub async fn command(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    let sub = args
        .get(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
    let reply = match (sub.as_deref(), args.len()) {
        (Some("move"), 5) => match (number(&args[2]), number(&args[3]), number(&args[4])) {
            (Some(first), Some(last), Some(to))
                if first <= last
                    && last < SLOTS as u64
                    && shared.shards.stores().any(|(g, _)| g == to) =>
            {
                move_range(shared, first as usize, last as usize, to).await
            }
            _ => err("usage: CAIRN.RESHARD MOVE <first-slot> <last-slot> <to-shard>"),
        },
        (Some("split"), 3) => match number(&args[2]) {
            Some(g) if shared.shards.has(g) => split(shared, client, g).await,
            _ => err("usage: CAIRN.RESHARD SPLIT <shard>"),
        },
        (Some("rebalance"), 2) => rebalance(shared).await,
        (Some("map"), 2) => map(shared),
        (Some("cancel"), 2) => {
            shared.reshard.cancel.store(true, Ordering::SeqCst);
            Reply::OK
        }
        (Some("status"), 2) => status(shared),
        _ => err(
            "usage: CAIRN.RESHARD MOVE <first> <last> <to-shard> | SPLIT <shard> | CANCEL | STATUS",
        ),
    };
    reply.to_bytes(proto)
}

/// The most slots one move takes at once (one attempt, one hand-over).
const MAX_RUN: usize = 1024;

/// A run of contiguous slots that move together.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SlotRun {
    pub first: u16,
    pub last: u16,
}

impl SlotRun {
    fn slots(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }

    fn len(self) -> i64 {
        i64::from(self.last - self.first) + 1
    }
}

impl std::fmt::Display for SlotRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Sorted slots as runs of contiguous ones, at most `max` slots each.
fn runs(slots: impl IntoIterator<Item = u16>, max: usize) -> Vec<SlotRun> {
    let mut out: Vec<SlotRun> = Vec::new();
    for slot in slots {
        match out.last_mut() {
            Some(r) if r.last + 1 == slot && (r.len() as usize) < max => r.last = slot,
            _ => out.push(SlotRun {
                first: slot,
                last: slot,
            }),
        }
    }
    out
}

/// Moves `runs` (each served by the shard given with it, never `to`) to shard `to`, one
/// after the other; the number of slots moved.
async fn move_runs(shared: &Shared, runs: Vec<(SlotRun, u64)>, to: u64) -> Result<i64, Reply> {
    shared.reshard.cancel.store(false, Ordering::SeqCst);
    let mut moved = 0;
    for (run, from) in runs {
        if shared.reshard.cancel.load(Ordering::SeqCst) {
            return Err(err(format!("cancelled after moving {moved} slots")));
        }
        match move_slots(shared, run, from, to).await {
            Ok(true) => moved += run.len(),
            Ok(false) => return Err(err(format!("cancelled after moving {moved} slots"))),
            Err(e) => {
                return Err(err(format!(
                    "moving slots {run} failed after {moved} slots: {e}"
                )))
            }
        }
    }
    Ok(moved)
}

async fn move_range(shared: &Shared, first: usize, last: usize, to: u64) -> Reply {
    // Runs of contiguous slots with one source each.
    let mut by_source: Vec<(SlotRun, u64)> = Vec::new();
    for slot in first..=last {
        let from = shared.shards.group_of_slot(slot);
        if from == to {
            continue;
        }
        let slot = slot as u16;
        match by_source.last_mut() {
            Some((r, f)) if *f == from && r.last + 1 == slot && (r.len() as usize) < MAX_RUN => {
                r.last = slot
            }
            _ => by_source.push((
                SlotRun {
                    first: slot,
                    last: slot,
                },
                from,
            )),
        }
    }
    match move_runs(shared, by_source, to).await {
        Ok(n) => Reply::Int(n),
        Err(e) => e,
    }
}

/// The meta group's slot records, in runs of contiguous slots with one shard and epoch.
fn map(shared: &Shared) -> Reply {
    let Some(repl) = shared.replication.as_ref() else {
        return err("the slot map needs a cluster");
    };
    let records: Vec<(u16, (u64, u64))> = repl
        .meta
        .lock()
        .slots
        .iter()
        .map(|(&s, &r)| (s, r))
        .collect();
    let mut lines = Vec::new();
    let mut i = 0;
    while i < records.len() {
        let mut j = i + 1;
        while j < records.len()
            && records[j].0 == records[j - 1].0 + 1
            && records[j].1 == records[i].1
        {
            j += 1;
        }
        let (group, epoch) = records[i].1;
        lines.push(Reply::bulk(
            format!(
                "slots {}-{}: shard {group} epoch {epoch}",
                records[i].0,
                records[j - 1].0
            )
            .into_bytes(),
        ));
        i = j;
    }
    Reply::Array(lines)
}

/// The moves that leave every shard with its share of the slots: `SLOTS / n`, one more for
/// the first `SLOTS % n` shards in id order. Each shard with too many gives its highest slots
/// to the shards with too few, in order. (slot, from, to) per slot moved.
fn rebalance_plan(owner: &[u64], shards: &[u64]) -> Vec<(u16, u64, u64)> {
    let n = shards.len();
    if n == 0 {
        return Vec::new();
    }
    let share = |i: usize| SLOTS / n + usize::from(i < SLOTS % n);
    let mut have: Vec<Vec<u16>> = shards
        .iter()
        .map(|&g| {
            (0..owner.len())
                .filter(|&s| owner[s] == g)
                .map(|s| s as u16)
                .collect()
        })
        .collect();
    let mut plan = Vec::new();
    for to in 0..n {
        while have[to].len() < share(to) {
            let Some(from) = (0..n).find(|&f| have[f].len() > share(f)) else {
                break;
            };
            let slot = have[from].pop().expect("more than its share");
            plan.push((slot, shards[from], shards[to]));
            have[to].push(slot);
        }
    }
    plan.sort_unstable_by_key(|&(slot, from, to)| (to, from, slot));
    plan
}

async fn rebalance(shared: &Shared) -> Reply {
    let owner: Vec<u64> = (0..SLOTS).map(|s| shared.shards.group_of_slot(s)).collect();
    let shards: Vec<u64> = shared.shards.stores().map(|(g, _)| g).collect();
    let plan = rebalance_plan(&owner, &shards);
    let mut moved = 0;
    let mut i = 0;
    while i < plan.len() {
        let (_, from, to) = plan[i];
        let mut j = i;
        while j < plan.len() && (plan[j].1, plan[j].2) == (from, to) {
            j += 1;
        }
        let slots = plan[i..j].iter().map(|p| p.0);
        i = j;
        let todo = runs(slots, MAX_RUN)
            .into_iter()
            .map(|r| (r, from))
            .collect();
        match move_runs(shared, todo, to).await {
            Ok(n) => moved += n,
            Err(e) => return e,
        }
    }
    Reply::Int(moved)
}

/// Splits shard `group`: a new shard with the same voters takes the upper half of its slots.
async fn split(shared: &Shared, client: &mut Client, group: u64) -> Reply {
    let Some(repl) = shared.replication.as_ref() else {
        return err("splitting needs a cluster");
    };
    let slots: Vec<usize> = (0..SLOTS)
        .filter(|&s| shared.shards.group_of_slot(s) == group)
        .collect();
    if slots.len() < 2 {
        return err(format!("shard {group} has fewer than two slots to split"));
    }
    let Some(status) = repl.view(group) else {
        return err(format!("shard {group}'s members are not known yet, retry"));
    };
    let mut cmd = vec![
        crate::meta::NAME.as_bytes().to_vec(),
        b"CREATE-SHARD".to_vec(),
    ];
    cmd.extend(status.voters.iter().map(|v| v.to_string().into_bytes()));
    let created = replicated::propose_to(shared, client, crate::meta::GROUP, cmd).await;
    let id = match cairn_resp::parse_reply(&created) {
        Some(Reply::Int(id)) if id > 0 => id as u64,
        Some(e @ Reply::Error(_)) => return e,
        _ => return err("the meta group gave an unexpected answer"),
    };
    // Every voter opens the new group as it applies that entry; wait for it here.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(shared.shards.has(id) && repl.leader_of(id).is_some()) {
        if Instant::now() > deadline {
            return err(format!(
                "shard {id} was created but has no leader yet; move slots to it with MOVE"
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upper = slots[slots.len() / 2..].iter().map(|&s| s as u16);
    let todo = runs(upper, MAX_RUN)
        .into_iter()
        .map(|r| (r, group))
        .collect();
    match move_runs(shared, todo, id).await {
        Ok(moved) => Reply::Array(vec![Reply::Int(id as i64), Reply::Int(moved)]),
        Err(e) => e,
    }
}

/// The moves in progress that this node's replicas know of, one line each, plus the slots
/// this node coordinates.
fn status(shared: &Shared) -> Reply {
    /// Runs of contiguous slots that share a description, as `slots a-b: description`.
    fn lines_of(items: Vec<(u16, String)>, out: &mut Vec<String>) {
        let mut i = 0;
        while i < items.len() {
            let mut j = i + 1;
            while j < items.len() && items[j].0 == items[j - 1].0 + 1 && items[j].1 == items[i].1 {
                j += 1;
            }
            out.push(format!(
                "slots {}-{}: {}",
                items[i].0,
                items[j - 1].0,
                items[i].1
            ));
            i = j;
        }
    }
    let mut lines = Vec::new();
    for (group, store) in shared.shards.stores() {
        let store = store.lock();
        let mut out: Vec<(u16, String)> = Vec::new();
        let mut pending: HashMap<u64, usize> = HashMap::new();
        for (&slot, o) in &store.moves.outgoing {
            *pending.entry(o.attempt).or_default() += o.pending.len();
            let state = if o.released { "handed over" } else { "copying" };
            let text = format!(
                "shard {group} -> shard {} attempt {} {state}",
                o.to, o.attempt
            );
            out.push((slot, text));
        }
        let incoming = store.moves.incoming.iter().map(|(&slot, i)| {
            (
                slot,
                format!(
                    "shard {group} <- shard {} attempt {} copying",
                    i.from, i.attempt
                ),
            )
        });
        lines_of(out, &mut lines);
        lines_of(incoming.collect(), &mut lines);
        for (attempt, n) in pending {
            lines.push(format!("shard {group} attempt {attempt}: {n} keys pending"));
        }
    }
    let active: Vec<u16> = shared.reshard.active.lock().iter().copied().collect();
    let mut coordinated = Vec::new();
    lines_of(
        active
            .into_iter()
            .map(|s| (s, "coordinated here".to_string()))
            .collect(),
        &mut coordinated,
    );
    lines.extend(coordinated);
    Reply::Array(lines.into_iter().map(Reply::bulk).collect())
}

/// Marks a run as coordinated here until dropped.
struct Active<'a>(&'a Jobs, SlotRun);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        let mut active = self.0.active.lock();
        self.1.slots().for_each(|s| {
            active.remove(&s);
        });
    }
}

/// Moves a run of slots from shard `from` to shard `to`. Ok(false) when it was cancelled
/// before the hand-over (nothing changed owner).
pub async fn move_slots(shared: &Shared, run: SlotRun, from: u64, to: u64) -> Result<bool, String> {
    {
        let mut active = shared.reshard.active.lock();
        if run.slots().any(|s| active.contains(&s)) {
            return Err(format!("slots {run} are being moved by this node already"));
        }
        active.extend(run.slots());
    }
    let _active = Active(&shared.reshard, run);
    let mut client = Client::internal(shared);
    let mut last_error = String::new();
    for attempt in 0..MAX_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match try_move(shared, &mut client, run, from, to).await {
            Ok(done) => return Ok(done),
            Err(Failure::Final(e)) => return Err(e),
            Err(Failure::Again(e)) => {
                tracing::info!(slots = %run, from, to, error = %e, "slot move attempt failed; retrying");
                last_error = e;
            }
        }
    }
    Err(last_error)
}

enum Failure {
    /// Worth a new attempt (a leader changed, a step's outcome is unknown, an attempt was
    /// superseded).
    Again(String),
    /// Not: the slot is not where it was said to be.
    Final(String),
}

/// Proposes one CAIRN.MIGRATE step to shard `group`; its reply, or the error it gave.
async fn step(
    shared: &Shared,
    client: &mut Client,
    group: u64,
    args: Vec<Vec<u8>>,
) -> Result<Reply, String> {
    let mut cmd = vec![cairn_store::cmd::migrate::NAME.as_bytes().to_vec()];
    cmd.extend(args);
    let bytes = replicated::propose_to(shared, client, group, cmd).await;
    match cairn_resp::parse_reply(&bytes) {
        Some(Reply::Error(e)) => Err(e.to_string()),
        Some(r) => Ok(r),
        None => Err("a shard answered with a reply that could not be read".into()),
    }
}

fn args(parts: &[&(dyn ToString + Sync)]) -> Vec<Vec<u8>> {
    parts.iter().map(|p| p.to_string().into_bytes()).collect()
}

fn ints(r: &Reply) -> Vec<i64> {
    match r {
        Reply::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                Reply::Int(n) => Some(*n),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Copies pending keys from the source to the target until a TAKE hands out nothing.
/// Returns how many are still pending after the last round.
async fn copy_round(
    shared: &Shared,
    client: &mut Client,
    slot: SlotRun,
    from: u64,
    to: u64,
    attempt: u64,
) -> Result<i64, Failure> {
    let again = Failure::Again;
    let take = step(
        shared,
        client,
        from,
        args(&[&"TAKE", &slot, &attempt, &TAKE_KEYS, &TAKE_BYTES]),
    )
    .await
    .map_err(again)?;
    let Reply::Array(parts) = take else {
        return Err(Failure::Again("TAKE gave no array".into()));
    };
    let (Some(Reply::Int(reset)), Some(Reply::Int(pending)), Some(Reply::Array(records))) =
        (parts.first(), parts.get(1), parts.get(2))
    else {
        return Err(Failure::Again("TAKE gave an unexpected reply".into()));
    };
    if records.is_empty() && *reset == 0 {
        return Ok(*pending);
    }
    let mut load = args(&[&"LOAD", &slot, &attempt, reset]);
    for record in records {
        let Reply::Array(f) = record else {
            return Err(Failure::Again("TAKE gave a malformed record".into()));
        };
        let (Some(Reply::Bulk(key)), Some(Reply::Int(at))) = (f.first(), f.get(1)) else {
            return Err(Failure::Again("TAKE gave a malformed record".into()));
        };
        load.push(key.clone());
        load.push(at.to_string().into_bytes());
        load.push(match f.get(2) {
            Some(Reply::Bulk(dump)) => dump.clone(),
            _ => Vec::new(),
        });
    }
    step(shared, client, to, load).await.map_err(again)?;
    Ok(*pending)
}

async fn try_move(
    shared: &Shared,
    client: &mut Client,
    slot: SlotRun,
    from: u64,
    to: u64,
) -> Result<bool, Failure> {
    let again = Failure::Again;
    let out = step(shared, client, from, args(&[&"OUT", &slot, &to]))
        .await
        .map_err(|e| {
            if e.contains("not served") || e.contains("already moving") {
                Failure::Final(e)
            } else {
                Failure::Again(e)
            }
        })?;
    let (attempt, epoch) = match ints(&out)[..] {
        [a, e] => (a as u64, e as u64),
        _ => return Err(Failure::Again("OUT gave an unexpected reply".into())),
    };
    let set_up = step(shared, client, to, args(&[&"IN", &slot, &from, &attempt]))
        .await
        .map_err(again)?;
    if set_up == Reply::Int(0) {
        // The target serves the slot already: an earlier attempt finished all but the drop.
        drop_source(shared, client, slot, from).await;
        return Ok(true);
    }
    // Copy while the source serves writes, until few keys are left pending.
    let mut released = None;
    for _ in 0..MAX_ROUNDS {
        let pending = copy_round(shared, client, slot, from, to, attempt).await?;
        if pending as u64 > RELEASE_AT {
            continue;
        }
        if shared.reshard.cancel.load(Ordering::SeqCst) {
            let _ = step(shared, client, from, args(&[&"CANCEL", &slot])).await;
            let _ = step(shared, client, to, args(&[&"ABORT", &slot])).await;
            return Ok(false);
        }
        let r = step(
            shared,
            client,
            from,
            args(&[&"RELEASE", &slot, &attempt, &RELEASE_AT]),
        )
        .await
        .map_err(again)?;
        if let [1, epoch] = ints(&r)[..] {
            released = Some(epoch as u64);
            break;
        }
    }
    let Some(released_epoch) = released else {
        return Err(Failure::Again(
            "the writes to the slot kept ahead of the copy".into(),
        ));
    };
    debug_assert!(
        released_epoch == epoch,
        "a slot's epoch changed during its move"
    );
    // The source serves the slot no longer and its keys are frozen (nothing becomes pending
    // again): take the rest, until a round leaves none pending.
    let mut rounds = 0;
    while copy_round(shared, client, slot, from, to, attempt).await? > 0 {
        rounds += 1;
        if rounds >= MAX_ROUNDS {
            return Err(Failure::Again(
                "keys stayed pending after the hand-over".into(),
            ));
        }
    }
    step(
        shared,
        client,
        to,
        args(&[&"ACQUIRE", &slot, &attempt, &(epoch + 1)]),
    )
    .await
    .map_err(again)?;
    record_in_meta(shared, client, slot, to, epoch + 1).await;
    drop_source(shared, client, slot, from).await;
    Ok(true)
}

/// Records a finished move in the meta group's slot map (see `meta.rs`), retrying for a
/// while. The shards' logs already decide who serves the slots; the record is what nodes
/// learn the map from besides their own replicas.
async fn record_in_meta(shared: &Shared, client: &mut Client, run: SlotRun, to: u64, epoch: u64) {
    let cmd: Vec<Vec<u8>> = [
        crate::meta::NAME.to_string(),
        "SLOTS".to_string(),
        run.to_string(),
        to.to_string(),
        epoch.to_string(),
    ]
    .map(String::into_bytes)
    .to_vec();
    for _ in 0..10 {
        let reply = replicated::propose_to(shared, client, crate::meta::GROUP, cmd.clone()).await;
        if reply.starts_with(b":") {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tracing::warn!(slots = %run, to, epoch, "could not record a finished move in the meta group");
}

/// Deletes the source's frozen copy, retrying for a while: the move is complete whether or not
/// this succeeds (a copy left behind is not served; the watchdog drops it later).
async fn drop_source(shared: &Shared, client: &mut Client, slot: SlotRun, from: u64) {
    for _ in 0..10 {
        if step(shared, client, from, args(&[&"DROP", &slot]))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs until shutdown: every second, takes over the stalled moves out of shards this node
/// leads (see the module documentation).
pub async fn watchdog(shared: Arc<Shared>) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    let mut shutdown = shared.shutdown.clone();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        // (source, attempt, target, slot)
        let mut stalled: Vec<(u64, u64, u64, u16)> = Vec::new();
        {
            let mut seen = shared.reshard.seen.lock();
            let mut present = BTreeSet::new();
            for (group, g) in repl.groups() {
                if !g.is_leader {
                    continue;
                }
                let store = shared.shards.store(group).lock();
                for (&slot, o) in &store.moves.outgoing {
                    present.insert(slot);
                    let state = (group, o.attempt, o.pending.len(), o.released);
                    match seen.get(&slot) {
                        Some((s, since)) if *s == state => {
                            if now.duration_since(*since) >= STALLED {
                                stalled.push((group, o.attempt, o.to, slot));
                            }
                        }
                        _ => {
                            seen.insert(slot, (state, now));
                        }
                    }
                }
            }
            seen.retain(|slot, _| present.contains(slot));
        }
        abort_orphans(&shared, repl, now).await;
        record_missing(&shared, repl).await;
        // The slots of one attempt move on together, as they began.
        stalled.sort_unstable();
        stalled.retain(|s| !shared.reshard.active.lock().contains(&s.3));
        let mut i = 0;
        while i < stalled.len() {
            let (from, attempt, to, _) = stalled[i];
            let mut j = i;
            while j < stalled.len()
                && (stalled[j].0, stalled[j].1, stalled[j].2) == (from, attempt, to)
            {
                j += 1;
            }
            let slots: Vec<u16> = stalled[i..j].iter().map(|s| s.3).collect();
            i = j;
            for run in runs(slots, MAX_RUN) {
                {
                    let mut seen = shared.reshard.seen.lock();
                    run.slots().for_each(|s| {
                        seen.remove(&s);
                    });
                }
                tracing::info!(slots = %run, from, to, "taking over a stalled slot move");
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = move_slots(&shared, run, from, to).await {
                        tracing::warn!(slots = %run, from, to, error = %e, "a taken-over slot move failed");
                    }
                });
            }
        }
    }
}

/// The most slot runs [`record_missing`] commits per watchdog round.
const MAX_RECORDS: usize = 64;

/// Commits to the meta group the ownership of slots that shards this node leads serve at a
/// newer epoch than the meta group records (a move whose own record failed to commit, or
/// whose coordinator died after the hand-over). Nodes that hold neither shard of a move route
/// by these records alone: without this, they would send the slot to its old shard, which
/// refuses it, until the slot moved again.
async fn record_missing(shared: &Shared, repl: &replicated::Replication) {
    let mut missing: Vec<(u64, u64, u16)> = Vec::new();
    {
        let meta = repl.meta.lock();
        for (group, g) in repl.groups() {
            if !g.is_leader {
                continue;
            }
            let store = shared.shards.store(group).lock();
            for (&slot, &epoch) in &store.moves.epochs {
                let recorded = meta.slots.get(&slot).map_or(0, |&(_, e)| e);
                if epoch > recorded && store.keyspace.serves(slot as usize) {
                    missing.push((group, epoch, slot));
                }
            }
        }
    }
    if missing.is_empty() {
        return;
    }
    missing.sort_unstable();
    let mut client = Client::internal(shared);
    let mut i = 0;
    let mut recorded = 0;
    while i < missing.len() && recorded < MAX_RECORDS {
        let (group, epoch, _) = missing[i];
        let mut j = i;
        while j < missing.len() && (missing[j].0, missing[j].1) == (group, epoch) {
            j += 1;
        }
        let slots: Vec<u16> = missing[i..j].iter().map(|m| m.2).collect();
        i = j;
        for run in runs(slots, MAX_RUN) {
            tracing::info!(slots = %run, shard = group, epoch, "recording a finished move the meta group lacked");
            record_in_meta(shared, &mut client, run, group, epoch).await;
            recorded += 1;
        }
    }
}

/// Drops the copies held by shards this node leads for move attempts that their source shard
/// (as this node's replica of it has applied) no longer runs, once that has held for
/// [`STALLED`].
async fn abort_orphans(shared: &Shared, repl: &replicated::Replication, now: Instant) {
    let mut found = Vec::new();
    for (group, g) in repl.groups() {
        if !g.is_leader {
            continue;
        }
        let incoming: Vec<(u16, u64, u64)> = {
            let store = shared.shards.store(group).lock();
            store
                .moves
                .incoming
                .iter()
                .map(|(&slot, i)| (slot, i.attempt, i.from))
                .collect()
        };
        for (slot, attempt, from) in incoming {
            // Only a replica of the source can tell whether the attempt still runs there.
            if !repl.hosts(from) {
                continue;
            }
            let running = shared.shards.stores().any(|(g, s)| {
                g == from
                    && s.lock()
                        .moves
                        .outgoing
                        .get(&slot)
                        .is_some_and(|o| o.attempt == attempt && o.to == group)
            });
            if !running {
                found.push((group, slot, attempt));
            }
        }
    }
    let due: Vec<(u64, u16, u64)> = {
        let mut orphans = shared.reshard.orphans.lock();
        orphans.retain(|k, _| found.contains(k));
        for k in &found {
            orphans.entry(*k).or_insert(now);
        }
        orphans
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= STALLED)
            .map(|(k, _)| *k)
            .collect()
    };
    let mut client = Client::internal(shared);
    for (group, slot, attempt) in due {
        tracing::info!(
            slot,
            group,
            attempt,
            "dropping the copy of an abandoned slot move"
        );
        let _ = step(
            shared,
            &mut client,
            group,
            args(&[&"ABORT", &slot, &attempt]),
        )
        .await;
        shared
            .reshard
            .orphans
            .lock()
            .remove(&(group, slot, attempt));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebalance_gives_every_shard_its_share_and_moves_no_more_than_needed() {
        // After a split of shard 2 of two: 1 has 8192, 2 has 4096, 3 has 4096.
        let mut owner = vec![1u64; SLOTS];
        owner[8192..12288].fill(2);
        owner[12288..].fill(3);
        let plan = rebalance_plan(&owner, &[1, 2, 3]);
        for (slot, from, _) in &plan {
            assert_eq!(owner[*slot as usize], *from);
        }
        for (slot, _, to) in &plan {
            owner[*slot as usize] = *to;
        }
        let count = |g: u64| owner.iter().filter(|&&o| o == g).count();
        assert_eq!((count(1), count(2), count(3)), (5462, 5461, 5461));
        // Only shard 1's surplus moved, and a balanced map needs nothing.
        assert_eq!(plan.len(), 8192 - 5462);
        assert!(rebalance_plan(&owner, &[1, 2, 3]).is_empty());
        // An empty shard (just created) gets its share too.
        let owner = vec![1u64; SLOTS];
        let plan = rebalance_plan(&owner, &[1, 2]);
        assert_eq!(plan.len(), 8192);
        assert!(plan.iter().all(|&(_, from, to)| (from, to) == (1, 2)));
    }
}
