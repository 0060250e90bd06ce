//! The Redis Cluster protocol over real processes, with three shards on three nodes:
//! discovery (CLUSTER SLOTS, SHARDS, NODES, MYID, KEYSLOT, INFO) names each shard's leader as
//! the master of its slots; with `--cluster-redirects yes` a node answers keyed commands of a
//! shard it does not lead with `-MOVED`; and the `redis` crate's cluster client reads and
//! writes through the shard leaders, also across a leadership change and while slots move
//! between shards under its writes (it follows the `-MOVED` and retries the `-TRYAGAIN` it
//! gets), and the old owner's leader then redirects to the new one.

mod common;

use common::{group_field, Answer, Cluster, Conn};
use std::time::{Duration, Instant};

fn bulk(a: &Answer) -> String {
    match a {
        Answer::Value(Some(v)) => String::from_utf8_lossy(v).into_owned(),
        other => panic!("expected a bulk string, got {other:?}"),
    }
}

/// redis-cli --cluster create's split of the slots over three masters.
const RANGES: [(i64, i64); 3] = [(0, 5460), (5461, 10922), (10923, 16383)];

/// The node index leading shard `group`, as node `port` sees it.
fn leader_of(port: u16, group: u64) -> Option<usize> {
    let l: usize = group_field(port, group, "leader")?.parse().ok()?;
    (l > 0).then(|| l - 1)
}

#[test]
fn cluster_clients_discover_the_leaders_and_follow_redirects() {
    let cluster = Cluster::new(&["--cluster-redirects", "yes"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    // Every shard has a leader that every node knows of.
    let deadline = Instant::now() + Duration::from_secs(30);
    let leaders: Vec<usize> = loop {
        let seen: Vec<Vec<Option<usize>>> = ports
            .iter()
            .map(|&p| (1..=3).map(|g| leader_of(p, g)).collect())
            .collect();
        if seen[0].iter().all(Option::is_some) && seen.iter().all(|s| *s == seen[0]) {
            break seen[0].iter().map(|l| l.unwrap()).collect();
        }
        assert!(
            Instant::now() < deadline,
            "no leaders within 30 s: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut conn = Conn::open(ports[0]).unwrap();

    // Three ranges, each served by its shard's leader.
    let Some(Answer::Array(shards)) = conn.call(&[b"CLUSTER", b"SLOTS"]) else {
        panic!("CLUSTER SLOTS is an array");
    };
    assert_eq!(shards.len(), 3);
    for (i, shard) in shards.iter().enumerate() {
        let Answer::Array(entry) = shard else {
            panic!("a slot range is an array");
        };
        assert!(
            matches!((&entry[0], &entry[1]), (Answer::Int(a), Answer::Int(b)) if (*a, *b) == RANGES[i]),
            "range {i}: {entry:?}"
        );
        assert_eq!(
            entry.len(),
            3,
            "range, then the master (replicas are left out)"
        );
        let Answer::Array(master) = &entry[2] else {
            panic!("a node is an array")
        };
        assert_eq!(bulk(&master[0]), "127.0.0.1");
        assert!(matches!(master[1], Answer::Int(p) if p == i64::from(ports[leaders[i]])));
        assert_eq!(bulk(&master[2]), format!("{:040x}", leaders[i] + 1));
    }

    assert_eq!(
        bulk(&conn.call(&[b"CLUSTER", b"MYID"]).unwrap()),
        format!("{:040x}", 1)
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
    // Every node once; the masters' slots together are all of them.
    let nodes = bulk(&conn.call(&[b"CLUSTER", b"NODES"]).unwrap());
    assert_eq!(nodes.lines().count(), 3, "{nodes}");
    let mut covered = 0;
    for line in nodes.lines().filter(|l| l.contains("master")) {
        for range in line.split(' ').skip(8) {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            covered += b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1;
        }
    }
    assert_eq!(covered, 16384, "{nodes}");
    let info = bulk(&conn.call(&[b"CLUSTER", b"INFO"]).unwrap());
    assert!(
        info.contains("cluster_state:ok") && info.contains("cluster_size:3"),
        "{info}"
    );

    // A keyed command on a node that does not lead its shard is redirected, not relayed.
    let foo = leaders[2];
    let other = (foo + 1) % 3;
    match Conn::open(ports[other])
        .unwrap()
        .call(&[b"SET", b"foo", b"bar"])
    {
        Some(Answer::Error(e)) => {
            assert_eq!(e, format!("MOVED 12182 127.0.0.1:{}", ports[foo]))
        }
        other => panic!("expected -MOVED, got {other:?}"),
    }
    // Keys of different shards in one command: where Redis Cluster says -CROSSSLOT, cairn
    // runs it as a cross-shard transaction, on whichever node got it ("a" is in slot 15495,
    // the third shard's; "b" in slot 3300, the first's).
    match conn.call(&[b"MSET", b"a", b"1", b"b", b"2"]) {
        Some(Answer::Ok) => {}
        other => panic!("expected +OK, got {other:?}"),
    }
    match conn.call(&[b"MGET", b"a", b"b"]) {
        Some(Answer::Array(items)) => assert_eq!(
            items,
            vec![
                Answer::Value(Some(b"1".to_vec())),
                Answer::Value(Some(b"2".to_vec()))
            ]
        ),
        other => panic!("expected both values, got {other:?}"),
    }

    // A cluster client, started from every node, writes and reads through the leaders.
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
    // A shard's leadership moves (the old leader stays up, now a follower): it redirects the
    // client, which refreshes its slot map and goes on. (A master that dies outright is
    // another story: this client version then retries the dead address until its retries run
    // out, with real Redis Cluster as here.)
    let Some(Answer::Ok) = Conn::open(ports[foo]).unwrap().call(&[
        b"CAIRN.MEMBER",
        b"TRANSFER-LEADER",
        b"SHARD",
        b"3",
    ]) else {
        panic!("the transfer completes");
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_of(ports[foo], 3) == Some(foo) {
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
    let _: () = redis::cmd("SET").arg("foo").arg(1).query(&mut c).unwrap();
    // With redirects on, a node's DBSIZE covers the shards it leads, as a Redis Cluster
    // master's covers its slots: added up over the nodes, every key counts once.
    let total: i64 = ports
        .iter()
        .map(|&p| match Conn::open(p).unwrap().call(&[b"DBSIZE"]) {
            Some(Answer::Int(n)) => n,
            other => panic!("DBSIZE: {other:?}"),
        })
        .sum();
    assert_eq!(
        total, 203,
        "k0..k199, foo, and the cross-shard MSET's a and b"
    );

    // Slots move between shards while the client keeps incrementing keys in them.
    let keys: Vec<String> = (0..10).map(|i| format!("m{i}")).collect();
    let moves: Vec<(u16, u64)> = keys
        .iter()
        .map(|k| {
            let slot = cairn_store::slot::key_slot(k.as_bytes());
            let owner = RANGES
                .iter()
                .position(|&(a, b)| (a..=b).contains(&(slot as i64)));
            (slot as u16, (owner.unwrap() as u64 + 1) % 3 + 1)
        })
        .collect();
    let mover = {
        let (port, moves) = (ports[1], moves.clone());
        std::thread::spawn(move || {
            let mut conn = Conn::open(port).unwrap();
            // To the next shard, back, and to the next again.
            let there_and_back = moves
                .iter()
                .map(|&(slot, to)| (slot, to))
                .chain(moves.iter().map(|&(slot, to)| (slot, (to + 1) % 3 + 1)))
                .chain(moves.iter().copied());
            for (slot, to) in there_and_back {
                let slot = slot.to_string();
                let to = to.to_string();
                let args: [&[u8]; 5] = [
                    b"CAIRN.RESHARD",
                    b"MOVE",
                    slot.as_bytes(),
                    slot.as_bytes(),
                    to.as_bytes(),
                ];
                match conn.call(&args) {
                    Some(Answer::Int(1)) => {}
                    other => panic!("moving slot {slot} to shard {to}: {other:?}"),
                }
            }
        })
    };
    let (mut rounds, mut during) = (0, 0);
    while !mover.is_finished() || rounds < 20 {
        if !mover.is_finished() {
            during += 1;
        }
        for k in &keys {
            let _: i64 = redis::cmd("INCR").arg(k).query(&mut c).unwrap();
        }
        rounds += 1;
        assert!(rounds < 100_000, "the moves finish");
    }
    mover.join().unwrap();
    println!("{rounds} rounds of INCR, {during} of them while slots moved 30 times");
    assert!(during > 0, "the moves went on under the client's writes");
    for k in &keys {
        let n: i64 = redis::cmd("GET").arg(k).query(&mut c).unwrap();
        assert_eq!(n, rounds, "{k}: every acknowledged increment is there once");
    }
    // The map changed: each moved slot is served by its new shard, and a node that leads the
    // old shard only redirects to the new shard's leader.
    for (k, (slot, to)) in keys.iter().zip(&moves) {
        let new = leader_of(ports[0], *to).unwrap();
        let old = leader_of(ports[0], (*to + 1) % 3 + 1).unwrap();
        if old == new {
            continue;
        }
        match Conn::open(ports[old])
            .unwrap()
            .call(&[b"GET", k.as_bytes()])
        {
            Some(Answer::Error(e)) => {
                assert_eq!(e, format!("MOVED {slot} 127.0.0.1:{}", ports[new]))
            }
            other => panic!("expected -MOVED for {k}, got {other:?}"),
        }
    }
    drop(cluster);
}
