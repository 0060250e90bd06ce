//! The store replicated through raft: three in-process nodes apply random writes (including
//! random choices like SPOP, expiring keys, leader-decided expiry entries, and MULTI-style
//! blocks) while nodes crash and restart and catch up by log or snapshot. Every reply to a
//! given log index must be byte-identical on every node that applied it, and the replicas'
//! keyspaces must end byte-identical.
//!
//! Prints its seed; rerun with `CAIRN_REPL_SEED=<seed> cargo test --test replicated_store`.

use cairn_replication::{GroupConfig, LocalCluster};
use cairn_resp::Protocol;
use cairn_server::shard::ShardMachine;
use cairn_store::entry::{LogEntry, Operation};
use std::collections::BTreeMap;

fn command(rng: &mut impl FnMut() -> u64) -> Vec<Vec<u8>> {
    let key = format!("k{}", rng() % 6);
    let member = format!("m{}", rng() % 5);
    let n = (rng() % 7).to_string();
    let words: Vec<String> = match rng() % 14 {
        0 => vec!["SET".into(), key, n],
        1 => vec![
            "SET".into(),
            key,
            n,
            "PX".into(),
            (1 + rng() % 300).to_string(),
        ],
        2 => vec!["INCR".into(), key],
        3 => vec!["LPUSH".into(), key, member, n],
        4 => vec!["RPOP".into(), key],
        5 => vec!["SADD".into(), key, member, n],
        6 => vec!["SPOP".into(), key, "2".into()],
        7 => vec!["HSET".into(), key, member, n],
        8 => vec!["ZADD".into(), key, n, member],
        9 => vec!["ZINCRBY".into(), key, n, member],
        10 => vec!["DEL".into(), key],
        11 => vec!["PEXPIRE".into(), key, (1 + rng() % 300).to_string()],
        12 => vec!["SRANDMEMBER".into(), key, "-3".into()],
        _ => vec!["APPEND".into(), key, member],
    };
    words.into_iter().map(String::into_bytes).collect()
}

#[test]
fn replicas_apply_the_same_entries_to_the_same_bytes() {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_REPL_SEED");
    println!("replicated store seed {seed} (rerun: CAIRN_REPL_SEED={seed} cargo test -p cairn-server --test replicated_store)");
    let mut state_gen = cairn_check::seeded::XorShift::new(seed);
    let mut rng = move || state_gen.next_u64();
    let config = GroupConfig {
        snapshot_every: 60,
        ..GroupConfig::default()
    };
    let mut c = LocalCluster::new(3, vec![1], config, ShardMachine::default);
    c.wait_leader(1, 400);
    // The leader's clock: advances 10 ms a step, so PX deadlines pass during the run.
    let mut now_ms = 1_700_000_000_000u64;
    let (mut proposed, mut crashes) = (0, 0);
    for step in 0..1200u64 {
        now_ms += 10;
        let roll = rng() % 100;
        if roll < 2 && (1..=3).all(|id| c.is_up(id)) {
            c.crash(rng() % 3 + 1);
            crashes += 1;
        } else if roll < 8 {
            if let Some(id) = (1..=3).find(|&id| !c.is_up(id)) {
                c.start(id);
            }
        }
        let op = if roll % 10 == 9 {
            // Active expiry as the leader runs it: it reads due keys and proposes their removal.
            let due = c
                .leader(1)
                .and_then(|l| {
                    c.with(l, move |m| {
                        m.state_machine(1)
                            .map(|s| s.store.lock().due_keys(now_ms, 50))
                    })
                })
                .flatten()
                .unwrap_or_default();
            Operation::Expire(due)
        } else if roll % 10 == 8 {
            Operation::Commands((0..3).map(|_| command(&mut rng)).collect())
        } else {
            Operation::Commands(vec![command(&mut rng)])
        };
        let proto = if rng() % 2 == 0 {
            Protocol::Resp2
        } else {
            Protocol::Resp3
        };
        let entry = LogEntry {
            now_ms,
            seed: rng(),
            proto,
            op,
        };
        if c.propose(1, step.to_le_bytes().to_vec(), entry.encode())
            .is_some()
        {
            proposed += 1;
        }
        c.step(step % 2 == 0);
    }
    for id in 1..=3 {
        if !c.is_up(id) {
            c.start(id);
        }
    }
    c.run(200);
    // Determinism of replies: one answer per log index, whoever computed it.
    let mut by_index: BTreeMap<u64, (u64, Vec<u8>)> = BTreeMap::new();
    for (node, a) in &c.applied {
        match by_index.get(&a.index) {
            Some((first, bytes)) => assert_eq!(
                bytes, &a.result,
                "seed {seed}: index {} answered differently on node {first} and node {node}",
                a.index
            ),
            None => {
                by_index.insert(a.index, (*node, a.result.clone()));
            }
        }
    }
    // Determinism of state: the replicas' keyspaces are byte-identical.
    let snapshots: Vec<Vec<u8>> = (1..=3)
        .map(|id| {
            c.with(id, |m| {
                cairn_store::snapshot::write(&m.state_machine(1).unwrap().store.lock().keyspace)
            })
            .unwrap()
        })
        .collect();
    assert_eq!(
        snapshots[0], snapshots[1],
        "seed {seed}: nodes 1 and 2 differ"
    );
    assert_eq!(
        snapshots[0], snapshots[2],
        "seed {seed}: nodes 1 and 3 differ"
    );
    assert!(
        by_index.len() > 100,
        "seed {seed}: only {} entries applied",
        by_index.len()
    );
    println!(
        "replicated store seed {seed}: {proposed} proposals, {} indexes applied, {crashes} crashes, {} replies compared, final keyspace {} bytes on each node",
        by_index.len(),
        c.applied.len(),
        snapshots[0].len()
    );
}
