//! A node's replication runtime: the driver on its own thread (raft-engine's fsync blocks, so it
//! never runs on a tokio worker), the cluster bus, and an async API for proposals and
//! linearizable read barriers.
//!
//! Inputs reach the driver over one bounded channel. Peer messages and bus events wait for room
//! (backpressure reaches the peer through TCP); proposals and reads never wait: a full channel
//! answers [`NodeError::Busy`]. The driver thread loops: take inputs until the next tick is due,
//! tick, run one round (one fsync for every group), send its messages, and answer whoever waits
//! on what was applied or confirmed. If the disk fails, the node stops (fail-stop) and every
//! waiter learns why.

use crate::bus::{Bus, BusEvent};
use crate::driver::{DriverError, Envelope, GroupConfig, MemberChange, MultiRaft, StateMachine};
use crate::storage::LogEngine;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, watch};

/// Inputs waiting for the driver, at most.
pub const INPUT_QUEUE: usize = 65_536;
/// How often the driver lets raft-engine delete log files that hold only compacted entries.
const PURGE_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: u64,
    pub data_dir: PathBuf,
    /// Every voter's bus address, this node's included.
    pub peers: HashMap<u64, SocketAddr>,
    /// One logical clock tick; elections take `group.election_ticks` to `2 ×` that many.
    pub tick: Duration,
    pub group: GroupConfig,
    /// Mutual TLS on the cluster bus (None: plain TCP).
    pub bus_tls: Option<crate::bus::BusTls>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NodeError {
    #[error("not the leader of group {group} (leader: {leader:?})")]
    NotLeader { group: u64, leader: Option<u64> },
    /// Leadership moved while the proposal waited: it may or may not have been applied.
    #[error("leadership of group {group} changed; the outcome is unknown")]
    Indeterminate { group: u64 },
    #[error("node is busy")]
    Busy,
    #[error("node stopped: {0}")]
    Stopped(String),
}

/// What a group looks like from this node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupStatus {
    pub is_leader: bool,
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// The newest snapshot's index (taken here or installed).
    pub snapshot_index: u64,
    /// Snapshots installed from a leader since this node started.
    pub snapshots_installed: u64,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Addresses of members added by conf changes (bus addresses, as given when added).
    pub members: BTreeMap<u64, String>,
    /// On the leader: (member, index up to which its log matches the leader's).
    pub matched: Vec<(u64, u64)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeStatus {
    pub groups: BTreeMap<u64, GroupStatus>,
    /// Set when the node stopped, with the reason.
    pub stopped: Option<String>,
}

enum Input {
    Message(Envelope),
    Event(BusEvent),
    Propose {
        group: u64,
        data: Vec<u8>,
        done: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    Read {
        group: u64,
        done: oneshot::Sender<Result<(), NodeError>>,
    },
    /// A membership change (see [`MultiRaft::propose_conf_change`]).
    ConfChange {
        group: u64,
        change: raft::eraftpb::ConfChangeV2,
        done: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    },
    /// Hand leaderships here to another voter; answers (group, new leader) per transfer.
    HandOff {
        /// These groups, or every one.
        groups: Option<Vec<u64>>,
        /// A particular voter to hand to (only for groups it belongs to), or the best one.
        to: Option<u64>,
        /// This node is going away: from now on it hands over any group it comes to lead.
        leave: bool,
        done: oneshot::Sender<Vec<(u64, u64)>>,
    },
    /// Opens a group at runtime (see [`Node::open_group`]); `sm` is the driver's state
    /// machine type, boxed because inputs are not generic.
    OpenGroup {
        group: u64,
        voters: Vec<u64>,
        sm: Box<dyn std::any::Any + Send>,
        done: oneshot::Sender<Result<bool, NodeError>>,
    },
    /// Cluster-wide leader counts for balancing (see [`Node::set_cluster_leaders`]).
    ClusterLeaders(Option<HashMap<u64, usize>>),
    /// Closes a group for good (see [`Node::close_group`]).
    CloseGroup {
        group: u64,
        done: oneshot::Sender<Result<bool, NodeError>>,
    },
    Stop,
}

/// A leader's permission to read from its own state without asking a quorum, granted when a
/// quorum confirmed its leadership (a ReadIndex) and valid until `until`: no other leader can
/// exist before then (see `MultiRaft::lease_safe_for`).
#[derive(Clone, Copy, Debug)]
struct Lease {
    until: Instant,
    term: u64,
    /// The confirmed read index: local reads are linearizable once this much is applied.
    index: u64,
}

/// Every group's lease, written by the driver thread and read by connections.
type Leases = std::sync::RwLock<HashMap<u64, Lease>>;

/// A running node. Dropping it stops the driver thread.
pub struct Node {
    bus: Arc<Bus>,
    leases: Arc<Leases>,
    inputs: mpsc::Sender<Input>,
    status: watch::Receiver<NodeStatus>,
    thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The log's write counters and its folder. Not the engine itself: it lives on the
    /// driver's thread only, so that it (and its folder's lock) goes when the driver stops.
    log_stats: Arc<crate::storage::WriteStats>,
    log_dir: std::path::PathBuf,
}

impl Node {
    /// The log's writes, fsyncs and fsync latency so far.
    pub fn log_stats(&self) -> &crate::storage::WriteStats {
        &self.log_stats
    }

    /// Bytes of the log's files on disk now.
    pub fn log_disk_bytes(&self) -> u64 {
        crate::storage::disk_bytes(&self.log_dir)
    }

    /// Starts the node: opens its log, its groups (`voters` for ones that are new), and serves
    /// the bus on `bus_listener`. Must be called within a tokio runtime.
    pub fn start<S: StateMachine + Send + 'static>(
        config: NodeConfig,
        bus_listener: std::net::TcpListener,
        voters: Vec<u64>,
        groups: Vec<(u64, S)>,
    ) -> Result<Node, DriverError> {
        let groups = groups
            .into_iter()
            .map(|(id, sm)| (id, voters.clone(), sm))
            .collect();
        Self::start_placed(config, bus_listener, groups, &mut |_| None)
    }

    /// Like [`Node::start`], with each group's own voters (for a group new here), and
    /// `stored` asked for a state machine for every other group that has state on disk (a
    /// group this node joined while it ran): None leaves that group closed.
    pub fn start_placed<S: StateMachine + Send + 'static>(
        config: NodeConfig,
        bus_listener: std::net::TcpListener,
        groups: Vec<(u64, Vec<u64>, S)>,
        stored: &mut dyn FnMut(u64) -> Option<S>,
    ) -> Result<Node, DriverError> {
        let engine = LogEngine::open(&config.data_dir)?;
        let (log_stats, log_dir) = (engine.stats.clone(), engine.dir().to_path_buf());
        let mut multi = MultiRaft::new(config.id, engine, config.group.clone());
        for (id, voters, sm) in groups {
            multi.open_group(id, &voters, sm)?;
        }
        for id in multi.stored_groups() {
            if let Some(sm) = stored(id) {
                multi.open_group(id, &[], sm)?;
            }
        }
        let mut added = Vec::new();
        for g in multi.group_ids() {
            added.extend(
                multi
                    .members(g)
                    .into_iter()
                    .map(|(node, addr)| MemberChange {
                        group: g,
                        node,
                        address: Some(addr),
                    }),
            );
        }
        let peers: HashMap<u64, SocketAddr> = config
            .peers
            .iter()
            .filter(|(id, _)| **id != config.id)
            .map(|(k, v)| (*k, *v))
            .collect();
        let (bus, mut bus_in, mut bus_events) = Bus::new(config.id, peers);
        if let Some(tls) = &config.bus_tls {
            bus.set_tls(tls.clone());
        }
        learn_addresses(&bus, config.id, &added);
        let (inputs, rx) = mpsc::channel(INPUT_QUEUE);
        let (status_tx, status) = watch::channel(NodeStatus::default());
        bus_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(bus_listener)?;
        let mut tasks = vec![tokio::spawn(bus.clone().serve(listener))];
        let forward = inputs.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(env) = bus_in.recv().await {
                if forward.send(Input::Message(env)).await.is_err() {
                    return;
                }
            }
        }));
        let forward = inputs.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(event) = bus_events.recv().await {
                if forward.send(Input::Event(event)).await.is_err() {
                    return;
                }
            }
        }));
        let handle = tokio::runtime::Handle::current();
        let tick = config.tick;
        let bus_for_node = bus.clone();
        let leases = Arc::new(Leases::default());
        let lease = Granting {
            leases: leases.clone(),
            length: multi.lease_safe_for(tick),
        };
        let thread = std::thread::Builder::new()
            .name(format!("raft-driver-{}", config.id))
            .spawn(move || drive(multi, bus, rx, status_tx, tick, handle, lease))
            .expect("spawn the driver thread");
        Ok(Node {
            bus: bus_for_node,
            leases,
            inputs,
            status,
            thread: Some(thread),
            tasks,
            log_stats,
            log_dir,
        })
    }

    /// Proposes `data` to `group`; resolves with the state machine's result once applied.
    pub async fn propose(&self, group: u64, data: Vec<u8>) -> Result<Vec<u8>, NodeError> {
        let (done, wait) = oneshot::channel();
        self.inputs
            .try_send(Input::Propose { group, data, done })
            .map_err(|_| NodeError::Busy)?;
        wait.await
            .unwrap_or_else(|_| Err(NodeError::Stopped("driver gone".into())))
    }

    /// Resolves once this node, as leader, has confirmed with a quorum that it leads and has
    /// applied everything committed before the call: a read after it is linearizable.
    pub async fn read_barrier(&self, group: u64) -> Result<(), NodeError> {
        let (done, wait) = oneshot::channel();
        self.inputs
            .try_send(Input::Read { group, done })
            .map_err(|_| NodeError::Busy)?;
        wait.await
            .unwrap_or_else(|_| Err(NodeError::Stopped("driver gone".into())))
    }

    /// Proposes a membership change to `group` (this node must lead it); resolves once it is
    /// applied, with "OK" or the reason raft refused it ("ERR ...").
    pub async fn change_membership(
        &self,
        group: u64,
        change: raft::eraftpb::ConfChangeV2,
    ) -> Result<Vec<u8>, NodeError> {
        let (done, wait) = oneshot::channel();
        self.inputs
            .try_send(Input::ConfChange {
                group,
                change,
                done,
            })
            .map_err(|_| NodeError::Busy)?;
        wait.await
            .unwrap_or_else(|_| Err(NodeError::Stopped("driver gone".into())))
    }

    /// Opens group `group` on this node while it runs: resumes it from disk if it has state
    /// there, else bootstraps it with `voters` (every voter must open it with the same list).
    /// Opening a group that is open already does nothing. `sm` must be the state machine
    /// type the node was started with.
    ///
    /// Returns whether the group is open: a group removed from this node before is never
    /// bootstrapped again (see [`MultiRaft::open_group`]).
    pub async fn open_group<S: StateMachine + Send + 'static>(
        &self,
        group: u64,
        voters: Vec<u64>,
        sm: S,
    ) -> Result<bool, NodeError> {
        let (done, wait) = oneshot::channel();
        let input = Input::OpenGroup {
            group,
            voters,
            sm: Box::new(sm),
            done,
        };
        self.inputs
            .send(input)
            .await
            .map_err(|_| NodeError::Stopped("driver gone".into()))?;
        wait.await
            .unwrap_or_else(|_| Err(NodeError::Stopped("driver gone".into())))
    }

    /// Closes group `group` on this node and deletes its state, for good (see
    /// [`MultiRaft::close_group`]): call it once a membership change has removed this node
    /// from the group. Returns whether it was open.
    pub async fn close_group(&self, group: u64) -> Result<bool, NodeError> {
        let (done, wait) = oneshot::channel();
        self.inputs
            .send(Input::CloseGroup { group, done })
            .await
            .map_err(|_| NodeError::Stopped("driver gone".into()))?;
        wait.await
            .unwrap_or_else(|_| Err(NodeError::Stopped("driver gone".into())))
    }

    /// Tells leader balancing how many groups each node leads across the cluster, as the
    /// caller learned it (a node holding only some groups sees only part of each node's load);
    /// None to count over the groups held here. Dropped when the driver is busy: the caller
    /// sends it again.
    pub fn set_cluster_leaders(&self, led: Option<HashMap<u64, usize>>) {
        let _ = self.inputs.try_send(Input::ClusterLeaders(led));
    }

    /// If this node holds a valid read lease on `group` (it leads, and a quorum confirmed so
    /// recently enough that no other leader can exist yet), the index its state must have
    /// applied for a local read to be linearizable. None: use [`Node::read_barrier`].
    pub fn lease_read_index(&self, group: u64) -> Option<u64> {
        let leases = self.leases.read().unwrap_or_else(|e| e.into_inner());
        let l = leases.get(&group)?;
        (Instant::now() < l.until).then_some(l.index)
    }

    /// Hands every group this node leads to another voter and waits, at most `within`, until
    /// it leads none (a transfer that stalls is started again). Used before a graceful exit so
    /// that the cluster needs no election timeout to replace this node. Returns the transfers
    /// started, as (group, new leader), and whether the node still leads some group.
    ///
    /// The node is taken to be leaving: until it stops, any group it comes to lead (an
    /// election it won, or a transfer another node's balancing started) is handed on at once.
    pub async fn hand_off(&self, within: Duration) -> (Vec<(u64, u64)>, bool) {
        self.hand_off_groups(None, None, within).await
    }

    /// Like [`Node::hand_off`], of `groups` (or every group) to voter `to` (or the best one),
    /// without leaving: balancing may bring leaderships back later.
    pub async fn hand_off_groups(
        &self,
        groups: Option<Vec<u64>>,
        to: Option<u64>,
        within: Duration,
    ) -> (Vec<(u64, u64)>, bool) {
        let leave = groups.is_none() && to.is_none();
        let deadline = tokio::time::Instant::now() + within;
        let mut started = Vec::new();
        let mut status = self.status.clone();
        loop {
            let (done, wait) = oneshot::channel();
            let input = Input::HandOff {
                groups: groups.clone(),
                to,
                leave,
                done,
            };
            if self.inputs.send(input).await.is_err() {
                return (started, false);
            }
            let Ok(moved) = wait.await else {
                return (started, false);
            };
            started.extend(moved);
            // raft-rs gives a transfer an election timeout; look again a little before that.
            let retry = (tokio::time::Instant::now() + Duration::from_millis(400)).min(deadline);
            loop {
                let leads =
                    status.borrow_and_update().groups.iter().any(|(id, g)| {
                        g.is_leader && groups.as_ref().is_none_or(|l| l.contains(id))
                    });
                if !leads {
                    return (started, false);
                }
                match tokio::time::timeout_at(retry, status.changed()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(_)) => return (started, false),
                    Err(_) => break,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return (started, true);
            }
        }
    }

    /// Fault injection for tests: cuts or mends this node's link to `peer` (see
    /// [`Bus::set_cut`]).
    pub fn set_link_cut(&self, peer: u64, cut: bool) {
        self.bus.set_cut(peer, cut);
    }

    /// The peers whose links are cut by fault injection.
    pub fn cut_links(&self) -> Vec<u64> {
        self.bus.cut_links()
    }

    pub fn status(&self) -> watch::Receiver<NodeStatus> {
        self.status.clone()
    }

    /// Stops the node now (as far as its peers can tell, it died): the driver stops, the bus
    /// stops listening and sending. Waiters get `Stopped`. Memory is freed when the last handle
    /// is dropped.
    pub fn kill(&self) {
        let _ = self.inputs.try_send(Input::Stop);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.inputs.try_send(Input::Stop);
        for t in &self.tasks {
            t.abort();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A proposal waiting for its entry to apply.
struct ProposalWaiter {
    group: u64,
    /// Where the entry went in this node's log when it was proposed, and the term it was
    /// proposed in.
    index: u64,
    term: u64,
    /// Since when this node has not led the group (the entry may still commit: see
    /// [`settle`]).
    orphaned: Option<Instant>,
    done: oneshot::Sender<Result<Vec<u8>, NodeError>>,
}

/// How long a proposal whose leader stepped down waits to learn its entry's fate here before
/// it is answered as indeterminate (the server's own wait for a write, `WAIT`, is as long). A
/// new leader commits what it has of the old one's entries with its first entry, and a node
/// that rejoins learns what overwrote its own, well within this.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);
type ReadDone = oneshot::Sender<Result<(), NodeError>>;
/// (group, waiters, when the leadership check was asked).
type ReadWaiter = (u64, Vec<ReadDone>, Instant);

/// What the driver needs to grant leases.
struct Granting {
    leases: Arc<Leases>,
    /// How long a lease lasts from the moment its leadership check was asked (zero: never).
    length: Duration,
}

impl Granting {
    /// Grants (or extends) `group`'s lease after a quorum confirmed this node's leadership at
    /// read index `index`, asked at `asked`.
    fn grant<S: StateMachine>(&self, multi: &MultiRaft<S>, group: u64, index: u64, asked: Instant) {
        // No lease while a transfer is under way: the transferee's election ignores leases, and
        // a transfer waiting for the transferee to catch up sends it the go-ahead later, from a
        // round after any revocation.
        if self.length.is_zero() || !multi.is_leader(group) || multi.is_transferring(group) {
            return;
        }
        let term = multi.progress(group).map_or(0, |p| p.0);
        let until = asked + self.length;
        let mut leases = self.leases.write().unwrap_or_else(|e| e.into_inner());
        // A lease of an older term is replaced; one of this term only extended, and its index
        // never moves back.
        let same_term = leases.get(&group).filter(|l| l.term == term).copied();
        if same_term.is_some_and(|l| l.until >= until) {
            return;
        }
        let index = same_term.map_or(index, |l| l.index.max(index));
        leases.insert(group, Lease { until, term, index });
    }

    /// Drops the leases of groups this node no longer leads in the lease's term, or of
    /// `all` groups (before handing leadership over: the new leader may be elected at once).
    fn revoke<S: StateMachine>(&self, multi: &MultiRaft<S>, all: bool) {
        let keep = |g: u64, l: &Lease| {
            !all && multi.is_leader(g)
                && !multi.is_transferring(g)
                && multi.progress(g).is_some_and(|p| p.0 == l.term)
        };
        // Called every loop: look first, so that readers are not held up by a write lock
        // when there is nothing to revoke (the usual case).
        {
            let leases = self.leases.read().unwrap_or_else(|e| e.into_inner());
            if leases.iter().all(|(&g, l)| keep(g, l)) {
                return;
            }
        }
        let mut leases = self.leases.write().unwrap_or_else(|e| e.into_inner());
        leases.retain(|&g, l| keep(g, l));
    }
}

/// The driver thread's state besides the driver itself.
struct Waiters {
    /// Context ids start at a random base so an entry replayed after a restart, carrying an
    /// old context, can never complete a new waiter.
    next: u64,
    proposals: HashMap<u64, ProposalWaiter>,
    reads: HashMap<u64, ReadWaiter>,
    /// Reads that arrived this round, by group, not yet asked of raft.
    unasked: BTreeMap<u64, Vec<ReadDone>>,
    /// Confirmed read points waiting for apply: (group, index, waiter).
    confirmed: Vec<(u64, u64, ReadDone)>,
    /// The node is shutting down (or removing itself): it leads nothing it can hand over.
    leaving: bool,
}

/// How often a leaving node looks for leaderships to hand over, and a node for leaderships to
/// spread out (the latter every `BALANCE_EVERY`).
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(200);
const BALANCE_EVERY: Duration = Duration::from_secs(2);

/// A leaving node hands on whatever it leads; any other node evens leadership out, one
/// transfer at a time.
fn housekeeping<S: StateMachine>(
    multi: &mut MultiRaft<S>,
    w: &Waiters,
    lease: &Granting,
    balance: bool,
) {
    if w.leaving {
        for g in multi.group_ids() {
            // One transfer at a time: starting another would restart (or retarget) the
            // pending one before it could finish.
            if multi.is_leader(g) && !multi.is_transferring(g) {
                lease.revoke(multi, true);
                multi.hand_off(g, None);
            }
        }
    } else if balance {
        if let Some((group, to)) = multi.balance_leaders() {
            // The target is elected by a transfer vote, which ignores leases: ours end before
            // this round sends the message that starts its election.
            lease.revoke(multi, true);
            tracing::info!(
                group,
                to,
                "handing leadership over to spread leaders evenly"
            );
        }
    }
}

fn drive<S: StateMachine + 'static>(
    mut multi: MultiRaft<S>,
    bus: Arc<Bus>,
    mut rx: mpsc::Receiver<Input>,
    status: watch::Sender<NodeStatus>,
    tick: Duration,
    rt: tokio::runtime::Handle,
    lease: Granting,
) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut w = Waiters {
        next: seed ^ (multi.node_id() << 48),
        proposals: HashMap::new(),
        reads: HashMap::new(),
        unasked: BTreeMap::new(),
        confirmed: Vec::new(),
        leaving: false,
    };
    let balance = multi.config().balance_leaders;
    let mut last_housekeeping = Instant::now();
    let mut last_balance = Instant::now();
    // The bus spawns a task per peer on first send: the driver thread runs inside the runtime.
    let _runtime = rt.enter();
    let mut last_tick = Instant::now();
    let mut last_purge = Instant::now();
    loop {
        let wait = tick.saturating_sub(last_tick.elapsed());
        let first = rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await });
        let mut stop = false;
        match first {
            Ok(Some(input)) => stop |= handle(&mut multi, &mut w, &lease, input),
            Ok(None) => stop = true,
            Err(_) => {}
        }
        for _ in 0..4096 {
            match rx.try_recv() {
                Ok(input) => stop |= handle(&mut multi, &mut w, &lease, input),
                Err(_) => break,
            }
        }
        if stop {
            fail_all(&mut w, NodeError::Stopped("node shutting down".into()));
            refuse_queued(&mut rx);
            // Whoever looks (INFO, /ready) sees the driver is gone, whatever stopped it.
            status.send_modify(|s| {
                s.stopped
                    .get_or_insert_with(|| "the node's replication stopped".into());
            });
            return;
        }
        if last_tick.elapsed() >= tick {
            multi.tick();
            last_tick = Instant::now();
        }
        if last_housekeeping.elapsed() >= HOUSEKEEPING_EVERY {
            last_housekeeping = Instant::now();
            let balance_now = balance && last_balance.elapsed() >= BALANCE_EVERY;
            if balance_now {
                last_balance = Instant::now();
            }
            if w.leaving || balance_now {
                housekeeping(&mut multi, &w, &lease, balance_now);
            }
        }
        if last_purge.elapsed() >= PURGE_EVERY {
            last_purge = Instant::now();
            match multi.purge() {
                Ok(named) if !named.is_empty() => {
                    tracing::info!(groups = ?named, "compacted groups that held old log files")
                }
                Ok(_) => {}
                // Old files stay on disk a while longer; nothing raft relies on is affected.
                Err(e) => tracing::warn!(error = %e, "purging old log files failed"),
            }
        }
        ask_reads(&mut multi, &mut w);
        let out = match multi.poll_snapshots().and_then(|done| {
            answer(&multi, &lease, &mut w, done.applied, done.read_points);
            learn_addresses(&bus, multi.node_id(), &done.membership);
            run_round(&mut multi, &mut w, &bus, &lease)
        }) {
            Ok(out) => out,
            Err(e) => {
                // Fail-stop: after a storage error nothing raft believes persisted can be trusted.
                let why = e.to_string();
                tracing::error!(error = %why, "replication stopped");
                fail_all(&mut w, NodeError::Stopped(why.clone()));
                status.send_modify(|s| s.stopped = Some(why));
                refuse_queued(&mut rx);
                return;
            }
        };
        learn_addresses(&bus, multi.node_id(), &out.membership);
        bus.send(out.messages);
        answer(&multi, &lease, &mut w, out.applied, out.read_points);
        settle(&multi, &mut w);
        lease.revoke(&multi, false);
        publish(&multi, &status);
    }
}

/// One round: its first half's messages leave and its applied entries are answered before the
/// round's write, so a write's reply waits for no fsync but the ones that committed it.
fn run_round<S: StateMachine>(
    multi: &mut MultiRaft<S>,
    w: &mut Waiters,
    bus: &Arc<Bus>,
    lease: &Granting,
) -> Result<crate::driver::RoundOutput, DriverError> {
    let mut round = multi.begin_round()?;
    let early = std::mem::take(&mut round.early);
    learn_addresses(bus, multi.node_id(), &early.membership);
    if !early.messages.is_empty() {
        bus.send(early.messages);
    }
    answer(multi, lease, w, early.applied, early.read_points);
    settle(multi, w);
    multi.finish_round(round)
}

/// Sends each applied entry's reply to its proposer, and files confirmed read points.
fn answer<S: StateMachine>(
    multi: &MultiRaft<S>,
    lease: &Granting,
    w: &mut Waiters,
    applied: Vec<crate::driver::Applied>,
    points: Vec<crate::driver::ReadPoint>,
) {
    for a in applied {
        let Ok(ctx) = <[u8; 8]>::try_from(a.context.as_slice()) else {
            continue;
        };
        if let Some(p) = w.proposals.remove(&u64::from_le_bytes(ctx)) {
            let _ = p.done.send(Ok(a.result));
        }
    }
    for p in points {
        let Ok(ctx) = <[u8; 8]>::try_from(p.context.as_slice()) else {
            continue;
        };
        if let Some((group, dones, asked)) = w.reads.remove(&u64::from_le_bytes(ctx)) {
            lease.grant(multi, group, p.index, asked);
            w.confirmed
                .extend(dones.into_iter().map(|d| (group, p.index, d)));
        }
    }
}

/// Asks each group's leadership to be confirmed once for all the reads that arrived since the
/// last round: one heartbeat to a quorum serves them all.
fn ask_reads<S: StateMachine>(multi: &mut MultiRaft<S>, w: &mut Waiters) {
    for (group, dones) in std::mem::take(&mut w.unasked) {
        // A leader just elected confirms reads only once its first entry is committed (a
        // round or two): the reads wait here until then, instead of being dropped by raft.
        if multi.is_leader(group) && !multi.read_index_ready(group) {
            w.unasked.insert(group, dones);
            continue;
        }
        w.next = w.next.wrapping_add(1);
        let id = w.next;
        let asked = Instant::now();
        match multi.read_index(group, id.to_le_bytes().to_vec()) {
            Ok(()) => {
                w.reads.insert(id, (group, dones, asked));
            }
            Err(e) => {
                let e = match e {
                    DriverError::NotLeader { group, leader } => {
                        NodeError::NotLeader { group, leader }
                    }
                    DriverError::UnknownGroup(group) => NodeError::NotLeader {
                        group,
                        leader: None,
                    },
                    e => NodeError::Stopped(e.to_string()),
                };
                for d in dones {
                    let _ = d.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Answers confirmed reads whose index is applied, and fails waiters whose group lost its
/// leader here.
fn settle<S: StateMachine>(multi: &MultiRaft<S>, w: &mut Waiters) {
    let applied = |g: u64| multi.progress(g).map_or(0, |p| p.2);
    let mut still = Vec::new();
    for (group, index, done) in w.confirmed.drain(..) {
        if multi.progress(group).is_none() {
            // The group was closed here meanwhile.
            let _ = done.send(Err(NodeError::NotLeader {
                group,
                leader: None,
            }));
        } else if applied(group) >= index {
            let _ = done.send(Ok(()));
        } else {
            still.push((group, index, done));
        }
    }
    w.confirmed = still;
    // A proposal whose group this node no longer leads is not answered at once: its entry may
    // still commit under the new leader, and then applies here with its context (answered by
    // [`answer`]). It can never commit once an entry of a later term is committed at or before
    // its index: every later leader's log holds that entry, and terms never decrease along a
    // log, so no such log can hold the proposal's (older) term at its index. Then the caller
    // may safely try again. Only when this node cannot tell (the group closed here, the entry
    // compacted away under a snapshot, or the grace passed) is the outcome indeterminate.
    let now = Instant::now();
    let mut settled = Vec::new();
    for (&id, p) in w.proposals.iter_mut() {
        if p.orphaned.is_none() && !multi.is_leader(p.group) {
            p.orphaned = Some(now);
        }
        let Some(since) = p.orphaned else { continue };
        let Some((_, _, applied)) = multi.progress(p.group) else {
            settled.push((id, false));
            continue;
        };
        let newer = multi
            .term_at(p.group, applied.min(p.index))
            .is_some_and(|t| t > p.term);
        if newer {
            settled.push((id, true));
        } else if applied >= p.index || now.duration_since(since) >= ORPHAN_GRACE {
            settled.push((id, false));
        }
    }
    for (id, replaced) in settled {
        if let Some(p) = w.proposals.remove(&id) {
            let e = if replaced {
                let leader = multi.leader_of(p.group).filter(|&l| l != multi.node_id());
                NodeError::NotLeader {
                    group: p.group,
                    leader,
                }
            } else {
                NodeError::Indeterminate { group: p.group }
            };
            let _ = p.done.send(Err(e));
        }
    }
    let lost: Vec<u64> = w
        .reads
        .iter()
        .filter(|(_, (g, _, _))| !multi.is_leader(*g))
        .map(|(id, _)| *id)
        .collect();
    for id in lost {
        if let Some((group, dones, _)) = w.reads.remove(&id) {
            for done in dones {
                let _ = done.send(Err(NodeError::NotLeader {
                    group,
                    leader: multi.leader_of(group),
                }));
            }
        }
    }
}

/// Points the bus at members added with an address. An address that does not parse is
/// logged and skipped: the member stays unreachable from here until it is re-added.
fn learn_addresses(bus: &Bus, me: u64, changes: &[MemberChange]) {
    for c in changes {
        match &c.address {
            Some(addr) if c.node != me => {
                match std::str::from_utf8(addr).ok().and_then(|a| a.parse().ok()) {
                    Some(sa) => bus.set_address(c.node, sa),
                    None => tracing::warn!(node = c.node, "member address does not parse"),
                }
            }
            Some(_) => {}
            None => tracing::info!(group = c.group, node = c.node, "member removed"),
        }
    }
}

fn publish<S: StateMachine>(multi: &MultiRaft<S>, status: &watch::Sender<NodeStatus>) {
    let mut groups = BTreeMap::new();
    for g in multi.group_ids() {
        let (term, commit, applied) = multi.progress(g).unwrap_or_default();
        let (snapshot_index, snapshots_installed) = multi.snapshot_info(g).unwrap_or_default();
        let (voters, learners) = multi.configuration(g);
        groups.insert(
            g,
            GroupStatus {
                is_leader: multi.is_leader(g),
                leader: multi.leader_of(g),
                term,
                commit,
                applied,
                snapshot_index,
                snapshots_installed,
                voters,
                learners,
                members: multi
                    .members(g)
                    .into_iter()
                    .map(|(id, a)| (id, String::from_utf8_lossy(&a).into_owned()))
                    .collect(),
                matched: multi.matched(g),
            },
        );
    }
    status.send_if_modified(|s| {
        if s.groups == groups {
            return false;
        }
        s.groups = groups;
        true
    });
}

/// Answers the inputs still queued when the driver stops, instead of dropping them: their
/// callers learn the node stopped (and that what they asked was never proposed), where a
/// dropped answer would only say the driver is gone.
fn refuse_queued(rx: &mut mpsc::Receiver<Input>) {
    rx.close();
    let stopped = || NodeError::Stopped("node shutting down".into());
    while let Ok(input) = rx.try_recv() {
        match input {
            Input::Propose { done, .. } | Input::ConfChange { done, .. } => {
                let _ = done.send(Err(stopped()));
            }
            Input::Read { done, .. } => {
                let _ = done.send(Err(stopped()));
            }
            Input::OpenGroup { done, .. } | Input::CloseGroup { done, .. } => {
                let _ = done.send(Err(stopped()));
            }
            _ => {}
        }
    }
}

fn fail_all(w: &mut Waiters, e: NodeError) {
    for (_, p) in w.proposals.drain() {
        let _ = p.done.send(Err(e.clone()));
    }
    for (_, (_, dones, _)) in w.reads.drain() {
        for done in dones {
            let _ = done.send(Err(e.clone()));
        }
    }
    for (_, dones) in std::mem::take(&mut w.unasked) {
        for done in dones {
            let _ = done.send(Err(e.clone()));
        }
    }
    for (_, _, done) in w.confirmed.drain(..) {
        let _ = done.send(Err(e.clone()));
    }
}

/// Proposes through `propose` with a fresh context id, and files `done` to be answered when
/// that entry applies, or answers it now with why raft would not take it.
fn proposed<S: StateMachine>(
    w: &mut Waiters,
    group: u64,
    done: oneshot::Sender<Result<Vec<u8>, NodeError>>,
    propose: impl FnOnce(&mut MultiRaft<S>, Vec<u8>) -> Result<(), DriverError>,
    multi: &mut MultiRaft<S>,
) {
    w.next = w.next.wrapping_add(1);
    let id = w.next;
    let refused = match propose(multi, id.to_le_bytes().to_vec()) {
        Ok(()) => {
            let index = multi.last_index(group).unwrap_or(0);
            let term = multi.progress(group).map_or(0, |(term, _, _)| term);
            w.proposals.insert(
                id,
                ProposalWaiter {
                    group,
                    index,
                    term,
                    orphaned: None,
                    done,
                },
            );
            return;
        }
        Err(DriverError::NotLeader { group, leader }) => NodeError::NotLeader { group, leader },
        // Closed here a moment ago (this node was removed from it): another node leads it.
        Err(DriverError::UnknownGroup(group)) => NodeError::NotLeader {
            group,
            leader: None,
        },
        // raft refused it (uncommitted-size limit, leadership in flux, a membership change
        // already pending): retryable.
        Err(DriverError::Raft(raft::Error::ProposalDropped)) => NodeError::Busy,
        Err(e) => NodeError::Stopped(e.to_string()),
    };
    let _ = done.send(Err(refused));
}

/// Handles one input; returns true to stop.
fn handle<S: StateMachine + 'static>(
    multi: &mut MultiRaft<S>,
    w: &mut Waiters,
    lease: &Granting,
    input: Input,
) -> bool {
    match input {
        Input::Message(env) => {
            let _ = multi.step(env);
        }
        Input::Event(BusEvent::Unreachable { group, peer }) => {
            multi.report_unreachable(group, peer)
        }
        Input::Event(BusEvent::Snapshot {
            group,
            peer,
            delivered,
        }) => multi.report_snapshot(group, peer, delivered),
        Input::Propose { group, data, done } => proposed(
            w,
            group,
            done,
            |multi, ctx| multi.propose(group, ctx, data),
            multi,
        ),
        Input::Read { group, done } => w.unasked.entry(group).or_default().push(done),
        Input::ConfChange {
            group,
            change,
            done,
        } => proposed(
            w,
            group,
            done,
            |multi, ctx| multi.propose_conf_change(group, ctx, change),
            multi,
        ),
        Input::HandOff {
            groups,
            to,
            leave,
            done,
        } => {
            // First: the transfer's vote is honoured at once, so the lease ends now.
            lease.revoke(multi, true);
            w.leaving |= leave;
            let moved = multi
                .group_ids()
                .into_iter()
                .filter(|g| groups.as_ref().is_none_or(|l| l.contains(g)))
                .filter_map(|g| multi.hand_off(g, to).map(|t| (g, t)))
                .collect();
            let _ = done.send(moved);
        }
        Input::OpenGroup {
            group,
            voters,
            sm,
            done,
        } => {
            let result = if multi.group_ids().contains(&group) {
                Ok(true)
            } else {
                match sm.downcast::<S>() {
                    Ok(sm) => multi
                        .open_group(group, &voters, *sm)
                        .map_err(|e| NodeError::Stopped(format!("cannot open group {group}: {e}"))),
                    Err(_) => Err(NodeError::Stopped(
                        "open_group was given another state machine type".into(),
                    )),
                }
            };
            let _ = done.send(result);
        }
        Input::ClusterLeaders(led) => multi.set_cluster_leaders(led),
        Input::CloseGroup { group, done } => {
            // Waiters on this group learn it is gone here; nothing of it is left to answer them.
            let result = multi
                .close_group(group)
                .map_err(|e| NodeError::Stopped(format!("cannot close group {group}: {e}")));
            if result.is_err() {
                // The tombstone may not be on disk: stop, as after any storage error.
                let _ = done.send(result);
                return true;
            }
            let _ = done.send(result);
        }
        Input::Stop => return true,
    }
    false
}
