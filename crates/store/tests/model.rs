//! Model-based property tests: random operations applied to cairn's store and to a simple
//! reference model must give the same replies and the same final contents. Plus the store's
//! own contracts: determinism across replicas and byte-exact snapshots.

use cairn_resp::{Protocol, Reply};
use cairn_store::{cmd, snapshot, Env, Store};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn run(store: &mut Store, now_ms: u64, seed: u64, args: &[&str]) -> Reply {
    let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    // A container command (XGROUP CREATE) is implemented as `parent|sub`.
    let h = cmd::handler(&name)
        .or_else(|| {
            let sub = String::from_utf8_lossy(args.get(1)?).to_lowercase();
            cmd::handler(&format!("{name}|{sub}"))
        })
        .unwrap_or_else(|| panic!("no handler for {name}"));
    store.execute(
        h,
        &args,
        &Env {
            now_ms,
            seed,
            proto: Protocol::Resp2,
        },
    )
}

fn x(store: &mut Store, args: &[&str]) -> Reply {
    run(store, 1_000, 7, args)
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

fn bulks<'a>(items: impl IntoIterator<Item = &'a String>) -> Reply {
    Reply::Array(items.into_iter().map(|s| bulk(s)).collect())
}

#[derive(Debug, Clone)]
enum ListOp {
    Push(bool, String),
    Pop(bool),
    Set(i64, String),
    Rem(i64, String),
    Trim(i64, i64),
    Range(i64, i64),
}

fn list_op() -> impl Strategy<Value = ListOp> {
    let v = prop::sample::select(vec!["a", "b", "c"]).prop_map(String::from);
    prop_oneof![
        (any::<bool>(), v.clone()).prop_map(|(l, v)| ListOp::Push(l, v)),
        any::<bool>().prop_map(ListOp::Pop),
        (-5i64..5, v.clone()).prop_map(|(i, v)| ListOp::Set(i, v)),
        (-2i64..3, v).prop_map(|(c, v)| ListOp::Rem(c, v)),
        (-6i64..6, -6i64..6).prop_map(|(a, b)| ListOp::Trim(a, b)),
        (-6i64..6, -6i64..6).prop_map(|(a, b)| ListOp::Range(a, b)),
    ]
}

/// Redis's start/stop rules over a model list.
fn window(len: usize, start: i64, stop: i64) -> Option<(usize, usize)> {
    let len = len as i64;
    let s = if start < 0 {
        (len + start).max(0)
    } else {
        start
    };
    let e = if stop < 0 {
        len + stop
    } else {
        stop.min(len - 1)
    };
    (s <= e && s < len).then_some((s as usize, e as usize))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn lists_match_a_vecdeque(ops in prop::collection::vec(list_op(), 1..60)) {
        let mut store = Store::new();
        let mut model: VecDeque<String> = VecDeque::new();
        for op in ops {
            let (got, want) = match &op {
                ListOp::Push(left, v) => {
                    if *left { model.push_front(v.clone()) } else { model.push_back(v.clone()) }
                    (x(&mut store, &[if *left { "LPUSH" } else { "RPUSH" }, "l", v]), Reply::Int(model.len() as i64))
                }
                ListOp::Pop(left) => {
                    let v = if *left { model.pop_front() } else { model.pop_back() };
                    (x(&mut store, &[if *left { "LPOP" } else { "RPOP" }, "l"]), v.map_or(Reply::Nil, |v| bulk(&v)))
                }
                ListOp::Set(i, v) => {
                    let got = x(&mut store, &["LSET", "l", &i.to_string(), v]);
                    let idx = if *i < 0 { model.len() as i64 + i } else { *i };
                    let want = if model.is_empty() {
                        Reply::error("ERR no such key")
                    } else if idx < 0 || idx >= model.len() as i64 {
                        Reply::error("ERR index out of range")
                    } else {
                        model[idx as usize] = v.clone();
                        Reply::OK
                    };
                    (got, want)
                }
                ListOp::Rem(count, v) => {
                    let got = x(&mut store, &["LREM", "l", &count.to_string(), v]);
                    let limit = if *count == 0 { usize::MAX } else { count.unsigned_abs() as usize };
                    let mut removed = 0;
                    if *count >= 0 {
                        let mut kept = VecDeque::new();
                        for e in model.drain(..) {
                            if &e == v && removed < limit { removed += 1 } else { kept.push_back(e) }
                        }
                        model = kept;
                    } else {
                        let mut kept = VecDeque::new();
                        for e in model.drain(..).rev() {
                            if &e == v && removed < limit { removed += 1 } else { kept.push_front(e) }
                        }
                        model = kept;
                    }
                    (got, Reply::Int(removed as i64))
                }
                ListOp::Trim(a, b) => {
                    let got = x(&mut store, &["LTRIM", "l", &a.to_string(), &b.to_string()]);
                    model = match window(model.len(), *a, *b) {
                        Some((s, e)) => model.range(s..=e).cloned().collect(),
                        None => VecDeque::new(),
                    };
                    (got, Reply::OK)
                }
                ListOp::Range(a, b) => {
                    let got = x(&mut store, &["LRANGE", "l", &a.to_string(), &b.to_string()]);
                    let want = match window(model.len(), *a, *b) {
                        Some((s, e)) => bulks(model.range(s..=e)),
                        None => Reply::Array(vec![]),
                    };
                    (got, want)
                }
            };
            prop_assert_eq!(got, want, "after {:?}", op);
            prop_assert_eq!(x(&mut store, &["EXISTS", "l"]), Reply::Int(!model.is_empty() as i64), "an empty list must not exist");
        }
    }

    #[test]
    fn hashes_match_a_map(ops in prop::collection::vec((0u8..4, 0u8..4, -3i64..4), 1..80)) {
        let mut store = Store::new();
        let mut model: BTreeMap<String, i64> = BTreeMap::new();
        for (kind, field, n) in ops {
            let f = format!("f{field}");
            match kind {
                0 => {
                    let got = x(&mut store, &["HSET", "h", &f, &n.to_string()]);
                    let added = model.insert(f, n).is_none();
                    prop_assert_eq!(got, Reply::Int(added as i64));
                }
                1 => {
                    let got = x(&mut store, &["HDEL", "h", &f]);
                    prop_assert_eq!(got, Reply::Int(model.remove(&f).is_some() as i64));
                }
                2 => {
                    let got = x(&mut store, &["HINCRBY", "h", &f, &n.to_string()]);
                    let v = model.entry(f).or_insert(0);
                    *v += n;
                    prop_assert_eq!(got, Reply::Int(*v));
                }
                _ => {
                    let got = x(&mut store, &["HGET", "h", &f]);
                    prop_assert_eq!(got, model.get(&f).map_or(Reply::Nil, |v| bulk(&v.to_string())));
                }
            }
            prop_assert_eq!(x(&mut store, &["HLEN", "h"]), Reply::Int(model.len() as i64));
        }
    }

    #[test]
    fn sets_match_a_set(ops in prop::collection::vec((0u8..4, 0u8..6), 1..80), seed in any::<u64>()) {
        let mut store = Store::new();
        let mut model: BTreeSet<String> = BTreeSet::new();
        for (kind, m) in ops {
            let m = format!("m{m}");
            match kind {
                0 => prop_assert_eq!(x(&mut store, &["SADD", "s", &m]), Reply::Int(model.insert(m) as i64)),
                1 => prop_assert_eq!(x(&mut store, &["SREM", "s", &m]), Reply::Int(model.remove(&m) as i64)),
                2 => prop_assert_eq!(x(&mut store, &["SISMEMBER", "s", &m]), Reply::Int(model.contains(&m) as i64)),
                _ => {
                    // SPOP's choice is the store's; the model checks it popped a member and removed it.
                    match run(&mut store, 1_000, seed, &["SPOP", "s"]) {
                        Reply::Nil => prop_assert!(model.is_empty()),
                        Reply::Bulk(b) => prop_assert!(model.remove(&String::from_utf8(b).unwrap())),
                        other => prop_assert!(false, "SPOP replied {:?}", other),
                    }
                }
            }
            prop_assert_eq!(x(&mut store, &["SCARD", "s"]), Reply::Int(model.len() as i64));
        }
    }

    #[test]
    fn sorted_sets_match_a_model(ops in prop::collection::vec((0u8..4, 0u8..6, -4i32..5), 1..80)) {
        let mut store = Store::new();
        let mut model: BTreeMap<String, f64> = BTreeMap::new();
        for (kind, m, score) in ops {
            let m = format!("m{m}");
            let score = score as f64 / 2.0;
            match kind {
                0 => {
                    let got = x(&mut store, &["ZADD", "z", &score.to_string(), &m]);
                    prop_assert_eq!(got, Reply::Int(model.insert(m, score).is_none() as i64));
                }
                1 => prop_assert_eq!(x(&mut store, &["ZREM", "z", &m]), Reply::Int(model.remove(&m).is_some() as i64)),
                2 => {
                    let got = x(&mut store, &["ZINCRBY", "z", &score.to_string(), &m]);
                    let v = model.entry(m).or_insert(0.0);
                    *v += score;
                    prop_assert_eq!(got, Reply::Double(*v));
                }
                _ => {
                    let got = x(&mut store, &["ZRANK", "z", &m]);
                    let mut ordered: Vec<(f64, &String)> = model.iter().map(|(k, v)| (*v, k)).collect();
                    ordered.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(b.1)));
                    let want = ordered.iter().position(|(_, k)| **k == m).map_or(Reply::Nil, |r| Reply::Int(r as i64));
                    prop_assert_eq!(got, want);
                }
            }
            let mut ordered: Vec<(f64, String)> = model.iter().map(|(k, v)| (*v, k.clone())).collect();
            ordered.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap().then(a.1.cmp(&b.1)));
            let want = Reply::Array(ordered.into_iter().flat_map(|(s, k)| [bulk(&k), Reply::Double(s)]).collect());
            prop_assert_eq!(x(&mut store, &["ZRANGE", "z", "0", "-1", "WITHSCORES"]), want);
        }
    }
}

/// Fills a store with every type, some keys with deadlines.
/// Writes key `i` of [`populated`]: each type in turn, some with a deadline.
fn fill(s: &mut Store, i: usize) {
    let k = format!("key{i}");
    match i % 5 {
        0 => x(s, &["SET", &k, &format!("v{i}")]),
        1 => x(s, &["RPUSH", &k, "a", "b", &i.to_string()]),
        2 => x(s, &["HSET", &k, "f", "v", "g", &i.to_string()]),
        3 => x(s, &["SADD", &k, "x", "y", &i.to_string()]),
        // Streams with a group, a pending entry and a deleted one.
        _ if i % 10 == 9 => {
            x(s, &["XADD", &k, "1-1", "f", "v"]);
            x(s, &["XADD", &k, "2-1", "n", &i.to_string()]);
            x(s, &["XADD", &k, "3-1", "f", "v"]);
            x(s, &["XGROUP", "CREATE", &k, "g", "0"]);
            x(
                s,
                &[
                    "XREADGROUP",
                    "GROUP",
                    "g",
                    "c",
                    "COUNT",
                    "2",
                    "STREAMS",
                    &k,
                    ">",
                ],
            );
            x(s, &["XGROUP", "CREATECONSUMER", &k, "g", "idle"]);
            x(s, &["XDEL", &k, "3-1"])
        }
        _ => x(s, &["ZADD", &k, "1.5", "m", &i.to_string(), "n"]),
    };
    if i.is_multiple_of(3) {
        x(s, &["PEXPIREAT", &k, &(5_000 + i).to_string()]);
    }
}

fn populated() -> Store {
    let mut s = Store::new();
    for i in 0..200 {
        fill(&mut s, i);
    }
    s
}

#[test]
fn snapshots_round_trip_byte_for_byte_with_deadlines() {
    let store = populated();
    let bytes = snapshot::write(&store.keyspace);
    let restored = snapshot::read(&bytes).expect("own snapshot reads back");
    assert_eq!(
        snapshot::write(&restored),
        bytes,
        "restore then write must give the same bytes"
    );
    assert_eq!(restored.len(), 200);
    assert_eq!(restored.volatile_len(), store.keyspace.volatile_len());
    let e = restored.get(b"key3", 0).expect("key3 restored");
    assert_eq!(e.expire_at_ms, 5_003, "deadline survives the round trip");
}

#[test]
fn corrupt_snapshots_are_refused_not_misread() {
    let bytes = snapshot::write(&populated().keyspace);
    for cut in [0, 7, 12, bytes.len() / 2, bytes.len() - 1] {
        assert!(snapshot::read(&bytes[..cut]).is_err(), "truncated at {cut}");
    }
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    assert_eq!(
        snapshot::read(&flipped).err(),
        Some(snapshot::SnapshotError::Checksum)
    );
    let mut future = bytes;
    future[8] = 99;
    assert!(matches!(
        snapshot::read(&future),
        Err(snapshot::SnapshotError::UnknownVersion(_))
    ));
}

#[test]
fn replicas_applying_the_same_entries_agree_even_after_a_snapshot() {
    // Replica A applies everything; replica B restores a snapshot taken midway and applies the
    // rest. Random choices (SPOP, SRANDMEMBER) come from the entry's seed and insertion order,
    // so both must end byte-identical.
    let mut a = populated();
    let mut b = Store::new();
    b.keyspace = snapshot::read(&snapshot::write(&a.keyspace)).unwrap();
    for (i, s) in [&mut a, &mut b].into_iter().enumerate() {
        let mut replies = Vec::new();
        for step in 0..50u64 {
            let key = format!("key{}", (step * 5 + 3) % 200);
            replies.push(run(s, 2_000 + step, step * 31, &["SPOP", &key, "2"]));
            replies.push(run(
                s,
                2_000 + step,
                step * 17,
                &["SADD", &key, &format!("n{step}")],
            ));
        }
        assert!(!replies.is_empty(), "replica {i} ran");
    }
    assert_eq!(snapshot::write(&a.keyspace), snapshot::write(&b.keyspace));
}

#[test]
fn expiry_comes_from_entry_time_only() {
    let mut s = Store::new();
    run(&mut s, 1_000, 1, &["SET", "k", "v", "PX", "100"]);
    assert_eq!(
        run(&mut s, 1_100, 1, &["GET", "k"]),
        bulk("v"),
        "alive at its deadline"
    );
    assert_eq!(run(&mut s, 1_101, 1, &["GET", "k"]), Reply::Nil);
    assert_eq!(
        s.expire_due(1_050, 10),
        Vec::<Vec<u8>>::new(),
        "not due yet by the entry's clock"
    );
    assert_eq!(s.expire_due(1_101, 10), vec![b"k".to_vec()]);
    assert_eq!(s.keyspace.len(), 0);
}

#[test]
fn digests_depend_on_the_data_not_on_how_it_was_built() {
    let a = populated();
    // The same data built in the opposite order, with a detour through a deleted key.
    let mut b = Store::new();
    x(&mut b, &["SET", "gone", "soon"]);
    for i in (0..200).rev() {
        fill(&mut b, i);
    }
    x(&mut b, &["DEL", "gone"]);
    assert_eq!(snapshot::digest(&a.keyspace), snapshot::digest(&b.keyspace));
    let restored = snapshot::read(&snapshot::write(&a.keyspace)).unwrap();
    assert_eq!(snapshot::digest(&restored), snapshot::digest(&a.keyspace));
    // Any change shows: a value, a deadline, an element's order.
    let before = snapshot::digest(&b.keyspace);
    x(&mut b, &["PEXPIREAT", "key0", "9999"]);
    assert_ne!(snapshot::digest(&b.keyspace), before);
    let before = snapshot::digest(&b.keyspace);
    x(&mut b, &["HDEL", "key2", "f"]);
    x(&mut b, &["HSET", "key2", "f", "v"]); // same fields, other order
    assert_ne!(snapshot::digest(&b.keyspace), before);
    assert_eq!(snapshot::digest(&Store::new().keyspace), "0".repeat(40));
}
