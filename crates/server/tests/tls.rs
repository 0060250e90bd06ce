//! TLS for clients: the `redis` crate and `redis-cli --tls` talk to the TLS port with the
//! certificates `cairn certs` writes; a client without a certificate, or with one from
//! another CA, is refused; a new certificate is taken up by CONFIG SET without a restart, and
//! a bad one is refused with the old one kept.

mod common;

use cairn_server::tls::{write_dev_certs, AuthClients, TlsFiles};
use common::Cairn;
use std::path::Path;

fn certs(dir: &Path) {
    write_dev_certs(dir, &["localhost".into(), "127.0.0.1".into()]).expect("certificates");
}

fn files(dir: &Path, auth: AuthClients) -> TlsFiles {
    TlsFiles {
        cert: dir.join("node.crt"),
        key: dir.join("node.key"),
        ca: Some(dir.join("ca.crt")),
        auth_clients: auth,
    }
}

fn start(tls: TlsFiles) -> (Cairn, u16) {
    let port = common::free_port();
    let cairn = Cairn::start_with(cairn_server::Config {
        tls_port: port,
        tls_files: tls,
        ..Default::default()
    });
    // The plain port answering means the TLS port is bound too (it is bound first).
    assert_eq!(cairn.raw().cmd_str("PING"), b"+PONG\r\n");
    (cairn, port)
}

/// A `redis` crate connection over TLS trusting `ca_dir`'s CA, presenting `client_dir`'s
/// client certificate when given.
fn connect(
    port: u16,
    ca_dir: &Path,
    client_dir: Option<&Path>,
) -> redis::RedisResult<redis::Connection> {
    let read = |p: std::path::PathBuf| std::fs::read(p).unwrap();
    let client = redis::Client::build_with_tls(
        format!("rediss://localhost:{port}"),
        redis::TlsCertificates {
            client_tls: client_dir.map(|d| redis::ClientTlsConfig {
                client_cert: read(d.join("client.crt")),
                client_key: read(d.join("client.key")),
            }),
            root_cert: Some(read(ca_dir.join("ca.crt"))),
        },
    )?;
    let mut conn = client.get_connection()?;
    // The server checks the client's certificate after the handshake: a refusal shows on the
    // first request.
    redis::cmd("PING").query::<String>(&mut conn)?;
    Ok(conn)
}

#[test]
fn clients_with_a_certificate_from_the_cluster_ca_are_served_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let (cairn, port) = start(files(dir.path(), AuthClients::Yes));
    let mut conn = connect(port, dir.path(), Some(dir.path())).expect("a TLS connection");
    let _: () = redis::cmd("SET")
        .arg("k")
        .arg("over tls")
        .query(&mut conn)
        .unwrap();
    let got: String = redis::cmd("GET").arg("k").query(&mut conn).unwrap();
    assert_eq!(got, "over tls");
    // The plain port sees the same data.
    assert_eq!(cairn.raw().cmd_str("GET k"), b"$8\r\nover tls\r\n");

    // No client certificate, or one signed by another CA: refused.
    assert!(
        connect(port, dir.path(), None).is_err(),
        "a client without a certificate was served"
    );
    let other = tempfile::tempdir().unwrap();
    certs(other.path());
    assert!(
        connect(port, dir.path(), Some(other.path())).is_err(),
        "a client certificate from another CA was accepted"
    );
    // A plaintext request to the TLS port gets no Redis reply.
    let mut plain = common::Raw::connect(port);
    plain.send_line("PING");
    let mut buf = [0u8; 64];
    let n = std::io::Read::read(&mut plain.reader, &mut buf).unwrap_or(0);
    assert!(
        !buf[..n].starts_with(b"+PONG"),
        "plaintext served on the TLS port"
    );

    // redis-cli --tls, when installed.
    if let Ok(out) = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string(), "--tls", "--cacert"])
        .arg(dir.path().join("ca.crt"))
        .arg("--cert")
        .arg(dir.path().join("client.crt"))
        .arg("--key")
        .arg(dir.path().join("client.key"))
        .args(["GET", "k"])
        .output()
    {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "over tls");
    }
}

#[test]
fn a_new_certificate_is_taken_up_without_a_restart() {
    let first = tempfile::tempdir().unwrap();
    let second = tempfile::tempdir().unwrap();
    certs(first.path());
    certs(second.path());
    let (cairn, port) = start(files(first.path(), AuthClients::Yes));
    let mut open = connect(port, first.path(), Some(first.path())).expect("first CA");
    let mut admin = cairn.raw();
    // A file that cannot be read: refused, and the old configuration stays.
    let refused = admin.cmd(&[
        b"CONFIG",
        b"SET",
        b"tls-cert-file",
        b"/nonexistent/node.crt",
    ]);
    assert!(
        refused.starts_with(b"-ERR CONFIG SET failed"),
        "{refused:?}"
    );
    assert!(connect(port, first.path(), Some(first.path())).is_ok());
    // The second set of files, all at once.
    let path = |p: std::path::PathBuf| p.display().to_string();
    let set = admin.cmd(&[
        b"CONFIG",
        b"SET",
        b"tls-cert-file",
        path(second.path().join("node.crt")).as_bytes(),
        b"tls-key-file",
        path(second.path().join("node.key")).as_bytes(),
        b"tls-ca-cert-file",
        path(second.path().join("ca.crt")).as_bytes(),
    ]);
    assert_eq!(set, b"+OK\r\n");
    // New connections get the new certificate and CA; the open one goes on.
    assert!(
        connect(port, first.path(), Some(first.path())).is_err(),
        "the old certificate is still served"
    );
    connect(port, second.path(), Some(second.path())).expect("the new certificate");
    let pong: String = redis::cmd("PING").query(&mut open).unwrap();
    assert_eq!(pong, "PONG");
    let shown = String::from_utf8_lossy(&admin.cmd_str("CONFIG GET tls-ca-cert-file")).into_owned();
    assert!(
        shown.contains(&path(second.path().join("ca.crt"))),
        "{shown}"
    );
    // tls-auth-clients no: clients need no certificate.
    assert_eq!(admin.cmd_str("CONFIG SET tls-auth-clients no"), b"+OK\r\n");
    connect(port, second.path(), None).expect("no client certificate needed");
}

/// Connections that never finish their handshake are bounded by maxclients: one more is
/// closed at once, and the port serves again when they go.
#[test]
fn unfinished_handshakes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    certs(dir.path());
    let port = common::free_port();
    let cairn = Cairn::start_with(cairn_server::Config {
        tls_port: port,
        tls_files: files(dir.path(), AuthClients::Yes),
        maxclients: 3,
        ..Default::default()
    });
    assert_eq!(cairn.raw().cmd_str("PING"), b"+PONG\r\n");
    // Three connections sit in their handshakes (they send nothing).
    let stalled: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut extra = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    extra
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 16];
    // Closed at once: end of stream (a timeout would mean it waits in a handshake too).
    match std::io::Read::read(&mut extra, &mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the connection past the bound was not closed: {other:?}"),
    }
    drop(stalled);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while connect(port, dir.path(), Some(dir.path())).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the TLS port does not serve again"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
