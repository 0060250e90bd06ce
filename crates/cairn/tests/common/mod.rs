//! Real `cairn server` processes for the process-level tests: a three-node cluster that can be
//! killed, frozen and cut apart, and a minimal RESP client.
#![allow(dead_code)] // each test binary uses its own part of this

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Proc {
    pub port: u16,
    child: Option<Child>,
    /// Started with `--initial-cluster-state existing` (it joins; it does not bootstrap).
    joins: bool,
}

pub struct Cluster {
    pub procs: Vec<Proc>,
    initial: String,
    /// Arguments every node gets besides the cluster's own.
    extra: Vec<String>,
    /// The nodes' `CAIRN_LOG` filter.
    log: String,
    /// Each node serves its admin HTTP port on its client port + 2000.
    pub admin: bool,
    pub dir: tempfile::TempDir,
}

impl Cluster {
    /// Three nodes, each started with `extra` arguments too.
    pub fn new(extra: &[&str]) -> Cluster {
        Cluster::new_logging(extra, "warn")
    }

    /// Three nodes logging at `log` (a `CAIRN_LOG` filter) to `node<i>.log` in the cluster's
    /// directory.
    pub fn new_logging(extra: &[&str], log: &str) -> Cluster {
        Cluster::sized(3, extra, log)
    }

    /// `nodes` nodes logging at `log`, each started with `extra` arguments too.
    pub fn sized(nodes: usize, extra: &[&str], log: &str) -> Cluster {
        let ports = pick_ports(nodes);
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p + 10000))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            procs: ports
                .into_iter()
                .map(|port| Proc {
                    port,
                    child: None,
                    joins: false,
                })
                .collect(),
            initial,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            log: log.to_string(),
            admin: false,
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..nodes {
            c.start(i);
        }
        c
    }

    /// Three nodes, each serving its admin HTTP port on its client port + 2000.
    pub fn with_admin(extra: &[&str]) -> Cluster {
        let mut c = Cluster::sized(0, extra, "warn");
        c.admin = true;
        let ports = pick_ports(3);
        let mut initial = Vec::new();
        for (i, &port) in ports.iter().enumerate() {
            c.procs.push(Proc {
                port,
                child: None,
                joins: false,
            });
            initial.push(format!("{}=127.0.0.1:{}", i + 1, port + 10000));
        }
        c.initial = initial.join(",");
        for i in 0..3 {
            c.start(i);
        }
        c
    }

    pub fn start(&mut self, i: usize) {
        let port = self.procs[i].port;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node{}.log", i + 1)))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cairn"))
            .args([
                "server",
                "--port",
                &port.to_string(),
                "--node-id",
                &(i + 1).to_string(),
            ])
            .args([
                "--bus-port",
                &(port + 10000).to_string(),
                "--initial-cluster",
                &self.initial,
            ])
            .args(["--fault-hooks", "yes"])
            .args(if self.admin {
                vec!["--admin-port".to_string(), (port + 2000).to_string()]
            } else {
                Vec::new()
            })
            .args(if self.procs[i].joins {
                &["--initial-cluster-state", "existing"][..]
            } else {
                &[][..]
            })
            .args(&self.extra)
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{}", i + 1)))
            .env("CAIRN_LOG", &self.log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cairn");
        self.procs[i].child = Some(child);
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts one more node, which joins the running cluster (a member must then add it).
    /// Returns its index.
    pub fn add_joining_node(&mut self) -> usize {
        let used: Vec<u16> = self.procs.iter().map(|p| p.port).collect();
        let port = pick_ports(8)
            .into_iter()
            .find(|p| !used.contains(p))
            .expect("a free port");
        let i = self.procs.len();
        self.initial
            .push_str(&format!(",{}=127.0.0.1:{}", i + 1, port + 10000));
        self.procs.push(Proc {
            port,
            child: None,
            joins: true,
        });
        self.start(i);
        i
    }

    /// Waits up to `within` for node `i` to exit on its own; returns whether it exited with
    /// success. None if it is still running (or was not running).
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<bool> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            let child = self.procs[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.procs[i].child = None;
                return Some(status.success());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Node `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.procs[i].child.as_ref().map(Child::id)
    }

    /// What node `i` logged so far.
    pub fn log_text(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("node{}.log", i + 1)))
            .unwrap_or_default()
    }

    pub fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.procs[i].child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Cuts (or mends) the link between nodes `a` and `b` at both ends. Returns whether both
    /// ends took it (a node that is down has no links to cut).
    pub fn set_link(&self, a: usize, b: usize, cut: bool) -> bool {
        let verb: &[u8] = if cut { b"CUT" } else { b"HEAL" };
        [(a, b), (b, a)].iter().all(|&(from, to)| {
            let peer = (to + 1).to_string();
            Conn::open(self.procs[from].port)
                .and_then(|mut c| c.call(&[b"DEBUG", b"NETWORK", verb, peer.as_bytes()]))
                .is_some_and(|a| matches!(a, Answer::Ok))
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.signal(i, "-CONT");
            self.kill9(i);
        }
        // A failed test takes the nodes' side with it: the logs are deleted with the folder.
        if std::thread::panicking() {
            for i in 0..self.procs.len() {
                let text = self.log_text(i);
                // Backtrace frames say little here and would push the message out.
                let frame = |l: &&str| {
                    let t = l.trim_start();
                    t.starts_with("at ")
                        || t.split_once(':')
                            .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
                };
                let lines: Vec<&str> = text.lines().filter(|l| !frame(l)).collect();
                let tail = &lines[lines.len().saturating_sub(40)..];
                eprintln!("--- node {} log, last {} lines ---", i + 1, tail.len());
                for l in tail {
                    eprintln!("{l}");
                }
            }
        }
    }
}

pub fn pick_ports(n: usize) -> Vec<u16> {
    'retry: for _ in 0..100 {
        let mut held = Vec::new();
        let mut ports = Vec::new();
        for _ in 0..n {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            if port > 55_000 || std::net::TcpListener::bind(("127.0.0.1", port + 10000)).is_err() {
                continue 'retry;
            }
            ports.push(port);
            held.push(l);
        }
        return ports;
    }
    panic!("no free port pairs");
}

/// A minimal RESP2 client: one command, one reply.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    Ok,
    Int(i64),
    Value(Option<Vec<u8>>),
    Error(String),
    Array(Vec<Answer>),
    NilArray,
}

impl Conn {
    pub fn open(port: u16) -> Option<Conn> {
        Conn::open_waiting(port, Duration::from_secs(4))
    }

    /// As [`Conn::open`], waiting up to `reply_within` for each reply.
    pub fn open_waiting(port: u16, reply_within: Duration) -> Option<Conn> {
        let s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
                .ok()?;
        s.set_read_timeout(Some(reply_within)).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Conn {
            reader: BufReader::new(s.try_clone().ok()?),
            writer: s,
        })
    }

    pub fn call(&mut self, args: &[&[u8]]) -> Option<Answer> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req).ok()?;
        self.read_answer()
    }

    fn read_answer(&mut self) -> Option<Answer> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).ok()?;
        let text = String::from_utf8_lossy(line.get(1..line.len().saturating_sub(2))?).to_string();
        match line.first()? {
            b'+' => Some(Answer::Ok),
            b'-' => Some(Answer::Error(text)),
            b':' => Some(Answer::Int(text.parse().ok()?)),
            b'$' => {
                let n: i64 = text.parse().ok()?;
                if n < 0 {
                    return Some(Answer::Value(None));
                }
                let mut data = vec![0; n as usize + 2];
                std::io::Read::read_exact(&mut self.reader, &mut data).ok()?;
                data.truncate(n as usize);
                Some(Answer::Value(Some(data)))
            }
            b'*' => {
                let n: i64 = text.parse().ok()?;
                if n < 0 {
                    return Some(Answer::NilArray);
                }
                // (Bounded, but above any list a test reads whole: a fault run appends thousands.)
                (0..n.min(1 << 20))
                    .map(|_| self.read_answer())
                    .collect::<Option<Vec<_>>>()
                    .map(Answer::Array)
            }
            _ => None,
        }
    }
}

/// One INFO field of node `port`'s group 1 line (`group1:role=...,applied=...`).
pub fn raft_field(port: u16, field: &str) -> Option<String> {
    group_field(port, 1, field)
}

/// One INFO field of node `port`'s line for shard `group` (`groupN:role=...,applied=...`).
pub fn group_field(port: u16, group: u64, field: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"INFO raft\r\n").ok()?;
    let mut r = BufReader::new(s);
    let mut header = String::new();
    r.read_line(&mut header).ok()?;
    let len: usize = header.trim_start_matches(['$', '=']).trim().parse().ok()?;
    let mut body = vec![0; len + 2];
    std::io::Read::read_exact(&mut r, &mut body).ok()?;
    let body = String::from_utf8_lossy(&body).to_string();
    let prefix = format!("group{group}:");
    let line = body.lines().find(|l| l.starts_with(&prefix))?;
    line.trim_start_matches(&prefix)
        .split(',')
        .find_map(|kv| kv.strip_prefix(&format!("{field}=")).map(str::to_string))
}

/// Waits until every node in `ports` takes a write.
pub fn wait_serving(ports: &[u16], within: Duration) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let ok = ports.iter().all(|&p| {
            Conn::open(p)
                .and_then(|mut c| c.call(&[b"SET", b"probe", b"x"]))
                .is_some_and(|a| matches!(a, Answer::Ok))
        });
        if ok {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the cluster did not start serving within {within:?}");
}

/// `DEBUG DIGEST` of one node: a digest of its own copy of the data.
pub fn digest(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"DEBUG DIGEST\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    Some(line.trim().trim_start_matches('+').to_string())
}

/// Runs the `cairn` binary with `args`; whether it succeeded, and what it printed.
pub fn cairn_cli(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(args)
        .output()
        .expect("run cairn");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// One shard as `CAIRN.PLACEMENT MAP` lists it: (shard, leader, voters, learners).
pub type Placed = (u64, Option<u64>, Vec<u64>, Vec<u64>);

/// Which nodes hold each shard, as node `port` knows it.
pub fn placement_map(port: u16) -> Option<Vec<Placed>> {
    let Some(Answer::Array(rows)) = Conn::open(port)?.call(&[b"CAIRN.PLACEMENT", b"MAP"]) else {
        return None;
    };
    let ids = |a: &Answer| match a {
        Answer::Array(items) => items
            .iter()
            .map(|i| match i {
                Answer::Int(n) => Some(*n as u64),
                _ => None,
            })
            .collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    rows.iter()
        .map(|row| match row {
            Answer::Array(cells) if cells.len() == 4 => {
                let shard = match &cells[0] {
                    Answer::Int(n) => *n as u64,
                    _ => return None,
                };
                let leader = match &cells[1] {
                    Answer::Int(n) => Some(*n as u64),
                    _ => None,
                };
                Some((shard, leader, ids(&cells[2])?, ids(&cells[3])?))
            }
            _ => None,
        })
        .collect()
}

/// How many shard replicas node `id` holds in `map`.
pub fn replicas_on(map: &[Placed], id: u64) -> usize {
    map.iter()
        .filter(|(_, _, v, l)| v.contains(&id) || l.contains(&id))
        .count()
}

/// Node `port`'s placement map once `settled` holds for it (a node learns the shards it does
/// not hold from their leaders, a moment after each change), within 15 s.
pub fn wait_map(port: u16, settled: impl Fn(&[Placed]) -> bool) -> Vec<Placed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let map = placement_map(port).unwrap_or_default();
        let known = !map.is_empty() && map.iter().all(|(_, l, v, _)| l.is_some() && !v.is_empty());
        if known && settled(&map) {
            return map;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "placement never settled: {map:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A writer through node `port`: SETs of new keys `w:0`, `w:1`, ... until `stop` (at most a
/// million). Returns the keys acknowledged and how many writes were not: a leadership change
/// while a write waited (`-UNCERTAIN`: it may or may not have applied) or a request that was
/// not proposed (`-TRYAGAIN`). Any other answer fails the test.
pub fn unique_writes(
    port: u16,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(Vec<String>, usize)> {
    std::thread::spawn(move || {
        let mut c = Conn::open(port).unwrap();
        let (mut acked, mut unknown) = (Vec::new(), 0);
        for i in 0..1_000_000 {
            if stop.load(std::sync::atomic::Ordering::Relaxed) {
                break;
            }
            let k = format!("w:{i}");
            match c.call(&[b"SET", k.as_bytes(), b"v"]) {
                Some(Answer::Ok) => acked.push(k),
                Some(Answer::Error(e))
                    if e.starts_with("UNCERTAIN") || e.starts_with("TRYAGAIN") =>
                {
                    unknown += 1
                }
                other => panic!("{k}: {other:?}"),
            }
        }
        (acked, unknown)
    })
}

/// Keeps moving the slots of `keys` to random shards of `1..=shards` (`CAIRN.RESHARD MOVE`
/// through random nodes) until `stop`: the slot moves a fault test runs beside its faults.
/// Returns the slots moved and the moves that failed or whose outcome is unknown.
pub fn mover(
    ports: Vec<u16>,
    shards: u64,
    keys: Vec<Vec<u8>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seed: u64,
) -> (i64, u64) {
    let mut choices = cairn_check::seeded::XorShift::new(seed);
    let (mut moved, mut failed) = (0, 0);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100 + choices.next_u64() % 400));
        let rng = choices.next_u64();
        let key = &keys[(rng % keys.len() as u64) as usize];
        let slot = cairn_store::slot::key_slot(key).to_string();
        let to = ((rng >> 8) % shards + 1).to_string();
        let Some(mut c) = Conn::open(ports[((rng >> 16) % ports.len() as u64) as usize]) else {
            continue;
        };
        let args: [&[u8]; 5] = [
            b"CAIRN.RESHARD",
            b"MOVE",
            slot.as_bytes(),
            slot.as_bytes(),
            to.as_bytes(),
        ];
        match c.call(&args) {
            Some(Answer::Int(n)) => moved += n,
            _ => failed += 1,
        }
    }
    (moved, failed)
}

/// What [`strike`] did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Struck {
    Kill,
    Pause,
    /// Links cut (all of them when at least one could be).
    Cut(bool),
}

/// One fault on node `victim`, over in about a second or two: kill -9 then restart
/// (`kind` 0), SIGSTOP then SIGCONT (1), or (2) the links to `cut` cut and then mended (mending
/// is retried: a node is never left cut off for the rest of a run). `next` gives randomness.
pub fn strike(
    cluster: &mut Cluster,
    victim: usize,
    kind: u64,
    cut: &[usize],
    next: &mut impl FnMut() -> u64,
) -> Struck {
    match kind {
        0 => {
            cluster.kill9(victim);
            std::thread::sleep(Duration::from_millis(300 + next() % 700));
            cluster.start(victim);
            Struck::Kill
        }
        1 => {
            cluster.signal(victim, "-STOP");
            std::thread::sleep(Duration::from_millis(300 + next() % 1200));
            cluster.signal(victim, "-CONT");
            Struck::Pause
        }
        _ => {
            let all = cut.iter().all(|&o| cluster.set_link(victim, o, true));
            std::thread::sleep(Duration::from_millis(500 + next() % 1500));
            for &o in cut {
                for _ in 0..20 {
                    if cluster.set_link(victim, o, false) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Struck::Cut(all)
        }
    }
}
