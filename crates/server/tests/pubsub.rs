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
