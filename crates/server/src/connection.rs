//! One client connection: read, decode, dispatch, reply, with every buffer bounded.
//!
//! Requests are decoded as long as whole ones are in the buffer and their replies collected into
//! one output buffer, written once per read (a waiting pipeline costs one write, not one per
//! request) or sooner when it passes [`OUTPUT_FLUSH_BYTES`], so output waiting on a slow reader is
//! bounded by the socket's backpressure rather than growing without limit.

use crate::dispatch;
use crate::stats::Stats;
use crate::Shared;
use cairn_resp::{Decoder, Limits, Protocol, Step};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// Replies are written once they reach this size, even mid-pipeline.
pub const OUTPUT_FLUSH_BYTES: usize = 64 * 1024;
const READ_CHUNK: usize = 16 * 1024;

/// What other connections may see of a client (CLIENT LIST, CLIENT KILL).
pub struct ClientInfo {
    pub id: u64,
    pub addr: SocketAddr,
    pub laddr: SocketAddr,
    pub created_ms: u64,
    pub name: Mutex<Vec<u8>>,
    pub lib_name: Mutex<Vec<u8>>,
    pub lib_ver: Mutex<Vec<u8>>,
    /// The user it runs as (`user=` in CLIENT LIST).
    pub user: Mutex<Vec<u8>>,
    pub last_active_ms: AtomicU64,
    /// The last command run (`cmd=` in CLIENT LIST).
    pub last_command: Mutex<Option<Arc<cairn_commands::CommandSpec>>>,
    pub resp: AtomicU8,
    pub in_multi: AtomicBool,
    /// Queued on keys by a blocking command (`flags=b` in CLIENT LIST).
    pub blocked: AtomicBool,
    killed: AtomicBool,
    pub(crate) kill: Notify,
}

impl ClientInfo {
    pub fn kill(&self) {
        self.killed.store(true, Ordering::SeqCst);
        self.kill.notify_one();
    }

    /// Whether the connection was told to close.
    pub fn killed(&self) -> bool {
        self.killed.load(Ordering::SeqCst)
    }

    /// The CLIENT LIST / CLIENT INFO line for this client.
    pub fn describe(&self, now_ms: u64) -> String {
        format!(
            "id={} addr={} laddr={} fd=0 name={} age={} idle={} flags={} db=0 sub=0 psub=0 ssub=0 multi={} qbuf=0 qbuf-free=0 argv-mem=0 multi-mem=0 rbs=0 rbp=0 obl=0 oll=0 omem=0 tot-mem=0 events=r cmd={} user={} redir=-1 resp={} lib-name={} lib-ver={}",
            self.id,
            self.addr,
            self.laddr,
            String::from_utf8_lossy(&self.name.lock()),
            now_ms.saturating_sub(self.created_ms) / 1000,
            now_ms.saturating_sub(self.last_active_ms.load(Ordering::Relaxed)) / 1000,
            if self.in_multi.load(Ordering::Relaxed) {
                "x"
            } else if self.blocked.load(Ordering::Relaxed) {
                "b"
            } else {
                "N"
            },
            if self.in_multi.load(Ordering::Relaxed) { 0 } else { -1 },
            self.last_command.lock().as_ref().map_or("NULL", |s| s.name.as_str()),
            String::from_utf8_lossy(&self.user.lock()),
            self.resp.load(Ordering::Relaxed),
            String::from_utf8_lossy(&self.lib_name.lock()),
            String::from_utf8_lossy(&self.lib_ver.lock()),
        )
    }
}

/// Every connected client, by id.
#[derive(Default)]
pub struct Registry {
    clients: Mutex<HashMap<u64, Arc<ClientInfo>>>,
    /// Connections not yet told apart (`tls-cluster yes`: waiting for their first byte, or
    /// in a node's TLS handshake): at most maxclients of them.
    undecided: AtomicU64,
}

impl Registry {
    pub fn len(&self) -> usize {
        self.clients.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn all(&self) -> Vec<Arc<ClientInfo>> {
        let mut v: Vec<_> = self.clients.lock().values().cloned().collect();
        v.sort_by_key(|c| c.id);
        v
    }
}

/// A connection's own state.
pub struct Client {
    pub info: Arc<ClientInfo>,
    pub proto: Protocol,
    /// Commands queued since MULTI; None outside a transaction.
    pub multi: Option<Vec<Vec<Vec<u8>>>>,
    /// A command failed to queue: EXEC must abort.
    pub multi_failed: bool,
    /// Watched keys, each with whether it had already expired when watched.
    pub watched: Vec<(Vec<u8>, bool)>,
    pub close_after_reply: bool,
    /// DEBUG SLEEP: the connection pauses this long after replying.
    pub sleep: Option<Duration>,
    /// Replicated mode: this client's connections to shard leaders, when it relays (at most
    /// one per node).
    pub relays: Vec<crate::replicated::Relay>,
    /// Replicated mode: keys watched on this node, each with the log index it was watched at.
    pub watched_at: Vec<(Vec<u8>, u64)>,
    /// Replicated mode: the shard `watched_at`'s indexes belong to.
    pub watched_group: Option<u64>,
    /// Replicated mode: keys watched in other shards than `watched_group` (EXEC then runs as
    /// a cross-shard transaction).
    pub watched_cross: Vec<crate::cross::Watched>,
    /// Replicated mode: the client's WATCH went to a shard leader over one of `relays`, so
    /// everything it sends goes there until the transaction ends.
    pub watch_relay: Option<crate::replicated::WatchRelay>,
    /// Blocked on a command (BLPOP, XREAD BLOCK, ...): see `crate::blocking`.
    pub blocked: Option<crate::blocking::BlockedClient>,
    /// Blocking that ended while the store may have been locked, released after the batch.
    pub unblocked: Vec<crate::blocking::BlockedClient>,
    /// Replicated mode: this connection carries another node's requests (`CAIRN.RELAY`), so
    /// its blocking commands answer at once; the other node's client does the waiting.
    pub relaying_for_a_node: bool,
    /// `tls-cluster yes`: this connection came over the cluster's mutual TLS (a certificate
    /// of the cluster CA), the only way another node's connection (`CAIRN.RELAY`) may come.
    pub cluster_tls: bool,
    /// Pub/Sub: what this connection subscribes to, and its messages waiting to be written.
    pub subs: Option<Subscriptions>,
    /// Pub/Sub: other nodes' acknowledgements of names this connection subscribed to first,
    /// awaited before its replies are written (see `crate::pubsub`).
    pub interest_acks: crate::pubsub::Pending,
    /// The user this connection runs as (`default` until AUTH), whether it authenticated,
    /// and the user's permissions as last read (with the ACL version they were read at).
    pub user: Vec<u8>,
    pub authenticated: bool,
    pub acl_user: Option<(u64, Arc<crate::acl::User>)>,
    /// Another node's connection that showed the cluster's node secret (or the node's own
    /// client): it runs requests already checked where they arrived.
    pub internal: bool,
}

/// A connection's Pub/Sub subscriptions. Dropping them unsubscribes (disconnect, RESET).
pub struct Subscriptions {
    pub channels: std::collections::BTreeSet<Vec<u8>>,
    pub patterns: std::collections::BTreeSet<Vec<u8>>,
    pub shard: std::collections::BTreeSet<Vec<u8>>,
    pub mailbox: crate::pubsub::Mailbox,
    rx: tokio::sync::mpsc::UnboundedReceiver<Vec<u8>>,
    hub: Arc<crate::pubsub::Hub>,
}

impl Subscriptions {
    pub fn of(&mut self, kind: crate::pubsub::Kind) -> &mut std::collections::BTreeSet<Vec<u8>> {
        match kind {
            crate::pubsub::Kind::Channel => &mut self.channels,
            crate::pubsub::Kind::Pattern => &mut self.patterns,
            crate::pubsub::Kind::Shard => &mut self.shard,
            crate::pubsub::Kind::Key => unreachable!("clients do not subscribe to keys"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty() && self.patterns.is_empty() && self.shard.is_empty()
    }

    /// The next message for this connection, with its bytes taken off the output count.
    async fn next(&mut self) -> Option<Vec<u8>> {
        let m = self.rx.recv().await?;
        Some(self.taken(m))
    }

    /// A message already waiting, if any (as [`Subscriptions::next`], without waiting).
    fn try_next(&mut self) -> Option<Vec<u8>> {
        let m = self.rx.try_recv().ok()?;
        Some(self.taken(m))
    }

    fn taken(&self, m: Vec<u8>) -> Vec<u8> {
        self.mailbox.queued.fetch_sub(m.len(), Ordering::Relaxed);
        m
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        use crate::pubsub::Kind;
        let id = self.mailbox.info.id;
        for (kind, names) in [
            (Kind::Channel, &self.channels),
            (Kind::Pattern, &self.patterns),
            (Kind::Shard, &self.shard),
        ] {
            for name in names {
                self.hub.unsubscribe(kind, name, id);
            }
        }
    }
}

/// The next Pub/Sub message for a connection; never, for one that subscribes to nothing.
async fn next_message(subs: Option<&mut Subscriptions>) -> Option<Vec<u8>> {
    match subs {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

impl Client {
    pub fn id(&self) -> u64 {
        self.info.id
    }

    /// This connection's subscriptions, set up on first use.
    pub fn subscriptions(&mut self, hub: &Arc<crate::pubsub::Hub>) -> &mut Subscriptions {
        let info = self.info.clone();
        self.subs.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            Subscriptions {
                channels: Default::default(),
                patterns: Default::default(),
                shard: Default::default(),
                mailbox: crate::pubsub::Mailbox {
                    info,
                    tx,
                    queued: Default::default(),
                    over_soft_since: Default::default(),
                },
                rx,
                hub: hub.clone(),
            }
        })
    }

    /// A client of the node's own making (a slot move's coordinator), with no connection: it
    /// is not listed by CLIENT LIST.
    pub fn internal(shared: &Shared) -> Client {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut c = Client::new(ClientInfo::new(shared, loopback, loopback));
        c.internal = true;
        c
    }

    fn new(info: Arc<ClientInfo>) -> Client {
        Client {
            info,
            proto: Protocol::Resp2,
            multi: None,
            multi_failed: false,
            watched: Vec::new(),
            close_after_reply: false,
            sleep: None,
            relays: Vec::new(),
            watched_at: Vec::new(),
            watched_group: None,
            watched_cross: Vec::new(),
            watch_relay: None,
            blocked: None,
            unblocked: Vec::new(),
            relaying_for_a_node: false,
            cluster_tls: false,
            subs: None,
            interest_acks: Default::default(),
            user: b"default".to_vec(),
            authenticated: false,
            acl_user: None,
            internal: false,
        }
    }
}

impl ClientInfo {
    fn new(shared: &Shared, addr: SocketAddr, laddr: SocketAddr) -> Arc<ClientInfo> {
        let now = crate::now_ms();
        Arc::new(ClientInfo {
            id: shared.next_client_id(),
            addr,
            laddr,
            created_ms: now,
            name: Mutex::default(),
            lib_name: Mutex::default(),
            lib_ver: Mutex::default(),
            user: Mutex::new(b"default".to_vec()),
            last_active_ms: AtomicU64::new(now),
            last_command: Mutex::new(None),
            resp: AtomicU8::new(2),
            in_multi: AtomicBool::new(false),
            blocked: AtomicBool::new(false),
            killed: AtomicBool::new(false),
            kill: Notify::new(),
        })
    }
}

/// A client connection's byte stream: plain TCP, or TLS over it.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// Bytes read from and written to clients (INFO's total_net_input_bytes and
/// total_net_output_bytes). Per process: in-process test clusters add their nodes up.
pub static NET_INPUT_BYTES: AtomicU64 = AtomicU64::new(0);
pub static NET_OUTPUT_BYTES: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` and flushes them (a TLS stream holds written bytes until flushed).
pub async fn send<S: Stream>(socket: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    socket.write_all(bytes).await?;
    NET_OUTPUT_BYTES.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    socket.flush().await
}

/// Serves a plain TCP client.
pub async fn serve(shared: Arc<Shared>, socket: TcpStream, peer: SocketAddr) {
    let _ = socket.set_nodelay(true);
    let local = socket.local_addr().unwrap_or(peer);
    let peer_tls = shared.replication.as_ref().and_then(|r| r.peer_tls.clone());
    if let Some(tls) = peer_tls {
        // With `tls-cluster yes` other nodes come to this port over mutual TLS: a handshake's
        // first byte tells them from clients, whose RESP never starts so.
        let maxclients = shared.config.lock().maxclients as u64;
        let undecided = &shared.clients.undecided;
        if undecided.fetch_add(1, Ordering::Relaxed) >= maxclients {
            undecided.fetch_sub(1, Ordering::Relaxed);
            Stats::add(&shared.stats.connections_rejected, 1);
            return;
        }
        let mut first = [0u8; 1];
        let peeked = socket.peek(&mut first).await;
        if matches!(peeked, Ok(1)) && first[0] == crate::tls::TLS_HANDSHAKE_BYTE {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
            let handshake =
                tokio::time::timeout(TLS_HANDSHAKE_WITHIN, acceptor.accept(socket)).await;
            undecided.fetch_sub(1, Ordering::Relaxed);
            match handshake {
                Ok(Ok(stream)) => {
                    // A node's certificate names its address; a client's from the same CA
                    // (`cairn certs` makes both) names none, and is not taken for a node's.
                    let certs = stream.get_ref().1.peer_certificates().unwrap_or_default();
                    let ips = member_ips(&shared);
                    if ips
                        .iter()
                        .any(|&ip| cairn_replication::bus::names_ip(certs, ip))
                    {
                        serve_as(shared, stream, peer, local, true).await
                    } else {
                        tracing::warn!(%peer, "refused a node connection: its certificate names no member's address");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "node TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "node TLS handshake timed out"),
            }
            return;
        }
        undecided.fetch_sub(1, Ordering::Relaxed);
    }
    serve_stream(shared, socket, peer, local).await
}

/// The longest a TLS client (or node) may take over its handshake.
pub const TLS_HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Serves a client over any stream (`local`: the address it reached).
pub async fn serve_stream<S: Stream>(
    shared: Arc<Shared>,
    socket: S,
    peer: SocketAddr,
    local: SocketAddr,
) {
    serve_as(shared, socket, peer, local, false).await
}

/// As [`serve_stream`]; `cluster_tls`: the stream is the cluster's mutual TLS.
async fn serve_as<S: Stream>(
    shared: Arc<Shared>,
    mut socket: S,
    peer: SocketAddr,
    local: SocketAddr,
    cluster_tls: bool,
) {
    Stats::add(&shared.stats.connections_received, 1);
    let (maxclients, protected) = {
        let c = shared.config.lock();
        (c.maxclients, c.protected_mode)
    };
    if shared.clients.len() >= maxclients {
        Stats::add(&shared.stats.connections_rejected, 1);
        let _ = send(&mut socket, b"-ERR max number of clients reached\r\n").await;
        return;
    }
    // Protected mode guards a server whose default user needs no password (Redis's rule):
    // once it has one, clients from anywhere may try to log in.
    let guarded = protected && !shared.acl.auth_required();
    if guarded && !admitted_in_protected_mode(peer.ip(), &member_ips(&shared)) {
        let _ = send(&mut socket, PROTECTED_MODE_ERROR.as_bytes()).await;
        return;
    }
    let info = ClientInfo::new(&shared, peer, local);
    shared.clients.clients.lock().insert(info.id, info.clone());
    let mut client = Client::new(info.clone());
    client.cluster_tls = cluster_tls;
    // As in Redis: a connection made while the default user needs no password is logged in
    // as it, and stays so when a password is set later.
    client.authenticated = !shared.acl.auth_required();
    if let Err(e) = serve_loop(&shared, &mut socket, &mut client).await {
        tracing::debug!(client = info.id, error = %e, "connection closed with an error");
    }
    dispatch::forget_watches(&shared, &mut client);
    shared.clients.clients.lock().remove(&info.id);
}

/// The addresses of the cluster's nodes (replicated mode): they relay commands and forward
/// Pub/Sub messages to each other's client ports.
fn member_ips(shared: &Shared) -> Vec<std::net::IpAddr> {
    match &shared.replication {
        Some(repl) => repl
            .all_client_addrs()
            .values()
            .map(|a| a.ip().to_canonical())
            .collect(),
        None => Vec::new(),
    }
}

/// Protected mode serves loopback clients, and the cluster's own nodes: without them a
/// cluster spread over several hosts could not relay a command to a shard's leader.
fn admitted_in_protected_mode(ip: std::net::IpAddr, members: &[std::net::IpAddr]) -> bool {
    let ip = ip.to_canonical();
    ip.is_loopback() || members.contains(&ip)
}

const PROTECTED_MODE_ERROR: &str = "-DENIED cairn is running in protected mode because protected mode is enabled and no password is set for the default user. In this mode connections are only accepted from the loopback interface. If you want to connect from external computers, either set a password for the default user, or disable protected mode with '--protected-mode no' (or CONFIG SET protected-mode no from a loopback connection).\r\n";

async fn serve_loop<S: Stream>(
    shared: &Shared,
    socket: &mut S,
    client: &mut Client,
) -> std::io::Result<()> {
    let mut decoder = Decoder::default();
    let mut inbuf: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut out: Vec<u8> = Vec::with_capacity(READ_CHUNK);
    let mut pending = std::collections::VecDeque::with_capacity(dispatch::MAX_BATCH);
    let mut shutdown = shared.shutdown.clone();
    let mut retry = false;
    loop {
        let (limits, query_limit, timeout_secs) = {
            let c = shared.config.lock();
            let limits = Limits {
                max_bulk_len: c.proto_max_bulk_len,
                ..Limits::default()
            };
            (limits, c.client_query_buffer_limit, c.timeout_secs)
        };
        let mut pos = 0;
        // Run everything complete in the buffer, a batch at a time, before reading again.
        loop {
            let mut need_more = false;
            let mut protocol_error = None;
            while pending.len() < dispatch::MAX_BATCH {
                match decoder.step(&inbuf[pos..], &limits) {
                    Ok((Step::Request(args), used)) => {
                        pos += used;
                        pending.push_back(args);
                    }
                    Ok((Step::Empty, used)) => pos += used,
                    Ok((Step::NeedMore, used)) => {
                        pos += used;
                        need_more = true;
                        break;
                    }
                    Err(e) => {
                        protocol_error = Some(e);
                        break;
                    }
                }
            }
            // A blocked client runs nothing but its blocked command, when woken (`retry`).
            while shared.replication.is_some()
                && !pending.is_empty()
                && (client.blocked.is_none() || std::mem::take(&mut retry))
            {
                crate::replicated::handle_pending(shared, client, &mut pending, &mut out).await;
                if !client.interest_acks.is_empty() {
                    std::mem::take(&mut client.interest_acks).wait().await;
                }
                if client.close_after_reply {
                    pending.clear();
                }
                if out.len() >= OUTPUT_FLUSH_BYTES {
                    send(socket, &out).await?;
                    out.clear();
                }
            }
            while !pending.is_empty() && (client.blocked.is_none() || std::mem::take(&mut retry)) {
                dispatch::handle_batch(shared, client, &mut pending, &mut out);
                if out.len() >= OUTPUT_FLUSH_BYTES {
                    send(socket, &out).await?;
                    out.clear();
                }
            }
            crate::blocking::release(client);
            if client.close_after_reply {
                send(socket, &out).await?;
                return Ok(());
            }
            if client.blocked.is_some() {
                // Nothing more runs for this client until its blocked command is done.
                send(socket, &out).await?;
                out.clear();
                inbuf.drain(..pos);
                pos = 0;
                match crate::blocking::wait(shared, client, socket, &mut inbuf, query_limit).await?
                {
                    crate::blocking::Woken::Retry => {
                        let b = client.blocked.as_ref().expect("still blocked");
                        pending.push_front(b.args.clone());
                        retry = true;
                    }
                    crate::blocking::Woken::TimedOut => {
                        client.blocked = None;
                        client.info.blocked.store(false, Ordering::Relaxed);
                        cairn_resp::Reply::NilArray.encode(client.proto, &mut out);
                    }
                    crate::blocking::Woken::Close => return Ok(()),
                }
                continue;
            }
            if let Some(e) = protocol_error {
                // As Redis: answer the protocol error, then close this connection only.
                Stats::add(&shared.stats.protocol_errors, 1);
                out.extend_from_slice(format!("-ERR {e}\r\n").as_bytes());
                send(socket, &out).await?;
                return Ok(());
            }
            if let Some(d) = client.sleep.take() {
                send(socket, &out).await?;
                out.clear();
                tokio::time::sleep(d).await;
            }
            if need_more {
                break;
            }
        }
        inbuf.drain(..pos);
        if !out.is_empty() {
            send(socket, &out).await?;
            out.clear();
            if out.capacity() > 4 * OUTPUT_FLUSH_BYTES {
                out.shrink_to(READ_CHUNK);
            }
        }
        if inbuf.len() + decoder.pending_bytes() > query_limit {
            Stats::add(&shared.stats.query_limit_disconnections, 1);
            tracing::warn!(
                client = client.id(),
                "closing client that reached the query buffer limit"
            );
            return Ok(());
        }
        if inbuf.capacity() - inbuf.len() < READ_CHUNK {
            inbuf.reserve(READ_CHUNK);
        } else if inbuf.is_empty() && inbuf.capacity() > 16 * READ_CHUNK {
            inbuf.shrink_to(READ_CHUNK);
        }
        let idle = async {
            if timeout_secs == 0 {
                std::future::pending::<()>().await
            } else {
                tokio::time::sleep(Duration::from_secs(timeout_secs)).await
            }
        };
        let info = client.info.clone();
        let subscribed = client.subs.is_some();
        tokio::select! {
            n = socket.read_buf(&mut inbuf) => {
                let n = n?;
                if n == 0 {
                    return Ok(());
                }
                NET_INPUT_BYTES.fetch_add(n as u64, Ordering::Relaxed);
                client.info.last_active_ms.store(crate::now_ms(), Ordering::Relaxed);
            }
            m = next_message(client.subs.as_mut()) => {
                // A Pub/Sub message, and any others already waiting, go out at once.
                if let Some(m) = m {
                    out.extend_from_slice(&m);
                    while out.len() < OUTPUT_FLUSH_BYTES {
                        match client.subs.as_mut().and_then(Subscriptions::try_next) {
                            Some(more) => out.extend_from_slice(&more),
                            None => break,
                        }
                    }
                    // A subscriber that does not read must not hold this task in a write
                    // forever: its output limit kills it (see `crate::pubsub`).
                    tokio::select! {
                        r = send(socket, &out) => r?,
                        _ = info.kill.notified() => return Ok(()),
                    }
                    out.clear();
                }
            }
            _ = info.kill.notified() => return Ok(()),
            _ = shutdown.changed() => return Ok(()),
            // A subscriber waits for messages, not requests: it is never idle.
            _ = idle, if !subscribed => return Ok(()),
        }
        if client.info.killed.load(Ordering::SeqCst) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod protected_mode_tests {
    use super::admitted_in_protected_mode as admitted;
    use std::net::IpAddr;

    #[test]
    fn loopback_and_member_nodes_are_admitted_and_nobody_else() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let members = [ip("10.0.0.1"), ip("10.0.0.2")];
        assert!(admitted(ip("127.0.0.1"), &[]));
        assert!(admitted(ip("::1"), &[]));
        assert!(admitted(ip("::ffff:127.0.0.1"), &[]));
        assert!(admitted(ip("10.0.0.2"), &members));
        assert!(admitted(ip("::ffff:10.0.0.1"), &members));
        assert!(!admitted(ip("10.0.0.3"), &members));
        assert!(!admitted(ip("10.0.0.1"), &[]));
        assert!(!admitted(ip("192.0.2.7"), &members));
    }
}
