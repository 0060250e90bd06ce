//! CAIRN.MIGRATE: the steps of moving a slot between shards, each applied as one log entry of
//! the shard it concerns (see `moves.rs` for the protocol and why it never lets two shards
//! serve a slot). Nodes propose these; clients cannot (the command is not in the table).
//!
//! `slots` is one slot (`5`) or a range (`5-9`): a range moves as one, with one attempt, one
//! hand-over and one epoch (above every epoch its slots had).
//!
//! Source shard: `OUT slots to` → `[attempt, epoch]`; `TAKE slots attempt count bytes` →
//! `[reset, still-pending, [[key, expire-at-ms or -1, dump or nil]...]]`; `RELEASE slots attempt
//! max-pending` → `[1, epoch]`, or `[0, pending]` while more than `max-pending` keys are
//! pending; `DROP slots`; `CANCEL slots`.
//! Target shard: `IN slots from attempt` → 1, or 0 when the slots are served here already;
//! `LOAD slots attempt reset [key expire-at-ms dump]...` → keys loaded (a reset first drops
//! every key of the slots); `ACQUIRE slots attempt epoch`; `ABORT slots [attempt]` (only that
//! attempt, when given).

use crate::exec::{int_arg, is, Env};
use crate::moves::{Incoming, Outgoing};
use crate::slot::{key_slot, SLOTS};
use crate::{snapshot, Store};
use cairn_resp::Reply;
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

pub const NAME: &str = "cairn.migrate";

fn stale() -> Reply {
    Reply::error("ERR this slot move attempt was superseded or cancelled")
}

fn number(arg: Option<&Vec<u8>>) -> Result<u64, Reply> {
    let n = int_arg(arg.ok_or_else(usage)?)?;
    u64::try_from(n).map_err(|_| usage())
}

fn usage() -> Reply {
    Reply::error("ERR wrong arguments for CAIRN.MIGRATE")
}

/// A slot (`5`) or an inclusive range of slots (`5-9`).
fn slot_range(arg: &[u8]) -> Result<RangeInclusive<usize>, Reply> {
    let text = std::str::from_utf8(arg).map_err(|_| usage())?;
    let (a, b) = text.split_once('-').unwrap_or((text, text));
    let (a, b): (usize, usize) = (
        a.parse().map_err(|_| usage())?,
        b.parse().map_err(|_| usage())?,
    );
    if a > b || b >= SLOTS {
        return Err(usage());
    }
    Ok(a..=b)
}

impl Store {
    /// Applies one CAIRN.MIGRATE step (`args[0]` is the name).
    pub fn migrate(&mut self, args: &[Vec<u8>], env: &Env) -> Reply {
        match self.migrate_step(args, env) {
            Ok(r) | Err(r) => r,
        }
    }

    fn migrate_step(&mut self, args: &[Vec<u8>], env: &Env) -> Result<Reply, Reply> {
        let sub = args.get(1).ok_or_else(usage)?;
        let range = slot_range(args.get(2).ok_or_else(usage)?)?;
        let slots = || range.clone().map(|s| s as u16);
        let arg = |i: usize| number(args.get(i));
        let index = self.watches.log_index();
        if is(sub, "out") {
            let to = arg(3)?;
            // All or nothing: every slot served here (or already moving to `to`).
            for slot in slots() {
                match self.moves.outgoing.get(&slot) {
                    Some(o) if o.to != to => {
                        return Err(Reply::error(format!(
                            "ERR slot {slot} is already moving to shard {}",
                            o.to
                        )))
                    }
                    Some(_) => {}
                    None if !self.keyspace.serves(slot as usize) => {
                        return Err(Reply::error(format!(
                            "ERR slot {slot} is not served by this shard"
                        )))
                    }
                    None => {}
                }
            }
            let mut epoch = 0;
            for slot in slots() {
                epoch = epoch.max(self.moves.epoch(slot));
                let keys: BTreeSet<Vec<u8>> = self
                    .keyspace
                    .iter_slot(slot as usize)
                    .map(|(k, _)| k.to_vec())
                    .collect();
                // A new attempt: everything is sent again (the target drops what it has).
                let out = self.moves.outgoing.entry(slot).or_insert(Outgoing {
                    attempt: index,
                    to,
                    pending: BTreeSet::new(),
                    reset: true,
                    released: false,
                });
                out.attempt = index;
                out.pending = keys;
                out.reset = true;
            }
            return Ok(Reply::Array(vec![
                Reply::Int(index as i64),
                Reply::Int(epoch as i64),
            ]));
        }
        if is(sub, "take") {
            let (attempt, count, bytes) = (arg(3)?, arg(4)?.max(1), arg(5)?);
            self.check_outgoing(&range, attempt)?;
            let mut records = Vec::new();
            let mut size = 0u64;
            let mut reset = false;
            let mut pending = 0;
            for slot in slots() {
                let out = self.moves.outgoing.get_mut(&slot).expect("checked");
                reset |= std::mem::take(&mut out.reset);
                while (records.len() as u64) < count && (records.is_empty() || size < bytes) {
                    let Some(key) = out.pending.pop_first() else {
                        break;
                    };
                    size += key.len() as u64;
                    let record = match self.keyspace.get(&key, env.now_ms) {
                        Some(e) => {
                            let dump = snapshot::dump_value(&e.value);
                            size += dump.len() as u64;
                            vec![
                                Reply::Bulk(key),
                                Reply::Int(e.expire_at_ms as i64),
                                Reply::Bulk(dump),
                            ]
                        }
                        None => vec![Reply::Bulk(key), Reply::Int(-1), Reply::Nil],
                    };
                    records.push(Reply::Array(record));
                }
                pending += out.pending.len();
            }
            return Ok(Reply::Array(vec![
                Reply::Int(i64::from(reset)),
                Reply::Int(pending as i64),
                Reply::Array(records),
            ]));
        }
        if is(sub, "release") {
            let (attempt, max) = (arg(3)?, arg(4)?);
            self.check_outgoing(&range, attempt)?;
            let pending: usize = slots()
                .map(|s| &self.moves.outgoing[&s])
                .filter(|o| !o.released)
                .map(|o| o.pending.len())
                .sum();
            // A key locked by a cross-shard transaction will still change: the slot waits.
            let locked = self
                .txns
                .locks
                .keys()
                .filter(|k| range.contains(&key_slot(k)))
                .count();
            if locked > 0 || pending as u64 > max {
                let pending = pending + locked;
                return Ok(Reply::Array(vec![
                    Reply::Int(0),
                    Reply::Int(pending as i64),
                ]));
            }
            let mut epoch = 0;
            for slot in slots() {
                self.moves
                    .outgoing
                    .get_mut(&slot)
                    .expect("checked")
                    .released = true;
                self.keyspace.set_served(slot as usize, false);
                epoch = epoch.max(self.moves.epoch(slot));
            }
            return Ok(Reply::Array(vec![Reply::Int(1), Reply::Int(epoch as i64)]));
        }
        if is(sub, "drop") {
            if slots().any(|s| self.moves.outgoing.get(&s).is_some_and(|o| !o.released)) {
                return Err(Reply::error(
                    "ERR the slot is not handed over yet; cancel the move instead",
                ));
            }
            let mut n = 0;
            for slot in slots() {
                if self.moves.outgoing.remove(&slot).is_some() {
                    self.moves.epochs.remove(&slot);
                    n += self.keyspace.clear_slot(slot as usize);
                }
            }
            return Ok(Reply::Int(n as i64));
        }
        if is(sub, "cancel") {
            if slots().any(|s| self.moves.outgoing.get(&s).is_some_and(|o| o.released)) {
                return Err(Reply::error(
                    "ERR the slot is handed over already; the move can only finish",
                ));
            }
            slots().for_each(|s| {
                self.moves.outgoing.remove(&s);
            });
            return Ok(Reply::OK);
        }
        if is(sub, "in") {
            let (from, attempt) = (arg(3)?, arg(4)?);
            let served = slots()
                .filter(|&s| self.keyspace.serves(s as usize))
                .count();
            if served == range.clone().count() {
                return Ok(Reply::Int(0));
            }
            if served > 0 {
                return Err(Reply::error(
                    "ERR some of these slots are served here already",
                ));
            }
            for slot in slots() {
                if matches!(self.moves.incoming.get(&slot), Some(i) if i.attempt > attempt) {
                    return Err(stale());
                }
            }
            for slot in slots() {
                if matches!(self.moves.incoming.get(&slot), Some(i) if i.attempt == attempt) {
                    continue;
                }
                self.moves.incoming.insert(slot, Incoming { attempt, from });
                self.drop_slot_keys(slot as usize);
            }
            return Ok(Reply::Int(1));
        }
        if is(sub, "load") {
            let (attempt, reset) = (arg(3)?, arg(4)?);
            self.check_incoming(&range, attempt)?;
            let records = &args[5..];
            if !records.len().is_multiple_of(3) {
                return Err(usage());
            }
            // Check everything before changing anything: a step applies whole or not at all.
            let mut parsed = Vec::with_capacity(records.len() / 3);
            for r in records.chunks(3) {
                if !range.contains(&key_slot(&r[0])) {
                    return Err(usage());
                }
                let expire = int_arg(&r[1])?;
                let value = if expire < 0 {
                    None
                } else {
                    Some(snapshot::restore_value(&r[2]).ok_or_else(usage)?)
                };
                parsed.push((&r[0], expire, value));
            }
            if reset == 1 {
                range.clone().for_each(|s| self.drop_slot_keys(s));
            }
            for (key, expire, value) in parsed {
                self.keyspace.remove(key);
                if let Some(value) = value {
                    let entry = crate::keyspace::Entry {
                        value,
                        expire_at_ms: expire as u64,
                    };
                    self.keyspace.insert_entry(key, entry);
                }
                self.watches.touched(key);
            }
            return Ok(Reply::Int((records.len() / 3) as i64));
        }
        if is(sub, "acquire") {
            let (attempt, epoch) = (arg(3)?, arg(4)?);
            if slots().all(|s| self.keyspace.serves(s as usize)) {
                return Ok(Reply::OK);
            }
            self.check_incoming(&range, attempt)?;
            for slot in slots() {
                self.moves.incoming.remove(&slot);
                self.keyspace.set_served(slot as usize, true);
                self.moves.epochs.insert(slot, epoch);
                self.moves.acquired.push((slot, epoch));
                // A WATCH taken here before the slot last left must not pass over the keys it
                // got while away.
                let keys: Vec<Vec<u8>> = self
                    .keyspace
                    .iter_slot(slot as usize)
                    .map(|(k, _)| k.to_vec())
                    .collect();
                keys.iter().for_each(|k| self.watches.touched(k));
            }
            return Ok(Reply::OK);
        }
        if is(sub, "abort") {
            let only = args.get(3).map(|a| number(Some(a))).transpose()?;
            for slot in slots() {
                match self.moves.incoming.get(&slot) {
                    Some(i) if only.is_none_or(|a| a == i.attempt) => {
                        self.moves.incoming.remove(&slot);
                        self.drop_slot_keys(slot as usize);
                    }
                    _ => {}
                }
            }
            return Ok(Reply::OK);
        }
        Err(usage())
    }

    /// Every slot of `range` is moving out in attempt `attempt`.
    fn check_outgoing(&self, range: &RangeInclusive<usize>, attempt: u64) -> Result<(), Reply> {
        let ok = range.clone().all(
            |s| matches!(self.moves.outgoing.get(&(s as u16)), Some(o) if o.attempt == attempt),
        );
        ok.then_some(()).ok_or_else(stale)
    }

    /// Every slot of `range` is moving in, in attempt `attempt`.
    fn check_incoming(&self, range: &RangeInclusive<usize>, attempt: u64) -> Result<(), Reply> {
        let ok = range.clone().all(
            |s| matches!(self.moves.incoming.get(&(s as u16)), Some(i) if i.attempt == attempt),
        );
        ok.then_some(()).ok_or_else(stale)
    }

    /// Deletes the keys of a slot this shard does not serve (stamping them for WATCH).
    fn drop_slot_keys(&mut self, slot: usize) {
        debug_assert!(!self.keyspace.serves(slot), "dropping a served slot's keys");
        let keys: Vec<Vec<u8>> = self
            .keyspace
            .iter_slot(slot)
            .map(|(k, _)| k.to_vec())
            .collect();
        keys.iter().for_each(|k| self.watches.touched(k));
        self.keyspace.clear_slot(slot);
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

    fn run(s: &mut Store, index: u64, args: &[&str]) -> Reply {
        s.watches.set_log_index(index);
        let argv: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
        if argv[0] == b"cairn.migrate" {
            return s.migrate(&argv, &env(1_000));
        }
        let h = crate::cmd::handler(&args[0].to_ascii_lowercase()).expect("known");
        s.execute(h, &argv, &env(1_000))
    }

    fn ints(r: &Reply) -> Vec<i64> {
        match r {
            Reply::Array(items) => items
                .iter()
                .filter_map(|i| match i {
                    Reply::Int(n) => Some(*n),
                    _ => None,
                })
                .collect(),
            other => panic!("not an array: {other:?}"),
        }
    }

    /// Moves every pending key from `a` to `b` as a coordinator would; returns how many.
    fn copy(a: &mut Store, b: &mut Store, index: &mut u64, slots: &str, attempt: u64) -> usize {
        let mut moved = 0;
        loop {
            *index += 1;
            let r = run(
                a,
                *index,
                &[
                    "cairn.migrate",
                    "take",
                    slots,
                    &attempt.to_string(),
                    "2",
                    "1000000",
                ],
            );
            let Reply::Array(parts) = r else {
                panic!("{r:?}")
            };
            let (Reply::Int(reset), Reply::Array(records)) = (&parts[0], &parts[2]) else {
                panic!()
            };
            if records.is_empty() && *reset == 0 {
                return moved;
            }
            let mut load: Vec<Vec<u8>> = [
                "cairn.migrate",
                "load",
                slots,
                &attempt.to_string(),
                &reset.to_string(),
            ]
            .map(|s| s.as_bytes().to_vec())
            .to_vec();
            for rec in records {
                let Reply::Array(f) = rec else { panic!() };
                let (Reply::Bulk(k), Reply::Int(at)) = (&f[0], &f[1]) else {
                    panic!()
                };
                load.push(k.clone());
                load.push(at.to_string().into_bytes());
                load.push(match &f[2] {
                    Reply::Bulk(d) => d.clone(),
                    _ => Vec::new(),
                });
                moved += 1;
            }
            *index += 1;
            b.watches.set_log_index(*index);
            assert!(matches!(b.migrate(&load, &env(1_000)), Reply::Int(_)));
        }
    }

    #[test]
    fn a_slot_moves_with_writes_during_the_copy_and_is_never_served_twice() {
        let slot = key_slot(b"{t}a") as u16;
        let s = slot.to_string();
        let mut a = Store::new();
        let mut b = Store::serving(crate::keyspace::SlotSet::none());
        for (i, k) in (1..).zip(["{t}a", "{t}b", "{t}c", "other"]) {
            run(&mut a, i, &["SET", k, "1"]);
        }
        let out = run(&mut a, 10, &["cairn.migrate", "out", &s, "2"]);
        assert_eq!(ints(&out), vec![10, 0]);
        assert_eq!(
            run(&mut b, 11, &["cairn.migrate", "in", &s, "1", "10"]),
            Reply::Int(1)
        );
        let mut index = 20;
        assert_eq!(copy(&mut a, &mut b, &mut index, &s, 10), 3);
        // Writes after the copy: a change, a delete and a new key become pending again.
        run(&mut a, 100, &["INCR", "{t}a"]);
        run(&mut a, 101, &["DEL", "{t}b"]);
        run(&mut a, 102, &["SET", "{t}d", "new"]);
        // B serves nothing of the slot yet.
        assert_eq!(run(&mut b, 103, &["DBSIZE"]), Reply::Int(0));
        assert!(!b.keyspace.serves(slot as usize));
        // Too many pending to hand over with at most one.
        assert_eq!(
            ints(&run(
                &mut a,
                104,
                &["cairn.migrate", "release", &s, "10", "1"]
            )),
            vec![0, 3]
        );
        assert!(a.keyspace.serves(slot as usize));
        let rel = run(&mut a, 105, &["cairn.migrate", "release", &s, "10", "5"]);
        assert_eq!(ints(&rel), vec![1, 0]);
        assert!(!a.keyspace.serves(slot as usize));
        // Frozen: the pending keys are taken after the release.
        let mut index = 200;
        assert_eq!(copy(&mut a, &mut b, &mut index, &s, 10), 3);
        assert_eq!(
            run(&mut b, 300, &["cairn.migrate", "acquire", &s, "10", "1"]),
            Reply::OK
        );
        assert_eq!(b.moves.acquired, vec![(slot, 1)]);
        assert_eq!(
            run(&mut b, 301, &["GET", "{t}a"]),
            Reply::Bulk(b"2".to_vec())
        );
        assert_eq!(run(&mut b, 302, &["EXISTS", "{t}b"]), Reply::Int(0));
        assert_eq!(
            run(&mut b, 303, &["GET", "{t}d"]),
            Reply::Bulk(b"new".to_vec())
        );
        assert_eq!(run(&mut b, 304, &["DBSIZE"]), Reply::Int(3));
        // A still stores its frozen copy (not counted) until DROP.
        assert_eq!(run(&mut a, 305, &["DBSIZE"]), Reply::Int(1));
        assert_eq!(
            run(&mut a, 306, &["cairn.migrate", "drop", &s]),
            Reply::Int(3)
        );
        assert_eq!(a.keyspace.len(), 1);
        assert!(a.moves.outgoing.is_empty() && b.moves.incoming.is_empty());
    }

    #[test]
    fn a_superseded_attempt_is_refused_on_both_sides() {
        let slot = key_slot(b"k");
        let s = slot.to_string();
        let mut a = Store::new();
        let mut b = Store::serving(crate::keyspace::SlotSet::none());
        run(&mut a, 1, &["SET", "k", "old"]);
        run(&mut a, 2, &["cairn.migrate", "out", &s, "2"]);
        run(&mut b, 3, &["cairn.migrate", "in", &s, "1", "2"]);
        // A second coordinator starts over.
        run(&mut a, 4, &["cairn.migrate", "out", &s, "2"]);
        run(&mut b, 5, &["cairn.migrate", "in", &s, "1", "4"]);
        let take = run(&mut a, 6, &["cairn.migrate", "take", &s, "2", "10", "1000"]);
        assert_eq!(take, stale());
        let load = run(
            &mut b,
            7,
            &["cairn.migrate", "load", &s, "2", "0", "k", "-1", ""],
        );
        assert_eq!(load, stale());
        assert_eq!(
            run(&mut b, 8, &["cairn.migrate", "in", &s, "1", "2"]),
            stale()
        );
        // Moving to another shard at the same time is refused; cancelling ends it.
        assert!(matches!(
            run(&mut a, 9, &["cairn.migrate", "out", &s, "3"]),
            Reply::Error(_)
        ));
        assert_eq!(run(&mut a, 10, &["cairn.migrate", "cancel", &s]), Reply::OK);
        // An abort of another attempt leaves the target's copy alone.
        assert_eq!(
            run(&mut b, 11, &["cairn.migrate", "abort", &s, "2"]),
            Reply::OK
        );
        assert!(b.moves.incoming.contains_key(&(slot as u16)));
        assert_eq!(run(&mut b, 11, &["cairn.migrate", "abort", &s]), Reply::OK);
        assert!(b.moves.incoming.is_empty());
        assert_eq!(run(&mut a, 12, &["GET", "k"]), Reply::Bulk(b"old".to_vec()));
        // Once released, a move cannot be cancelled.
        run(&mut a, 13, &["cairn.migrate", "out", &s, "2"]);
        run(&mut a, 14, &["cairn.migrate", "release", &s, "13", "10"]);
        assert!(matches!(
            run(&mut a, 15, &["cairn.migrate", "cancel", &s]),
            Reply::Error(_)
        ));
    }

    #[test]
    fn a_flush_during_the_copy_tells_the_target_to_start_over() {
        let slot = key_slot(b"k");
        let s = slot.to_string();
        let mut a = Store::new();
        let mut b = Store::serving(crate::keyspace::SlotSet::none());
        run(&mut a, 1, &["SET", "k", "1"]);
        run(&mut a, 2, &["cairn.migrate", "out", &s, "2"]);
        run(&mut b, 3, &["cairn.migrate", "in", &s, "1", "2"]);
        let mut index = 10;
        copy(&mut a, &mut b, &mut index, &s, 2);
        assert_eq!(b.keyspace.len(), 1);
        run(&mut a, 50, &["FLUSHALL"]);
        // FLUSHALL on the target leaves the keys it is being sent alone.
        run(&mut b, 51, &["FLUSHALL"]);
        assert_eq!(b.keyspace.len(), 1);
        let mut index = 60;
        copy(&mut a, &mut b, &mut index, &s, 2);
        assert_eq!(b.keyspace.len(), 0, "the reset reached the target");
    }

    /// A range moves as one: one attempt, one hand-over, an epoch above all its slots had.
    #[test]
    fn a_range_of_slots_moves_as_one() {
        let mut a = Store::new();
        let mut b = Store::serving(crate::keyspace::SlotSet::none());
        let keys = ["a", "b", "c", "d", "e"];
        for (i, k) in (1..).zip(keys) {
            run(&mut a, i, &["SET", k, k]);
        }
        a.moves.epochs.insert(key_slot(b"a") as u16, 4);
        let out = run(&mut a, 10, &["cairn.migrate", "out", "0-16383", "2"]);
        assert_eq!(ints(&out), vec![10, 4]);
        run(&mut b, 11, &["cairn.migrate", "in", "0-16383", "1", "10"]);
        let mut index = 20;
        assert_eq!(copy(&mut a, &mut b, &mut index, "0-16383", 10), 5);
        run(&mut a, 50, &["SET", "f", "new"]);
        run(&mut a, 51, &["DEL", "a"]);
        let rel = run(
            &mut a,
            52,
            &["cairn.migrate", "release", "0-16383", "10", "5"],
        );
        assert_eq!(ints(&rel), vec![1, 4]);
        assert_eq!(run(&mut a, 53, &["DBSIZE"]), Reply::Int(0));
        let mut index = 60;
        assert_eq!(copy(&mut a, &mut b, &mut index, "0-16383", 10), 2);
        run(
            &mut b,
            70,
            &["cairn.migrate", "acquire", "0-16383", "10", "5"],
        );
        assert_eq!(run(&mut b, 71, &["DBSIZE"]), Reply::Int(5));
        assert_eq!(b.moves.epochs.len(), SLOTS);
        assert_eq!(b.moves.acquired.len(), SLOTS);
        assert_eq!(run(&mut b, 72, &["GET", "f"]), Reply::Bulk(b"new".to_vec()));
        // Part of a range that is not moving is refused whole.
        let partly = run(&mut b, 73, &["cairn.migrate", "out", "0-16383", "3"]);
        assert_eq!(
            ints(&partly).len(),
            2,
            "b serves every slot now: {partly:?}"
        );
        let mut c = Store::serving(crate::keyspace::SlotSet::none());
        c.keyspace.set_served(7, true);
        let refused = run(&mut c, 1, &["cairn.migrate", "out", "5-9", "2"]);
        assert!(matches!(refused, Reply::Error(_)), "{refused:?}");
        assert!(c.moves.outgoing.is_empty());
        assert_eq!(
            run(&mut a, 80, &["cairn.migrate", "drop", "0-16383"]),
            Reply::Int(5)
        );
    }

    #[test]
    fn moves_round_trip_through_their_encoding() {
        let slot = key_slot(b"k");
        let s = slot.to_string();
        let mut a = Store::new();
        run(&mut a, 1, &["SET", "k", "1"]);
        run(&mut a, 2, &["cairn.migrate", "out", &s, "7"]);
        a.moves.incoming.insert(
            5,
            Incoming {
                attempt: 3,
                from: 9,
            },
        );
        a.moves.epochs.insert(5, 4);
        let mut bytes = Vec::new();
        a.moves.encode(&mut bytes);
        let (back, used) = crate::moves::Moves::decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert_eq!(back, a.moves);
        for cut in 0..bytes.len() {
            assert!(
                crate::moves::Moves::decode(&bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
    }
}
