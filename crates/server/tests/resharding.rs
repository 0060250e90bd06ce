//! Online slot moves between shards (CAIRN.RESHARD): writes keep flowing during a move, none
//! acknowledged is lost, the slot is served by exactly one shard before and after, and a move
//! whose coordinator goes away after its first steps is finished by the source shard's leader.

mod common;

use common::{start_cluster_with, Cairn};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn wait_for<T>(what: &str, within: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting for {what}");
}

fn slot_of(key: &str) -> u16 {
    cairn_store::slot::key_slot(key.as_bytes()) as u16
}

/// Hash tags whose slots are in `[lo, hi]`, `n` of them in distinct slots.
fn tags_in(lo: u16, hi: u16, n: usize) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for i in 0.. {
        let tag = format!("t{i}");
        let slot = slot_of(&tag);
        if (lo..=hi).contains(&slot) && out.iter().all(|t| slot_of(t) != slot) {
            out.push(tag);
            if out.len() == n {
                return out;
            }
        }
    }
    unreachable!()
}

fn all_leaders(node: &Cairn, shards: u64) -> bool {
    let text: String = redis::cmd("INFO")
        .arg("raft")
        .query(&mut node.client())
        .unwrap_or_default();
    (1..=shards).all(|g| {
        text.lines()
            .find(|l| l.starts_with(&format!("group{g}:")))
            .and_then(|l| l.split(',').find_map(|kv| kv.strip_prefix("leader=")))
            .is_some_and(|l| l != "0")
    })
}

fn reshard(node: &Cairn, first: u16, last: u16, to: u64) -> redis::RedisResult<i64> {
    redis::cmd("CAIRN.RESHARD")
        .arg("MOVE")
        .arg(first)
        .arg(last)
        .arg(to)
        .query(&mut node.client())
}

/// What a writer saw of one counter: increments acknowledged, and those whose outcome it
/// cannot know (the connection or leadership changed under them).
#[derive(Default, Clone, Copy, Debug)]
struct Tally {
    acked: i64,
    unknown: i64,
    refused: i64,
}

#[test]
fn slots_move_back_and_forth_under_writes_and_no_increment_is_lost() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster_with(3, &dirs, 2);
    let node = |i: usize| nodes[i].as_ref().unwrap();
    wait_for("a leader per shard", Duration::from_secs(30), || {
        all_leaders(node(0), 2).then_some(())
    });
    // Shard 1 serves slots 0-8191, shard 2 8192-16383. Three tags of shard 1 will move.
    let tags = tags_in(0, 8191, 3);
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..3 {
        let port = node(w).port;
        let tags = tags.clone();
        let stop = stop.clone();
        writers.push(std::thread::spawn(move || {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .unwrap()
                .get_connection()
                .unwrap();
            let mut tallies = vec![Tally::default(); tags.len()];
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = i % tags.len();
                i += 1;
                let key = format!("{{{}}}:count", tags[t]);
                match redis::cmd("INCR").arg(&key).query::<i64>(&mut c) {
                    Ok(_) => tallies[t].acked += 1,
                    // Refused at apply: the slot was between shards. Nothing changed.
                    Err(e) if e.to_string().contains("moving between shards") => {
                        tallies[t].refused += 1
                    }
                    Err(e) => {
                        eprintln!("writer {w}: {e}");
                        tallies[t].unknown += 1
                    }
                }
            }
            tallies
        }));
    }
    // Some keys that do not change, many per slot, so each move copies in several rounds.
    let mut c = node(1).client();
    for tag in &tags {
        let mut pipe = redis::pipe();
        for k in 0..1500 {
            pipe.cmd("SET")
                .arg(format!("{{{tag}}}:k{k}"))
                .arg(format!("v{k}"))
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    for tag in &tags {
        let s = slot_of(tag);
        assert_eq!(reshard(node(0), s, s, 2).unwrap(), 1, "slot {s} moved");
    }
    // Moved: shard 2 serves them, shard 1 refuses them.
    for tag in &tags {
        let key = format!("{{{tag}}}:k7");
        let on2: String = redis::cmd("CAIRN.SHARD")
            .arg(2)
            .arg("GET")
            .arg(&key)
            .query(&mut c)
            .unwrap();
        assert_eq!(on2, "v7");
        let on1: redis::RedisResult<String> = redis::cmd("CAIRN.SHARD")
            .arg(1)
            .arg("GET")
            .arg(&key)
            .query(&mut c);
        assert!(
            on1.as_ref()
                .is_err_and(|e| e.to_string().contains("moving between shards")),
            "shard 1 still answers for {key}: {on1:?}"
        );
    }
    // And back again through another node, with the writes still going.
    std::thread::sleep(Duration::from_millis(300));
    let first = tags.iter().map(|t| slot_of(t)).min().unwrap();
    let last = tags.iter().map(|t| slot_of(t)).max().unwrap();
    assert_eq!(reshard(node(2), first, last, 1).unwrap(), 3);
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let mut total = vec![Tally::default(); tags.len()];
    for w in writers {
        for (t, tally) in w.join().unwrap().into_iter().enumerate() {
            total[t].acked += tally.acked;
            total[t].unknown += tally.unknown;
            total[t].refused += tally.refused;
        }
    }
    eprintln!("tallies per tag: {total:?}");
    for (i, tag) in tags.iter().enumerate() {
        let key = format!("{{{tag}}}:count");
        for n in 0..3 {
            let v: i64 = redis::cmd("GET")
                .arg(&key)
                .query(&mut node(n).client())
                .unwrap();
            let t = total[i];
            assert!(
                v >= t.acked && v <= t.acked + t.unknown,
                "{key} through node {n} is {v}, but {} increments were acknowledged and {} \
                 are unknown",
                t.acked,
                t.unknown
            );
        }
        assert!(total[i].acked > 0, "writes went through during the moves");
    }
    // Every key is where it belongs, once: 3 tags × 1501 keys, all in shard 1 again.
    let dbsize: i64 = redis::cmd("DBSIZE").query(&mut node(0).client()).unwrap();
    assert_eq!(dbsize, 3 * 1501);
    let on1: i64 = redis::cmd("CAIRN.SHARD")
        .arg(1)
        .arg("DBSIZE")
        .query(&mut c)
        .unwrap();
    assert_eq!(on1, 3 * 1501);
    for tag in &tags {
        let v: String = redis::cmd("GET")
            .arg(format!("{{{tag}}}:k1499"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, "v1499");
    }
    // No move left over, once this node's replicas have applied the last steps.
    wait_for("no move left over", Duration::from_secs(5), || {
        let status: Vec<String> = redis::cmd("CAIRN.RESHARD")
            .arg("STATUS")
            .query(&mut c)
            .ok()?;
        status.is_empty().then_some(())
    });

    // Every node's copy of the meta group recorded the moves: each tag's slot moved twice,
    // so it is back in shard 1 with epoch 2.
    for n in 0..3 {
        let mut c = node(n).client();
        wait_for(
            "the moves recorded in the meta group",
            Duration::from_secs(5),
            || {
                let map: Vec<String> = redis::cmd("CAIRN.RESHARD").arg("MAP").query(&mut c).ok()?;
                let covered = |slot: u16| {
                    map.iter().any(|l| {
                        let (range, rest) =
                            l.trim_start_matches("slots ").split_once(": ").unwrap();
                        let (a, b) = range.split_once('-').unwrap();
                        (a.parse::<u16>().unwrap()..=b.parse::<u16>().unwrap()).contains(&slot)
                            && rest == "shard 1 epoch 2"
                    })
                };
                tags.iter().all(|t| covered(slot_of(t))).then_some(())
            },
        );
    }

    // A copy made for a move its source never started (as after a lost ABORT) is dropped by
    // the target's leader once it has been orphaned for a while.
    let slot = slot_of(&tags[0]).to_string();
    let _: i64 = redis::cmd("CAIRN.SHARD")
        .arg(2)
        .arg("CAIRN.MIGRATE")
        .arg("IN")
        .arg(&slot)
        .arg(1)
        .arg(999_999)
        .query(&mut c)
        .unwrap();
    // STATUS shows what this node's replicas have applied: it may take a moment.
    let expected = vec![format!(
        "slots {slot}-{slot}: shard 2 <- shard 1 attempt 999999 copying"
    )];
    wait_for("the copy to show in STATUS", Duration::from_secs(5), || {
        let status: Vec<String> = redis::cmd("CAIRN.RESHARD")
            .arg("STATUS")
            .query(&mut c)
            .ok()?;
        (status == expected).then_some(())
    });
    wait_for(
        "the orphaned copy to be dropped",
        Duration::from_secs(20),
        || {
            let status: Vec<String> = redis::cmd("CAIRN.RESHARD")
                .arg("STATUS")
                .query(&mut c)
                .ok()?;
            status.is_empty().then_some(())
        },
    );
}

#[test]
fn a_move_whose_coordinator_goes_away_is_finished_by_the_source_leader() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster_with(3, &dirs, 2);
    wait_for("a leader per shard", Duration::from_secs(30), || {
        all_leaders(nodes[0].as_ref().unwrap(), 2).then_some(())
    });
    let tag = &tags_in(0, 8191, 1)[0];
    let slot = slot_of(tag);
    // Enough data that the move takes many copy rounds.
    let mut c = nodes[1].as_ref().unwrap().client();
    let value = "x".repeat(1000);
    for chunk in 0..20 {
        let mut pipe = redis::pipe();
        for k in 0..1000 {
            pipe.cmd("SET")
                .arg(format!("{{{tag}}}:k{}", chunk * 1000 + k))
                .arg(&value)
                .ignore();
        }
        let _: () = pipe.query(&mut c).unwrap();
    }
    // A coordinator on node 3 takes the first steps of the move (OUT on the source, IN on
    // the target) and goes away with its node: nothing else drives the move. (Killing a real
    // coordinator in the middle is a race with the move itself, which may win.)
    {
        let mut c3 = nodes[2].as_ref().unwrap().client();
        let (attempt, _epoch): (u64, u64) = redis::cmd("CAIRN.SHARD")
            .arg(1)
            .arg("CAIRN.MIGRATE")
            .arg("OUT")
            .arg(slot)
            .arg(2)
            .query(&mut c3)
            .unwrap();
        let set_up: i64 = redis::cmd("CAIRN.SHARD")
            .arg(2)
            .arg("CAIRN.MIGRATE")
            .arg("IN")
            .arg(slot)
            .arg(1)
            .arg(attempt)
            .query(&mut c3)
            .unwrap();
        assert_eq!(set_up, 1);
    }
    drop(nodes[2].take());
    // The watchdog on shard 1's leader notices the stalled move and finishes it.
    wait_for("the move to finish", Duration::from_secs(60), || {
        let status: Vec<String> = redis::cmd("CAIRN.RESHARD")
            .arg("STATUS")
            .query(&mut c)
            .ok()?;
        let on2: i64 = redis::cmd("CAIRN.SHARD")
            .arg(2)
            .arg("DBSIZE")
            .query(&mut c)
            .ok()?;
        (status.is_empty() && on2 == 20_000).then_some(())
    });
    let on1: i64 = redis::cmd("CAIRN.SHARD")
        .arg(1)
        .arg("DBSIZE")
        .query(&mut c)
        .unwrap();
    assert_eq!(on1, 0);
    for k in [0, 9_999, 19_999] {
        let v: String = redis::cmd("GET")
            .arg(format!("{{{tag}}}:k{k}"))
            .query(&mut c)
            .unwrap();
        assert_eq!(v, value);
    }
}

/// SPLIT creates a shard through the meta group and moves half the slots to it while writes
/// go on; after every node restarts, the new shard is opened again from the meta log and
/// serves its keys.
#[test]
fn a_split_shard_takes_half_the_slots_and_comes_back_after_a_restart() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = start_cluster_with(3, &dirs, 2);
    wait_for("a leader per shard", Duration::from_secs(30), || {
        all_leaders(nodes[0].as_ref().unwrap(), 2).then_some(())
    });
    let mut c = nodes[0].as_ref().unwrap().client();
    let mut pipe = redis::pipe();
    for k in 0..2000 {
        pipe.cmd("SET").arg(format!("k{k}")).arg(k).ignore();
    }
    let _: () = pipe.query(&mut c).unwrap();
    // A writer increments keys all over the keyspace during the split.
    let port = nodes[1].as_ref().unwrap().port;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
                .unwrap()
                .get_connection()
                .unwrap();
            let mut tally = [Tally::default(); 20];
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let t = i % 20;
                i += 1;
                match redis::cmd("INCR").arg(format!("c{t}")).query::<i64>(&mut c) {
                    Ok(_) => tally[t].acked += 1,
                    Err(e) if e.to_string().contains("moving between shards") => {
                        tally[t].refused += 1
                    }
                    Err(_) => tally[t].unknown += 1,
                }
            }
            tally
        })
    };
    let started = Instant::now();
    let (id, moved): (u64, i64) = redis::cmd("CAIRN.RESHARD")
        .arg("SPLIT")
        .arg(1)
        .query(&mut c)
        .unwrap();
    eprintln!(
        "split of shard 1 moved {moved} slots in {:?}",
        started.elapsed()
    );
    assert_eq!((id, moved), (3, 4096));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let tally = writer.join().unwrap();
    let size = |c: &mut redis::Connection, g: u64| -> i64 {
        redis::cmd("CAIRN.SHARD")
            .arg(g)
            .arg("DBSIZE")
            .query(c)
            .unwrap()
    };
    let sizes: Vec<i64> = (1..=3).map(|g| size(&mut c, g)).collect();
    assert_eq!(sizes.iter().sum::<i64>(), 2020, "{sizes:?}");
    assert!(
        sizes[2] > 300 && sizes[0] > 300,
        "the split divided shard 1: {sizes:?}"
    );
    let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut c).unwrap();
    assert!(info.contains("cluster_size:3"), "{info}");
    let check = |c: &mut redis::Connection| {
        for k in (0..2000).step_by(7) {
            let v: i64 = redis::cmd("GET").arg(format!("k{k}")).query(c).unwrap();
            assert_eq!(v, k);
        }
        for (t, tally) in tally.iter().enumerate() {
            let v: i64 = redis::cmd("GET").arg(format!("c{t}")).query(c).unwrap();
            assert!(
                v >= tally.acked && v <= tally.acked + tally.unknown,
                "c{t} is {v}: {tally:?}"
            );
        }
    };
    check(&mut c);
    // Every node restarts; shard 3 is opened again from the meta group's log.
    drop(c);
    for n in nodes.iter_mut() {
        drop(n.take());
    }
    let nodes = start_cluster_with(3, &dirs, 2);
    let node = nodes[2].as_ref().unwrap();
    wait_for(
        "every shard back with a leader",
        Duration::from_secs(60),
        || all_leaders(node, 3).then_some(()),
    );
    let mut c = node.client();
    wait_for(
        "shard 3 serving its keys again",
        Duration::from_secs(30),
        || {
            let n: i64 = redis::cmd("CAIRN.SHARD")
                .arg(3)
                .arg("DBSIZE")
                .query(&mut c)
                .ok()?;
            (n == sizes[2]).then_some(())
        },
    );
    check(&mut c);
    // Shard 2 holds half the slots, 1 and 3 a quarter each: a rebalance evens them out.
    let moved: i64 = redis::cmd("CAIRN.RESHARD")
        .arg("REBALANCE")
        .query(&mut c)
        .unwrap();
    assert_eq!(moved, 8192 - 5461, "shard 2 gives away its surplus");
    let info: String = redis::cmd("INFO").arg("raft").query(&mut c).unwrap();
    let slots_of = |g: u64| -> usize {
        let line = info
            .lines()
            .find(|l| l.starts_with(&format!("group{g}:")))
            .unwrap();
        let ranges = line.split("slots=").nth(1).unwrap();
        ranges
            .split(';')
            .map(|r| {
                let (a, b) = r.split_once('-').unwrap();
                b.trim().parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1
            })
            .sum()
    };
    let mut counts: Vec<usize> = (1..=3).map(slots_of).collect();
    counts.sort_unstable();
    assert_eq!(counts, vec![5461, 5461, 5462], "{info}");
    let total: i64 = (1..=3).map(|g| size(&mut c, g)).sum();
    assert_eq!(total, 2020);
    check(&mut c);
}

/// A move finished by hand, step by step, with no record of it in the meta group (as when the
/// coordinator dies after the hand-over, or its record fails to commit): the watchdog on the
/// target shard's leader records it, so that nodes holding neither shard route the slot right.
#[test]
fn a_finished_move_the_meta_group_lacks_is_recorded_by_the_watchdog() {
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let nodes = start_cluster_with(3, &dirs, 2);
    wait_for("a leader per shard", Duration::from_secs(30), || {
        all_leaders(nodes[0].as_ref().unwrap(), 2).then_some(())
    });
    let slot = slot_of(&tags_in(0, 8191, 1)[0]);
    let mut c = nodes[1].as_ref().unwrap().client();
    let migrate = |c: &mut redis::Connection, shard: u64, args: &[String]| -> redis::Value {
        let mut cmd = redis::cmd("CAIRN.SHARD");
        cmd.arg(shard).arg("CAIRN.MIGRATE");
        for a in args {
            cmd.arg(a);
        }
        cmd.query(c).unwrap()
    };
    let s = slot.to_string();
    let (attempt, epoch): (u64, u64) = redis::cmd("CAIRN.SHARD")
        .arg(1)
        .arg("CAIRN.MIGRATE")
        .arg("OUT")
        .arg(slot)
        .arg(2)
        .query(&mut c)
        .unwrap();
    let a = attempt.to_string();
    migrate(
        &mut c,
        2,
        &[("IN".into()), s.clone(), "1".into(), a.clone()],
    );
    // The slot holds no key: nothing to copy, so it is handed over at once.
    let released: Vec<i64> = redis::FromRedisValue::from_redis_value(&migrate(
        &mut c,
        1,
        &["RELEASE".into(), s.clone(), a.clone(), "128".into()],
    ))
    .unwrap();
    assert_eq!(released, vec![1, epoch as i64]);
    let next = (epoch + 1).to_string();
    migrate(
        &mut c,
        2,
        &["ACQUIRE".into(), s.clone(), a.clone(), next.clone()],
    );
    migrate(&mut c, 1, &["DROP".into(), s.clone()]);
    // Nobody committed `CAIRN.META SLOTS`: the watchdog does.
    let want = format!("slots {slot}-{slot}: shard 2 epoch {next}");
    wait_for(
        "the move recorded in the meta group",
        Duration::from_secs(10),
        || {
            let map: Vec<String> = redis::cmd("CAIRN.RESHARD").arg("MAP").query(&mut c).ok()?;
            map.contains(&want).then_some(())
        },
    );
}
