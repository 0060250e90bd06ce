//! Cross-shard transactions under faults: three `cairn server` processes, three shards, and
//! accounts spread over all of them. Client threads, through random nodes:
//!
//! - move amounts between accounts with MULTI/EXEC (DECRBY one, INCRBY another), plain or after
//!   WATCH (only when the source holds enough), and with a Lua script (which checks the balance
//!   itself);
//! - read every balance at once, with MGET and with a MULTI of GETs: the total must never
//!   differ from what the accounts started with;
//! - run list-append transactions (MULTI, or a Lua script, with RPUSHes of unique values and
//!   LRANGEs over lists in every shard), whose history an Elle-style checker (`cairn_check::list_append`) searches for
//!   dependency cycles and the other anomalies of non-serializable histories.
//!
//! Meanwhile a nemesis `kill -9`s, pauses (SIGSTOP/SIGCONT) and cuts off nodes, and a mover keeps
//! moving the keys' slots between shards. At the end every node is killed at once and
//! restarted; the total is read again, every lock must be resolved, and the history checked.
//!
//! Prints its seed. A longer run:
//! `CAIRN_FAULT_SECS=60 CAIRN_FAULT_SEED=<seed> cargo test --release -p cairn --test bank -- --nocapture`

mod common;

use cairn_check::list_append::{self, Op, Outcome, Txn};
use common::{wait_serving, Answer, Cluster, Conn, Struck};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ACCOUNTS: usize = 8;
const START_BALANCE: i64 = 100;
const LISTS: usize = 6;

/// A transfer as one script: only when the source holds enough.
const TRANSFER: &str = "local have = tonumber(redis.call('get', KEYS[1])) \
    if have >= tonumber(ARGV[1]) then \
        redis.call('decrby', KEYS[1], ARGV[1]) \
        redis.call('incrby', KEYS[2], ARGV[1]) \
        return 1 \
    end \
    return 0";

/// List appends and reads as one script: ARGV holds `a` (append ARGV[2i] to KEYS[i]) or `r`
/// (read KEYS[i]) per key; the reply has one item per key (the list read, or the new length).
const APPENDS: &str = "local out = {} \
    for i, key in ipairs(KEYS) do \
        if ARGV[2 * i - 1] == 'a' then \
            out[i] = redis.call('rpush', key, ARGV[2 * i]) \
        else \
            out[i] = redis.call('lrange', key, 0, -1) \
        end \
    end \
    return out";

fn account(i: usize) -> Vec<u8> {
    format!("acct:{i}").into_bytes()
}

fn list(i: usize) -> Vec<u8> {
    format!("list:{i}").into_bytes()
}

/// The shard (of three, even split) a key starts in.
fn initial_shard(key: &[u8]) -> usize {
    cairn_store::slot::key_slot(key) * 3 / 16384
}

#[derive(Default)]
struct Tally {
    transfers_ok: AtomicU64,
    transfers_aborted: AtomicU64,
    transfers_unknown: AtomicU64,
    total_reads: AtomicU64,
    appends: AtomicU64,
    /// Reads whose total was wrong, with what they saw.
    violations: Mutex<Vec<String>>,
}

fn int(a: &Answer) -> Option<i64> {
    match a {
        Answer::Value(Some(v)) => std::str::from_utf8(v).ok()?.parse().ok(),
        Answer::Int(n) => Some(*n),
        _ => None,
    }
}

/// The sum of a reply holding every balance, or None when it is not one.
fn total_of(a: &Answer) -> Option<i64> {
    match a {
        Answer::Array(items) if items.len() == ACCOUNTS => {
            items.iter().map(int).sum::<Option<i64>>()
        }
        _ => None,
    }
}

/// Sends MULTI, the commands and EXEC; the EXEC's answer (None when the connection failed, or a
/// command was not queued).
fn transaction(c: &mut Conn, cmds: &[Vec<Vec<u8>>]) -> Option<Answer> {
    if !matches!(c.call(&[b"MULTI"]), Some(Answer::Ok)) {
        return None;
    }
    for cmd in cmds {
        let args: Vec<&[u8]> = cmd.iter().map(Vec::as_slice).collect();
        match c.call(&args) {
            Some(Answer::Ok) => {}
            _ => {
                c.call(&[b"DISCARD"]);
                return None;
            }
        }
    }
    c.call(&[b"EXEC"])
}

/// Whether an error reply guarantees the transaction did nothing.
fn did_nothing(e: &str) -> bool {
    e.starts_with("TRYAGAIN") || e.starts_with("EXECABORT") || e.starts_with("MOVED")
}

#[allow(clippy::too_many_arguments)]
fn client(
    id: u64,
    ports: Vec<u16>,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    history: Arc<Mutex<Vec<Txn>>>,
    next_value: Arc<AtomicU64>,
    seed: u64,
) {
    let mut rng = cairn_check::seeded::XorShift::new(seed);
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => {
                let port = ports[(rng.next_u64() % ports.len() as u64) as usize];
                match Conn::open(port) {
                    Some(c) => conn.insert(c),
                    None => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    }
                }
            }
        };
        let r = rng.next_u64();
        let from = (r % ACCOUNTS as u64) as usize;
        let to = (from + 1 + (r >> 8) as usize % (ACCOUNTS - 1)) % ACCOUNTS;
        let amount = ((r >> 16) % 20 + 1).to_string().into_bytes();
        let keep = match (r >> 24) % 9 {
            0 | 1 => {
                let cmds = vec![
                    vec![b"DECRBY".to_vec(), account(from), amount.clone()],
                    vec![b"INCRBY".to_vec(), account(to), amount],
                ];
                count_transfer(&tally, transaction(c, &cmds))
            }
            2 => watched_transfer(c, &tally, account(from), account(to), amount),
            3 => {
                let (a, b) = (account(from), account(to));
                let answer = c.call(&[b"EVAL", TRANSFER.as_bytes(), b"2", &a, &b, &amount]);
                match answer {
                    Some(Answer::Int(1)) => count_transfer(&tally, Some(Answer::Array(vec![]))),
                    Some(Answer::Int(0)) => count_transfer(&tally, Some(Answer::NilArray)),
                    other => count_transfer(&tally, other),
                }
            }
            4 | 5 => read_total(c, &tally, id, (r >> 24) % 9 == 4),
            6 | 7 => append_txn(c, &mut rng, &history, &next_value, &tally, false),
            _ => append_txn(c, &mut rng, &history, &next_value, &tally, true),
        };
        if !keep {
            conn = None;
        }
    }
}

/// WATCH both accounts, read the source, and move the amount in MULTI/EXEC only if it holds
/// enough.
fn watched_transfer(c: &mut Conn, tally: &Tally, a: Vec<u8>, b: Vec<u8>, amount: Vec<u8>) -> bool {
    if !matches!(c.call(&[b"WATCH", &a, &b]), Some(Answer::Ok)) {
        return false;
    }
    let balance = c.call(&[b"GET", &a]).as_ref().and_then(int);
    let want: i64 = String::from_utf8_lossy(&amount).parse().unwrap();
    match balance {
        Some(have) if have >= want => {
            let cmds = vec![
                vec![b"DECRBY".to_vec(), a, amount.clone()],
                vec![b"INCRBY".to_vec(), b, amount],
            ];
            count_transfer(tally, transaction(c, &cmds))
        }
        Some(_) => matches!(c.call(&[b"UNWATCH"]), Some(Answer::Ok)),
        None => false,
    }
}

/// Every balance at once (MGET, or a MULTI of GETs): the total must be what it started as.
fn read_total(c: &mut Conn, tally: &Tally, id: u64, mget: bool) -> bool {
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS).map(account).collect();
    let answer = if mget {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(keys.iter().map(Vec::as_slice));
        c.call(&args)
    } else {
        let cmds: Vec<Vec<Vec<u8>>> = keys.into_iter().map(|k| vec![b"GET".to_vec(), k]).collect();
        transaction(c, &cmds)
    };
    let Some(a) = &answer else {
        return false;
    };
    if let Some(total) = total_of(a) {
        tally.total_reads.fetch_add(1, Ordering::Relaxed);
        if total != START_BALANCE * ACCOUNTS as i64 {
            tally
                .violations
                .lock()
                .unwrap()
                .push(format!("client {id} read a total of {total}: {a:?}"));
        }
    }
    true
}

fn count_transfer(tally: &Tally, answer: Option<Answer>) -> bool {
    match answer {
        Some(Answer::Array(_)) => {
            tally.transfers_ok.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(Answer::NilArray) => {
            tally.transfers_aborted.fetch_add(1, Ordering::Relaxed);
            true
        }
        Some(Answer::Error(e)) if did_nothing(&e) => {
            tally.transfers_aborted.fetch_add(1, Ordering::Relaxed);
            true
        }
        _ => {
            tally.transfers_unknown.fetch_add(1, Ordering::Relaxed);
            false
        }
    }
}

/// 2-4 appends and whole-list reads over random lists, as a MULTI or as one script; recorded
/// with its outcome.
fn append_txn(
    c: &mut Conn,
    rng: &mut cairn_check::seeded::XorShift,
    history: &Mutex<Vec<Txn>>,
    next_value: &AtomicU64,
    tally: &Tally,
    script: bool,
) -> bool {
    let n = 2 + rng.next_u64() % 3;
    let mut ops = Vec::new();
    let mut cmds = Vec::new();
    // The script's KEYS and ARGV.
    let (mut keys, mut argv) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let r = rng.next_u64();
        let key = list((r % LISTS as u64) as usize);
        keys.push(key.clone());
        if (r >> 8).is_multiple_of(2) {
            let v = next_value.fetch_add(1, Ordering::Relaxed);
            cmds.push(vec![
                b"RPUSH".to_vec(),
                key.clone(),
                v.to_string().into_bytes(),
            ]);
            argv.push(b"a".to_vec());
            argv.push(v.to_string().into_bytes());
            ops.push(Op::Append(key, v));
        } else {
            cmds.push(vec![
                b"LRANGE".to_vec(),
                key.clone(),
                b"0".to_vec(),
                b"-1".to_vec(),
            ]);
            argv.push(b"r".to_vec());
            argv.push(b"-".to_vec());
            ops.push(Op::Read(key, None));
        }
    }
    let answer = if script {
        let mut args: Vec<Vec<u8>> = vec![
            b"EVAL".to_vec(),
            APPENDS.as_bytes().to_vec(),
            keys.len().to_string().into_bytes(),
        ];
        args.extend(keys);
        args.extend(argv);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        c.call(&refs)
    } else {
        transaction(c, &cmds)
    };
    let (outcome, keep) = match &answer {
        Some(Answer::Array(items)) if items.len() == ops.len() => {
            for (op, item) in ops.iter_mut().zip(items) {
                if let (Op::Read(_, seen), Answer::Array(values)) = (op, item) {
                    *seen = values
                        .iter()
                        .map(|v| int(v).map(|n| n as u64))
                        .collect::<Option<Vec<u64>>>();
                }
            }
            tally.appends.fetch_add(1, Ordering::Relaxed);
            (Outcome::Committed, true)
        }
        Some(Answer::NilArray) => (Outcome::Aborted, true),
        Some(Answer::Error(e)) if did_nothing(e) => (Outcome::Aborted, true),
        _ => (Outcome::Unknown, false),
    };
    history.lock().unwrap().push(Txn { ops, outcome });
    keep
}

#[test]
fn transfers_keep_the_total_and_list_appends_stay_serializable_under_faults() {
    let seed = cairn_check::seeded::seed_from_env("CAIRN_FAULT_SEED");
    let secs: u64 = std::env::var("CAIRN_FAULT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        // Every fault stalls most transactions (each spans most shards): long enough for a few
        // hundred of them between faults.
        .unwrap_or(15);
    println!("bank test seed {seed}, {secs} s (rerun: CAIRN_FAULT_SEED={seed} cargo test -p cairn --test bank -- --nocapture)");
    let keys: Vec<Vec<u8>> = (0..ACCOUNTS)
        .map(account)
        .chain((0..LISTS).map(list))
        .collect();
    let shards: std::collections::BTreeSet<usize> = keys.iter().map(|k| initial_shard(k)).collect();
    assert_eq!(shards.len(), 3, "the keys must start in all three shards");

    let mut cluster = Cluster::sized(3, &["--shards", "3"], "warn");
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let mut setup = vec![b"MSET".to_vec()];
    for i in 0..ACCOUNTS {
        setup.push(account(i));
        setup.push(START_BALANCE.to_string().into_bytes());
    }
    let setup: Vec<&[u8]> = setup.iter().map(Vec::as_slice).collect();
    assert_eq!(
        Conn::open(ports[0]).unwrap().call(&setup),
        Some(Answer::Ok),
        "seed {seed}: the accounts were not opened"
    );

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let history = Arc::new(Mutex::new(Vec::new()));
    let next_value = Arc::new(AtomicU64::new(1));
    let clients: Vec<_> = (0..4u64)
        .map(|id| {
            let (ports, stop, tally, history, next_value) = (
                ports.clone(),
                stop.clone(),
                tally.clone(),
                history.clone(),
                next_value.clone(),
            );
            std::thread::spawn(move || {
                client(
                    id,
                    ports,
                    stop,
                    tally,
                    history,
                    next_value,
                    seed ^ ((id + 1) * 0x9E37_79B9),
                )
            })
        })
        .collect();
    let moves = {
        let (ports, stop, keys) = (ports.clone(), stop.clone(), keys.clone());
        std::thread::spawn(move || common::mover(ports, 3, keys, stop, seed ^ 0x0BA4_C0DE))
    };
    let mut rng = cairn_check::seeded::XorShift::new(seed);
    let (mut kills, mut pauses, mut cuts) = (0, 0, 0);
    let end = start + Duration::from_secs(secs);
    while Instant::now() + Duration::from_millis(1500) < end {
        std::thread::sleep(Duration::from_millis(400 + rng.next_u64() % 600));
        let victim = (rng.next_u64() % 3) as usize;
        let kind = rng.next_u64() % 3;
        // A cut isolates the victim: the other two are a majority.
        let others: Vec<usize> = (0..3).filter(|&o| o != victim).collect();
        let mut next = || rng.next_u64();
        match common::strike(&mut cluster, victim, kind, &others, &mut next) {
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

    // How many of the run's reads were validated snapshots (no log entries) on each node.
    let snapshot_reads: u64 = ports
        .iter()
        .filter_map(|&p| {
            let mut c = Conn::open(p)?;
            let Some(Answer::Value(Some(text))) = c.call(&[b"INFO", b"stats"]) else {
                return None;
            };
            String::from_utf8_lossy(&text)
                .lines()
                .find_map(|l| l.strip_prefix("cross_shard_snapshot_reads:"))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
        .sum();
    // Every node dies at once and comes back: what is committed is on disk, and every lock left
    // behind is resolved from the replicated state.
    for i in 0..3 {
        cluster.kill9(i);
    }
    for i in 0..3 {
        cluster.start(i);
    }
    wait_serving(&ports, Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    let locks = loop {
        let locks: Vec<Option<u64>> = ports
            .iter()
            .map(|&p| {
                let mut c = Conn::open(p)?;
                let Some(Answer::Value(Some(text))) = c.call(&[b"INFO", b"stats"]) else {
                    return None;
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .find_map(|l| l.strip_prefix("cross_shard_locks:"))
                    .and_then(|n| n.trim().parse().ok())
            })
            .collect();
        if locks.iter().all(|l| *l == Some(0)) || Instant::now() > deadline {
            break locks;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    // (Every shard just elected a leader: a reply may take a few seconds.)
    let mut c =
        Conn::open_waiting(ports[1], Duration::from_secs(20)).expect("a restarted node answers");
    let mut args: Vec<Vec<u8>> = vec![b"MGET".to_vec()];
    args.extend((0..ACCOUNTS).map(account));
    let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    // A slot move cut short by the kill may still be finishing (its watchdog completes it):
    // a final read answered -TRYAGAIN is asked again, for a while.
    let mut ask = |args: &[&[u8]]| {
        let until = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = c.call(args);
            match &answer {
                Some(Answer::Error(e)) if e.starts_with("TRYAGAIN") && Instant::now() < until => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => return answer,
            }
        }
    };
    let last = ask(&args).expect("the final read");
    let final_total = total_of(&last);
    let mut finals = BTreeMap::new();
    for i in 0..LISTS {
        let answer = ask(&[b"LRANGE", &list(i), b"0", b"-1"]);
        let Some(Answer::Array(items)) = answer else {
            panic!("seed {seed}: the final read of list:{i} failed: {answer:?}");
        };
        let values: Vec<u64> = items
            .iter()
            .map(|v| int(v).expect("a number") as u64)
            .collect();
        finals.insert(list(i), values);
    }
    let h = history.lock().unwrap().clone();
    let report = list_append::check(&h, &finals);
    let t = |n: &AtomicU64| n.load(Ordering::Relaxed);
    println!(
        "bank test seed {seed}: {} transfers ({} aborted or refused, {} unknown), {} total reads ({snapshot_reads} of all reads from validated snapshots), {} list-append transactions committed of {} ({} checked, {} dependency edges); {kills} kill -9, {pauses} pauses, {cuts} isolations, {moved} slot moves ({move_failures} failed or unknown), then kill -9 of all nodes",
        t(&tally.transfers_ok),
        t(&tally.transfers_aborted),
        t(&tally.transfers_unknown),
        t(&tally.total_reads),
        t(&tally.appends),
        h.len(),
        report.transactions,
        report.edges,
    );
    let violations = tally.violations.lock().unwrap().clone();
    let keep = |cluster: &mut Cluster| {
        std::mem::replace(&mut cluster.dir, tempfile::tempdir().unwrap())
            .keep()
            .display()
            .to_string()
    };
    if !violations.is_empty() || final_total != Some(START_BALANCE * ACCOUNTS as i64) {
        panic!(
            "seed {seed}: the total changed: final {final_total:?} ({last:?}); during the run: {violations:?}; node logs kept in {}",
            keep(&mut cluster)
        );
    }
    if !report.is_ok() {
        panic!(
            "seed {seed}: the list-append history is not serializable: {:#?}; node logs kept in {}",
            &report.anomalies[..report.anomalies.len().min(10)],
            keep(&mut cluster)
        );
    }
    assert!(
        locks.iter().all(|l| *l == Some(0)),
        "seed {seed}: locks left after recovery: {locks:?}"
    );
    assert!(
        t(&tally.transfers_ok) > 20,
        "too few transfers to mean anything"
    );
    assert!(t(&tally.total_reads) > 10, "too few total reads");
    assert!(t(&tally.appends) > 10, "too few list-append transactions");
    assert!(kills + pauses + cuts >= 2, "the nemesis must have struck");
}
