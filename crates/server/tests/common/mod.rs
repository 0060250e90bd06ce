//! Test helpers: start cairn in-process on a free port, start a real redis-server when one is
//! installed, and talk raw RESP to either so replies can be compared byte for byte.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A cairn server running on its own runtime thread; stopped on drop.
pub struct Cairn {
    pub port: u16,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Cairn {
    pub fn start() -> Cairn {
        Self::start_with(cairn_server::Config::default())
    }

    pub fn start_with(config: cairn_server::Config) -> Cairn {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        Self::start_on(listener, config)
    }

    /// Starts on an already-bound client listener.
    pub fn start_on(listener: std::net::TcpListener, config: cairn_server::Config) -> Cairn {
        Self::start_on_with_bus(listener, None, config)
    }

    /// Starts on an already-bound client listener and, in replicated mode, bus listener.
    pub fn start_on_with_bus(
        listener: std::net::TcpListener,
        bus: Option<std::net::TcpListener>,
        mut config: cairn_server::Config,
    ) -> Cairn {
        let port = listener.local_addr().unwrap().port();
        config.port = port;
        listener.set_nonblocking(true).unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                cairn_server::run_with_bus(config, listener, bus, async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
            });
        });
        Cairn {
            port,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }
}

impl Drop for Cairn {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Client and bus listeners (bus port = client + 10000) for `n` nodes, both held from the
/// moment they are picked (a port checked free and bound later could be taken in between, by
/// another test or an outgoing connection), and the matching `--initial-cluster`.
#[allow(clippy::type_complexity)]
pub fn cluster_ports(
    n: usize,
) -> (
    Vec<(std::net::TcpListener, std::net::TcpListener)>,
    Vec<(u64, std::net::SocketAddr)>,
) {
    'retry: for _ in 0..100 {
        let mut listeners = Vec::new();
        let mut cluster = Vec::new();
        for i in 0..n {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let port = l.local_addr().unwrap().port();
            if port > 55_000 {
                continue 'retry;
            }
            let Ok(bus) = std::net::TcpListener::bind(("127.0.0.1", port + 10000)) else {
                continue 'retry;
            };
            cluster.push((
                i as u64 + 1,
                std::net::SocketAddr::from(([127, 0, 0, 1], port + 10000)),
            ));
            listeners.push((l, bus));
        }
        return (listeners, cluster);
    }
    panic!("no free port pairs");
}

/// A port free a moment ago (for listeners a node binds itself: its TLS or admin port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A replicated cluster of `n` in-process nodes, each with its own data directory, holding
/// the keyspace in one shard: the tests that use it compare replicated behaviour with one
/// Redis (multi-key commands on any keys) or follow "the" leader.
/// Waits (up to 15 s) until node 0 of a started cluster takes a write.
#[allow(dead_code)]
pub fn wait_writable(nodes: &[Option<Cairn>]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while nodes[0].as_ref().unwrap().raw().cmd_str("SET probe x") != b"+OK\r\n" {
        assert!(
            std::time::Instant::now() < deadline,
            "the cluster did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

pub fn start_cluster(n: usize, dirs: &[tempfile::TempDir]) -> Vec<Option<Cairn>> {
    start_cluster_with(n, dirs, 1)
}

/// As [`start_cluster`], with the slots split over `shards` shards.
pub fn start_cluster_with(
    n: usize,
    dirs: &[tempfile::TempDir],
    shards: usize,
) -> Vec<Option<Cairn>> {
    start_cluster_replicas(n, dirs, shards, 3)
}

/// As [`start_cluster_with`], each shard on `replicas` of the nodes.
pub fn start_cluster_replicas(
    n: usize,
    dirs: &[tempfile::TempDir],
    shards: usize,
    replicas: usize,
) -> Vec<Option<Cairn>> {
    start_cluster_configured(n, dirs, |c| {
        c.shards = shards;
        c.replicas = replicas;
    })
}

/// A cluster of `n` in-process nodes, each node's configuration changed by `tweak`.
pub fn start_cluster_configured(
    n: usize,
    dirs: &[tempfile::TempDir],
    tweak: impl Fn(&mut cairn_server::Config),
) -> Vec<Option<Cairn>> {
    let (listeners, cluster) = cluster_ports(n);
    listeners
        .into_iter()
        .enumerate()
        .map(|(i, (l, bus))| {
            let mut config = cairn_server::Config {
                node_id: i as u64 + 1,
                bus_port: cluster[i].1.port(),
                initial_cluster: cluster.clone(),
                data_dir: dirs[i].path().to_path_buf(),
                fault_hooks: true,
                ..Default::default()
            };
            tweak(&mut config);
            Some(Cairn::start_on_with_bus(l, Some(bus), config))
        })
        .collect()
}

/// A real redis-server, if one is on PATH; killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> Option<RedisServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let dir = tempfile::tempdir().ok()?;
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
                "--bind",
                "127.0.0.1",
            ])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(RedisServer {
                    port,
                    child,
                    _dir: dir,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn raw(&self) -> Raw {
        Raw::connect(self.port)
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts redis-server or says loudly why the calling test is skipped.
pub fn redis_or_skip(test: &str) -> Option<RedisServer> {
    let r = RedisServer::start();
    if r.is_none() {
        eprintln!("\n*** SKIPPED {test}: redis-server is not on PATH (apt-get install redis-server) ***\n");
    }
    r
}

/// A raw RESP connection.
pub struct Raw {
    pub reader: BufReader<TcpStream>,
    pub writer: TcpStream,
}

impl Raw {
    pub fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s.set_nodelay(true).unwrap();
        Raw {
            reader: BufReader::new(s.try_clone().unwrap()),
            writer: s,
        }
    }

    pub fn send(&mut self, args: &[&[u8]]) {
        self.writer.write_all(&encode(args)).unwrap();
    }

    /// Sends a command and returns its reply's raw bytes.
    pub fn cmd(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send(args);
        self.read_reply()
    }

    pub fn cmd_str(&mut self, line: &str) -> Vec<u8> {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.cmd(&args)
    }

    /// Reads exactly one reply frame.
    /// Sends a space-separated request without waiting for its reply.
    pub fn send_line(&mut self, line: &str) {
        let args: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
        self.send(&args);
    }

    /// The reply to a space-separated request, as text.
    pub fn reply_text_of(&mut self, line: &str) -> String {
        self.send_line(line);
        self.reply_text()
    }

    /// The next reply, as text.
    pub fn reply_text(&mut self) -> String {
        String::from_utf8_lossy(&self.read_reply()).into_owned()
    }

    pub fn read_reply(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        read_frame(&mut self.reader, &mut out).expect("reply");
        out
    }
}

pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn read_frame(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<()> {
    let mut line = Vec::new();
    r.read_until(b'\n', &mut line)?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    out.extend_from_slice(&line);
    let body = std::str::from_utf8(&line[1..line.len() - 2]).unwrap_or("0");
    match line[0] {
        b'$' | b'=' | b'!' => {
            let n: i64 = body.parse().unwrap();
            if n >= 0 {
                let mut data = vec![0; n as usize + 2];
                r.read_exact(&mut data)?;
                out.extend_from_slice(&data);
            }
        }
        b'*' | b'~' | b'>' => {
            let n: i64 = body.parse().unwrap();
            for _ in 0..n.max(0) {
                read_frame(r, out)?;
            }
        }
        b'%' | b'|' => {
            let n: i64 = body.parse().unwrap();
            for _ in 0..n.max(0) * 2 {
                read_frame(r, out)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// A parsed reply, for comparisons that must ignore order.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Frame {
    Line(u8, Vec<u8>),
    Bulk(u8, Option<Vec<u8>>),
    Agg(u8, Vec<Frame>),
}

pub fn parse(bytes: &[u8]) -> Frame {
    let mut pos = 0;
    parse_at(bytes, &mut pos)
}

fn parse_at(b: &[u8], pos: &mut usize) -> Frame {
    let end = *pos + b[*pos..].windows(2).position(|w| w == b"\r\n").unwrap();
    let kind = b[*pos];
    let body = b[*pos + 1..end].to_vec();
    *pos = end + 2;
    let n = || std::str::from_utf8(&body).unwrap().parse::<i64>().unwrap();
    match kind {
        b'$' | b'=' => {
            let n = n();
            if n < 0 {
                return Frame::Bulk(kind, None);
            }
            let data = b[*pos..*pos + n as usize].to_vec();
            *pos += n as usize + 2;
            Frame::Bulk(kind, Some(data))
        }
        b'*' | b'~' | b'>' | b'%' => {
            let n = n();
            let count = if kind == b'%' { n * 2 } else { n };
            Frame::Agg(kind, (0..count.max(0)).map(|_| parse_at(b, pos)).collect())
        }
        _ => Frame::Line(kind, body),
    }
}

impl Frame {
    /// Sorts this aggregate's items (or key/value pairs when `pairs`), for unordered replies.
    pub fn sorted(self, pairs: bool) -> Frame {
        match self {
            Frame::Agg(k, items) if pairs => {
                let mut p: Vec<(Frame, Frame)> = items
                    .chunks(2)
                    .map(|c| {
                        (
                            c[0].clone(),
                            c.get(1).cloned().unwrap_or(Frame::Line(b'_', vec![])),
                        )
                    })
                    .collect();
                p.sort();
                Frame::Agg(k, p.into_iter().flat_map(|(a, b)| [a, b]).collect())
            }
            Frame::Agg(k, mut items) => {
                items.sort();
                Frame::Agg(k, items)
            }
            other => other,
        }
    }
}
