//! An in-process cluster for tests: nodes on their own threads (raft-engine's block cache is
//! per thread), each with its own log directory, joined by an in-memory network that can cut
//! links, and that can crash nodes (dropping all memory) and restart them from their disks.
//!
//! Time advances only when the test says so ([`LocalCluster::step`]), so runs are repeatable
//! for a given sequence of faults. The network reports to senders what a real transport would:
//! unreachable peers, and the fate of every snapshot.

use crate::driver::{Applied, Envelope, GroupConfig, MultiRaft, ReadPoint, StateMachine};
use crate::storage::LogEngine;
use raft::eraftpb::MessageType;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::mpsc;
use std::sync::Arc;

type Call<S> = Box<dyn FnOnce(&mut MultiRaft<S>) + Send>;

/// One node, on its own thread.
pub struct NodeThread<S> {
    calls: Option<mpsc::Sender<Call<S>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: StateMachine + 'static> NodeThread<S> {
    fn spawn(
        id: u64,
        dir: std::path::PathBuf,
        groups: Vec<u64>,
        voters: Vec<u64>,
        config: GroupConfig,
        make: Arc<dyn Fn() -> S + Send + Sync>,
    ) -> Self {
        let (tx, rx) = mpsc::channel::<Call<S>>();
        let thread = std::thread::spawn(move || {
            let engine = LogEngine::open(&dir).expect("open log");
            let mut node = MultiRaft::new(id, engine, config);
            for g in groups {
                node.open_group(g, &voters, make()).expect("open group");
            }
            for call in rx {
                call(&mut node);
            }
        });
        NodeThread {
            calls: Some(tx),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the node's thread and returns its result.
    pub fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut MultiRaft<S>) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        let call: Call<S> = Box::new(move |n| {
            let _ = tx.send(f(n));
        });
        self.calls
            .as_ref()
            .expect("running")
            .send(call)
            .expect("node thread alive");
        rx.recv().expect("node thread answered")
    }
}

impl<S> Drop for NodeThread<S> {
    fn drop(&mut self) {
        self.calls.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct LocalCluster<S> {
    pub groups: Vec<u64>,
    voters: Vec<u64>,
    config: GroupConfig,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    nodes: BTreeMap<u64, Option<NodeThread<S>>>,
    network: VecDeque<Envelope>,
    /// Links that drop every message, in either direction.
    pub cut: HashSet<(u64, u64)>,
    /// Every entry applied on any node, in the order nodes reported them.
    pub applied: Vec<(u64, Applied)>,
    /// Every read point a leader confirmed.
    pub read_points: Vec<(u64, ReadPoint)>,
    make: Arc<dyn Fn() -> S + Send + Sync>,
}

impl<S: StateMachine + 'static> LocalCluster<S> {
    /// `n` voters (ids 1..=n) hosting `groups`, each group's state machine made by `make`.
    pub fn new(
        n: u64,
        groups: Vec<u64>,
        config: GroupConfig,
        make: impl Fn() -> S + Send + Sync + 'static,
    ) -> Self {
        let voters: Vec<u64> = (1..=n).collect();
        let mut c = LocalCluster {
            groups,
            voters: voters.clone(),
            config,
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            network: VecDeque::new(),
            cut: HashSet::new(),
            applied: vec![],
            read_points: vec![],
            make: Arc::new(make),
        };
        for id in voters {
            c.dirs.insert(id, tempfile::tempdir().expect("tempdir"));
            c.start(id);
        }
        c
    }

    pub fn ids(&self) -> Vec<u64> {
        self.voters.clone()
    }

    /// Starts (or restarts) a node from whatever its directory holds.
    pub fn start(&mut self, id: u64) {
        let dir = self.dirs[&id].path().to_path_buf();
        let node = NodeThread::spawn(
            id,
            dir,
            self.groups.clone(),
            self.voters.clone(),
            self.config.clone(),
            self.make.clone(),
        );
        self.nodes.insert(id, Some(node));
    }

    /// kill -9: the node's memory is gone; its disk stays.
    pub fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.node(id).is_some()
    }

    pub fn node(&self, id: u64) -> Option<&NodeThread<S>> {
        self.nodes.get(&id).and_then(Option::as_ref)
    }

    /// Runs `f` on a live node.
    pub fn with<R: Send + 'static>(
        &self,
        id: u64,
        f: impl FnOnce(&mut MultiRaft<S>) -> R + Send + 'static,
    ) -> Option<R> {
        self.node(id).map(|n| n.with(f))
    }

    pub fn is_leader(&self, id: u64, group: u64) -> bool {
        self.with(id, move |m| m.is_leader(group)).unwrap_or(false)
    }

    pub fn leader(&self, group: u64) -> Option<u64> {
        self.voters
            .iter()
            .copied()
            .find(|&id| self.is_leader(id, group))
    }

    /// One step of the world: every live node ticks (if asked) and runs a round, then the
    /// network delivers what was sent.
    pub fn step(&mut self, tick: bool) {
        for id in self.voters.clone() {
            let Some(out) = self.with(id, move |m| {
                if tick {
                    m.tick();
                }
                m.round().expect("round")
            }) else {
                continue;
            };
            self.applied
                .extend(out.applied.into_iter().map(|a| (id, a)));
            self.read_points
                .extend(out.read_points.into_iter().map(|p| (id, p)));
            self.network.extend(out.messages);
        }
        self.deliver();
    }

    fn deliver(&mut self) {
        while let Some(env) = self.network.pop_front() {
            let (from, to, group) = (env.message.from, env.message.to, env.group);
            let is_snapshot = env.message.get_msg_type() == MessageType::MsgSnapshot;
            let linked = !self.cut.contains(&(from, to)) && !self.cut.contains(&(to, from));
            let delivered = linked
                && self
                    .with(to, move |m| {
                        let _ = m.step(env);
                    })
                    .is_some();
            if !delivered {
                self.with(from, move |m| m.report_unreachable(group, to));
            }
            if is_snapshot {
                self.with(from, move |m| m.report_snapshot(group, to, delivered));
            }
        }
    }

    /// `steps` steps, ticking every other one.
    pub fn run(&mut self, steps: usize) {
        for i in 0..steps {
            self.step(i % 2 == 0);
        }
    }

    /// Steps until `group` has a leader; panics after `max_steps`.
    pub fn wait_leader(&mut self, group: u64, max_steps: usize) -> u64 {
        for _ in 0..max_steps {
            if let Some(l) = self.leader(group) {
                return l;
            }
            self.step(true);
        }
        panic!("no leader for group {group} after {max_steps} steps");
    }

    /// Proposes on the current leader of `group`; returns the leader if it accepted.
    pub fn propose(&mut self, group: u64, context: Vec<u8>, data: Vec<u8>) -> Option<u64> {
        let leader = self.leader(group)?;
        self.with(leader, move |m| m.propose(group, context, data).is_ok())
            .filter(|ok| *ok)
            .map(|_| leader)
    }
}
