//! Pub/Sub commands: SUBSCRIBE, UNSUBSCRIBE, PSUBSCRIBE, PUNSUBSCRIBE, SSUBSCRIBE, SUNSUBSCRIBE,
//! PUBLISH, SPUBLISH and PUBSUB (see `crate::pubsub` for delivery across nodes).

use crate::connection::{Client, Subscriptions};
use crate::dispatch::Call;
use crate::pubsub::{Kind, Mailbox};
use cairn_resp::Reply;

fn names(kind: Kind) -> (&'static str, &'static str) {
    match kind {
        Kind::Channel => ("subscribe", "unsubscribe"),
        Kind::Pattern => ("psubscribe", "punsubscribe"),
        Kind::Shard => ("ssubscribe", "sunsubscribe"),
        Kind::Key => unreachable!("clients do not subscribe to keys"),
    }
}

/// The count a (un)subscribe reply carries: channels and patterns together, shard channels
/// on their own (as Redis 7 counts them).
fn count(subs: &Subscriptions, kind: Kind) -> i64 {
    match kind {
        Kind::Shard => subs.shard.len() as i64,
        _ => (subs.channels.len() + subs.patterns.len()) as i64,
    }
}

fn subscribe(c: &mut Call, kind: Kind) -> Reply {
    let hub = c.shared.pubsub.clone();
    let subs = c.client.subscriptions(&hub);
    let mailbox: Mailbox = subs.mailbox.clone();
    let mut acks = std::mem::take(&mut c.client.interest_acks);
    let subs = c.client.subscriptions(&hub);
    let mut replies = Vec::new();
    for name in &c.args[1..] {
        if subs.of(kind).insert(name.clone()) {
            hub.subscribe(kind, name, &mailbox, &mut acks);
        }
        replies.push(Reply::Push(vec![
            Reply::from(names(kind).0),
            Reply::Bulk(name.clone()),
            Reply::Int(count(subs, kind)),
        ]));
    }
    c.client.interest_acks = acks;
    Reply::Several(replies)
}

fn unsubscribe(c: &mut Call, kind: Kind) -> Reply {
    let hub = c.shared.pubsub.clone();
    let id = c.client.id();
    let subs = c.client.subscriptions(&hub);
    let targets: Vec<Vec<u8>> = if c.args.len() > 1 {
        c.args[1..].to_vec()
    } else {
        subs.of(kind).iter().cloned().collect()
    };
    if targets.is_empty() {
        return Reply::Push(vec![
            Reply::from(names(kind).1),
            Reply::Nil,
            Reply::Int(count(subs, kind)),
        ]);
    }
    let mut replies = Vec::new();
    for name in targets {
        if subs.of(kind).remove(&name) {
            hub.unsubscribe(kind, &name, id);
        }
        replies.push(Reply::Push(vec![
            Reply::from(names(kind).1),
            Reply::Bulk(name),
            Reply::Int(count(subs, kind)),
        ]));
    }
    Reply::Several(replies)
}

pub fn subscribe_channels(c: &mut Call) -> Reply {
    subscribe(c, Kind::Channel)
}
pub fn subscribe_patterns(c: &mut Call) -> Reply {
    subscribe(c, Kind::Pattern)
}
pub fn subscribe_shard(c: &mut Call) -> Reply {
    subscribe(c, Kind::Shard)
}
pub fn unsubscribe_channels(c: &mut Call) -> Reply {
    unsubscribe(c, Kind::Channel)
}
pub fn unsubscribe_patterns(c: &mut Call) -> Reply {
    unsubscribe(c, Kind::Pattern)
}
pub fn unsubscribe_shard(c: &mut Call) -> Reply {
    unsubscribe(c, Kind::Shard)
}

fn publish_to(c: &mut Call, shard: bool) -> Reply {
    let (channel, message) = (&c.args[1], &c.args[2]);
    let n = c.shared.pubsub.deliver(shard, channel, message);
    if let Some(repl) = &c.shared.replication {
        c.shared
            .pubsub
            .forward(&repl.all_client_addrs(), repl.me, shard, channel, message);
    }
    Reply::Int(n as i64)
}

pub fn publish(c: &mut Call) -> Reply {
    publish_to(c, false)
}

pub fn spublish(c: &mut Call) -> Reply {
    publish_to(c, true)
}

/// `CAIRN.PUBLISH channel|shard <channel> <message>`: another node's PUBLISH (or keyspace
/// notification), delivered here only (never forwarded again). `CAIRN.PUBLISH key <key> ""`:
/// a shard's leader applied a change to a key that blocked clients here wait on.
pub fn deliver_forwarded(shared: &crate::Shared, args: &[Vec<u8>]) -> Reply {
    match args {
        [_, kind, key, _] if kind.eq_ignore_ascii_case(b"key") => {
            crate::stats::Stats::add(&shared.pubsub.forwarded_in, 1);
            shared.pubsub.wake(key);
            Reply::OK
        }
        [_, kind, channel, message] => {
            let shard = kind.eq_ignore_ascii_case(b"shard");
            crate::stats::Stats::add(&shared.pubsub.forwarded_in, 1);
            Reply::Int(shared.pubsub.deliver(shard, channel, message) as i64)
        }
        _ => Reply::error("ERR usage: CAIRN.PUBLISH channel|shard <channel> <message>"),
    }
}

pub fn pubsub_channels(c: &mut Call) -> Reply {
    let kind = if cairn_store::exec::is(&c.args[1], "shardchannels") {
        Kind::Shard
    } else {
        Kind::Channel
    };
    if c.args.len() > 3 {
        return Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            String::from_utf8_lossy(&c.args[1])
        ));
    }
    let pattern = c.args.get(2).map(Vec::as_slice);
    Reply::Array(
        c.shared
            .pubsub
            .names(kind, pattern)
            .into_iter()
            .map(Reply::Bulk)
            .collect(),
    )
}

pub fn pubsub_numsub(c: &mut Call) -> Reply {
    let kind = if cairn_store::exec::is(&c.args[1], "shardnumsub") {
        Kind::Shard
    } else {
        Kind::Channel
    };
    let mut out = Vec::new();
    for name in &c.args[2..] {
        out.push(Reply::Bulk(name.clone()));
        out.push(Reply::Int(c.shared.pubsub.count(kind, name) as i64));
    }
    Reply::Array(out)
}

pub fn pubsub_numpat(c: &mut Call) -> Reply {
    Reply::Int(c.shared.pubsub.patterns() as i64)
}

/// In RESP2 a subscribed connection may only (un)subscribe, PING, QUIT and RESET: the error
/// for anything else, None when the command may run.
pub fn refused_while_subscribed(client: &Client, name: &str) -> Option<Reply> {
    let subscribed = client.subs.as_ref().is_some_and(|s| !s.is_empty());
    if !subscribed || client.proto == cairn_resp::Protocol::Resp3 {
        return None;
    }
    let allowed = matches!(
        name,
        "subscribe"
            | "unsubscribe"
            | "psubscribe"
            | "punsubscribe"
            | "ssubscribe"
            | "sunsubscribe"
            | "ping"
            | "quit"
            | "reset"
    );
    (!allowed).then(|| {
        Reply::error(format!(
            "ERR Can't execute '{name}': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / RESET are allowed in this context"
        ))
    })
}
