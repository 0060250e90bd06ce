//! The multi-raft driver, exercised by in-process clusters ([`LocalCluster`]) over an
//! in-memory network that cuts links and restarts nodes from their disks. Checks: one leader per
//! group, every node applies the same entries in the same order (prefix agreement after every
//! step), acknowledged entries survive leader loss and restarts, and lagging nodes catch up by
//! log or by snapshot.
//!
//! The chaos test prints its seed; rerun with `CAIRN_RAFT_SEED=<seed> cargo test --test driver`.

use cairn_replication::{DriverError, GroupConfig, LocalCluster, StateMachine};
use std::collections::HashSet;

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

type Cluster = LocalCluster<Journal>;

fn cluster(n: u64, groups: Vec<u64>, config: GroupConfig) -> Cluster {
    LocalCluster::new(n, groups, config, Journal::default)
}

fn journal(c: &Cluster, id: u64, group: u64) -> Vec<Vec<u8>> {
    c.with(id, move |m| {
        m.state_machine(group)
            .map(|j| j.0.clone())
            .unwrap_or_default()
    })
    .unwrap_or_default()
}

/// Safety: any two live nodes' applied journals agree on their common prefix.
fn check_agreement(c: &Cluster) {
    for &g in &c.groups {
        let journals: Vec<(u64, Vec<Vec<u8>>)> = c
            .ids()
            .into_iter()
            .filter(|&id| c.is_up(id))
            .map(|id| (id, journal(c, id, g)))
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

fn step(c: &mut Cluster, tick: bool) {
    c.step(tick);
    check_agreement(c);
}

fn run(c: &mut Cluster, steps: usize) {
    for i in 0..steps {
        step(c, i % 2 == 0);
    }
}

fn propose(c: &mut Cluster, group: u64, payload: &str) -> bool {
    c.propose(
        group,
        payload.as_bytes().to_vec(),
        payload.as_bytes().to_vec(),
    )
    .is_some()
}

fn fast() -> GroupConfig {
    GroupConfig {
        snapshot_every: 1_000_000,
        ..GroupConfig::default()
    }
}

fn payloads(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| format!("{prefix}{i}").into_bytes())
        .collect()
}

#[test]
fn three_nodes_elect_one_leader_and_apply_the_same_entries_in_order() {
    let mut c = cluster(3, vec![1], fast());
    let leader = c.wait_leader(1, 400);
    for i in 0..50 {
        assert!(propose(&mut c, 1, &format!("cmd-{i}")));
        step(&mut c, false);
    }
    run(&mut c, 20);
    for id in 1..=3 {
        assert_eq!(journal(&c, id, 1), payloads("cmd-", 50), "node {id}");
    }
    assert_eq!(
        c.applied.len(),
        50 * 3,
        "every node applied every entry, with its context"
    );
    assert_eq!(
        c.leader(1),
        Some(leader),
        "a stable cluster keeps its leader"
    );
    let (term, commit, applied) = c.with(leader, |m| m.progress(1).unwrap()).unwrap();
    assert!(
        term >= 1 && commit >= 50 && applied == commit,
        "term {term} commit {commit} applied {applied}"
    );
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut c = cluster(3, vec![1], fast());
    let leader = c.wait_leader(1, 400);
    run(&mut c, 10);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    match c
        .with(follower, |m| m.propose(1, vec![], b"x".to_vec()))
        .unwrap()
    {
        Err(DriverError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l, leader),
        other => panic!("expected NotLeader, got {other:?}"),
    }
}

#[test]
fn a_restarted_follower_recovers_from_disk_and_catches_up() {
    let mut c = cluster(3, vec![1], fast());
    let leader = c.wait_leader(1, 400);
    for i in 0..20 {
        propose(&mut c, 1, &format!("a{i}"));
        step(&mut c, false);
    }
    run(&mut c, 10);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.crash(follower);
    for i in 0..20 {
        propose(&mut c, 1, &format!("b{i}"));
        step(&mut c, false);
    }
    c.start(follower);
    run(&mut c, 40);
    let mut want = payloads("a", 20);
    want.extend(payloads("b", 20));
    assert_eq!(journal(&c, follower, 1), want);
}

#[test]
fn a_follower_behind_a_compacted_log_catches_up_by_snapshot() {
    let config = GroupConfig {
        snapshot_every: 25,
        ..GroupConfig::default()
    };
    let mut c = cluster(3, vec![1], config);
    let leader = c.wait_leader(1, 400);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    c.crash(follower);
    for i in 0..200 {
        propose(&mut c, 1, &format!("e{i}"));
        step(&mut c, false);
    }
    run(&mut c, 10);
    c.start(follower);
    run(&mut c, 60);
    assert_eq!(
        journal(&c, follower, 1),
        payloads("e", 200),
        "caught up through a snapshot"
    );
    // The snapshot it installed is durable: after another crash it restarts with the state.
    c.crash(follower);
    c.start(follower);
    run(&mut c, 20);
    assert_eq!(journal(&c, follower, 1), payloads("e", 200));
}

#[test]
fn an_isolated_leader_is_replaced_and_acknowledged_entries_survive() {
    let mut c = cluster(3, vec![1], fast());
    let old = c.wait_leader(1, 400);
    for i in 0..10 {
        propose(&mut c, 1, &format!("before{i}"));
        step(&mut c, false);
    }
    run(&mut c, 10);
    for other in (1..=3).filter(|&id| id != old) {
        c.cut.insert((old, other));
    }
    // The isolated leader accepts proposals it can never commit.
    for i in 0..5 {
        propose(&mut c, 1, &format!("lost{i}"));
    }
    let mut new = None;
    for _ in 0..400 {
        step(&mut c, true);
        new = (1..=3)
            .filter(|&id| id != old)
            .find(|&id| c.is_leader(id, 1));
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority side elects a new leader");
    c.with(new, |m| {
        m.propose(1, b"after".to_vec(), b"after".to_vec()).unwrap()
    });
    run(&mut c, 10);
    c.cut.clear();
    run(&mut c, 60);
    let j = journal(&c, old, 1);
    assert_eq!(j, journal(&c, new, 1), "the old leader converged");
    assert!(
        j.iter().all(|e| !e.starts_with(b"lost")),
        "uncommitted entries of the old term are gone"
    );
    assert_eq!(j.len(), 11);
}

#[test]
fn many_groups_share_rounds() {
    let groups: Vec<u64> = (1..=16).collect();
    let mut c = cluster(3, groups.clone(), fast());
    for &g in &groups {
        c.wait_leader(g, 400);
    }
    run(&mut c, 10);
    for &g in &groups {
        propose(&mut c, g, &format!("g{g}"));
    }
    // Every leader's proposals are handled in one round (one write) on that node.
    let leaders: HashSet<u64> = groups.iter().filter_map(|&g| c.leader(g)).collect();
    let ready: usize = leaders
        .iter()
        .map(|&l| c.with(l, |m| m.round().unwrap().groups_ready).unwrap())
        .sum();
    assert_eq!(
        ready,
        groups.len(),
        "each group with a proposal was ready in its leader's round"
    );
    run(&mut c, 30);
    for &g in &groups {
        for id in 1..=3 {
            assert_eq!(
                journal(&c, id, g),
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
    let seed = cairn_check::seeded::seed_from_env("CAIRN_RAFT_SEED");
    println!("raft chaos seed {seed} (rerun: CAIRN_RAFT_SEED={seed} cargo test -p cairn-replication --test driver)");
    let mut rng_gen = cairn_check::seeded::XorShift::new(seed);
    let mut next = move || rng_gen.next_u64();
    let config = GroupConfig {
        snapshot_every: 40,
        ..GroupConfig::default()
    };
    let mut c = cluster(3, vec![1, 2], config);
    let (mut proposed, mut faults) = (0, 0);
    for i in 0..1500 {
        match next() % 100 {
            0..=1 => {
                let id = next() % 3 + 1;
                if (1..=3).all(|n| c.is_up(n)) {
                    c.crash(id);
                    faults += 1;
                }
            }
            2..=6 => {
                if let Some(id) = (1..=3).find(|&id| !c.is_up(id)) {
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
            9..=13 => c.cut.clear(),
            _ => {}
        }
        let group = next() % 2 + 1;
        if propose(&mut c, group, &format!("s{seed}-p{i}")) {
            proposed += 1;
        }
        step(&mut c, i % 2 == 0);
    }
    for id in 1..=3 {
        if !c.is_up(id) {
            c.start(id);
        }
    }
    c.cut.clear();
    run(&mut c, 400);
    for g in [1u64, 2] {
        let reference = journal(&c, 1, g);
        for id in 2..=3 {
            let lens: Vec<usize> = (1..=3).map(|n| journal(&c, n, g).len()).collect();
            assert_eq!(
                journal(&c, id, g),
                reference,
                "seed {seed}: group {g} node {id} diverged after healing; lengths {lens:?}"
            );
        }
        let present: HashSet<&Vec<u8>> = reference.iter().collect();
        for (_, a) in c.applied.iter().filter(|(_, a)| a.group == g) {
            assert!(
                present.contains(&a.context),
                "seed {seed}: acknowledged entry {:?} lost",
                String::from_utf8_lossy(&a.context)
            );
        }
    }
    println!("raft chaos seed {seed}: {proposed} proposals, {faults} faults, {} acknowledgements checked", c.applied.len());
}

#[test]
fn read_index_confirms_leadership_with_a_quorum_and_fails_on_followers() {
    let mut c = cluster(3, vec![1], fast());
    let leader = c.wait_leader(1, 400);
    for i in 0..5 {
        propose(&mut c, 1, &format!("w{i}"));
        step(&mut c, false);
    }
    run(&mut c, 10);
    c.with(leader, |m| m.read_index(1, b"r1".to_vec()).unwrap());
    run(&mut c, 10);
    let point = c
        .read_points
        .iter()
        .find(|(_, p)| p.context == b"r1")
        .map(|(node, p)| (*node, p.clone()));
    let (node, point) = point.expect("the leader confirmed a read point");
    assert_eq!(node, leader);
    let (_, commit, applied) = c.with(leader, |m| m.progress(1).unwrap()).unwrap();
    assert!(
        point.index <= commit && point.index >= 6,
        "read point {} vs commit {commit}",
        point.index
    );
    assert!(applied >= point.index);
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    assert!(c
        .with(follower, |m| m.read_index(1, b"r2".to_vec()))
        .unwrap()
        .is_err());
}

/// A vote request from node 2 to node 1 for `term`, as a transfer's election when `transfer`.
fn vote_request(term: u64, transfer: bool) -> cairn_replication::Envelope {
    let mut m = raft::eraftpb::Message::default();
    m.set_msg_type(raft::eraftpb::MessageType::MsgRequestVote);
    m.from = 2;
    m.to = 1;
    m.term = term;
    m.log_term = term - 1;
    m.index = 1_000;
    if transfer {
        m.context = raft::CAMPAIGN_TRANSFER.to_vec().into();
    }
    cairn_replication::Envelope {
        group: 1,
        message: m,
    }
}

/// A restarted node may have promised a leader, just before it went down, not to vote for an
/// election timeout (the leader's read lease relies on that); it forgot the leader, so the
/// driver keeps the promise for it: votes are ignored until the group has ticked that long.
/// A leadership transfer's vote is the exception (the leader that asked gave up its lease).
#[test]
fn a_freshly_opened_group_ignores_votes_for_an_election_timeout() {
    let config = fast();
    let ticks = config.election_ticks;
    let c = cluster(3, vec![1], config);
    let (before, early, transfer) = c
        .with(1, move |m| {
            let before = m.progress(1).unwrap().0;
            m.step(vote_request(before + 5, false)).unwrap();
            let early = m.progress(1).unwrap().0;
            m.step(vote_request(before + 6, true)).unwrap();
            (before, early, m.progress(1).unwrap().0)
        })
        .unwrap();
    assert_eq!(early, before, "a vote right after opening is ignored");
    assert_eq!(transfer, before + 6, "a transfer's vote is not");
    let late = c
        .with(1, move |m| {
            for _ in 0..ticks {
                m.tick();
            }
            m.step(vote_request(before + 20, false)).unwrap();
            m.progress(1).unwrap().0
        })
        .unwrap();
    assert_eq!(
        late,
        before + 20,
        "after an election timeout votes count again"
    );
}

/// raft-rs refuses some membership changes only when applying them (here: removing every
/// voter). The refusal is the same on every replica, so it must be a reported no-op, never a
/// reason for the node to stop.
#[test]
fn a_membership_change_raft_refuses_is_reported_and_changes_nothing() {
    use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
    let mut c = cluster(3, vec![1], fast());
    let leader = c.wait_leader(1, 400);
    let proposed = c
        .with(leader, |m| {
            let mut cc = ConfChangeV2::default();
            let changes: Vec<ConfChangeSingle> = (1..=3)
                .map(|id| {
                    let mut s = ConfChangeSingle::default();
                    s.set_change_type(ConfChangeType::RemoveNode);
                    s.node_id = id;
                    s
                })
                .collect();
            cc.set_changes(changes.into());
            m.propose_conf_change(1, b"remove-all".to_vec(), cc)
        })
        .unwrap();
    assert!(proposed.is_ok(), "{proposed:?}");
    run(&mut c, 30);
    let results: Vec<Vec<u8>> = c
        .applied
        .iter()
        .filter(|(_, a)| a.context == b"remove-all")
        .map(|(_, a)| a.result.clone())
        .collect();
    assert_eq!(results.len(), 3, "applied (and refused) on every node");
    for r in &results {
        assert!(r.starts_with(b"ERR"), "{}", String::from_utf8_lossy(r));
    }
    for id in 1..=3 {
        let (voters, _) = c.with(id, |m| m.configuration(1)).unwrap();
        assert_eq!(voters, vec![1, 2, 3], "node {id}");
    }
    assert!(propose(&mut c, 1, "after"));
    run(&mut c, 20);
    for id in 1..=3 {
        assert_eq!(
            journal(&c, id, 1).last().map(Vec::as_slice),
            Some(b"after".as_slice()),
            "node {id} still applies"
        );
    }
}

fn log_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".raftlog"))
        })
        .count()
}

/// Without purging, the log directory only grows: raft-engine deletes a file only when asked,
/// and only once every group has compacted past it. `purge` asks, and snapshots the groups
/// raft-engine names as holding old files, so the next purge can delete them.
#[test]
fn purge_snapshots_groups_that_hold_old_files_and_the_files_go() {
    use cairn_replication::{LogEngine, MultiRaft};
    let dir = tempfile::tempdir().unwrap();
    let engine = LogEngine::open_with(dir.path(), Some(64 * 1024)).unwrap();
    let config = GroupConfig {
        snapshot_every: u64::MAX / 2,
        ..GroupConfig::default()
    };
    let mut m = MultiRaft::new(1, engine, config);
    m.open_group(1, &[1], Journal::default()).unwrap();
    m.campaign(1).unwrap();
    m.round().unwrap();
    // Incompressible values (raft-engine compresses batches).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..4000u64 {
        let value: Vec<u8> = (0..64)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect();
        m.propose(1, i.to_le_bytes().to_vec(), value).unwrap();
        if i % 50 == 49 {
            m.round().unwrap();
        }
    }
    m.round().unwrap();
    assert_eq!(
        m.progress(1).unwrap().2,
        m.progress(1).unwrap().1,
        "all applied"
    );
    let before = log_files(dir.path());
    assert!(before > 8, "the load spans many files: {before}");
    let named = m.purge().unwrap();
    assert_eq!(named, vec![1], "the group holding old files is named");
    m.purge().unwrap();
    let after = log_files(dir.path());
    println!("log files: {before} before purging, {after} after");
    // What stays: the newest files, which hold the snapshot record itself (as large as the
    // state) and the latest writes.
    assert!(
        after * 3 < before,
        "most compacted files are gone: {after} left of {before}"
    );
    assert_eq!(journal_len(&m), 4000, "the state is untouched");
}

fn journal_len(m: &cairn_replication::MultiRaft<Journal>) -> usize {
    m.state_machine(1).map_or(0, |j| j.0.len())
}

/// A journal whose background snapshots wait at a gate, to look at the driver in between.
struct Gated {
    journal: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    gate: std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>,
}

impl StateMachine for Gated {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.journal.lock().unwrap().push(data.to_vec());
        index.to_le_bytes().to_vec()
    }

    fn snapshot(&self) -> Vec<u8> {
        Journal(self.journal.lock().unwrap().clone()).snapshot()
    }

    fn snapshot_job(&self) -> Option<cairn_replication::driver::SnapshotJob> {
        let (journal, gate) = (self.journal.clone(), self.gate.clone());
        Some(Box::new(move || {
            let (open, cv) = &*gate;
            let mut open = open.lock().unwrap();
            while !*open {
                open = cv.wait(open).unwrap();
            }
            Journal(journal.lock().unwrap().clone()).snapshot()
        }))
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let mut j = Journal::default();
        j.restore(data)?;
        *self.journal.lock().unwrap() = j.0;
        Ok(())
    }
}

/// While a snapshot is taken in the background the driver keeps committing but applies
/// nothing (so the state the snapshot reads is the one at its index); once it is saved, the
/// log is compacted behind it and the held entries are applied, in order, answered.
#[test]
fn a_background_snapshot_holds_applies_back_then_releases_them_in_order() {
    use cairn_replication::{LogEngine, MultiRaft};
    let dir = tempfile::tempdir().unwrap();
    let journal = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let gate = std::sync::Arc::new((std::sync::Mutex::new(false), std::sync::Condvar::new()));
    let sm = Gated {
        journal: journal.clone(),
        gate: gate.clone(),
    };
    let config = GroupConfig {
        snapshot_every: 10,
        ..GroupConfig::default()
    };
    let mut m = MultiRaft::new(1, LogEngine::open(dir.path()).unwrap(), config);
    m.open_group(1, &[1], sm).unwrap();
    m.campaign(1).unwrap();
    let step = |m: &mut MultiRaft<Gated>| {
        let round = m.begin_round().unwrap();
        let mut out = m.finish_round(round).unwrap();
        let mut done = m.poll_snapshots().unwrap();
        out.applied.append(&mut done.applied);
        out.applied
    };
    step(&mut m);
    let mut answered = Vec::new();
    for i in 0..12 {
        m.propose(1, vec![i], format!("a{i}").into_bytes()).unwrap();
        answered.extend(step(&mut m));
    }
    let held_at = journal.lock().unwrap().len();
    assert!(
        (1..12).contains(&held_at),
        "a snapshot started after ~10 entries: {held_at}"
    );
    for i in 12..20 {
        m.propose(1, vec![i], format!("a{i}").into_bytes()).unwrap();
        answered.extend(step(&mut m));
    }
    let (_, commit, applied) = m.progress(1).unwrap();
    assert_eq!(
        journal.lock().unwrap().len(),
        held_at,
        "nothing applied meanwhile"
    );
    assert!(
        commit > applied,
        "but the log kept committing: {commit} > {applied}"
    );
    {
        let (open, cv) = &*gate;
        *open.lock().unwrap() = true;
        cv.notify_all();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while m.progress(1).unwrap().2 < commit {
        assert!(std::time::Instant::now() < deadline, "held entries applied");
        answered.extend(step(&mut m));
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let expected: Vec<Vec<u8>> = (0..20).map(|i| format!("a{i}").into_bytes()).collect();
    assert_eq!(*journal.lock().unwrap(), expected, "all applied, in order");
    let contexts: Vec<Vec<u8>> = answered.iter().map(|a| a.context.clone()).collect();
    assert_eq!(
        contexts,
        (0..20).map(|i| vec![i]).collect::<Vec<_>>(),
        "each answered once"
    );
    assert!(
        m.snapshot_info(1).unwrap().0 >= held_at as u64,
        "the snapshot is in place"
    );
}

/// Runs until node `id` leads every one of `groups` (moving leaderships there by transfer).
fn gather_leadership(c: &mut Cluster, id: u64, groups: &[u64]) {
    for _ in 0..50 {
        if groups.iter().all(|&g| c.is_leader(id, g)) {
            return;
        }
        for &g in groups {
            if let Some(l) = c.leader(g).filter(|&l| l != id) {
                c.with(l, move |m| m.hand_off(g, Some(id)));
            }
        }
        run(c, 20);
    }
    panic!("node {id} did not come to lead every group");
}

/// Leadership spreads one transfer at a time until no node leads two more than another, and a
/// transfer in progress is visible (a read lease must not be granted meanwhile: the transferee's
/// election ignores leases).
#[test]
fn balancing_spreads_leaders_and_a_pending_transfer_is_visible() {
    let groups: Vec<u64> = (1..=3).collect();
    let mut c = cluster(3, groups.clone(), fast());
    for &g in &groups {
        c.wait_leader(g, 400);
    }
    gather_leadership(&mut c, 1, &groups);
    let mut moves = 0;
    for _ in 0..10 {
        match c.with(1, |m| m.balance_leaders()).unwrap() {
            Some((g, to)) => {
                assert_ne!(to, 1);
                moves += 1;
                run(&mut c, 30);
                assert!(c.is_leader(to, g), "group {g} moved to node {to}");
            }
            None => break,
        }
    }
    assert_eq!(moves, 2, "three groups on three nodes: two transfers");
    let led: Vec<u64> = groups.iter().map(|&g| c.leader(g).unwrap()).collect();
    let distinct: HashSet<u64> = led.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "one group per node: {led:?}");
    for id in 1..=3 {
        assert_eq!(c.with(id, |m| m.balance_leaders()).unwrap(), None);
    }

    // A transfer to a node that is cut off waits for it to catch up, and shows meanwhile.
    let leader = c.leader(1).unwrap();
    let target = (1..=3).find(|&id| id != leader).unwrap();
    c.cut.insert((leader, target));
    c.cut.insert((target, leader));
    for i in 0..5 {
        propose(&mut c, 1, &format!("while-cut{i}"));
        step(&mut c, false);
    }
    assert_eq!(
        c.with(leader, move |m| m.hand_off(1, Some(target)))
            .unwrap(),
        Some(target)
    );
    step(&mut c, false);
    assert!(c.with(leader, |m| m.is_transferring(1)).unwrap());
    c.cut.clear();
    run(&mut c, 60);
    assert!(c.is_leader(target, 1), "the transfer completed once healed");
    assert!(!c.with(leader, |m| m.is_transferring(1)).unwrap());
}

/// A group closed after this node was removed from it leaves nothing on disk but a tombstone:
/// after a restart it is not reopened, and asking to bootstrap it from its initial voters
/// again opens nothing (the node would otherwise vote in it with none of the log it had
/// acknowledged). It can still join the group again as a new member, with no voters.
#[test]
fn a_closed_group_is_gone_for_good_and_never_bootstrapped_again() {
    use cairn_replication::{LogEngine, MultiRaft};
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path()).unwrap();
        let mut m = MultiRaft::new(1, engine, GroupConfig::default());
        assert!(m.open_group(1, &[1], Journal::default()).unwrap());
        assert!(m.open_group(2, &[1], Journal::default()).unwrap());
        m.campaign(1).unwrap();
        m.round().unwrap();
        for i in 0..10u64 {
            m.propose(1, i.to_le_bytes().to_vec(), b"x".to_vec())
                .unwrap();
        }
        m.round().unwrap();
        assert!(m.close_group(1).unwrap());
        assert!(!m.close_group(1).unwrap(), "closing twice does nothing");
        assert_eq!(m.group_ids(), vec![2]);
        assert!(
            !m.open_group(1, &[1], Journal::default()).unwrap(),
            "not bootstrapped again"
        );
        assert_eq!(m.group_ids(), vec![2]);
    }
    let engine = LogEngine::open(dir.path()).unwrap();
    assert_eq!(engine.groups(), vec![2], "only group 2 has state on disk");
    let mut m = MultiRaft::new(1, engine, GroupConfig::default());
    assert!(m.stored_groups().contains(&2));
    assert!(!m.open_group(1, &[1], Journal::default()).unwrap());
    assert!(
        m.open_group(1, &[], Journal::default()).unwrap(),
        "it may join again as a new member"
    );
    assert_eq!(m.progress(1).unwrap().2, 0, "with no state");
    let (voters, learners) = m.configuration(1);
    assert!(voters.is_empty() && learners.is_empty());
}
