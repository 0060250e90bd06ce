//! The admin HTTP port: `/health`, `/ready`, `/metrics` (Prometheus text) and `/api/cluster`
//! (JSON), on a standalone node and on a three-node cluster, checked against what the nodes
//! say over RESP.

mod common;

use common::Cairn;
use std::io::{Read, Write};

/// GET `path`: (status code, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("admin port");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of an unlabelled sample in a Prometheus text body.
fn sample(body: &str, name: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("no {name} in:\n{body}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_standalone_node_reports_health_and_counters() {
    let admin = common::free_port();
    let cairn = Cairn::start_with(cairn_server::Config {
        admin_port: admin,
        ..Default::default()
    });
    let mut c = cairn.raw();
    assert_eq!(c.cmd_str("PING"), b"+PONG\r\n");
    assert_eq!(get(admin, "/health"), (200, "ok\n".into()));
    assert_eq!(get(admin, "/ready"), (200, "ready\n".into()));
    let (status, before) = get(admin, "/metrics");
    assert_eq!(status, 200);
    assert!(before.contains("# TYPE cairn_commands_processed_total counter"));
    for i in 0..10 {
        c.cmd_str(&format!("SET k{i} v"));
    }
    c.cmd_str("NOSUCHCOMMAND");
    let (_, after) = get(admin, "/metrics");
    assert!(
        sample(&after, "cairn_commands_processed_total")
            >= sample(&before, "cairn_commands_processed_total") + 11
    );
    assert!(
        sample(&after, "cairn_error_replies_total") > sample(&before, "cairn_error_replies_total")
    );
    assert_eq!(sample(&after, "cairn_keys"), 10);
    assert_eq!(sample(&after, "cairn_command_calls_total{cmd=\"set\"}"), 10);
    assert_eq!(
        sample(
            &after,
            "cairn_command_duration_seconds_bucket{cmd=\"set\",le=\"+Inf\"}"
        ),
        10
    );
    assert_eq!(
        c.cmd_str("INCR k0"),
        b"-ERR value is not an integer or out of range\r\n"
    );
    let (_, later) = get(admin, "/metrics");
    assert_eq!(
        sample(&later, "cairn_command_failed_total{cmd=\"incr\"}"),
        1
    );
    assert!(sample(&after, "cairn_connected_clients") >= 1);
    assert_eq!(get(admin, "/nowhere").0, 404);
}

#[test]
fn a_cluster_node_shows_its_groups_and_their_leaders() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let admin: Vec<u16> = (0..3).map(|_| common::free_port()).collect();
    let ports = admin.clone();
    let nodes = common::start_cluster_configured(3, &dirs, move |c| {
        c.admin_port = ports[c.node_id as usize - 1];
    });
    common::wait_writable(&nodes);
    for (i, &port) in admin.iter().enumerate() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        while get(port, "/ready").0 != 200 {
            assert!(
                std::time::Instant::now() < deadline,
                "node {} not ready",
                i + 1
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        // Leadership may still move (it is being spread over the nodes): the three views
        // must agree at some moment.
        let mut last = String::new();
        let agreed = (0..50).any(|_| {
            let (json_status, body, agree) = views_agree(port, &nodes, i);
            assert_eq!(json_status, 200);
            last = body;
            agree || {
                std::thread::sleep(std::time::Duration::from_millis(200));
                false
            }
        });
        assert!(
            agreed,
            "node {}: JSON, INFO and /metrics disagree: {last}",
            i + 1
        );
        let (_, before) = get(port, "/metrics");
        let mut c = nodes[i].as_ref().unwrap().raw();
        // Replicated writes reach the slow log with their arguments.
        assert_eq!(
            c.cmd_str("CONFIG SET slowlog-log-slower-than 0"),
            b"+OK\r\n"
        );
        assert_eq!(c.cmd_str("SET slow-one v"), b"+OK\r\n");
        let log = c.reply_text_of("SLOWLOG GET 2");
        assert!(log.contains("slow-one"), "node {}: {log}", i + 1);
        assert_eq!(
            c.cmd_str("CONFIG SET slowlog-log-slower-than -1"),
            b"+OK\r\n"
        );
        for k in 0..5 {
            assert_eq!(c.cmd_str(&format!("SET m{i}-{k} v")), b"+OK\r\n");
        }
        let (_, metrics) = get(port, "/metrics");
        assert!(
            sample(&metrics, "cairn_commands_processed_total")
                >= sample(&before, "cairn_commands_processed_total") + 5,
            "commands through node {} are counted",
            i + 1
        );
        assert_eq!(c.cmd_str("LPUSH m0-0 x").first(), Some(&b'-'));
        assert_eq!(c.cmd_str("NOSUCHCOMMAND").first(), Some(&b'-'));
        let (_, errors) = get(port, "/metrics");
        assert!(
            sample(&errors, "cairn_error_replies_total")
                >= sample(&metrics, "cairn_error_replies_total") + 2,
            "error replies on node {} are counted",
            i + 1
        );
        // Each node counts the SETs its clients sent (and those other nodes relayed to it as
        // a shard's leader).
        assert!(
            sample(&metrics, "cairn_command_calls_total{cmd=\"set\"}") >= 5,
            "node {}: {metrics}",
            i + 1
        );
        assert!(metrics.contains("cairn_raft_commit_index{group=\"1\"}"));
        // The log: on disk, written with fsyncs, whose latency is a histogram.
        assert!(sample(&metrics, "cairn_log_disk_bytes") > 0, "{metrics}");
        let fsyncs = sample(&metrics, "cairn_log_fsync_duration_seconds_count");
        assert!(fsyncs > 0, "{metrics}");
        assert_eq!(
            sample(
                &metrics,
                "cairn_log_fsync_duration_seconds_bucket{le=\"+Inf\"}"
            ),
            fsyncs
        );
        assert!(sample(&metrics, "cairn_net_input_bytes_total") > 0);
        // Errors by code (the unknown command and the WRONGTYPE above).
        assert!(
            sample(&errors, "cairn_errors_total{code=\"ERR\"}") >= 1,
            "{errors}"
        );
        assert!(sample(&errors, "cairn_errors_total{code=\"WRONGTYPE\"}") >= 1);
        assert!(metrics.contains("# TYPE cairn_raft_proposals_total counter"));
        let info = c.reply_text_of("INFO raft");
        assert!(
            info.lines()
                .any(|l| l.starts_with("log_fsyncs:") && l != "log_fsyncs:0"),
            "{info}"
        );
    }
}

/// Checks node `i`'s `/api/cluster` (structure, every slot placed) and whether it names the
/// same leaders as its INFO and its `/metrics`: (status, body, whether they agree).
fn views_agree(port: u16, nodes: &[Option<Cairn>], i: usize) -> (u16, String, bool) {
    let (status, body) = get(port, "/api/cluster");
    let v: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["mode"], "cluster");
    assert_eq!(v["node"], i as u64 + 1);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3, "{body}");
    let groups = v["groups"].as_array().unwrap();
    // The meta group and the three shards, each on all three nodes.
    assert_eq!(groups.len(), 4, "{body}");
    let info = nodes[i].as_ref().unwrap().raw().reply_text_of("INFO raft");
    let (_, metrics) = get(port, "/metrics");
    let mut slots = 0;
    let mut agree = true;
    for g in groups {
        assert_eq!(g["voters"].as_array().unwrap().len(), 3, "{g}");
        let Some(leader) = g["leader"].as_u64() else {
            agree = false;
            continue;
        };
        let line = info
            .lines()
            .find(|l| l.starts_with(&format!("group{}:", g["id"])))
            .unwrap_or_default();
        agree &= line.contains(&format!("leader={leader},"));
        let leads = format!(
            "cairn_raft_leader{{group=\"{}\"}} {}",
            g["id"],
            u8::from(leader == i as u64 + 1)
        );
        agree &= metrics.lines().any(|l| l == leads);
        for r in g["slots"].as_array().unwrap() {
            slots += r[1].as_u64().unwrap() - r[0].as_u64().unwrap() + 1;
        }
    }
    assert_eq!(slots, 16384, "every slot in some shard: {body}");
    (status, body, agree)
}
