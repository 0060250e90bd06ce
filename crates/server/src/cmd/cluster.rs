//! CLUSTER: the Redis Cluster protocol's discovery commands, so cluster-aware clients (redis-py
//! `RedisCluster`, the `redis` crate's cluster client, `redis-cli -c`) find the leader and send
//! it their commands directly.
//!
//! Today the keyspace is one Raft group, so the cluster is one shard that owns all 16384
//! slots: its master is the group's leader, its replicas the other voters. A node id is the
//! Raft node id as 40 hex digits. On a standalone node these commands answer as a Redis with
//! cluster support disabled does. (The sharding issue brings many shards and slot moves.)

use crate::dispatch::Call;
use crate::replicated::Replication;
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

/// The group as this node sees it, and the shard's members, leader first; None while no
/// leader is known.
fn members(repl: &Replication) -> Option<(GroupStatus, Vec<Member>)> {
    let g = repl.group()?;
    let leader = g.leader?;
    let mut out = Vec::new();
    for &id in std::iter::once(&leader).chain(g.voters.iter().filter(|&&v| v != leader)) {
        if let Some(addr) = repl.client_addr(id) {
            out.push(Member {
                id,
                addr,
                master: id == leader,
            });
        }
    }
    Some((g, out))
}

fn with_cluster(c: &mut Call, f: impl FnOnce(&Replication, &mut Call) -> Reply) -> Reply {
    match c.shared.replication.as_ref() {
        Some(repl) => f(repl, c),
        None => disabled(),
    }
}

fn down() -> Reply {
    Reply::error("CLUSTERDOWN The cluster is down: no leader elected yet")
}

pub fn keyslot(c: &mut Call) -> Reply {
    with_cluster(c, |_, c| Reply::Int(key_slot(&c.args[2]) as i64))
}

pub fn myid(c: &mut Call) -> Reply {
    with_cluster(c, |repl, _| Reply::Bulk(node_name(repl.me).into_bytes()))
}

pub fn slots(c: &mut Call) -> Reply {
    with_cluster(c, |repl, _| {
        let Some((_, members)) = members(repl) else {
            return down();
        };
        let mut entry = vec![Reply::Int(0), Reply::Int(SLOTS as i64 - 1)];
        entry.extend(members.iter().map(|m| {
            Reply::Array(vec![
                Reply::Bulk(m.addr.ip().to_string().into_bytes()),
                Reply::Int(i64::from(m.addr.port())),
                Reply::Bulk(node_name(m.id).into_bytes()),
                Reply::Map(Vec::new()),
            ])
        }));
        Reply::Array(vec![Reply::Array(entry)])
    })
}

pub fn shards(c: &mut Call) -> Reply {
    with_cluster(c, |repl, _| {
        let Some((g, members)) = members(repl) else {
            return down();
        };
        let applied = g.applied;
        let bulk = |s: &str| Reply::Bulk(s.as_bytes().to_vec());
        let nodes = members
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
        Reply::Array(vec![Reply::Map(vec![
            (
                bulk("slots"),
                Reply::Array(vec![Reply::Int(0), Reply::Int(SLOTS as i64 - 1)]),
            ),
            (bulk("nodes"), Reply::Array(nodes)),
        ])])
    })
}

pub fn nodes(c: &mut Call) -> Reply {
    with_cluster(c, |repl, _| {
        let Some((g, members)) = members(repl) else {
            return down();
        };
        let term = g.term;
        let master = node_name(members[0].id);
        let mut text = String::new();
        for m in &members {
            let myself = if m.id == repl.me { "myself," } else { "" };
            let (flags, of, slots) = if m.master {
                ("master", "-".to_string(), format!(" 0-{}", SLOTS - 1))
            } else {
                ("slave", master.clone(), String::new())
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
    with_cluster(c, |repl, _| {
        let g = repl.group().unwrap_or_default();
        let ok = g.leader.is_some();
        let slots = if ok { SLOTS } else { 0 };
        let text = format!(
            "cluster_state:{}\r\ncluster_slots_assigned:{SLOTS}\r\ncluster_slots_ok:{slots}\r\n\
             cluster_slots_pfail:0\r\ncluster_slots_fail:{}\r\ncluster_known_nodes:{}\r\n\
             cluster_size:1\r\ncluster_current_epoch:{}\r\ncluster_my_epoch:{}\r\n\
             cluster_stats_messages_sent:0\r\ncluster_stats_messages_received:0\r\n\
             total_cluster_links_buffer_limit_exceeded:0\r\n",
            if ok { "ok" } else { "fail" },
            SLOTS - slots,
            g.voters.len() + g.learners.len(),
            g.term,
            g.term,
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

pub fn countkeysinslot(c: &mut Call) -> Reply {
    with_cluster(c, |_, c| match parse_slot(&c.args[2]) {
        Some(slot) => {
            let now = c.env.now_ms;
            Reply::Int(c.store.keyspace.slot_keys(slot, now).count() as i64)
        }
        None => Reply::error("ERR Invalid slot"),
    })
}

pub fn getkeysinslot(c: &mut Call) -> Reply {
    with_cluster(c, |_, c| {
        let count = std::str::from_utf8(&c.args[3])
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        let (Some(slot), Some(count)) = (parse_slot(&c.args[2]), count) else {
            return Reply::error("ERR Invalid slot or number of keys");
        };
        if count < 0 {
            return Reply::error("ERR Invalid slot or number of keys");
        }
        let now = c.env.now_ms;
        Reply::Array(
            c.store
                .keyspace
                .slot_keys(slot, now)
                .take(count as usize)
                .map(|k| Reply::Bulk(k.to_vec()))
                .collect(),
        )
    })
}
