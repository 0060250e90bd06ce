//! `cairn cluster ...`: administration from the command line, over the client port.
//!
//! `cairn cluster status` asks one node (`-h`/`-p`, as redis-cli) for `INFO raft`, which lists
//! every member's client address, then asks each member in turn and prints one row per node and
//! group: whether it answers, its role, the leader it follows, term, commit and apply indexes,
//! its newest snapshot, and how far its apply index trails the group's highest commit index.

use anyhow::Context;
use clap::{Args, Subcommand};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Args, Debug)]
pub struct ClusterArgs {
    #[command(subcommand)]
    command: ClusterCommand,
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Print every node's role, term, commit and apply index for each Raft group.
    Status(Target),
    /// Add a node (started with --initial-cluster-state existing): as a learner first, then,
    /// once its log has caught up, as a voter.
    AddNode {
        #[command(flatten)]
        target: Target,
        /// The new node's id.
        #[arg(long)]
        id: u64,
        /// The new node's bus address (its client port + 10000).
        #[arg(long)]
        bus: String,
        /// Stop after adding it as a learner.
        #[arg(long)]
        learner_only: bool,
        /// Give up waiting for it to catch up after this many seconds.
        #[arg(long, default_value_t = 120)]
        wait_secs: u64,
    },
    /// Remove a node from the cluster: its shard replicas move to the other nodes first, then
    /// it leaves every group (it hands leadership over first if it leads one).
    RemoveNode {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: u64,
    },
    /// Move leadership to node --id (or, without it, to the most caught-up other voter).
    TransferLeader {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        id: Option<u64>,
    },
    /// Move the slots FIRST..=LAST to shard --to, online (CAIRN.RESHARD MOVE).
    MoveSlots {
        #[command(flatten)]
        target: Target,
        first: u16,
        last: u16,
        #[arg(long)]
        to: u64,
    },
    /// Create a shard and move half of shard SHARD's slots to it (CAIRN.RESHARD SPLIT).
    Split {
        #[command(flatten)]
        target: Target,
        shard: u64,
    },
    /// List the slot moves in progress (CAIRN.RESHARD STATUS).
    Moves(Target),
    /// Even out the number of slots per shard (CAIRN.RESHARD REBALANCE).
    Rebalance(Target),
    /// Even out the shard replicas over the nodes (CAIRN.PLACEMENT REBALANCE).
    RebalanceReplicas(Target),
    /// Move shard SHARD's replica from node --from to node --to (CAIRN.PLACEMENT MOVE).
    MoveReplica {
        #[command(flatten)]
        target: Target,
        shard: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
    },
    /// Which nodes hold each shard, and which one leads it (CAIRN.PLACEMENT MAP).
    Placement(Target),
    /// Write every shard's keys (each shard as of one point of its log) to a directory.
    Backup {
        #[command(flatten)]
        target: Target,
        /// Where the shard files and manifest.json go.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Load a backup into a cluster (usually a new one, of any number of shards).
    Restore {
        #[command(flatten)]
        target: Target,
        /// A directory `cairn cluster backup` wrote.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
}

#[derive(Args, Debug)]
struct Target {
    /// Any node of the cluster.
    #[arg(short = 'H', long = "host", default_value = "127.0.0.1")]
    host: String,
    /// That node's client port.
    #[arg(short, long, default_value_t = 7001)]
    port: u16,
}

impl Target {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.host))?
            .next()
            .context("no address")
    }
}

pub fn run(args: ClusterArgs) -> anyhow::Result<()> {
    match args.command {
        ClusterCommand::Status(t) => {
            print!("{}", status(t.addr()?)?);
            Ok(())
        }
        ClusterCommand::AddNode {
            target,
            id,
            bus,
            learner_only,
            wait_secs,
        } => add_node(target.addr()?, id, &bus, learner_only, wait_secs),
        ClusterCommand::TransferLeader { target, id } => {
            let id = id.map(|i| i.to_string());
            let mut args = vec!["CAIRN.MEMBER", "TRANSFER-LEADER"];
            args.extend(id.as_deref());
            expect_ok(call(target.addr()?, &args)?)?;
            println!("leadership moved");
            Ok(())
        }
        ClusterCommand::MoveSlots {
            target,
            first,
            last,
            to,
        } => {
            let args = [
                "CAIRN.RESHARD",
                "MOVE",
                &first.to_string(),
                &last.to_string(),
                &to.to_string(),
            ];
            match call_within(target.addr()?, &args, MOVE_WITHIN)? {
                Value::Int(n) => println!("moved {n} slots to shard {to}"),
                other => anyhow::bail!("{}", describe(other)),
            }
            Ok(())
        }
        ClusterCommand::Split { target, shard } => {
            let args = ["CAIRN.RESHARD", "SPLIT", &shard.to_string()];
            match call_within(target.addr()?, &args, MOVE_WITHIN)? {
                Value::Array(v) => match v.as_slice() {
                    [Value::Int(id), Value::Int(n)] => {
                        println!("created shard {id} and moved {n} slots of shard {shard} to it")
                    }
                    _ => anyhow::bail!("unexpected answer to SPLIT"),
                },
                other => anyhow::bail!("{}", describe(other)),
            }
            Ok(())
        }
        ClusterCommand::Rebalance(t) => {
            match call_within(t.addr()?, &["CAIRN.RESHARD", "REBALANCE"], MOVE_WITHIN)? {
                Value::Int(n) => println!("moved {n} slots; every shard has its share"),
                other => anyhow::bail!("{}", describe(other)),
            }
            Ok(())
        }
        ClusterCommand::Moves(t) => {
            match call(t.addr()?, &["CAIRN.RESHARD", "STATUS"])? {
                Value::Array(lines) if lines.is_empty() => println!("no slot moves in progress"),
                Value::Array(lines) => {
                    for l in lines {
                        if let Value::Bulk(b) = l {
                            println!("{}", String::from_utf8_lossy(&b));
                        }
                    }
                }
                other => anyhow::bail!("{}", describe(other)),
            }
            Ok(())
        }
        ClusterCommand::RemoveNode { target, id } => remove_node(target.addr()?, id),
        ClusterCommand::RebalanceReplicas(t) => {
            match call_within(t.addr()?, &["CAIRN.PLACEMENT", "REBALANCE"], MOVE_WITHIN)? {
                Value::Int(n) => println!("moved {n} replicas; every node has its share"),
                other => anyhow::bail!("{}", describe(other)),
            }
            Ok(())
        }
        ClusterCommand::MoveReplica {
            target,
            shard,
            from,
            to,
        } => {
            let args = [
                "CAIRN.PLACEMENT",
                "MOVE",
                &shard.to_string(),
                &from.to_string(),
                &to.to_string(),
            ];
            expect_ok(call_within(target.addr()?, &args, MOVE_WITHIN)?)?;
            println!("shard {shard}'s replica moved from node {from} to node {to}");
            Ok(())
        }
        ClusterCommand::Backup { target, dir } => crate::backup::backup(target.addr()?, &dir),
        ClusterCommand::Restore { target, dir } => crate::backup::restore(target.addr()?, &dir),
        ClusterCommand::Placement(t) => {
            let rows = match call(t.addr()?, &["CAIRN.PLACEMENT", "MAP"])? {
                Value::Array(rows) => rows,
                other => anyhow::bail!("{}", describe(other)),
            };
            println!("{:<6} {:<7} {:<16} learners", "shard", "leader", "voters");
            for row in rows {
                let Value::Array(cells) = row else { continue };
                let ids = |v: &Value| match v {
                    Value::Array(items) => items
                        .iter()
                        .filter_map(|i| match i {
                            Value::Int(n) => Some(n.to_string()),
                            _ => None,
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                    _ => String::new(),
                };
                if let [Value::Int(g), leader, voters, learners] = cells.as_slice() {
                    let leader = match leader {
                        Value::Int(l) => l.to_string(),
                        _ => "-".into(),
                    };
                    println!("{g:<6} {leader:<7} {:<16} {}", ids(voters), ids(learners));
                }
            }
            Ok(())
        }
    }
}

/// Removes node `id` through the member at `addr`: moves its shard replicas to the other
/// nodes, then takes it out of every group still listing it and of the meta group.
pub fn remove_node(addr: SocketAddr, id: u64) -> anyhow::Result<()> {
    let ids = id.to_string();
    // A drain plans from what the shards' leaders said; one that ran while a leader was being
    // elected may leave a replica behind, which the removal then refuses: drain again.
    for attempt in 1..=5 {
        match call_within(addr, &["CAIRN.PLACEMENT", "DRAIN", &ids], MOVE_WITHIN)? {
            Value::Int(n) => println!("moved {n} replicas off node {id}"),
            Value::Error(e) if attempt < 5 => {
                eprintln!("draining node {id}: {e}; again");
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            other => anyhow::bail!("{}", describe(other)),
        }
        let was_voter = members(addr)?
            .iter()
            .any(|(m, voter, _)| *m == id && *voter);
        match call(addr, &["CAIRN.MEMBER", "REMOVE", &ids])? {
            Value::Error(e)
                if attempt < 5 && (e.contains("still holds") || e.starts_with("TRYAGAIN")) =>
            {
                eprintln!("removing node {id}: {e}; again");
                std::thread::sleep(Duration::from_secs(1));
            }
            other => {
                expect_ok(other)?;
                println!("node {id} removed");
                // A learner of the meta group takes the voter's place.
                let learner = members(addr)?.into_iter().find(|(_, voter, _)| !*voter);
                if let Some((l, _, _)) = learner.filter(|_| was_voter) {
                    let l = l.to_string();
                    expect_ok(call(addr, &["CAIRN.MEMBER", "PROMOTE", &l, "SHARD", "0"])?)?;
                    println!("node {l} is now a voter of the meta group");
                }
                return Ok(());
            }
        }
    }
    anyhow::bail!("node {id} could not be removed")
}

/// Adds node `id` (bus address `bus`) through the member at `addr`: to the meta group as a
/// learner, then, once its log has caught up, as a voter (unless `learner_only`); then moves
/// shard replicas to it until every node holds its share.
pub fn add_node(
    addr: SocketAddr,
    id: u64,
    bus: &str,
    learner_only: bool,
    wait: u64,
) -> anyhow::Result<()> {
    let ids = id.to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(wait);
    expect_ok(call_until(
        addr,
        &["CAIRN.MEMBER", "ADD-LEARNER", &ids, bus],
        deadline,
    )?)?;
    println!("node {id} added as a learner; waiting for its log to catch up");
    if learner_only {
        return Ok(());
    }
    wait_caught_up(addr, id, "0", deadline, wait)?;
    eprintln!();
    // The meta group does little work but every voter slows its commits: at most five vote,
    // the other nodes follow it as learners (they are members of the cluster all the same).
    let voters = members(addr)?
        .iter()
        .filter(|(m, voter, _)| *voter && *m != id)
        .count();
    if voters < META_VOTERS {
        expect_ok(call_until(
            addr,
            &["CAIRN.MEMBER", "PROMOTE", &ids, "SHARD", "0"],
            deadline,
        )?)?;
        println!("node {id} caught up and is now a voter; moving replicas to it");
    } else {
        println!("node {id} caught up (the meta group has {voters} voters: it stays a learner there); moving replicas to it");
    }
    match call_within(addr, &["CAIRN.PLACEMENT", "REBALANCE"], MOVE_WITHIN)? {
        Value::Int(n) => println!("moved {n} replicas; every node has its share"),
        other => anyhow::bail!("{}", describe(other)),
    }
    Ok(())
}

/// Waits until node `id` has caught up in `group`.
fn wait_caught_up(
    addr: SocketAddr,
    id: u64,
    group: &str,
    deadline: std::time::Instant,
    wait: u64,
) -> anyhow::Result<()> {
    loop {
        // [id, role, address, matched] per member, from the group's leader.
        let rows = match call(addr, &["CAIRN.MEMBER", "LIST", "SHARD", group])? {
            Value::Array(rows) => rows,
            // An election in progress (a leader killed or paused): ask again.
            Value::Error(e) if e.starts_with("TRYAGAIN") => Vec::new(),
            other => anyhow::bail!("unexpected CAIRN.MEMBER LIST reply: {other:?}"),
        };
        let mut voters_min = u64::MAX;
        let mut mine = None;
        for row in rows {
            if let Value::Array(cells) = row {
                if let [Value::Int(m), Value::Bulk(role), _, Value::Int(matched)] = cells.as_slice()
                {
                    let matched = (*matched).max(0) as u64;
                    if *m as u64 == id {
                        mine = Some(matched);
                    } else if role == b"voter" {
                        voters_min = voters_min.min(matched);
                    }
                }
            }
        }
        match mine {
            Some(mine) if mine >= voters_min => break,
            Some(mine) => {
                eprint!("\r  group {group}: node {id} at index {mine} of {voters_min}   ")
            }
            // The leader that answered may be one that has just lost (or not yet applied)
            // the change: ask again until the deadline.
            None => eprint!("\r  group {group}: node {id} not listed yet   "),
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "node {id} did not catch up within {wait} s; it stays a learner (is it running with --initial-cluster-state existing?)"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// The members of the cluster that `addr` belongs to, as its meta group lists them: (id,
/// whether it votes, client address).
pub fn members(addr: SocketAddr) -> anyhow::Result<Vec<(u64, bool, SocketAddr)>> {
    let rows = match call(addr, &["CAIRN.MEMBER", "LIST"])? {
        Value::Array(rows) => rows,
        other => anyhow::bail!("{}", describe(other)),
    };
    let mut out = Vec::new();
    for row in rows {
        if let Value::Array(cells) = row {
            if let [Value::Int(id), Value::Bulk(role), Value::Bulk(client), _] = cells.as_slice() {
                let client: SocketAddr = String::from_utf8_lossy(client)
                    .parse()
                    .with_context(|| format!("member {id} has no client address"))?;
                out.push((*id as u64, role == b"voter", client));
            }
        }
    }
    anyhow::ensure!(!out.is_empty(), "{addr} listed no members");
    Ok(out)
}

/// A RESP reply, as far as the admin commands need.
#[derive(Debug)]
enum Value {
    Ok,
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Value>),
}

fn expect_ok(v: Value) -> anyhow::Result<()> {
    match v {
        Value::Ok => Ok(()),
        Value::Error(e) => anyhow::bail!("{e}"),
        other => anyhow::bail!("unexpected reply: {other:?}"),
    }
}

/// The most voters of the meta group.
const META_VOTERS: usize = 5;
/// How long a slot move or a split may take before the CLI stops waiting for its answer (the
/// move goes on in the cluster either way; `cairn cluster moves` shows it).
const MOVE_WITHIN: Duration = Duration::from_secs(3600);

/// Sends one command (RESP2) and reads its reply.
fn call(addr: SocketAddr, args: &[&str]) -> anyhow::Result<Value> {
    call_within(addr, args, Duration::from_secs(20))
}

/// An error reply's text, or what else came instead of the expected answer.
fn describe(v: Value) -> String {
    match v {
        Value::Error(e) => e,
        other => format!("unexpected answer: {other:?}"),
    }
}

/// As [`call`], asking again while the answer is TRYAGAIN (nothing was done: an election is
/// in progress, or another change is), until `deadline`.
fn call_until(
    addr: SocketAddr,
    args: &[&str],
    deadline: std::time::Instant,
) -> anyhow::Result<Value> {
    loop {
        match call(addr, args)? {
            Value::Error(e)
                if e.starts_with("TRYAGAIN") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(200));
            }
            other => return Ok(other),
        }
    }
}

/// Unix time in milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every shard (from CAIRN.PLACEMENT MAP) with its leader when one is known.
pub(crate) fn placement(addr: SocketAddr) -> anyhow::Result<Vec<(u64, Option<u64>)>> {
    let rows = match call(addr, &["CAIRN.PLACEMENT", "MAP"])? {
        Value::Array(rows) => rows,
        other => anyhow::bail!("{}", describe(other)),
    };
    Ok(rows
        .into_iter()
        .filter_map(|row| {
            let Value::Array(cells) = row else {
                return None;
            };
            let shard = match cells.first()? {
                Value::Int(s) => *s as u64,
                _ => return None,
            };
            let leader = match cells.get(1) {
                Some(Value::Int(l)) => Some(*l as u64),
                _ => None,
            };
            Some((shard, leader))
        })
        .collect())
}

/// Every member's client address, from INFO raft.
pub(crate) fn member_addrs(addr: SocketAddr) -> anyhow::Result<BTreeMap<u64, SocketAddr>> {
    Ok(info_raft(addr)?
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix("node")?.parse().ok()?;
            Some((id, v.strip_prefix("addr=")?.parse().ok()?))
        })
        .collect())
}

fn call_within(addr: SocketAddr, args: &[&str], within: Duration) -> anyhow::Result<Value> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(within))?;
    let mut reader = BufReader::new(s.try_clone()?);
    login(&s, &mut reader)?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    (&s).write_all(req.as_bytes())?;
    read_value(&mut reader, 0)
}

/// AUTH with `REDISCLI_AUTH` (the variable redis-cli reads) when it is set.
fn login(s: &TcpStream, reader: &mut impl BufRead) -> anyhow::Result<()> {
    let Ok(password) = std::env::var("REDISCLI_AUTH") else {
        return Ok(());
    };
    let req = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
    (&*s).write_all(req.as_bytes())?;
    match read_value(reader, 0)? {
        Value::Error(e) => anyhow::bail!("AUTH: {e}"),
        _ => Ok(()),
    }
}

fn read_value(r: &mut impl BufRead, depth: usize) -> anyhow::Result<Value> {
    anyhow::ensure!(depth < 8, "reply nested too deeply");
    let mut line = String::new();
    r.read_line(&mut line)?;
    let line = line.trim_end();
    let (kind, rest) = line.split_at(line.len().min(1));
    Ok(match kind {
        "+" => Value::Ok,
        "-" => Value::Error(rest.to_string()),
        ":" => Value::Int(rest.parse()?),
        "$" => {
            let n: i64 = rest.parse()?;
            if n < 0 {
                Value::Nil
            } else {
                anyhow::ensure!(n <= 1 << 20, "reply too large");
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)?;
                buf.truncate(n as usize);
                Value::Bulk(buf)
            }
        }
        "*" => {
            let n: i64 = rest.parse()?;
            anyhow::ensure!(n <= 10_000, "reply too large");
            let mut items = Vec::new();
            for _ in 0..n.max(0) {
                items.push(read_value(r, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => anyhow::bail!("unexpected reply line {line:?}"),
    })
}

/// One node's `INFO raft`, as key → value.
type Info = BTreeMap<String, String>;

/// The status table for the cluster that `addr` belongs to.
pub fn status(addr: SocketAddr) -> anyhow::Result<String> {
    let first = info_raft(addr).with_context(|| format!("asking {addr} for INFO raft"))?;
    let mut members: Vec<(u64, String)> = first
        .iter()
        .filter_map(|(k, v)| {
            let id = k.strip_prefix("node")?.parse().ok()?;
            Some((id, v.strip_prefix("addr=")?.to_string()))
        })
        .collect();
    if members.is_empty() {
        return Ok(format!(
            "{addr} is a standalone node (no replication): nothing to report\n"
        ));
    }
    members.sort();
    let infos: Vec<(u64, String, Option<Info>)> = members
        .into_iter()
        .map(|(id, a)| {
            let info = a.parse().ok().and_then(|sa| info_raft(sa).ok());
            (id, a, info)
        })
        .collect();
    Ok(render(&infos))
}

/// Renders the table and, per group, one summary line.
fn render(infos: &[(u64, String, Option<Info>)]) -> String {
    let mut rows = vec![[
        "NODE", "ADDRESS", "STATE", "GROUP", "ROLE", "LEADER", "TERM", "COMMIT", "APPLIED",
        "SNAPSHOT", "LAG",
    ]
    .map(String::from)
    .to_vec()];
    // group → (highest commit seen, leaders claimed, nodes up, slots)
    let mut groups: BTreeMap<u64, (u64, Vec<u64>, usize, String)> = BTreeMap::new();
    let mut fields = Vec::new();
    for (id, addr, info) in infos {
        let Some(info) = info else {
            fields.push((*id, addr.clone(), None));
            continue;
        };
        let stopped = info.get("stopped").cloned();
        for (k, v) in info {
            let Some(group) = k.strip_prefix("group") else {
                continue;
            };
            let f: BTreeMap<&str, &str> =
                v.split(',').filter_map(|kv| kv.split_once('=')).collect();
            let commit: u64 = f.get("commit").and_then(|c| c.parse().ok()).unwrap_or(0);
            let g = groups.entry(group.parse().unwrap_or(0)).or_default();
            g.0 = g.0.max(commit);
            g.2 += 1;
            if let Some(slots) = f.get("slots").filter(|s| !s.is_empty()) {
                g.3 = slots.replace(';', ",");
            }
            if f.get("role") == Some(&"leader") {
                g.1.push(*id);
            }
            fields.push((
                *id,
                addr.clone(),
                Some((group.to_string(), stopped.clone(), v.clone())),
            ));
        }
    }
    for (id, addr, f) in fields {
        let Some((group, stopped, v)) = f else {
            rows.push(vec![
                id.to_string(),
                addr,
                "down".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ]);
            continue;
        };
        let kv: BTreeMap<&str, &str> = v.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let get = |k: &str| kv.get(k).copied().unwrap_or("?").to_string();
        let applied: u64 = kv.get("applied").and_then(|a| a.parse().ok()).unwrap_or(0);
        let top = groups.get(&group.parse().unwrap_or(0)).map_or(0, |g| g.0);
        rows.push(vec![
            id.to_string(),
            addr,
            if stopped.is_some() { "stopped" } else { "up" }.into(),
            if group == "0" { "meta".into() } else { group },
            get("role"),
            get("leader"),
            get("term"),
            get("commit"),
            get("applied"),
            get("snapshot"),
            top.saturating_sub(applied).to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    let total = infos.len();
    for (group, (commit, leaders, up, slots)) in &groups {
        let leader = match leaders.as_slice() {
            [] => "no leader".to_string(),
            [l] => format!("leader node {l}"),
            many => format!("{} nodes claim leadership: {many:?}", many.len()),
        };
        let slots = if slots.is_empty() {
            String::new()
        } else {
            format!(" (slots {slots})")
        };
        let name = if *group == 0 {
            "meta group".to_string()
        } else {
            format!("group {group}{slots}")
        };
        out.push_str(&format!(
            "{name}: {leader}, {up}/{total} nodes answering, commit index {commit}\n"
        ));
    }
    if groups.is_empty() {
        out.push_str("no node answered\n");
    }
    out
}

/// Sends `INFO raft` (RESP2) and parses the `key:value` lines of the reply.
fn info_raft(addr: SocketAddr) -> anyhow::Result<Info> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut r = BufReader::new(s.try_clone()?);
    login(&s, &mut r)?;
    (&s).write_all(b"*2\r\n$4\r\nINFO\r\n$4\r\nraft\r\n")?;
    let mut header = String::new();
    r.read_line(&mut header)?;
    let len: usize = match header.strip_prefix('$') {
        Some(n) => n.trim().parse().context("bad reply length")?,
        None => anyhow::bail!("unexpected reply: {}", header.trim()),
    };
    anyhow::ensure!(len <= 1 << 20, "INFO reply too large");
    let mut body = vec![0; len + 2];
    r.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body[..len])
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(pairs: &[(&str, &str)]) -> Info {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_roles_lag_and_down_nodes() {
        let infos = vec![
            (
                1,
                "127.0.0.1:7001".to_string(),
                Some(info(&[(
                    "group1",
                    "role=leader,leader=1,term=4,commit=120,applied=120,snapshot=100,snapshots_installed=0,slots=0-99;200-16383",
                )])),
            ),
            (
                2,
                "127.0.0.1:7002".to_string(),
                Some(info(&[(
                    "group1",
                    "role=follower,leader=1,term=4,commit=118,applied=117,snapshot=100,snapshots_installed=1",
                )])),
            ),
            (3, "127.0.0.1:7003".to_string(), None),
        ];
        let out = render(&infos);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].starts_with("NODE  ADDRESS"), "{out}");
        let cols = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(
            cols(lines[1]),
            [
                "1",
                "127.0.0.1:7001",
                "up",
                "1",
                "leader",
                "1",
                "4",
                "120",
                "120",
                "100",
                "0"
            ]
        );
        assert_eq!(
            cols(lines[2])[10],
            "3",
            "lag is the highest commit minus applied"
        );
        assert_eq!(cols(lines[3])[..3], ["3", "127.0.0.1:7003", "down"]);
        assert_eq!(
            lines[4],
            "group 1 (slots 0-99,200-16383): leader node 1, 2/3 nodes answering, commit index 120"
        );
    }
}
