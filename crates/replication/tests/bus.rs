//! The cluster bus over loopback: delivery and order, delivery reports, hostile connections,
//! and reconnection after a peer restarts.

use cairn_replication::bus::{decode_batch, encode_batch, Reassembly, MAX_FRAME_BYTES};
use cairn_replication::{Bus, BusEvent, Envelope};
use raft::eraftpb::{Message, MessageType};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn msg(group: u64, from: u64, to: u64, index: u64, kind: MessageType) -> Envelope {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.index = index;
    Envelope { group, message: m }
}

async fn listener() -> (TcpListener, SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    (l, a)
}

async fn recv(rx: &mut tokio::sync::mpsc::Receiver<Envelope>) -> Envelope {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a message within 10 s")
        .expect("bus open")
}

#[tokio::test]
async fn messages_arrive_in_order_across_groups() {
    let (l2, a2) = listener().await;
    let (bus1, _rx1, _ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.clone().serve(l2));
    let sent: Vec<Envelope> = (0..3000)
        .map(|i| msg(i % 7, 1, 2, i, MessageType::MsgAppend))
        .collect();
    for chunk in sent.chunks(100) {
        bus1.send(chunk.to_vec());
    }
    for i in 0..3000 {
        let env = recv(&mut rx2).await;
        assert_eq!(
            (env.group, env.message.index, env.message.from),
            (i % 7, i, 1),
            "message {i}"
        );
    }
}

#[tokio::test]
async fn an_unreachable_peer_and_lost_snapshots_are_reported() {
    let (l, dead) = listener().await;
    drop(l);
    let (bus, _rx, mut events) = Bus::new(1, HashMap::from([(2, dead)]));
    bus.send(vec![
        msg(5, 1, 2, 1, MessageType::MsgAppend),
        msg(5, 1, 2, 2, MessageType::MsgSnapshot),
    ]);
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(Duration::from_secs(10), events.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(got.contains(&BusEvent::Unreachable { group: 5, peer: 2 }));
    assert!(got.contains(&BusEvent::Snapshot {
        group: 5,
        peer: 2,
        delivered: false
    }));
    // A peer nobody knows the address of is unreachable too.
    bus.send(vec![msg(6, 1, 9, 1, MessageType::MsgHeartbeat)]);
    let e = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(e, BusEvent::Unreachable { group: 6, peer: 9 });
}

#[tokio::test]
async fn a_written_snapshot_is_reported_delivered() {
    let (l2, a2) = listener().await;
    let (bus1, _rx1, mut ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.serve(l2));
    bus1.send(vec![msg(3, 1, 2, 10, MessageType::MsgSnapshot)]);
    assert_eq!(
        recv(&mut rx2).await.message.get_msg_type(),
        MessageType::MsgSnapshot
    );
    let e = tokio::time::timeout(Duration::from_secs(10), ev1.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        e,
        BusEvent::Snapshot {
            group: 3,
            peer: 2,
            delivered: true
        }
    );
}

/// A snapshot larger than any frame may be (the state of a big shard) travels in chunks and
/// arrives whole, in order with the messages around it.
#[tokio::test]
async fn a_snapshot_larger_than_a_frame_arrives_whole_in_chunks() {
    let (l2, a2) = listener().await;
    let (bus1, _rx1, mut ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.serve(l2));
    let mut snap = msg(3, 1, 2, 10, MessageType::MsgSnapshot);
    let data: Vec<u8> = (0..MAX_FRAME_BYTES + 3_000_000)
        .map(|i| (i % 251) as u8)
        .collect();
    snap.message.mut_snapshot().set_data(data.clone().into());
    snap.message.mut_snapshot().mut_metadata().index = 10;
    bus1.send(vec![msg(3, 1, 2, 9, MessageType::MsgAppend), snap]);
    bus1.send(vec![msg(3, 1, 2, 11, MessageType::MsgAppend)]);
    assert_eq!(recv(&mut rx2).await.message.index, 9);
    let got = recv(&mut rx2).await;
    assert_eq!(got.message.get_msg_type(), MessageType::MsgSnapshot);
    assert_eq!(got.group, 3);
    assert!(got.message.get_snapshot().get_data() == data.as_slice());
    assert_eq!(recv(&mut rx2).await.message.index, 11);
    let e = tokio::time::timeout(Duration::from_secs(10), ev1.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        e,
        BusEvent::Snapshot {
            delivered: true,
            ..
        }
    ));
}

/// Chunks out of order, from another snapshot, past the announced size or announcing a size
/// over the limit are refused; random chunk payloads never panic.
#[test]
fn reassembly_refuses_what_does_not_continue_the_snapshot() {
    let chunk = |group: u64, total: u64, offset: u64, bytes: &[u8]| {
        let mut p = group.to_le_bytes().to_vec();
        p.extend_from_slice(&total.to_le_bytes());
        p.extend_from_slice(&offset.to_le_bytes());
        p.extend_from_slice(bytes);
        p
    };
    let mut r = Reassembly::default();
    assert!(r.add(&chunk(1, 10, 0, b"abcd")).unwrap().is_none());
    assert!(r.add(&chunk(1, 10, 8, b"ij")).is_err(), "a gap");
    let mut r = Reassembly::default();
    r.add(&chunk(1, 10, 0, b"abcd")).unwrap();
    assert!(r.add(&chunk(2, 10, 4, b"efgh")).is_err(), "another group");
    let mut r = Reassembly::default();
    r.add(&chunk(1, 10, 0, b"abcd")).unwrap();
    assert!(
        r.add(&chunk(1, 10, 4, b"efghijk")).is_err(),
        "past the total"
    );
    let mut r = Reassembly::default();
    assert!(
        r.add(&chunk(1, u64::MAX, 0, b"x")).is_err(),
        "over the limit"
    );
    assert!(r.add(&chunk(1, 10, 4, b"x")).is_err(), "no start");
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 48) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
        let _ = r.add(&bytes);
    }
}

/// Writes raw bytes to the bus and returns whether the bus closed the connection.
async fn closes_on(addr: SocketAddr, bytes: &[u8]) -> bool {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(bytes).await;
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

fn hello(id: u64) -> Vec<u8> {
    let mut f = b"CRNB\x01\x01".to_vec();
    f.extend_from_slice(&8u32.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f
}

#[tokio::test]
async fn hostile_connections_are_closed_and_do_not_disturb_peers() {
    let (l2, a2) = listener().await;
    let (bus2, mut rx2, _ev) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.serve(l2));
    assert!(closes_on(a2, b"GET / HTTP/1.1\r\n\r\n").await, "bad magic");
    assert!(
        closes_on(a2, b"CRNB\x09\x01\x08\x00\x00\x00").await,
        "unknown version"
    );
    let mut huge = b"CRNB\x01\x02".to_vec();
    huge.extend_from_slice(&((MAX_FRAME_BYTES as u32) + 1).to_le_bytes());
    assert!(
        closes_on(a2, &huge).await,
        "oversized frame, announced only"
    );
    let batch = encode_batch(&[msg(1, 3, 2, 1, MessageType::MsgAppend)]);
    assert!(closes_on(a2, &batch).await, "batch before HELLO");
    let mut impostor = hello(4);
    impostor.extend_from_slice(&encode_batch(&[msg(1, 3, 2, 1, MessageType::MsgAppend)]));
    assert!(closes_on(a2, &impostor).await, "node 4 speaking as node 3");
    let mut garbage = hello(3);
    garbage.extend_from_slice(b"CRNB\x01\x02\x05\x00\x00\x00\xff\xff\xff\xff\x00");
    assert!(closes_on(a2, &garbage).await, "a batch whose count lies");
    // None of it reached the driver, and a real peer still gets through.
    let (bus1, _rx1, _ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    bus1.send(vec![msg(1, 1, 2, 77, MessageType::MsgAppend)]);
    let env = recv(&mut rx2).await;
    assert_eq!((env.message.from, env.message.index), (1, 77));
}

#[tokio::test]
async fn the_sender_reconnects_after_the_peer_restarts() {
    let (l2, a2) = listener().await;
    let (bus1, _rx1, _ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    let server = tokio::spawn(bus2.serve(l2));
    bus1.send(vec![msg(1, 1, 2, 1, MessageType::MsgAppend)]);
    assert_eq!(recv(&mut rx2).await.message.index, 1);
    server.abort();
    drop(rx2);
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The peer comes back on the same address.
    let l2 = TcpListener::bind(a2).await.unwrap();
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.serve(l2));
    // Raft retransmits what was lost; keep sending until one arrives.
    let mut arrived = None;
    for i in 2..200 {
        bus1.send(vec![msg(1, 1, 2, i, MessageType::MsgAppend)]);
        if let Ok(Some(env)) = tokio::time::timeout(Duration::from_millis(50), rx2.recv()).await {
            arrived = Some(env.message.index);
            break;
        }
    }
    assert!(arrived.is_some(), "no message reached the restarted peer");
}

/// A peer that restarts closes its sockets; the sender must notice before its next write, not
/// after it: the kernel accepts a write into a closed connection and the message is lost
/// (raft would only resend at its next heartbeat, ~100 ms later, which slowed every failover).
#[tokio::test]
async fn the_first_message_after_a_peer_restart_is_not_lost() {
    let (l2, a2) = listener().await;
    let (bus1, _rx1, _ev1) = Bus::new(1, HashMap::from([(2, a2)]));
    bus1.send(vec![msg(1, 1, 2, 1, MessageType::MsgAppend)]);
    // The first incarnation of the peer reads a little and dies, closing its sockets.
    let (mut old, _) = l2.accept().await.unwrap();
    let mut buf = [0u8; 64];
    let _ = old.read(&mut buf).await.unwrap();
    drop(old);
    drop(l2);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let l2 = TcpListener::bind(a2).await.unwrap();
    let (bus2, mut rx2, _ev2) = Bus::new(2, HashMap::new());
    tokio::spawn(bus2.serve(l2));
    bus1.send(vec![msg(1, 1, 2, 2, MessageType::MsgAppend)]);
    let got = tokio::time::timeout(Duration::from_secs(2), rx2.recv()).await;
    assert_eq!(
        got.ok().flatten().map(|e| e.message.index),
        Some(2),
        "the one message sent after the restart arrives"
    );
}

#[test]
fn batch_decoding_never_panics_on_garbage() {
    let good = encode_batch(&[
        msg(1, 1, 2, 3, MessageType::MsgAppend),
        msg(2, 1, 2, 4, MessageType::MsgRequestVote),
    ]);
    let payload = &good[10..];
    assert_eq!(decode_batch(payload).unwrap().len(), 2);
    let mut gen = cairn_check::seeded::XorShift::new(0x9e37_79b9_7f4a_7c15);
    let mut x = 0;
    for _ in 0..20_000 {
        let mut p = payload.to_vec();
        for _ in 0..3 {
            x = gen.next_u64();
            let i = (x as usize) % p.len();
            p[i] = (x >> 32) as u8;
        }
        let _ = decode_batch(&p);
        let _ = decode_batch(&p[..(x as usize) % p.len()]);
    }
}
