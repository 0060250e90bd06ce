//! Through a real client library (the `redis` crate): every command family, RESP3, transactions
//! with WATCH, expiry, and connection commands.

mod common;

use common::Cairn;
use redis::Commands;

#[test]
fn strings_keys_and_expiry() {
    let cairn = Cairn::start();
    let mut c = cairn.client();
    let _: () = c.set("a", "1").unwrap();
    assert_eq!(c.incr::<_, _, i64>("a", 41).unwrap(), 42);
    assert_eq!(c.get::<_, String>("a").unwrap(), "42");
    let _: () = redis::cmd("SET")
        .arg("t")
        .arg("v")
        .arg("PX")
        .arg(150)
        .query(&mut c)
        .unwrap();
    let pttl: i64 = c.pttl("t").unwrap();
    assert!(pttl > 0 && pttl <= 150, "pttl {pttl}");
    std::thread::sleep(std::time::Duration::from_millis(400));
    assert_eq!(
        c.get::<_, Option<String>>("t").unwrap(),
        None,
        "expired key still visible"
    );
    // Active expiry removes it without anyone touching it.
    let _: () = redis::cmd("SET")
        .arg("gone")
        .arg("v")
        .arg("PX")
        .arg(50)
        .query(&mut c)
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        redis::cmd("DBSIZE").query::<i64>(&mut c).unwrap(),
        1,
        "only 'a' remains"
    );
    let _: () = c.rename("a", "b").unwrap();
    assert!(!c.exists::<_, bool>("a").unwrap());
    let dump: Vec<u8> = redis::cmd("DUMP").arg("b").query(&mut c).unwrap();
    let _: () = redis::cmd("RESTORE")
        .arg("c")
        .arg(0)
        .arg(dump)
        .query(&mut c)
        .unwrap();
    assert_eq!(c.get::<_, String>("c").unwrap(), "42");
    let err = redis::cmd("RESTORE")
        .arg("c")
        .arg(0)
        .arg("junk")
        .query::<()>(&mut c)
        .unwrap_err();
    assert!(err.to_string().contains("BUSYKEY"), "{err}");
}

#[test]
fn lists_hashes_sets() {
    let cairn = Cairn::start();
    let mut c = cairn.client();
    let _: () = c.rpush("l", &["a", "b", "c"]).unwrap();
    assert_eq!(
        c.lrange::<_, Vec<String>>("l", 0, -1).unwrap(),
        vec!["a", "b", "c"]
    );
    assert_eq!(
        c.lpop::<_, Option<String>>("l", None).unwrap(),
        Some("a".into())
    );
    let _: () = c.hset_multiple("h", &[("f1", "v1"), ("f2", "v2")]).unwrap();
    let all: std::collections::HashMap<String, String> = c.hgetall("h").unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(c.hincr::<_, _, _, i64>("h", "n", 5).unwrap(), 5);
    let _: () = c.sadd("s1", &["x", "y", "z"]).unwrap();
    let _: () = c.sadd("s2", &["y", "z", "w"]).unwrap();
    let mut inter: Vec<String> = c.sinter(&["s1", "s2"]).unwrap();
    inter.sort();
    assert_eq!(inter, vec!["y", "z"]);
    let popped: Vec<String> = redis::cmd("SPOP").arg("s1").arg(10).query(&mut c).unwrap();
    assert_eq!(popped.len(), 3);
    assert!(
        !c.exists::<_, bool>("s1").unwrap(),
        "an emptied set must not exist"
    );
    let err = c.lpush::<_, _, ()>("h", "x").unwrap_err();
    assert!(err.to_string().contains("WRONGTYPE"), "{err}");
}

#[test]
fn watch_fails_exec_when_another_client_writes() {
    let cairn = Cairn::start();
    let mut a = cairn.client();
    let mut b = cairn.client();
    let _: () = a.set("balance", 100).unwrap();
    let _: () = redis::cmd("WATCH").arg("balance").query(&mut a).unwrap();
    let _: () = b.set("balance", 50).unwrap();
    let result: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("balance", 1)
        .query(&mut a)
        .unwrap();
    assert_eq!(result, None, "EXEC must fail after a watched key changed");
    // Without interference it succeeds.
    let _: () = redis::cmd("WATCH").arg("balance").query(&mut a).unwrap();
    let result: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("balance", 1)
        .query(&mut a)
        .unwrap();
    assert_eq!(result, Some((51,)));
}

#[test]
fn watch_fails_exec_when_the_key_expires() {
    let cairn = Cairn::start();
    let mut a = cairn.client();
    let _: () = redis::cmd("SET")
        .arg("lease")
        .arg("me")
        .arg("PX")
        .arg(100)
        .query(&mut a)
        .unwrap();
    let _: () = redis::cmd("WATCH").arg("lease").query(&mut a).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let result: Option<(String,)> = redis::pipe()
        .atomic()
        .set("lease", "other")
        .ignore()
        .get("lease")
        .query(&mut a)
        .unwrap();
    assert_eq!(result, None, "EXEC must fail after a watched key expired");
}

#[test]
fn resp3_and_connection_commands() {
    let cairn = Cairn::start();
    let mut raw = cairn.raw();
    let hello = raw.cmd_str("HELLO 3");
    assert!(
        hello.starts_with(b"%7\r\n"),
        "{:?}",
        String::from_utf8_lossy(&hello)
    );
    raw.cmd_str("HSET h a 1");
    assert_eq!(raw.cmd_str("HGETALL h"), b"%1\r\n$1\r\na\r\n$1\r\n1\r\n");
    assert_eq!(raw.cmd_str("GET missing"), b"_\r\n");
    assert_eq!(raw.cmd_str("CLIENT SETNAME worker-1"), b"+OK\r\n");
    assert_eq!(raw.cmd_str("CLIENT GETNAME"), b"$8\r\nworker-1\r\n");
    let list = String::from_utf8(raw.cmd_str("CLIENT LIST")).unwrap();
    assert!(
        list.contains("name=worker-1") && list.contains("resp=3"),
        "{list}"
    );
    assert_eq!(raw.cmd_str("CLIENT SETINFO LIB-NAME redis-py"), b"+OK\r\n");
    assert_eq!(raw.cmd_str("RESET"), b"+RESET\r\n");
    assert_eq!(
        raw.cmd_str("GET missing"),
        b"$-1\r\n",
        "RESET goes back to RESP2"
    );
    let id = String::from_utf8(raw.cmd_str("CLIENT ID")).unwrap();
    let mut other = cairn.raw();
    let killed = other.cmd_str(&format!(
        "CLIENT KILL ID {}",
        id.trim().trim_start_matches(':')
    ));
    assert_eq!(killed, b":1\r\n");
    // The killed connection is closed: whatever we send, we read end-of-stream.
    use std::io::{Read, Write};
    let _ = raw.writer.write_all(b"PING\r\n");
    let mut rest = Vec::new();
    let _ = raw.reader.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "killed client still got {:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn sorted_sets_hyperloglog_bitmaps_sort() {
    let cairn = Cairn::start();
    let mut c = cairn.client();
    let _: () = c
        .zadd_multiple("board", &[(10, "ann"), (30, "bob"), (20, "cid")])
        .unwrap();
    let top: Vec<(String, f64)> = c.zrevrange_withscores("board", 0, 1).unwrap();
    assert_eq!(
        top,
        vec![("bob".to_string(), 30.0), ("cid".to_string(), 20.0)]
    );
    assert_eq!(
        c.zrank::<_, _, Option<i64>>("board", "cid").unwrap(),
        Some(1)
    );
    let by_score: Vec<String> = redis::cmd("ZRANGE")
        .arg("board")
        .arg("(10")
        .arg("+inf")
        .arg("BYSCORE")
        .query(&mut c)
        .unwrap();
    assert_eq!(by_score, vec!["cid", "bob"]);
    let _: () = c.zincr("board", "ann", 25).unwrap();
    assert_eq!(c.zscore::<_, _, f64>("board", "ann").unwrap(), 35.0);

    for i in 0..1000 {
        let _: () = c.pfadd("visitors", format!("user{i}")).unwrap();
    }
    let n: i64 = c.pfcount("visitors").unwrap();
    assert!((980..=1020).contains(&n), "PFCOUNT {n} for 1000 distinct");

    let _: () = c.setbit("flags", 7, true).unwrap();
    let _: () = c.setbit("flags", 100, true).unwrap();
    assert_eq!(c.bitcount::<_, i64>("flags").unwrap(), 2);
    assert!(c.getbit::<_, bool>("flags", 7).unwrap());
    let fields: Vec<i64> = redis::cmd("BITFIELD")
        .arg("bf")
        .arg("SET")
        .arg("i8")
        .arg(0)
        .arg(-100)
        .arg("INCRBY")
        .arg("i8")
        .arg(0)
        .arg(-100)
        .query(&mut c)
        .unwrap();
    assert_eq!(fields, vec![0, 56], "i8 -200 wraps to 56");

    let _: () = c.rpush("nums", &["3", "1", "2"]).unwrap();
    let sorted: Vec<String> = redis::cmd("SORT")
        .arg("nums")
        .arg("DESC")
        .query(&mut c)
        .unwrap();
    assert_eq!(sorted, vec!["3", "2", "1"]);
    let _: () = c
        .mset(&[("w_1", "30"), ("w_2", "10"), ("w_3", "20")])
        .unwrap();
    let by: Vec<String> = redis::cmd("SORT")
        .arg("nums")
        .arg("BY")
        .arg("w_*")
        .query(&mut c)
        .unwrap();
    assert_eq!(by, vec!["2", "3", "1"]);
}
