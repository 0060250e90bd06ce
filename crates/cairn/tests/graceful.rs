//! Graceful shutdown over real processes: SIGTERM to shard 1's leader under a read/write load
//! (over all three shards). The leader hands leadership to a follower before it exits, so clients of the other nodes see no
//! error at all (only a short pause), the process exits cleanly, and every acknowledged write is
//! on the new leader.

mod common;

use common::{group_field, raft_field, wait_serving, Answer, Cluster, Conn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// What one client saw: acknowledged keys, errors, and its slowest request.
struct Seen {
    acked: Vec<String>,
    errors: Vec<String>,
    slowest: Duration,
}

/// Writes `w:i` (and reads it back right after) through `port` until `stop`.
fn client(port: u16, w: usize, stop: Arc<AtomicBool>) -> Seen {
    let mut seen = Seen {
        acked: Vec::new(),
        errors: Vec::new(),
        slowest: Duration::ZERO,
    };
    let Some(mut conn) = Conn::open(port) else {
        seen.errors.push("cannot connect".into());
        return seen;
    };
    // Bounded: at most 20 s or 100k requests, whichever comes first.
    let deadline = Instant::now() + Duration::from_secs(20);
    for i in 0..100_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let key = format!("w{w}:{i}");
        let t = Instant::now();
        match conn.call(&[b"SET", key.as_bytes(), key.as_bytes()]) {
            Some(Answer::Ok) => seen.acked.push(key.clone()),
            other => {
                seen.errors.push(format!("SET {key}: {other:?}"));
                continue;
            }
        }
        match conn.call(&[b"GET", key.as_bytes()]) {
            Some(Answer::Value(Some(v))) if v == key.as_bytes() => {}
            other => seen.errors.push(format!("GET {key}: {other:?}")),
        }
        seen.slowest = seen.slowest.max(t.elapsed());
    }
    seen
}

#[test]
fn sigterm_to_the_leader_hands_leadership_over_without_client_errors() {
    let mut cluster = Cluster::new_logging(&[], "warn,cairn_server=info");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    // Three shards: wait until leadership is spread (each node leads one), so that balancing
    // moves nothing while the test watches shard 1's leader hand over.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut leaders: Vec<String> = (1..=3)
            .filter_map(|g| group_field(ports[0], g, "leader"))
            .collect();
        leaders.sort();
        if leaders == ["1", "2", "3"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "leadership did not spread: {leaders:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
    let leader = (0..3)
        .find(|&i| raft_field(ports[i], "role").as_deref() == Some("leader"))
        .expect("a leader");
    let term: u64 = raft_field(ports[leader], "term").unwrap().parse().unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    println!("leader: node {} (term {term})", leader + 1);

    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = others
        .iter()
        .flat_map(|&i| [(i, 0), (i, 1)])
        .enumerate()
        .map(|(w, (i, _))| {
            let (port, stop) = (ports[i], stop.clone());
            thread::spawn(move || client(port, w, stop))
        })
        .collect();
    thread::sleep(Duration::from_millis(800));
    let sent = Instant::now();
    cluster.signal(leader, "-TERM");
    let exited = cluster.wait_exit(leader, Duration::from_secs(10));
    let exit_took = sent.elapsed();
    thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::Relaxed);
    let seen: Vec<Seen> = clients.into_iter().map(|c| c.join().unwrap()).collect();

    let log = cluster.log_text(leader);
    let acked: usize = seen.iter().map(|s| s.acked.len()).sum();
    let slowest = seen.iter().map(|s| s.slowest).max().unwrap();
    let errors: Vec<&String> = seen.iter().flat_map(|s| &s.errors).collect();
    println!(
        "exit after {exit_took:?}; {acked} writes acknowledged; slowest SET+GET {slowest:?}; {} errors",
        errors.len()
    );
    assert_eq!(exited, Some(true), "the leader exits cleanly on SIGTERM");
    assert!(
        log.contains("handed leadership over"),
        "the leader started a transfer before exiting:\n{log}"
    );
    assert!(
        !log.contains("still leading"),
        "the transfer completed before exit:\n{log}"
    );
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");

    let new_leader = others
        .iter()
        .copied()
        .find(|&i| raft_field(ports[i], "role").as_deref() == Some("leader"))
        .expect("a new leader right after the old one exited");
    let new_term: u64 = raft_field(ports[new_leader], "term")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        log.contains(&format!("to={}", new_leader + 1)),
        "node {} took over as the transfer chose:\n{log}",
        new_leader + 1
    );
    assert_eq!(new_term, term + 1, "one election: the transfer's");

    let mut conn = Conn::open(ports[new_leader]).unwrap();
    for key in seen.iter().flat_map(|s| &s.acked) {
        match conn.call(&[b"GET", key.as_bytes()]) {
            Some(Answer::Value(Some(v))) if v == key.as_bytes() => {}
            other => panic!("acknowledged {key} is gone: {other:?}"),
        }
    }
}
