//! kvload: a closed-loop load generator for SET/GET-like requests, speaking RESP (cairn, Redis)
//! or etcd's v3 JSON gateway (`/v3/kv/put`, `/v3/kv/range`, HTTP/1.1 keep-alive), so that all
//! three systems can be driven by the same client in one benchmark run.
//!
//!   kvload --proto resp|etcd --port P --op set|get|mset|mget|tx [--clients 50] [--secs 10]
//!          [--keys 100000] [--cluster yes] [--same-slot yes]
//!
//! The multi-key ops (RESP only) name three random keys each: `mset` (MSET of three),
//! `mget` (MGET of three), `tx` (MULTI, INCR of two keys, EXEC). With `--same-slot yes` the
//! keys share a hash tag (`{N}`, one slot, one shard); otherwise they are spread, so that on a
//! sharded cairn most requests are cross-shard transactions.
//!
//! With `--cluster yes` (RESP only) it is a cluster-aware client, as redis-py's RedisCluster
//! is: it reads CLUSTER SLOTS from `--port`, sends each key straight to the node serving its
//! slot (one connection per node per client), and follows `-MOVED` by updating its map.
//!
//! Each client is a thread with one connection sending one request at a time (pipeline 1) on a
//! random key `key:N` with a 3-byte value (redis-benchmark's defaults). Prints one CSV line:
//! `op,ops_per_sec,p50_ms,p99_ms,errors`. etcd reads are linearizable (etcd's default), like
//! cairn's.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, PartialEq)]
enum Op {
    Set,
    Get,
    Mset,
    Mget,
    Tx,
}

struct Args {
    etcd: bool,
    port: u16,
    op: Op,
    same_slot: bool,
    clients: usize,
    secs: u64,
    keys: u64,
    cluster: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        etcd: false,
        port: 0,
        op: Op::Set,
        same_slot: false,
        clients: 50,
        secs: 10,
        keys: 100_000,
        cluster: false,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.chunks(2);
    for pair in &mut it {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let bad = |_| format!("bad value for {flag}: {value}");
        match flag.as_str() {
            "--proto" => a.etcd = value == "etcd",
            "--port" => a.port = value.parse().map_err(bad)?,
            "--op" => {
                a.op = match value.to_ascii_lowercase().as_str() {
                    "set" => Op::Set,
                    "get" => Op::Get,
                    "mset" => Op::Mset,
                    "mget" => Op::Mget,
                    "tx" => Op::Tx,
                    _ => return Err(format!("unknown op {value}")),
                }
            }
            "--same-slot" => a.same_slot = value == "yes",
            "--clients" => a.clients = value.parse().map_err(bad)?,
            "--secs" => a.secs = value.parse().map_err(bad)?,
            "--keys" => a.keys = value.parse().map_err(bad)?,
            "--cluster" => a.cluster = value == "yes",
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    if a.port == 0 || a.clients == 0 || a.clients > 1000 || a.secs == 0 || a.secs > 600 {
        return Err("usage: kvload --proto resp|etcd --port P --op set|get [--clients 1..1000] [--secs 1..600] [--keys N] [--cluster yes]".into());
    }
    Ok(a)
}

/// A small xorshift generator: keys need spread, not quality.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn base64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Redis Cluster's key slot: CRC16 (XMODEM) of the key, or of its first non-empty `{tag}`.
fn key_slot(key: &[u8]) -> usize {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in hashed {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    usize::from(crc) & 16383
}

/// A RESP reply, as much of it as the cluster map needs.
enum Value {
    Int(i64),
    Array(Vec<Value>),
    /// Bulk strings, statuses, errors, nils: the map needs none of their contents.
    Other,
}

fn read_value(r: &mut BufReader<TcpStream>, depth: usize) -> std::io::Result<Value> {
    let bad = || std::io::Error::other("bad reply");
    if depth > 8 {
        return Err(bad());
    }
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    let head = std::str::from_utf8(line.get(1..).unwrap_or_default())
        .map_err(|_| bad())?
        .trim()
        .to_string();
    match line.first() {
        Some(b':') => Ok(Value::Int(head.parse().map_err(|_| bad())?)),
        Some(b'$') => {
            let n: i64 = head.parse().map_err(|_| bad())?;
            if n < 0 {
                return Ok(Value::Other);
            }
            let mut body = vec![0; n as usize + 2];
            r.read_exact(&mut body)?;
            Ok(Value::Other)
        }
        Some(b'*') => {
            let n: i64 = head.parse().map_err(|_| bad())?;
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_value(r, depth + 1)?);
            }
            Ok(Value::Array(items))
        }
        Some(b'+') | Some(b'-') => Ok(Value::Other),
        _ => Err(bad()),
    }
}

/// Slot → the client port of the node serving it, from CLUSTER SLOTS on `port`.
fn slot_map(port: u16) -> std::io::Result<Vec<u16>> {
    let mut c = Conn::open(port)?;
    let req = b"*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n";
    c.writer.write_all(req)?;
    let Value::Array(ranges) = read_value(&mut c.reader, 0)? else {
        return Err(std::io::Error::other(
            "CLUSTER SLOTS did not answer an array",
        ));
    };
    let mut map = vec![0u16; 16384];
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(Value::Int(a)), Some(Value::Int(b)), Some(Value::Array(master))) =
            (parts.first(), parts.get(1), parts.get(2))
        else {
            continue;
        };
        let Some(Value::Int(p)) = master.get(1) else {
            continue;
        };
        let (a, b) = ((*a).max(0) as usize, (*b).clamp(0, 16383) as usize);
        if a <= b {
            map[a..=b].fill(*p as u16);
        }
    }
    if map.contains(&0) {
        return Err(std::io::Error::other("CLUSTER SLOTS left slots unserved"));
    }
    Ok(map)
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    port: u16,
    /// The last error reply's text.
    error: String,
}

impl Conn {
    fn open(port: u16) -> std::io::Result<Conn> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            port,
            error: String::new(),
        })
    }

    fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        let mut req = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            req.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            req.extend_from_slice(a);
            req.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&req)
    }

    /// One RESP request; Ok(false) for an error reply.
    fn resp(&mut self, args: &[&[u8]]) -> std::io::Result<bool> {
        self.send(args)?;
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        match line.first() {
            Some(b'$') => {
                let n: i64 = std::str::from_utf8(&line[1..])
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| std::io::Error::other("bad bulk length"))?;
                if n >= 0 {
                    let mut body = vec![0; n as usize + 2];
                    self.reader.read_exact(&mut body)?;
                }
                Ok(true)
            }
            Some(b'+') | Some(b':') => Ok(true),
            Some(b'-') => {
                self.error = String::from_utf8_lossy(&line[1..]).trim().to_string();
                Ok(false)
            }
            _ => Err(std::io::Error::other("unexpected reply")),
        }
    }

    /// One RESP request whatever its reply's shape; Ok(false) for an error reply.
    fn any(&mut self, args: &[&[u8]]) -> std::io::Result<bool> {
        self.send(args)?;
        let peek = self.reader.fill_buf()?.first().copied();
        read_value(&mut self.reader, 0)?;
        Ok(peek != Some(b'-'))
    }

    /// One POST to etcd's JSON gateway; Ok(false) for a non-200 answer.
    fn post(&mut self, path: &str, body: &str) -> std::io::Result<bool> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.port,
            body.len()
        );
        self.writer.write_all(req.as_bytes())?;
        let mut status = String::new();
        self.reader.read_line(&mut status)?;
        let ok = status.split(' ').nth(1) == Some("200");
        let mut length = None;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                return Err(std::io::Error::other("connection closed"));
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse::<usize>().ok();
            } else if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        if chunked {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| std::io::Error::other("bad chunk size"))?;
                let mut skip = vec![0; n + 2];
                self.reader.read_exact(&mut skip)?;
                if n == 0 {
                    break;
                }
            }
        } else {
            let n = length.ok_or_else(|| std::io::Error::other("no content-length"))?;
            let mut skip = vec![0; n];
            self.reader.read_exact(&mut skip)?;
        }
        Ok(ok)
    }
}

/// How often the cluster client retries a request answered `-TRYAGAIN` (2 ms apart).
const TRYAGAIN_RETRIES: usize = 200;

/// A cluster-aware client (see the module comment) until `until`.
fn cluster_client(a: &Args, seed: u64, until: Instant) -> (Vec<u32>, u64) {
    let (mut lat, mut errors) = (Vec::new(), 0);
    let Ok(mut map) = slot_map(a.port) else {
        return (lat, 1);
    };
    let mut conns: std::collections::HashMap<u16, Conn> = std::collections::HashMap::new();
    let mut rng = Rng(seed | 1);
    while Instant::now() < until {
        let key = format!("key:{:012}", rng.next() % a.keys);
        let slot = key_slot(key.as_bytes());
        let t = Instant::now();
        let mut done = false;
        let mut tries = 0;
        // The first try, one more after a -MOVED, and retries after -TRYAGAIN.
        for _ in 0..2 + TRYAGAIN_RETRIES {
            let port = map[slot];
            let c = match conns.entry(port) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => match Conn::open(port) {
                    Ok(c) => v.insert(c),
                    Err(_) => break,
                },
            };
            let r = if a.op == Op::Set {
                c.resp(&[b"SET", key.as_bytes(), b"xxx"])
            } else {
                c.resp(&[b"GET", key.as_bytes()])
            };
            match r {
                Ok(true) => {
                    done = true;
                    break;
                }
                Ok(false) => {
                    let moved = c
                        .error
                        .strip_prefix("MOVED ")
                        .and_then(|m| m.rsplit(':').next())
                        .and_then(|p| p.parse::<u16>().ok());
                    match moved {
                        Some(p) => map[slot] = p,
                        // A slot being handed over between shards: wait a little and retry,
                        // as cluster clients do (bounded, counted in the latency).
                        None if c.error.starts_with("TRYAGAIN") && tries < TRYAGAIN_RETRIES => {
                            tries += 1;
                            std::thread::sleep(Duration::from_millis(2));
                        }
                        None => break,
                    }
                }
                Err(_) => {
                    conns.remove(&port);
                    if let Ok(fresh) = slot_map(port) {
                        map = fresh;
                    }
                    break;
                }
            }
        }
        if done {
            lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
        } else {
            errors += 1;
        }
    }
    (lat, errors)
}

/// Runs one client until `until`; returns its latencies in microseconds and its error count.
fn client(a: &Args, seed: u64, until: Instant) -> (Vec<u32>, u64) {
    if a.cluster {
        return cluster_client(a, seed, until);
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    let Ok(mut c) = Conn::open(a.port) else {
        return (lat, 1);
    };
    let mut rng = Rng(seed | 1);
    while Instant::now() < until {
        let key = format!("key:{:012}", rng.next() % a.keys);
        // The multi-key ops' three keys: one hash tag, or three random keys.
        let tag = rng.next() % a.keys;
        let keys: Vec<String> = (0..3)
            .map(|i| {
                if a.same_slot {
                    format!("{{{tag}}}:k{i}")
                } else {
                    format!("key:{:012}", rng.next() % a.keys)
                }
            })
            .collect();
        let k = |i: usize| keys[i].as_bytes();
        let t = Instant::now();
        let r = match (a.etcd, a.op) {
            (false, Op::Set) => c.resp(&[b"SET", key.as_bytes(), b"xxx"]),
            (false, Op::Get) => c.resp(&[b"GET", key.as_bytes()]),
            (false, Op::Mset) => c.any(&[b"MSET", k(0), b"xxx", k(1), b"xxx", k(2), b"xxx"]),
            (false, Op::Mget) => c.any(&[b"MGET", k(0), k(1), k(2)]),
            (false, Op::Tx) => c
                .any(&[b"MULTI"])
                .and_then(|_| c.any(&[b"INCR", k(0)]))
                .and_then(|_| c.any(&[b"INCR", k(1)]))
                .and_then(|_| c.any(&[b"EXEC"])),
            (true, Op::Set) => c.post(
                "/v3/kv/put",
                &format!(
                    "{{\"key\":\"{}\",\"value\":\"{}\"}}",
                    base64(key.as_bytes()),
                    base64(b"xxx")
                ),
            ),
            (true, Op::Get) => c.post(
                "/v3/kv/range",
                &format!("{{\"key\":\"{}\"}}", base64(key.as_bytes())),
            ),
            (true, _) => Err(std::io::Error::other("multi-key ops are RESP only")),
        };
        match r {
            Ok(true) => lat.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Ok(false) => errors += 1,
            Err(_) => {
                errors += 1;
                match Conn::open(a.port) {
                    Ok(fresh) => c = fresh,
                    Err(_) => std::thread::sleep(Duration::from_millis(50)),
                }
            }
        }
    }
    (lat, errors)
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let until = start + Duration::from_secs(a.secs);
    let results: Vec<(Vec<u32>, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..a.clients)
            .map(|i| {
                let a = &a;
                s.spawn(move || {
                    client(
                        a,
                        0x9e37_79b9_7f4a_7c15 ^ ((i as u64 + 1) * 0x1000_0001),
                        until,
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = start.elapsed().as_secs_f64();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    let mut lat: Vec<u32> = results.into_iter().flat_map(|r| r.0).collect();
    lat.sort_unstable();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map_or(0.0, |&us| f64::from(us) / 1000.0)
    };
    println!(
        "{},{:.0},{:.3},{:.3},{}",
        match a.op {
            Op::Set => "SET",
            Op::Get => "GET",
            Op::Mset => "MSET",
            Op::Mget => "MGET",
            Op::Tx => "TX",
        },
        lat.len() as f64 / took,
        pct(0.50),
        pct(0.99),
        errors
    );
}
