//! The multi-raft driver, exercised by in-process clusters over an in-memory network that can
//! cut links and restart nodes from their disks. Checks: one leader per term, every node
//! applies the same entries in the same order (prefix agreement at every step), acknowledged
//! entries survive leader loss and restarts, and lagging nodes catch up by log or by snapshot.
//!
//! The chaos test prints its seed; rerun with `CAIRN_RAFT_SEED=<seed> cargo test --test driver`.

use cairn_replication::{Applied, Envelope, GroupConfig, LogEngine, MultiRaft, StateMachine};
use std::collections::{BTreeMap, HashSet, VecDeque};

/// A state machine that records every command it applied.
#[derive(Default, Clone)]
struct Journal(Vec<Vec<u8>>);

impl StateMachine for Journal {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.0.push(data.to_vec());
        index.to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for item in &self.0 {
            out.extend_from_slice(&(item.len() as u32).to_le_bytes());
            out.extend_from_slice(item);
        }
        out
    }

    fn restore(&mut self, mut data: &[u8]) -> Result<(), String> {
        self.0.clear();
        while !data.is_empty() {
            let len =
                u32::from_le_bytes(data.get(..4).ok_or("short")?.try_into().unwrap()) as usize;
            self.0.push(data.get(4..4 + len).ok_or("short")?.to_vec());
            data = &data[4 + len..];
        }
        Ok(())
    }
}

/// Work run on a node's thread.
type Call = Box<dyn FnOnce(&mut MultiRaft<Journal>) + Send>;

/// A node on its own thread (raft-engine's block cache is per thread; see `LogEngine`).
struct NodeThread {
    calls: std::sync::mpsc::Sender<Call>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NodeThread {
    fn spawn(
        id: u64,
        dir: std::path::PathBuf,
        groups: Vec<u64>,
        voters: Vec<u64>,
        config: GroupConfig,
    ) -> NodeThread {
        let (tx, rx) =
            std::sync::mpsc::channel::<Box<dyn FnOnce(&mut MultiRaft<Journal>) + Send>>();
        let thread = std::thread::spawn(move || {
            let engine = LogEngine::open(&dir).unwrap();
            let mut node = MultiRaft::new(id, engine, config);
            for g in groups {
                node.open_group(g, &voters, Journal::default()).unwrap();
            }
            for call in rx {
                call(&mut node);
            }
        });
        NodeThread {
            calls: tx,
            thread: Some(thread),
        }
    }

    /// Runs `f` on the node's thread and returns its result.
    fn with<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut MultiRaft<Journal>) -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = std::sync::mpsc::channel();
        self.calls
            .send(Box::new(move |n| tx.send(f(n)).unwrap()))
            .unwrap();
        rx.recv().expect("node thread alive")
    }
}

impl Drop for NodeThread {
    fn drop(&mut self) {
        let (tx, _) = std::sync::mpsc::channel();
        self.calls = tx;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Cluster {
    groups: Vec<u64>,
    voters: Vec<u64>,
    config: GroupConfig,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    nodes: BTreeMap<u64, Option<NodeThread>>,
    network: VecDeque<Envelope>,
    cut: HashSet<(u64, u64)>,
    /// Entries the leader reported applied: acknowledged to a client.
    acknowledged: Vec<(u64, Vec<u8>)>,
}

impl Cluster {
    fn new(n: u64, groups: Vec<u64>, config: GroupConfig) -> Cluster {
        let voters: Vec<u64> = (1..=n).collect();
        let mut c = Cluster {
            groups,
            voters: voters.clone(),
            config,
            dirs: BTreeMap::new(),
            nodes: BTreeMap::new(),
            network: VecDeque::new(),
            cut: HashSet::new(),
            acknowledged: vec![],
        };
        for id in voters {
            c.dirs.insert(id, tempfile::tempdir().unwrap());
            c.start(id);
        }
        c
    }

    fn start(&mut self, id: u64) {
        let dir = self.dirs[&id].path().to_path_buf();
        let node = NodeThread::spawn(
            id,
            dir,
            self.groups.clone(),
            self.voters.clone(),
            self.config.clone(),
        );
        self.nodes.insert(id, Some(node));
    }

    /// kill -9: the node's memory is gone; only its disk remains.
    fn crash(&mut self, id: u64) {
        self.nodes.insert(id, None);
    }

    fn node(&self, id: u64) -> Option<&NodeThread> {
        self.nodes.get(&id).and_then(Option::as_ref)
    }

    fn is_leader(&self, id: u64, group: u64) -> bool {
        self.node(id)
            .is_some_and(|n| n.with(move |m| m.is_leader(group)))
    }

    /// One step of the world: every live node ticks (if asked), runs a round, and the network
    /// delivers what was sent (dropping messages to dead nodes and over cut links).
    fn step(&mut self, tick: bool) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for id in &ids {
            let Some(node) = self.node(*id) else { continue };
            let out = node.with(move |m| {
                if tick {
                    m.tick();
                }
                m.round().expect("round")
            });
            for Applied {
                group,
                context,
                result: _,
                ..
            } in out.applied
            {
                if !context.is_empty() {
                    self.acknowledged.push((group, context));
                }
            }
            self.network.extend(out.messages);
        }
        // Delivery, and what a real transport tells the sender: a message that could not be
        // sent reports the peer unreachable, and every snapshot reports whether it arrived.
        while let Some(env) = self.network.pop_front() {
            let (from, to, group) = (env.message.from, env.message.to, env.group);
            let is_snapshot = env.message.get_msg_type() == raft::eraftpb::MessageType::MsgSnapshot;
            let linked = !self.cut.contains(&(from, to)) && !self.cut.contains(&(to, from));
            let delivered = match self.node(to) {
                Some(node) if linked => {
                    node.with(move |m| {
                        let _ = m.step(env);
                    });
                    true
                }
                _ => false,
            };
            if let Some(sender) = self.node(from) {
                if !delivered {
                    sender.with(move |m| m.report_unreachable(group, to));
                }
                if is_snapshot {
                    sender.with(move |m| m.report_snapshot(group, to, delivered));
                }
            }
        }
        self.check_agreement();
    }

    fn run(&mut self, steps: usize) {
        for i in 0..steps {
            self.step(i % 2 == 0);
        }
    }

    /// The leader of `group` that a majority-connected node knows, once one is elected.
    fn leader(&self, group: u64) -> Option<u64> {
        self.nodes
            .keys()
            .copied()
            .find(|&id| self.is_leader(id, group))
    }

    fn wait_leader(&mut self, group: u64) -> u64 {
        for _ in 0..400 {
            if let Some(l) = self.leader(group) {
                return l;
            }
            self.step(true);
        }
        panic!("no leader for group {group} after 400 steps");
    }

    /// Proposes through the current leader; the context is the payload so acks can be matched.
    fn propose(&mut self, group: u64, payload: &str) -> bool {
        let Some(l) = self.leader(group) else {
            return false;
        };
        let data = payload.as_bytes().to_vec();
        self.node(l)
            .unwrap()
            .with(move |m| m.propose(group, data.clone(), data).is_ok())
    }

    fn journal(&self, id: u64, group: u64) -> Vec<Vec<u8>> {
        self.node(id)
            .map(|n| {
                n.with(move |m| {
                    m.state_machine(group)
                        .map(|j| j.0.clone())
                        .unwrap_or_default()
                })
            })
            .unwrap_or_default()
    }

    /// Safety, checked after every step: any two live nodes' applied journals agree on their
    /// common prefix.
    fn check_agreement(&self) {
        for &g in &self.groups {
            let journals: Vec<(u64, Vec<Vec<u8>>)> = self
                .nodes
                .keys()
                .filter(|id| self.node(**id).is_some())
                .map(|&id| (id, self.journal(id, g)))
                .collect();
            for a in &journals {
                for b in &journals {
                    let n = a.1.len().min(b.1.len());
                    assert_eq!(
                        a.1[..n],
                        b.1[..n],
                        "group {g}: nodes {} and {} applied different entries",
                        a.0,
                        b.0
                    );
                }
            }
        }
    }
}

fn fast() -> GroupConfig {
    GroupConfig {
        snapshot_every: 1_000_000,
        ..GroupConfig::default()
    }
}

#[test]
fn three_nodes_elect_one_leader_and_apply_the_same_entries_in_order() {
    let mut c = Cluster::new(3, vec![1], fast());
    let leader = c.wait_leader(1);
    for i in 0..50 {
        assert!(c.propose(1, &format!("cmd-{i}")));
        c.step(false);
    }
    c.run(20);
    let want: Vec<Vec<u8>> = (0..50).map(|i| format!("cmd-{i}").into_bytes()).collect();
    for id in 1..=3 {
        assert_eq!(c.journal(id, 1), want, "node {id}");
    }
    assert_eq!(
        c.acknowledged.len(),
        50 * 3,
        "every node applied every entry with its context"
    );
    assert_eq!(
        c.leader(1),
        Some(leader),
        "a stable cluster keeps its leader"
    );
    let (term, commit, applied) = c.node(leader).unwrap().with(|m| m.progress(1).unwrap());
    assert!(
        term >= 1 && commit >= 50 && applied == commit,
        "term {term} commit {commit} applied {applied}"
    );
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut c = Cluster::new(3, vec![1], fast());
    let leader = c.wait_leader(1);
    c.run(10);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    match c
        .node(follower)
        .unwrap()
        .with(|m| m.propose(1, vec![], b"x".to_vec()))
    {
        Err(cairn_replication::DriverError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

#[test]
fn a_restarted_follower_recovers_from_disk_and_catches_up() {
    let mut c = Cluster::new(3, vec![1], fast());
    let leader = c.wait_leader(1);
    for i in 0..20 {
        c.propose(1, &format!("a{i}"));
        c.step(false);
    }
    c.run(10);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.crash(follower);
    for i in 0..20 {
        c.propose(1, &format!("b{i}"));
        c.step(false);
    }
    c.start(follower);
    c.run(40);
    let all: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("a{i}"))
        .chain((0..20).map(|i| format!("b{i}")))
        .map(String::into_bytes)
        .collect();
    assert_eq!(c.journal(follower, 1), all);
}

#[test]
fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let config = GroupConfig {
        snapshot_every: 25,
        ..GroupConfig::default()
    };
    let mut c = Cluster::new(3, vec![1], config);
    let leader = c.wait_leader(1);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.crash(follower);
    for i in 0..200 {
        c.propose(1, &format!("e{i}"));
        c.step(false);
    }
    c.run(10);
    c.start(follower);
    c.run(60);
    let want: Vec<Vec<u8>> = (0..200).map(|i| format!("e{i}").into_bytes()).collect();
    assert_eq!(c.journal(follower, 1), want, "caught up through a snapshot");
    // And the snapshot it installed is durable: after another crash it restarts with the state.
    c.crash(follower);
    c.start(follower);
    c.run(20);
    assert_eq!(c.journal(follower, 1), want);
}

#[test]
fn an_isolated_leader_is_replaced_and_acknowledged_entries_survive() {
    let mut c = Cluster::new(3, vec![1], fast());
    let old = c.wait_leader(1);
    for i in 0..10 {
        c.propose(1, &format!("before{i}"));
        c.step(false);
    }
    c.run(10);
    for other in 1..=3 {
        if other != old {
            c.cut.insert((old, other));
        }
    }
    // The isolated leader accepts proposals it can never commit.
    for i in 0..5 {
        c.propose(1, &format!("lost{i}"));
    }
    let mut new = None;
    for _ in 0..400 {
        c.step(true);
        new = (1..=3)
            .filter(|&id| id != old)
            .find(|&id| c.is_leader(id, 1));
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority side elects a new leader");
    c.node(new)
        .unwrap()
        .with(|m| m.propose(1, b"after".to_vec(), b"after".to_vec()).unwrap());
    c.run(10);
    c.cut.clear();
    c.run(60);
    let journal = c.journal(old, 1);
    assert_eq!(journal, c.journal(new, 1), "the old leader converged");
    assert!(
        journal.iter().all(|e| !e.starts_with(b"lost")),
        "uncommitted entries of the old term are gone"
    );
    assert_eq!(journal.len(), 11);
}

#[test]
fn many_groups_share_rounds() {
    let groups: Vec<u64> = (1..=16).collect();
    let mut c = Cluster::new(3, groups.clone(), fast());
    for &g in &groups {
        c.wait_leader(g);
    }
    for &g in &groups {
        c.propose(g, &format!("g{g}"));
    }
    // One round handles every group that is ready, with one write.
    let leader = c.leader(1).unwrap();
    let out = c.node(leader).unwrap().with(|m| m.round().unwrap());
    c.network.extend(out.messages);
    assert!(out.groups_ready >= 1);
    c.run(30);
    for &g in &groups {
        for id in 1..=3 {
            assert_eq!(
                c.journal(id, g),
                vec![format!("g{g}").into_bytes()],
                "group {g} node {id}"
            );
        }
    }
}

/// Random crashes, restarts and link cuts while proposing; afterwards everything heals and
/// every acknowledged entry must be on every node, in one agreed order.
#[test]
fn chaos_keeps_agreement_and_acknowledged_entries() {
    let seed: u64 = std::env::var("CAIRN_RAFT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("raft chaos seed {seed} (rerun: CAIRN_RAFT_SEED={seed} cargo test -p cairn-replication --test driver)");
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let config = GroupConfig {
        snapshot_every: 40,
        ..GroupConfig::default()
    };
    let mut c = Cluster::new(3, vec![1, 2], config);
    let mut proposed = 0;
    let mut faults = 0;
    for step in 0..1500 {
        match next() % 100 {
            0..=1 => {
                let id = next() % 3 + 1;
                if c.node(id).is_some() && c.nodes.values().filter(|n| n.is_some()).count() == 3 {
                    c.crash(id);
                    faults += 1;
                }
            }
            2..=6 => {
                if let Some(id) = (1..=3).find(|&id| c.node(id).is_none()) {
                    c.start(id);
                }
            }
            7..=8 => {
                let (a, b) = (next() % 3 + 1, next() % 3 + 1);
                if a != b {
                    c.cut.insert((a, b));
                    faults += 1;
                }
            }
            9..=13 => {
                c.cut.clear();
            }
            _ => {}
        }
        let group = next() % 2 + 1;
        if c.propose(group, &format!("s{seed}-p{step}")) {
            proposed += 1;
        }
        c.step(step % 2 == 0);
    }
    for id in 1..=3 {
        if c.node(id).is_none() {
            c.start(id);
        }
    }
    c.cut.clear();
    c.run(400);
    for g in [1u64, 2] {
        let lens: Vec<usize> = (1..=3).map(|id| c.journal(id, g).len()).collect();
        let progress: Vec<_> = (1..=3)
            .map(|id| {
                c.node(id)
                    .unwrap()
                    .with(move |m| (m.progress(g), m.leader_of(g)))
            })
            .collect();
        println!("seed {seed}: group {g}: journal lengths {lens:?}, (term, commit, applied), leader: {progress:?}");
        let reference = c.journal(1, g);
        for id in 2..=3 {
            assert_eq!(
                c.journal(id, g),
                reference,
                "seed {seed}: group {g} node {id} diverged after healing"
            );
        }
        let present: HashSet<&Vec<u8>> = reference.iter().collect();
        for (ack_group, entry) in &c.acknowledged {
            if *ack_group == g {
                assert!(
                    present.contains(entry),
                    "seed {seed}: acknowledged entry {:?} lost",
                    String::from_utf8_lossy(entry)
                );
            }
        }
    }
    println!("raft chaos seed {seed}: {proposed} proposals, {faults} faults, {} acknowledgements checked", c.acknowledged.len());
}
