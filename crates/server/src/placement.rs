//! Replica placement: which nodes hold each shard, and how a node reaches the shards it holds
//! no replica of.
//!
//! Each shard is one Raft group of `--replicas` members (3 by default) on distinct nodes; a
//! node holds replicas of some shards, not all. What a group's members are is decided in the
//! group's own log (its conf changes, as a TiKV region's peers are), so no other record can
//! disagree with the quorum that actually commits. The other nodes learn it from the leaders:
//!
//! - **Hints.** Every node asks every other node, a few times a second, which groups it leads
//!   (`CAIRN.LEADERS`: group, term, voters, learners). A request for a shard this node holds no
//!   replica of goes to the leader so named (newest term wins), which serves it like any
//!   relayed request; `CLUSTER SLOTS`/`SHARDS`/`NODES` list the same. A node that stops
//!   answering loses its hints until another leader is named.
//! - **Removal.** A node removed from a group deletes its replica (`Node::close_group`, which
//!   leaves a tombstone so that it never bootstraps the group again) once it has applied its
//!   own removal, or once the group's leader has said for long enough that it is no longer a
//!   member (raft-rs stops sending a removed follower anything, so it may never apply it).
//! - **Moves** (`cmd/placement.rs`): a replica moves by adding the new node as a learner,
//!   promoting it once caught up, then removing the old one, each step a conf change in the
//!   group's log.

use crate::Shared;
use cairn_replication::GroupStatus;
use cairn_resp::{Protocol, Reply};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often each node asks each other node what it leads.
pub const ASK_EVERY: Duration = Duration::from_millis(200);
/// How long a leader must have said this node is not a member (after this node last saw its
/// own membership change) before it deletes its replica.
const REMOVED_FOR: Duration = Duration::from_secs(2);
/// How long an empty replica (opened for a move) may wait to be added to its group.
const ABANDONED_AFTER: Duration = Duration::from_secs(60);

/// What a leader said of one group it leads.
#[derive(Clone, Debug, PartialEq)]
struct Hint {
    /// None once that node stopped answering, or stopped naming the group.
    leader: Option<u64>,
    term: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    /// When it was said.
    at: Instant,
}

/// Every group's leader as the other nodes said, by group; and whether each node answered
/// when last asked.
#[derive(Default)]
pub struct Hints(Mutex<HashMap<u64, Hint>>, Mutex<HashMap<u64, bool>>);

/// One group a node leads, as `CAIRN.LEADERS` lists it: (group, term, voters, learners).
pub type Led = (u64, u64, Vec<u64>, Vec<u64>);

impl Hints {
    /// The leader of `group` as last said.
    pub fn leader(&self, group: u64) -> Option<u64> {
        self.0.lock().get(&group)?.leader
    }

    /// `group` as a leader that still answers described it within `within`: what a plan may
    /// rely on (a silent leader's description may be out of date).
    pub fn fresh_view(&self, group: u64, within: Duration) -> Option<GroupStatus> {
        let fresh = {
            let map = self.0.lock();
            let h = map.get(&group)?;
            h.leader.is_some() && h.at.elapsed() <= within
        };
        fresh.then(|| self.view(group)).flatten()
    }

    /// `group` as its leader last described it.
    pub fn view(&self, group: u64) -> Option<GroupStatus> {
        let h = self.0.lock().get(&group)?.clone();
        Some(GroupStatus {
            leader: h.leader,
            term: h.term,
            voters: h.voters,
            learners: h.learners,
            ..Default::default()
        })
    }

    /// The members of `group` as a leader of at least `term` said, with when; None if none
    /// has since this node last looked.
    fn members_since(&self, group: u64, term: u64, since: Instant) -> Option<(Vec<u64>, Vec<u64>)> {
        let map = self.0.lock();
        let h = map.get(&group)?;
        (h.leader.is_some() && h.term >= term && h.at > since)
            .then(|| (h.voters.clone(), h.learners.clone()))
    }

    /// Node `from` says it leads exactly `led`: it is the leader of each (unless a newer term
    /// is known), and of no other group.
    pub fn heard(&self, from: u64, led: Vec<Led>) {
        let now = Instant::now();
        self.1.lock().insert(from, true);
        let mut map = self.0.lock();
        for (g, h) in map.iter_mut() {
            if h.leader == Some(from) && !led.iter().any(|l| l.0 == *g) {
                h.leader = None;
            }
        }
        for (group, term, voters, learners) in led {
            // Only ids a group can have: the map stays as small as the cluster.
            if group > crate::shards::MAX_SHARDS as u64 {
                continue;
            }
            let newer = map.get(&group).is_none_or(|h| h.term <= term);
            if newer {
                map.insert(
                    group,
                    Hint {
                        leader: Some(from),
                        term,
                        voters,
                        learners,
                        at: now,
                    },
                );
            }
        }
    }

    /// Whether node `node` did not answer when last asked (a node not asked yet, just
    /// added, is not taken to be down).
    pub fn is_down(&self, node: u64) -> bool {
        self.1.lock().get(&node) == Some(&false)
    }

    /// Node `node` did not answer: it leads nothing this node knows of.
    pub fn lost(&self, node: u64) {
        self.1.lock().insert(node, false);
        for h in self.0.lock().values_mut() {
            if h.leader == Some(node) {
                h.leader = None;
            }
        }
    }
}

/// `CAIRN.LEADERS`: the groups this node leads (the meta group's included), as [group, term,
/// [voters], [learners]].
pub fn leaders(shared: &Shared) -> Reply {
    let Some(repl) = shared.replication.as_ref() else {
        return Reply::Array(Vec::new());
    };
    let ids = |v: &[u64]| Reply::Array(v.iter().map(|&i| Reply::Int(i as i64)).collect());
    Reply::Array(
        repl.all_groups()
            .into_iter()
            .filter(|(_, g)| g.is_leader)
            .map(|(id, g)| {
                Reply::Array(vec![
                    Reply::Int(id as i64),
                    Reply::Int(g.term as i64),
                    ids(&g.voters),
                    ids(&g.learners),
                ])
            })
            .collect(),
    )
}

/// Parses a `CAIRN.LEADERS` reply.
fn parse_leaders(reply: &Reply) -> Option<Vec<Led>> {
    let Reply::Array(rows) = reply else {
        return None;
    };
    let num = |r: &Reply| match r {
        Reply::Int(n) if *n >= 0 => Some(*n as u64),
        _ => None,
    };
    let list = |r: &Reply| match r {
        Reply::Array(items) => items.iter().map(num).collect::<Option<Vec<u64>>>(),
        _ => None,
    };
    rows.iter()
        .map(|row| match row {
            Reply::Array(cells) if cells.len() == 4 => Some((
                num(&cells[0])?,
                num(&cells[1])?,
                list(&cells[2])?,
                list(&cells[3])?,
            )),
            _ => None,
        })
        .collect()
}

/// Runs until the node stops: keeps one task per other node asking it what it leads.
pub async fn watch_leaders(shared: Arc<Shared>) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    let mut askers: HashMap<u64, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        let addrs = repl.all_client_addrs();
        askers.retain(|id, task| {
            let keep = addrs.contains_key(id) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (&id, &addr) in &addrs {
            if id != repl.me && !askers.contains_key(&id) {
                askers.insert(id, tokio::spawn(ask(shared.clone(), id, addr)));
            }
        }
        repl.node.set_cluster_leaders(leader_counts(&shared));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How many shards each node leads, counted over every shard (this node's own replicas and
/// what the others said), for leader balancing; None while some shard's leader is unknown.
fn leader_counts(shared: &Shared) -> Option<HashMap<u64, usize>> {
    let repl = shared.replication.as_ref()?;
    let mut led: HashMap<u64, usize> = HashMap::new();
    for (g, _) in shared.shards.stores() {
        *led.entry(repl.leader_of(g)?).or_default() += 1;
    }
    Some(led)
}

/// Asks node `id` at `addr` what it leads, every [`ASK_EVERY`], until the node stops.
async fn ask(shared: Arc<Shared>, id: u64, addr: std::net::SocketAddr) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    let request = vec![vec![b"CAIRN.LEADERS".to_vec()]];
    let mut conn: Option<crate::replicated::Relay> = None;
    loop {
        if conn.is_none() {
            conn = crate::replicated::open_relay(repl, addr, id, Protocol::Resp2).await;
        }
        let answer = match conn.as_mut() {
            Some(c) => tokio::time::timeout(
                Duration::from_secs(1),
                crate::replicated::relay_on(c, &request),
            )
            .await
            .ok()
            .flatten(),
            None => None,
        };
        let led = answer
            .as_ref()
            .and_then(|r| r.first())
            .and_then(|bytes| cairn_resp::parse_reply(bytes))
            .and_then(|r| parse_leaders(&r));
        match led {
            Some(led) => repl.hints.heard(id, led),
            None => {
                conn = None;
                repl.hints.lost(id);
            }
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

/// Runs until the node stops: deletes this node's replica of each shard group it was removed
/// from (see the module's comment), and empties that shard's store here.
pub async fn close_removed(shared: Arc<Shared>) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    // When this node last saw each group's membership change, and what it was.
    let mut seen: HashMap<u64, (Vec<u64>, Vec<u64>, Instant)> = HashMap::new();
    loop {
        tokio::time::sleep(ASK_EVERY).await;
        let groups = repl.groups();
        seen.retain(|g, _| groups.contains_key(g));
        for &id in groups.keys() {
            // Decided and done under the lock, on the replica as it is now: a move may have
            // deleted and reopened it since `groups` was read.
            let _placing = repl.placing.lock().await;
            let Some(g) = repl.group(id) else {
                continue;
            };
            let changed = seen
                .get(&id)
                .is_none_or(|(v, l, _)| *v != g.voters || *l != g.learners);
            if changed {
                seen.insert(id, (g.voters.clone(), g.learners.clone(), Instant::now()));
            }
            let since = seen[&id].2;
            let member = |v: &[u64], l: &[u64]| v.contains(&repl.me) || l.contains(&repl.me);
            // An empty configuration: a replica waiting for its first snapshot. One that waits
            // long after the leader says this node is no member was left by a failed move.
            if g.voters.is_empty() {
                let abandoned = since.elapsed() > ABANDONED_AFTER
                    && repl
                        .hints
                        .members_since(id, 0, since + ABANDONED_AFTER)
                        .is_some_and(|(v, l)| !v.is_empty() && !member(&v, &l));
                if abandoned {
                    close(&shared, repl, id, false).await;
                }
                continue;
            }
            let removed_here = !member(&g.voters, &g.learners);
            let removed_there = since.elapsed() > REMOVED_FOR
                && repl
                    .hints
                    .members_since(id, g.term, since + REMOVED_FOR)
                    .is_some_and(|(v, l)| !v.is_empty() && !member(&v, &l));
            if removed_here || removed_there {
                close(&shared, repl, id, removed_here).await;
            }
        }
    }
}

/// Deletes this node's replica of `group` and empties the shard's store here. The caller
/// holds `repl.placing`.
pub(crate) async fn close(
    shared: &Shared,
    repl: &crate::replicated::Replication,
    group: u64,
    applied: bool,
) {
    match repl.node.close_group(group).await {
        Ok(true) => {
            *shared.shards.store(group).lock() =
                cairn_store::Store::serving(cairn_store::keyspace::SlotSet::none());
            tracing::info!(
                shard = group,
                applied_here = applied,
                "this node is no member of the shard: its replica is deleted"
            );
        }
        Ok(false) => {}
        Err(e) => tracing::error!(shard = group, error = %e, "cannot delete a removed replica"),
    }
}

/// Which nodes hold each of `count` shards created with the cluster: shard `i` (from 1) on
/// `replicas` consecutive nodes of the sorted list, starting at its `(i - 1) % n`-th, so every
/// node holds as many replicas as any other, give or take one, and can lead its share.
pub fn initial_placement(nodes: &[u64], count: usize, replicas: usize) -> Vec<Vec<u64>> {
    let mut nodes = nodes.to_vec();
    nodes.sort_unstable();
    nodes.dedup();
    let n = nodes.len();
    if n == 0 {
        return vec![Vec::new(); count];
    }
    let r = replicas.clamp(1, n);
    (0..count)
        .map(|i| {
            let mut v: Vec<u64> = (0..r).map(|k| nodes[(i + k) % n]).collect();
            v.sort_unstable();
            v
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_placement_spreads_replicas_evenly_on_distinct_nodes() {
        let p = initial_placement(&[5, 1, 2, 3, 4], 16, 3);
        assert_eq!(p.len(), 16);
        let mut per_node: HashMap<u64, usize> = HashMap::new();
        for voters in &p {
            assert_eq!(voters.len(), 3);
            let mut d = voters.clone();
            d.dedup();
            assert_eq!(d.len(), 3, "distinct nodes: {voters:?}");
            for &v in voters {
                *per_node.entry(v).or_default() += 1;
            }
        }
        let (min, max) = (
            per_node.values().min().unwrap(),
            per_node.values().max().unwrap(),
        );
        assert!(max - min <= 1, "{per_node:?}");
        // Fewer nodes than replicas: every node holds every shard.
        assert_eq!(initial_placement(&[1, 2], 3, 3), vec![vec![1, 2]; 3]);
        assert_eq!(initial_placement(&[3, 1, 2], 2, 3), vec![vec![1, 2, 3]; 2]);
    }

    #[test]
    fn hints_follow_the_newest_term_and_forget_silent_leaders() {
        let h = Hints::default();
        h.heard(1, vec![(7, 3, vec![1, 2, 3], vec![])]);
        assert_eq!(h.leader(7), Some(1));
        // An older term does not replace a newer one.
        h.heard(2, vec![(7, 2, vec![1, 2, 3], vec![])]);
        assert_eq!(h.leader(7), Some(1));
        h.heard(2, vec![(7, 4, vec![2, 3, 4], vec![1])]);
        assert_eq!(h.leader(7), Some(2));
        assert_eq!(h.view(7).unwrap().voters, vec![2, 3, 4]);
        // Node 2 no longer names it: nobody is known to lead it.
        h.heard(2, vec![]);
        assert_eq!(h.leader(7), None);
        h.heard(3, vec![(7, 5, vec![2, 3, 4], vec![])]);
        h.lost(3);
        assert_eq!(h.leader(7), None);
        assert_eq!(h.view(7).unwrap().term, 5, "the members are still known");
        let reply = Reply::Array(vec![Reply::Array(vec![
            Reply::Int(3),
            Reply::Int(9),
            Reply::Array(vec![Reply::Int(1), Reply::Int(2)]),
            Reply::Array(vec![]),
        ])]);
        assert_eq!(
            parse_leaders(&reply),
            Some(vec![(3, 9, vec![1, 2], vec![])])
        );
        assert_eq!(parse_leaders(&Reply::Int(1)), None);
    }
}
