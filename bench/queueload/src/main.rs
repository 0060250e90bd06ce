//! queueload: queue workloads against a RESP server (cairn or Redis), for bench/queues.sh.
//!
//!   queueload --port P --op xadd|xreadgroup|lpush-brpop|publish|set-events [--clients 50] [--secs 10]
//!             [--subscribers 100]
//!
//! - `xadd`: each client XADDs to one of four streams, one request at a time.
//! - `xreadgroup`: the stream is filled first; each client reads one entry through the group
//!   (XREADGROUP COUNT 1) and acknowledges it (XACK): one operation is the pair.
//! - `lpush-brpop`: half the clients LPUSH timestamped jobs, half BRPOP them; an operation is
//!   a pop, its latency the time from the push's start to the pop's reply.
//! - `publish`: `--subscribers` connections SUBSCRIBE to one channel, the clients PUBLISH
//!   timestamped messages; an operation is one message delivered to one subscriber, its latency
//!   from the publish's start to the delivery.
//! - `set-events`: keyspace notifications. `notify-keyspace-events` is set to `E$`,
//!   `--subscribers` connections SUBSCRIBE to `__keyevent@0__:set`, the clients SET keys named
//!   by the time; an operation is one notification delivered, its latency from the SET's start
//!   to the delivery. The setting is turned off again at the end.
//!
//! Prints one CSV line: `op,ops_per_sec,p50_ms,p99_ms,errors`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

struct Args {
    port: u16,
    op: String,
    clients: usize,
    secs: u64,
    subscribers: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        port: 0,
        op: String::new(),
        clients: 50,
        secs: 10,
        subscribers: 100,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--port" => a.port = value.parse().map_err(bad)?,
            "--op" => a.op = value.clone(),
            "--clients" => a.clients = value.parse().map_err(bad)?,
            "--secs" => a.secs = value.parse().map_err(bad)?,
            "--subscribers" => a.subscribers = value.parse().map_err(bad)?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    let ops = ["xadd", "xreadgroup", "lpush-brpop", "publish", "set-events"];
    if a.port == 0
        || !ops.contains(&a.op.as_str())
        || a.clients < 2
        || a.clients > 1000
        || a.secs == 0
        || a.secs > 600
        || a.subscribers > 1000
    {
        return Err("usage: queueload --port P --op xadd|xreadgroup|lpush-brpop|publish|set-events [--clients 2..1000] [--secs 1..600] [--subscribers 0..1000]".into());
    }
    Ok(a)
}

/// A RESP reply, as much as the workloads need.
#[derive(Debug)]
enum Value {
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Value>>),
    Error,
    Other,
}

struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    fn open(port: u16) -> Conn {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).unwrap();
        Conn {
            r: BufReader::new(s.try_clone().unwrap()),
            w: s,
        }
    }

    fn send(&mut self, args: &[&[u8]]) {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.w.write_all(&req).expect("send");
    }

    fn read(&mut self) -> Value {
        let mut line = Vec::new();
        self.r.read_until(b'\n', &mut line).expect("read");
        let text = String::from_utf8_lossy(&line[1..line.len() - 2]).to_string();
        match line[0] {
            b'-' => Value::Error,
            b'$' => {
                let n: i64 = text.parse().unwrap();
                if n < 0 {
                    return Value::Bulk(None);
                }
                let mut data = vec![0; n as usize + 2];
                std::io::Read::read_exact(&mut self.r, &mut data).unwrap();
                data.truncate(n as usize);
                Value::Bulk(Some(data))
            }
            b'*' | b'>' => {
                let n: i64 = text.parse().unwrap();
                if n < 0 {
                    return Value::Array(None);
                }
                Value::Array(Some((0..n).map(|_| self.read()).collect()))
            }
            b'_' => Value::Array(None),
            _ => Value::Other,
        }
    }

    fn call(&mut self, args: &[&[u8]]) -> Value {
        self.send(args);
        self.read()
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// The first bulk string found depth-first (an entry ID, a popped job, a message body).
fn bulks(v: &Value, out: &mut Vec<Vec<u8>>) {
    match v {
        Value::Bulk(Some(b)) => out.push(b.clone()),
        Value::Array(Some(items)) => items.iter().for_each(|i| bulks(i, out)),
        _ => {}
    }
}

#[derive(Default)]
struct Tally {
    latencies_us: Vec<u64>,
    errors: u64,
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    let port = a.port;
    // Setup for each workload.
    let mut setup = Conn::open(port);
    match a.op.as_str() {
        "xreadgroup" => {
            let _ = setup.call(&[b"DEL", b"qs"]);
            let _ = setup.call(&[b"XGROUP", b"CREATE", b"qs", b"g", b"$", b"MKSTREAM"]);
        }
        "lpush-brpop" => {
            let _ = setup.call(&[b"DEL", b"jobs"]);
        }
        "set-events" => {
            let _ = setup.call(&[b"CONFIG", b"SET", b"notify-keyspace-events", b"E$"]);
        }
        _ => {}
    }
    let channel: &[u8] = if a.op == "publish" {
        b"news"
    } else {
        b"__keyevent@0__:set"
    };
    if a.op == "publish" || a.op == "set-events" {
        for _ in 0..a.subscribers {
            let (tally, stop, measuring) = (tally.clone(), stop.clone(), measuring.clone());
            let mut c = Conn::open(port);
            c.call(&[b"SUBSCRIBE", channel]);
            c.w.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            threads.push(std::thread::spawn(move || {
                let mut local = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let mut line = Vec::new();
                    if c.r.read_until(b'\n', &mut line).is_err() || line.is_empty() {
                        continue;
                    }
                    // "*3" then "$7 message", "$n channel", "$n body": read the rest.
                    let mut parts = Vec::new();
                    for _ in 0..6 {
                        let mut l = Vec::new();
                        if c.r.read_until(b'\n', &mut l).is_err() {
                            break;
                        }
                        parts.push(l);
                    }
                    let body = parts
                        .get(5)
                        .map(|l| String::from_utf8_lossy(l).trim().to_string());
                    if let Some(sent) = body.and_then(|b| b.parse::<u64>().ok()) {
                        if measuring.load(Ordering::Relaxed) {
                            local.push(now_us().saturating_sub(sent));
                        }
                    }
                }
                tally.lock().unwrap().latencies_us.extend(local);
            }));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let popping = a.clients / 2;
    for i in 0..a.clients {
        let (tally, stop, measuring, op) =
            (tally.clone(), stop.clone(), measuring.clone(), a.op.clone());
        threads.push(std::thread::spawn(move || {
            let mut c = Conn::open(port);
            let mut local = Vec::new();
            let mut errors = 0;
            let name = format!("c{i}").into_bytes();
            let stream = format!("q{}", i % 4).into_bytes();
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ts = now_us().to_string().into_bytes();
                let ok = match op.as_str() {
                    "xadd" => matches!(
                        c.call(&[b"XADD", &stream, b"*", b"f", b"v"]),
                        Value::Bulk(Some(_))
                    ),
                    "xreadgroup" => {
                        // Keep the stream supplied: every client adds one, then takes one.
                        c.call(&[b"XADD", b"qs", b"*", b"f", b"v"]);
                        let got = c.call(&[
                            b"XREADGROUP",
                            b"GROUP",
                            b"g",
                            &name,
                            b"COUNT",
                            b"1",
                            b"STREAMS",
                            b"qs",
                            b">",
                        ]);
                        let mut found = Vec::new();
                        bulks(&got, &mut found);
                        match found.get(1) {
                            Some(id) => {
                                !matches!(c.call(&[b"XACK", b"qs", b"g", id]), Value::Error)
                            }
                            None => false,
                        }
                    }
                    "lpush-brpop" if i < popping => match c.call(&[b"BRPOP", b"jobs", b"1"]) {
                        Value::Array(Some(kv)) => {
                            if let Some(Value::Bulk(Some(job))) = kv.get(1) {
                                let sent: u64 = String::from_utf8_lossy(job).parse().unwrap_or(0);
                                if measuring.load(Ordering::Relaxed) {
                                    local.push(now_us().saturating_sub(sent));
                                }
                            }
                            continue;
                        }
                        Value::Array(None) => continue,
                        _ => false,
                    },
                    "lpush-brpop" => {
                        let ok = !matches!(c.call(&[b"LPUSH", b"jobs", &ts]), Value::Error);
                        if ok {
                            continue; // pushes are not counted: pops are
                        }
                        false
                    }
                    "publish" => {
                        let ok = !matches!(c.call(&[b"PUBLISH", b"news", &ts]), Value::Error);
                        if ok {
                            continue; // deliveries are counted by the subscribers
                        }
                        false
                    }
                    "set-events" => {
                        let ok = !matches!(c.call(&[b"SET", &ts, b"v"]), Value::Error);
                        if ok {
                            continue; // notifications are counted by the subscribers
                        }
                        false
                    }
                    _ => unreachable!("checked"),
                };
                if !measuring.load(Ordering::Relaxed) {
                    continue;
                }
                if ok {
                    local.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            let mut t = tally.lock().unwrap();
            t.latencies_us.extend(local);
            t.errors += errors;
        }));
    }
    // One second of warm-up, then the measured window.
    std::thread::sleep(Duration::from_secs(1));
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(a.secs));
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    if a.op == "set-events" {
        let _ = setup.call(&[b"CONFIG", b"SET", b"notify-keyspace-events", b""]);
    }
    let mut t = tally.lock().unwrap();
    t.latencies_us.sort_unstable();
    let n = t.latencies_us.len();
    let pct = |p: f64| {
        if n == 0 {
            0.0
        } else {
            t.latencies_us[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0
        }
    };
    println!(
        "{},{:.0},{:.3},{:.3},{}",
        a.op,
        n as f64 / a.secs as f64,
        pct(0.50),
        pct(0.99),
        t.errors
    );
}
