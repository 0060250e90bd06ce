//! The multi-raft driver: every Raft group of one node, driven in rounds.
//!
//! It is sans-IO: the caller feeds it ticks, incoming messages and proposals, and runs rounds.
//! A round handles the `Ready` of every group that has one, in the order raft-rs requires, in
//! two halves so the caller can act between them:
//!
//! 1. [`MultiRaft::begin_round`]: stage every group's snapshot, entries and hard state into one
//!    `LogBatch`; hand out what may go before the write: a leader's appends and heartbeats,
//!    confirmed read points, and committed entries applied to the state machine (raft-rs only
//!    hands out entries already persisted here);
//! 2. [`MultiRaft::finish_round`]: write the batch with one fsync (all groups of the round share
//!    it; none when only commit indexes moved), publish it to raft-rs's reads, hand out the
//!    messages that had to wait for it (a follower's acknowledgements), advance, and apply what
//!    the light ready adds.
//!
//! [`MultiRaft::round`] runs both halves. Every output names its group and carries each entry's
//! context, so the caller can answer the client that proposed it.

use crate::members::{self, Members};
use crate::storage::{GroupStorage, LogEngine, Staged, StorageFault};
use raft::eraftpb::MessageType;
use raft::eraftpb::{
    ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, Snapshot,
};
use raft::{RawNode, StateRole, CAMPAIGN_TRANSFER};
use raft_engine::LogBatch;
use std::collections::{BTreeMap, HashMap};

/// The index (and term) of the snapshot a new group starts from.
const BOOTSTRAP_INDEX: u64 = 1;

/// A shard's state machine, as the driver sees it.
pub trait StateMachine {
    /// Applies one committed command; the bytes returned go to whoever proposed it.
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8>;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// The same, as work for another thread: the driver stops applying until it is done, so
    /// the state it reads is the one at the snapshot's index, while the driver thread keeps
    /// ticking, stepping and sending heartbeats. None (the default): [`StateMachine::snapshot`]
    /// runs on the driver thread.
    fn snapshot_job(&self) -> Option<SnapshotJob> {
        None
    }
    /// Replaces the state with a snapshot's.
    fn restore(&mut self, data: &[u8]) -> Result<(), String>;
    /// Told before each run of entries is applied whether this replica leads the group (the
    /// leader may do what must happen once per entry, such as publishing events). Not part
    /// of the replicated state: applying must give the same state either way.
    fn set_leading(&mut self, _leading: bool) {}
}

/// Produces a state machine's snapshot bytes on another thread.
pub type SnapshotJob = Box<dyn FnOnce() -> Vec<u8> + Send + 'static>;

/// A snapshot being taken on a background thread.
struct Pending {
    index: u64,
    /// The snapshot's size once saved, or why saving failed.
    done: std::sync::mpsc::Receiver<Result<u64, String>>,
    /// Committed entries held back until the snapshot has read the state.
    deferred: Vec<Entry>,
}

/// A Raft message for one group (raft-rs messages do not name their group).
#[derive(Clone, Debug)]
pub struct Envelope {
    pub group: u64,
    pub message: Message,
}

/// A command entry applied in this round.
#[derive(Clone, Debug, PartialEq)]
pub struct Applied {
    pub group: u64,
    pub index: u64,
    pub term: u64,
    /// The context the proposer attached (it identifies the waiting client).
    pub context: Vec<u8>,
    pub result: Vec<u8>,
}

/// A linearizable read point confirmed by a quorum: reads tagged `context` may run once the
/// group has applied `index`.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadPoint {
    pub group: u64,
    pub index: u64,
    pub context: Vec<u8>,
}

#[derive(Default, Debug)]
pub struct RoundOutput {
    pub messages: Vec<Envelope>,
    pub applied: Vec<Applied>,
    pub read_points: Vec<ReadPoint>,
    /// Members added (with their address) or removed (`address: None`) this round.
    pub membership: Vec<MemberChange>,
    /// Groups whose Ready was handled.
    pub groups_ready: usize,
}

/// A member added to or removed from a group, as applied here.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberChange {
    pub group: u64,
    pub node: u64,
    /// Where it can be reached; None when it was removed.
    pub address: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The disk failed. The node must stop serving writes: fail-stop.
    #[error("log storage failed: {0}")]
    Storage(#[from] StorageFault),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("no group {0} on this node")]
    UnknownGroup(u64),
    #[error("group {group}: this node is not the leader (leader: {leader:?})")]
    NotLeader { group: u64, leader: Option<u64> },
    #[error("group {group}: state machine snapshot could not be restored: {why}")]
    Restore { group: u64, why: String },
    /// A background snapshot could not be taken or saved.
    #[error("group {group}: snapshot failed: {why}")]
    Snapshot { group: u64, why: String },
}

/// Settings shared by every group on the node.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Ticks without a leader before an election (randomized up to twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Flow control: the most bytes in one append message, appends in flight per follower,
    /// and proposed-but-uncommitted bytes a leader accepts.
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    pub max_uncommitted_size: u64,
    /// Take a snapshot and compact the log once this many entries were applied since the last
    /// and the log since then is at least as large as that snapshot (Redis's rule for
    /// rewriting its AOF): a snapshot rewrites the whole state, so taking them by entry count
    /// alone would cost, for a large state, more than the writes themselves.
    pub snapshot_every: u64,
    /// Spread leadership evenly over the nodes (see [`MultiRaft::balance_leaders`]).
    pub balance_leaders: bool,
    /// Groups left out of that: neither counted nor moved (a server's meta group does little
    /// work, and counting it would let one node lead two shards while another leads it).
    pub unbalanced: Vec<u64>,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            election_ticks: 10,
            heartbeat_ticks: 2,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            max_uncommitted_size: 64 * 1024 * 1024,
            snapshot_every: 10_000,
            balance_leaders: true,
            unbalanced: Vec::new(),
        }
    }
}

/// How far behind its leader's last index a voter may be and still be handed a leadership by
/// [`MultiRaft::balance_leaders`] (raft-rs then sends it the rest before the transfer).
const BALANCE_CAUGHT_UP: u64 = 1_000;

struct Group<S> {
    raw: RawNode<GroupStorage>,
    sm: S,
    applied: u64,
    snapshot_index: u64,
    /// Snapshots received from a leader and installed.
    snapshots_installed: u64,
    /// Ticks since the group was opened here, counted up to the election timeout.
    ticks: usize,
    /// Bytes of entries applied since the newest snapshot, and that snapshot's size.
    log_bytes: u64,
    snapshot_bytes: u64,
    /// A snapshot being taken in the background, if any.
    pending: Option<Pending>,
    /// Addresses of members added by conf changes (see `members.rs`).
    members: Members,
}

/// Every group of one node.
pub struct MultiRaft<S> {
    node_id: u64,
    engine: LogEngine,
    groups: BTreeMap<u64, Group<S>>,
    config: GroupConfig,
    logger: slog::Logger,
    /// How many groups each node leads cluster-wide, when known (see
    /// [`MultiRaft::balance_leaders`]).
    cluster_leaders: Option<HashMap<u64, usize>>,
}

impl<S: StateMachine> MultiRaft<S> {
    pub fn new(node_id: u64, engine: LogEngine, config: GroupConfig) -> Self {
        let logger = slog::Logger::root(crate::log::TracingDrain, slog::o!("node" => node_id));
        MultiRaft {
            node_id,
            engine,
            groups: BTreeMap::new(),
            config,
            logger,
            cluster_leaders: None,
        }
    }

    /// How many groups each node leads across the cluster, for leader balancing (see
    /// [`MultiRaft::balance_leaders`]); None to count over the groups held here.
    pub fn set_cluster_leaders(&mut self, led: Option<HashMap<u64, usize>>) {
        self.cluster_leaders = led;
    }

    pub fn config(&self) -> &GroupConfig {
        &self.config
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The groups this node hosts.
    pub fn group_ids(&self) -> Vec<u64> {
        self.groups.keys().copied().collect()
    }

    /// Opens a group: restores its last snapshot into `sm` and resumes from the log. `voters` is
    /// used only for a group that has no state on disk yet (bootstrap).
    ///
    /// A group removed from this node earlier ([`MultiRaft::close_group`]) is never bootstrapped
    /// again: asked to with `voters`, this opens nothing and returns false. Opened with no
    /// voters, it waits to be sent the group's state like any new member. Returns whether the
    /// group is open.
    pub fn open_group(&mut self, id: u64, voters: &[u64], mut sm: S) -> Result<bool, DriverError> {
        let storage = self.engine.group(id)?;
        let state = raft::Storage::initial_state(&storage)?;
        let fresh = state.conf_state.voters.is_empty() && state.conf_state.learners.is_empty();
        if fresh && !voters.is_empty() && self.engine.was_removed(id) {
            return Ok(false);
        }
        if state.conf_state.voters.is_empty() && !voters.is_empty() {
            // Bootstrap from a snapshot at index 1 rather than from an empty log: the log then
            // starts at 2, so a member added later is always sent a snapshot first, and
            // learns the configuration from it, instead of replaying the log from index 1
            // with no configuration at all.
            let mut snap = Snapshot::default();
            snap.set_data(members::frame_snapshot(&Members::new(), &sm.snapshot()).into());
            let meta = snap.mut_metadata();
            meta.index = BOOTSTRAP_INDEX;
            meta.term = BOOTSTRAP_INDEX;
            meta.mut_conf_state().voters = voters.to_vec();
            let hs = raft::eraftpb::HardState {
                term: BOOTSTRAP_INDEX,
                commit: BOOTSTRAP_INDEX,
                ..Default::default()
            };
            let mut batch = LogBatch::default();
            let staged = storage.stage(&mut batch, Some(&snap), &[], Some(&hs))?;
            self.engine.write(&mut batch)?;
            storage.commit(staged);
        }
        let mut applied = 0;
        let mut members = Members::new();
        let snapshot_bytes = storage
            .latest_snapshot()
            .map_or(0, |s| s.get_data().len() as u64);
        if let Some(snap) = storage.latest_snapshot() {
            let (from_snapshot, state) = members::split_snapshot(snap.get_data())
                .map_err(|why| DriverError::Restore { group: id, why })?;
            sm.restore(state)
                .map_err(|why| DriverError::Restore { group: id, why })?;
            applied = snap.get_metadata().index;
            members = from_snapshot;
        }
        // Conf changes applied after the snapshot wrote a newer record.
        if let Some(record) = storage.load_members() {
            members = members::decode(&record)
                .map_err(|why| DriverError::Restore { group: id, why })?
                .0;
        }
        let c = &self.config;
        let raft_config = raft::Config {
            id: self.node_id,
            election_tick: c.election_ticks,
            heartbeat_tick: c.heartbeat_ticks,
            max_size_per_msg: c.max_size_per_msg,
            max_inflight_msgs: c.max_inflight_msgs,
            max_uncommitted_size: c.max_uncommitted_size,
            pre_vote: true,
            check_quorum: true,
            applied,
            ..Default::default()
        };
        raft_config.validate()?;
        let raw = RawNode::new(&raft_config, storage, &self.logger)?;
        self.groups.insert(
            id,
            Group {
                raw,
                sm,
                applied,
                snapshot_index: applied,
                snapshots_installed: 0,
                ticks: 0,
                log_bytes: 0,
                snapshot_bytes,
                pending: None,
                members,
            },
        );
        Ok(true)
    }

    /// Closes group `id` on this node for good, after a membership change removed this node
    /// from it: drops its state machine and deletes its log and records (leaving a tombstone,
    /// see [`LogEngine::remove_group`]). A snapshot being taken in the background is waited
    /// for first, so that it cannot write the group back. Returns whether it was open.
    pub fn close_group(&mut self, id: u64) -> Result<bool, DriverError> {
        let Some(mut g) = self.groups.remove(&id) else {
            return Ok(false);
        };
        if let Some(p) = g.pending.take() {
            let _ = p.done.recv();
        }
        drop(g);
        self.engine.remove_group(id)?;
        Ok(true)
    }

    /// Groups that have state on disk but are not open (a node reopens them after a restart).
    pub fn stored_groups(&self) -> Vec<u64> {
        let mut on_disk = self.engine.groups();
        on_disk.retain(|g| !self.groups.contains_key(g));
        on_disk
    }

    /// The group, if this node leads it; else who does, as far as it knows.
    fn led_group(&mut self, group: u64) -> Result<&mut Group<S>, DriverError> {
        let g = self.group(group)?;
        if g.raw.raft.state != StateRole::Leader {
            let leader = Some(g.raw.raft.leader_id).filter(|&l| l != 0);
            return Err(DriverError::NotLeader { group, leader });
        }
        Ok(g)
    }

    fn group(&mut self, id: u64) -> Result<&mut Group<S>, DriverError> {
        self.groups
            .get_mut(&id)
            .ok_or(DriverError::UnknownGroup(id))
    }

    /// Advances every group's logical clock by one tick.
    pub fn tick(&mut self) {
        let limit = self.config.election_ticks;
        for g in self.groups.values_mut() {
            g.raw.tick();
            g.ticks = (g.ticks + 1).min(limit);
        }
    }

    /// Steps a message from a peer. A group opened less than an election timeout ago ignores
    /// votes (unless the leader itself hands leadership over): before it went down it may have
    /// acknowledged a leader's heartbeat, promising not to vote for an election timeout, and
    /// the leader's read lease counts on that promise (see [`MultiRaft::lease_safe_for`]).
    /// raft-rs keeps the promise only while the node remembers its leader.
    pub fn step(&mut self, env: Envelope) -> Result<(), DriverError> {
        let limit = self.config.election_ticks;
        let g = self.group(env.group)?;
        let m = &env.message;
        let vote = matches!(
            m.get_msg_type(),
            MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
        );
        if vote
            && g.ticks < limit
            && m.term > g.raw.raft.term
            && m.get_context() != CAMPAIGN_TRANSFER
        {
            return Ok(());
        }
        Ok(g.raw.step(env.message)?)
    }

    /// How long a leader may serve reads from its own state after a quorum acknowledged its
    /// heartbeat, given `tick` (the wall-clock length of one tick, which must never pass
    /// faster than that on any node). A follower that acknowledged a heartbeat refuses votes
    /// until `election_ticks` ticks later (raft-rs's check-quorum lease), and ticks come at least
    /// `tick` apart, the first possibly right away: no other leader can be elected within
    /// `(election_ticks - 1) * tick` of the heartbeat being sent. One more tick and 10% are
    /// kept as margin for scheduling and clock-rate differences. Zero when too short to help.
    pub fn lease_safe_for(&self, tick: std::time::Duration) -> std::time::Duration {
        let ticks = self.config.election_ticks.saturating_sub(2) as u32;
        tick * ticks * 9 / 10
    }

    /// Proposes a command; its result comes back from a later round as [`Applied`] with the
    /// same context, or never if leadership is lost first (the caller times out and retries).
    pub fn propose(
        &mut self,
        group: u64,
        context: Vec<u8>,
        data: Vec<u8>,
    ) -> Result<(), DriverError> {
        let g = self.led_group(group)?;
        Ok(g.raw.propose(context, data)?)
    }

    /// Proposes a membership change (one change: add a learner, promote it to voter, remove a
    /// node); the change's context carries an added node's address. Its outcome comes back as
    /// [`Applied`] with `result` "OK" or "ERR ..." (raft-rs refused it when applying).
    pub fn propose_conf_change(
        &mut self,
        group: u64,
        context: Vec<u8>,
        change: ConfChangeV2,
    ) -> Result<(), DriverError> {
        let g = self.led_group(group)?;
        // raft-rs would turn a second pending change into an empty entry, silently.
        if g.raw.raft.has_pending_conf() {
            return Err(DriverError::Raft(raft::Error::ProposalDropped));
        }
        Ok(g.raw.propose_conf_change(context, change)?)
    }

    /// Lets raft-engine delete log files holding only compacted entries, and snapshots (and
    /// compacts) every group it names as keeping older files alive. Returns those groups.
    pub fn purge(&mut self) -> Result<Vec<u64>, DriverError> {
        let named = self.engine.purge_expired_files()?;
        for id in &named {
            if let Some(g) = self.groups.get_mut(id).filter(|g| g.pending.is_none()) {
                snapshot_now(g, &self.engine)?;
            }
        }
        Ok(named)
    }

    /// Finishes background snapshots that are done: compacts the log behind them and applies
    /// the entries held back meanwhile. Call every loop; the output carries those entries'
    /// results. A snapshot that could not be saved is a storage failure (fail-stop).
    pub fn poll_snapshots(&mut self) -> Result<RoundOutput, DriverError> {
        self.snapshots(false)
    }

    /// Finishes background snapshots: those done, or (`wait`) all of them.
    fn snapshots(&mut self, wait: bool) -> Result<RoundOutput, DriverError> {
        let mut out = RoundOutput::default();
        for (&id, g) in self.groups.iter_mut() {
            let Some(p) = g.pending.as_ref() else {
                continue;
            };
            let received = if wait {
                p.done
                    .recv()
                    .map_err(|_| std::sync::mpsc::TryRecvError::Disconnected)
            } else {
                p.done.try_recv()
            };
            let saved = match received {
                Ok(saved) => saved,
                Err(std::sync::mpsc::TryRecvError::Empty) => continue,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    Err("the snapshot thread died".to_string())
                }
            };
            let p = g.pending.take().expect("checked");
            let bytes = saved.map_err(|why| DriverError::Snapshot { group: id, why })?;
            g.raw.store().compact(p.index, &self.engine)?;
            g.snapshot_index = p.index;
            g.snapshot_bytes = bytes;
            g.log_bytes = 0;
            apply_entries(id, g, p.deferred, &self.engine, &mut out)?;
        }
        Ok(out)
    }

    /// The addresses of members added by conf changes.
    pub fn members(&self, group: u64) -> Members {
        self.groups
            .get(&group)
            .map(|g| g.members.clone())
            .unwrap_or_default()
    }

    /// (voters, learners) of a group's current configuration.
    pub fn configuration(&self, group: u64) -> (Vec<u64>, Vec<u64>) {
        self.groups.get(&group).map_or_else(Default::default, |g| {
            let cs = g.raw.raft.prs().conf().to_conf_state();
            let (mut voters, mut learners) = (cs.voters, cs.learners);
            voters.sort_unstable();
            learners.sort_unstable();
            (voters, learners)
        })
    }

    /// On the leader, how far each member's log matches its own: (member, matched index).
    pub fn matched(&self, group: u64) -> Vec<(u64, u64)> {
        match self.groups.get(&group) {
            Some(g) if g.raw.raft.state == StateRole::Leader => {
                let mut v: Vec<(u64, u64)> = g
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .map(|(&id, p)| (id, p.matched))
                    .collect();
                v.sort_unstable();
                v
            }
            _ => Vec::new(),
        }
    }

    /// Asks the leader to confirm it still leads (ReadIndex); the answer arrives in a later
    /// round's `read_points` with the same context. Only a leader gets an answer.
    /// Whether this node leads `group` and has committed an entry of its term: until then
    /// raft-rs drops a ReadIndex request without a word (its commit index may still be behind
    /// the previous leader's), so reads must wait for that first.
    pub fn read_index_ready(&self, group: u64) -> bool {
        self.groups.get(&group).is_some_and(|g| {
            let raft = &g.raw.raft;
            raft.state == StateRole::Leader
                && raft.raft_log.term(raft.raft_log.committed).ok() == Some(raft.term)
        })
    }

    pub fn read_index(&mut self, group: u64, context: Vec<u8>) -> Result<(), DriverError> {
        let g = self.led_group(group)?;
        g.raw.read_index(context);
        Ok(())
    }

    /// The transport could not reach `peer`: raft slows its appends to it down to probing.
    pub fn report_unreachable(&mut self, group: u64, peer: u64) {
        if let Some(g) = self.groups.get_mut(&group) {
            g.raw.report_unreachable(peer);
        }
    }

    /// The transport finished (or failed) sending a snapshot to `peer`. Must be called for every
    /// snapshot message: until it is, raft pauses appends to that peer, so a lost snapshot with no
    /// report would leave the peer behind forever.
    pub fn report_snapshot(&mut self, group: u64, peer: u64, delivered: bool) {
        if let Some(g) = self.groups.get_mut(&group) {
            let status = if delivered {
                raft::SnapshotStatus::Finish
            } else {
                raft::SnapshotStatus::Failure
            };
            g.raw.report_snapshot(peer, status);
        }
    }

    /// Starts handing this node's leadership of `group` to the voter whose log is furthest
    /// along (preferring ones heard from recently), so it can be elected at once instead of
    /// after an election timeout. Returns the chosen voter, or None when this node does not
    /// lead the group or has no voter to hand to. While the transfer runs raft-rs drops
    /// proposals (the caller retries them on the new leader); it gives up after an election
    /// timeout.
    /// With `to`, hands to that voter only (None if it is not another voter of the group).
    pub fn hand_off(&mut self, group: u64, to: Option<u64>) -> Option<u64> {
        let me = self.node_id;
        let g = self.groups.get_mut(&group)?;
        if g.raw.raft.state != StateRole::Leader {
            return None;
        }
        let prs = g.raw.raft.prs();
        let to = prs
            .conf()
            .voters()
            .ids()
            .iter()
            .filter(|&id| id != me && to.is_none_or(|t| t == id))
            .filter_map(|id| prs.get(id).map(|p| (p.recent_active, p.matched, id)))
            .max()?
            .2;
        g.raw.transfer_leader(to);
        Some(to)
    }

    /// Evens out leadership over the nodes, one step: when this node leads at least two groups
    /// more than another voter of one of them (counted over the groups this node holds, with
    /// the leaders it knows), it hands that group to the voter that leads fewest, provided
    /// that voter was heard from recently and its log is nearly caught up. Every node runs
    /// this, so leadership spreads out after an election, and comes back to a node that was
    /// down once it has caught up. A gap of two (not one) keeps two nodes from handing one
    /// group back and forth. Returns the transfer started, as (group, new leader).
    ///
    /// When the node holds only some of the groups, `cluster_leaders` (set by the caller from
    /// what the other nodes say they lead, every group counted) replaces the counts over the
    /// groups held here, which would see only part of each node's load.
    pub fn balance_leaders(&mut self) -> Option<(u64, u64)> {
        let me = self.node_id;
        let mut led: HashMap<u64, usize> = HashMap::new();
        let skip = self.config.unbalanced.clone();
        for (gid, g) in self.groups.iter() {
            if skip.contains(gid) {
                continue;
            }
            for id in g.raw.raft.prs().conf().voters().ids().iter() {
                led.entry(id).or_insert(0);
            }
            if g.raw.raft.leader_id != 0 {
                *led.entry(g.raw.raft.leader_id).or_insert(0) += 1;
            }
        }
        if let Some(cluster) = &self.cluster_leaders {
            for (id, n) in led.iter_mut() {
                *n = cluster.get(id).copied().unwrap_or(0);
            }
        }
        let mine = *led.get(&me)?;
        for (&id, g) in self.groups.iter_mut() {
            let raft = &g.raw.raft;
            if skip.contains(&id)
                || raft.state != StateRole::Leader
                || raft.lead_transferee.is_some()
            {
                continue;
            }
            let last = raft.raft_log.last_index();
            let prs = raft.prs();
            let to = prs
                .conf()
                .voters()
                .ids()
                .iter()
                .filter(|&t| t != me && led.get(&t).copied().unwrap_or(0) + 2 <= mine)
                .filter(|t| {
                    prs.get(*t)
                        .is_some_and(|p| p.recent_active && p.matched + BALANCE_CAUGHT_UP >= last)
                })
                .min_by_key(|&t| (led.get(&t).copied().unwrap_or(0), t));
            if let Some(to) = to {
                g.raw.transfer_leader(to);
                return Some((id, to));
            }
        }
        None
    }

    pub fn campaign(&mut self, group: u64) -> Result<(), DriverError> {
        Ok(self.group(group)?.raw.campaign()?)
    }

    pub fn leader_of(&self, group: u64) -> Option<u64> {
        self.groups
            .get(&group)
            .map(|g| g.raw.raft.leader_id)
            .filter(|&l| l != 0)
    }

    /// Whether this node, leading `group`, is handing leadership over (raft-rs's
    /// `lead_transferee`): the transferee may be elected at any moment, by a vote that ignores
    /// leases.
    pub fn is_transferring(&self, group: u64) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|g| g.raw.raft.lead_transferee.is_some())
    }

    pub fn is_leader(&self, group: u64) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|g| g.raw.raft.state == StateRole::Leader)
    }

    /// (term, commit index, applied index) of a group.
    pub fn progress(&self, group: u64) -> Option<(u64, u64, u64)> {
        self.groups
            .get(&group)
            .map(|g| (g.raw.raft.term, g.raw.raft.raft_log.committed, g.applied))
    }

    /// The term of the entry at `index` in a group's log here, if the log still holds it.
    pub fn term_at(&self, group: u64, index: u64) -> Option<u64> {
        let g = self.groups.get(&group)?;
        g.raw.raft.raft_log.term(index).ok().filter(|&t| t != 0)
    }

    /// The index of the last entry in a group's log here (a proposal just taken is there).
    pub fn last_index(&self, group: u64) -> Option<u64> {
        self.groups
            .get(&group)
            .map(|g| g.raw.raft.raft_log.last_index())
    }

    /// (index of the newest snapshot, snapshots installed from a leader) of a group.
    pub fn snapshot_info(&self, group: u64) -> Option<(u64, u64)> {
        self.groups
            .get(&group)
            .map(|g| (g.snapshot_index, g.snapshots_installed))
    }

    pub fn state_machine(&self, group: u64) -> Option<&S> {
        self.groups.get(&group).map(|g| &g.sm)
    }

    /// Handles the Ready of every group that has one, with one fsync for all of them.
    ///
    /// Snapshots taken in the background are waited for, before and after, so that a caller
    /// using only this (the in-process test clusters) sees every committed entry applied.
    pub fn round(&mut self) -> Result<RoundOutput, DriverError> {
        let mut before = self.snapshots(true)?;
        let mut early = Vec::new();
        let mut out = self.round_with(&mut |m| early.extend(m))?;
        early.append(&mut out.messages);
        out.messages = early;
        let after = self.snapshots(true)?;
        before.applied.append(&mut out.applied);
        before.applied.extend(after.applied);
        before.membership.append(&mut out.membership);
        before.membership.extend(after.membership);
        out.applied = before.applied;
        out.membership = before.membership;
        Ok(out)
    }

    /// As [`MultiRaft::round`], but the messages that may leave before this round's write go
    /// to `send_early` before it. Everything else of the first half (entries applied, read points)
    /// is merged into the returned output.
    pub fn round_with(
        &mut self,
        send_early: &mut dyn FnMut(Vec<Envelope>),
    ) -> Result<RoundOutput, DriverError> {
        let mut round = self.begin_round()?;
        let early = std::mem::take(&mut round.early);
        if !early.messages.is_empty() {
            send_early(early.messages);
        }
        let mut out = self.finish_round(round)?;
        let mut applied = early.applied;
        applied.append(&mut out.applied);
        out.applied = applied;
        let mut points = early.read_points;
        points.append(&mut out.read_points);
        out.read_points = points;
        Ok(out)
    }

    /// The first half of a round: takes every group's Ready, stages what must be persisted into
    /// one batch, and does all that raft-rs allows before that batch is on disk. The caller acts
    /// on `early` at once (sends the messages, answers what was applied) and then calls
    /// [`MultiRaft::finish_round`]; no other call may come in between.
    ///
    /// What is allowed early (raft-rs's Ready contract): a leader's `messages` (its appends and
    /// heartbeats: the leader's disk write and its followers' overlap), read states, and
    /// committed entries (raft-rs only hands out entries that are committed *and* already
    /// persisted here, so applying them does not wait for this round's write). A group with an
    /// incoming snapshot does everything after the write.
    pub fn begin_round(&mut self) -> Result<Round, DriverError> {
        let mut round = Round::default();
        for (&id, g) in self.groups.iter_mut() {
            if !g.raw.has_ready() {
                continue;
            }
            let mut rd = g.raw.ready();
            let snapshot = (!rd.snapshot().is_empty()).then(|| rd.snapshot().clone());
            let staged =
                g.raw
                    .store()
                    .stage(&mut round.batch, snapshot.as_ref(), rd.entries(), rd.hs())?;
            if let Some(snap) = &snapshot {
                // Installing a snapshot cleans the group's records: its member record replaces
                // ours in the same write.
                let (from_snapshot, _) = members::split_snapshot(snap.get_data())
                    .map_err(|why| DriverError::Restore { group: id, why })?;
                g.raw
                    .store()
                    .stage_members(&mut round.batch, members::encode(&from_snapshot))?;
            }
            round.sync |= staged.needs_sync();
            round.early.messages.extend(
                rd.take_messages()
                    .into_iter()
                    .map(|message| Envelope { group: id, message }),
            );
            for rs in rd.take_read_states() {
                round.early.read_points.push(ReadPoint {
                    group: id,
                    index: rs.index,
                    context: rs.request_ctx,
                });
            }
            if snapshot.is_none() {
                apply_entries(
                    id,
                    g,
                    rd.take_committed_entries(),
                    &self.engine,
                    &mut round.early,
                )?;
            }
            round.pending.push((id, rd, staged, snapshot));
        }
        Ok(round)
    }

    /// The second half of a round: writes the batch (one fsync for every group, or none when
    /// only commit indexes moved: a commit index is a hint that raft relearns, so losing it in
    /// a crash is safe), publishes it to raft-rs's reads, and finishes every Ready.
    pub fn finish_round(&mut self, mut round: Round) -> Result<RoundOutput, DriverError> {
        let mut out = RoundOutput::default();
        if !round.batch.is_empty() {
            self.engine.write_with(&mut round.batch, round.sync)?;
        }
        out.groups_ready = round.pending.len();
        for (id, mut rd, staged, snapshot) in round.pending {
            let engine = self.engine.clone();
            let config = self.config.clone();
            let g = self.groups.get_mut(&id).expect("group of a pending ready");
            g.raw.store().commit(staged);
            let wrap = |m: Message| Envelope {
                group: id,
                message: m,
            };
            if let Some(snap) = snapshot {
                // A background snapshot of the old state must not land after this one.
                if let Some(p) = g.pending.take() {
                    let _ = p.done.recv();
                }
                let (from_snapshot, state) = members::split_snapshot(snap.get_data())
                    .map_err(|why| DriverError::Restore { group: id, why })?;
                g.sm.restore(state)
                    .map_err(|why| DriverError::Restore { group: id, why })?;
                for (&node, addr) in &from_snapshot {
                    if g.members.get(&node) != Some(addr) {
                        out.membership.push(MemberChange {
                            group: id,
                            node,
                            address: Some(addr.clone()),
                        });
                    }
                }
                g.members = from_snapshot;
                g.applied = snap.get_metadata().index;
                g.snapshot_index = g.applied;
                g.snapshot_bytes = snap.get_data().len() as u64;
                g.log_bytes = 0;
                g.snapshots_installed += 1;
                apply_entries(id, g, rd.take_committed_entries(), &engine, &mut out)?;
            }
            out.messages
                .extend(rd.take_persisted_messages().into_iter().map(wrap));
            let mut light = g.raw.advance(rd);
            out.messages
                .extend(light.take_messages().into_iter().map(wrap));
            apply_entries(id, g, light.take_committed_entries(), &engine, &mut out)?;
            // raft-rs counts what it handed out as applied, including entries a background
            // snapshot holds back here: it needs no more (reads wait for `g.applied`).
            g.raw.advance_apply();
            maybe_snapshot(g, &config, &engine)?;
        }
        Ok(out)
    }
}

/// A round between [`MultiRaft::begin_round`] and [`MultiRaft::finish_round`].
#[derive(Default)]
pub struct Round {
    /// What may be acted on before the round's write.
    pub early: RoundOutput,
    batch: LogBatch,
    /// Whether the batch holds anything that must be on disk before the round goes on.
    sync: bool,
    pending: Vec<(u64, raft::Ready, Staged, Option<Snapshot>)>,
}

/// Applies committed entries in order: commands to the state machine, membership changes to
/// raft (persisting the new configuration).
fn apply_entries<S: StateMachine>(
    id: u64,
    g: &mut Group<S>,
    entries: Vec<Entry>,
    engine: &LogEngine,
    out: &mut RoundOutput,
) -> Result<(), DriverError> {
    if let Some(p) = g.pending.as_mut() {
        p.deferred.extend(entries);
        return Ok(());
    }
    if !entries.is_empty() {
        g.sm.set_leading(g.raw.raft.state == StateRole::Leader);
    }
    for e in entries {
        debug_assert!(
            e.index == g.applied + 1 || e.index <= g.applied,
            "apply order: {} after {}",
            e.index,
            g.applied
        );
        if e.index <= g.applied {
            continue;
        }
        g.applied = e.index;
        g.log_bytes += e.data.len() as u64;
        let result = match e.get_entry_type() {
            EntryType::EntryNormal if e.data.is_empty() => continue, // a new leader's empty entry
            EntryType::EntryNormal => g.sm.apply(e.index, &e.data),
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                apply_conf_change(id, g, &e, engine, out)?
            }
        };
        out.applied.push(Applied {
            group: id,
            index: e.index,
            term: e.term,
            context: e.context.to_vec(),
            result,
        });
    }
    Ok(())
}

/// Applies a membership change: to raft (which may refuse it, the same way on every replica:
/// then it is a no-op everywhere, reported to whoever proposed it, never a reason to stop), to
/// the member record, and to disk. Returns "OK" or "ERR ...".
fn apply_conf_change<S: StateMachine>(
    id: u64,
    g: &mut Group<S>,
    e: &Entry,
    engine: &LogEngine,
    out: &mut RoundOutput,
) -> Result<Vec<u8>, DriverError> {
    let cc: ConfChangeV2 = if e.get_entry_type() == EntryType::EntryConfChange {
        let cc: ConfChange =
            protobuf::Message::parse_from_bytes(&e.data).map_err(StorageFault::from)?;
        let mut single = raft::eraftpb::ConfChangeSingle::default();
        single.set_change_type(cc.get_change_type());
        single.node_id = cc.node_id;
        let mut v2 = ConfChangeV2::default();
        v2.set_changes(vec![single].into());
        v2.context = cc.context;
        v2
    } else {
        protobuf::Message::parse_from_bytes(&e.data).map_err(StorageFault::from)?
    };
    // raft-rs checks the change against the current configuration, the same on
    // every replica: a refused change is a no-op everywhere, reported to whoever
    // proposed it, never a reason to stop.
    Ok(match g.raw.apply_conf_change(&cc) {
        Ok(cs) => {
            let mut changed = Vec::new();
            for c in cc.get_changes() {
                let node = c.node_id;
                let address = match c.get_change_type() {
                    ConfChangeType::RemoveNode => None,
                    _ if cc.context.is_empty() => continue,
                    _ => Some(cc.context.to_vec()),
                };
                match &address {
                    Some(a) => g.members.insert(node, a.clone()),
                    None => g.members.remove(&node),
                };
                changed.push(MemberChange {
                    group: id,
                    node,
                    address,
                });
            }
            let mut batch = LogBatch::default();
            let mut staged = g.raw.store().stage(&mut batch, None, &[], None)?;
            g.raw
                .store()
                .stage_conf_state(&mut batch, &cs, &mut staged)?;
            g.raw
                .store()
                .stage_members(&mut batch, members::encode(&g.members))?;
            engine.write(&mut batch)?;
            g.raw.store().commit(staged);
            out.membership.extend(changed);
            b"OK".to_vec()
        }
        Err(err) => format!("ERR {err}").into_bytes(),
    })
}

/// Takes a snapshot at the applied index and compacts the log behind it, once
/// `snapshot_every` entries and as many bytes as the last snapshot were applied since it.
fn maybe_snapshot<S: StateMachine>(
    g: &mut Group<S>,
    config: &GroupConfig,
    engine: &LogEngine,
) -> Result<(), DriverError> {
    let wanted = g.raw.store().take_snapshot_wanted() && g.applied > g.snapshot_index;
    if g.pending.is_some()
        || (!wanted
            && (g.applied < g.snapshot_index + config.snapshot_every
                || g.log_bytes < g.snapshot_bytes))
    {
        return Ok(());
    }
    let Some(job) = g.sm.snapshot_job() else {
        return snapshot_now(g, engine);
    };
    // Everything but the state's bytes is fixed now; applying stops until the job has them.
    let storage = g.raw.store().clone();
    let group = storage.id();
    let engine = engine.clone();
    let index = g.applied;
    let term = raft::Storage::term(&storage, index)?;
    let conf_state = g.raw.raft.prs().conf().to_conf_state();
    let members = g.members.clone();
    let (tx, done) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name(format!("snapshot-{}", storage.id()))
        .spawn(move || {
            let started = std::time::Instant::now();
            let snap = snapshot_message(&members, &job(), index, term, conf_state);
            let bytes = snap.get_data().len() as u64;
            let saved = storage.save_snapshot(snap, &engine).map(|()| bytes);
            tracing::info!(group = storage.id(), index, bytes, took = ?started.elapsed(), "snapshot taken in the background");
            let _ = tx.send(saved.map_err(|e| e.to_string()));
        })
        .map_err(|e| DriverError::Snapshot {
            group,
            why: format!("cannot start a snapshot thread: {e}"),
        })?;
    g.pending = Some(Pending {
        index,
        done,
        deferred: Vec::new(),
    });
    Ok(())
}

/// A snapshot message: the member record and the state machine's bytes, at `index`.
fn snapshot_message(
    members: &Members,
    state: &[u8],
    index: u64,
    term: u64,
    conf_state: raft::eraftpb::ConfState,
) -> Snapshot {
    let mut snap = Snapshot::default();
    snap.set_data(members::frame_snapshot(members, state).into());
    let meta = snap.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state);
    snap
}

/// Takes a snapshot at the applied index and compacts the log behind it.
fn snapshot_now<S: StateMachine>(g: &mut Group<S>, engine: &LogEngine) -> Result<(), DriverError> {
    if g.applied <= g.snapshot_index {
        return Ok(());
    }
    let started = std::time::Instant::now();
    let storage = g.raw.store().clone();
    let term = raft::Storage::term(&storage, g.applied)?;
    let state = g.sm.snapshot();
    let serialized = started.elapsed();
    let conf_state = g.raw.raft.prs().conf().to_conf_state();
    let snap = snapshot_message(&g.members, &state, g.applied, term, conf_state);
    let bytes = snap.get_data().len();
    storage.save_snapshot(snap, engine)?;
    storage.compact(g.applied, engine)?;
    g.snapshot_index = g.applied;
    g.snapshot_bytes = bytes as u64;
    g.log_bytes = 0;
    // The driver thread does this work: a long one delays every group's heartbeats.
    let took = started.elapsed();
    if took >= std::time::Duration::from_millis(100) {
        tracing::warn!(
            group = storage.id(),
            index = g.applied,
            bytes,
            ?serialized,
            ?took,
            "slow snapshot on the driver thread"
        );
    }
    Ok(())
}
