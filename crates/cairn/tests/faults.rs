//! Fault injection over real processes: three `cairn server` processes form a replicated
//! cluster; client threads SET and GET a few keys through random nodes while a nemesis
//! `kill -9`s nodes (restarting them from their disks), freezes them (SIGSTOP/SIGCONT), and cuts
//! links between them (`DEBUG NETWORK CUT`, a fault hook in the cluster bus): one link, or every
//! link of one node (isolating it, often the leader, from the majority).
//! At the end every node is killed at once and restarted, and final reads join the history.
//! The whole history must be linearizable: no acknowledged write lost, no stale read.
//!
//! Prints its seed. A short run is part of the test suite; a long one:
//! `CAIRN_FAULT_SECS=300 CAIRN_FAULT_SEED=<seed> cargo test --release -p cairn --test faults -- --nocapture`

use cairn_check::{linearizable, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Proc {
    port: u16,
    child: Option<Child>,
}

struct Cluster {
    procs: Vec<Proc>,
    initial: String,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn new() -> Cluster {
        let ports = pick_ports(3);
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}=127.0.0.1:{}", i + 1, p + 10000))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = Cluster {
            procs: ports
                .into_iter()
                .map(|port| Proc { port, child: None })
                .collect(),
            initial,
            dir: tempfile::tempdir().unwrap(),
        };
        for i in 0..3 {
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: usize) {
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
            .arg("--data-dir")
            .arg(self.dir.path().join(format!("node{}", i + 1)))
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start cairn");
        self.procs[i].child = Some(child);
    }

    fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, i: usize, sig: &str) {
        if let Some(c) = &self.procs[i].child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    /// Cuts (or mends) the link between nodes `a` and `b` at both ends. Returns whether both
    /// ends took it (a node that is down has no links to cut).
    fn set_link(&self, a: usize, b: usize, cut: bool) -> bool {
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
    }
}

fn pick_ports(n: usize) -> Vec<u16> {
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

/// A minimal RESP client: one command, one reply (simple, error, integer or bulk).
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

#[derive(Debug)]
enum Answer {
    Ok,
    Value(Option<Vec<u8>>),
    Error(String),
}

impl Conn {
    fn open(port: u16) -> Option<Conn> {
        let s =
            TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(4))).ok()?;
        s.set_nodelay(true).ok()?;
        Some(Conn {
            reader: BufReader::new(s.try_clone().ok()?),
            writer: s,
        })
    }

    fn call(&mut self, args: &[&[u8]]) -> Option<Answer> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req).ok()?;
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line).ok()?;
        let text = String::from_utf8_lossy(line.get(1..line.len().saturating_sub(2))?).to_string();
        match line.first()? {
            b'+' => Some(Answer::Ok),
            b'-' => Some(Answer::Error(text)),
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
            _ => None,
        }
    }
}

type History = Arc<Mutex<Vec<Operation<RegisterInput, RegisterOutput>>>>;

fn client(
    id: u64,
    ports: Vec<u16>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: History,
    seed: u64,
) {
    let mut choices = cairn_check::seeded::XorShift::new(seed);
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 100_000 {
        n += 1;
        let rng = choices.next_u64();
        if conn.is_none() {
            conn = Conn::open(ports[(rng % ports.len() as u64) as usize]);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let key = format!("k{}", rng % 3).into_bytes();
        let c = conn.as_mut().unwrap();
        let call = start.elapsed().as_nanos() as u64;
        if rng.is_multiple_of(2) {
            let value = format!("c{id}-{n}").into_bytes();
            let answer = c.call(&[b"SET", &key, &value]);
            let ret = start.elapsed().as_nanos() as u64;
            let (output, ret) = match answer {
                Some(Answer::Ok) => (Some(RegisterOutput::Ok), Some(ret)),
                // Only errors that say nothing was proposed are definite failures.
                Some(Answer::Error(e))
                    if e.contains("no leader elected")
                        || e.contains("cannot reach the leader")
                        || e.contains("node busy") =>
                {
                    continue
                }
                Some(Answer::Error(_)) => (None, None),
                _ => {
                    conn = None;
                    (None, None)
                }
            };
            history.lock().unwrap().push(Operation {
                key,
                input: RegisterInput::Set(Some(value)),
                output,
                call,
                ret,
            });
        } else {
            match c.call(&[b"GET", &key]) {
                Some(Answer::Value(v)) => {
                    let ret = start.elapsed().as_nanos() as u64;
                    history.lock().unwrap().push(Operation {
                        key,
                        input: RegisterInput::Get,
                        output: Some(RegisterOutput::Value(v)),
                        call,
                        ret: Some(ret),
                    });
                }
                Some(_) => {}
                None => conn = None,
            }
        }
        if n.is_multiple_of(50) {
            conn = None; // move between nodes
        }
    }
}

fn wait_serving(ports: &[u16], within: Duration) {
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

#[test]
fn kill_pause_and_cut_nodes_under_load_history_stays_linearizable() {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_FAULT_SEED");
    let secs: u64 = std::env::var("CAIRN_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    println!("fault test seed {seed}, {secs} s (rerun: CAIRN_FAULT_SEED={seed} cargo test -p cairn --test faults -- --nocapture)");
    let mut cluster = Cluster::new();
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (ports, stop, history) = (ports.clone(), stop.clone(), history.clone());
            std::thread::spawn(move || {
                client(
                    c,
                    ports,
                    start,
                    stop,
                    history,
                    seed ^ ((c + 1) * 0x9E37_79B9),
                )
            })
        })
        .collect();
    let mut rng_gen = cairn_check::seeded::XorShift::new(seed);
    let mut next = move || rng_gen.next_u64();
    let (mut kills, mut pauses, mut cuts) = (0, 0, 0);
    let end = start + Duration::from_secs(secs);
    while Instant::now() + Duration::from_millis(1500) < end {
        std::thread::sleep(Duration::from_millis(400 + next() % 600));
        let victim = (next() % 3) as usize;
        match next() % 4 {
            0 => {
                cluster.kill9(victim);
                kills += 1;
                std::thread::sleep(Duration::from_millis(300 + next() % 700));
                cluster.start(victim);
            }
            1 => {
                cluster.signal(victim, "-STOP");
                pauses += 1;
                std::thread::sleep(Duration::from_millis(300 + next() % 1200));
                cluster.signal(victim, "-CONT");
            }
            cut => {
                // 2: one link; 3: every link of the victim (it is alone, the others a majority).
                let others: Vec<usize> = (0..3).filter(|&o| o != victim).collect();
                let links: Vec<usize> = if cut == 2 {
                    vec![others[(next() % 2) as usize]]
                } else {
                    others
                };
                if links.iter().all(|&o| cluster.set_link(victim, o, true)) {
                    cuts += 1;
                }
                std::thread::sleep(Duration::from_millis(500 + next() % 1500));
                for &o in &links {
                    // Mending is retried: a node is never left cut off for the rest of the run.
                    for _ in 0..20 {
                        if cluster.set_link(victim, o, false) {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            }
        }
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    // Durability: every node dies at once, comes back, and the final reads join the history.
    for i in 0..3 {
        cluster.kill9(i);
    }
    for i in 0..3 {
        cluster.start(i);
    }
    wait_serving(&ports, Duration::from_secs(30));
    let mut h = history.lock().unwrap().clone();
    h.retain(|op| op.key != b"probe");
    let ops = h.len();
    let acknowledged = h
        .iter()
        .filter(|o| matches!(o.output, Some(RegisterOutput::Ok)))
        .count();
    let indeterminate = h.iter().filter(|o| o.output.is_none()).count();
    for k in 0..3 {
        let key = format!("k{k}").into_bytes();
        let mut c = Conn::open(ports[k % 3]).expect("a restarted node answers");
        let call = start.elapsed().as_nanos() as u64;
        let Some(Answer::Value(v)) = c.call(&[b"GET", &key]) else {
            panic!("final read of k{k} failed")
        };
        h.push(Operation {
            key,
            input: RegisterInput::Get,
            output: Some(RegisterOutput::Value(v)),
            call,
            ret: Some(start.elapsed().as_nanos() as u64),
        });
    }
    println!("fault test seed {seed}: {ops} ops ({acknowledged} acknowledged writes, {indeterminate} indeterminate), {kills} kill -9, {pauses} pauses, {cuts} link cuts, then kill -9 of all nodes");
    assert!(ops > 200, "too little traffic ({ops} ops) to mean anything");
    assert!(kills + pauses + cuts >= 3, "the nemesis must have struck");
    let verdict = linearizable(&Register, &h);
    if let Verdict::Violation { key } = &verdict {
        // Keep the evidence: the offending key's history and the nodes' logs and data.
        let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap()).keep();
        let mut dump = String::new();
        for op in h.iter().filter(|o| &o.key == key) {
            dump.push_str(&format!(
                "{:?} {:?} call={} ret={:?}\n",
                op.input, op.output, op.call, op.ret
            ));
        }
        std::fs::write(dir.join("history.txt"), dump).unwrap();
        panic!(
            "seed {seed}: history not linearizable on {:?}; history and node logs kept in {}",
            String::from_utf8_lossy(key),
            dir.display()
        );
    }
}
