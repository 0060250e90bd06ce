//! Jepsen-style, in process: three replicated nodes over real TCP hold the store; concurrent
//! clients SET (proposals) and GET (after the leader's read barrier) a few keys while a nemesis
//! kills the leader and restarts it from its disk. The history the clients saw must be
//! linearizable (checked by cairn-check); writes whose outcome a client never learned count as
//! indeterminate.
//!
//! Prints its seed (the nemesis's choices; thread timing still varies between runs):
//! `CAIRN_LIN_SEED=<seed> cargo test -p cairn-server --test linearizable -- --nocapture`.

use cairn_check::{linearizable, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use cairn_replication::{GroupConfig, Node, NodeConfig, NodeError};
use cairn_resp::Protocol;
use cairn_server::shard::ShardMachine;
use cairn_store::entry::{LogEntry, Operation as EntryOp};
use cairn_store::Value;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Member {
    node: Option<Arc<Node>>,
    machine: ShardMachine,
    dir: tempfile::TempDir,
}

struct World {
    peers: HashMap<u64, SocketAddr>,
    members: Mutex<HashMap<u64, Member>>,
}

impl World {
    fn start(&self, id: u64) {
        let listener = std::net::TcpListener::bind(self.peers[&id]).expect("rebind the bus port");
        let mut members = self.members.lock();
        let m = members.get_mut(&id).unwrap();
        // A restarted node starts with empty memory and recovers from its disk.
        m.machine = ShardMachine::default();
        let config = NodeConfig {
            id,
            data_dir: m.dir.path().to_path_buf(),
            peers: self.peers.clone(),
            tick: Duration::from_millis(20),
            group: GroupConfig {
                snapshot_every: 200,
                ..GroupConfig::default()
            },
            bus_tls: None,
        };
        m.node = Some(Arc::new(
            Node::start(
                config,
                listener,
                vec![1, 2, 3],
                vec![(1, m.machine.clone())],
            )
            .unwrap(),
        ));
    }

    fn kill(&self, id: u64) {
        if let Some(node) = self.members.lock().get_mut(&id).and_then(|m| m.node.take()) {
            node.kill();
        }
    }

    fn leader(&self) -> Option<(u64, Arc<Node>, ShardMachine)> {
        let members = self.members.lock();
        members.iter().find_map(|(&id, m)| {
            let node = m.node.as_ref()?;
            node.status()
                .borrow()
                .groups
                .get(&1)
                .filter(|g| g.is_leader)?;
            Some((id, node.clone(), m.machine.clone()))
        })
    }
}

fn now_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

async fn client(
    world: Arc<World>,
    client_id: u64,
    start: Instant,
    until: Instant,
) -> Vec<Operation<RegisterInput, RegisterOutput>> {
    let mut history = Vec::new();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let key = format!("k{}", (client_id + n) % 3).into_bytes();
        let Some((_, node, machine)) = world.leader() else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if n.is_multiple_of(2) {
            let value = format!("c{client_id}-{n}").into_bytes();
            let entry = LogEntry {
                now_ms: 1_700_000_000_000,
                seed: n,
                proto: Protocol::Resp2,
                op: EntryOp::Commands(vec![vec![b"SET".to_vec(), key.clone(), value.clone()]]),
            };
            let call = now_ns(start);
            let result =
                tokio::time::timeout(Duration::from_secs(2), node.propose(1, entry.encode())).await;
            let (output, ret) = match result {
                Ok(Ok(bytes)) if bytes == b"+OK\r\n" => {
                    (Some(RegisterOutput::Ok), Some(now_ns(start)))
                }
                Ok(Err(NodeError::NotLeader { .. } | NodeError::Busy)) => continue, // never proposed
                _ => (None, None),                                                  // indeterminate
            };
            history.push(Operation {
                key,
                input: RegisterInput::Set(Some(value)),
                output,
                call,
                ret,
            });
        } else {
            let call = now_ns(start);
            if tokio::time::timeout(Duration::from_secs(2), node.read_barrier(1))
                .await
                .map_or(true, |r| r.is_err())
            {
                continue; // a read that failed observed nothing
            }
            let value = match machine.store.lock().keyspace.value(&key, 0) {
                Some(Value::Str(s)) => Some(s.clone()),
                _ => None,
            };
            let ret = now_ns(start);
            history.push(Operation {
                key,
                input: RegisterInput::Get,
                output: Some(RegisterOutput::Value(value)),
                call,
                ret: Some(ret),
            });
        }
    }
    history
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_writes_stay_linearizable_while_leaders_die() {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_LIN_SEED");
    println!("linearizability seed {seed} (rerun: CAIRN_LIN_SEED={seed} cargo test -p cairn-server --test linearizable -- --nocapture)");
    let listeners: Vec<std::net::TcpListener> = (0..3)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let peers: HashMap<u64, SocketAddr> = listeners
        .iter()
        .enumerate()
        .map(|(i, l)| (i as u64 + 1, l.local_addr().unwrap()))
        .collect();
    drop(listeners);
    let members = (1..=3)
        .map(|id| {
            (
                id,
                Member {
                    node: None,
                    machine: ShardMachine::default(),
                    dir: tempfile::tempdir().unwrap(),
                },
            )
        })
        .collect();
    let world = Arc::new(World {
        peers,
        members: Mutex::new(members),
    });
    for id in 1..=3 {
        world.start(id);
    }
    let start = Instant::now();
    let until = start + Duration::from_secs(6);
    let clients: Vec<_> = (0..4)
        .map(|c| tokio::spawn(client(world.clone(), c, start, until)))
        .collect();
    // The nemesis: every so often, kill -9 the leader, and bring it back a little later.
    let mut nemesis = cairn_check::seeded::XorShift::new(seed);
    let mut kills = 0;
    while Instant::now() < until - Duration::from_millis(1500) {
        let rng = nemesis.next_u64();
        tokio::time::sleep(Duration::from_millis(300 + rng % 400)).await;
        if let Some((leader, _, _)) = world.leader() {
            world.kill(leader);
            kills += 1;
            tokio::time::sleep(Duration::from_millis(200 + rng % 300)).await;
            world.start(leader);
        }
    }
    let mut history = Vec::new();
    for c in clients {
        history.extend(c.await.unwrap());
    }
    let writes = history
        .iter()
        .filter(|o| matches!(o.input, RegisterInput::Set(_)))
        .count();
    let indeterminate = history.iter().filter(|o| o.output.is_none()).count();
    let reads = history.len() - writes;
    println!("linearizability seed {seed}: {} ops ({writes} writes, {reads} reads, {indeterminate} indeterminate), {kills} leader kills", history.len());
    assert!(kills >= 3, "the nemesis must have struck ({kills} kills)");
    assert!(
        reads > 50 && writes > 50,
        "too little traffic to mean anything"
    );
    assert_eq!(
        linearizable(&Register, &history),
        Verdict::Linearizable,
        "seed {seed}: the history is not linearizable"
    );
    for id in 1..=3 {
        world.kill(id);
    }
}
