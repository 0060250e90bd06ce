//! `cairn cluster backup` and `cairn cluster restore`.
//!
//! Backup asks each shard's leader for `CAIRN.BACKUP <shard>`: every key the shard serves, as
//! of one point of its log that follows everything acknowledged before the request (a read
//! barrier), with its remaining TTL and Redis's DUMP payload. One file per shard
//! (`shard-<id>.cbk`) and a `manifest.json` go into the directory. Shards are taken one after
//! another: each is consistent in itself, and the whole backup holds every write acknowledged
//! before it began (keys written during it may or may not be in it).
//!
//! Restore sends each key to a cluster (a new one, usually) as `RESTORE key ttl payload
//! REPLACE`, pipelined; the cluster routes each to the shard that owns its slot there, so the
//! new cluster may have any number of shards.
//!
//! `REDISCLI_AUTH` (as redis-cli reads it) is sent as AUTH first when set.
//!
//! File format: `CAIRNBK1\n`, then per key: key length (u32 LE), key, PTTL in ms (i64 LE, -1
//! for none), payload length (u32 LE), payload.

use anyhow::Context;
use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

const MAGIC: &[u8] = b"CAIRNBK1\n";
/// The largest reply a backup reads (a shard's keys, in one reply).
const MAX_REPLY: usize = 4 << 30;

#[derive(Debug)]
enum Frame {
    Status,
    Error(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Frame>),
}

fn read_frame(r: &mut impl BufRead, depth: usize) -> anyhow::Result<Frame> {
    anyhow::ensure!(depth < 4, "reply nested too deeply");
    let mut line = String::new();
    r.read_line(&mut line)?;
    anyhow::ensure!(line.ends_with("\r\n"), "connection closed mid-reply");
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Frame::Status,
        "-" => Frame::Error(rest.to_string()),
        ":" => Frame::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                return Ok(Frame::Bulk(None));
            }
            anyhow::ensure!((n as usize) < MAX_REPLY, "reply too large");
            let mut buf = vec![0; n as usize + 2];
            r.read_exact(&mut buf)?;
            buf.truncate(n as usize);
            Frame::Bulk(Some(buf))
        }
        "*" => {
            let n: i64 = rest.parse()?;
            anyhow::ensure!((n as usize) < MAX_REPLY / 8, "reply too large");
            let mut items = Vec::with_capacity((n.max(0) as usize).min(1 << 20));
            for _ in 0..n.max(0) {
                items.push(read_frame(r, depth + 1)?);
            }
            Frame::Array(items)
        }
        other => anyhow::bail!("unexpected reply type {other:?}"),
    })
}

fn request(args: &[&[u8]]) -> Vec<u8> {
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.to_vec()).collect();
    cairn_server::replicated::encode_request(&args)
}

/// A connection, logged in with `REDISCLI_AUTH` when it is set.
fn connect(addr: SocketAddr) -> anyhow::Result<(BufReader<TcpStream>, TcpStream)> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(s.try_clone()?);
    let mut writer = s;
    if let Ok(password) = std::env::var("REDISCLI_AUTH") {
        writer.write_all(&request(&[b"AUTH", password.as_bytes()]))?;
        if let Frame::Error(e) = read_frame(&mut reader, 0)? {
            anyhow::bail!("AUTH on {addr}: {e}");
        }
    }
    Ok((reader, writer))
}

/// `cairn cluster backup`: every shard to `dir`.
pub fn backup(addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let started = crate::cluster::now_ms();
    let shards = crate::cluster::placement(addr)?;
    let addrs = crate::cluster::member_addrs(addr)?;
    let mut manifest = Vec::new();
    for (shard, leader) in &shards {
        // Asked of the leader itself when known: no relay in between to hold the reply.
        let at = leader.and_then(|l| addrs.get(&l).copied()).unwrap_or(addr);
        let (mut r, mut w) = connect(at)?;
        w.write_all(&request(&[b"CAIRN.BACKUP", shard.to_string().as_bytes()]))?;
        let reply = read_frame(&mut r, 0)?;
        let Frame::Array(parts) = reply else {
            anyhow::bail!("shard {shard}: {reply:?}");
        };
        let [Frame::Int(index), Frame::Int(count), Frame::Array(items)] = parts.as_slice() else {
            anyhow::bail!("shard {shard}: unexpected reply shape");
        };
        let path = dir.join(format!("shard-{shard}.cbk"));
        let mut out = BufWriter::new(std::fs::File::create(&path)?);
        out.write_all(MAGIC)?;
        for kv in items.chunks(3) {
            let [Frame::Bulk(Some(key)), Frame::Int(ttl), Frame::Bulk(Some(payload))] = kv else {
                anyhow::bail!("shard {shard}: unexpected entry");
            };
            out.write_all(&(key.len() as u32).to_le_bytes())?;
            out.write_all(key)?;
            out.write_all(&ttl.to_le_bytes())?;
            out.write_all(&(payload.len() as u32).to_le_bytes())?;
            out.write_all(payload)?;
        }
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        println!(
            "shard {shard}: {count} keys as of log index {index} -> {}",
            path.display()
        );
        manifest.push(format!(
            "{{\"shard\": {shard}, \"index\": {index}, \"keys\": {count}, \"file\": \"shard-{shard}.cbk\"}}"
        ));
    }
    let text = format!(
        "{{\"started_ms\": {started}, \"shards\": [{}]}}\n",
        manifest.join(", ")
    );
    std::fs::write(dir.join("manifest.json"), text)?;
    println!("backup of {} shards in {}", shards.len(), dir.display());
    Ok(())
}

/// A backed-up key: its name, PTTL in ms (-1: none) and DUMP payload.
type Entry = (Vec<u8>, i64, Vec<u8>);

/// The longest key or payload a backup file may hold (Redis's proto-max-bulk-len): a
/// damaged length field is refused, not allocated.
const MAX_FIELD: usize = 512 << 20;

/// The entries of one backup file, read a batch at a time: restoring a shard holds one
/// batch in memory, not the shard.
struct Entries {
    r: BufReader<std::fs::File>,
    path: std::path::PathBuf,
}

impl Entries {
    fn open(path: &Path) -> anyhow::Result<Entries> {
        let mut r = BufReader::new(std::fs::File::open(path)?);
        let mut magic = vec![0; MAGIC.len()];
        r.read_exact(&mut magic)?;
        anyhow::ensure!(magic == MAGIC, "{} is not a cairn backup", path.display());
        Ok(Entries {
            r,
            path: path.to_path_buf(),
        })
    }

    fn field(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.r.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        anyhow::ensure!(
            len <= MAX_FIELD,
            "{}: a field of {len} bytes (damaged?)",
            self.path.display()
        );
        let mut out = vec![0; len];
        self.r.read_exact(&mut out)?;
        Ok(out)
    }

    /// Up to `n` entries; empty at the end of the file.
    fn batch(&mut self, n: usize) -> anyhow::Result<Vec<Entry>> {
        let mut out = Vec::new();
        while out.len() < n {
            if self.r.fill_buf()?.is_empty() {
                break;
            }
            let key = self.field()?;
            let mut ttl = [0u8; 8];
            self.r.read_exact(&mut ttl)?;
            let payload = self.field()?;
            out.push((key, i64::from_le_bytes(ttl), payload));
        }
        Ok(out)
    }
}

/// `cairn cluster restore`: every key of the backup in `dir` into the cluster at `addr`.
pub fn restore(addr: SocketAddr, dir: &Path) -> anyhow::Result<()> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cbk"))
        .collect();
    files.sort();
    anyhow::ensure!(!files.is_empty(), "no shard files in {}", dir.display());
    let (mut r, mut w) = connect(addr)?;
    let mut total = 0;
    for path in &files {
        let mut keys = Entries::open(path)?;
        let mut done = 0;
        loop {
            let batch = keys.batch(200)?;
            if batch.is_empty() {
                break;
            }
            let mut bytes = Vec::new();
            for (key, ttl, payload) in &batch {
                let ttl = (*ttl).max(0).to_string();
                bytes.extend(request(&[
                    b"RESTORE",
                    key,
                    ttl.as_bytes(),
                    payload,
                    b"REPLACE",
                ]));
            }
            w.write_all(&bytes)?;
            for (key, _, _) in &batch {
                if let Frame::Error(e) = read_frame(&mut r, 0)? {
                    anyhow::bail!("RESTORE {}: {e}", String::from_utf8_lossy(key));
                }
            }
            done += batch.len();
            print!("\r{}: {done} keys", path.display());
            std::io::stdout().flush()?;
        }
        println!();
        total += done;
    }
    println!("restored {total} keys from {} shard files", files.len());
    Ok(())
}
