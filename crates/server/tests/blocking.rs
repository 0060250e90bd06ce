//! Blocking commands: a client blocked on an empty list, sorted set or stream is woken by
//! another client's write, in the order clients blocked, and times out with a nil array; on a
//! replicated cluster through any node.

mod common;

use common::{start_cluster, Cairn, Raw};
use std::time::{Duration, Instant};

/// Waits until `n` clients of the node `c` is connected to are blocked (`flags=b`).
fn wait_blocked(c: &mut Raw, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = c.reply_text_of("CLIENT LIST");
        if list.matches("flags=b").count() == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} clients did not block:\n{list}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_blocked_pop_is_woken_by_a_push_and_times_out_with_nil() {
    let cairn = Cairn::start();
    let mut pusher = cairn.raw();
    let mut c = cairn.raw();
    // Nothing to pop: the timeout passes, then a nil array.
    let t = Instant::now();
    assert_eq!(c.cmd_str("BLPOP q 0.2"), b"*-1\r\n");
    assert!(
        t.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t.elapsed()
    );
    // Something already there: at once.
    pusher.cmd_str("RPUSH q a");
    assert_eq!(c.cmd_str("BLPOP q 5"), b"*2\r\n$1\r\nq\r\n$1\r\na\r\n");
    // Blocked, then woken by a push from another client.
    c.send_line("BRPOP none q 0");
    wait_blocked(&mut pusher, 1);
    pusher.cmd_str("LPUSH q b");
    assert_eq!(c.reply_text(), "*2\r\n$1\r\nq\r\n$1\r\nb\r\n");
    // What a blocked client pipelined runs after its blocked command, in order.
    c.send_line("BLMOVE src dst LEFT RIGHT 0");
    c.send_line("LLEN dst");
    wait_blocked(&mut pusher, 1);
    pusher.cmd_str("RPUSH src m");
    assert_eq!(c.reply_text(), "$1\r\nm\r\n");
    assert_eq!(c.reply_text(), ":1\r\n");
    assert_eq!(c.cmd_str("BLMOVE src dst LEFT RIGHT 0.05"), b"*-1\r\n");
    // Inside MULTI nothing blocks: the "nothing" replies at once.
    assert_eq!(c.cmd_str("MULTI"), b"+OK\r\n");
    c.cmd_str("BLPOP q 0");
    c.cmd_str("BRPOPLPUSH src dst 0");
    c.cmd_str("XREAD BLOCK 0 STREAMS s $");
    assert_eq!(c.cmd_str("EXEC"), b"*3\r\n*-1\r\n$-1\r\n*-1\r\n");
    // Sorted sets and the multi-key pops.
    c.send_line("BZPOPMIN z1 z2 0");
    wait_blocked(&mut pusher, 1);
    pusher.cmd_str("ZADD z2 1.5 m");
    assert_eq!(c.reply_text(), "*3\r\n$2\r\nz2\r\n$1\r\nm\r\n$3\r\n1.5\r\n");
    c.send_line("BLMPOP 0 2 l1 l2 RIGHT COUNT 2");
    wait_blocked(&mut pusher, 1);
    pusher.cmd_str("RPUSH l2 x y z");
    assert_eq!(
        c.reply_text(),
        "*2\r\n$2\r\nl2\r\n*2\r\n$1\r\nz\r\n$1\r\ny\r\n"
    );
    // Bad arguments answer at once.
    assert_eq!(
        c.cmd_str("BLPOP q -1"),
        b"-ERR timeout is negative\r\n".to_vec()
    );
    assert_eq!(
        c.cmd_str("BLPOP q x"),
        b"-ERR timeout is not a float or out of range\r\n".to_vec()
    );
}

#[test]
fn blocked_clients_are_served_in_the_order_they_blocked() {
    let cairn = Cairn::start();
    let mut pusher = cairn.raw();
    let mut clients: Vec<Raw> = (0..4).map(|_| cairn.raw()).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send_line("BLPOP fifo 0");
        // Each is queued before the next blocks.
        wait_blocked(&mut pusher, i + 1);
    }
    // One element at a time: each goes to the longest-waiting client.
    for (i, c) in clients.iter_mut().enumerate().take(2) {
        pusher.cmd_str(&format!("RPUSH fifo e{i}"));
        assert_eq!(
            c.reply_text(),
            format!("*2\r\n$4\r\nfifo\r\n$2\r\ne{i}\r\n"),
            "client {i}"
        );
    }
    // Two at once: the next two clients, in order.
    pusher.cmd_str("RPUSH fifo e2 e3");
    for (i, c) in clients.iter_mut().enumerate().skip(2) {
        assert_eq!(
            c.reply_text(),
            format!("*2\r\n$4\r\nfifo\r\n$2\r\ne{i}\r\n")
        );
    }
    // A client that leaves while blocked takes nothing with it.
    let mut gone = cairn.raw();
    gone.send_line("BLPOP fifo 0");
    wait_blocked(&mut pusher, 1);
    drop(gone);
    wait_blocked(&mut pusher, 0);
    pusher.cmd_str("RPUSH fifo kept");
    assert_eq!(pusher.cmd_str("LLEN fifo"), b":1\r\n");
}

#[test]
fn stream_reads_block_until_an_entry_arrives() {
    let cairn = Cairn::start();
    let mut w = cairn.raw();
    let mut r = cairn.raw();
    w.cmd_str("XADD s 1-1 f old");
    // `$` means after what is there now: the old entry is never returned.
    r.send_line("XREAD BLOCK 0 STREAMS s $");
    wait_blocked(&mut w, 1);
    w.cmd_str("XADD s 2-1 f new");
    assert_eq!(
        r.reply_text(),
        "*1\r\n*2\r\n$1\r\ns\r\n*1\r\n*2\r\n$3\r\n2-1\r\n*2\r\n$1\r\nf\r\n$3\r\nnew\r\n"
    );
    assert_eq!(r.cmd_str("XREAD BLOCK 100 STREAMS s $"), b"*-1\r\n");
    // A group read blocks for new entries and records the delivery.
    w.cmd_str("XGROUP CREATE s g $");
    r.send_line("XREADGROUP GROUP g alice BLOCK 0 STREAMS s >");
    wait_blocked(&mut w, 1);
    w.cmd_str("XADD s 3-1 f next");
    assert!(r.reply_text().contains("3-1"));
    assert_eq!(
        w.cmd_str("XPENDING s g"),
        b"*4\r\n:1\r\n$3\r\n3-1\r\n$3\r\n3-1\r\n*1\r\n*2\r\n$5\r\nalice\r\n$1\r\n1\r\n"
    );
}

#[test]
fn a_client_blocked_on_any_node_of_a_cluster_is_woken_by_a_write_on_another() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster(3, &dirs);
    common::wait_writable(&nodes);
    for (i, node) in nodes.iter().enumerate() {
        let key = format!("jobs{i}");
        let mut c = node.as_ref().unwrap().raw();
        let mut other = nodes[(i + 1) % 3].as_ref().unwrap().raw();
        c.send_line(&format!("BLPOP {key} 0"));
        wait_blocked(&mut node.as_ref().unwrap().raw(), 1);
        assert_eq!(other.cmd_str(&format!("RPUSH {key} work")), b":1\r\n");
        assert_eq!(
            c.reply_text(),
            format!("*2\r\n${}\r\n{key}\r\n$4\r\nwork\r\n", key.len()),
            "client on node {i}"
        );
        // The element was taken exactly once, on every replica.
        assert_eq!(other.cmd_str(&format!("LLEN {key}")), b":0\r\n");
        // A timeout through the cluster is a nil array too.
        assert_eq!(c.cmd_str(&format!("BLPOP {key} 0.2")), b"*-1\r\n");
    }
}

/// The `group1:` line of a node's INFO raft, if it holds a replica of shard 1.
fn holds_shard_1(c: &mut Raw) -> bool {
    c.reply_text_of("INFO raft").contains("group1:")
}

fn forwarded_in(c: &mut Raw) -> u64 {
    let info = c.reply_text_of("INFO stats");
    info.lines()
        .find_map(|l| l.strip_prefix("pubsub_forwarded_in:"))
        .expect("pubsub_forwarded_in")
        .trim()
        .parse()
        .unwrap()
}

/// A node that holds no replica of the keys' shard cannot be woken by its own apply: the
/// shard's leader wakes it. (It also retries every second, in case a wake-up is lost: the
/// pops here must come much sooner than that, and the node must have been sent wake-ups.)
#[test]
fn a_client_on_a_node_without_a_replica_is_woken_by_the_shard_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    // Four nodes, one shard on three of them.
    let nodes = common::start_cluster_replicas(4, &dirs, 1, 3);
    common::wait_writable(&nodes);
    let raw = |i: usize| nodes[i].as_ref().unwrap().raw();
    let outsider = (0..4)
        .find(|&i| !holds_shard_1(&mut raw(i)))
        .expect("one node holds no replica");
    let pusher_node = (outsider + 1) % 4;
    let mut c = raw(outsider);
    let mut stats = raw(outsider);
    let before = forwarded_in(&mut stats);
    let mut slowest = Duration::ZERO;
    for round in 0..5 {
        let key = format!("remote{round}");
        c.send_line(&format!("BLPOP {key} 0"));
        wait_blocked(&mut raw(outsider), 1);
        // Past the first try and any retry the blocking itself caused.
        std::thread::sleep(Duration::from_millis(50));
        let mut pusher = raw(pusher_node);
        let t = Instant::now();
        assert_eq!(pusher.cmd_str(&format!("RPUSH {key} work")), b":1\r\n");
        assert_eq!(
            c.reply_text(),
            format!("*2\r\n${}\r\n{key}\r\n$4\r\nwork\r\n", key.len())
        );
        slowest = slowest.max(t.elapsed());
        assert_eq!(pusher.cmd_str(&format!("LLEN {key}")), b":0\r\n");
    }
    assert!(
        slowest < Duration::from_millis(500),
        "woken by polling (every second), not by the leader: slowest pop {slowest:?}"
    );
    assert!(
        forwarded_in(&mut stats) >= before + 5,
        "node {} was sent no wake-ups",
        outsider + 1
    );
    // Unblocked, the node's keys are given up: pushes to them wake nobody there. (Giving them
    // up reaches the other nodes as a message: wait until a push to the last key, which its
    // client gave up a moment ago, brings nothing, for at most 5 s.)
    let mut pusher = raw(pusher_node);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let quiet = forwarded_in(&mut stats);
        pusher.cmd_str("RPUSH remote4 probe");
        std::thread::sleep(Duration::from_millis(200));
        if forwarded_in(&mut stats) == quiet {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "wake-ups go on for a key nobody waits on"
        );
    }
    let quiet = forwarded_in(&mut stats);
    for round in 0..5 {
        pusher.cmd_str(&format!("RPUSH remote{round} more"));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        forwarded_in(&mut stats),
        quiet,
        "wake-ups for keys nobody waits on"
    );
}
