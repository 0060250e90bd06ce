//! Cross-shard transactions: what each shard keeps of them, as replicated state, and the
//! `CAIRN.TXN` steps that change it (see docs/transactions.md for the protocol and why).
//!
//! A transaction touching several shards is run by a coordinator (the node the client asked):
//!
//! 1. `PREPARE` on every participant shard locks the transaction's keys there and answers their
//!    values. A key already locked, a slot not served here (or moving), a deadline passed, or a
//!    watched key changed refuses it; nothing is locked then.
//! 2. The coordinator runs the commands on those values and proposes `COMMIT` to the *primary*
//!    (the participant with the lowest group id): one entry that records the decision with every
//!    other shard's writes, applies the primary's own and releases its locks. That entry is the
//!    commit point. Had the primary's locks gone (recovery aborted the transaction), `COMMIT`
//!    is refused and nothing anywhere is written.
//! 3. `APPLY` on every other participant writes its part and releases its locks; `FORGET` then
//!    drops the decision.
//!
//! A lock that outlives its transaction's deadline (its coordinator died, or lost track) is
//! resolved by the shard holding it: `RESOLVE` on the primary answers the decision, and decides
//! *abort* when there is none yet (remembering that, so a late `PREPARE` or `COMMIT` is refused).
//! The primary's own decisions left unforgotten are pushed out by its leader the same way. Every
//! step is idempotent, so a step whose reply was lost is simply sent again.
//!
//! Locks are exclusive and taken all at once per shard, never waited for: a transaction that
//! meets a lock is refused and starts over, so transactions cannot deadlock. Ordinary commands
//! on a locked key are refused at apply (`LOCKED`, retried by the node that proposed them),
//! and reads of one wait until it is released: everything a transaction read stays as it read
//! it until its writes are in place, which makes transactions serializable with each other and
//! with single-shard commands.
//!
//! Records (a key's value) are `key, expire-at-ms or -1, dump`: `-1` says the key is absent
//! (its dump then empty), `0` that it has no expiry, as in `CAIRN.MIGRATE TAKE`.

use crate::exec::{int_arg, is, Env};
use crate::{snapshot, Store};
use cairn_resp::Reply;
use std::collections::{BTreeMap, HashMap};

pub const NAME: &str = "cairn.txn";

/// How long an aborted transaction is remembered past its deadline: long enough that no step of
/// it can still arrive (every step is proposed within the deadline, and a proposal that waited
/// longer than that in a log is refused as late by `PREPARE`).
pub const ABORT_MEMORY_MS: u64 = 60_000;

/// The reply to an ordinary command on a locked key: every replica refuses it alike, and the
/// node that proposed it asks again once the lock is gone.
pub const LOCKED: &str = "TRYAGAIN LOCKED a key is locked by a cross-shard transaction, retry";

/// One key's value as a transaction step carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub key: Vec<u8>,
    /// -1: absent; 0: no expiry; else the absolute expiry in ms.
    pub expire_at: i64,
    pub dump: Vec<u8>,
}

/// A transaction prepared here: its keys are locked.
#[derive(Clone, Debug, PartialEq)]
pub struct Prepared {
    pub primary: u64,
    /// The coordinator's deadline (its clock, ms): after it, recovery may abort.
    pub deadline: u64,
    pub keys: Vec<Vec<u8>>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    /// Committed at `at` (the entry's time); the writes of every other participant, by group.
    Commit {
        at: u64,
        writes: BTreeMap<u64, Vec<Record>>,
    },
    /// Aborted; remembered until `until` (entry time).
    Abort { until: u64 },
}

/// A shard's part of every cross-shard transaction it takes part in.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Txns {
    /// The latest entry time applied: the shard's own clock, the same on every replica.
    pub clock: u64,
    /// Locked key → the transaction holding it.
    pub locks: HashMap<Vec<u8>, Vec<u8>>,
    /// Transactions prepared here, by id.
    pub prepared: BTreeMap<Vec<u8>, Prepared>,
    /// Decisions kept here as the primary, by id.
    pub decisions: BTreeMap<Vec<u8>, Decision>,
}

impl Txns {
    pub fn is_locked(&self, key: &[u8]) -> bool {
        !self.locks.is_empty() && self.locks.contains_key(key)
    }

    fn release(&mut self, id: &[u8]) -> Option<Prepared> {
        let p = self.prepared.remove(id)?;
        for key in &p.keys {
            if self.locks.get(key).is_some_and(|holder| holder == id) {
                self.locks.remove(key);
            }
        }
        Some(p)
    }

    fn forget_old_aborts(&mut self) {
        let clock = self.clock;
        self.decisions
            .retain(|_, d| !matches!(d, Decision::Abort { until } if *until < clock));
    }

    fn abort(&mut self, id: &[u8], deadline: u64) {
        let until = deadline.max(self.clock).saturating_add(ABORT_MEMORY_MS);
        self.decisions
            .insert(id.to_vec(), Decision::Abort { until });
        self.release(id);
    }

    /// Appends this state's encoding (for shard snapshots).
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.clock);
        put_u32(out, self.prepared.len());
        for (id, p) in &self.prepared {
            put_bytes(out, id);
            put_u64(out, p.primary);
            put_u64(out, p.deadline);
            put_u32(out, p.keys.len());
            p.keys.iter().for_each(|k| put_bytes(out, k));
        }
        put_u32(out, self.decisions.len());
        for (id, d) in &self.decisions {
            put_bytes(out, id);
            match d {
                Decision::Abort { until } => {
                    out.push(0);
                    put_u64(out, *until);
                }
                Decision::Commit { at, writes } => {
                    out.push(1);
                    put_u64(out, *at);
                    put_u32(out, writes.len());
                    for (group, records) in writes {
                        put_u64(out, *group);
                        put_u32(out, records.len());
                        for r in records {
                            put_bytes(out, &r.key);
                            put_u64(out, r.expire_at as u64);
                            put_bytes(out, &r.dump);
                        }
                    }
                }
            }
        }
    }

    /// Reads what [`Txns::encode`] wrote from the front of `data`: the state and the bytes it
    /// took. None when the bytes are not that. The locks are rebuilt from the prepared ones.
    pub fn decode(data: &[u8]) -> Option<(Txns, usize)> {
        let mut r = Reader { data, pos: 0 };
        let mut t = Txns {
            clock: r.u64()?,
            ..Txns::default()
        };
        for _ in 0..r.count()? {
            let id = r.bytes()?;
            let (primary, deadline) = (r.u64()?, r.u64()?);
            let mut keys = Vec::new();
            for _ in 0..r.count()? {
                keys.push(r.bytes()?);
            }
            for k in &keys {
                t.locks.insert(k.clone(), id.clone());
            }
            t.prepared.insert(
                id,
                Prepared {
                    primary,
                    deadline,
                    keys,
                },
            );
        }
        for _ in 0..r.count()? {
            let id = r.bytes()?;
            let d = match r.u8()? {
                0 => Decision::Abort { until: r.u64()? },
                1 => {
                    let at = r.u64()?;
                    let mut writes = BTreeMap::new();
                    for _ in 0..r.count()? {
                        let group = r.u64()?;
                        let mut records = Vec::new();
                        for _ in 0..r.count()? {
                            records.push(Record {
                                key: r.bytes()?,
                                expire_at: r.u64()? as i64,
                                dump: r.bytes()?,
                            });
                        }
                        writes.insert(group, records);
                    }
                    Decision::Commit { at, writes }
                }
                _ => return None,
            };
            t.decisions.insert(id, d);
        }
        Some((t, r.pos))
    }
}

fn put_u32(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u32).to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len());
    out.extend_from_slice(b);
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.data.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count no larger than the bytes left could hold (4 bytes an item at least).
    fn count(&mut self) -> Option<usize> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        (n <= (self.data.len() - self.pos) / 4).then_some(n)
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        Some(self.take(n)?.to_vec())
    }
}

fn usage() -> Reply {
    Reply::error("ERR wrong arguments for CAIRN.TXN")
}

fn aborted(why: &str) -> Reply {
    Reply::error(format!("TXNABORT {why}"))
}

fn number(arg: Option<&Vec<u8>>) -> Result<u64, Reply> {
    u64::try_from(int_arg(arg.ok_or_else(usage)?)?).map_err(|_| usage())
}

/// Parses `n` records (`key expire-at dump` each) from the front of `args`.
pub fn parse_records(args: &[Vec<u8>], n: usize) -> Result<Vec<Record>, Reply> {
    if args.len() < n.saturating_mul(3) {
        return Err(usage());
    }
    let mut out = Vec::with_capacity(n);
    for r in args[..n * 3].chunks(3) {
        let expire_at = int_arg(&r[1])?;
        if expire_at < -1 {
            return Err(usage());
        }
        if expire_at >= 0 && snapshot::restore_value(&r[2]).is_none() {
            return Err(usage());
        }
        out.push(Record {
            key: r[0].clone(),
            expire_at,
            dump: r[2].clone(),
        });
    }
    Ok(out)
}

/// A record as reply items: `[key, expire-at or -1, dump or nil]`.
fn record_reply(r: &Record) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(r.key.clone()),
        Reply::Int(r.expire_at),
        if r.expire_at < 0 {
            Reply::Nil
        } else {
            Reply::Bulk(r.dump.clone())
        },
    ])
}

impl Store {
    /// The current value of `key` as a record.
    pub fn record_of(&self, key: &[u8], now_ms: u64) -> Record {
        match self.keyspace.get(key, now_ms) {
            Some(e) => Record {
                key: key.to_vec(),
                expire_at: e.expire_at_ms as i64,
                dump: snapshot::dump_value(&e.value),
            },
            None => Record {
                key: key.to_vec(),
                expire_at: -1,
                dump: Vec::new(),
            },
        }
    }

    /// Puts records in place, as writes (WATCH, slot moves and blocked clients see them).
    pub fn write_records(&mut self, records: &[Record]) {
        for r in records {
            self.keyspace.remove(&r.key);
            if r.expire_at >= 0 {
                if let Some(value) = snapshot::restore_value(&r.dump) {
                    let entry = crate::keyspace::Entry {
                        value,
                        expire_at_ms: r.expire_at as u64,
                    };
                    self.keyspace.insert_entry(&r.key, entry);
                }
            }
            self.watches.touched(&r.key);
            self.moves.modified(&r.key);
            self.dirty += 1;
            if self.events.collect_keys {
                self.events.keys.push(r.key.clone());
            }
        }
    }

    /// Applies one CAIRN.TXN step (`args[0]` is the name).
    pub fn txn(&mut self, args: &[Vec<u8>], env: &Env) -> Reply {
        match self.txn_step(args, env) {
            Ok(r) | Err(r) => r,
        }
    }

    fn txn_step(&mut self, args: &[Vec<u8>], env: &Env) -> Result<Reply, Reply> {
        let sub = args.get(1).ok_or_else(usage)?;
        let id = args.get(2).ok_or_else(usage)?.clone();
        if is(sub, "prepare") {
            // PREPARE id primary deadline nkeys key... [key index]... (watched keys)
            let (primary, deadline) = (number(args.get(3))?, number(args.get(4))?);
            let n = number(args.get(5))? as usize;
            let keys = args
                .get(6..6usize.checked_add(n).ok_or_else(usage)?)
                .ok_or_else(usage)?;
            let watched = &args[6 + n..];
            if !watched.len().is_multiple_of(2) {
                return Err(usage());
            }
            self.txns.forget_old_aborts();
            match self.txns.decisions.get(&id) {
                Some(Decision::Abort { .. }) => return Err(aborted("the transaction was aborted")),
                Some(Decision::Commit { .. }) => return Err(aborted("the transaction is decided")),
                None => {}
            }
            if let Some(p) = self.txns.prepared.get(&id) {
                // Asked again (a reply was lost): the same answer, the keys still locked.
                let keys = p.keys.clone();
                return Ok(Reply::Array(
                    keys.iter()
                        .map(|k| record_reply(&self.record_of(k, env.now_ms)))
                        .collect(),
                ));
            }
            if self.txns.clock > deadline {
                return Err(aborted(
                    "the transaction's deadline passed before it was prepared",
                ));
            }
            for key in keys.iter().chain(watched.iter().step_by(2)) {
                let slot = crate::slot::key_slot(key);
                if !self.keyspace.serves(slot) || self.moves.outgoing.contains_key(&(slot as u16)) {
                    return Err(Reply::error(format!(
                        "TRYAGAIN Slot {slot} is moving between shards or has moved, retry"
                    )));
                }
                if self.txns.is_locked(key) {
                    return Err(Reply::error(
                        "TXNBUSY a key is locked by another cross-shard transaction",
                    ));
                }
            }
            let mut since = Vec::with_capacity(watched.len() / 2);
            for w in watched.chunks(2) {
                since.push((w[0].clone(), number(Some(&w[1]))?));
            }
            if self.watch_conflict(&since, env.now_ms) {
                return Ok(Reply::Int(0));
            }
            let mut all: Vec<Vec<u8>> = keys.to_vec();
            all.extend(watched.iter().step_by(2).cloned());
            all.sort();
            all.dedup();
            for k in &all {
                self.txns.locks.insert(k.clone(), id.clone());
            }
            let records = all
                .iter()
                .map(|k| record_reply(&self.record_of(k, env.now_ms)))
                .collect();
            self.txns.prepared.insert(
                id,
                Prepared {
                    primary,
                    deadline,
                    keys: all,
                },
            );
            return Ok(Reply::Array(records));
        }
        if is(sub, "commit") {
            // COMMIT id (group n record...)...: this shard's group comes first.
            let mut writes: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
            let mut own = None;
            let mut rest = &args[3..];
            while !rest.is_empty() {
                let group = number(rest.first())?;
                let n = number(rest.get(1))? as usize;
                let records = parse_records(&rest[2..], n)?;
                rest = &rest[2 + n * 3..];
                if own.is_none() {
                    own = Some(records);
                } else {
                    writes.insert(group, records);
                }
            }
            let own = own.ok_or_else(usage)?;
            match self.txns.decisions.get(&id) {
                Some(Decision::Commit { .. }) => return Ok(Reply::Int(1)),
                Some(Decision::Abort { .. }) => return Err(aborted("the transaction was aborted")),
                None => {}
            }
            if !self.txns.prepared.contains_key(&id) {
                self.txns.abort(&id, self.txns.clock);
                return Err(aborted(
                    "the transaction is not prepared here (it was aborted)",
                ));
            }
            if own.iter().any(|r| self.txns.locks.get(&r.key) != Some(&id)) {
                return Err(usage());
            }
            self.write_records(&own);
            self.txns.release(&id);
            self.txns.decisions.insert(
                id,
                Decision::Commit {
                    at: env.now_ms,
                    writes,
                },
            );
            return Ok(Reply::Int(1));
        }
        if is(sub, "apply") {
            let n = number(args.get(3))? as usize;
            let records = parse_records(&args[4..], n)?;
            if args.len() != 4 + n * 3 {
                return Err(usage());
            }
            if !self.txns.prepared.contains_key(&id) {
                return Ok(Reply::Int(0));
            }
            if records
                .iter()
                .any(|r| self.txns.locks.get(&r.key) != Some(&id))
            {
                return Err(usage());
            }
            self.write_records(&records);
            self.txns.release(&id);
            return Ok(Reply::Int(1));
        }
        if is(sub, "release") {
            return Ok(Reply::Int(i64::from(self.txns.release(&id).is_some())));
        }
        if is(sub, "resolve") {
            // RESOLVE id group: asked of the primary by a participant holding a lock.
            let group = number(args.get(3))?;
            self.txns.forget_old_aborts();
            match self.txns.decisions.get(&id) {
                Some(Decision::Commit { writes, .. }) => {
                    let mut items = vec![Reply::Int(1)];
                    items.extend(writes.get(&group).into_iter().flatten().map(record_reply));
                    return Ok(Reply::Array(items));
                }
                Some(Decision::Abort { .. }) => return Ok(Reply::Int(0)),
                None => {}
            }
            let deadline = match self.txns.prepared.get(&id) {
                Some(p) if self.txns.clock <= p.deadline => return Ok(Reply::Int(-1)),
                Some(p) => p.deadline,
                None => self.txns.clock,
            };
            self.txns.abort(&id, deadline);
            return Ok(Reply::Int(0));
        }
        if is(sub, "forget") {
            let known = matches!(self.txns.decisions.get(&id), Some(Decision::Commit { .. }));
            if known {
                self.txns.decisions.remove(&id);
            }
            return Ok(Reply::Int(i64::from(known)));
        }
        Err(usage())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_resp::Protocol;

    fn env(now_ms: u64) -> Env {
        Env {
            now_ms,
            seed: 1,
            proto: Protocol::Resp2,
        }
    }

    fn run(s: &mut Store, now: u64, args: &[&str]) -> Reply {
        s.txns.clock = s.txns.clock.max(now);
        let argv: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        if argv[0] == b"cairn.txn" {
            s.txn(&argv, &env(now))
        } else {
            let h = crate::cmd::handler(&args[0].to_ascii_lowercase()).unwrap();
            s.execute(h, &argv, &env(now))
        }
    }

    fn value(s: &Store, key: &str) -> Record {
        s.record_of(key.as_bytes(), s.txns.clock)
    }

    #[test]
    fn prepare_locks_commit_writes_and_a_second_prepare_is_refused() {
        let mut a = Store::new();
        run(&mut a, 10, &["set", "x", "1"]);
        let p = run(
            &mut a,
            11,
            &["cairn.txn", "prepare", "t1", "1", "5000", "1", "x"],
        );
        let Reply::Array(recs) = &p else {
            panic!("{p:?}")
        };
        assert_eq!(recs.len(), 1);
        assert!(a.txns.is_locked(b"x"));
        let other = run(
            &mut a,
            12,
            &["cairn.txn", "prepare", "t2", "1", "5000", "1", "x"],
        );
        assert!(
            matches!(&other, Reply::Error(e) if e.starts_with("TXNBUSY")),
            "{other:?}"
        );
        // Asked again, the same transaction gets the same values.
        assert_eq!(
            run(
                &mut a,
                12,
                &["cairn.txn", "prepare", "t1", "1", "5000", "1", "x"]
            ),
            p
        );
        let mut b = Store::new();
        run(&mut b, 1, &["set", "x", "2"]);
        let rec = value(&b, "x");
        let argv = vec![
            b"cairn.txn".to_vec(),
            b"commit".to_vec(),
            b"t1".to_vec(),
            b"1".to_vec(),
            b"1".to_vec(),
            b"x".to_vec(),
            rec.expire_at.to_string().into_bytes(),
            rec.dump.clone(),
        ];
        a.txns.clock = 13;
        assert_eq!(a.txn(&argv, &env(13)), Reply::Int(1));
        assert!(!a.txns.is_locked(b"x"));
        assert_eq!(
            value(&a, "x"),
            Record {
                key: b"x".to_vec(),
                ..rec
            }
        );
        // Decided: a late PREPARE of it is refused, RESOLVE answers commit.
        let late = run(
            &mut a,
            14,
            &["cairn.txn", "prepare", "t1", "1", "5000", "1", "x"],
        );
        assert!(
            matches!(&late, Reply::Error(e) if e.starts_with("TXNABORT")),
            "{late:?}"
        );
        assert!(
            matches!(run(&mut a, 14, &["cairn.txn", "resolve", "t1", "2"]), Reply::Array(v) if v[0] == Reply::Int(1))
        );
        assert_eq!(
            run(&mut a, 15, &["cairn.txn", "forget", "t1"]),
            Reply::Int(1)
        );
    }

    #[test]
    fn recovery_aborts_an_expired_undecided_transaction_and_refuses_its_commit() {
        let mut a = Store::new();
        run(
            &mut a,
            10,
            &["cairn.txn", "prepare", "t", "1", "100", "1", "k"],
        );
        // Before the deadline: still pending.
        assert_eq!(
            run(&mut a, 50, &["cairn.txn", "resolve", "t", "2"]),
            Reply::Int(-1)
        );
        assert_eq!(
            run(&mut a, 101, &["cairn.txn", "resolve", "t", "2"]),
            Reply::Int(0)
        );
        assert!(!a.txns.is_locked(b"k"));
        let commit = run(
            &mut a,
            102,
            &["cairn.txn", "commit", "t", "1", "1", "k", "-1", ""],
        );
        assert!(
            matches!(&commit, Reply::Error(e) if e.starts_with("TXNABORT")),
            "{commit:?}"
        );
        let prepare = run(
            &mut a,
            103,
            &["cairn.txn", "prepare", "t", "1", "100", "1", "k"],
        );
        assert!(
            matches!(&prepare, Reply::Error(e) if e.starts_with("TXNABORT")),
            "{prepare:?}"
        );
        // The abort is forgotten a while after the deadline; a PREPARE then is late anyway.
        run(
            &mut a,
            101 + ABORT_MEMORY_MS + 1,
            &["cairn.txn", "resolve", "u", "2"],
        );
        assert!(!a.txns.decisions.contains_key(b"t".as_slice()));
        let late = run(
            &mut a,
            101 + ABORT_MEMORY_MS + 2,
            &["cairn.txn", "prepare", "t", "1", "100", "1", "k"],
        );
        assert!(
            matches!(&late, Reply::Error(e) if e.starts_with("TXNABORT")),
            "{late:?}"
        );
    }

    #[test]
    fn a_participant_applies_once_and_a_watch_refuses_prepare() {
        let mut b = Store::new();
        run(&mut b, 5, &["set", "w", "1"]);
        b.watches.set_log_index(7);
        run(&mut b, 6, &["set", "w", "2"]);
        let refused = run(
            &mut b,
            8,
            &["cairn.txn", "prepare", "t", "1", "100", "1", "y", "w", "3"],
        );
        assert_eq!(refused, Reply::Int(0));
        assert!(b.txns.locks.is_empty());
        let ok = run(
            &mut b,
            8,
            &["cairn.txn", "prepare", "t", "1", "100", "1", "y", "w", "7"],
        );
        assert!(matches!(ok, Reply::Array(ref v) if v.len() == 2), "{ok:?}");
        assert!(b.txns.is_locked(b"w") && b.txns.is_locked(b"y"));
        assert_eq!(
            run(&mut b, 9, &["cairn.txn", "apply", "t", "1", "y", "-1", ""]),
            Reply::Int(1)
        );
        assert!(b.txns.locks.is_empty());
        assert_eq!(
            run(&mut b, 9, &["cairn.txn", "apply", "t", "1", "y", "-1", ""]),
            Reply::Int(0)
        );
    }

    #[test]
    fn state_round_trips_through_its_encoding() {
        let mut a = Store::new();
        // A key longer than four times the bytes after it (a count check must not refuse it).
        let long = "k".repeat(100);
        run(
            &mut a,
            10,
            &["cairn.txn", "prepare", "t", "1", "100", "2", "j", &long],
        );
        run(
            &mut a,
            11,
            &["cairn.txn", "prepare", "u", "1", "100", "1", "m"],
        );
        run(
            &mut a,
            12,
            &[
                "cairn.txn",
                "commit",
                "u",
                "1",
                "1",
                "m",
                "-1",
                "",
                "2",
                "1",
                "z",
                "-1",
                "",
            ],
        );
        run(&mut a, 300, &["cairn.txn", "resolve", "v", "2"]);
        let mut out = Vec::new();
        a.txns.encode(&mut out);
        out.extend_from_slice(b"tail");
        let (back, used) = Txns::decode(&out).unwrap();
        assert_eq!(used, out.len() - 4);
        assert_eq!(back, a.txns);
        for cut in 0..used {
            assert!(Txns::decode(&out[..cut]).is_none(), "cut at {cut}");
        }
    }
}
