//! `cairn server --join HOST:BUSPORT`: a fourth node started with nothing but a member's bus
//! address (and an id of its own) learns the members, is added to the meta group, catches up,
//! becomes a voter there, and is given its share of the shard replicas (each shard keeps three
//! on distinct nodes), while writes go on; it serves the data written before it came. A second
//! node that claims an id already taken is refused. `cairn cluster remove-node` moves a node's
//! replicas away before it leaves, under writes, and nothing acknowledged is lost.

mod common;

use common::{
    group_field, pick_ports, placement_map, replicas_on, wait_serving, Answer, Cluster, Conn,
};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn joiner(port: u16, id: u64, join: &str, dir: &std::path::Path) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "server",
            "--port",
            &port.to_string(),
            "--node-id",
            &id.to_string(),
        ])
        .args(["--bus-port", &(port + 10000).to_string(), "--join", join])
        .arg("--data-dir")
        .arg(dir)
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start cairn")
}

#[test]
fn a_node_started_with_join_becomes_a_member_and_gets_its_share_of_replicas() {
    let cluster = Cluster::new(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let mut c = Conn::open(ports[0]).unwrap();
    for i in 0..300 {
        let k = format!("before:{i}");
        assert!(matches!(
            c.call(&[b"SET", k.as_bytes(), b"v"]),
            Some(Answer::Ok)
        ));
    }
    // Writes go on while the node joins.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (port, stop) = (ports[1], stop.clone());
        std::thread::spawn(move || {
            let mut c = Conn::open(port).unwrap();
            let mut acked = 0;
            while !stop.load(Ordering::Relaxed) && acked < 1_000_000 {
                let k = format!("during:{acked}");
                match c.call(&[b"SET", k.as_bytes(), b"v"]) {
                    Some(Answer::Ok) => acked += 1,
                    other => panic!("a write failed while a node joined: {other:?}"),
                }
            }
            acked
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let used = ports.clone();
    let port = pick_ports(8)
        .into_iter()
        .find(|p| !used.contains(p))
        .unwrap();
    let join = format!("127.0.0.1:{}", ports[2] + 10000);
    let mut node = joiner(port, 4, &join, &dir.path().join("node4"));
    // The meta group counts it as a voter, and it holds its share of the 9 shard replicas
    // (3 shards of 3): 2, with every shard still on 3 distinct nodes.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let meta = group_field(ports[0], 0, "voters").as_deref() == Some("1;2;3;4");
        let map = placement_map(ports[0]).unwrap_or_default();
        let placed = map.len() == 3
            && replicas_on(&map, 4) == 2
            && map.iter().all(|(_, _, v, l)| v.len() == 3 && l.is_empty());
        if meta && placed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 4 did not get its share: meta voters {:?}, placement {map:?}",
            group_field(ports[0], 0, "voters"),
        );
        assert!(
            node.try_wait().unwrap().is_none(),
            "the joining node exited"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let during = writer.join().unwrap();
    // It serves what was written before it came and while it joined.
    let mut c = Conn::open(port).unwrap();
    for i in (0..300).step_by(13) {
        let k = format!("before:{i}");
        let got = c.call(&[b"GET", k.as_bytes()]);
        assert!(
            matches!(&got, Some(Answer::Value(Some(v))) if v == b"v"),
            "{k}: {got:?}"
        );
    }
    let last = format!("during:{}", during - 1);
    let got = c.call(&[b"GET", last.as_bytes()]);
    assert!(
        matches!(&got, Some(Answer::Value(Some(v))) if v == b"v"),
        "{last}: {got:?}"
    );
    println!("node 4 joined through --join while {during} writes were acknowledged");

    // An id that is taken, with no data of its own: refused at start.
    let port2 = pick_ports(8)
        .into_iter()
        .find(|p| !used.contains(p) && *p != port)
        .unwrap();
    let mut dup = joiner(port2, 2, &join, &dir.path().join("dup"));
    let status = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = dup.try_wait().unwrap() {
                break s;
            }
            assert!(
                Instant::now() < deadline,
                "a node with a taken id kept running"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut err = String::new();
    std::io::Read::read_to_string(dup.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(
        !status.success() && err.contains("already a member"),
        "{err}"
    );
    let _ = node.kill();
    let _ = node.wait();
    drop(cluster);
}

/// `cairn cluster add-node` gives a new node its share of the replicas; `remove-node` moves
/// every replica off a node before it leaves every group, while a writer goes on through
/// another node, and every acknowledged write is still there.
#[test]
fn remove_node_moves_replicas_away_first_and_loses_no_write() {
    let mut cluster = Cluster::new(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let new = cluster.add_joining_node();
    let bus = format!("127.0.0.1:{}", cluster.procs[new].port + 10000);
    let via = ports[1].to_string();
    let (ok, out) = common::cairn_cli(&[
        "cluster",
        "add-node",
        "--port",
        &via,
        "--id",
        "4",
        "--bus",
        &bus,
        "--wait-secs",
        "60",
    ]);
    assert!(ok, "{out}");
    let map = common::wait_map(ports[1], |m| replicas_on(m, 4) == 2);
    assert_eq!(replicas_on(&map, 4), 2, "{map:?}");

    let stop = Arc::new(AtomicBool::new(false));
    let writer = common::unique_writes(ports[1], stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = common::cairn_cli(&["cluster", "remove-node", "--port", &via, "--id", "1"]);
    assert!(ok, "{out}");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (acked, unknown) = writer.join().unwrap();
    let map = common::wait_map(ports[1], |m| replicas_on(m, 1) == 0);
    assert_eq!(replicas_on(&map, 1), 0, "node 1 holds no replica: {map:?}");
    assert!(map.iter().all(|(_, _, v, _)| v.len() == 3), "{map:?}");
    assert_eq!(group_field(ports[1], 0, "voters").as_deref(), Some("2;3;4"));
    // Node 1 deleted its replicas once it was removed from each group.
    let deadline = Instant::now() + Duration::from_secs(20);
    while (1..=3).any(|g| group_field(ports[0], g, "voters").is_some()) {
        assert!(Instant::now() < deadline, "node 1 still holds a shard");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut c = Conn::open(ports[2]).unwrap();
    for k in &acked {
        let got = c.call(&[b"GET", k.as_bytes()]);
        assert!(
            matches!(&got, Some(Answer::Value(Some(v))) if v == b"v"),
            "{k}: {got:?}"
        );
    }
    println!(
        "node 1 removed: {} writes acknowledged meanwhile (and {unknown} indeterminate), all there",
        acked.len()
    );
    assert!(acked.len() > 100, "writes went on: {}", acked.len());
}
