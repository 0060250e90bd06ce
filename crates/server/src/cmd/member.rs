//! `CAIRN.MEMBER`: membership of the replicated group (replicated mode only; a module-style
//! name, so it can never collide with a Redis command).
//!
//! ```text
//! CAIRN.MEMBER LIST                          [id, role, client address, matched index]...
//! CAIRN.MEMBER ADD-LEARNER <id> <bus-addr>   add a node that receives the log but does not vote
//! CAIRN.MEMBER PROMOTE <id>                  make a learner a voter (once it has caught up)
//! CAIRN.MEMBER REMOVE <id>                   remove a voter or learner
//! CAIRN.MEMBER TRANSFER-LEADER [<id>]        hand leadership to <id> (or the most caught-up)
//! ```
//!
//! Without `SHARD <id>`, ADD-LEARNER and PROMOTE change the meta group (group 0), which every
//! node of the cluster belongs to: shard replicas are moved to a new node afterwards
//! (`CAIRN.PLACEMENT`). REMOVE takes the node out of every group that still lists it, the meta
//! group last, skipping those where it is gone already (so a change that failed half-way can
//! simply be repeated); TRANSFER-LEADER moves every group's leadership. A trailing
//! `SHARD <id>` limits a change to one group, wherever its leader is. LIST shows the meta
//! group's members unless a shard is named.
//!
//! Changes run on the leader (a follower relays them) and answer once the change is applied.
//! Removing the leader itself first hands leadership to another voter (raft-rs leaves a
//! removed leader in charge of a group it is no longer in). One change at a time: a second
//! one while the first is pending gets `-TRYAGAIN`.

use crate::connection::Client;
use crate::replicated::{self, Replication};
use crate::Shared;
use cairn_replication::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use cairn_replication::{GroupStatus, NodeError};
use cairn_resp::Reply;
use std::net::SocketAddr;
use std::time::Duration;

/// How long a change may wait for its leader to apply it.
const CHANGE_WITHIN: Duration = Duration::from_secs(10);

fn err(msg: impl Into<String>) -> Reply {
    Reply::error(msg.into())
}

fn parse_id(arg: &[u8]) -> Result<u64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|&id| id > 0)
        .ok_or_else(|| err("ERR node id must be a positive integer"))
}

pub async fn member(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    let Some(repl) = shared.replication.as_ref() else {
        return err("ERR CAIRN.MEMBER needs replicated mode (--initial-cluster)").to_bytes(proto);
    };
    if client.multi.is_some() {
        client.multi_failed = true;
        return err("ERR CAIRN.MEMBER is not allowed in MULTI").to_bytes(proto);
    }
    let sub = args
        .get(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase())
        .unwrap_or_default();
    let n = args.len();
    let named = n >= 4 && args[n - 2].eq_ignore_ascii_case(b"shard");
    let (args, groups): (&[Vec<u8>], Vec<u64>) = if named {
        let g = std::str::from_utf8(&args[n - 1])
            .ok()
            .and_then(|g| g.parse::<u64>().ok())
            .filter(|&g| g == crate::meta::GROUP || shared.shards.has(g));
        match g {
            Some(g) => (&args[..n - 2], vec![g]),
            None => return err("ERR no such shard").to_bytes(proto),
        }
    } else {
        // A node joins the cluster by joining the meta group; replicas of shards are moved to
        // it afterwards (CAIRN.PLACEMENT). It leaves every group that still lists it, the meta
        // group last.
        let id = args.get(2).and_then(|a| parse_id(a).ok());
        let member_of = |g: u64| {
            repl.view(g).is_some_and(|v| {
                id.is_some_and(|id| v.voters.contains(&id) || v.learners.contains(&id))
            })
        };
        let groups: Vec<u64> = match sub.as_str() {
            "remove" => {
                // Its replicas move to other nodes first: taking it out of a shard's group here
                // would leave the shard a replica short.
                let held: Vec<String> = shared
                    .shards
                    .stores()
                    .map(|(g, _)| g)
                    .filter(|&g| member_of(g))
                    .map(|g| g.to_string())
                    .collect();
                if !held.is_empty() {
                    return err(format!(
                        "ERR node {} still holds replicas of shards {}: move them first (CAIRN.PLACEMENT DRAIN)",
                        id.unwrap_or(0),
                        held.join(",")
                    ))
                    .to_bytes(proto);
                }
                vec![crate::meta::GROUP]
            }
            "transfer-leader" => std::iter::once(crate::meta::GROUP)
                .chain(shared.shards.stores().map(|(g, _)| g))
                .filter(|&g| id.is_none() || member_of(g))
                .collect(),
            _ => vec![crate::meta::GROUP],
        };
        (&args[..], groups)
    };
    // A change asked of every shard skips those where it already holds.
    let lenient = !named;
    if sub == "remove" && args.len() == 3 {
        // Leaving: hand every leadership over first (raft-rs leaves a removed leader in
        // charge of a group it is no longer in).
        if let Err(e) = leave_if_self(repl, args).await {
            return e.to_bytes(proto);
        }
    }
    let mut last = Reply::OK;
    for group in groups {
        let reply = match (sub.as_str(), args.len()) {
            ("list", 2) => list(repl, group),
            ("add-learner", 4) => add_learner(repl, group, args, lenient).await,
            ("promote", 3) => {
                change(repl, group, args, ConfChangeType::AddNode, Vec::new(), lenient).await
            }
            ("remove", 3) => {
                change(repl, group, args, ConfChangeType::RemoveNode, Vec::new(), lenient).await
            }
            ("transfer-leader", 2 | 3) => transfer(repl, group, args).await,
            _ => Err(Fail(err(
                "ERR usage: CAIRN.MEMBER LIST | ADD-LEARNER <id> <bus-host:port> | PROMOTE <id> | REMOVE <id> | TRANSFER-LEADER [<id>] [SHARD <id>]",
            ))),
        };
        let bytes = match reply {
            Ok(r) => {
                last = r;
                continue;
            }
            Err(Relay(leader)) => {
                let mut one = args.to_vec();
                one.push(b"SHARD".to_vec());
                one.push(group.to_string().into_bytes());
                match replicated::relay_once(shared, client, leader, one).await {
                    Ok(bytes) if bytes.starts_with(b"-") => bytes,
                    Ok(bytes) if sub == "list" => return bytes,
                    Ok(_) => continue,
                    Err(e) => e.to_bytes(proto),
                }
            }
            Err(Fail(e)) => e.to_bytes(proto),
        };
        return bytes;
    }
    last.to_bytes(proto)
}

/// Why a subcommand did not answer here.
enum NotHere {
    /// Another node leads: send the command there.
    Relay(u64),
    Fail(Reply),
}
use NotHere::{Fail, Relay};

impl From<Reply> for NotHere {
    fn from(r: Reply) -> Self {
        Fail(r)
    }
}

/// The group as this node sees it; for a group it holds no replica of, the way to its leader.
fn group(repl: &Replication, group: u64) -> Result<GroupStatus, NotHere> {
    if let Some(g) = repl.group(group).filter(|g| !g.voters.is_empty()) {
        return Ok(g);
    }
    match repl.leader_of(group) {
        Some(l) if l != repl.me => Err(Relay(l)),
        _ => Err(Fail(err(
            "TRYAGAIN no leader of that group is known here yet",
        ))),
    }
}

/// Like [`group`], waiting up to [`replicated::WAIT`] for this node to learn the leader of a
/// group it holds no replica of (right after it left the group, or after an election, the
/// new leader has not said so yet).
async fn group_waiting(repl: &Replication, group: u64) -> Result<GroupStatus, NotHere> {
    let deadline = tokio::time::Instant::now() + replicated::WAIT;
    loop {
        match self::group(repl, group) {
            Err(Fail(_)) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => return other,
        }
    }
}

/// Listed by the leader, which alone knows how far each member's log matches.
fn list(repl: &Replication, group: u64) -> Result<Reply, NotHere> {
    let g = match self::group(repl, group) {
        Ok(g) => g,
        Err(Relay(l)) => return Err(Relay(l)),
        Err(Fail(_)) => return Ok(Reply::Array(Vec::new())),
    };
    match g.leader {
        Some(l) if l != repl.me => return Err(Relay(l)),
        None => return Err(Fail(err("TRYAGAIN no leader elected yet"))),
        _ => {}
    }
    let addrs = repl.all_client_addrs();
    let row = |id: u64, role: &str| {
        let matched = g
            .matched
            .iter()
            .find(|(m, _)| *m == id)
            .map_or(-1, |(_, i)| *i as i64);
        Reply::Array(vec![
            Reply::Int(id as i64),
            Reply::Bulk(role.as_bytes().to_vec()),
            Reply::Bulk(
                addrs
                    .get(&id)
                    .map_or_else(String::new, |a| a.to_string())
                    .into_bytes(),
            ),
            Reply::Int(matched),
        ])
    };
    let mut rows: Vec<Reply> = g.voters.iter().map(|&id| row(id, "voter")).collect();
    rows.extend(g.learners.iter().map(|&id| row(id, "learner")));
    Ok(Reply::Array(rows))
}

async fn add_learner(
    repl: &Replication,
    group: u64,
    args: &[Vec<u8>],
    lenient: bool,
) -> Result<Reply, NotHere> {
    let bus: SocketAddr = std::str::from_utf8(&args[3])
        .ok()
        .and_then(|a| a.parse().ok())
        .filter(|a: &SocketAddr| a.port() > 10000)
        .ok_or_else(|| {
            err("ERR the bus address must be IP:PORT, with PORT = the node's client port + 10000")
        })?;
    change(
        repl,
        group,
        args,
        ConfChangeType::AddLearnerNode,
        bus.to_string().into_bytes(),
        lenient,
    )
    .await
}

/// Before this node removes itself: hands over every leadership it holds.
async fn leave_if_self(repl: &Replication, args: &[Vec<u8>]) -> Result<(), Reply> {
    let id = parse_id(&args[2])?;
    let leads = repl.groups().values().any(|g| g.is_leader);
    if id == repl.me && leads {
        let (_, still) = repl.node.hand_off(Duration::from_secs(3)).await;
        if still {
            return Err(err(
                "TRYAGAIN could not hand leadership over before removing this node",
            ));
        }
    }
    Ok(())
}

/// Hands leadership of `group` to voter `<id>` (or the most caught-up one) and waits until it
/// leads.
async fn transfer(repl: &Replication, group: u64, args: &[Vec<u8>]) -> Result<Reply, NotHere> {
    let to = args.get(2).map(|a| parse_id(a)).transpose()?;
    let id = group;
    // Right after a start or a failover the group may still be electing: wait for it.
    let deadline = tokio::time::Instant::now() + replicated::WAIT;
    let mut g = group_waiting(repl, group).await?;
    while g.leader.is_none() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        g = self::group(repl, group)?;
    }
    // The leader decides: a follower's configuration may not have applied a promotion yet.
    match g.leader {
        Some(l) if l == repl.me => {}
        Some(l) => return Err(Relay(l)),
        None => return Err(Fail(err("TRYAGAIN no leader elected yet"))),
    }
    if let Some(t) = to {
        if !g.voters.contains(&t) {
            return Err(Fail(err(format!("ERR node {t} is not a voter"))));
        }
    }
    if to == Some(repl.me) {
        return Ok(Reply::OK);
    }
    let (moved, still) = repl
        .node
        .hand_off_groups(Some(vec![id]), to, Duration::from_secs(3))
        .await;
    if still || moved.is_empty() {
        return Err(Fail(err(
            "TRYAGAIN the transfer did not complete (is the target caught up and reachable?)",
        )));
    }
    Ok(Reply::OK)
}

/// Checks the change against the configuration this node sees, proposes it, and waits for it.
async fn change(
    repl: &Replication,
    group: u64,
    args: &[Vec<u8>],
    kind: ConfChangeType,
    context: Vec<u8>,
    lenient: bool,
) -> Result<Reply, NotHere> {
    let id = parse_id(&args[2])?;
    let GroupStatus {
        voters,
        learners,
        leader,
        ..
    } = group_waiting(repl, group).await?;
    // A follower's configuration may lag the leader's (a change the leader applied and
    // answered a moment ago): only the leader's is checked against.
    if let Some(l) = leader.filter(|&l| l != repl.me) {
        return Err(Relay(l));
    }
    let known = voters.contains(&id) || learners.contains(&id);
    let done = match kind {
        ConfChangeType::AddLearnerNode => known,
        ConfChangeType::AddNode => voters.contains(&id),
        _ => !known,
    };
    if lenient && done {
        return Ok(Reply::OK);
    }
    match kind {
        ConfChangeType::AddLearnerNode if known => {
            return Err(Fail(err(format!("ERR node {id} is already a member"))))
        }
        ConfChangeType::AddNode if !learners.contains(&id) => {
            return Err(Fail(err(format!("ERR node {id} is not a learner"))))
        }
        ConfChangeType::RemoveNode if !known => {
            return Err(Fail(err(format!("ERR node {id} is not a member"))))
        }
        ConfChangeType::RemoveNode if voters == [id] => {
            return Err(Fail(err("ERR cannot remove the last voter")))
        }
        // raft-rs leaves a removed leader in charge of a group it is no longer in: hand the
        // group over first, and let the new leader remove this node.
        ConfChangeType::RemoveNode if id == repl.me && repl.leader_of(group) == Some(id) => {
            let (moved, _) = repl
                .node
                .hand_off_groups(Some(vec![group]), None, Duration::from_secs(3))
                .await;
            return match moved.last() {
                Some(&(_, to)) if repl.leader_of(group) != Some(repl.me) => Err(Relay(to)),
                _ => Err(Fail(err(
                    "TRYAGAIN this node leads the group and could not hand it over; retry",
                ))),
            };
        }
        _ => {}
    }
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = id;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    cc.context = context.into();
    // While no leader is known (an election, or right after this node handed leadership
    // over), wait for one: the change was not proposed, so asking again is safe.
    let deadline = tokio::time::Instant::now() + CHANGE_WITHIN;
    let outcome = loop {
        let r =
            tokio::time::timeout_at(deadline, repl.node.change_membership(group, cc.clone())).await;
        match r {
            Ok(Err(NodeError::NotLeader { leader: None, .. }))
                if tokio::time::Instant::now() + Duration::from_millis(20) < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => break other,
        }
    };
    match outcome {
        Ok(Ok(result)) if result == b"OK" => Ok(Reply::OK),
        Ok(Ok(result)) => Err(Fail(err(String::from_utf8_lossy(&result).into_owned()))),
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me => Err(Relay(l)),
        Ok(Err(NodeError::Busy)) => Err(Fail(err(
            "TRYAGAIN another membership change is in progress (or the node is busy)",
        ))),
        Ok(Err(NodeError::NotLeader { .. })) => Err(Fail(err("TRYAGAIN no leader elected yet"))),
        Ok(Err(e)) => Err(Fail(err(format!("ERR {e}")))),
        Err(_) => Err(Fail(err(
            "UNCERTAIN timed out waiting for the change; it may or may not have been applied",
        ))),
    }
}
