//! `cairn cluster status` against a live three-process cluster: every node and its role, the
//! leader agreed on, and a killed node reported as down.

mod common;

use common::{raft_field, wait_serving, Cluster};
use std::process::Command;
use std::time::Duration;

/// One cluster at a time: each test picks free ports and binds them later, so two tests
/// running at once could pick the same ones.
static ONE_CLUSTER: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn status(port: u16) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cluster", "status", "--port", &port.to_string()])
        .output()
        .expect("run cairn cluster status");
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The whitespace-separated cells of the row for `node` in group 1 (or its one row when down).
fn row(table: &str, node: usize) -> Vec<String> {
    table
        .lines()
        .map(|l| l.split_whitespace().map(String::from).collect::<Vec<_>>())
        .find(|cells| {
            cells.first().map(String::as_str) == Some(&node.to_string())
                && matches!(cells.get(3).map(String::as_str), Some("1" | "-"))
        })
        .unwrap_or_else(|| panic!("no row for node {node}:\n{table}"))
}

#[test]
fn status_shows_every_node_and_the_leader_and_marks_a_dead_node_down() {
    // One shard: the test follows one group's leader through a transfer, which balancing
    // (with several shards) could move again meanwhile.
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let mut cluster = Cluster::new(&["--shards", "1"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let leader = (0..3)
        .find(|&i| raft_field(ports[i], "role").as_deref() == Some("leader"))
        .expect("a leader")
        + 1;
    let follower = if leader == 3 { 1 } else { 3 };

    let table = status(ports[follower - 1]);
    println!("{table}");
    for node in 1..=3 {
        let cells = row(&table, node);
        assert_eq!(cells[1], format!("127.0.0.1:{}", ports[node - 1]));
        assert_eq!(cells[2], "up");
        let role = if node == leader { "leader" } else { "follower" };
        assert_eq!(cells[4], role, "{table}");
        assert_eq!(
            cells[5],
            leader.to_string(),
            "every node follows the leader"
        );
    }
    assert!(
        table.contains(&format!(
            "group 1 (slots 0-16383): leader node {leader}, 3/3 nodes answering"
        )),
        "{table}"
    );

    // Leadership moves on request, to the node asked for.
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args([
            "cluster",
            "transfer-leader",
            "--port",
            &ports[0].to_string(),
        ])
        .args(["--id", &follower.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while raft_field(ports[follower - 1], "role").as_deref() != Some("leader") {
        assert!(
            std::time::Instant::now() < deadline,
            "node {follower} leads"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let table = status(ports[leader - 1]);
    assert_eq!(row(&table, follower)[4], "leader", "{table}");
    let (leader, follower) = (follower, leader);

    let other = 6 - leader - follower;
    cluster.kill9(other - 1);
    let table = status(ports[follower - 1]);
    println!("{table}");
    assert_eq!(row(&table, other)[2], "down", "{table}");
    assert!(table.contains("2/3 nodes answering"), "{table}");
}

/// With three shards, the status names each shard's slots and its leader, and every node shows
/// a row per shard.
#[test]
fn status_shows_each_shard_with_its_slots_and_leader() {
    let _one = ONE_CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    let cluster = Cluster::new(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let table = loop {
        let table = status(ports[0]);
        // Three shards and the meta group.
        if table.matches(": leader node ").count() == 4 {
            break table;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "every shard has a leader:\n{table}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("{table}");
    for (g, slots) in [(1, "0-5460"), (2, "5461-10922"), (3, "10923-16383")] {
        assert!(
            table.contains(&format!("group {g} (slots {slots}): leader node ")),
            "{table}"
        );
    }
    for node in 1..=3 {
        let rows = table
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(&node.to_string()))
            .count();
        assert_eq!(
            rows, 4,
            "node {node} has a row per shard and one for the meta group:\n{table}"
        );
    }
    // Slots move from the CLI; the status then shows the new split.
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args(["cluster"])
            .args(args)
            .args(["--port", &ports[1].to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(
        cli(&["move-slots", "0", "9", "--to", "2"]),
        "moved 10 slots to shard 2\n"
    );
    // `moves` shows what the node's replicas have applied: the last steps may take a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while cli(&["moves"]) != "no slot moves in progress\n" {
        assert!(std::time::Instant::now() < deadline, "moves left over");
        std::thread::sleep(Duration::from_millis(50));
    }
    let table = status(ports[0]);
    assert!(
        table.contains("group 1 (slots 10-5460): leader node "),
        "{table}"
    );
    assert!(
        table.contains("group 2 (slots 0-9,5461-10922): leader node "),
        "{table}"
    );
    drop(cluster);
}
