//! Durability over real processes: a follower that was down while 100,000 writes went in (long
//! enough for the others to snapshot and compact their logs) comes back, catches up by
//! installing a snapshot, and ends with exactly the leader's data (compared by `DEBUG DIGEST`).
//! Then every node is killed at once mid-write-load and restarted: every acknowledged write is
//! still there.

mod common;

use common::{digest, raft_field, wait_serving, Cluster};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const WRITES: usize = 100_000;
const PIPELINE: usize = 20;

/// The value written under `key:i`: long enough that the state (~10 MB after 100k writes)
/// needs a snapshot sent in several bus chunks.
fn value_of(i: usize) -> String {
    format!("{i}:{}", "v".repeat(64))
}

/// Writes `key:i = value_of(i)` for every i in `range` through `port`, `PIPELINE` commands at a
/// time; returns how many were acknowledged with +OK before the first failure.
fn write_range(port: u16, range: std::ops::Range<usize>) -> usize {
    let Ok(s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut acked = 0;
    let ids: Vec<usize> = range.collect();
    for chunk in ids.chunks(PIPELINE) {
        let mut req = Vec::new();
        for i in chunk {
            let (k, v) = (format!("key:{i}"), value_of(*i));
            req.extend_from_slice(
                format!(
                    "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{v}\r\n",
                    k.len(),
                    v.len()
                )
                .as_bytes(),
            );
        }
        if w.write_all(&req).is_err() {
            return acked;
        }
        for _ in chunk {
            let mut line = String::new();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line != "+OK\r\n" {
                return acked;
            }
            acked += 1;
        }
    }
    acked
}

/// Reads back `key:i` for every i in `ids` through `port`, pipelined; the first key missing or
/// wrong is an error.
fn check_keys(port: u16, ids: &[usize]) -> Result<(), String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for chunk in ids.chunks(100) {
        let mut req = Vec::new();
        for i in chunk {
            let k = format!("key:{i}");
            req.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n{k}\r\n", k.len()).as_bytes());
        }
        w.write_all(&req).map_err(|e| e.to_string())?;
        for i in chunk {
            let (mut header, mut value) = (String::new(), String::new());
            r.read_line(&mut header).map_err(|e| e.to_string())?;
            if !header.starts_with('$') || header.starts_with("$-1") {
                return Err(format!("key:{i} answered {header:?}"));
            }
            r.read_line(&mut value).map_err(|e| e.to_string())?;
            if value.trim_end() != value_of(*i) {
                return Err(format!("key:{i} holds {value:?}"));
            }
        }
    }
    Ok(())
}

fn wait_until<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

#[test]
fn a_follower_down_for_100k_writes_catches_up_by_snapshot() {
    let mut cluster = Cluster::new(&["--snapshot-entries", "500"]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let leader = wait_until("a leader", Duration::from_secs(15), || {
        (0..3).find(|&i| raft_field(ports[i], "role").as_deref() == Some("leader"))
    });
    let down = (leader + 1) % 3;
    cluster.kill9(down);
    let started = Instant::now();
    assert_eq!(write_range(ports[leader], 0..WRITES), WRITES);
    let wrote = started.elapsed();
    let leader_snapshot: u64 = raft_field(ports[leader], "snapshot")
        .unwrap()
        .parse()
        .unwrap();
    assert!(leader_snapshot > 0, "the leader compacted its log");
    cluster.start(down);
    let started = Instant::now();
    let commit: u64 = raft_field(ports[leader], "commit")
        .unwrap()
        .parse()
        .unwrap();
    wait_until("the follower to catch up", Duration::from_secs(120), || {
        let applied: u64 = raft_field(ports[down], "applied")?.parse().ok()?;
        (applied >= commit).then_some(())
    });
    let caught_up = started.elapsed();
    let installed: u64 = raft_field(ports[down], "snapshots_installed")
        .unwrap()
        .parse()
        .unwrap();
    assert!(installed >= 1, "the follower caught up without a snapshot");
    let expected = digest(ports[leader]).unwrap();
    wait_until(
        "the same data on every node",
        Duration::from_secs(30),
        || {
            (0..3)
                .all(|i| digest(ports[i]).as_deref() == Some(expected.as_str()))
                .then_some(())
        },
    );
    println!(
        "{WRITES} writes in {wrote:?} with node {} down; it caught up in {caught_up:?} \
         ({installed} snapshot(s) installed); digests equal: {expected}",
        down + 1
    );

    // Every node dies at once while clients write; every acknowledged write survives.
    let writers: Vec<_> = (0..3)
        .map(|i| {
            let port = ports[i];
            let from = WRITES + i * 1_000_000;
            std::thread::spawn(move || (from, write_range(port, from..from + 1_000_000)))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    for i in 0..3 {
        cluster.kill9(i);
    }
    let acked: Vec<(usize, usize)> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    for i in 0..3 {
        cluster.start(i);
    }
    wait_serving(&ports, Duration::from_secs(30));
    let mut ids: Vec<usize> = (0..WRITES).collect();
    for &(from, n) in &acked {
        ids.extend(from..from + n);
    }
    check_keys(ports[0], &ids)
        .unwrap_or_else(|e| panic!("an acknowledged write is gone after kill -9 of all: {e}"));
    let checked = ids.len();
    let total: usize = acked.iter().map(|a| a.1).sum();
    println!("kill -9 of all nodes under load: {total} acknowledged writes, {checked} checked, none lost");
    assert!(total > 0, "no write was acknowledged before the kill");
}
