//! Pub/Sub across nodes: a message published on any node of a cluster reaches the subscribers
//! of every node, channel, pattern and shard-channel subscribers alike; and a subscriber that
//! stops reading is disconnected at its output limit instead of growing the server's memory.

mod common;

use common::{start_cluster, Cairn, Raw};
use std::time::{Duration, Instant};

#[test]
fn a_message_published_on_any_node_reaches_subscribers_on_every_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(3, &dirs);
    common::wait_writable(&nodes);
    let mut subscribers: Vec<Raw> = nodes.iter().map(|n| n.as_ref().unwrap().raw()).collect();
    for s in subscribers.iter_mut() {
        s.send_line("SUBSCRIBE news");
        assert_eq!(
            s.reply_text(),
            "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
        );
        s.send_line("PSUBSCRIBE n*");
        assert_eq!(
            s.reply_text(),
            "*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
        );
        s.send_line("SSUBSCRIBE {s}1");
        assert_eq!(
            s.reply_text(),
            "*3\r\n$10\r\nssubscribe\r\n$4\r\n{s}1\r\n:1\r\n"
        );
    }
    for (i, node) in nodes.iter().enumerate() {
        let mut publisher = node.as_ref().unwrap().raw();
        let body = format!("from{i}");
        // The count is this node's receivers (as in Redis Cluster): one subscriber, twice.
        assert_eq!(
            publisher.cmd_str(&format!("PUBLISH news {body}")),
            b":2\r\n",
            "local receivers of node {i}"
        );
        assert_eq!(
            publisher.cmd_str(&format!("SPUBLISH {{s}}1 {body}")),
            b":1\r\n"
        );
        for (j, s) in subscribers.iter_mut().enumerate() {
            let message = format!("*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\n{body}\r\n");
            let pmessage =
                format!("*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\n{body}\r\n");
            let smessage = format!("*3\r\n$8\r\nsmessage\r\n$4\r\n{{s}}1\r\n$5\r\n{body}\r\n");
            let got = [s.reply_text(), s.reply_text(), s.reply_text()];
            assert_eq!(got, [message, pmessage, smessage], "subscriber on node {j}");
        }
    }
    // Unsubscribed, a connection gets nothing more; NUMSUB counts this node's subscribers.
    let mut s0 = subscribers.remove(0);
    s0.send_line("UNSUBSCRIBE news");
    assert_eq!(
        s0.reply_text(),
        "*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    let mut c = nodes[0].as_ref().unwrap().raw();
    assert_eq!(
        c.cmd_str("PUBSUB NUMSUB news"),
        b"*2\r\n$4\r\nnews\r\n:0\r\n"
    );
}

#[test]
fn a_subscriber_that_stops_reading_is_disconnected_at_its_output_limit() {
    let cairn = Cairn::start();
    let mut slow = cairn.raw();
    slow.send_line("SUBSCRIBE firehose");
    assert!(slow.reply_text().contains("subscribe"));
    let mut publisher = cairn.raw();
    let big = "x".repeat(1024 * 1024);
    // 64 MB for a reader that reads nothing: past the 32 MB limit (and the socket buffers).
    for _ in 0..64 {
        let reply = publisher.cmd(&[b"PUBLISH", b"firehose", big.as_bytes()]);
        assert!(reply.starts_with(b":"), "{reply:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = String::from_utf8_lossy(&publisher.cmd_str("CLIENT LIST")).into_owned();
        if list.lines().filter(|l| l.contains("id=")).count() == 1 {
            break; // only the publisher is left
        }
        assert!(
            Instant::now() < deadline,
            "the slow subscriber is still connected:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Later messages find no subscriber.
    assert_eq!(
        publisher.cmd(&[b"PUBLISH", b"firehose", b"x"]),
        b":0\r\n".to_vec()
    );
}

/// `client-output-buffer-limit pubsub`: with no hard limit, a subscriber past the soft limit
/// for its seconds is disconnected, counted in INFO; CONFIG GET spells the setting as Redis.
#[test]
fn the_pubsub_soft_output_limit_disconnects_after_its_seconds() {
    let cairn = Cairn::start();
    let mut publisher = cairn.raw();
    let set = |c: &mut Raw, v: &str| {
        c.cmd(&[
            b"CONFIG",
            b"SET",
            b"client-output-buffer-limit",
            v.as_bytes(),
        ])
    };
    assert_eq!(set(&mut publisher, "pubsub 0 1mb 1"), b"+OK\r\n");
    let got = publisher.cmd_str("CONFIG GET client-output-buffer-limit");
    assert!(
        String::from_utf8_lossy(&got)
            .contains("normal 0 0 0 slave 268435456 67108864 60 pubsub 0 1048576 1"),
        "{got:?}"
    );
    assert!(set(&mut publisher, "pubsub 1 2").starts_with(b"-ERR CONFIG SET failed"));
    let mut slow = cairn.raw();
    slow.send_line("SUBSCRIBE trickle");
    assert!(slow.reply_text().contains("subscribe"));
    let info = |c: &mut Raw| {
        let text = String::from_utf8_lossy(&c.cmd_str("INFO stats")).into_owned();
        text.lines()
            .find_map(|l| l.strip_prefix("client_output_buffer_limit_disconnections:"))
            .unwrap()
            .trim()
            .parse::<u64>()
            .unwrap()
    };
    let before = info(&mut publisher);
    // 16 MB (more than the socket buffers hold, so over 1 MB stays queued), then one more
    // message after the soft limit's second.
    let msg = "y".repeat(64 * 1024);
    for _ in 0..256 {
        publisher.cmd(&[b"PUBLISH", b"trickle", msg.as_bytes()]);
    }
    std::thread::sleep(Duration::from_millis(1300));
    publisher.cmd(&[b"PUBLISH", b"trickle", msg.as_bytes()]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while publisher.cmd_str("PUBSUB NUMSUB trickle") != b"*2\r\n$7\r\ntrickle\r\n:0\r\n" {
        assert!(Instant::now() < deadline, "the subscriber is still there");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(info(&mut publisher) > before);
    // Back to Redis's default for the other tests in this process.
    assert_eq!(set(&mut publisher, "pubsub 32mb 8mb 60"), b"+OK\r\n");
}

/// INFO's count of messages other nodes forwarded to this one.
fn forwarded_in(c: &mut Raw) -> u64 {
    let info = String::from_utf8_lossy(&c.cmd_str("INFO stats")).into_owned();
    info.lines()
        .find_map(|l| l.strip_prefix("pubsub_forwarded_in:"))
        .unwrap_or_else(|| panic!("no pubsub_forwarded_in in {info}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_message_is_forwarded_only_to_nodes_with_a_matching_subscriber() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(3, &dirs);
    common::wait_writable(&nodes);
    let node = |i: usize| nodes[i].as_ref().unwrap();
    // Node 1 wants "only1" and "p1.*"; node 2 wants something nobody publishes. A SUBSCRIBE is
    // answered once every other node knows of it, so from here on the interest is known.
    let mut on1 = node(1).raw();
    on1.send_line("SUBSCRIBE only1");
    assert!(on1.reply_text().contains("only1"));
    on1.send_line("PSUBSCRIBE p1.*");
    assert!(on1.reply_text().contains("p1.*"));
    let mut on2 = node(2).raw();
    on2.send_line("SUBSCRIBE unrelated");
    assert!(on2.reply_text().contains("unrelated"));
    let mut stats1 = node(1).raw();
    let mut stats2 = node(2).raw();
    let (before1, before2) = (forwarded_in(&mut stats1), forwarded_in(&mut stats2));
    let mut publisher = node(0).raw();
    for i in 0..10 {
        for channel in ["only1", "p1.x", "nobody"] {
            assert_eq!(
                publisher.cmd_str(&format!("PUBLISH {channel} m{i}")),
                b":0\r\n"
            );
        }
    }
    // Node 1 gets its 20 (channel and pattern), in order.
    for i in 0..10 {
        assert_eq!(
            on1.reply_text(),
            format!("*3\r\n$7\r\nmessage\r\n$5\r\nonly1\r\n$2\r\nm{i}\r\n")
        );
        assert_eq!(
            on1.reply_text(),
            format!("*4\r\n$8\r\npmessage\r\n$4\r\np1.*\r\n$4\r\np1.x\r\n$2\r\nm{i}\r\n")
        );
    }
    assert_eq!(forwarded_in(&mut stats1) - before1, 20);
    // A marker published last reaches node 2 only once everything before it would have.
    on2.send_line("SUBSCRIBE marker");
    assert!(on2.reply_text().contains("marker"));
    assert_eq!(publisher.cmd_str("PUBLISH marker end"), b":0\r\n");
    assert_eq!(
        on2.reply_text(),
        "*3\r\n$7\r\nmessage\r\n$6\r\nmarker\r\n$3\r\nend\r\n"
    );
    assert_eq!(
        forwarded_in(&mut stats2) - before2,
        1,
        "node 2 has no subscriber for the 30 messages before the marker"
    );
    // Once node 1's subscriber leaves, node 0 stops sending it "only1".
    on1.send_line("UNSUBSCRIBE only1");
    assert!(on1.reply_text().contains("unsubscribe"));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = forwarded_in(&mut stats1);
        assert_eq!(publisher.cmd_str("PUBLISH only1 late"), b":0\r\n");
        // Its marker: a pattern message node 1 still wants, sent after "late".
        assert_eq!(publisher.cmd_str("PUBLISH p1.y mark"), b":0\r\n");
        assert!(on1.reply_text().contains("mark"));
        if forwarded_in(&mut stats1) - before == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 0 still forwards an unsubscribed channel"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Reads keyevent messages (`pmessage`, pattern, channel, key) until `until` says stop.
fn keyevents(
    s: &mut Raw,
    mut until: impl FnMut(&[(String, String)]) -> bool,
) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while !until(&got) {
        let text = s.reply_text();
        let parts: Vec<&str> = text.split("\r\n").collect();
        // *4, $8, pmessage, $n, pattern, $n, channel, $n, key
        assert_eq!(parts.get(2), Some(&"pmessage"), "{text:?}");
        let event = parts[6].trim_start_matches("__keyevent@0__:").to_string();
        got.push((event, parts[8].to_string()));
    }
    got
}

#[test]
fn keyspace_notifications_come_once_from_each_shard_to_subscribers_on_every_node() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = common::start_cluster_with(3, &dirs, 3);
    common::wait_writable(&nodes);
    let node = |i: usize| nodes[i].as_ref().unwrap();
    let mut subscribers: Vec<Raw> = (0..3).map(|i| node(i).raw()).collect();
    for s in subscribers.iter_mut() {
        s.send_line("PSUBSCRIBE __keyevent@0__:*");
        assert!(s.reply_text().contains("psubscribe"));
    }
    // Set on one node, in force on all: string, generic and expired events, keyevent form.
    let mut admin = node(2).raw();
    assert_eq!(
        admin.cmd_str("CONFIG SET notify-keyspace-events E$gx"),
        b"+OK\r\n"
    );
    for i in 0..3 {
        assert_eq!(
            node(i).raw().cmd_str("CONFIG GET notify-keyspace-events"),
            b"*2\r\n$22\r\nnotify-keyspace-events\r\n$4\r\ng$xE\r\n",
            "node {i}"
        );
    }
    // Thirty keys over the three shards, written through node 0; half of them expire.
    let mut writer = node(0).raw();
    for i in 0..30 {
        assert_eq!(writer.cmd_str(&format!("SET k{i} v")), b"+OK\r\n");
    }
    for i in (0..30).step_by(2) {
        assert_eq!(writer.cmd_str(&format!("PEXPIRE k{i} 20")), b":1\r\n");
    }
    for (n, s) in subscribers.iter_mut().enumerate() {
        let got = keyevents(s, |g| {
            g.iter().filter(|(e, _)| e == "expired").count() == 15
        });
        for i in 0..30 {
            let key = format!("k{i}");
            let of = |event: &str| got.iter().filter(|(e, k)| e == event && *k == key).count();
            assert_eq!(of("set"), 1, "set {key} on node {n}: {got:?}");
            let expiring = usize::from(i % 2 == 0);
            assert_eq!(of("expire"), expiring, "expire {key} on node {n}");
            assert_eq!(of("expired"), expiring, "expired {key} on node {n}");
        }
        assert_eq!(got.len(), 60, "nothing else, nothing twice (node {n})");
    }
    // Markers through every shard: a duplicate sent by any leader would arrive before them.
    for i in 0..30 {
        writer.cmd_str(&format!("SET m{i} v"));
    }
    for (n, s) in subscribers.iter_mut().enumerate() {
        let got = keyevents(s, |g| {
            g.iter().filter(|(_, k)| k.starts_with('m')).count() == 30
        });
        assert!(
            got.iter().all(|(e, k)| e == "set" && k.starts_with('m')),
            "node {n} got more for the k keys: {got:?}"
        );
    }
    // Commands over several shards (cross-shard transactions) report their events once, in
    // the commands' order, as Redis does for them on one server.
    assert_eq!(writer.cmd_str("MSET {a}x 1 {b}y 2 {c}z 3"), b"+OK\r\n");
    assert_eq!(writer.cmd_str("RENAME {a}x {b}w"), b"+OK\r\n");
    let expected: Vec<(String, String)> = [
        ("set", "{a}x"),
        ("set", "{b}y"),
        ("set", "{c}z"),
        ("rename_from", "{a}x"),
        ("rename_to", "{b}w"),
    ]
    .iter()
    .map(|(e, k)| (e.to_string(), k.to_string()))
    .collect();
    for (n, s) in subscribers.iter_mut().enumerate() {
        let got = keyevents(s, |g| g.len() >= expected.len());
        assert_eq!(got, expected, "cross-shard events on node {n}");
    }
    // Turned off, from another node: nothing more.
    assert_eq!(
        node(1)
            .raw()
            .cmd(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]),
        b"+OK\r\n"
    );
    for i in 0..30 {
        writer.cmd_str(&format!("SET k{i} again"));
    }
    std::thread::sleep(Duration::from_millis(300));
    writer.cmd_str("PUBLISH __keyevent@0__:marker end");
    for (n, s) in subscribers.iter_mut().enumerate() {
        let got = keyevents(s, |g| !g.is_empty());
        assert_eq!(got, [("marker".to_string(), "end".to_string())], "node {n}");
    }
}

/// PUBLISH inside MULTI on a cluster: queued like any command, sent when the transaction has
/// run, and not at all when it aborts; EXEC's reply has its count in its place.
#[test]
fn publish_in_a_transaction_goes_out_only_if_the_transaction_runs() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(3, &dirs);
    common::wait_writable(&nodes);
    let node = |i: usize| nodes[i].as_ref().unwrap();
    let (mut near, mut far) = (node(0).raw(), node(2).raw());
    for s in [&mut near, &mut far] {
        s.send_line("SUBSCRIBE tx");
        assert!(s.reply_text().contains("subscribe"));
    }
    let mut c = node(0).raw();
    assert_eq!(c.cmd_str("MULTI"), b"+OK\r\n");
    for line in ["SET a 1", "PUBLISH tx hello", "INCR a", "SPUBLISH {a}x m"] {
        assert_eq!(c.cmd_str(line), b"+QUEUED\r\n", "{line}");
    }
    // One receiver on this node for "tx", none for the shard channel.
    assert_eq!(
        c.cmd_str("EXEC"),
        b"*4\r\n+OK\r\n:1\r\n:2\r\n:0\r\n".to_vec()
    );
    let hello = "*3\r\n$7\r\nmessage\r\n$2\r\ntx\r\n$5\r\nhello\r\n";
    assert_eq!(near.reply_text(), hello);
    assert_eq!(far.reply_text(), hello);
    // Only PUBLISH in the block.
    assert_eq!(c.cmd_str("MULTI"), b"+OK\r\n");
    assert_eq!(c.cmd_str("PUBLISH tx second"), b"+QUEUED\r\n");
    assert_eq!(c.cmd_str("EXEC"), b"*1\r\n:1\r\n".to_vec());
    let second = "*3\r\n$7\r\nmessage\r\n$2\r\ntx\r\n$6\r\nsecond\r\n";
    assert_eq!(near.reply_text(), second);
    assert_eq!(far.reply_text(), second);
    // A watched key changed: the transaction aborts and its message is not sent.
    assert_eq!(c.cmd_str("WATCH a"), b"+OK\r\n");
    assert_eq!(node(1).raw().cmd_str("SET a 5"), b"+OK\r\n");
    assert_eq!(c.cmd_str("MULTI"), b"+OK\r\n");
    assert_eq!(c.cmd_str("PUBLISH tx aborted"), b"+QUEUED\r\n");
    assert_eq!(c.cmd_str("INCR a"), b"+QUEUED\r\n");
    assert_eq!(c.cmd_str("EXEC"), b"*-1\r\n".to_vec());
    assert_eq!(c.cmd_str("PUBLISH tx after"), b":1\r\n");
    let after = "*3\r\n$7\r\nmessage\r\n$2\r\ntx\r\n$5\r\nafter\r\n";
    assert_eq!(near.reply_text(), after, "the aborted message went out");
    assert_eq!(far.reply_text(), after, "the aborted message went out");
    assert_eq!(c.cmd_str("GET a"), b"$1\r\n5\r\n");
}
