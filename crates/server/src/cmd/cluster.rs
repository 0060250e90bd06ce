//! CLUSTER: the Redis Cluster protocol's discovery commands, so cluster-aware clients (redis-py
//! `RedisCluster`, the `redis` crate's cluster client, `redis-cli -c`) find each shard's leader
//! and send it their commands directly.
//!
//! Each shard (`crate::shards`) is a Redis Cluster "shard": its slot ranges, its master (the
//! group's leader) and its replicas (the other voters; CLUSTER SLOTS leaves them out, see
//! [`slots`]). A node leads some shards and follows
//! others, so, unlike in Redis, one node appears as master of some slots and replica of others;
//! CLUSTER NODES, whose format has one role per node, lists each node once, as master with the
//! slots of the shards it leads, or as a replica of some shard's leader when it leads none. A
//! node id is the Raft node id as 40 hex digits. On a standalone node these commands answer as
//! a Redis with cluster support disabled does.

use crate::dispatch::Call;
use crate::replicated::Replication;
use crate::Shared;
use cairn_replication::GroupStatus;
use cairn_resp::Reply;
use cairn_store::slot::{key_slot, SLOTS};
use std::net::SocketAddr;

fn disabled() -> Reply {
    Reply::error("ERR This instance has cluster support disabled")
}

/// A Raft node id as a Redis Cluster node id (40 hex characters).
pub fn node_name(id: u64) -> String {
    format!("{id:040x}")
}

/// One node as the cluster commands describe it.
struct Member {
    id: u64,
    addr: SocketAddr,
    master: bool,
}

/// One shard as this node sees it: its group, slot ranges and members, leader first.
struct ShardView {
    status: GroupStatus,
    ranges: Vec<(usize, usize)>,
    members: Vec<Member>,
}

/// Every shard as this node sees it; None while some shard has no known leader.
fn shard_views(shared: &Shared, repl: &Replication) -> Option<Vec<ShardView>> {
    let mut out = Vec::new();
    for (group, ranges) in shared.shards.ranges() {
        let status = repl.view(group)?;
        let leader = status.leader?;
        let mut members = Vec::new();
        for &id in std::iter::once(&leader).chain(status.voters.iter().filter(|&&v| v != leader)) {
            if let Some(addr) = repl.client_addr(id) {
                members.push(Member {
                    id,
                    addr,
                    master: id == leader,
                });
            }
        }
        out.push(ShardView {
            status,
            ranges,
            members,
        });
    }
    Some(out)
}

fn with_cluster(c: &mut Call, f: impl FnOnce(&Replication, &mut Call) -> Reply) -> Reply {
    match c.shared.replication.as_ref() {
        Some(repl) => f(repl, c),
        None => disabled(),
    }
}

fn down() -> Reply {
    Reply::error("CLUSTERDOWN The cluster is down: a shard has no leader elected yet")
}

/// ASKING, READONLY and READWRITE: accepted, as a Redis Cluster node accepts them, and
/// nothing changes. cairn never answers `-ASK` (a slot moves whole, see docs/sharding.md), and
/// its reads are linearizable whichever node a client reads through, which is at least what
/// READONLY asks for.
pub fn accepted(c: &mut Call) -> Reply {
    with_cluster(c, |_, _| Reply::OK)
}

pub fn keyslot(c: &mut Call) -> Reply {
    with_cluster(c, |_, c| Reply::Int(key_slot(&c.args[2]) as i64))
}

pub fn myid(c: &mut Call) -> Reply {
    with_cluster(c, |repl, _| Reply::Bulk(node_name(repl.me).into_bytes()))
}

pub fn slots(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| {
        let Some(views) = shard_views(c.shared, repl) else {
            return down();
        };
        let mut out = Vec::new();
        for view in &views {
            for &(a, b) in &view.ranges {
                let mut entry = vec![Reply::Int(a as i64), Reply::Int(b as i64)];
                // The master only: a node is a replica of the shards it does not lead, and
                // clients that keep one role per node (redis-py) would then take a node first
                // listed as some shard's replica for a replica everywhere, and leave it out of
                // the commands they send to every master (DBSIZE, SCAN, KEYS, FLUSHALL).
                // Replicas serve no reads of their own yet; CLUSTER SHARDS lists them.
                entry.extend(view.members.iter().take(1).map(|m| {
                    Reply::Array(vec![
                        Reply::Bulk(m.addr.ip().to_string().into_bytes()),
                        Reply::Int(i64::from(m.addr.port())),
                        Reply::Bulk(node_name(m.id).into_bytes()),
                        Reply::Map(Vec::new()),
                    ])
                }));
                out.push(Reply::Array(entry));
            }
        }
        Reply::Array(out)
    })
}

pub fn shards(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| {
        let Some(views) = shard_views(c.shared, repl) else {
            return down();
        };
        let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        let shards = views
            .iter()
            .map(|view| {
                let applied = view.status.applied;
                let nodes = view
                    .members
                    .iter()
                    .map(|m| {
                        Reply::Map(vec![
                            (bulk("id"), bulk(&node_name(m.id))),
                            (bulk("port"), Reply::Int(i64::from(m.addr.port()))),
                            (bulk("ip"), bulk(&m.addr.ip().to_string())),
                            (bulk("endpoint"), bulk(&m.addr.ip().to_string())),
                            (
                                bulk("role"),
                                bulk(if m.master { "master" } else { "replica" }),
                            ),
                            (bulk("replication-offset"), Reply::Int(applied as i64)),
                            (bulk("health"), bulk("online")),
                        ])
                    })
                    .collect();
                let slots = view
                    .ranges
                    .iter()
                    .flat_map(|&(a, b)| [Reply::Int(a as i64), Reply::Int(b as i64)])
                    .collect();
                Reply::Map(vec![
                    (bulk("slots"), Reply::Array(slots)),
                    (bulk("nodes"), Reply::Array(nodes)),
                ])
            })
            .collect();
        Reply::Array(shards)
    })
}

pub fn nodes(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| {
        let Some(views) = shard_views(c.shared, repl) else {
            return down();
        };
        let term = views.iter().map(|v| v.status.term).max().unwrap_or(0);
        // Each node once: master of the shards it leads, else replica of a shard's leader.
        let mut text = String::new();
        let mut listed = std::collections::BTreeSet::new();
        let all = views
            .iter()
            .flat_map(|v| v.members.iter().map(move |m| (v, m)));
        for (_, m) in all.clone() {
            if !listed.insert(m.id) {
                continue;
            }
            let myself = if m.id == repl.me { "myself," } else { "" };
            let led: Vec<&ShardView> = views.iter().filter(|v| v.members[0].id == m.id).collect();
            let (flags, of, slots) = if led.is_empty() {
                let of = all
                    .clone()
                    .find(|(v, n)| n.id == m.id && !n.master && !v.members.is_empty())
                    .map_or_else(|| "-".to_string(), |(v, _)| node_name(v.members[0].id));
                ("slave", of, String::new())
            } else {
                let mut ranges: Vec<(usize, usize)> =
                    led.iter().flat_map(|v| v.ranges.iter().copied()).collect();
                ranges.sort_unstable();
                let slots: String = ranges
                    .iter()
                    .map(|&(a, b)| {
                        if a == b {
                            format!(" {a}")
                        } else {
                            format!(" {a}-{b}")
                        }
                    })
                    .collect();
                ("master", "-".to_string(), slots)
            };
            text.push_str(&format!(
                "{} {}:{}@{} {myself}{flags} {of} 0 0 {term} connected{slots}\n",
                node_name(m.id),
                m.addr.ip(),
                m.addr.port(),
                u32::from(m.addr.port()) + 10000,
            ));
        }
        Reply::Verbatim("txt", text.into_bytes())
    })
}

pub fn info(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| {
        let mut ok_slots = 0;
        let mut term = 0;
        for (group, ranges) in c.shared.shards.ranges() {
            let view = repl.view(group);
            term = term.max(view.as_ref().map_or(0, |g| g.term));
            if view.is_some_and(|g| g.leader.is_some()) {
                ok_slots += ranges.iter().map(|(a, b)| b - a + 1).sum::<usize>();
            }
        }
        let known = repl.all_client_addrs();
        let ok = ok_slots == SLOTS;
        let text = format!(
            "cluster_state:{}\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{ok_slots}\r\n\
             cluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\n\
             cluster_size:{}\r\ncluster_current_epoch:{term}\r\ncluster_my_epoch:{term}\r\n\
             cluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\n\
             total_cluster_links_buffer_limit_exceeded:0\r\ncairn_initial_shards:{}\r\n",
            if ok { "ok" } else { "fail" },
            SLOTS - ok_slots,
            known.len(),
            // As Redis counts: shards serving at least one slot.
            c.shared.shards.ranges().len(),
            c.shared.shards.initial(),
        );
        Reply::Verbatim("txt", text.into_bytes())
    })
}

fn parse_slot(arg: &[u8]) -> Option<usize> {
    std::str::from_utf8(arg)
        .ok()?
        .parse::<i64>()
        .ok()
        .filter(|s| (0..SLOTS as i64).contains(s))
        .map(|s| s as usize)
}

/// For a slot whose shard this node holds no replica of: `-MOVED` to the shard's leader (the
/// keys are there, not here), or `-TRYAGAIN` while no leader is known.
fn elsewhere(c: &Call, repl: &Replication, slot: usize) -> Option<Reply> {
    let group = c.shared.shards.group_of_slot(slot);
    if repl.hosts(group) {
        return None;
    }
    Some(
        match repl.leader_of(group).and_then(|l| repl.client_addr(l)) {
            Some(addr) => Reply::error(format!("MOVED {slot} {addr}")),
            None => Reply::error("TRYAGAIN the slot's shard has no known leader yet, retry"),
        },
    )
}

pub fn countkeysinslot(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| match parse_slot(&c.args[2]) {
        Some(slot) => {
            if let Some(moved) = elsewhere(c, repl, slot) {
                return moved;
            }
            let now = c.env.now_ms;
            c.slot_store(slot, |store| {
                Reply::Int(store.keyspace.slot_keys(slot, now).count() as i64)
            })
        }
        None => Reply::error("ERR Invalid slot"),
    })
}

pub fn getkeysinslot(c: &mut Call) -> Reply {
    with_cluster(c, |repl, c| {
        let count = std::str::from_utf8(&c.args[3])
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        let (Some(slot), Some(count)) = (parse_slot(&c.args[2]), count) else {
            return Reply::error("ERR Invalid slot or number of keys");
        };
        if count < 0 {
            return Reply::error("ERR Invalid slot or number of keys");
        }
        if let Some(moved) = elsewhere(c, repl, slot) {
            return moved;
        }
        let now = c.env.now_ms;
        c.slot_store(slot, |store| {
            Reply::Array(
                store
                    .keyspace
                    .slot_keys(slot, now)
                    .take(count as usize)
                    .map(|k| Reply::Bulk(k.to_vec()))
                    .collect(),
            )
        })
    })
}
