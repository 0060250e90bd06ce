//! Membership over real processes, under a write load: a fourth node joins (`cairn server
//! --initial-cluster-state existing`), `cairn cluster add-node` adds it as a learner, waits for
//! it to catch up (by snapshot: a group starts from one, so a new member never replays the log
//! without a configuration) and promotes it; then `cairn cluster remove-node` removes the
//! leader, which hands leadership over first. Afterwards the new node votes (the group keeps
//! serving with one of the others killed), every replica holds the same data, and every
//! acknowledged write is there. Throughout, slots 0-999 keep moving between shards 1 and 2.

mod common;

use common::{digest, group_field, raft_field, wait_serving, Answer, Cluster, Conn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn cli(args: &[&str]) -> (bool, String) {
    common::cairn_cli(args)
}

fn leader(ports: &[(usize, u16)]) -> Option<usize> {
    ports
        .iter()
        .find(|(_, p)| raft_field(*p, "role").as_deref() == Some("leader"))
        .map(|(i, _)| *i)
}

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_joins_catches_up_votes_and_the_old_leader_leaves_under_load() {
    let mut cluster = Cluster::new(&["--snapshot-entries", "300"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let first_leader = leader(&[(0, ports[0]), (1, ports[1]), (2, ports[2])]).expect("leader");
    // Writes go through a node that stays in the group.
    let via = (first_leader + 1) % 3;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (port, stop) = (ports[via], stop.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(port).expect("connect");
            let (mut acked, mut errors) = (Vec::new(), Vec::new());
            let deadline = Instant::now() + Duration::from_secs(90);
            for i in 0..1_000_000 {
                if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
                    break;
                }
                let key = format!("m:{i}");
                // A slot between shards refuses the write at apply (nothing happened): again.
                let mut answer = None;
                for _ in 0..100 {
                    answer = conn.call(&[b"SET", key.as_bytes(), key.as_bytes()]);
                    match &answer {
                        Some(Answer::Error(e)) if e.contains("moving between shards") => {
                            std::thread::sleep(Duration::from_millis(5))
                        }
                        _ => break,
                    }
                }
                match answer {
                    Some(Answer::Ok) => acked.push(key),
                    other => errors.push(format!("{key}: {other:?}")),
                }
            }
            (acked, errors)
        })
    };
    // Slots 0-999 go back and forth between shards 1 and 2 the whole time.
    let mover = {
        let (port, stop) = (ports[via], stop.clone());
        std::thread::spawn(move || {
            let mut moves = 0;
            let mut to = 2;
            while !stop.load(Ordering::Relaxed) {
                // A move can take seconds while a leader hands over or a member leaves (a
                // failed step starts a new attempt): wait for its answer that long.
                let Some(mut conn) = Conn::open_waiting(port, Duration::from_secs(30)) else {
                    break;
                };
                let to_s = to.to_string();
                match conn.call(&[b"CAIRN.RESHARD", b"MOVE", b"0", b"999", to_s.as_bytes()]) {
                    Some(Answer::Int(1000)) => {
                        moves += 1;
                        to = 3 - to;
                    }
                    other => panic!("moving slots 0-999 to shard {to}: {other:?}"),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            moves
        })
    };
    std::thread::sleep(Duration::from_millis(1500));

    let new = cluster.add_joining_node();
    let new_port = cluster.procs[new].port;
    let bus = format!("127.0.0.1:{}", new_port + 10000);
    let (ok, out) = cli(&[
        "cluster",
        "add-node",
        "--port",
        &ports[via].to_string(),
        "--id",
        &(new + 1).to_string(),
        "--bus",
        &bus,
        "--wait-secs",
        "60",
    ]);
    println!("{out}");
    assert!(ok, "add-node: {out}");
    // The promotion is acknowledged once the leader applied it; the new node follows shortly.
    // It is a voter of the meta group, and holds its share of the shards' replicas (3 shards
    // of 3 replicas over 4 nodes: 2).
    wait_for(
        "the new node to see itself a voter",
        Duration::from_secs(10),
        || (group_field(new_port, 0, "voters")? == "1;2;3;4").then_some(()),
    );
    let installed: u64 = group_field(new_port, 0, "snapshots_installed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(installed >= 1, "the new node started from a snapshot");
    let map = common::wait_map(ports[via], |m| common::replicas_on(m, new as u64 + 1) == 2);
    assert_eq!(common::replicas_on(&map, new as u64 + 1), 2, "{map:?}");

    // Remove a node that leads (it hands its shards over first), never the one the writes go
    // through. With three shards balancing may have moved shard 1 to `via` meanwhile: then
    // another original node, which leads one of the other shards.
    let all: Vec<(usize, u16)> = (0..4).map(|i| (i, cluster.procs[i].port)).collect();
    let old = leader(&all)
        .filter(|&l| l != via && l != new)
        .unwrap_or_else(|| (0..3).find(|&i| i != via).expect("another original node"));
    let (ok, out) = cli(&[
        "cluster",
        "remove-node",
        "--port",
        &ports[via].to_string(),
        "--id",
        &(old + 1).to_string(),
    ]);
    println!("{out}");
    assert!(ok, "remove-node: {out}");
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::Relaxed);
    let (acked, errors) = writer.join().unwrap();
    let moves = mover.join().unwrap();
    println!(
        "{} writes acknowledged, {} errors, while node {} joined and node {} left and slots \
         0-999 moved {moves} times",
        acked.len(),
        errors.len(),
        new + 1,
        old + 1
    );
    assert!(errors.is_empty(), "writes failed: {errors:?}");
    assert!(moves >= 2, "the slots moved under the membership changes");

    let remaining: Vec<usize> = (0..4).filter(|&i| i != old).collect();
    let expected: Vec<String> = (1..=4)
        .filter(|&n| n != old + 1)
        .map(|n| n.to_string())
        .collect();
    for &i in &remaining {
        let port = cluster.procs[i].port;
        // Each remaining node holds every shard again once the drain's moves are applied.
        wait_for(
            "the removal applied everywhere",
            Duration::from_secs(30),
            || (raft_field(port, "voters")? == expected.join(";")).then_some(()),
        );
    }
    wait_for("equal replicas", Duration::from_secs(30), || {
        let d: Vec<String> = remaining
            .iter()
            .map(|&i| digest(cluster.procs[i].port))
            .collect::<Option<_>>()?;
        d.windows(2).all(|w| w[0] == w[1]).then_some(())
    });
    cluster.kill9(old);

    // The new node counts: kill one of the two other remaining nodes, and the group (the new
    // node and one other) still takes writes.
    let victim = *remaining.iter().find(|&&i| i != new && i != via).unwrap();
    cluster.kill9(victim);
    let mut conn = Conn::open(new_port).unwrap();
    wait_for(
        "a write with the new node in the quorum",
        Duration::from_secs(15),
        || matches!(conn.call(&[b"SET", b"after", b"x"]), Some(Answer::Ok)).then_some(()),
    );
    // Every acknowledged write is there. A shard that victim led elects a new leader first:
    // its reads may meet -TRYAGAIN for a moment (that is availability, not loss: retried).
    for key in &acked {
        let mut tries = 0;
        loop {
            match conn.call(&[b"GET", key.as_bytes()]) {
                Some(Answer::Value(Some(v))) if v == key.as_bytes() => break,
                Some(Answer::Error(e)) if e.starts_with("TRYAGAIN") && tries < 50 => {
                    tries += 1;
                    std::thread::sleep(Duration::from_millis(100));
                }
                None if tries < 50 => {
                    tries += 1;
                    conn = Conn::open(new_port).unwrap();
                }
                other => panic!("acknowledged {key} is gone: {other:?}"),
            }
        }
    }
}
