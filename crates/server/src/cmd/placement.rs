//! `CAIRN.PLACEMENT`: moving shard replicas between nodes (replicated mode only).
//!
//! ```text
//! CAIRN.PLACEMENT MOVE <shard> <from> <to>   move one replica; answers once it is done
//! CAIRN.PLACEMENT REBALANCE                  even out replicas over the nodes → moves made
//! CAIRN.PLACEMENT DRAIN <node>               move every replica off <node> → moves made
//! CAIRN.PLACEMENT MAP                        [shard, leader, [voters], [learners]] per shard
//! CAIRN.PLACEMENT OPEN <shard>               (between nodes) open an empty replica here
//! ```
//!
//! A replica moves in the group's own log, one conf change at a time, so that the group
//! always has a quorum of caught-up voters: the new node opens an empty replica and is added as
//! a learner (the leader sends it a snapshot); once its log matches the voters' it is promoted;
//! then leadership leaves the old node if it had it, and the old node is removed, which deletes
//! its replica there (`crate::placement`). A move that fails before the promotion takes the
//! learner out again; every step checks first whether it is done already, so a move can be
//! repeated after a failure.
//!
//! REBALANCE and DRAIN plan one move at a time from what this node knows of every shard
//! (`Replication::view`) and of the nodes (the meta group's members), until none is needed:
//! shards under or over `--replicas` get a replica added or removed, replicas on a draining
//! node move off it, and a node with two replicas more than another gives it one.

use crate::cmd::reshard::{err, number};
use crate::connection::Client;
use crate::meta::GroupMachine;
use crate::shard::ShardMachine;
use crate::Shared;
use cairn_resp::Reply;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long a new replica may take to catch up before its move is given up.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);
/// The most moves one REBALANCE or DRAIN makes.
const MAX_MOVES: usize = 1024;
/// A pause after each move, so that the next plan sees what the leaders say now.
const SETTLE: Duration = Duration::from_millis(600);

pub async fn command(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    if shared.replication.is_none() {
        return err("CAIRN.PLACEMENT needs replicated mode").to_bytes(proto);
    }
    let sub = args
        .get(1)
        .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
    let shard = |a: &[u8]| number(a).filter(|&g| g > 0 && shared.shards.has(g));
    let reply = match (sub.as_deref(), args.len()) {
        (Some("move"), 5) => match (shard(&args[2]), number(&args[3]), number(&args[4])) {
            (Some(g), Some(from), Some(to)) if from != to && from > 0 && to > 0 => {
                match move_replica(shared, g, Some(from), Some(to)).await {
                    Ok(()) => Reply::OK,
                    Err(e) => e,
                }
            }
            _ => err("usage: CAIRN.PLACEMENT MOVE <shard> <from-node> <to-node>"),
        },
        (Some("rebalance"), 2) => settle(shared, None).await,
        (Some("drain"), 3) => match number(&args[2]) {
            Some(node) if node > 0 => settle(shared, Some(node)).await,
            _ => err("usage: CAIRN.PLACEMENT DRAIN <node>"),
        },
        (Some("map"), 2) => map(shared),
        (Some("open"), 3) => match shard(&args[2]) {
            Some(g) => open_here(shared, g).await,
            None => err("no such shard"),
        },
        _ => {
            err("usage: CAIRN.PLACEMENT MOVE <shard> <from> <to> | REBALANCE | DRAIN <node> | MAP")
        }
    };
    reply.to_bytes(proto)
}

/// Opens an empty replica of shard `group` here, to be added to the group as a learner. A
/// replica open already stays as it is if this node is a member; one left from before this
/// node was removed (deleted a moment later otherwise) is deleted first, so that the new
/// member starts from the leader's snapshot and is not deleted in its turn.
async fn open_here(shared: &Shared, group: u64) -> Reply {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let Some(store) = shared.shards.add(group) else {
        return err("no such shard");
    };
    // Whether this node is a member is the leader's word: this node's own replica may not
    // have applied its removal yet (and would delete itself when it did).
    let (voters, learners) = match members_now(shared, group).await {
        Ok(m) => m,
        Err(e) => return e,
    };
    let member = voters.contains(&repl.me) || learners.contains(&repl.me);
    let _placing = repl.placing.lock().await;
    if let Some(g) = repl.group(group) {
        if !g.voters.is_empty() && !member {
            crate::placement::close(shared, repl, group, true).await;
        }
    }
    let machine = ShardMachine {
        store: store.clone(),
        routes: Some((group, shared.shards.owners().clone())),
        events: Some(shared.pubsub.clone()),
        leading: false,
    };
    match repl
        .node
        .open_group(group, Vec::new(), GroupMachine::Shard(machine))
        .await
    {
        Ok(_) => Reply::OK,
        Err(e) => err(format!("cannot open shard {group} here: {e}")),
    }
}

/// One shard as the planner sees it.
#[derive(Clone, Debug, PartialEq)]
struct Placed {
    leader: Option<u64>,
    members: Vec<u64>,
}

/// The next change that brings the replicas closer to even: (shard, node to take a replica
/// from, node to give one to). None when every shard has `replicas` members (or as many as
/// there are nodes), no member is on a draining node, and no node holds two more than another.
///
/// Nodes in `down` (not answering) are given nothing.
fn plan(
    shards: &BTreeMap<u64, Placed>,
    nodes: &[u64],
    replicas: usize,
    draining: Option<u64>,
    down: &[u64],
) -> Option<(u64, Option<u64>, Option<u64>)> {
    let active: Vec<u64> = nodes
        .iter()
        .copied()
        .filter(|&n| Some(n) != draining)
        .collect();
    if active.is_empty() {
        return None;
    }
    let mut load: BTreeMap<u64, usize> = active.iter().map(|&n| (n, 0)).collect();
    for p in shards.values() {
        for m in &p.members {
            if let Some(l) = load.get_mut(m) {
                *l += 1;
            }
        }
    }
    // The least loaded active node that is not a member of `p`.
    let lightest = |p: &Placed| {
        active
            .iter()
            .filter(|n| !p.members.contains(n) && !down.contains(n))
            .min_by_key(|&&n| (load[&n], n))
            .copied()
    };
    let want = replicas.clamp(1, active.len());
    for (&g, p) in shards {
        if let Some(d) = draining.filter(|d| p.members.contains(d)) {
            return match lightest(p) {
                Some(to) => Some((g, Some(d), Some(to))),
                None if p.members.len() > 1 => Some((g, Some(d), None)),
                None => None,
            };
        }
        // A member that is no node of the cluster (removed from the meta group) goes first.
        if let Some(&gone) = p.members.iter().find(|m| !nodes.contains(m)) {
            return Some((g, Some(gone), lightest(p)));
        }
    }
    for (&g, p) in shards {
        if p.members.len() < want {
            return lightest(p).map(|to| (g, None, Some(to)));
        }
        if p.members.len() > want {
            // The most loaded member, not the leader if that can be helped.
            let from = p
                .members
                .iter()
                .max_by_key(|&&m| (load.get(&m).copied().unwrap_or(0), Some(m) != p.leader, m))
                .copied();
            return Some((g, from, None));
        }
    }
    let (&heavy, &most) = load
        .iter()
        .max_by_key(|&(&n, &l)| (l, std::cmp::Reverse(n)))?;
    let (&light, &least) = load
        .iter()
        .filter(|(n, _)| !down.contains(n))
        .min_by_key(|&(&n, &l)| (l, n))?;
    if most < least + 2 {
        return None;
    }
    // A shard on the heavy node and not on the light one; one the heavy node does not lead
    // first (moving a follower needs no leadership transfer).
    shards
        .iter()
        .filter(|(_, p)| p.members.contains(&heavy) && !p.members.contains(&light))
        .min_by_key(|(&g, p)| (p.leader == Some(heavy), g))
        .map(|(&g, _)| (g, Some(heavy), Some(light)))
}

/// What this node knows of every shard's members, and of the cluster's nodes; None while some
/// shard's members are not known for sure here: a plan needs each shard as its leader sees it
/// now (this node's own replica when it leads, else what the leader said in the last second).
fn layout(shared: &Shared) -> Option<(BTreeMap<u64, Placed>, Vec<u64>)> {
    let repl = shared.replication.as_ref()?;
    let mut shards = BTreeMap::new();
    for (g, _) in shared.shards.stores() {
        let v = match repl.group(g) {
            Some(v) if v.is_leader => v,
            _ => repl.hints.fresh_view(g, Duration::from_secs(1))?,
        };
        if v.voters.is_empty() {
            return None;
        }
        let mut members = v.voters.clone();
        members.extend(&v.learners);
        shards.insert(
            g,
            Placed {
                leader: v.leader,
                members,
            },
        );
    }
    let meta = match repl.group(crate::meta::GROUP) {
        Some(v) if v.is_leader => v,
        _ => repl
            .hints
            .fresh_view(crate::meta::GROUP, Duration::from_secs(1))?,
    };
    let mut nodes: Vec<u64> = meta.voters.iter().chain(&meta.learners).copied().collect();
    nodes.sort_unstable();
    Some((shards, nodes))
}

/// Plans and makes moves until none is needed (see [`plan`]); answers how many it made.
async fn settle(shared: &Shared, draining: Option<u64>) -> Reply {
    let replicas = shared.config.lock().replicas;
    let mut made = 0;
    let mut failures = 0;
    for _ in 0..MAX_MOVES {
        let mut known = None;
        for _ in 0..50 {
            known = layout(shared);
            if known.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some((shards, nodes)) = known else {
            return err("some shard has no leader that answers, or its members are not known here yet; retry");
        };
        let repl = shared.replication.as_ref().expect("replicated mode");
        let down: Vec<u64> = nodes
            .iter()
            .copied()
            .filter(|&n| n != repl.me && repl.hints.is_down(n))
            .collect();
        let Some((g, from, to)) = plan(&shards, &nodes, replicas, draining, &down) else {
            return Reply::Int(made);
        };
        tracing::info!(shard = g, ?from, ?to, "moving a replica");
        match move_replica(shared, g, from, to).await {
            Ok(()) => made += 1,
            Err(e) => {
                failures += 1;
                tracing::warn!(shard = g, ?from, ?to, error = ?e, "a replica move failed");
                if failures >= 5 {
                    return e;
                }
            }
        }
        tokio::time::sleep(SETTLE).await;
    }
    Reply::Int(made)
}

/// Runs one `CAIRN.MEMBER` command here (it reaches the group's leader wherever it is).
async fn member(shared: &Shared, args: &[String]) -> Result<Reply, Reply> {
    let mut client = Client::internal(shared);
    let words: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    let bytes = crate::cmd::member::member(shared, &mut client, words).await;
    match cairn_resp::parse_reply(&bytes) {
        Some(e @ Reply::Error(_)) => {
            tracing::info!(step = %args.join(" "), error = ?e, "a replica move's step failed");
            Err(e)
        }
        Some(r) => Ok(r),
        None => Err(err("unexpected reply to CAIRN.MEMBER")),
    }
}

fn member_args(words: &[&str], group: u64) -> Vec<String> {
    let mut v: Vec<String> = std::iter::once("CAIRN.MEMBER")
        .chain(words.iter().copied())
        .map(str::to_string)
        .collect();
    v.push("SHARD".into());
    v.push(group.to_string());
    v
}

/// Moves shard `group`'s replica from node `from` to node `to` (see the module's comment);
/// with only `to`, adds one; with only `from`, removes one.
async fn move_replica(
    shared: &Shared,
    group: u64,
    from: Option<u64>,
    to: Option<u64>,
) -> Result<(), Reply> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    if let Some(to) = to {
        let Some(client_addr) = repl.client_addr(to) else {
            return Err(err(format!("node {to} is not known")));
        };
        let bus = std::net::SocketAddr::new(client_addr.ip(), client_addr.port() + 10000);
        // The new replica exists (empty) before the leader first sends it anything.
        let open = if to == repl.me {
            open_here(shared, group).await
        } else {
            let mut client = Client::internal(shared);
            let ask = ["CAIRN.PLACEMENT", "OPEN", &group.to_string()]
                .map(|a| a.as_bytes().to_vec())
                .to_vec();
            match crate::replicated::relay_once(shared, &mut client, to, ask).await {
                Ok(bytes) => cairn_resp::parse_reply(&bytes).unwrap_or(Reply::Nil),
                Err(e) => e,
            }
        };
        if !matches!(open, Reply::Status(_)) {
            return Err(err(format!(
                "node {to} could not open shard {group}: {open:?}"
            )));
        }
        let (voters, learners) = members_now(shared, group).await?;
        if !voters.contains(&to) && !learners.contains(&to) {
            let (id, bus) = (to.to_string(), bus.to_string());
            member(shared, &member_args(&["ADD-LEARNER", &id, &bus], group)).await?;
        }
        if !voters.contains(&to) {
            if let Err(e) = catch_up(shared, group, to).await {
                // Not promoted: take the learner out again (best effort; a later plan removes
                // it if this fails too, as a member too many).
                let _ = member(shared, &member_args(&["REMOVE", &to.to_string()], group)).await;
                return Err(e);
            }
            member(shared, &member_args(&["PROMOTE", &to.to_string()], group)).await?;
        }
    }
    if let Some(from) = from {
        remove(shared, group, from, to).await?;
    }
    Ok(())
}

/// `group`'s voters and learners as its leader has them now (`CAIRN.MEMBER LIST`, which goes
/// to the leader): what a step decides on, since a follower's view may be behind by the very
/// change that preceded it. Asks again for a while when no leader is known.
async fn members_now(shared: &Shared, group: u64) -> Result<(Vec<u64>, Vec<u64>), Reply> {
    let deadline = tokio::time::Instant::now() + crate::replicated::WAIT;
    loop {
        match member(shared, &member_args(&["LIST"], group)).await {
            Ok(Reply::Array(rows)) if !rows.is_empty() => {
                let (mut voters, mut learners) = (Vec::new(), Vec::new());
                for row in rows {
                    if let Reply::Array(cells) = row {
                        if let [Reply::Int(id), Reply::Bulk(role), ..] = cells.as_slice() {
                            if role == b"voter" {
                                voters.push(*id as u64);
                            } else {
                                learners.push(*id as u64);
                            }
                        }
                    }
                }
                return Ok((voters, learners));
            }
            Err(Reply::Error(e))
                if e.starts_with("TRYAGAIN") && tokio::time::Instant::now() < deadline => {}
            Ok(Reply::Array(_)) if tokio::time::Instant::now() < deadline => {}
            Ok(other) | Err(other) => {
                return Err(err(format!(
                    "cannot list shard {group}'s members: {other:?}"
                )))
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until node `to`'s log in `group` matches every voter's.
async fn catch_up(shared: &Shared, group: u64, to: u64) -> Result<(), Reply> {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WITHIN;
    loop {
        let rows = match member(shared, &member_args(&["LIST"], group)).await {
            Ok(Reply::Array(rows)) => rows,
            // No leader known here for a moment (an election, a transfer): ask again.
            Err(Reply::Error(e)) if e.starts_with("TRYAGAIN") => Vec::new(),
            Ok(other) | Err(other) => {
                return Err(err(format!(
                    "unexpected CAIRN.MEMBER LIST reply: {other:?}"
                )))
            }
        };
        let mut voters_min = u64::MAX;
        let mut mine = None;
        for row in rows {
            if let Reply::Array(cells) = row {
                if let [Reply::Int(m), Reply::Bulk(role), _, Reply::Int(matched)] = cells.as_slice()
                {
                    let matched = (*matched).max(0) as u64;
                    if *m as u64 == to {
                        mine = Some(matched);
                    } else if role == b"voter" {
                        voters_min = voters_min.min(matched);
                    }
                }
            }
        }
        if mine.is_some_and(|m| m > 0 && m >= voters_min) {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(err(format!(
                "node {to} did not catch up in shard {group} within {CATCH_UP_WITHIN:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes node `from` from `group`, handing leadership over first if it leads (to `to`,
/// the replica that replaces it, when there is one).
async fn remove(shared: &Shared, group: u64, from: u64, to: Option<u64>) -> Result<(), Reply> {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let id = from.to_string();
    let mut last = err("not tried");
    for _ in 0..20 {
        let (voters, learners) = members_now(shared, group).await?;
        if !voters.contains(&from) && !learners.contains(&from) {
            return Ok(());
        }
        // (Should this be out of date, CAIRN.MEMBER REMOVE of the leader itself hands the
        // group over first.)
        if repl.leader_of(group) == Some(from) {
            let mut words = vec!["TRANSFER-LEADER".to_string()];
            words.extend(to.map(|t| t.to_string()));
            let words: Vec<&str> = words.iter().map(String::as_str).collect();
            if let Err(e) = member(shared, &member_args(&words, group)).await {
                last = e;
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        }
        match member(shared, &member_args(&["REMOVE", &id], group)).await {
            Ok(_) => return Ok(()),
            Err(Reply::Error(e)) if e.contains("is not a member") => return Ok(()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    Err(last)
}

/// `MAP`: every shard as this node knows it.
fn map(shared: &Shared) -> Reply {
    let repl = shared.replication.as_ref().expect("replicated mode");
    let ids = |v: &[u64]| Reply::Array(v.iter().map(|&i| Reply::Int(i as i64)).collect());
    let mut rows = Vec::new();
    for (g, _) in shared.shards.stores() {
        let v = repl.view(g).unwrap_or_default();
        rows.push(Reply::Array(vec![
            Reply::Int(g as i64),
            v.leader.map_or(Reply::Nil, |l| Reply::Int(l as i64)),
            ids(&v.voters),
            ids(&v.learners),
        ]));
    }
    Reply::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(shards: &[(u64, Option<u64>, &[u64])]) -> BTreeMap<u64, Placed> {
        shards
            .iter()
            .map(|&(g, leader, members)| {
                (
                    g,
                    Placed {
                        leader,
                        members: members.to_vec(),
                    },
                )
            })
            .collect()
    }

    /// Applies plans until none is left; returns the final layout and the moves made.
    fn run(
        mut shards: BTreeMap<u64, Placed>,
        nodes: &[u64],
        replicas: usize,
        draining: Option<u64>,
    ) -> (BTreeMap<u64, Placed>, usize) {
        let mut moves = 0;
        while let Some((g, from, to)) = plan(&shards, nodes, replicas, draining, &[]) {
            let p = shards.get_mut(&g).unwrap();
            if let Some(to) = to {
                assert!(!p.members.contains(&to), "adds a member it has: {g} {to}");
                p.members.push(to);
            }
            if let Some(from) = from {
                assert!(p.members.contains(&from), "removes a member it lacks");
                p.members.retain(|&m| m != from);
                if p.leader == Some(from) {
                    p.leader = to;
                }
            }
            moves += 1;
            assert!(moves < 100, "plans converge");
        }
        (shards, moves)
    }

    fn load(shards: &BTreeMap<u64, Placed>, node: u64) -> usize {
        shards
            .values()
            .filter(|p| p.members.contains(&node))
            .count()
    }

    #[test]
    fn a_new_node_gets_its_share_and_a_drained_one_gives_everything_back() {
        // 3 nodes, 6 shards of 3 replicas each; nodes 4 and 5 join.
        let all: &[u64] = &[1, 2, 3];
        let start = layout(&(1..=6).map(|g| (g, Some(1), all)).collect::<Vec<_>>());
        let (grown, moves) = run(start, &[1, 2, 3, 4, 5], 3, None);
        assert!(moves > 0);
        for n in 1..=5 {
            let l = load(&grown, n);
            assert!((3..=4).contains(&l), "node {n} holds {l} of 18 replicas");
        }
        for p in grown.values() {
            assert_eq!(p.members.len(), 3);
        }
        // Node 5 is drained: its replicas go to the others, each shard keeps 3.
        let (drained, _) = run(grown, &[1, 2, 3, 4, 5], 3, Some(5));
        assert_eq!(load(&drained, 5), 0);
        for p in drained.values() {
            assert_eq!(p.members.len(), 3);
        }
        for n in 1..=4 {
            let l = load(&drained, n);
            assert!((4..=5).contains(&l), "node {n} holds {l}");
        }
    }

    #[test]
    fn under_and_over_replicated_shards_are_repaired() {
        let shards = layout(&[(1, Some(1), &[1, 2]), (2, Some(2), &[1, 2, 3, 4])]);
        let (fixed, _) = run(shards, &[1, 2, 3, 4], 3, None);
        assert_eq!(fixed[&1].members.len(), 3);
        assert_eq!(fixed[&2].members.len(), 3);
        assert!(
            fixed[&2].members.contains(&2),
            "the leader is not the one removed"
        );
        // Fewer nodes than replicas: as many as there are nodes.
        let shards = layout(&[(1, Some(1), &[1])]);
        let (fixed, _) = run(shards, &[1, 2], 3, None);
        assert_eq!(fixed[&1].members.len(), 2);
        // A member no longer in the cluster is replaced.
        let shards = layout(&[(1, Some(1), &[1, 2, 9])]);
        let (fixed, _) = run(shards, &[1, 2, 3], 3, None);
        let mut m = fixed[&1].members.clone();
        m.sort_unstable();
        assert_eq!(m, vec![1, 2, 3]);
        let balanced = layout(&[(1, Some(1), &[1, 2, 3]), (2, Some(2), &[1, 2, 3])]);
        assert_eq!(plan(&balanced, &[1, 2, 3], 3, None, &[]), None);
        // A node that does not answer is given nothing.
        let shards = layout(&[(1, Some(1), &[1, 2])]);
        assert_eq!(
            plan(&shards, &[1, 2, 3, 4], 3, None, &[3]),
            Some((1, None, Some(4)))
        );
        assert_eq!(plan(&shards, &[1, 2, 3], 3, None, &[3]), None);
    }
}
