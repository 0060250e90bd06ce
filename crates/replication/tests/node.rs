//! Three node runtimes over the real TCP bus, in real time: election, proposals answered after
//! apply on a majority, read barriers, and failover when the leader dies. A proposal whose
//! leader steps down learns its fate: applied when the next leader commits it, refused (safe
//! to retry) when the next leader overwrote it.

use cairn_replication::{GroupConfig, Node, NodeConfig, NodeError, StateMachine};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default, Clone)]
struct Shared(Arc<Mutex<Vec<Vec<u8>>>>);

impl StateMachine for Shared {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        self.0.lock().push(data.to_vec());
        index.to_le_bytes().to_vec()
    }
    fn snapshot(&self) -> Vec<u8> {
        let items = self.0.lock();
        let mut out = Vec::new();
        for i in items.iter() {
            out.extend_from_slice(&(i.len() as u32).to_le_bytes());
            out.extend_from_slice(i);
        }
        out
    }
    fn restore(&mut self, mut data: &[u8]) -> Result<(), String> {
        let mut items = self.0.lock();
        items.clear();
        while !data.is_empty() {
            let len =
                u32::from_le_bytes(data.get(..4).ok_or("short")?.try_into().unwrap()) as usize;
            items.push(data.get(4..4 + len).ok_or("short")?.to_vec());
            data = &data[4 + len..];
        }
        Ok(())
    }
}

struct Member {
    node: Option<Node>,
    journal: Shared,
    _dir: tempfile::TempDir,
}

fn start_cluster() -> HashMap<u64, Member> {
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: HashMap<u64, std::net::SocketAddr> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap()))
        .collect();
    let mut members = HashMap::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let dir = tempfile::tempdir().unwrap();
        let journal = Shared::default();
        let config = NodeConfig {
            id,
            data_dir: dir.path().to_path_buf(),
            peers: peers.clone(),
            tick: Duration::from_millis(50),
            group: GroupConfig::default(),
            bus_tls: None,
        };
        let node =
            Node::start(config, listener, vec![1, 2, 3], vec![(1, journal.clone())]).unwrap();
        members.insert(
            id,
            Member {
                node: Some(node),
                journal,
                _dir: dir,
            },
        );
    }
    members
}

async fn wait_leader(members: &HashMap<u64, Member>, not: Option<u64>, within: Duration) -> u64 {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        for (&id, m) in members {
            if Some(id) == not {
                continue;
            }
            if let Some(node) = &m.node {
                if node
                    .status()
                    .borrow()
                    .groups
                    .get(&1)
                    .is_some_and(|g| g.is_leader)
                {
                    return id;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no leader within {within:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_reads_and_failover_over_tcp() {
    let mut members = start_cluster();
    let leader = wait_leader(&members, None, Duration::from_secs(10)).await;
    let node = members[&leader].node.as_ref().unwrap();
    // 200 concurrent proposals: each answers after apply, with its own log index.
    let results = futures_join(node, 200).await;
    let mut indexes: Vec<u64> = results
        .iter()
        .map(|r| u64::from_le_bytes(r.clone().unwrap().try_into().unwrap()))
        .collect();
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 200, "every proposal got its own index");
    node.read_barrier(1)
        .await
        .expect("the leader confirms reads");
    let follower = (1..=3).find(|&id| id != leader).unwrap();
    match members[&follower]
        .node
        .as_ref()
        .unwrap()
        .read_barrier(1)
        .await
    {
        Err(NodeError::NotLeader {
            leader: Some(l), ..
        }) => assert_eq!(l, leader),
        other => panic!("a follower must refuse reads, got {other:?}"),
    }
    match members[&follower]
        .node
        .as_ref()
        .unwrap()
        .propose(1, b"x".to_vec())
        .await
    {
        Err(NodeError::NotLeader { .. }) => {}
        other => panic!("a follower must refuse proposals, got {other:?}"),
    }
    // Every replica applies all 200 (the leader answered after a majority had them).
    let deadline = Instant::now() + Duration::from_secs(10);
    while (1..=3).any(|id| members[&id].journal.0.lock().len() < 200) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in 1..=3 {
        assert_eq!(members[&id].journal.0.lock().len(), 200, "node {id}");
    }
    // Failover: the leader dies; time until another node accepts a write.
    let killed_at = Instant::now();
    members.get_mut(&leader).unwrap().node = None;
    let mut written = None;
    while killed_at.elapsed() < Duration::from_secs(10) {
        let next = wait_leader(&members, Some(leader), Duration::from_secs(10)).await;
        if members[&next]
            .node
            .as_ref()
            .unwrap()
            .propose(1, b"after".to_vec())
            .await
            .is_ok()
        {
            written = Some(killed_at.elapsed());
            break;
        }
    }
    let took = written.expect("a write succeeded after the leader died");
    println!(
        "failover: first successful write {:?} after the leader stopped",
        took
    );
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    let survivors: Vec<u64> = (1..=3).filter(|&id| id != leader).collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    while survivors
        .iter()
        .any(|id| members[id].journal.0.lock().len() < 201)
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for id in survivors {
        let j = members[&id].journal.0.lock();
        assert_eq!(j.len(), 201, "node {id}");
        assert_eq!(j.last().unwrap(), b"after");
    }
}

async fn futures_join(node: &Node, n: usize) -> Vec<Result<Vec<u8>, NodeError>> {
    let mut set = Vec::with_capacity(n);
    for i in 0..n {
        set.push(node.propose(1, format!("p{i}").into_bytes()));
    }
    let mut out = Vec::with_capacity(n);
    for f in set {
        out.push(f.await);
    }
    out
}

/// Another state machine type, which the nodes were not started with.
struct Other;

impl StateMachine for Other {
    fn apply(&mut self, _index: u64, _data: &[u8]) -> Vec<u8> {
        Vec::new()
    }
    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }
    fn restore(&mut self, _data: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// A group opened while the nodes run (as a shard created at runtime is) elects a leader
/// among the voters it was opened with and replicates to all of them; opening it again is
/// harmless, and a node given the wrong state machine type is refused, not crashed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_opened_at_runtime_elects_and_replicates() {
    let members = start_cluster();
    wait_leader(&members, None, Duration::from_secs(10)).await;
    let journals: HashMap<u64, Shared> =
        members.keys().map(|&id| (id, Shared::default())).collect();
    for (id, m) in &members {
        let node = m.node.as_ref().unwrap();
        node.open_group(7, vec![1, 2, 3], journals[id].clone())
            .await
            .unwrap();
        // Again: nothing happens, the journal given first stays the group's.
        node.open_group(7, vec![1, 2, 3], Shared::default())
            .await
            .unwrap();
        assert!(node.open_group(8, vec![1, 2, 3], Other).await.is_err());
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let leader = members.iter().find(|(_, m)| {
            m.node
                .as_ref()
                .unwrap()
                .status()
                .borrow()
                .groups
                .get(&7)
                .is_some_and(|g| g.is_leader)
        });
        if let Some((&id, _)) = leader {
            break id;
        }
        assert!(Instant::now() < deadline, "group 7 elected a leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let node = members[&leader].node.as_ref().unwrap();
    node.propose(7, b"in seven".to_vec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !journals
        .values()
        .all(|j| j.0.lock().iter().any(|e| e == b"in seven"))
    {
        assert!(Instant::now() < deadline, "every voter applied the entry");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Group 1 did not see it.
    assert!(members
        .values()
        .all(|m| !m.journal.0.lock().iter().any(|e| e == b"in seven")));
}

/// Which of `members` hold `item` in their journal.
fn holding(members: &HashMap<u64, Member>, item: &[u8]) -> Vec<u64> {
    let mut ids: Vec<u64> = members
        .iter()
        .filter(|(_, m)| m.journal.0.lock().iter().any(|i| i == item))
        .map(|(&id, _)| id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proposals_in_flight_when_the_leader_is_cut_off_each_learn_their_fate() {
    let mut members = start_cluster();
    let old = wait_leader(&members, None, Duration::from_secs(10)).await;
    let leader = Arc::new(members.get_mut(&old).unwrap().node.take().unwrap());
    let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    // Proposals stream in; a few milliseconds later the leader is cut off, so some of them
    // are in its log only, some reached a follower unacknowledged, some committed. Each is
    // answered for what happened to it: applied (then it is on every node once the cut is
    // mended) or refused (then it is on none). None may stay unknown.
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let node = leader.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(50 * i)).await;
                node.propose(1, format!("c{i}").into_bytes()).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(3)).await;
    for &o in &others {
        leader.set_link_cut(o, true);
        members[&o].node.as_ref().unwrap().set_link_cut(old, true);
    }
    let new = wait_leader(&members, Some(old), Duration::from_secs(10)).await;
    let mut wrote = false;
    for _ in 0..100 {
        let proposal = members[&new]
            .node
            .as_ref()
            .unwrap()
            .propose(1, b"mark".to_vec());
        if proposal.await.is_ok() {
            wrote = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(wrote, "the new leader takes writes");
    for &o in &others {
        leader.set_link_cut(o, false);
        members[&o].node.as_ref().unwrap().set_link_cut(old, false);
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    // Everyone has the new leader's mark once the old one caught up (its journal is still in
    // `members`: only its node was taken out).
    let deadline = Instant::now() + Duration::from_secs(10);
    while holding(&members, b"mark").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        holding(&members, b"mark"),
        [1, 2, 3],
        "the old leader caught up"
    );
    let (mut applied, mut refused) = (0, 0);
    for (i, r) in results.iter().enumerate() {
        let item = format!("c{i}").into_bytes();
        let on = holding(&members, &item).len();
        match r {
            Ok(_) => {
                applied += 1;
                assert_eq!(on, 3, "c{i} answered as applied");
            }
            Err(NodeError::Busy) | Err(NodeError::NotLeader { .. }) => {
                refused += 1;
                assert_eq!(on, 0, "c{i} refused but applied");
            }
            Err(e) => panic!("c{i}: {e:?}"),
        }
    }
    println!("{applied} proposals applied and {refused} refused across the cut, none unknown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_the_next_leader_overwrote_is_answered_as_not_applied() {
    let members = start_cluster();
    let old = wait_leader(&members, None, Duration::from_secs(10)).await;
    let node = |id: u64| members[&id].node.as_ref().unwrap();
    node(old).propose(1, b"before".to_vec()).await.unwrap();
    // The leader is cut off; what it takes now reaches no one.
    let others: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    for &o in &others {
        node(old).set_link_cut(o, true);
        node(o).set_link_cut(old, true);
    }
    let lost = node(old).propose(1, b"lost".to_vec());
    let (outcome, ()) = tokio::join!(lost, async {
        // The others elect a leader, which commits its own entry where "lost" was, and the
        // old leader comes back.
        let new = wait_leader(&members, Some(old), Duration::from_secs(10)).await;
        let mut wrote = false;
        for _ in 0..100 {
            if node(new).propose(1, b"after".to_vec()).await.is_ok() {
                wrote = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(wrote, "the new leader takes writes");
        for &o in &others {
            node(old).set_link_cut(o, false);
            node(o).set_link_cut(old, false);
        }
    });
    match outcome {
        Err(NodeError::NotLeader { .. }) => {}
        other => panic!("the overwritten proposal: {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while holding(&members, b"after").len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(holding(&members, b"after"), [1, 2, 3]);
    assert!(
        holding(&members, b"lost").is_empty(),
        "an entry refused but applied"
    );
}
