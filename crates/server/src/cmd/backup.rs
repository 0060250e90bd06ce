//! `CAIRN.BACKUP <shard>`: every key of one shard as of one point of its log, for `cairn
//! cluster backup`.
//!
//! The shard's leader takes a read barrier (everything acknowledged before the request is
//! applied here), then, under the store's lock, writes out each live key it serves with its
//! remaining time to live and its DUMP payload (Redis's format, which RESTORE takes back). The
//! reply is `[log index, key count, [key, pttl, payload]...]`. A node that does not lead the
//! shard relays the request to the one that does.
//!
//! The whole shard is one reply, held in memory once on the leader: a backup of a shard larger
//! than a relayed reply may be (512 MB) must be asked of its leader directly, which the CLI
//! does.

use crate::connection::Client;
use crate::Shared;
use cairn_replication::NodeError;
use cairn_resp::Reply;

pub async fn command(shared: &Shared, client: &mut Client, args: Vec<Vec<u8>>) -> Vec<u8> {
    let proto = client.proto;
    let group = args
        .get(1)
        .filter(|_| args.len() == 2)
        .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u64>().ok())
        .filter(|&g| g != crate::meta::GROUP && shared.shards.stores().any(|(s, _)| s == g));
    let Some(group) = group else {
        return Reply::error("ERR usage: CAIRN.BACKUP <shard>").to_bytes(proto);
    };
    let repl = shared.replication.as_ref().expect("replicated mode");
    match crate::replicated::barrier(shared, repl, group).await {
        Ok(Ok(())) => dump(shared, group).to_bytes(proto),
        Ok(Err(NodeError::NotLeader {
            leader: Some(l), ..
        })) if l != repl.me => crate::replicated::relay_once(shared, client, l, args)
            .await
            .unwrap_or_else(|e| e.to_bytes(proto)),
        _ => match repl.leader_of(group).filter(|&l| l != repl.me) {
            Some(l) => crate::replicated::relay_once(shared, client, l, args)
                .await
                .unwrap_or_else(|e| e.to_bytes(proto)),
            None => Reply::error("TRYAGAIN the shard has no leader now, retry").to_bytes(proto),
        },
    }
}

/// The shard's live, served keys with their TTLs and DUMP payloads, under one lock.
fn dump(shared: &Shared, group: u64) -> Reply {
    let dump = cairn_store::cmd::handler("dump").expect("DUMP is a store command");
    let pttl = cairn_store::cmd::handler("pttl").expect("PTTL is a store command");
    let mut store = shared.shards.store(group).lock();
    let env = cairn_store::Env {
        now_ms: crate::now_ms(),
        seed: crate::dispatch::next_seed(),
        proto: cairn_resp::Protocol::Resp2,
    };
    let index = store.watches.log_index();
    let keys: Vec<Vec<u8>> = store
        .keyspace
        .iter()
        .filter(|(k, e)| {
            !e.is_expired(env.now_ms) && store.keyspace.serves(cairn_store::slot::key_slot(k))
        })
        .map(|(k, _)| k.to_vec())
        .collect();
    let mut items = Vec::with_capacity(keys.len() * 3);
    for key in keys {
        let payload = store.execute(dump, &[b"DUMP".to_vec(), key.clone()], &env);
        let ttl = store.execute(pttl, &[b"PTTL".to_vec(), key.clone()], &env);
        let (Reply::Bulk(payload), Reply::Int(ttl)) = (payload, ttl) else {
            continue; // gone meanwhile: it cannot be, under the lock
        };
        items.push(Reply::Bulk(key));
        items.push(Reply::Int(ttl));
        items.push(Reply::Bulk(payload));
    }
    Reply::Array(vec![
        Reply::Int(index as i64),
        Reply::Int((items.len() / 3) as i64),
        Reply::Array(items),
    ])
}
