//! Hostile input: garbage bytes, truncated frames, absurd lengths, huge pipelines. The server must
//! answer with Redis's errors or close only the offending connection, stay up, and keep serving
//! everyone else.

mod common;

use common::{Cairn, Raw};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Reads whatever the server sends until it closes the connection (or 10 s pass).
fn read_until_closed(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return out,
            // Closing with unread input makes the kernel send a reset: closed all the same.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "server neither answered nor closed: {e}; got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn assert_alive(cairn: &Cairn) {
    let mut c = cairn.raw();
    assert_eq!(c.cmd_str("PING"), b"+PONG\r\n", "server stopped answering");
}

#[test]
fn protocol_errors_match_redis_and_close_only_that_connection() {
    let cairn = Cairn::start();
    let mut bystander = cairn.raw();
    bystander.cmd_str("SET survivor yes");
    let cases: &[(&[u8], &str)] = &[
        (
            b"*1\r\n+PING\r\n",
            "-ERR Protocol error: expected '$', got '+'\r\n",
        ),
        (
            b"*x\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
        (
            b"*1\r\n$2147483648\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"*1\r\n$-5\r\n",
            "-ERR Protocol error: invalid bulk length\r\n",
        ),
        (
            b"\"unbalanced\r\n",
            "-ERR Protocol error: unbalanced quotes in request\r\n",
        ),
        (
            b"*3000000000\r\n",
            "-ERR Protocol error: invalid multibulk length\r\n",
        ),
    ];
    for (input, expected) in cases {
        let mut s = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
        s.write_all(input).unwrap();
        let got = read_until_closed(&mut s);
        assert_eq!(
            String::from_utf8_lossy(&got),
            *expected,
            "input {:?}",
            String::from_utf8_lossy(input)
        );
    }
    // Pipelined good commands before the bad frame are answered first.
    let mut s = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
    s.write_all(b"PING\r\n*1\r\n$4\r\nPING\r\n*1\r\n:1\r\n")
        .unwrap();
    let got = read_until_closed(&mut s);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "+PONG\r\n+PONG\r\n-ERR Protocol error: expected '$', got ':'\r\n"
    );
    assert_eq!(bystander.cmd_str("GET survivor"), b"$3\r\nyes\r\n");
}

#[test]
fn garbage_and_truncated_frames_never_hurt_the_server() {
    let cairn = Cairn::start();
    let seed = 0x1234_5678_9abc_def0u64;
    println!("garbage test seed {seed:#x}");
    let mut gen = cairn_check::seeded::XorShift::new(seed);
    for round in 0..200 {
        let mut bytes = Vec::new();
        for _ in 0..(round % 50 + 1) * 8 {
            bytes.push(gen.next_u64() as u8);
        }
        // Half the rounds look like RESP, to get past the first byte.
        if round % 2 == 0 {
            bytes.insert(0, b'*');
        }
        let mut s = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
        let _ = s.write_all(&bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = read_until_closed(&mut s);
    }
    // Truncated frames: the client goes away mid-request.
    for cut in 1..20 {
        let frame = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        let mut s = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
        s.write_all(&frame[..cut]).unwrap();
        drop(s);
    }
    assert_alive(&cairn);
    assert_eq!(
        cairn.raw().cmd_str("EXISTS k"),
        b":0\r\n",
        "a truncated SET must not apply"
    );
}

#[test]
fn absurd_announced_lengths_cost_nothing_until_sent() {
    let cairn = Cairn::start();
    // A 10M-element multibulk and a 500 MB bulk are announced but never sent.
    let mut many = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
    many.write_all(b"*10000000\r\n$3\r\nSET\r\n").unwrap();
    let mut big = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
    big.write_all(b"*2\r\n$4\r\nECHO\r\n$500000000\r\nabc")
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert_alive(&cairn);
    drop(many);
    drop(big);
    assert_alive(&cairn);
}

#[test]
fn a_client_past_the_query_buffer_limit_is_closed() {
    let config = cairn_server::Config {
        client_query_buffer_limit: 1024 * 1024,
        ..Default::default()
    };
    let cairn = Cairn::start_with(config);
    let mut s = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
    // A 4 MB argument that the limit (1 MB) does not allow to accumulate.
    let _ = s.write_all(b"*2\r\n$4\r\nECHO\r\n$4000000\r\n");
    let chunk = vec![b'x'; 64 * 1024];
    let mut closed = false;
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            closed = true;
            break;
        }
    }
    if !closed {
        let got = read_until_closed(&mut s);
        assert!(
            got.is_empty(),
            "expected a silent close, got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    assert_alive(&cairn);
}

#[test]
fn hundred_thousand_pipelined_commands_answer_in_order() {
    let cairn = Cairn::start();
    let mut raw = Raw::connect(cairn.port);
    raw.writer
        .set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let n = 100_000;
    let writer = {
        let mut w = raw.writer.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut batch = Vec::new();
            for i in 0..n {
                batch.extend_from_slice(&common::encode(&[b"INCR", b"counter"]));
                if i % 1000 == 999 {
                    w.write_all(&batch).unwrap();
                    batch.clear();
                }
            }
            w.write_all(&batch).unwrap();
        })
    };
    for i in 1..=n {
        let reply = raw.read_reply();
        assert_eq!(
            reply,
            format!(":{i}\r\n").into_bytes(),
            "reply {i} out of order"
        );
    }
    writer.join().unwrap();
    assert_alive(&cairn);
}

#[test]
fn max_clients_refuses_with_redis_error() {
    let config = cairn_server::Config {
        maxclients: 2,
        ..Default::default()
    };
    let cairn = Cairn::start_with(config);
    let mut a = cairn.raw();
    let mut b = cairn.raw();
    assert_eq!(a.cmd_str("PING"), b"+PONG\r\n");
    assert_eq!(b.cmd_str("PING"), b"+PONG\r\n");
    let mut third = TcpStream::connect(("127.0.0.1", cairn.port)).unwrap();
    let got = read_until_closed(&mut third);
    assert_eq!(got, b"-ERR max number of clients reached\r\n");
    assert_eq!(a.cmd_str("PING"), b"+PONG\r\n");
}

#[test]
fn big_replies_to_a_pipeline_are_written_as_they_are_made() {
    // 300 pipelined LRANGEs of a 1000-element list make ~2 MB of replies; they must all arrive,
    // in order, while the server flushes every 64 KB instead of building them all up first.
    let cairn = Cairn::start();
    let mut raw = Raw::connect(cairn.port);
    let items: Vec<String> = (0..1000).map(|i| format!("item-{i:04}")).collect();
    let mut push: Vec<&[u8]> = vec![b"RPUSH", b"big"];
    push.extend(items.iter().map(|s| s.as_bytes()));
    assert_eq!(raw.cmd(&push), b":1000\r\n");
    let mut batch = Vec::new();
    for _ in 0..300 {
        batch.extend_from_slice(&common::encode(&[b"LRANGE", b"big", b"0", b"-1"]));
    }
    raw.writer.write_all(&batch).unwrap();
    for i in 0..300 {
        let reply = common::parse(&raw.read_reply());
        match reply {
            common::Frame::Agg(b'*', elems) => assert_eq!(elems.len(), 1000, "reply {i}"),
            other => panic!("reply {i}: {other:?}"),
        }
    }
    assert_alive(&cairn);
}
