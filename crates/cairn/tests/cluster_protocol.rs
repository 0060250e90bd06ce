//! The Redis Cluster protocol over real processes: discovery (CLUSTER SLOTS, SHARDS, NODES,
//! MYID, KEYSLOT, INFO) names the leader as the master of the one shard that owns every slot;
//! with `--cluster-redirects yes` a follower answers keyed commands with `-MOVED`; and the
//! `redis` crate's cluster client reads and writes through it, also across a leadership change.

mod common;

use common::{raft_field, wait_serving, Answer, Cluster, Conn};
use std::time::{Duration, Instant};

fn bulk(a: &Answer) -> String {
    match a {
        Answer::Value(Some(v)) => String::from_utf8_lossy(v).into_owned(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

#[test]
fn cluster_clients_discover_the_leader_and_follow_redirects() {
    let cluster = Cluster::new(&["--cluster-redirects", "yes"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    // Followers redirect instead of relaying, so wait for the leader itself to take a write.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leader = loop {
        let found = (0..3).find(|&i| raft_field(ports[i], "role").as_deref() == Some("leader"));
        if let Some(l) = found {
            wait_serving(&ports[l..=l], Duration::from_secs(10));
            break l;
        }
        assert!(Instant::now() < deadline, "no leader within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let follower = (leader + 1) % 3;
    let mut conn = Conn::open(ports[follower]).unwrap();

    // One shard owning every slot; its master is the leader.
    let Some(Answer::Array(shards)) = conn.call(&[b"CLUSTER", b"SLOTS"]) else {
        panic!("CLUSTER SLOTS is an array");
    };
    assert_eq!(shards.len(), 1);
    let Answer::Array(entry) = &shards[0] else {
        panic!("a slot range is an array");
    };
    assert!(matches!(entry[0], Answer::Int(0)) && matches!(entry[1], Answer::Int(16383)));
    assert_eq!(entry.len(), 5, "range, then the master and two replicas");
    let Answer::Array(master) = &entry[2] else {
        panic!("a node is an array")
    };
    assert_eq!(bulk(&master[0]), "127.0.0.1");
    assert!(matches!(master[1], Answer::Int(p) if p == i64::from(ports[leader])));
    assert_eq!(bulk(&master[2]), format!("{:040x}", leader + 1));

    assert_eq!(
        bulk(&conn.call(&[b"CLUSTER", b"MYID"]).unwrap()),
        format!("{:040x}", follower + 1)
    );
    // Redis's own values: KEYSLOT hashes with CRC16 and honours hash tags.
    assert!(matches!(
        conn.call(&[b"CLUSTER", b"KEYSLOT", b"foo"]),
        Some(Answer::Int(12182))
    ));
    assert!(matches!(
        conn.call(&[b"CLUSTER", b"KEYSLOT", b"{user1}.following"]),
        Some(Answer::Int(8106))
    ));
    let nodes = bulk(&conn.call(&[b"CLUSTER", b"NODES"]).unwrap());
    let master_line = nodes
        .lines()
        .find(|l| l.contains("master"))
        .expect("a master line");
    assert!(
        master_line.contains(&format!(
            "127.0.0.1:{}@{}",
            ports[leader],
            ports[leader] as u32 + 10000
        )) && master_line.ends_with("connected 0-16383"),
        "{nodes}"
    );
    assert_eq!(
        nodes.lines().filter(|l| l.contains("slave ")).count(),
        2,
        "{nodes}"
    );
    assert!(bulk(&conn.call(&[b"CLUSTER", b"INFO"]).unwrap()).contains("cluster_state:ok"));

    // A keyed command on a follower is redirected, not relayed.
    match conn.call(&[b"SET", b"foo", b"bar"]) {
        Some(Answer::Error(e)) => {
            assert_eq!(e, format!("MOVED 12182 127.0.0.1:{}", ports[leader]))
        }
        other => panic!("expected -MOVED, got {other:?}"),
    }

    // A cluster client, started from every node, writes and reads through the leader.
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    let client = redis::cluster::ClusterClient::builder(urls)
        .retries(20)
        .build()
        .unwrap();
    let mut c = client.get_connection().unwrap();
    for i in 0..200 {
        let _: () = redis::cmd("SET")
            .arg(format!("k{i}"))
            .arg(i)
            .query(&mut c)
            .unwrap();
    }
    // Leadership moves (the old leader stays up, now a follower): it redirects the client,
    // which refreshes its slot map and goes on. (A master that dies outright is another
    // story: this client version then retries the dead address until its retries run out,
    // with real Redis Cluster as here.)
    let Some(Answer::Ok) = Conn::open(ports[leader])
        .unwrap()
        .call(&[b"CAIRN.MEMBER", b"TRANSFER-LEADER"])
    else {
        panic!("the transfer completes");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while raft_field(ports[leader], "role").as_deref() == Some("leader") {
        assert!(Instant::now() < deadline, "leadership moved");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..200 {
        let got: Option<i64> = redis::cmd("GET")
            .arg(format!("k{i}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(got, Some(i), "k{i}");
    }
    let _: () = redis::cmd("SET").arg("after").arg(1).query(&mut c).unwrap();
    drop(cluster);
}
