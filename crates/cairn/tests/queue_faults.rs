//! Queues under faults, over real processes: a three-node cluster (one shard, three replicas)
//! carries a stream read by a consumer group and a list used as a work queue, while a nemesis
//! `kill -9`s (and restarts) and pauses the shard's leader.
//!
//! - Producers XADD numbered messages to stream `q` and RPUSH numbered jobs to list `jobs`,
//!   through random nodes.
//! - Three consumers of group `g` XREADGROUP ... BLOCK, XACK what they get, and re-claim
//!   entries left pending by a consumer that lost its reply (XAUTOCLAIM, idle over a second).
//!   Two workers BLPOP the jobs. Producers also RPUSH numbered tasks to list `tasks`, which
//!   two more workers take with Redis's reliable-queue pattern: BLMOVE into their own
//!   `doing:<id>` list, handle, LREM; and after a lost or unclear reply, look in `doing:<id>`
//!   for what the move may have put there.
//! - Afterwards (every node killed at once and restarted): every acknowledged XADD is in the
//!   stream and was delivered and acknowledged, no entry appears that nobody added, the group's
//!   pending list is empty and the shard's replicas hold identical data (group state included);
//!   no job was popped twice, and every acknowledged job was popped, except at most one per pop
//!   whose reply was lost (the pop may have happened); every acknowledged task was taken by
//!   exactly one worker exactly once, with no exception, and the `doing` lists are empty.
//!
//! Prints its seed. A longer run:
//! `CAIRN_FAULT_SECS=60 CAIRN_FAULT_SEED=<seed> cargo test --release -p cairn --test queue_faults -- --nocapture`

mod common;

use common::{group_field, wait_serving, Answer, Cluster, Conn};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Record {
    /// Stream payloads producers tried to add, and those whose XADD was acknowledged.
    tried: Mutex<HashSet<Vec<u8>>>,
    added: Mutex<HashSet<Vec<u8>>>,
    /// Payloads some consumer received.
    delivered: Mutex<HashSet<Vec<u8>>>,
    /// Jobs producers tried to push, those acknowledged, and every pop a worker saw.
    pushes_tried: Mutex<HashSet<Vec<u8>>>,
    pushed: Mutex<HashSet<Vec<u8>>>,
    popped: Mutex<Vec<Vec<u8>>>,
    /// Pops whose outcome is unknown (the reply was lost).
    uncertain_pops: AtomicU64,
    /// Tasks producers tried to push, those acknowledged, and each task a worker took.
    tasks_tried: Mutex<HashSet<Vec<u8>>>,
    tasks_pushed: Mutex<HashSet<Vec<u8>>>,
    tasks_taken: Mutex<Vec<Vec<u8>>>,
    /// Tasks found in a worker's `doing` list after a lost reply.
    tasks_recovered: AtomicU64,
}

/// The connection, opened to a node picked by `pick` when there is none; None (after a short
/// pause) when that node does not answer.
fn connected<'a>(conn: &'a mut Option<Conn>, ports: &[u16], pick: u64) -> Option<&'a mut Conn> {
    if conn.is_none() {
        *conn = Conn::open(ports[(pick % ports.len() as u64) as usize]);
        if conn.is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    conn.as_mut()
}

/// Runs `step` with a connection to a node until `stop` (at most 200,000 times); a step that
/// loses its connection sets it to None, and the next step gets one to another node.
fn drive(id: u64, ports: &[u16], stop: &AtomicBool, mut step: impl FnMut(&mut Option<Conn>, u64)) {
    let mut conn = None;
    for n in 0..200_000u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        if connected(&mut conn, ports, n + id).is_some() {
            step(&mut conn, n);
        }
    }
}

fn producer(id: u64, ports: Vec<u16>, stop: Arc<AtomicBool>, rec: Arc<Record>) {
    drive(id, &ports, &stop, |conn, n| {
        let c = conn.as_mut().expect("connected");
        let payload = format!("m{id}-{n}").into_bytes();
        rec.tried.lock().unwrap().insert(payload.clone());
        match c.call(&[b"XADD", b"q", b"*", b"n", &payload]) {
            Some(Answer::Value(Some(_))) => {
                rec.added.lock().unwrap().insert(payload);
            }
            Some(_) => {}
            None => *conn = None,
        }
        let Some(c) = conn.as_mut() else { return };
        let job = format!("j{id}-{n}").into_bytes();
        rec.pushes_tried.lock().unwrap().insert(job.clone());
        match c.call(&[b"RPUSH", b"jobs", &job]) {
            Some(Answer::Int(_)) => {
                rec.pushed.lock().unwrap().insert(job);
            }
            Some(_) => {}
            None => *conn = None,
        }
        let Some(c) = conn.as_mut() else { return };
        let task = format!("t{id}-{n}").into_bytes();
        rec.tasks_tried.lock().unwrap().insert(task.clone());
        match c.call(&[b"RPUSH", b"tasks", &task]) {
            Some(Answer::Int(_)) => {
                rec.tasks_pushed.lock().unwrap().insert(task);
            }
            Some(_) => {}
            None => *conn = None,
        }
        if n % 40 == 39 {
            *conn = None; // move between nodes
        }
    });
}

/// The payloads of XREADGROUP / XAUTOCLAIM entries (`[id, [n, payload]]`), with their IDs.
fn entries(list: &[Answer]) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.iter()
        .filter_map(|e| match e {
            Answer::Array(pair) => match (pair.first(), pair.get(1)) {
                (Some(Answer::Value(Some(id))), Some(Answer::Array(fields))) => {
                    match fields.get(1) {
                        Some(Answer::Value(Some(p))) => Some((id.clone(), p.clone())),
                        _ => None,
                    }
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn consumer(id: u64, ports: Vec<u16>, stop: Arc<AtomicBool>, rec: Arc<Record>) {
    let name = format!("c{id}").into_bytes();
    drive(id, &ports, &stop, |conn, n| {
        let c = conn.as_mut().expect("connected");
        // Mostly new entries; now and then entries another consumer left pending.
        let got = if n % 5 == 4 {
            match c.call(&[
                b"XAUTOCLAIM",
                b"q",
                b"g",
                &name,
                b"1000",
                b"0-0",
                b"COUNT",
                b"20",
            ]) {
                Some(Answer::Array(parts)) => match parts.get(1) {
                    Some(Answer::Array(list)) => entries(list),
                    _ => Vec::new(),
                },
                Some(_) => Vec::new(),
                None => {
                    *conn = None;
                    return;
                }
            }
        } else {
            match c.call(&[
                b"XREADGROUP",
                b"GROUP",
                b"g",
                &name,
                b"COUNT",
                b"10",
                b"BLOCK",
                b"200",
                b"STREAMS",
                b"q",
                b">",
            ]) {
                Some(Answer::Array(streams)) => match streams.first() {
                    Some(Answer::Array(kv)) => match kv.get(1) {
                        Some(Answer::Array(list)) => entries(list),
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                },
                Some(_) => Vec::new(),
                None => {
                    *conn = None;
                    return;
                }
            }
        };
        if got.is_empty() {
            return;
        }
        let mut ack: Vec<&[u8]> = vec![b"XACK", b"q", b"g"];
        for (entry_id, payload) in &got {
            rec.delivered.lock().unwrap().insert(payload.clone());
            ack.push(entry_id);
        }
        // A lost XACK leaves the entries pending: XAUTOCLAIM hands them out again.
        if c.call(&ack).is_none() {
            *conn = None;
        }
    });
}

fn worker(id: u64, ports: Vec<u16>, stop: Arc<AtomicBool>, rec: Arc<Record>) {
    drive(id, &ports, &stop, |conn, _| {
        let c = conn.as_mut().expect("connected");
        match c.call(&[b"BLPOP", b"jobs", b"0.5"]) {
            Some(Answer::Array(kv)) => {
                if let Some(Answer::Value(Some(job))) = kv.get(1) {
                    rec.popped.lock().unwrap().push(job.clone());
                }
            }
            Some(Answer::NilArray) => {}
            // Refused before it ran (no leader yet, node busy): nothing was popped.
            Some(Answer::Error(e)) if e.starts_with("TRYAGAIN") => {}
            Some(_) => {
                rec.uncertain_pops.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                rec.uncertain_pops.fetch_add(1, Ordering::Relaxed);
                *conn = None;
            }
        }
    });
}

/// A reliable worker: BLMOVE tasks into `doing:<id>`, take it, LREM it. When a reply is lost
/// or unclear (and every so often, for a move that was still in flight then), it looks in
/// `doing:<id>` for tasks it has not taken yet: a task is taken once, whichever way it came.
fn reliable_worker(id: u64, ports: Vec<u16>, stop: Arc<AtomicBool>, rec: Arc<Record>) {
    let doing = format!("doing:{id}").into_bytes();
    let mut taken: HashSet<Vec<u8>> = HashSet::new();
    let mut look = true;
    let take = |task: Vec<u8>, taken: &mut HashSet<Vec<u8>>| {
        if taken.insert(task.clone()) {
            rec.tasks_taken.lock().unwrap().push(task);
        }
    };
    drive(id + 100, &ports, &stop, |conn, n| {
        let c = conn.as_mut().expect("connected");
        if look || n % 10 == 0 {
            let Some(Answer::Array(left)) = c.call(&[b"LRANGE", &doing, b"0", b"-1"]) else {
                *conn = None;
                return;
            };
            look = false;
            for task in left {
                let Answer::Value(Some(task)) = task else {
                    continue;
                };
                if !taken.contains(&task) {
                    rec.tasks_recovered.fetch_add(1, Ordering::Relaxed);
                }
                take(task.clone(), &mut taken);
                if c.call(&[b"LREM", &doing, b"1", &task]).is_none() {
                    *conn = None;
                    return;
                }
            }
        }
        match c.call(&[b"BLMOVE", b"tasks", &doing, b"LEFT", b"RIGHT", b"0.5"]) {
            Some(Answer::Value(Some(task))) => {
                take(task.clone(), &mut taken);
                // A lost LREM leaves the task in `doing`: the next look removes it again.
                if c.call(&[b"LREM", &doing, b"1", &task]).is_none() {
                    *conn = None;
                }
            }
            Some(Answer::Value(None)) | Some(Answer::NilArray) => {}
            Some(_) => look = true,
            None => {
                look = true;
                *conn = None;
            }
        }
    });
}

/// How many times each item appears.
fn tally(items: &[Vec<u8>]) -> HashMap<&Vec<u8>, usize> {
    let mut counts = HashMap::new();
    for item in items {
        *counts.entry(item).or_default() += 1;
    }
    counts
}

/// The node that leads the shard now, if one does.
fn leader(cluster: &Cluster) -> Option<usize> {
    (0..cluster.procs.len())
        .find(|&i| group_field(cluster.procs[i].port, 1, "role").as_deref() == Some("leader"))
}

/// Every payload in stream `q`, read in pages.
fn stream_payloads(port: u16) -> Option<Vec<Vec<u8>>> {
    let mut c = Conn::open(port)?;
    let mut from = b"-".to_vec();
    let mut out = Vec::new();
    for _ in 0..10_000 {
        let Some(Answer::Array(list)) = c.call(&[b"XRANGE", b"q", &from, b"+", b"COUNT", b"500"])
        else {
            return None;
        };
        let page = entries(&list);
        let Some((last, _)) = page.last() else {
            return Some(out);
        };
        from = [b"(".as_slice(), last].concat();
        out.extend(page.into_iter().map(|(_, p)| p));
    }
    None
}

/// XINFO GROUPS q's (pending, lag) of group g.
fn group_backlog(port: u16) -> Option<(i64, i64)> {
    let Some(Answer::Array(groups)) = Conn::open(port)?.call(&[b"XINFO", b"GROUPS", b"q"]) else {
        return None;
    };
    let Answer::Array(fields) = groups.first()? else {
        return None;
    };
    let field = |name: &[u8]| {
        fields
            .chunks(2)
            .find(|kv| kv[0] == Answer::Value(Some(name.to_vec())))
            .and_then(|kv| match kv.get(1) {
                Some(Answer::Int(n)) => Some(*n),
                _ => None,
            })
    };
    Some((field(b"pending")?, field(b"lag")?))
}

#[test]
fn acknowledged_messages_and_jobs_survive_leader_kills_and_pauses() {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_FAULT_SEED");
    let secs: u64 = std::env::var("CAIRN_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(8);
    println!("queue fault test seed {seed}, {secs} s (rerun: CAIRN_FAULT_SEED={seed} cargo test -p cairn --test queue_faults -- --nocapture)");
    let mut cluster = Cluster::sized(3, &["--shards", "1"], "warn");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let created = Conn::open(ports[0]).expect("a node answers").call(&[
        b"XGROUP",
        b"CREATE",
        b"q",
        b"g",
        b"$",
        b"MKSTREAM",
    ]);
    assert_eq!(created, Some(Answer::Ok), "seed {seed}");
    let rec = Arc::new(Record::default());
    let stop_producers = Arc::new(AtomicBool::new(false));
    let stop_consumers = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for p in 0..2 {
        let (ports, stop, rec) = (ports.clone(), stop_producers.clone(), rec.clone());
        threads.push((
            true,
            std::thread::spawn(move || producer(p, ports, stop, rec)),
        ));
    }
    for c in 0..3 {
        let (ports, stop, rec) = (ports.clone(), stop_consumers.clone(), rec.clone());
        threads.push((
            false,
            std::thread::spawn(move || consumer(c, ports, stop, rec)),
        ));
    }
    for w in 0..2 {
        let (ports_w, stop, rec_w) = (ports.clone(), stop_consumers.clone(), rec.clone());
        threads.push((
            false,
            std::thread::spawn(move || worker(w, ports_w, stop, rec_w)),
        ));
        let (ports, stop, rec) = (ports.clone(), stop_consumers.clone(), rec.clone());
        threads.push((
            false,
            std::thread::spawn(move || reliable_worker(w, ports, stop, rec)),
        ));
    }
    let mut rng = cairn_check::seeded::XorShift::new(seed);
    let (mut kills, mut pauses, mut at_leader) = (0, 0, 0);
    let end = Instant::now() + Duration::from_secs(secs);
    // The run lasts `secs`, and longer (at most 20 s more) until the nemesis has struck three
    // times.
    let overtime = end + Duration::from_secs(20);
    while Instant::now() + Duration::from_millis(1500) < end
        || (kills + pauses < 3 && Instant::now() < overtime)
    {
        std::thread::sleep(Duration::from_millis(400 + rng.next_u64() % 600));
        let victim = match leader(&cluster) {
            Some(l) => {
                at_leader += 1;
                l
            }
            None => (rng.next_u64() % 3) as usize,
        };
        if rng.next_u64().is_multiple_of(2) {
            cluster.kill9(victim);
            kills += 1;
            std::thread::sleep(Duration::from_millis(300 + rng.next_u64() % 700));
            cluster.start(victim);
        } else {
            cluster.signal(victim, "-STOP");
            pauses += 1;
            std::thread::sleep(Duration::from_millis(300 + rng.next_u64() % 1200));
            cluster.signal(victim, "-CONT");
        }
    }
    std::thread::sleep(end.saturating_duration_since(Instant::now()));
    stop_producers.store(true, Ordering::Relaxed);
    let (producers, rest): (Vec<_>, Vec<_>) = threads.into_iter().partition(|(p, _)| *p);
    for (_, t) in producers {
        t.join().unwrap();
    }
    // The consumers drain what is left: nothing new for the group, nothing pending, no job.
    let drained_by = Instant::now() + Duration::from_secs(60);
    loop {
        let backlog = group_backlog(ports[0]);
        let lengths: Option<Vec<Answer>> = Conn::open(ports[0]).and_then(|mut c| {
            ["jobs", "tasks", "doing:0", "doing:1"]
                .iter()
                .map(|l| c.call(&[b"LLEN", l.as_bytes()]))
                .collect()
        });
        let empty = lengths
            .as_ref()
            .is_some_and(|l| l.iter().all(|n| *n == Answer::Int(0)));
        if backlog == Some((0, 0)) && empty {
            break;
        }
        assert!(
            Instant::now() < drained_by,
            "seed {seed}: the queues did not drain: group (pending, lag) {backlog:?}, lengths of jobs, tasks, doing:0, doing:1: {lengths:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    stop_consumers.store(true, Ordering::Relaxed);
    for (_, t) in rest {
        t.join().unwrap();
    }
    // Durability: every node dies at once and comes back.
    for i in 0..3 {
        cluster.kill9(i);
    }
    for i in 0..3 {
        cluster.start(i);
    }
    wait_serving(&ports, Duration::from_secs(30));
    let present = stream_payloads(ports[1]).expect("the stream reads back");
    let (tried, added, delivered) = (
        rec.tried.lock().unwrap(),
        rec.added.lock().unwrap(),
        rec.delivered.lock().unwrap(),
    );
    let present_set: HashSet<&Vec<u8>> = present.iter().collect();
    assert_eq!(
        present_set.len(),
        present.len(),
        "seed {seed}: an entry appears twice"
    );
    let lost: Vec<_> = added.iter().filter(|p| !present_set.contains(p)).collect();
    assert!(
        lost.is_empty(),
        "seed {seed}: acknowledged XADDs lost: {lost:?}"
    );
    let phantom: Vec<_> = present.iter().filter(|p| !tried.contains(*p)).collect();
    assert!(
        phantom.is_empty(),
        "seed {seed}: entries nobody added: {phantom:?}"
    );
    let undelivered: Vec<_> = present.iter().filter(|p| !delivered.contains(*p)).collect();
    assert!(
        undelivered.is_empty(),
        "seed {seed}: entries never delivered: {} of {}",
        undelivered.len(),
        present.len()
    );
    assert_eq!(
        group_backlog(ports[2]),
        Some((0, 0)),
        "seed {seed}: after the restart the group has pending or undelivered entries"
    );
    // The shard's three replicas agree, group state included.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let digests: Vec<Option<String>> = ports
            .iter()
            .map(
                |&p| match Conn::open(p)?.call(&[b"DEBUG", b"DIGEST-SHARD", b"1"])? {
                    Answer::Value(Some(d)) => Some(String::from_utf8_lossy(&d).into_owned()),
                    _ => None,
                },
            )
            .collect();
        if digests.iter().all(|d| d.is_some() && *d == digests[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: the replicas hold different data: {digests:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The work queue: no job twice, none made up, every acknowledged one taken (a pop whose
    // reply was lost may have taken one that nobody saw).
    let popped = rec.popped.lock().unwrap();
    let seen = tally(&popped);
    let twice: Vec<_> = seen.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: jobs popped twice: {twice:?}"
    );
    let pushes_tried = rec.pushes_tried.lock().unwrap();
    assert!(
        popped.iter().all(|j| pushes_tried.contains(j)),
        "seed {seed}: a job nobody pushed was popped"
    );
    let pushed = rec.pushed.lock().unwrap();
    let missing = pushed.iter().filter(|j| !seen.contains_key(j)).count() as u64;
    let uncertain = rec.uncertain_pops.load(Ordering::Relaxed);
    assert!(
        missing <= uncertain,
        "seed {seed}: {missing} acknowledged jobs never popped, only {uncertain} pops unknown"
    );
    // The reliable queue: every acknowledged task taken, each by one worker, once; nothing
    // made up. No exceptions: a move whose reply was lost left the task in `doing`.
    let taken = rec.tasks_taken.lock().unwrap();
    let taken_count = tally(&taken);
    let twice: Vec<_> = taken_count.iter().filter(|(_, &n)| n > 1).collect();
    assert!(
        twice.is_empty(),
        "seed {seed}: tasks taken twice: {twice:?}"
    );
    let tasks_tried = rec.tasks_tried.lock().unwrap();
    assert!(
        taken.iter().all(|t| tasks_tried.contains(t)),
        "seed {seed}: a task nobody pushed was taken"
    );
    let tasks_pushed = rec.tasks_pushed.lock().unwrap();
    let not_taken: Vec<_> = tasks_pushed
        .iter()
        .filter(|t| !taken_count.contains_key(t))
        .collect();
    assert!(
        not_taken.is_empty(),
        "seed {seed}: acknowledged tasks nobody took: {not_taken:?}"
    );
    println!(
        "queue fault test seed {seed}: {} XADD acknowledged of {} tried, {} entries, all delivered and acknowledged; {} jobs pushed, {} popped once each, {missing} not seen ({uncertain} pops unknown); {} tasks pushed, {} taken once each, every one ({} found in a doing list after a lost reply); {kills} kill -9 and {pauses} pauses ({at_leader} of the leader)",
        added.len(),
        tried.len(),
        present.len(),
        pushed.len(),
        popped.len(),
        tasks_pushed.len(),
        taken.len(),
        rec.tasks_recovered.load(Ordering::Relaxed)
    );
    assert!(added.len() > 50, "seed {seed}: too little traffic");
    assert!(
        kills + pauses >= 3,
        "seed {seed}: the nemesis must have struck"
    );
}
