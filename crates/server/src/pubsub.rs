//! Pub/Sub: who is subscribed to what on this node, delivery to them, and the forwarding of
//! published messages to the other nodes.
//!
//! Pub/Sub is not replicated state (as in Redis, a message goes to whoever listens when it is
//! published, at most once). A PUBLISH or SPUBLISH on any node is delivered to this node's
//! subscribers and sent on (`CAIRN.PUBLISH`) to the other nodes that have a matching
//! subscriber, which deliver it to their own.
//!
//! Each node tells every other node what its subscribers want (`CAIRN.INTEREST`): the whole
//! set when its connection to that node opens, then each name that gains its first or loses
//! its last subscriber. A SUBSCRIBE is answered only once the other nodes have acknowledged
//! the new name (or [`INTEREST_WAIT`] has passed), so a message published anywhere after the
//! reply reaches the subscriber. A node whose interest is not known yet (it has not connected
//! since this node started) gets every message.
//!
//! Each peer gets its messages through one connection and a bounded queue: when the queue is
//! full (the peer is down or slow) messages for it are dropped, never buffered without limit,
//! and the interest it was owed is sent whole once the queue drains. A subscriber whose unsent
//! messages pass [`OUTPUT_LIMIT`] bytes is disconnected, as Redis's `client-output-buffer-limit
//! pubsub` does.

use crate::connection::ClientInfo;
use cairn_resp::{Protocol, Reply};
use parking_lot::Mutex;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

/// Redis's default hard limit for a Pub/Sub client's output buffer (32 MB).
pub const OUTPUT_LIMIT: usize = 32 * 1024 * 1024;

/// `client-output-buffer-limit pubsub <hard> <soft> <seconds>` as last set (Redis's default
/// `32mb 8mb 60`): a subscriber with more than `hard` bytes of messages unsent, or more than
/// `soft` for `seconds` on end, is disconnected. Per process, as CONFIG SET sets it.
pub static PUBSUB_HARD_LIMIT: AtomicUsize = AtomicUsize::new(OUTPUT_LIMIT);
pub static PUBSUB_SOFT_LIMIT: AtomicUsize = AtomicUsize::new(8 * 1024 * 1024);
pub static PUBSUB_SOFT_SECS: AtomicU64 = AtomicU64::new(60);

/// Subscribers disconnected for passing [`OUTPUT_LIMIT`] (INFO's
/// `client_output_buffer_limit_disconnections`).
pub static OUTPUT_LIMIT_DISCONNECTIONS: AtomicU64 = AtomicU64::new(0);
/// Messages waiting for one peer node, at most.
const PEER_QUEUE: usize = 10_000;
/// The longest a SUBSCRIBE waits for the other nodes to acknowledge a new name.
pub const INTEREST_WAIT: Duration = Duration::from_millis(500);
/// Names per `CAIRN.INTEREST` request when a node sends its whole interest.
const NAMES_PER_REQUEST: usize = 1000;
/// The most names of one kind this node keeps for another node's interest.
#[cfg(not(test))]
const MAX_INTEREST_NAMES: usize = 1_000_000;
#[cfg(test)]
const MAX_INTEREST_NAMES: usize = 10;
/// The most nodes whose interest this node keeps.
const MAX_INTEREST_NODES: usize = 1024;

/// What a subscription is to: a client's channel, pattern or shard channel, or (internal) a
/// key a blocked client of this node waits on, whose changes another node's apply reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Channel,
    Pattern,
    Shard,
    Key,
}

impl Kind {
    const ALL: [Kind; 4] = [Kind::Channel, Kind::Pattern, Kind::Shard, Kind::Key];

    fn word(self) -> &'static [u8] {
        match self {
            Kind::Channel => b"channel",
            Kind::Pattern => b"pattern",
            Kind::Shard => b"shard",
            Kind::Key => b"key",
        }
    }

    fn parse(word: &[u8]) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| word.eq_ignore_ascii_case(k.word()))
    }
}

/// One subscribed connection, as the hub reaches it.
#[derive(Clone)]
pub struct Mailbox {
    pub info: Arc<ClientInfo>,
    pub tx: mpsc::UnboundedSender<Vec<u8>>,
    /// Bytes sent to `tx` and not yet written to the socket.
    pub queued: Arc<AtomicUsize>,
    /// Since when (ms) `queued` has been over the soft limit; 0 when it is not.
    pub over_soft_since: Arc<AtomicU64>,
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
        let after = before + bytes.len();
        let hard = PUBSUB_HARD_LIMIT.load(Ordering::Relaxed);
        let soft = PUBSUB_SOFT_LIMIT.load(Ordering::Relaxed);
        let mut over = hard > 0 && after > hard;
        if soft > 0 && after > soft {
            let now = crate::now_ms();
            let since = match self.over_soft_since.compare_exchange(
                0,
                now,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => now,
                Err(since) => since,
            };
            over |= now.saturating_sub(since) >= PUBSUB_SOFT_SECS.load(Ordering::Relaxed) * 1000;
        } else {
            self.over_soft_since.store(0, Ordering::Relaxed);
        }
        if over {
            // Said once, when the limit is crossed; the connection closes shortly after.
            if !self.info.killed() {
                OUTPUT_LIMIT_DISCONNECTIONS.fetch_add(1, Ordering::Relaxed);
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
    /// Keys blocked clients of this node wait on, with each client's wake-up.
    keys: HashMap<Vec<u8>, BTreeMap<u64, Arc<Notify>>>,
}

impl Table {
    fn of(&mut self, kind: Kind) -> &mut HashMap<Vec<u8>, BTreeMap<u64, Mailbox>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
            Kind::Key => unreachable!("blocked clients wait in Table::keys, not in mailboxes"),
        }
    }

    fn names(&mut self, kind: Kind) -> Vec<&Vec<u8>> {
        match kind {
            Kind::Key => self.keys.keys().collect(),
            _ => self.of(kind).keys().collect(),
        }
    }
}

/// What one other node's subscribers want: the names its forwarded messages must match.
#[derive(Default)]
struct Interest {
    channels: HashSet<Vec<u8>>,
    patterns: HashSet<Vec<u8>>,
    shard: HashSet<Vec<u8>>,
    keys: HashSet<Vec<u8>>,
}

impl Interest {
    fn of(&mut self, kind: Kind) -> &mut HashSet<Vec<u8>> {
        match kind {
            Kind::Channel => &mut self.channels,
            Kind::Pattern => &mut self.patterns,
            Kind::Shard => &mut self.shard,
            Kind::Key => &mut self.keys,
        }
    }

    /// Whether a message of `kind` (a channel, a shard channel or a key) named `name` is for
    /// this node.
    fn wants(&self, kind: Kind, name: &[u8]) -> bool {
        match kind {
            Kind::Shard => self.shard.contains(name),
            Kind::Key => self.keys.contains(name),
            Kind::Channel | Kind::Pattern => {
                self.channels.contains(name)
                    || self
                        .patterns
                        .iter()
                        .any(|p| cairn_store::glob::matches(p, name, false))
            }
        }
    }
}

/// A request for a peer, with whoever waits for the peer to have handled it.
struct Outgoing {
    bytes: Vec<u8>,
    /// An interest change (else a published message).
    interest: bool,
    acks: Vec<oneshot::Sender<()>>,
}

/// This node's link to one other node.
struct Peer {
    tx: mpsc::Sender<Outgoing>,
    /// An interest change could not be queued: the forwarder sends the whole set again.
    resync: Arc<AtomicBool>,
}

#[derive(Default)]
pub struct Hub {
    table: Mutex<Table>,
    /// This node's id (0 until replication starts).
    me: AtomicU64,
    /// Per peer node: the queue its forwarder reads.
    peers: Mutex<HashMap<u64, Peer>>,
    /// Per peer node: what its subscribers want, once it has said.
    interest: Mutex<HashMap<u64, Interest>>,
    /// Messages this node was sent by others (`CAIRN.PUBLISH`), for INFO.
    pub forwarded_in: AtomicU64,
    /// Whether any other node has blocked clients waiting on keys (see [`Hub::wake_others`]).
    keys_wanted: AtomicBool,
    /// `notify-keyspace-events`: (version, flags) of the newest setting this node knows.
    keyspace: Mutex<(u64, u32)>,
    keyspace_flags: std::sync::atomic::AtomicU32,
    /// The node's users, whose node secret links show first (see `crate::replicated::relay_greeting`).
    pub acl: std::sync::OnceLock<Arc<crate::acl::Acl>>,
    /// `tls-cluster yes`: links to other nodes are mutual TLS (see `cairn_replication::bus::PeerStream`).
    pub peer_tls: std::sync::OnceLock<cairn_replication::bus::BusTls>,
}

/// Acknowledgements a SUBSCRIBE waits for before it is answered.
#[derive(Default)]
pub struct Pending(Vec<oneshot::Receiver<()>>);

impl Pending {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Waits until every peer has acknowledged, has failed, or [`INTEREST_WAIT`] has passed.
    pub async fn wait(self) {
        let deadline = tokio::time::Instant::now() + INTEREST_WAIT;
        for ack in self.0 {
            let _ = tokio::time::timeout_at(deadline, ack).await;
        }
    }
}

fn interest_request(me: u64, op: &[u8], kind: Option<Kind>, names: &[&Vec<u8>]) -> Vec<u8> {
    let mut args = vec![
        b"CAIRN.INTEREST".to_vec(),
        me.to_string().into_bytes(),
        op.to_vec(),
    ];
    if let Some(k) = kind {
        args.push(k.word().to_vec());
    }
    args.extend(names.iter().map(|n| n.to_vec()));
    crate::replicated::encode_request(&args)
}

/// `CAIRN.INTEREST <me> events <version> <flags>`: a `notify-keyspace-events` setting.
fn events_request(me: u64, version: u64, flags: u32) -> Vec<u8> {
    crate::replicated::encode_request(&[
        b"CAIRN.INTEREST".to_vec(),
        me.to_string().into_bytes(),
        b"events".to_vec(),
        version.to_string().into_bytes(),
        cairn_store::notify::format(flags).into_bytes(),
    ])
}

impl Hub {
    /// Subscribes `mailbox` to `name`. When the name is new on this node, the other nodes are
    /// told, and their acknowledgements are added to `pending`.
    pub fn subscribe(&self, kind: Kind, name: &[u8], mailbox: &Mailbox, pending: &mut Pending) {
        let mut t = self.table.lock();
        let subs = t.of(kind).entry(name.to_vec()).or_default();
        let first = subs.is_empty();
        subs.insert(mailbox.info.id, mailbox.clone());
        if first {
            // Under the table lock, so that peers see a name's changes in the order they happen.
            self.announce(b"add", kind, name, Some(pending));
        }
    }

    pub fn unsubscribe(&self, kind: Kind, name: &[u8], client: u64) {
        let mut t = self.table.lock();
        let map = t.of(kind);
        if let Some(subs) = map.get_mut(name) {
            subs.remove(&client);
            if subs.is_empty() {
                map.remove(name);
                self.announce(b"del", kind, name, None);
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

    /// Queues an interest change for every peer; a peer whose queue is full is marked for a
    /// whole resend instead.
    fn announce(&self, op: &[u8], kind: Kind, name: &[u8], pending: Option<&mut Pending>) {
        let me = self.me.load(Ordering::Relaxed);
        if me == 0 {
            return;
        }
        let name = name.to_vec();
        self.announce_request(interest_request(me, op, Some(kind), &[&name]), pending);
    }

    fn announce_request(&self, bytes: Vec<u8>, mut pending: Option<&mut Pending>) {
        for peer in self.peers.lock().values() {
            let acks = match pending.as_mut() {
                Some(p) => {
                    let (tx, rx) = oneshot::channel();
                    p.0.push(rx);
                    vec![tx]
                }
                None => Vec::new(),
            };
            let out = Outgoing {
                bytes: bytes.clone(),
                interest: true,
                acks,
            };
            if peer.tx.try_send(out).is_err() {
                peer.resync.store(true, Ordering::Relaxed);
            }
        }
    }

    /// This node's whole interest, as the requests that replace what a peer knows of it,
    /// followed by the messages of `batch` and of the peer's queue. The interest changes
    /// queued so far are dropped (they are older than the whole, and their acknowledgements
    /// move to it): one sent after the whole could undo a newer change that a full queue lost.
    fn whole_interest(
        &self,
        me: u64,
        batch: Vec<Outgoing>,
        queued: &mut mpsc::Receiver<Outgoing>,
    ) -> Vec<Outgoing> {
        let mut t = self.table.lock();
        let mut acks = Vec::new();
        let mut messages = Vec::new();
        let mut sort = |o: Outgoing| {
            if o.interest {
                acks.extend(o.acks);
            } else {
                messages.push(o);
            }
        };
        batch.into_iter().for_each(&mut sort);
        while let Ok(o) = queued.try_recv() {
            sort(o);
        }
        let mut out = vec![Outgoing {
            bytes: interest_request(me, b"reset", None, &[]),
            interest: true,
            acks: Vec::new(),
        }];
        for kind in Kind::ALL {
            let names: Vec<&Vec<u8>> = t.names(kind);
            for chunk in names.chunks(NAMES_PER_REQUEST) {
                out.push(Outgoing {
                    bytes: interest_request(me, b"add", Some(kind), chunk),
                    interest: true,
                    acks: Vec::new(),
                });
            }
        }
        let (version, flags) = *self.keyspace.lock();
        if version > 0 {
            out.push(Outgoing {
                bytes: events_request(me, version, flags),
                interest: true,
                acks: Vec::new(),
            });
        }
        out.last_mut().expect("reset is there").acks = acks;
        out.extend(messages);
        out
    }

    /// The `notify-keyspace-events` flags in force on this node.
    pub fn keyspace_flags(&self) -> u32 {
        self.keyspace_flags.load(Ordering::Relaxed)
    }

    /// Sets `notify-keyspace-events` for the whole cluster: here, and on every other node
    /// through the links (whose acknowledgements are added to `pending`). The newest setting
    /// anywhere wins (a version from the clock, made larger than any seen).
    pub fn set_keyspace_events(&self, flags: u32, pending: &mut Pending) {
        let _order = self.table.lock(); // the same order as the links' whole interest
        let me = self.me.load(Ordering::Relaxed);
        let version = {
            let mut k = self.keyspace.lock();
            let version = (crate::now_ms() * 1000 + me % 1000).max(k.0 + 1);
            *k = (version, flags);
            version
        };
        self.keyspace_flags.store(flags, Ordering::Relaxed);
        if me != 0 {
            self.announce_request(events_request(me, version, flags), Some(pending));
        }
    }

    /// Publishes keyspace notifications (collected by a shard this node leads, or by the
    /// standalone store) to this node's subscribers and to the other nodes that want them.
    pub fn publish_events(&self, events: Vec<cairn_store::notify::Event>) {
        let flags = self.keyspace_flags();
        for event in events {
            for (channel, message) in event.messages(flags) {
                self.deliver(false, &channel, &message);
                self.forward_to_links(Kind::Channel, &channel, &message);
            }
        }
    }

    /// `CAIRN.INTEREST <node> reset|add|del [<kind> <name>...]`: what another node's
    /// subscribers want; `CAIRN.INTEREST <node> events <version> <flags>`: a cluster-wide
    /// `notify-keyspace-events` setting.
    pub fn interest_of(&self, args: &[Vec<u8>]) -> Reply {
        let usage = || {
            Reply::error("ERR usage: CAIRN.INTEREST <node> reset|add|del [<kind> <name>...] | events <version> <flags>")
        };
        let Some(node) = args.get(1).and_then(|a| cairn_resp::decode::parse_i64(a)) else {
            return usage();
        };
        let node = node as u64;
        let op = args.get(2).map(Vec::as_slice).unwrap_or_default();
        if op == b"events" {
            let version = args.get(3).and_then(|v| cairn_resp::decode::parse_i64(v));
            let flags = args
                .get(4)
                .and_then(|f| cairn_store::notify::parse(&String::from_utf8_lossy(f)));
            let (Some(version), Some(flags)) = (version, flags) else {
                return usage();
            };
            let mut k = self.keyspace.lock();
            if version as u64 > k.0 {
                *k = (version as u64, flags);
                self.keyspace_flags.store(flags, Ordering::Relaxed);
            }
            return Reply::OK;
        }
        let mut all = self.interest.lock();
        // Bounded whoever sends it (any client can, until ACLs exist): so many nodes, and so
        // many names per node, at most.
        if !all.contains_key(&node) && all.len() >= MAX_INTEREST_NODES {
            return Reply::error("ERR too many nodes have told their interest");
        }
        if op.eq_ignore_ascii_case(b"reset") {
            all.insert(node, Interest::default());
            return Reply::OK;
        }
        let Some(kind) = args.get(3).and_then(|k| Kind::parse(k)) else {
            return usage();
        };
        let set = all.entry(node).or_default().of(kind);
        match op {
            b"add" if set.len() + args.len() - 4 > MAX_INTEREST_NAMES => {
                // Past the bound this node no longer keeps track: it sends that node
                // everything, as to one whose interest it never knew.
                all.remove(&node);
            }
            b"add" => set.extend(args[4..].iter().cloned()),
            b"del" => {
                for name in &args[4..] {
                    set.remove(name);
                }
            }
            _ => return usage(),
        }
        self.keys_wanted
            .store(all.values().any(|i| !i.keys.is_empty()), Ordering::Relaxed);
        Reply::OK
    }

    /// Registers a blocked client of this node on `keys` (in a shard this node holds no replica
    /// of): the other nodes are told, and their acknowledgements added to `pending`; a change
    /// to one of the keys applied by a shard's leader then notifies `notify`.
    pub fn wait_on(
        &self,
        keys: &[Vec<u8>],
        client: u64,
        notify: &Arc<Notify>,
        pending: &mut Pending,
    ) {
        let mut t = self.table.lock();
        for key in keys {
            let waiters = t.keys.entry(key.clone()).or_default();
            let first = waiters.is_empty();
            waiters.insert(client, notify.clone());
            if first {
                self.announce(b"add", Kind::Key, key, Some(pending));
            }
        }
    }

    /// Takes a blocked client off `keys` (see [`Hub::wait_on`]).
    pub fn stop_waiting(&self, keys: &[Vec<u8>], client: u64) {
        let mut t = self.table.lock();
        for key in keys {
            if let Some(waiters) = t.keys.get_mut(key) {
                waiters.remove(&client);
                if waiters.is_empty() {
                    t.keys.remove(key);
                    self.announce(b"del", Kind::Key, key, None);
                }
            }
        }
    }

    /// Wakes this node's clients blocked on `key` (another node applied a change to it).
    pub fn wake(&self, key: &[u8]) {
        if let Some(waiters) = self.table.lock().keys.get(key) {
            for notify in waiters.values() {
                notify.notify_one();
            }
        }
    }

    /// Whether another node waits on any key: only then does a leader collect changed keys.
    pub fn keys_wanted(&self) -> bool {
        self.keys_wanted.load(Ordering::Relaxed)
    }

    /// Tells the nodes whose blocked clients wait on some of `keys` that they changed.
    pub fn wake_others(&self, keys: Vec<Vec<u8>>) {
        for key in keys {
            self.forward_to_links(Kind::Key, &key, b"");
        }
    }

    /// Starts a link to every peer this node has none to yet (replicated mode); each link
    /// sends this node's interest as soon as it connects.
    pub fn connect_peers(self: &Arc<Self>, peers: &BTreeMap<u64, SocketAddr>, me: u64) {
        self.me.store(me, Ordering::Relaxed);
        let _t = self.table.lock(); // no name may change between a link's start and its queue
        let mut links = self.peers.lock();
        for (&id, &addr) in peers {
            if id == me || links.contains_key(&id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            let resync = Arc::new(AtomicBool::new(false));
            tokio::spawn(forwarder(addr, rx, Arc::downgrade(self), resync.clone()));
            links.insert(id, Peer { tx, resync });
        }
    }

    /// Sends a published message on to the other nodes whose subscribers may want it
    /// (replicated mode), dropping it for a peer whose queue is full.
    pub fn forward(
        self: &Arc<Self>,
        peers: &BTreeMap<u64, SocketAddr>,
        me: u64,
        shard: bool,
        channel: &[u8],
        message: &[u8],
    ) {
        self.connect_peers(peers, me);
        let kind = if shard { Kind::Shard } else { Kind::Channel };
        self.forward_to_links(kind, channel, message);
    }

    /// Sends a message (`CAIRN.PUBLISH channel|shard|key <name> <message>`) to every linked
    /// node that may want it: whose subscribers or blocked clients match, or whose interest is
    /// not known yet.
    fn forward_to_links(&self, kind: Kind, name: &[u8], message: &[u8]) {
        let request = crate::replicated::encode_request(&[
            b"CAIRN.PUBLISH".to_vec(),
            kind.word().to_vec(),
            name.to_vec(),
            message.to_vec(),
        ]);
        let interest = self.interest.lock();
        for (id, peer) in self.peers.lock().iter() {
            if interest.get(id).is_some_and(|i| !i.wants(kind, name)) {
                continue;
            }
            let _ = peer.tx.try_send(Outgoing {
                bytes: request.clone(),
                interest: false,
                acks: Vec::new(),
            });
        }
    }
}

/// How often a link with no connection tries again, so that a peer learns this node's
/// interest soon after either of them restarts.
const RECONNECT_EVERY: Duration = Duration::from_secs(1);

/// Acknowledgements waiting for the reply to the request with their number.
type Waiting = VecDeque<(u64, oneshot::Sender<()>)>;

/// One open connection to a peer: requests written, and the acknowledgements waiting for
/// their replies.
struct Link {
    writer: tokio::io::WriteHalf<cairn_replication::bus::PeerStream>,
    written: u64,
    acks: Arc<Mutex<Waiting>>,
    closed: Arc<AtomicBool>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Link {
    async fn open(
        addr: SocketAddr,
        tls: Option<&cairn_replication::bus::BusTls>,
        greeting: Vec<u8>,
    ) -> Option<Link> {
        use tokio::io::AsyncWriteExt;
        let within = Duration::from_secs(1);
        let connect = cairn_replication::bus::PeerStream::connect(addr, tls, within);
        let stream = tokio::time::timeout(within, connect).await.ok()?.ok()?;
        let (reader, mut writer) = tokio::io::split(stream);
        // Shown first, as every node's connection to another does: its one-line reply is the
        // first the reader counts.
        writer.write_all(&greeting).await.ok()?;
        writer.flush().await.ok()?;
        let acks = Arc::new(Mutex::new(VecDeque::new()));
        let closed = Arc::new(AtomicBool::new(false));
        let reader = tokio::spawn(read_replies(reader, acks.clone(), closed.clone()));
        Some(Link {
            writer,
            written: 1,
            acks,
            closed,
            reader,
        })
    }

    async fn write(&mut self, batch: Vec<Outgoing>) -> std::io::Result<()> {
        use tokio::io::AsyncWriteExt;
        let mut bytes = Vec::new();
        {
            let mut acks = self.acks.lock();
            for out in batch {
                bytes.extend_from_slice(&out.bytes);
                self.written += 1;
                for ack in out.acks {
                    acks.push_back((self.written, ack));
                }
            }
        }
        self.writer.write_all(&bytes).await?;
        self.writer.flush().await
    }
}

/// Counts a peer's replies and fires the acknowledgements they complete. Every reply to
/// `CAIRN.PUBLISH` and `CAIRN.INTEREST` (an integer, `+OK` or an error) is exactly one line,
/// so the n-th line answers the n-th request.
async fn read_replies(
    mut reader: tokio::io::ReadHalf<cairn_replication::bus::PeerStream>,
    acks: Arc<Mutex<Waiting>>,
    closed: Arc<AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    let mut answered = 0u64;
    loop {
        match reader.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                answered += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                let mut acks = acks.lock();
                while acks.front().is_some_and(|(seq, _)| *seq <= answered) {
                    let (_, ack) = acks.pop_front().expect("checked");
                    let _ = ack.send(());
                }
            }
        }
    }
    closed.store(true, Ordering::Relaxed);
    // Whoever still waits is released by the senders' drop.
    acks.lock().clear();
}

/// Writes one peer's requests on one connection, reopened when lost (and every
/// [`RECONNECT_EVERY`] while it cannot be opened).
async fn forwarder(
    addr: SocketAddr,
    mut rx: mpsc::Receiver<Outgoing>,
    hub: Weak<Hub>,
    resync: Arc<AtomicBool>,
) {
    let mut link: Option<Link> = None;
    let mut tick = tokio::time::interval(RECONNECT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut batch = tokio::select! {
            first = rx.recv() => {
                let Some(first) = first else { return };
                let mut batch = vec![first];
                let mut size = batch[0].bytes.len();
                while size < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => {
                            size += more.bytes.len();
                            batch.push(more);
                        }
                        Err(_) => break,
                    }
                }
                batch
            }
            _ = tick.tick() => Vec::new(),
        };
        let Some(hub) = hub.upgrade() else { return };
        if link
            .as_ref()
            .is_some_and(|l| l.closed.load(Ordering::Relaxed))
        {
            link = None;
        }
        let fresh = link.is_none();
        if fresh {
            let mut greeting = vec![b"CAIRN.RELAY".to_vec()];
            if let Some(secret) = hub.acl.get().and_then(|a| a.node_secret.read().clone()) {
                greeting.push(secret.into_bytes());
            }
            let tls = hub.peer_tls.get();
            link = Link::open(addr, tls, crate::replicated::encode_request(&greeting)).await;
        }
        let Some(l) = link.as_mut() else {
            continue; // the peer is down: these requests are lost for it (and acks released)
        };
        // A new connection, or a queue that lost an interest change: the whole interest first.
        if resync.swap(false, Ordering::Relaxed) || fresh {
            let me = hub.me.load(Ordering::Relaxed);
            batch = hub.whole_interest(me, batch, &mut rx);
        }
        if !batch.is_empty() && l.write(batch).await.is_err() {
            link = None;
        }
    }
}

/// Replicated mode: keeps a link to every other node, so each learns what this node's
/// subscribers want soon after either starts or a node joins.
pub async fn link_peers(shared: Arc<crate::Shared>) {
    let Some(repl) = &shared.replication else {
        return;
    };
    let mut tick = tokio::time::interval(RECONNECT_EVERY);
    loop {
        tick.tick().await;
        shared
            .pubsub
            .connect_peers(&repl.all_client_addrs(), repl.me);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(words: &[&str]) -> Vec<Vec<u8>> {
        words.iter().map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn what_other_nodes_say_they_want_is_bounded() {
        let hub = Hub::default();
        for node in 1..=MAX_INTEREST_NODES {
            let reply = hub.interest_of(&req(&["CAIRN.INTEREST", &node.to_string(), "reset"]));
            assert_eq!(reply, Reply::OK);
        }
        assert!(hub
            .interest_of(&req(&["CAIRN.INTEREST", "99999", "reset"]))
            .is_error());
        // Names up to the bound are kept: node 1 then wants only what it named.
        let names: Vec<String> = (0..MAX_INTEREST_NAMES).map(|i| format!("c{i}")).collect();
        let mut add = vec!["CAIRN.INTEREST", "1", "add", "channel"];
        add.extend(names.iter().map(String::as_str));
        assert_eq!(hub.interest_of(&req(&add)), Reply::OK);
        let wants = |hub: &Hub, name: &[u8]| {
            hub.interest
                .lock()
                .get(&1)
                .is_none_or(|i| i.wants(Kind::Channel, name))
        };
        assert!(wants(&hub, b"c0"));
        assert!(!wants(&hub, b"other"));
        // One more: node 1 is forgotten, and so gets everything again.
        assert_eq!(
            hub.interest_of(&req(&["CAIRN.INTEREST", "1", "add", "channel", "one-more"])),
            Reply::OK
        );
        assert!(wants(&hub, b"other"));
    }
}
