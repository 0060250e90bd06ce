//! Mutual TLS on the cluster bus (`tls-cluster yes`): a three-node cluster runs over it, and a
//! forged Raft message (a heartbeat from a member's id with a much higher term, which a node
//! that accepted it would act on by raising its own term) does not get in, neither over
//! plaintext nor over TLS with a certificate from another CA. On a plain-TCP cluster the same
//! forgery does get in: the probe can tell. A certificate of the cluster CA that does not name
//! the claimed node's address (a client's, say) is refused too. Nodes' connections to each other's client ports
//! (relayed commands, Pub/Sub links) use the same mutual TLS, and a plain one is refused.
//! CONFIG SET of a TLS file reloads the cluster's certificates without a restart.

mod common;

use cairn_replication::eraftpb::{Message, MessageType};
use cairn_replication::Envelope;
use cairn_server::tls::{write_dev_certs, AuthClients, TlsFiles};
use common::{Cairn, Raw};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

fn certs(dir: &Path) {
    write_dev_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certificates");
}

/// The cluster CA's client certificate (what `cairn certs` makes for applications).
fn client_files(certs: &Path) -> TlsFiles {
    TlsFiles {
        cert: certs.join("client.crt"),
        key: certs.join("client.key"),
        ca: Some(certs.join("ca.crt")),
        auth_clients: AuthClients::Yes,
    }
}

fn files(certs: &Path, ca: &Path) -> TlsFiles {
    TlsFiles {
        cert: certs.join("node.crt"),
        key: certs.join("node.key"),
        ca: Some(ca.join("ca.crt")),
        auth_clients: AuthClients::Yes,
    }
}

/// Shard 1's Raft term as node `c` sees it.
fn term(c: &mut Raw) -> u64 {
    let info = c.reply_text_of("INFO raft");
    let line = info
        .lines()
        .find(|l| l.starts_with("group1:"))
        .unwrap_or_else(|| panic!("no group1 in {info}"));
    line.split(',')
        .find_map(|f| f.strip_prefix("term="))
        .unwrap()
        .parse()
        .unwrap()
}

/// The bytes of a forged heartbeat for shard 1, "from" node 2 to node 1, at `term`.
fn forgery(term: u64) -> Vec<u8> {
    let mut hello = b"CRNB".to_vec();
    hello.extend_from_slice(&[cairn_replication::bus::VERSION, 1]);
    hello.extend_from_slice(&8u32.to_le_bytes());
    hello.extend_from_slice(&2u64.to_le_bytes());
    let mut m = Message::default();
    m.set_msg_type(MessageType::MsgHeartbeat);
    m.to = 1;
    m.from = 2;
    m.term = term;
    let batch = cairn_replication::bus::encode_batch(&[Envelope {
        group: 1,
        message: m,
    }]);
    [hello, batch].concat()
}

fn plain_forgery(bus_port: u16, term: u64) {
    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", bus_port)) {
        let _ = s.write_all(&forgery(term));
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// The same over TLS, presenting `client`'s certificate and trusting the cluster CA.
fn tls_forgery(bus_port: u16, term: u64, client: TlsFiles) {
    let tls = cairn_server::tls::bus_tls(&client).expect("a client configuration");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        use tokio::io::AsyncWriteExt;
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", bus_port)).await else {
            return;
        };
        let name =
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let connector = tokio_rustls::TlsConnector::from(tls.client());
        // The server refuses the certificate during or right after the handshake.
        if let Ok(mut s) = connector.connect(name, tcp).await {
            let _ = s.write_all(&forgery(term)).await;
            let _ = s.flush().await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    });
}

fn wait_term_above(c: &mut Raw, floor: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if term(c) > floor {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn the_bus_refuses_peers_without_a_cluster_certificate() {
    let cluster_ca = tempfile::tempdir().unwrap();
    let stranger = tempfile::tempdir().unwrap();
    certs(cluster_ca.path());
    certs(stranger.path());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let tls_files = files(cluster_ca.path(), cluster_ca.path());
    let nodes = common::start_cluster_configured(3, &dirs, |c| {
        c.shards = 1;
        c.tls_cluster = true;
        c.tls_files = tls_files.clone();
    });
    common::wait_writable(&nodes);
    let node = |i: usize| nodes[i].as_ref().unwrap();
    // The cluster works over mutual TLS: a write through node 2 is on node 3's replica.
    assert_eq!(node(1).raw().cmd_str("SET over-tls yes"), b"+OK\r\n");
    assert_eq!(node(2).raw().cmd_str("GET over-tls"), b"$3\r\nyes\r\n");
    let mut n1 = node(0).raw();
    let bus_port = node(0).port + 10000;
    let before = term(&mut n1);
    plain_forgery(bus_port, before + 100);
    tls_forgery(
        bus_port,
        before + 200,
        files(stranger.path(), cluster_ca.path()),
    );
    // Signed by the cluster CA, but a client's: it names no node's address.
    tls_forgery(bus_port, before + 300, client_files(cluster_ca.path()));
    assert!(
        !wait_term_above(&mut n1, before + 50),
        "a forged message reached Raft: term {} after {before}",
        term(&mut n1)
    );
    assert_eq!(node(0).raw().cmd_str("SET still ok"), b"+OK\r\n");
    assert_eq!(
        node(2).raw().cmd_str("CONFIG GET tls-cluster"),
        b"*2\r\n$11\r\ntls-cluster\r\n$3\r\nyes\r\n"
    );
}

#[test]
fn on_a_plain_bus_the_same_forgery_gets_in() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = common::start_cluster_configured(3, &dirs, |c| c.shards = 1);
    common::wait_writable(&nodes);
    let node: &Cairn = nodes[0].as_ref().unwrap();
    let mut n1 = node.raw();
    let before = term(&mut n1);
    plain_forgery(node.port + 10000, before + 100);
    assert!(
        wait_term_above(&mut n1, before + 50),
        "the probe did not move the term: it cannot tell a refused forgery from a harmless one"
    );
}

/// A connection to `port` over TLS with `client`'s certificate; None if the handshake fails.
fn tls_client(
    rt: &tokio::runtime::Runtime,
    port: u16,
    client: TlsFiles,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = cairn_server::tls::bus_tls(&client).expect("a client configuration");
    rt.block_on(async move {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        let name =
            rustls_pki_types::ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
        let connector = tokio_rustls::TlsConnector::from(tls.client());
        let fut = connector.connect(name, tcp);
        tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .ok()?
            .ok()
    })
}

/// Sends `line` as a RESP request and reads up to one reply line (empty if the server closed).
fn tls_request(
    rt: &tokio::runtime::Runtime,
    s: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    line: &str,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let words: Vec<&[u8]> = line.split(' ').map(str::as_bytes).collect();
    rt.block_on(async {
        if s.write_all(&common::encode(&words)).await.is_err() || s.flush().await.is_err() {
            return String::new();
        }
        let mut buf = vec![0u8; 1024];
        let read = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        match read {
            Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => String::new(),
        }
    })
}

/// Three nodes over mutual TLS with the certificates in `certs`, and three shards each on one
/// node: a node relays every command on another's keys.
fn three_shards_over_tls(dirs: &[tempfile::TempDir], certs: &Path) -> Vec<Option<Cairn>> {
    let tls_files = files(certs, certs);
    let nodes = common::start_cluster_configured(3, dirs, |c| {
        c.shards = 3;
        c.replicas = 1;
        c.tls_cluster = true;
        c.tls_files = tls_files.clone();
    });
    common::wait_writable(&nodes);
    nodes
}

#[test]
fn nodes_reach_each_others_client_ports_only_over_the_cluster_tls() {
    let cluster_ca = tempfile::tempdir().unwrap();
    let stranger = tempfile::tempdir().unwrap();
    certs(cluster_ca.path());
    certs(stranger.path());
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_shards_over_tls(&dirs, cluster_ca.path());
    let node = |i: usize| nodes[i].as_ref().unwrap();
    for i in 0..6 {
        assert_eq!(
            node(i % 3).raw().cmd_str(&format!("SET relayed{i} v{i}")),
            b"+OK\r\n",
            "a write through node {}",
            i % 3 + 1
        );
    }
    // Each key is on one node: the other two relay its reads.
    for i in 0..3 {
        for j in 0..6 {
            assert_eq!(
                node(i).raw().cmd_str(&format!("GET relayed{j}")),
                format!("$2\r\nv{j}\r\n").as_bytes()
            );
        }
    }
    // A transaction over all three shards, coordinated by each node in turn.
    for i in 0..3 {
        assert_eq!(
            node(i).raw().cmd_str("MSET {a}x 1 {b}y 2 {c}z 3"),
            b"+OK\r\n"
        );
        assert_eq!(
            node(i).raw().cmd_str("MGET {a}x {b}y {c}z"),
            b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n"
        );
    }
    // Pub/Sub links between nodes: a message published on node 1 reaches node 3's subscriber.
    let mut sub = node(2).raw();
    sub.send_line("SUBSCRIBE over-tls");
    assert_eq!(
        sub.reply_text(),
        "*3\r\n$9\r\nsubscribe\r\n$8\r\nover-tls\r\n:1\r\n"
    );
    assert_eq!(node(0).raw().cmd_str("PUBLISH over-tls hello"), b":0\r\n");
    assert_eq!(
        sub.reply_text(),
        "*3\r\n$7\r\nmessage\r\n$8\r\nover-tls\r\n$5\r\nhello\r\n"
    );
    // A node's greeting in clear is refused (the cluster has no node secret yet: before
    // tls-cluster's rule, this connection would have been taken for a node's).
    let reply = node(0).raw().cmd_str("CAIRN.RELAY");
    let text = String::from_utf8_lossy(&reply).into_owned();
    assert!(
        text.starts_with("-NOPERM") && text.contains("TLS"),
        "{text}"
    );
    // Over TLS: a certificate of another CA does not get through the handshake (or is cut
    // right after it); one of the cluster CA's does, and is taken for a node's.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let port = node(0).port;
    if let Some(mut s) = tls_client(&rt, port, files(stranger.path(), cluster_ca.path())) {
        let reply = tls_request(&rt, &mut s, "CAIRN.RELAY");
        assert!(
            !reply.starts_with("+OK"),
            "a stranger's certificate: {reply}"
        );
    }
    // The cluster CA's client certificate passes the handshake (the CA signed it) but names
    // no member's address: it is not a node's (taken for one before the check: seen).
    let mut s = tls_client(&rt, port, client_files(cluster_ca.path()))
        .expect("a handshake with the cluster CA's client certificate");
    let reply = tls_request(&rt, &mut s, "CAIRN.RELAY");
    assert!(!reply.starts_with("+OK"), "a client's certificate: {reply}");
    let mut s = tls_client(&rt, port, files(cluster_ca.path(), cluster_ca.path()))
        .expect("a handshake with the cluster's certificate");
    assert_eq!(tls_request(&rt, &mut s, "CAIRN.RELAY"), "+OK\r\n");
    assert_eq!(tls_request(&rt, &mut s, "GET relayed0"), "$2\r\nv0\r\n");
    // Plain clients are served on the same port as before.
    assert_eq!(node(0).raw().cmd_str("PING"), b"+PONG\r\n");
}

/// Whether `port` takes a TLS connection with `client`'s certificate: the bus never sends
/// anything on an accepted connection, so a read that waits is an accepted handshake and an
/// alert or a close is a refused one.
fn accepts(rt: &tokio::runtime::Runtime, port: u16, client: TlsFiles) -> bool {
    use tokio::io::AsyncReadExt;
    let Some(mut s) = tls_client(rt, port, client) else {
        return false;
    };
    rt.block_on(async {
        let mut buf = [0u8; 16];
        tokio::time::timeout(Duration::from_millis(700), s.read(&mut buf))
            .await
            .is_err()
    })
}

#[test]
fn config_set_reloads_the_cluster_certificates() {
    let live = tempfile::tempdir().unwrap();
    let old = tempfile::tempdir().unwrap();
    certs(live.path());
    for f in ["ca.crt", "node.crt", "node.key"] {
        std::fs::copy(live.path().join(f), old.path().join(f)).unwrap();
    }
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = three_shards_over_tls(&dirs, live.path());
    let node = |i: usize| nodes[i].as_ref().unwrap();
    for i in 0..6 {
        assert_eq!(node(0).raw().cmd_str(&format!("SET k{i} v{i}")), b"+OK\r\n");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bus = node(0).port + 10000;
    let old_files = || files(old.path(), old.path());
    assert!(accepts(&rt, bus, old_files()), "the probe cannot tell");

    // A file that cannot be used is refused, and everything stays as it was.
    let reply = node(0)
        .raw()
        .cmd_str("CONFIG SET tls-cert-file /nonexistent/node.crt");
    assert!(reply.starts_with(b"-ERR CONFIG SET failed"), "{reply:?}");
    assert!(accepts(&rt, bus, old_files()));

    // New certificates from a new CA replace the files on every node; each rereads them.
    certs(live.path());
    let path = live.path().join("node.crt");
    for i in 0..3 {
        let reply = node(i)
            .raw()
            .cmd_str(&format!("CONFIG SET tls-cert-file {}", path.display()));
        assert_eq!(reply, b"+OK\r\n", "node {}", i + 1);
    }
    assert!(
        !accepts(&rt, bus, old_files()),
        "the bus still takes the old CA's certificate"
    );
    assert!(accepts(&rt, bus, files(live.path(), live.path())));
    // Connections opened from now on are the new CA's both ways: fresh clients' reads of the
    // other nodes' shards are relayed over new ones.
    for i in 0..3 {
        for j in 0..6 {
            assert_eq!(
                node(i).raw().cmd_str(&format!("GET k{j}")),
                format!("$2\r\nv{j}\r\n").as_bytes(),
                "GET k{j} through node {}",
                i + 1
            );
        }
    }
    assert_eq!(node(2).raw().cmd_str("SET after reload"), b"+OK\r\n");
}
