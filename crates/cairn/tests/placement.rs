//! Replica placement on five nodes with three replicas per shard: each node holds three of
//! the five shards; any node serves every key, relaying to leaders of shards it holds no
//! replica of; the cluster commands describe every shard with its three nodes; and a replica
//! moved to another node under writes takes every write with it, while the node it left
//! deletes its copy.

mod common;

use common::{group_field, replicas_on, wait_serving, Answer, Cluster, Conn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn five_nodes_hold_three_replicas_of_each_shard_and_serve_every_key() {
    let cluster = Cluster::sized(5, &["--shards", "5", "--replicas", "3"], "warn");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));

    // Each shard on three distinct nodes, each node holding three shards. (A node learns the
    // shards it does not hold from their leaders within a moment of their election.)
    let map = common::wait_map(ports[0], |_| true);
    assert_eq!(map.len(), 5, "{map:?}");
    for (shard, leader, voters, learners) in &map {
        assert_eq!(voters.len(), 3, "shard {shard}: {voters:?}");
        assert!(learners.is_empty());
        assert!(
            leader.is_some_and(|l| voters.contains(&l)),
            "shard {shard}'s leader is one of its voters"
        );
    }
    for node in 1..=5u64 {
        assert_eq!(replicas_on(&map, node), 3, "node {node}: {map:?}");
        let port = ports[node as usize - 1];
        for (shard, _, voters, _) in &map {
            let held = group_field(port, *shard, "voters").is_some();
            assert_eq!(held, voters.contains(&node), "node {node}, shard {shard}");
        }
    }

    // Any node takes every key: writes through one, reads through another.
    let mut w = Conn::open(ports[0]).unwrap();
    // wait_serving wrote a probe key or so: count from here.
    let Some(Answer::Int(before)) = w.call(&[b"DBSIZE"]) else {
        panic!("DBSIZE")
    };
    for i in 0..500 {
        let k = format!("key:{i}");
        assert_eq!(
            w.call(&[b"SET", k.as_bytes(), k.as_bytes()]),
            Some(Answer::Ok)
        );
    }
    for &port in &ports[1..] {
        let mut r = Conn::open(port).unwrap();
        for i in (0..500).step_by(7) {
            let k = format!("key:{i}");
            assert_eq!(
                r.call(&[b"GET", k.as_bytes()]),
                Some(Answer::Value(Some(k.clone().into_bytes()))),
                "{k} through port {port}"
            );
        }
        assert_eq!(r.call(&[b"DBSIZE"]), Some(Answer::Int(before + 500)));
    }

    // CLUSTER SHARDS lists every shard with its three nodes, the leader as master.
    let mut c = Conn::open(ports[4]).unwrap();
    let Some(Answer::Array(shards)) = c.call(&[b"CLUSTER", b"SHARDS"]) else {
        panic!("CLUSTER SHARDS")
    };
    assert_eq!(shards.len(), 5);
    for shard in &shards {
        let Answer::Array(fields) = shard else {
            panic!("{shard:?}")
        };
        let Some(Answer::Array(nodes)) = fields.get(3) else {
            panic!("{fields:?}")
        };
        assert_eq!(nodes.len(), 3, "{nodes:?}");
    }
    // A slot's keys are counted where its shard is: a node without a replica redirects.
    let slot = cairn_store::slot::key_slot(b"key:1");
    let holder = (1..=5u64)
        .find(|&n| {
            let s = slot.to_string();
            matches!(
                Conn::open(ports[n as usize - 1]).unwrap().call(&[b"CLUSTER", b"COUNTKEYSINSLOT", s.as_bytes()]),
                Some(Answer::Int(n)) if n >= 1
            )
        })
        .expect("some node counts the key's slot");
    let other = (1..=5u64)
        .find(|&n| {
            let s = slot.to_string();
            matches!(
                Conn::open(ports[n as usize - 1]).unwrap().call(&[b"CLUSTER", b"COUNTKEYSINSLOT", s.as_bytes()]),
                Some(Answer::Error(e)) if e.starts_with("MOVED")
            )
        })
        .expect("a node without the shard redirects");
    assert_ne!(holder, other);
}

#[test]
fn a_replica_moved_under_writes_takes_every_write_and_its_old_node_lets_go() {
    let cluster = Cluster::sized(5, &["--shards", "5", "--replicas", "3"], "warn");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let map = common::wait_map(ports[0], |_| true);
    // Shard 1, from its leader to a node that does not hold it (the leader hands over first).
    let (_, leader, voters, _) = map.iter().find(|(s, ..)| *s == 1).unwrap().clone();
    let from = leader.expect("shard 1 has a leader");
    let to = (1..=5u64).find(|n| !voters.contains(n)).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writer = common::unique_writes(ports[(to as usize) % 5], stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (f, t) = (from.to_string(), to.to_string());
    let moved = Conn::open_waiting(ports[2], Duration::from_secs(60))
        .unwrap()
        .call(&[
            b"CAIRN.PLACEMENT",
            b"MOVE",
            b"1",
            f.as_bytes(),
            t.as_bytes(),
        ]);
    assert_eq!(moved, Some(Answer::Ok));
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (acked, unknown) = writer.join().unwrap();

    let map = common::wait_map(ports[0], |m| {
        m.iter()
            .any(|(s, _, v, _)| *s == 1 && v.contains(&to) && !v.contains(&from))
    });
    let (_, _, now, _) = map.iter().find(|(s, ..)| *s == 1).unwrap().clone();
    assert!(now.contains(&to) && !now.contains(&from), "{now:?}");
    assert_eq!(now.len(), 3);
    // The node it left deletes its replica; the new one holds the same data as the others.
    let deadline = Instant::now() + Duration::from_secs(20);
    while group_field(ports[from as usize - 1], 1, "voters").is_some() {
        assert!(Instant::now() < deadline, "node {from} still holds shard 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let digest = |node: u64| {
        Conn::open(ports[node as usize - 1])
            .unwrap()
            .call(&[b"DEBUG", b"DIGEST-SHARD", b"1"])
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d: Vec<_> = now.iter().map(|&n| digest(n)).collect();
        if d.iter()
            .all(|x| x == &d[0] && matches!(x, Some(Answer::Value(Some(_)))))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas of shard 1 differ: {d:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        digest(from),
        Some(Answer::Value(None)),
        "no replica left there"
    );
    let mut c = Conn::open(ports[from as usize - 1]).unwrap();
    for k in &acked {
        let got = c.call(&[b"GET", k.as_bytes()]);
        assert!(
            matches!(&got, Some(Answer::Value(Some(v))) if v == b"v"),
            "{k}: {got:?}"
        );
    }
    println!(
        "shard 1's replica moved from node {from} to node {to} under {} acknowledged writes ({unknown} indeterminate)",
        acked.len()
    );
    assert!(acked.len() > 100, "writes went on: {}", acked.len());
}
