//! redis-py's `RedisCluster` against a three-shard cairn cluster with `--cluster-redirects yes`:
//! it discovers the shard leaders from CLUSTER SLOTS, writes and reads keys of every shard,
//! runs multi-key commands on hash-tagged keys, a cluster pipeline, and DBSIZE and SCAN over
//! the whole cluster (it asks every master and adds up: each node answers for the shards it
//! leads), keeps working after shard leaderships move (a transfer, then balancing) and while
//! slots move between shards under its writes, and gets Redis Cluster's errors for keys in
//! different shards.
//!
//! Needs python3 with the `redis` package (`.ci/run` installs it); without them the test says
//! SKIPPED loudly and passes, as the differential tests do without redis-server.

mod common;

use common::{group_field, Answer, Cluster, Conn};
use std::process::Command;
use std::time::{Duration, Instant};

const SCRIPT: &str = r#"
import sys
from redis.cluster import RedisCluster, ClusterNode
from redis.exceptions import ResponseError

phase = sys.argv[1]
done_flag = sys.argv[2]
ports = [int(p) for p in sys.argv[3:]]
rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports],
                  decode_responses=True)
if phase == "write":
    for i in range(300):
        assert rc.set(f"k{i}", i)
    assert rc.mset({"{user}name": "ada", "{user}lang": "rust"})
    assert rc.mget("{user}name", "{user}lang") == ["ada", "rust"]
    # The client refuses keys of two slots itself; sent to any node, cairn runs it atomically.
    assert rc.execute_command("MSET", "a", "1", "b", "2", target_nodes=rc.get_random_node())
    assert (rc.get("a"), rc.get("b")) == ("1", "2")
    p = rc.pipeline()
    for i in range(70):
        p.incr(f"counter{i % 7}")
    results = p.execute()
    assert results[-7:] == [10] * 7, results[-7:]
    print("wrote", rc.dbsize(target_nodes=RedisCluster.PRIMARIES))
elif phase == "churn":
    # Increments keys whose slots are moving, until the moves are done (and 50 rounds at least).
    import os, time
    rounds = 0
    deadline = time.time() + 120
    # An increment whose outcome the cluster cannot know (its leader changed while it waited)
    # is answered -UNCERTAIN, which redis-py does not retry on its own: it counts as maybe.
    uncertain = [0] * 10
    while rounds < 50 or not os.path.exists(done_flag):
        assert time.time() < deadline, "the moves finish"
        for i in range(10):
            try:
                rc.incr(f"m{i}")
            except ResponseError as e:
                assert str(e).startswith("UNCERTAIN"), repr(e)
                uncertain[i] += 1
        rounds += 1
    for i in range(10):
        got = int(rc.get(f"m{i}"))
        # Every acknowledged increment is there once; an uncertain one at most once.
        assert rounds - uncertain[i] <= got <= rounds, (i, got, rounds, uncertain[i])
    print("churned", rounds, "rounds while slots moved,", sum(uncertain), "uncertain")
else:
    for i in range(300):
        assert rc.get(f"k{i}") == str(i), i
    keys = set(rc.scan_iter(count=50))
    expected = {f"k{i}" for i in range(300)} | {"{user}name", "{user}lang"} | {f"counter{i}" for i in range(7)} | {f"m{i}" for i in range(10)} | {"a", "b"}
    assert keys == expected, sorted(keys ^ expected)[:10]
    # redis-py sends DBSIZE to one node unless told to ask every master (and add up).
    total = rc.dbsize(target_nodes=RedisCluster.PRIMARIES)
    assert total == len(expected), total
    rc.set("after", "yes")
    print("read", len(keys))
"#;

fn python_with_redis() -> bool {
    Command::new("python3")
        .args(["-c", "import redis.cluster"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn run(phase: &str, done_flag: &std::path::Path, ports: &[u16]) {
    let out = Command::new("python3")
        .args(["-c", SCRIPT, phase])
        .arg(done_flag)
        .args(ports.iter().map(u16::to_string))
        .output()
        .expect("python3 runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "redis-py {phase} phase failed:\n{text}"
    );
    print!("{text}");
}

/// The node index leading shard `group`, as node `port` sees it.
fn leader_of(port: u16, group: u64) -> Option<usize> {
    let l: usize = group_field(port, group, "leader")?.parse().ok()?;
    (l > 0).then(|| l - 1)
}

#[test]
fn redis_py_cluster_client_works_across_shards_and_a_leader_change() {
    if !python_with_redis() {
        println!("SKIPPED redis_py_cluster: python3 with the redis package is not installed (pip install redis)");
        return;
    }
    let cluster = Cluster::new(&["--cluster-redirects", "yes"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(1..=3).all(|g| ports.iter().all(|&p| leader_of(p, g).is_some())) {
        assert!(Instant::now() < deadline, "every shard has a leader");
        std::thread::sleep(Duration::from_millis(50));
    }
    let flag_dir = tempfile::tempdir().unwrap();
    let done_flag = flag_dir.path().join("moves-done");
    run("write", &done_flag, &ports);
    // The slots of m0..m9 move to the next shard while redis-py increments them.
    let mover = {
        let (port, flag) = (ports[1], done_flag.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(port).unwrap();
            std::thread::sleep(Duration::from_millis(500));
            // Each slot to the next shard and back, then to the next again.
            for (pass, i) in (0..3).flat_map(|p| (0..10).map(move |i| (p, i))) {
                let slot = cairn_store::slot::key_slot(format!("m{i}").as_bytes());
                // Shards 1-3 serve 0-5460, 5461-10922, 10923-16383; each slot goes to the next.
                let home = match slot {
                    0..=5460 => 1,
                    5461..=10922 => 2,
                    _ => 3,
                };
                let there = home % 3 + 1;
                let to = if pass == 1 { home } else { there };
                let (slot, to) = (slot.to_string(), to.to_string());
                let args: [&[u8]; 5] = [
                    b"CAIRN.RESHARD",
                    b"MOVE",
                    slot.as_bytes(),
                    slot.as_bytes(),
                    to.as_bytes(),
                ];
                let reply = conn.call(&args);
                assert!(
                    matches!(reply, Some(Answer::Int(1))),
                    "moving slot {slot} to shard {to}: {reply:?}"
                );
            }
            std::fs::write(flag, b"done").unwrap();
        })
    };
    run("churn", &done_flag, &ports);
    mover.join().unwrap();
    // Shard 2's leader hands over; the client follows the -MOVED it then gets.
    let old = leader_of(ports[0], 2).unwrap();
    let reply = Conn::open(ports[old]).unwrap().call(&[
        b"CAIRN.MEMBER",
        b"TRANSFER-LEADER",
        b"SHARD",
        b"2",
    ]);
    assert!(matches!(reply, Some(Answer::Ok)), "{reply:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_of(ports[old], 2) == Some(old) {
        assert!(Instant::now() < deadline, "leadership of shard 2 moved");
        std::thread::sleep(Duration::from_millis(20));
    }
    // That leaves one node leading two shards and another none: balancing hands one back
    // within seconds. Wait for it, so that leadership holds still while the client scans (a
    // Redis Cluster SCAN across a failover can miss keys too).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut leaders: Vec<Option<usize>> = (1..=3).map(|g| leader_of(ports[0], g)).collect();
        leaders.sort();
        if leaders == [Some(0), Some(1), Some(2)] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leadership spread again: {leaders:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    run("read", &done_flag, &ports);
    drop(cluster);
}

/// redis-py against five nodes holding three replicas of each of five shards: it finds every
/// shard's leader through nodes that hold no replica of it, follows redirects, and keeps
/// working while replicas move between nodes under its increments (leaderships with them).
#[test]
fn redis_py_cluster_client_works_while_replicas_move_between_five_nodes() {
    if !python_with_redis() {
        println!("SKIPPED redis_py_cluster: python3 with the redis package is not installed (pip install redis)");
        return;
    }
    let cluster = Cluster::sized(
        5,
        &[
            "--cluster-redirects",
            "yes",
            "--shards",
            "3",
            "--replicas",
            "3",
        ],
        "warn",
    );
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    // (With redirects on, a node answers -MOVED for shards it does not lead: wait for every
    // node to know every leader instead of for a write through each.)
    for &p in &ports {
        common::wait_map(p, |m| m.len() == 3);
    }
    let map = common::wait_map(ports[0], |m| m.len() == 3);
    let flag_dir = tempfile::tempdir().unwrap();
    let done_flag = flag_dir.path().join("moves-done");
    run("write", &done_flag, &ports);
    // Every shard's replica on its leader moves to a node that does not hold the shard, and
    // back to where it was, while redis-py increments keys of every shard.
    let mover = {
        let (port, flag) = (ports[2], done_flag.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open_waiting(port, Duration::from_secs(60)).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            let mut moves = 0;
            for (shard, leader, voters, _) in &map {
                let from = leader.expect("a leader");
                let to = (1..=5u64).find(|n| !voters.contains(n)).unwrap();
                for (a, b) in [(from, to), (to, from)] {
                    let (s, a, b) = (shard.to_string(), a.to_string(), b.to_string());
                    let reply = conn.call(&[
                        b"CAIRN.PLACEMENT",
                        b"MOVE",
                        s.as_bytes(),
                        a.as_bytes(),
                        b.as_bytes(),
                    ]);
                    assert_eq!(reply, Some(Answer::Ok), "moving shard {s} from {a} to {b}");
                    moves += 1;
                }
            }
            std::fs::write(&flag, b"done").unwrap();
            moves
        })
    };
    run("churn", &done_flag, &ports);
    assert_eq!(mover.join().unwrap(), 6);
    run("read", &done_flag, &ports);
    drop(cluster);
}
