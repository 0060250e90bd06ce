//! `cairn cluster backup` under write load, then `cairn cluster restore` into a new cluster of
//! another shard count: every write acknowledged before the backup began is in the restored
//! cluster, and keys of every type come back byte for byte (DUMP) with their TTLs.

mod common;

use common::{cairn_cli, wait_serving, Answer, Cluster, Conn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[test]
fn a_backup_under_load_restores_every_acknowledged_write_into_a_new_cluster() {
    let source = Cluster::new(&["--shards", "3"]);
    let ports: Vec<u16> = source.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    // Keys of every type, one with a TTL.
    let mut c = Conn::open(ports[1]).unwrap();
    let typed: &[&[&[u8]]] = &[
        &[b"SET", b"t:string", b"hello"],
        &[b"HSET", b"t:hash", b"f", b"v", b"g", b"w"],
        &[b"RPUSH", b"t:list", b"a", b"b", b"c"],
        &[b"SADD", b"t:set", b"x", b"y"],
        &[b"ZADD", b"t:zset", b"1", b"a", b"2.5", b"b"],
        &[b"XADD", b"t:stream", b"1-1", b"f", b"v"],
        &[b"PFADD", b"t:hll", b"a", b"b", b"c"],
        &[b"SET", b"t:ttl", b"soon", b"EX", b"1000"],
    ];
    for cmd in typed {
        assert!(
            !matches!(c.call(cmd), Some(Answer::Error(_)) | None),
            "{cmd:?}"
        );
    }
    let dump = |c: &mut Conn, key: &[u8]| match c.call(&[b"DUMP", key]) {
        Some(Answer::Value(Some(v))) => v,
        other => panic!("DUMP {}: {other:?}", String::from_utf8_lossy(key)),
    };
    let dumps: Vec<Vec<u8>> = typed.iter().map(|cmd| dump(&mut c, cmd[1])).collect();

    // Writes go on through another node while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, port) = (stop.clone(), acked.clone(), ports[0]);
        std::thread::spawn(move || {
            let mut c = Conn::open(port).unwrap();
            for i in 0..1_000_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let k = format!("w:{i}");
                match c.call(&[b"SET", k.as_bytes(), b"v"]) {
                    Some(Answer::Ok) => acked.lock().unwrap().push(k),
                    Some(Answer::Error(e))
                        if e.starts_with("TRYAGAIN") || e.starts_with("UNCERTAIN") => {}
                    other => panic!("{k}: {other:?}"),
                }
            }
        })
    };
    std::thread::sleep(Duration::from_millis(1500));
    let before: Vec<String> = acked.lock().unwrap().clone();
    let dir = tempfile::tempdir().unwrap();
    let (ok, out) = cairn_cli(&[
        "cluster",
        "backup",
        "--port",
        &ports[2].to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    println!("{out}");
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let during = acked.lock().unwrap().len();
    drop(source);

    let target = Cluster::new(&["--shards", "2"]);
    let tports: Vec<u16> = target.procs.iter().map(|p| p.port).collect();
    wait_serving(&tports, Duration::from_secs(30));
    let (ok, out) = cairn_cli(&[
        "cluster",
        "restore",
        "--port",
        &tports[0].to_string(),
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    println!("{}", out.lines().last().unwrap_or_default());
    let mut t = Conn::open(tports[1]).unwrap();
    for k in &before {
        assert_eq!(
            t.call(&[b"GET", k.as_bytes()]),
            Some(Answer::Value(Some(b"v".to_vec()))),
            "{k} was acknowledged before the backup began"
        );
    }
    for (cmd, want) in typed.iter().zip(&dumps) {
        assert_eq!(
            &dump(&mut t, cmd[1]),
            want,
            "{}",
            String::from_utf8_lossy(cmd[1])
        );
    }
    match t.call(&[b"PTTL", b"t:ttl"]) {
        Some(Answer::Int(ms)) => assert!(ms > 900_000 && ms <= 1_000_000, "{ms}"),
        other => panic!("PTTL t:ttl: {other:?}"),
    }
    println!(
        "{} writes acknowledged before the backup began, all restored ({} acknowledged by the time it ended)",
        before.len(),
        during
    );
    assert!(before.len() > 50, "{}", before.len());
}
