//! The cluster bus: Raft messages between nodes over TCP.
//!
//! Framing (every integer little-endian): a frame is `magic "CRNB" | version u8 | kind u8 |
//! length u32 | payload`. A connection opens with a HELLO frame (payload: the sender's node id
//! u64) and then carries BATCH frames (payload: count u32, then per message: group u64, length
//! u32, protobuf bytes) and CHUNK frames. A snapshot message larger than [`CHUNK_BYTES`] is sent
//! as consecutive CHUNK frames (payload: group u64, total length u64, offset u64, bytes) that
//! the receiver reassembles, up to [`MAX_SNAPSHOT_BYTES`], before handing the message on; so no
//! frame is ever larger than [`MAX_FRAME_BYTES`] whatever the state's size. A frame with a
//! wrong magic, an unknown version or kind, a length over [`MAX_FRAME_BYTES`], or a chunk out of
//! order closes that connection only.
//!
//! Each peer has one outbound task with a bounded queue; the task drains everything queued into
//! one frame per write, so a round's messages to a peer cost one syscall. A full queue drops the
//! message (Raft retransmits) and reports the peer unreachable. Connections are re-established
//! with exponential backoff. What the bus learns goes back to the driver as [`BusEvent`]s: a
//! peer it cannot reach, and whether each snapshot was written to the peer's socket.
//!
//! Mutual TLS ([`BusTls`], set with [`Bus::set_tls`] before the bus serves): every connection
//! is TLS both ways, and each end must present a certificate signed by the cluster's CA, so a
//! node without one can neither connect (its handshake is refused before any frame is read)
//! nor be connected to. Plaintext peers are refused. The server side sends no session tickets:
//! nothing ever travels from the accepting end, which is what lets [`peer_closed`] read any
//! readable byte as the connection's end.

use crate::driver::Envelope;
use protobuf::Message as _;
use raft::eraftpb::{Message, MessageType};
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The cluster bus's mutual TLS: how to accept peers and how to connect to them, both
/// checking the other end's certificate against the cluster CA. Clones share one
/// configuration, which [`BusTls::replace`] swaps for new connections (certificate reload
/// without a restart; open connections go on with the one they began with).
#[derive(Clone)]
pub struct BusTls {
    current: Arc<std::sync::RwLock<TlsPair>>,
}

type TlsPair = (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>);

impl BusTls {
    pub fn new(server: Arc<rustls::ServerConfig>, client: Arc<rustls::ClientConfig>) -> BusTls {
        BusTls {
            current: Arc::new(std::sync::RwLock::new((server, client))),
        }
    }

    /// How a connection arriving now is accepted.
    pub fn server(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .0
            .clone()
    }

    /// How a connection opened now presents itself and checks its peer.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .clone()
    }

    /// Serves every clone's new connections with `other`'s configuration.
    pub fn replace(&self, other: &BusTls) {
        let next = other
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
    }
}

impl std::fmt::Debug for BusTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BusTls")
    }
}

/// The longest a peer's TLS handshake may take.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// Whether the end-entity certificate of `certs` (a TLS peer's chain, already verified
/// against the cluster CA) names `ip`. Binds a peer to a node: a node's certificate names
/// its own address, so a certificate for another host, or a client's (which names none),
/// cannot speak for a node.
pub fn names_ip(certs: &[rustls::pki_types::CertificateDer<'_>], ip: std::net::IpAddr) -> bool {
    let Some(leaf) = certs.first() else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    let name = rustls::pki_types::ServerName::IpAddress(ip.into());
    cert.verify_is_valid_for_subject_name(&name).is_ok()
}

/// A connection this node opened to another: plain TCP, or the cluster's mutual TLS over it
/// (the bus's links, and the server's connections to other nodes' client ports).
pub enum PeerStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl PeerStream {
    /// Connects to `addr`, over `tls` when given: the peer's certificate must be the cluster
    /// CA's and name the address's IP. The TLS handshake may take up to `handshake_within`.
    pub async fn connect(
        addr: SocketAddr,
        tls: Option<&BusTls>,
        handshake_within: Duration,
    ) -> std::io::Result<PeerStream> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let Some(tls) = tls else {
            return Ok(PeerStream::Plain(s));
        };
        let connector = tokio_rustls::TlsConnector::from(tls.client());
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let stream = tokio::time::timeout(handshake_within, connector.connect(name, s))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake"))??;
        Ok(PeerStream::Tls(Box::new(stream)))
    }

    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            PeerStream::Plain(s) => s,
            PeerStream::Tls(s) => s.get_ref().0,
        }
    }

    /// Writes `bytes` and flushes them (TLS holds records until flushed).
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes).await?;
        self.flush().await
    }
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

const MAGIC: &[u8; 4] = b"CRNB";
pub const VERSION: u8 = 1;
const KIND_HELLO: u8 = 1;
const KIND_BATCH: u8 = 2;
const KIND_CHUNK: u8 = 3;
/// Snapshot messages above this size travel in chunks of this size.
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// The largest snapshot message a receiver reassembles (it holds it in memory).
pub const MAX_SNAPSHOT_BYTES: u64 = 4 * 1024 * 1024 * 1024;
const HEADER_BYTES: usize = 10;
/// The largest frame accepted: a snapshot chunk or a batch of appends must fit.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Messages waiting for one peer before new ones are dropped.
pub const PEER_QUEUE: usize = 4096;
/// Messages received from all peers waiting for the driver.
pub const INBOUND_QUEUE: usize = 16_384;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the bus tells the driver about delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum BusEvent {
    /// A message for `peer` could not be sent.
    Unreachable { group: u64, peer: u64 },
    /// A snapshot for `peer` was written to its socket (`delivered`) or lost.
    Snapshot {
        group: u64,
        peer: u64,
        delivered: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("bad magic")]
    BadMagic,
    #[error("unsupported bus version {0}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    Kind(u8),
    #[error("frame of {0} bytes is over the limit")]
    TooBig(usize),
    #[error("malformed frame")]
    Malformed,
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// Encodes a batch of messages into one frame.
pub fn encode_batch(messages: &[Envelope]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&(messages.len() as u32).to_le_bytes());
    for env in messages {
        let bytes = env
            .message
            .write_to_bytes()
            .expect("a raft message encodes");
        payload.extend_from_slice(&env.group.to_le_bytes());
        payload.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        payload.extend_from_slice(&bytes);
    }
    frame(KIND_BATCH, &payload)
}

/// Encodes messages as the frames to write, keeping their order: runs of messages in BATCH
/// frames, and each snapshot message over [`CHUNK_BYTES`] as CHUNK frames where it stands.
pub fn encode_frames(messages: &[Envelope]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut run_start = 0;
    for (i, env) in messages.iter().enumerate() {
        let large = env.message.get_msg_type() == MessageType::MsgSnapshot
            && env.message.compute_size() as usize > CHUNK_BYTES;
        if !large {
            continue;
        }
        if run_start < i {
            frames.push(encode_batch(&messages[run_start..i]));
        }
        run_start = i + 1;
        let bytes = env
            .message
            .write_to_bytes()
            .expect("a raft message encodes");
        for (n, piece) in bytes.chunks(CHUNK_BYTES).enumerate() {
            let mut payload = Vec::with_capacity(24 + piece.len());
            payload.extend_from_slice(&env.group.to_le_bytes());
            payload.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
            payload.extend_from_slice(&((n * CHUNK_BYTES) as u64).to_le_bytes());
            payload.extend_from_slice(piece);
            frames.push(frame(KIND_CHUNK, &payload));
        }
    }
    if run_start < messages.len() {
        frames.push(encode_batch(&messages[run_start..]));
    }
    frames
}

/// A chunked snapshot message being reassembled on one connection.
#[derive(Default)]
pub struct Reassembly {
    group: u64,
    total: u64,
    bytes: Vec<u8>,
}

impl Reassembly {
    /// Adds one CHUNK payload; returns the whole message once its last chunk arrived. Chunks
    /// must come in order, each continuing the one before.
    pub fn add(&mut self, payload: &[u8]) -> Result<Option<Envelope>, FrameError> {
        let field = |at: usize| -> Result<u64, FrameError> {
            Ok(u64::from_le_bytes(
                payload
                    .get(at..at + 8)
                    .ok_or(FrameError::Malformed)?
                    .try_into()
                    .expect("8 bytes"),
            ))
        };
        let (group, total, offset) = (field(0)?, field(8)?, field(16)?);
        let piece = &payload[24..];
        if offset == 0 {
            if total > MAX_SNAPSHOT_BYTES {
                return Err(FrameError::TooBig(total as usize));
            }
            *self = Reassembly {
                group,
                total,
                bytes: Vec::new(),
            };
        }
        let fits = (self.bytes.len() as u64).checked_add(piece.len() as u64);
        if group != self.group
            || total != self.total
            || offset != self.bytes.len() as u64
            || piece.is_empty()
            || fits.is_none_or(|end| end > total)
        {
            *self = Reassembly::default();
            return Err(FrameError::Malformed);
        }
        self.bytes.extend_from_slice(piece);
        if (self.bytes.len() as u64) < self.total {
            return Ok(None);
        }
        let done = std::mem::take(self);
        let message = Message::parse_from_bytes(&done.bytes).map_err(|_| FrameError::Malformed)?;
        Ok(Some(Envelope {
            group: done.group,
            message,
        }))
    }
}

/// Decodes a BATCH payload. Only bytes from a peer that said HELLO reach here.
pub fn decode_batch(payload: &[u8]) -> Result<Vec<Envelope>, FrameError> {
    let take = |pos: &mut usize, n: usize| -> Result<&[u8], FrameError> {
        let s = payload
            .get(*pos..pos.checked_add(n).ok_or(FrameError::Malformed)?)
            .ok_or(FrameError::Malformed)?;
        *pos += n;
        Ok(s)
    };
    let mut pos = 0;
    let count = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
    // Each message takes at least 12 bytes: a count beyond that is a lie.
    if count > payload.len() / 12 {
        return Err(FrameError::Malformed);
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let group = u64::from_le_bytes(take(&mut pos, 8)?.try_into().expect("8 bytes"));
        let len = u32::from_le_bytes(take(&mut pos, 4)?.try_into().expect("4 bytes")) as usize;
        let message =
            Message::parse_from_bytes(take(&mut pos, len)?).map_err(|_| FrameError::Malformed)?;
        out.push(Envelope { group, message });
    }
    if pos != payload.len() {
        return Err(FrameError::Malformed);
    }
    Ok(out)
}

/// Reads one frame: (kind, payload).
pub async fn read_frame<R: AsyncReadExt + Unpin>(r: &mut R) -> Result<(u8, Vec<u8>), FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    r.read_exact(&mut header).await?;
    if &header[..4] != MAGIC {
        return Err(FrameError::BadMagic);
    }
    if header[4] != VERSION {
        return Err(FrameError::Version(header[4]));
    }
    let kind = header[5];
    if kind != KIND_HELLO && kind != KIND_BATCH && kind != KIND_CHUNK {
        return Err(FrameError::Kind(kind));
    }
    let len = u32::from_le_bytes(header[6..10].try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooBig(len));
    }
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    Ok((kind, payload))
}

/// Opens a connection to a peer (TLS when `tls` is set) and introduces this node.
async fn connect(addr: SocketAddr, me: u64, tls: Option<&BusTls>) -> std::io::Result<PeerStream> {
    let mut link = PeerStream::connect(addr, tls, HANDSHAKE_WITHIN).await?;
    link.send(&frame(KIND_HELLO, &me.to_le_bytes())).await?;
    Ok(link)
}

/// This node's end of the bus.
pub struct Bus {
    me: u64,
    peers: std::sync::Mutex<HashMap<u64, mpsc::Sender<Envelope>>>,
    addresses: Arc<std::sync::Mutex<HashMap<u64, SocketAddr>>>,
    events: mpsc::UnboundedSender<BusEvent>,
    inbound: mpsc::Sender<Envelope>,
    /// Fault injection: peers this node neither sends to nor hears from, as if the link were cut.
    cut: std::sync::RwLock<HashSet<u64>>,
    /// Whether `cut` is non-empty: every message checks this, not the lock.
    any_cut: std::sync::atomic::AtomicBool,
    /// Mutual TLS, when the cluster uses it.
    tls: std::sync::OnceLock<BusTls>,
}

impl Bus {
    /// A bus for node `me`. Received messages arrive on the returned receiver, delivery events
    /// on the other.
    pub fn new(
        me: u64,
        addresses: HashMap<u64, SocketAddr>,
    ) -> (
        Arc<Bus>,
        mpsc::Receiver<Envelope>,
        mpsc::UnboundedReceiver<BusEvent>,
    ) {
        let (inbound, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (events, events_rx) = mpsc::unbounded_channel();
        let bus = Arc::new(Bus {
            me,
            peers: std::sync::Mutex::new(HashMap::new()),
            addresses: Arc::new(std::sync::Mutex::new(addresses)),
            events,
            inbound,
            cut: Default::default(),
            any_cut: Default::default(),
            tls: Default::default(),
        });
        (bus, inbound_rx, events_rx)
    }

    /// Makes every connection mutual TLS (set once, before the bus serves or sends).
    pub fn set_tls(&self, tls: BusTls) {
        let _ = self.tls.set(tls);
    }

    /// Sets (or changes) where a peer listens.
    pub fn set_address(&self, peer: u64, addr: SocketAddr) {
        self.addresses
            .lock()
            .expect("addresses lock")
            .insert(peer, addr);
    }

    /// Fault injection: cuts (or mends) the link to `peer`. While cut, messages to it are lost
    /// (and reported unreachable) and messages from it are dropped on arrival, as a network
    /// partition would. Cutting both ends of a link makes the cut symmetric.
    pub fn set_cut(&self, peer: u64, cut: bool) {
        let mut set = self.cut.write().expect("cut lock");
        if cut {
            set.insert(peer);
        } else {
            set.remove(&peer);
        }
        self.any_cut
            .store(!set.is_empty(), std::sync::atomic::Ordering::Release);
    }

    /// The peers whose links are cut.
    pub fn cut_links(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.cut.read().expect("cut lock").iter().copied().collect();
        v.sort_unstable();
        v
    }

    fn is_cut(&self, peer: u64) -> bool {
        self.any_cut.load(std::sync::atomic::Ordering::Acquire)
            && self.cut.read().expect("cut lock").contains(&peer)
    }

    /// Queues messages for their peers. Never blocks: a full queue drops and reports.
    pub fn send(self: &Arc<Self>, messages: Vec<Envelope>) {
        for env in messages {
            let peer = env.message.to;
            if self.is_cut(peer) {
                self.report_lost(&env);
                continue;
            }
            let tx = self.peer_queue(peer);
            if let Err(err) = tx.try_send(env) {
                let env = match err {
                    mpsc::error::TrySendError::Full(e) | mpsc::error::TrySendError::Closed(e) => e,
                };
                self.report_lost(&env);
            }
        }
    }

    fn report_lost(&self, env: &Envelope) {
        let (group, peer) = (env.group, env.message.to);
        let _ = self.events.send(BusEvent::Unreachable { group, peer });
        if env.message.get_msg_type() == MessageType::MsgSnapshot {
            let _ = self.events.send(BusEvent::Snapshot {
                group,
                peer,
                delivered: false,
            });
        }
    }

    fn peer_queue(self: &Arc<Self>, peer: u64) -> mpsc::Sender<Envelope> {
        let mut peers = self.peers.lock().expect("peers lock");
        peers
            .entry(peer)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE);
                tokio::spawn(outbound(self.clone(), peer, rx));
                tx
            })
            .clone()
    }

    /// Accepts peers on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((socket, _)) = listener.accept().await else {
                tokio::time::sleep(BACKOFF_MIN).await;
                continue;
            };
            let _ = socket.set_nodelay(true);
            let bus = self.clone();
            tokio::spawn(async move {
                let result = match bus.tls.get() {
                    None => inbound_connection(socket, bus, None).await,
                    Some(tls) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(tls.server());
                        match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(socket)).await
                        {
                            Ok(Ok(stream)) => {
                                let certs = stream.get_ref().1.peer_certificates();
                                let certs = certs.unwrap_or_default().to_vec();
                                inbound_connection(stream, bus, Some(certs)).await
                            }
                            Ok(Err(e)) => {
                                tracing::warn!(error = %e, "refused a bus peer's TLS handshake");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                if let Err(e) = result {
                    tracing::debug!(error = %e, "bus connection closed");
                }
            });
        }
    }
}

/// Reads one peer's connection: HELLO first, then batches, handed to the driver.
/// `certs`: over TLS, the peer's certificates, which must name the address of the node it
/// says it is.
async fn inbound_connection<S: AsyncReadExt + Unpin>(
    mut socket: S,
    bus: Arc<Bus>,
    certs: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
) -> Result<(), FrameError> {
    let (kind, payload) = read_frame(&mut socket).await?;
    if kind != KIND_HELLO || payload.len() != 8 {
        return Err(FrameError::Malformed);
    }
    let peer = u64::from_le_bytes(payload.try_into().expect("8 bytes"));
    if let Some(certs) = certs {
        let addr = bus
            .addresses
            .lock()
            .expect("addresses lock")
            .get(&peer)
            .copied();
        if !addr.is_some_and(|a| names_ip(&certs, a.ip())) {
            tracing::warn!(
                peer,
                ?addr,
                "refused a bus peer: its certificate does not name the node's address"
            );
            return Err(FrameError::Malformed);
        }
    }
    let mut snapshot = Reassembly::default();
    loop {
        let (kind, payload) = read_frame(&mut socket).await?;
        let messages = match kind {
            KIND_BATCH => decode_batch(&payload)?,
            KIND_CHUNK => snapshot.add(&payload)?.into_iter().collect(),
            _ => return Err(FrameError::Malformed),
        };
        if bus.is_cut(peer) {
            continue;
        }
        for env in messages {
            // A peer may only speak for itself.
            if env.message.from != peer {
                return Err(FrameError::Malformed);
            }
            if bus.inbound.send(env).await.is_err() {
                return Ok(());
            }
        }
    }
}

/// Whether the other end closed (or reset) a connection it never writes on while idle:
/// anything readable means closed, reset, or out of step, and the connection is unusable.
/// Checked before reuse, since the kernel accepts a write into a connection the peer has
/// already closed and the data is lost.
pub fn peer_closed(conn: &TcpStream) -> bool {
    let mut probe = [0u8; 1];
    !matches!(conn.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// One peer's sender: connects (with backoff), drains the queue into one frame per write, and
/// reports what it could not deliver.
async fn outbound(bus: Arc<Bus>, peer: u64, mut queue: mpsc::Receiver<Envelope>) {
    let mut conn: Option<PeerStream> = None;
    let mut backoff = BACKOFF_MIN;
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < 1024 {
            match queue.try_recv() {
                Ok(env) => batch.push(env),
                Err(_) => break,
            }
        }
        // The peer never writes on this connection, so anything readable means it closed or
        // reset it (say the peer restarted): reconnect now, rather than write into a dead
        // socket, which the kernel accepts and the peer never reads.
        if conn.as_ref().is_some_and(|c| peer_closed(c.tcp())) {
            conn = None;
        }
        if conn.is_none() {
            let addr = bus
                .addresses
                .lock()
                .expect("addresses lock")
                .get(&peer)
                .copied();
            conn = match addr {
                Some(addr) => connect(addr, bus.me, bus.tls.get()).await.ok(),
                None => None,
            };
            if conn.is_none() {
                batch.iter().for_each(|env| bus.report_lost(env));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            backoff = BACKOFF_MIN;
        }
        let mut written = true;
        for bytes in encode_frames(&batch) {
            let stream = conn.as_mut().expect("connected");
            if stream.send(&bytes).await.is_err() {
                written = false;
                break;
            }
        }
        if !written {
            conn = None;
        }
        for env in &batch {
            if !written {
                bus.report_lost(env);
            } else if env.message.get_msg_type() == MessageType::MsgSnapshot {
                let _ = bus.events.send(BusEvent::Snapshot {
                    group: env.group,
                    peer,
                    delivered: true,
                });
            }
        }
    }
}
