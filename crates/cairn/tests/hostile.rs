//! Hostile clients against a live 3-node cluster with a password: unauthenticated commands,
//! wrong passwords at a high rate, oversized and malformed frames, readers that never read
//! (plain and subscribed). Meanwhile a well-behaved client writes through one node: its
//! writes go on, every acknowledged one is there afterwards, and every node's memory stays
//! bounded.
//!
//! Seeded (the garbage bytes): `CAIRN_SEED=<n> cargo test -p cairn --test hostile`.

mod common;

use common::{Answer, Cluster, Conn};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PASSWORD: &[u8] = b"correct horse battery staple";
const RUN: Duration = Duration::from_secs(12);

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn connect(port: u16) -> Option<TcpStream> {
    let s =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    Some(s)
}

fn request(args: &[&[u8]]) -> Vec<u8> {
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
    cairn_server::replicated::encode_request(&args)
}

/// Reads until `lines` reply lines have arrived (or the connection ends); returns them.
fn read_lines(s: &mut TcpStream, lines: usize) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    while got.iter().filter(|&&b| b == b'\n').count() < lines {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn authed(port: u16) -> Conn {
    let mut c = Conn::open(port).expect("connect");
    assert_eq!(c.call(&[b"AUTH", PASSWORD]), Some(Answer::Ok));
    c
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hostile_clients_do_not_hurt_a_cluster_with_a_password() {
    let seed: u64 = std::env::var("CAIRN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("seed {seed}: rerun with CAIRN_SEED={seed} cargo test -p cairn --test hostile");
    let cluster = Cluster::new(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    common::wait_serving(&ports, Duration::from_secs(30));
    let mut admin = Conn::open(ports[0]).unwrap();
    assert_eq!(
        admin.call(&[b"CONFIG", b"SET", b"requirepass", PASSWORD]),
        Some(Answer::Ok)
    );
    // Every node applies the password (the meta group's entry) within a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    for &p in &ports {
        while !matches!(Conn::open(p).unwrap().call(&[b"GET", b"x"]), Some(Answer::Error(e)) if e.starts_with("NOAUTH"))
        {
            assert!(Instant::now() < deadline, "node on {p} has no password");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A 1 MB value for the readers that never read.
    let big = vec![b'x'; 1 << 20];
    assert_eq!(
        authed(ports[0]).call(&[b"SET", b"big", &big]),
        Some(Answer::Ok)
    );
    let rss_before: Vec<u64> = (0..3).map(|i| rss_kb(cluster.pid(i).unwrap())).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let until = move || started.elapsed() < RUN;
    // Which hostile kinds run (all by default; naming some helps to tell which one hurts).
    let kinds = std::env::var("CAIRN_HOSTILE_KINDS")
        .unwrap_or_else(|_| "noauth,wrongpass,frames,readers,subscriber".into());
    let runs = |k: &str| kinds.split(',').any(|x| x == k);
    let mut hostile = Vec::new();
    let noauth = Arc::new(AtomicU64::new(0));
    let wrongpass = Arc::new(AtomicU64::new(0));
    let refused_frames = Arc::new(AtomicU64::new(0));
    // Each kind is paced a little: on a 2-core machine running three debug-built nodes, loops
    // at full speed test CPU starvation, not hostile clients.
    let pause = || std::thread::sleep(Duration::from_millis(5));
    // Unauthenticated commands, pipelined.
    for t in 0..3 {
        if !runs("noauth") {
            break;
        }
        let (port, noauth) = (ports[t % 3], noauth.clone());
        hostile.push(std::thread::spawn(move || {
            while until() {
                let Some(mut s) = connect(port) else { continue };
                let batch: Vec<u8> = (0..100)
                    .flat_map(|i| request(&[b"SET", format!("evil:{i}").as_bytes(), b"v"]))
                    .collect();
                if s.write_all(&batch).is_err() {
                    continue;
                }
                let text = read_lines(&mut s, 100);
                let n = text.matches("-NOAUTH Authentication required.").count();
                assert_eq!(n, 100, "unauthenticated SETs got: {text:.200}");
                noauth.fetch_add(n as u64, Ordering::Relaxed);
                pause();
            }
        }));
    }
    // Wrong passwords, thousands a second.
    for t in 0..3 {
        if !runs("wrongpass") {
            break;
        }
        let (port, wrongpass) = (ports[t % 3], wrongpass.clone());
        hostile.push(std::thread::spawn(move || {
            let mut s = connect(port).unwrap();
            while until() {
                let batch: Vec<u8> = (0..100)
                    .flat_map(|i| request(&[b"AUTH", format!("guess{i}").as_bytes()]))
                    .collect();
                s.write_all(&batch).unwrap();
                let text = read_lines(&mut s, 100);
                let n = text.matches("-WRONGPASS").count();
                assert_eq!(n, 100, "{text:.200}");
                wrongpass.fetch_add(n as u64, Ordering::Relaxed);
                pause();
            }
        }));
    }
    // Oversized and malformed frames, from the seed.
    for t in 0..2 {
        if !runs("frames") {
            break;
        }
        let (port, refused) = (ports[t % 3], refused_frames.clone());
        let mut rng = Rng(seed.wrapping_add(t as u64) | 1);
        hostile.push(std::thread::spawn(move || {
            while until() {
                let Some(mut s) = connect(port) else { continue };
                let frame: Vec<u8> = match rng.next() % 4 {
                    0 => b"*1\r\n$2147483648\r\n".to_vec(),
                    1 => b"*99999999999\r\n".to_vec(),
                    2 => format!("*2\r\n$3\r\nGET\r\n${}\r\n", 600u64 << 20).into_bytes(),
                    _ => (0..1 + rng.next() % 512)
                        .map(|_| rng.next() as u8)
                        .collect(),
                };
                let _ = s.write_all(&frame);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let text = read_lines(&mut s, 1);
                if text.starts_with('-') {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                pause();
            }
        }));
    }
    // Readers that never read: 1 MB replies, pipelined, on authenticated connections.
    for t in 0..3 {
        if !runs("readers") {
            break;
        }
        let port = ports[t % 3];
        hostile.push(std::thread::spawn(move || {
            let mut s = connect(port).unwrap();
            s.write_all(&request(&[b"AUTH", PASSWORD])).unwrap();
            let get: Vec<u8> = (0..50).flat_map(|_| request(&[b"GET", b"big"])).collect();
            while until() {
                // Writes block once the node stops reading this connection: that is the point.
                if s.write_all(&get).is_err() {
                    break;
                }
            }
        }));
    }
    // A subscriber that never reads, under a flood of messages published on another node.
    let published = Arc::new(AtomicU64::new(0));
    if runs("subscriber") {
        let port = ports[1];
        hostile.push(std::thread::spawn(move || {
            let mut s = connect(port).unwrap();
            s.write_all(&request(&[b"AUTH", PASSWORD])).unwrap();
            s.write_all(&request(&[b"SUBSCRIBE", b"flood"])).unwrap();
            while until() {
                std::thread::sleep(Duration::from_millis(100));
            }
        }));
        let (port, published) = (ports[2], published.clone());
        hostile.push(std::thread::spawn(move || {
            let mut c = authed(port);
            let msg = vec![b'm'; 64 * 1024];
            while until() && published.load(Ordering::Relaxed) < 20_000 {
                let _ = c.call(&[b"PUBLISH", b"flood", &msg]);
                published.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    // The well-behaved client.
    let writer = {
        let (port, stop) = (ports[1], stop.clone());
        std::thread::spawn(move || {
            let mut c = authed(port);
            let (mut acked, mut unclear, mut longest) = (Vec::new(), 0, Duration::ZERO);
            for i in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("good:{i}");
                let asked = Instant::now();
                match c.call(&[b"SET", k.as_bytes(), b"v"]) {
                    Some(Answer::Ok) => acked.push(k),
                    Some(Answer::Error(e))
                        if e.starts_with("TRYAGAIN") || e.starts_with("UNCERTAIN") =>
                    {
                        unclear += 1
                    }
                    other => panic!("{k}: {other:?} after {:?}", asked.elapsed()),
                }
                longest = longest.max(asked.elapsed());
            }
            (acked, unclear, longest)
        })
    };
    let mut peak = vec![0u64; 3];
    while started.elapsed() < RUN {
        for (i, p) in peak.iter_mut().enumerate() {
            *p = (*p).max(rss_kb(cluster.pid(i).unwrap()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    let (acked, unclear, longest) = writer.join().unwrap();
    for h in hostile {
        h.join().unwrap();
    }
    let published = published.load(Ordering::Relaxed);
    for i in 0..3 {
        assert!(cluster.pid(i).is_some(), "node {} is still running", i + 1);
    }
    // Every acknowledged write is there, read through another node.
    let mut check = authed(ports[2]);
    for k in &acked {
        assert_eq!(
            check.call(&[b"GET", k.as_bytes()]),
            Some(Answer::Value(Some(b"v".to_vec()))),
            "{k}"
        );
    }
    // Nothing the hostile clients sent was written.
    for k in [&b"evil:0"[..], b"evil:1", b"evil:99"] {
        assert_eq!(check.call(&[b"EXISTS", k]), Some(Answer::Int(0)));
    }
    // ACL LOG kept the failed logins, and no more entries than its limit.
    let log = check.call(&[b"ACL", b"LOG", b"1000"]);
    let Some(Answer::Array(entries)) = log else {
        panic!("ACL LOG: {log:?}")
    };
    assert!(
        (!entries.is_empty() || !runs("wrongpass")) && entries.len() <= 128,
        "{}",
        entries.len()
    );
    let growth: Vec<i64> = (0..3)
        .map(|i| peak[i] as i64 - rss_before[i] as i64)
        .collect();
    println!(
        "{} good writes acknowledged and all present ({unclear} unclear, longest wait {longest:?}); hostile: {} NOAUTH, {} WRONGPASS, {} refused frames, {published} 64 KB messages to a subscriber that never read; node RSS before {rss_before:?} kB, peak {peak:?} kB",
        acked.len(),
        noauth.load(Ordering::Relaxed),
        wrongpass.load(Ordering::Relaxed),
        refused_frames.load(Ordering::Relaxed),
    );
    assert!(
        acked.len() > 200,
        "the good client was starved: {}",
        acked.len()
    );
    // The password went through CONFIG SET and a hundred thousand AUTHs: no node logged it.
    let clear = String::from_utf8_lossy(PASSWORD).into_owned();
    for i in 0..3 {
        assert!(
            !cluster.log_text(i).contains(&clear),
            "node {} logged the password",
            i + 1
        );
    }
    if kinds.contains("noauth") {
        assert!(noauth.load(Ordering::Relaxed) > 1000);
    }
    if kinds.contains("wrongpass") {
        assert!(wrongpass.load(Ordering::Relaxed) > 1000);
    }
    for (i, g) in growth.iter().enumerate() {
        // Three readers asked for 50 MB each per pipeline, again and again, and the subscriber
        // was sent over a GB: bounded means well under that.
        assert!(*g < 256 * 1024, "node {} grew by {g} kB", i + 1);
    }
}
