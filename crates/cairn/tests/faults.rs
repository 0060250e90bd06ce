//! Fault injection over real processes: three (or five) `cairn server` processes form a replicated
//! cluster; client threads SET, GET and compare-and-set (WATCH/MULTI/EXEC) a few keys through
//! random nodes while a nemesis
//! `kill -9`s nodes (restarting them from their disks), freezes them (SIGSTOP/SIGCONT), and cuts
//! links between them (`DEBUG NETWORK CUT`, a fault hook in the cluster bus): one link, or every
//! link of one node (isolating it, often the leader, from the majority).
//! First, shard 1 is split (a fourth shard, created through the meta group, takes half its
//! slots). Meanwhile a mover keeps moving the keys' slots between the four shards
//! (`CAIRN.RESHARD MOVE`) through random nodes, and the nemesis's first act is to add a fourth
//! node (`cairn cluster add-node`: it joins the meta group and is given its share of the
//! shard replicas), which it removes again three faults later (`remove-node`: its replicas
//! move back first); every eight faults another node joins and leaves the same way. With five
//! nodes each shard has three replicas, so most requests reach a node that holds no replica of
//! their shard and are relayed to its leader elsewhere.
//! At the end every node is killed at once and restarted, and final reads join the history.
//! The whole history must be linearizable: no acknowledged write lost, no stale read; and at
//! the end every shard has three replicas holding the same data.
//!
//! Prints its seed. A short run is part of the test suite; a long one:
//! `CAIRN_FAULT_SECS=300 CAIRN_FAULT_SEED=<seed> cargo test --release -p cairn --test faults -- --nocapture`

mod common;

use cairn_check::{linearizable, Operation, Register, RegisterInput, RegisterOutput, Verdict};
use common::{wait_serving, Answer, Cluster, Conn, Struck};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type History = Arc<Mutex<Vec<Operation<RegisterInput, RegisterOutput>>>>;

/// A read-modify-write through WATCH/MULTI/EXEC: WATCH, GET (recorded as a read), then SET
/// in a transaction, recorded as a compare-and-set of the value read. An aborted EXEC changed
/// nothing and is not recorded; one whose outcome is unknown is recorded as indeterminate.
/// Returns false when the connection should be dropped.
fn compare_and_set(
    c: &mut Conn,
    key: &[u8],
    new: Vec<u8>,
    start: Instant,
    history: &History,
) -> bool {
    let now = || start.elapsed().as_nanos() as u64;
    let call = now();
    if !matches!(c.call(&[b"WATCH", key]), Some(Answer::Ok)) {
        return false;
    }
    let get_call = now();
    let Some(Answer::Value(seen)) = c.call(&[b"GET", key]) else {
        return false;
    };
    history.lock().unwrap().push(Operation {
        key: key.to_vec(),
        input: RegisterInput::Get,
        output: Some(RegisterOutput::Value(seen.clone())),
        call: get_call,
        ret: Some(now()),
    });
    if !matches!(c.call(&[b"MULTI"]), Some(Answer::Ok))
        || !matches!(c.call(&[b"SET", key, &new]), Some(Answer::Ok))
    {
        return false;
    }
    let answer = c.call(&[b"EXEC"]);
    let ret = now();
    let output = match &answer {
        Some(Answer::Array(a)) if matches!(a.as_slice(), [Answer::Ok]) => Some(RegisterOutput::Ok),
        Some(Answer::NilArray) => return true,
        Some(Answer::Error(e))
            if e.contains("no leader elected")
                || e.contains("cannot reach the leader")
                || e.contains("node busy") =>
        {
            return false
        }
        _ => None,
    };
    let ok = output.is_some();
    history.lock().unwrap().push(Operation {
        key: key.to_vec(),
        input: RegisterInput::Cas {
            expected: seen,
            new: Some(new),
        },
        output,
        call,
        ret: ok.then_some(ret),
    });
    ok
}

fn client(
    id: u64,
    ports: Vec<u16>,
    start: Instant,
    stop: Arc<AtomicBool>,
    history: History,
    seed: u64,
) {
    let mut choices = cairn_check::seeded::XorShift::new(seed);
    let mut conn: Option<Conn> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) && n < 100_000 {
        n += 1;
        let rng = choices.next_u64();
        if conn.is_none() {
            conn = Conn::open(ports[(rng % ports.len() as u64) as usize]);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let key = format!("k{}", rng % 3).into_bytes();
        let c = conn.as_mut().unwrap();
        let call = start.elapsed().as_nanos() as u64;
        if (rng >> 8) % 4 == 3 {
            if !compare_and_set(c, &key, format!("x{id}-{n}").into_bytes(), start, &history) {
                conn = None;
            }
        } else if (rng >> 8).is_multiple_of(2) {
            let value = format!("c{id}-{n}").into_bytes();
            let answer = c.call(&[b"SET", &key, &value]);
            let ret = start.elapsed().as_nanos() as u64;
            let (output, ret) = match answer {
                Some(Answer::Ok) => (Some(RegisterOutput::Ok), Some(ret)),
                // Only errors that say nothing was proposed are definite failures.
                Some(Answer::Error(e))
                    if e.contains("no leader elected")
                        || e.contains("cannot reach the leader")
                        || e.contains("node busy")
                        || e.contains("moving between shards") =>
                {
                    continue
                }
                Some(Answer::Error(_)) => (None, None),
                _ => {
                    conn = None;
                    (None, None)
                }
            };
            history.lock().unwrap().push(Operation {
                key,
                input: RegisterInput::Set(Some(value)),
                output,
                call,
                ret,
            });
        } else {
            match c.call(&[b"GET", &key]) {
                Some(Answer::Value(v)) => {
                    let ret = start.elapsed().as_nanos() as u64;
                    history.lock().unwrap().push(Operation {
                        key,
                        input: RegisterInput::Get,
                        output: Some(RegisterOutput::Value(v)),
                        call,
                        ret: Some(ret),
                    });
                }
                Some(_) => {}
                None => conn = None,
            }
        }
        if n.is_multiple_of(50) {
            conn = None; // move between nodes
        }
    }
}

/// `DEBUG DIGEST-SHARD`: node `port`'s replica of shard `group`, None when it holds none.
fn shard_digest(port: u16, group: u64) -> Option<String> {
    let g = group.to_string();
    match Conn::open(port)?.call(&[b"DEBUG", b"DIGEST-SHARD", g.as_bytes()])? {
        Answer::Value(v) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
        _ => None,
    }
}

/// Runs `cairn cluster <args>`; whether it succeeded, and what it printed.
fn cluster_cli(args: &[&str]) -> (bool, String) {
    let mut all = vec!["cluster"];
    all.extend_from_slice(args);
    common::cairn_cli(&all)
}

#[test]
fn kill_pause_and_cut_nodes_under_load_history_stays_linearizable() {
    faults(
        3,
        "kill_pause_and_cut_nodes_under_load_history_stays_linearizable",
    );
}

/// Five nodes, each shard on three of them: requests for shards a node holds no replica of
/// go to their leaders elsewhere, and the joining node's replicas come from, and go back to,
/// nodes that hold different shards.
#[test]
fn five_nodes_with_three_replicas_per_shard_stay_linearizable_under_faults() {
    faults(
        5,
        "five_nodes_with_three_replicas_per_shard_stay_linearizable_under_faults",
    );
}

fn faults(nodes: usize, test: &str) {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_FAULT_SEED");
    let secs: u64 = std::env::var("CAIRN_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        // Five nodes: the join's replica moves take a few seconds of their own, and the other
        // faults need time too.
        .unwrap_or(if nodes > 3 { 14 } else { 8 });
    println!("fault test seed {seed}, {nodes} nodes, {secs} s (rerun: CAIRN_FAULT_SEED={seed} cargo test -p cairn --test faults {test} -- --nocapture)");
    // Three shards whatever the node count (a fourth is split off below).
    let mut cluster = Cluster::sized(nodes, &["--shards", "3"], "warn");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    // A fourth shard, created at runtime through the meta group, takes half of shard 1's
    // slots: the faults then also hit a group that every node must reopen from the meta log.
    let split =
        Conn::open(ports[0])
            .expect("a node answers")
            .call(&[b"CAIRN.RESHARD", b"SPLIT", b"1"]);
    assert!(
        matches!(&split, Some(Answer::Array(a)) if matches!(a.first(), Some(Answer::Int(4)))),
        "seed {seed}: the split failed: {split:?}"
    );
    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let history: History = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let (ports, stop, history) = (ports.clone(), stop.clone(), history.clone());
            std::thread::spawn(move || {
                client(
                    c,
                    ports,
                    start,
                    stop,
                    history,
                    seed ^ ((c + 1) * 0x9E37_79B9),
                )
            })
        })
        .collect();
    let moves = {
        let (ports, stop) = (ports.clone(), stop.clone());
        let keys = (0..3).map(|k| format!("k{k}").into_bytes()).collect();
        std::thread::spawn(move || common::mover(ports, 4, keys, stop, seed ^ 0x005E_ED0F_5107))
    };
    let mut rng_gen = cairn_check::seeded::XorShift::new(seed);
    let mut next = move || rng_gen.next_u64();
    let (mut kills, mut pauses, mut cuts) = (0, 0, 0);
    // A fourth node joins first (under load) and leaves after a few other faults; then
    // another, and so on (a removed node's id is never reused).
    let (mut joined, mut left) = (0, 0);
    let mut member: Option<usize> = None;
    let end = start + Duration::from_secs(secs);
    let mut round = 0;
    // The run lasts `secs`, and longer (at most 20 s more) until the nemesis has struck three
    // times: a slow join under a loaded machine can take most of a short run.
    let overtime = end + Duration::from_secs(20);
    while Instant::now() + Duration::from_millis(1500) < end
        || (kills + pauses + cuts + joined + left < 3 && Instant::now() < overtime)
    {
        std::thread::sleep(Duration::from_millis(400 + next() % 600));
        round += 1;
        let via = ports[(next() % nodes as u64) as usize].to_string();
        // Every eight rounds a node joins (rounds 1, 9, ...) and leaves three rounds later.
        if round % 8 == 1 {
            let new = cluster.add_joining_node();
            let id = (new + 1).to_string();
            let bus = format!("127.0.0.1:{}", cluster.procs[new].port + 10000);
            let (ok, out) = cluster_cli(&[
                "add-node",
                "--port",
                &via,
                "--id",
                &id,
                "--bus",
                &bus,
                "--wait-secs",
                "30",
            ]);
            assert!(ok, "seed {seed}: node {id} could not join: {out}");
            joined += 1;
            member = Some(new);
            continue;
        }
        if round % 8 == 4 {
            if let Some(m) = member.take() {
                let id = (m + 1).to_string();
                let (ok, out) = cluster_cli(&["remove-node", "--port", &via, "--id", &id]);
                assert!(ok, "seed {seed}: node {id} could not leave: {out}");
                left += 1;
                cluster.kill9(m);
            }
            continue;
        }
        let victim = (next() % nodes as u64) as usize;
        let kind = next() % 4;
        // 2: one link; 3: every link of the victim (it is alone, the others a majority).
        let others: Vec<usize> = (0..nodes).filter(|&o| o != victim).collect();
        let links: Vec<usize> = if kind == 2 {
            vec![others[(next() % others.len() as u64) as usize]]
        } else {
            others
        };
        match common::strike(&mut cluster, victim, kind, &links, &mut next) {
            Struck::Kill => kills += 1,
            Struck::Pause => pauses += 1,
            Struck::Cut(all) => cuts += i32::from(all),
        }
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (moved, move_failures) = moves.join().unwrap();
    // Durability: every node dies at once, comes back, and the final reads join the history.
    // (A fourth node still a member goes down and comes back with the others.)
    let all: Vec<usize> = (0..nodes).chain(member).collect();
    for &i in &all {
        cluster.kill9(i);
    }
    for &i in &all {
        cluster.start(i);
    }
    wait_serving(&ports, Duration::from_secs(30));
    // Every member's port, a node that joined and has not left yet included.
    let live: Vec<u16> = all.iter().map(|&i| cluster.procs[i].port).collect();
    let mut h = history.lock().unwrap().clone();
    h.retain(|op| op.key != b"probe");
    let ops = h.len();
    let acknowledged = h
        .iter()
        .filter(|o| matches!(o.output, Some(RegisterOutput::Ok)))
        .count();
    let indeterminate = h.iter().filter(|o| o.output.is_none()).count();
    let cas_ok = h
        .iter()
        .filter(|o| {
            matches!(o.input, RegisterInput::Cas { .. })
                && matches!(o.output, Some(RegisterOutput::Ok))
        })
        .count();
    for k in 0..3 {
        let key = format!("k{k}").into_bytes();
        let mut c = Conn::open(ports[k % 3]).expect("a restarted node answers");
        let call = start.elapsed().as_nanos() as u64;
        let Some(Answer::Value(v)) = c.call(&[b"GET", &key]) else {
            panic!("final read of k{k} failed")
        };
        h.push(Operation {
            key,
            input: RegisterInput::Get,
            output: Some(RegisterOutput::Value(v)),
            call,
            ret: Some(start.elapsed().as_nanos() as u64),
        });
    }
    // Replica state comparison: once the replicas of a shard have applied the same log, their
    // data is equal; and every shard has its three replicas.
    let deadline = Instant::now() + Duration::from_secs(30);
    let digests = loop {
        let d: Vec<Vec<Option<String>>> = (1..=4)
            .map(|g| live.iter().map(|&p| shard_digest(p, g)).collect())
            .collect();
        let settled = d.iter().all(|replicas| {
            let held: Vec<&String> = replicas.iter().flatten().collect();
            held.len() == 3 && held.iter().all(|x| *x == held[0])
        });
        if settled || Instant::now() > deadline {
            break (settled, d);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    if !digests.0 {
        let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap()).keep();
        panic!(
            "seed {seed}: a shard's replicas hold different data, or it has not three: {:?}; placement {:?}; node logs kept in {}",
            digests.1,
            common::placement_map(ports[0]),
            dir.display()
        );
    }
    println!("fault test seed {seed}: {ops} ops ({acknowledged} acknowledged writes of which {cas_ok} compare-and-set, {indeterminate} indeterminate), {kills} kill -9, {pauses} pauses, {cuts} link cuts, {moved} slot moves ({move_failures} failed or unknown), {joined} nodes joined and {left} left, then kill -9 of all nodes");
    assert!(
        joined > 0,
        "no node joined: membership changes went untested"
    );
    assert!(moved > 0, "no slot moved: resharding went untested");
    assert!(ops > 200, "too little traffic ({ops} ops) to mean anything");
    assert!(
        kills + pauses + cuts + joined + left >= 3,
        "the nemesis must have struck"
    );
    assert!(
        cas_ok > 0,
        "no compare-and-set succeeded: WATCH/MULTI/EXEC went untested"
    );
    let verdict = linearizable(&Register, &h);
    if let Verdict::Violation { key } = &verdict {
        // Keep the evidence: the offending key's history and the nodes' logs and data.
        let dir = std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap()).keep();
        let mut dump = String::new();
        for op in h.iter().filter(|o| &o.key == key) {
            dump.push_str(&format!(
                "{:?} {:?} call={} ret={:?}\n",
                op.input, op.output, op.call, op.ret
            ));
        }
        std::fs::write(dir.join("history.txt"), dump).unwrap();
        panic!(
            "seed {seed}: history not linearizable on {:?}; history and node logs kept in {}",
            String::from_utf8_lossy(key),
            dir.display()
        );
    }
}
