//! Pub/Sub: who is subscribed to what on this node, delivery to them, and the forwarding of
//! published messages to the other nodes.
//!
//! Pub/Sub is not replicated state (as in Redis, a message goes to whoever listens when it is
//! published, at most once). A PUBLISH or SPUBLISH on any node is delivered to this node's
//! subscribers and sent on to every other node (`CAIRN.PUBLISH`), which delivers it to its
//! own. Each peer gets its messages through one connection and a bounded queue: when the queue
//! is full (the peer is down or slow) messages for it are dropped, never buffered without
//! limit. A subscriber whose unsent messages pass [`OUTPUT_LIMIT`] bytes is disconnected, as
//! Redis's `client-output-buffer-limit pubsub` does.

use crate::connection::ClientInfo;
use cairn_resp::{Protocol, Reply};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::mpsc;

/// Redis's default hard limit for a Pub/Sub client's output buffer (32 MB).
pub const OUTPUT_LIMIT: usize = 32 * 1024 * 1024;
/// Messages waiting for one peer node, at most.
const PEER_QUEUE: usize = 10_000;

/// What a subscription is to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
}

/// One subscribed connection, as the hub reaches it.
#[derive(Clone)]
pub struct Mailbox {
    pub info: Arc<ClientInfo>,
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes sent to `tx` and not yet written to the socket.
    pub queued: Arc<AtomicUsize>,
}

/// A message encoded once per protocol, for all its subscribers.
struct Encoded {
    resp2: Vec<u8>,
    resp3: Vec<u8>,
}

impl Encoded {
    fn new(message: Reply) -> Encoded {
        Encoded {
            resp2: message.to_bytes(Protocol::Resp2),
            resp3: message.to_bytes(Protocol::Resp3),
        }
    }
}

impl Mailbox {
    fn deliver(&self, message: &Encoded) {
        let bytes = if self.info.resp.load(Ordering::Relaxed) == 3 {
            &message.resp3
        } else {
            &message.resp2
        };
        let before = self.queued.fetch_add(bytes.len(), Ordering::Relaxed);
        if before + bytes.len() > OUTPUT_LIMIT {
            // Said once, when the limit is crossed; the connection closes shortly after.
            if before <= OUTPUT_LIMIT {
                tracing::warn!(
                    client = self.info.id,
                    "disconnecting a subscriber past its output buffer limit"
                );
                self.info.kill();
            }
            return;
        }
        let _ = self.tx.send(bytes.clone());
    }
}

#[derive(Default)]
struct Table {
    channels: HashMap<Vec<u8>, BTreeMap<u64, Mailbox>>,
    patterns: HashMap<Vec<u8>, BTreeMap<u64, Mailbox>>,
    shard: HashMap<Vec<u8>, BTreeMap<u64, Mailbox>>,
}

impl Table {
    fn of(&mut self, kind: Kind) -> &mut HashMap<Vec<u8>, BTreeMap<u64, Mailbox>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
        }
    }
}

#[derive(Default)]
pub struct Hub {
    table: Mutex<Table>,
    /// Per peer node: the queue its forwarder reads.
    peers: Mutex<HashMap<u64, mpsc::Sender<Vec<u8>>>>,
}

impl Hub {
    pub fn subscribe(&self, kind: Kind, name: &[u8], mailbox: &Mailbox) {
        self.table
            .lock()
            .of(kind)
            .entry(name.to_vec())
            .or_default()
            .insert(mailbox.info.id, mailbox.clone());
    }

    pub fn unsubscribe(&self, kind: Kind, name: &[u8], client: u64) {
        let mut t = self.table.lock();
        let map = t.of(kind);
        if let Some(subs) = map.get_mut(name) {
            subs.remove(&client);
            if subs.is_empty() {
                map.remove(name);
            }
        }
    }

    /// Delivers to this node's subscribers; returns how many received the message.
    pub fn deliver(&self, shard: bool, channel: &[u8], message: &[u8]) -> usize {
        let t = self.table.lock();
        let mut n = 0;
        let kind = if shard { "smessage" } else { "message" };
        let subs = if shard { &t.shard } else { &t.channels };
        if let Some(subs) = subs.get(channel) {
            let m = Encoded::new(Reply::Push(vec![
                Reply::from(kind),
                Reply::Bulk(channel.to_vec()),
                Reply::Bulk(message.to_vec()),
            ]));
            for s in subs.values() {
                s.deliver(&m);
                n += 1;
            }
        }
        if !shard {
            for (pattern, subs) in &t.patterns {
                if !cairn_store::glob::matches(pattern, channel, false) {
                    continue;
                }
                let m = Encoded::new(Reply::Push(vec![
                    Reply::from("pmessage"),
                    Reply::Bulk(pattern.clone()),
                    Reply::Bulk(channel.to_vec()),
                    Reply::Bulk(message.to_vec()),
                ]));
                for s in subs.values() {
                    s.deliver(&m);
                    n += 1;
                }
            }
        }
        n
    }

    /// Names with subscribers (matching `pattern` when given): PUBSUB CHANNELS/SHARDCHANNELS.
    pub fn names(&self, kind: Kind, pattern: Option<&[u8]>) -> Vec<Vec<u8>> {
        let mut t = self.table.lock();
        t.of(kind)
            .keys()
            .filter(|n| pattern.is_none_or(|p| cairn_store::glob::matches(p, n, false)))
            .cloned()
            .collect()
    }

    /// How many clients subscribe to `name`.
    pub fn count(&self, kind: Kind, name: &[u8]) -> usize {
        self.table
            .lock()
            .of(kind)
            .get(name)
            .map_or(0, BTreeMap::len)
    }

    /// How many patterns have subscribers (PUBSUB NUMPAT).
    pub fn patterns(&self) -> usize {
        self.table.lock().patterns.len()
    }

    /// Sends a published message on to every other node (replicated mode), dropping it for a
    /// peer whose queue is full.
    pub fn forward(
        &self,
        peers: BTreeMap<u64, SocketAddr>,
        me: u64,
        shard: bool,
        channel: &[u8],
        message: &[u8],
    ) {
        let request = crate::replicated::encode_request(&[
            b"CAIRN.PUBLISH".to_vec(),
            if shard {
                b"shard".to_vec()
            } else {
                b"channel".to_vec()
            },
            channel.to_vec(),
            message.to_vec(),
        ]);
        let mut queues = self.peers.lock();
        for (id, addr) in peers {
            if id == me {
                continue;
            }
            let tx = queues.entry(id).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(forwarder(addr, rx));
                tx
            });
            let _ = tx.try_send(request.clone());
        }
    }
}

/// Writes one peer's messages on one connection (reopened when lost), reading its replies
/// back so that they never pile up.
async fn forwarder(addr: SocketAddr, mut rx: mpsc::Receiver<Vec<u8>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn: Option<tokio::net::TcpStream> = None;
    let mut sink = vec![0u8; 16 * 1024];
    while let Some(first) = rx.recv().await {
        let mut batch = first;
        while batch.len() < 256 * 1024 {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        if conn.is_none() {
            conn = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            .ok()
            .and_then(Result::ok);
        }
        let Some(c) = conn.as_mut() else {
            continue; // the peer is down: these messages are lost for it
        };
        if c.write_all(&batch).await.is_err() {
            conn = None;
            continue;
        }
        // Drain whatever replies have arrived (+OK / :n), without waiting for them.
        loop {
            match tokio::time::timeout(std::time::Duration::ZERO, c.read(&mut sink)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    conn = None;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
}
