//! Slots moving between shards: the replicated state each side of a move keeps.
//!
//! A slot moves from shard A to shard B in steps that are each one entry in one shard's log
//! (`CAIRN.MIGRATE`, see `cmd/migrate.rs`), so every replica of a shard agrees on where each
//! of its slots stands:
//!
//! 1. A: `OUT` starts a move attempt. A keeps serving the slot; from here every key of it that
//!    changes is recorded as *pending*, and every key it holds starts pending.
//! 2. B: `IN` makes room: B stores the slot's keys it is sent without serving them.
//! 3. A: `TAKE` hands out pending keys with their current values (and forgets them as pending);
//!    B: `LOAD` stores them. Repeated while A serves writes, until few keys are pending.
//! 4. A: `RELEASE` stops serving the slot. Its keys are now frozen; the last pending ones are
//!    taken and loaded.
//! 5. B: `ACQUIRE` starts serving the slot with the next ownership epoch.
//! 6. A: `DROP` deletes its frozen copy.
//!
//! A write applies on A only before its `RELEASE` and on B only after its `ACQUIRE`, and B's
//! `ACQUIRE` is proposed only once A's `RELEASE` is committed: at no log position do both
//! shards serve the slot. Between the two, neither does (the client is told `TRYAGAIN`); that
//! gap is one loading of the last pending keys plus one commit.
//!
//! Each attempt is numbered by the log index of its `OUT`, and every later step names it: a
//! coordinator that lost track (its node died, a leader changed) starts a new attempt, and the
//! steps of the old one are refused on both sides, so they can never overwrite newer values.

use crate::slot::key_slot;
use std::collections::{BTreeMap, BTreeSet};

/// The source side of a move.
#[derive(Clone, Debug, PartialEq)]
pub struct Outgoing {
    pub attempt: u64,
    /// The shard (group id) the slot goes to.
    pub to: u64,
    /// Keys changed since the attempt began (or present when it began) and not yet taken.
    pub pending: BTreeSet<Vec<u8>>,
    /// The slot was flushed: the target must drop what it was sent so far.
    pub reset: bool,
    /// `RELEASE` applied: this shard no longer serves the slot, and its keys are frozen.
    pub released: bool,
}

/// The target side of a move.
#[derive(Clone, Debug, PartialEq)]
pub struct Incoming {
    pub attempt: u64,
    pub from: u64,
}

#[derive(Default, Clone, Debug, PartialEq)]
pub struct Moves {
    pub outgoing: BTreeMap<u16, Outgoing>,
    pub incoming: BTreeMap<u16, Incoming>,
    /// The ownership epoch of each served slot that has moved at least once (0 when absent).
    /// Every move gives the slot the next epoch, so the highest epoch names its owner.
    pub epochs: BTreeMap<u16, u64>,
    /// Slots this shard came to serve, with their epochs, since the server last looked: what
    /// routing learns from. Not replicated state (it is drained by whoever applies).
    pub acquired: Vec<(u16, u64)>,
}

impl Moves {
    pub fn epoch(&self, slot: u16) -> u64 {
        self.epochs.get(&slot).copied().unwrap_or(0)
    }

    /// Records that `key` changed: a key of a slot being moved out becomes pending.
    pub fn modified(&mut self, key: &[u8]) {
        if self.outgoing.is_empty() {
            return;
        }
        if let Some(out) = self.outgoing.get_mut(&(key_slot(key) as u16)) {
            if !out.released {
                out.pending.insert(key.to_vec());
            }
        }
    }

    /// The served slots were flushed: the target of each slot moving out must drop what it has.
    pub fn flushed(&mut self, ks: &crate::Keyspace) {
        for (&slot, out) in self.outgoing.iter_mut() {
            if !out.released && ks.serves(slot as usize) {
                out.pending.clear();
                out.reset = true;
            }
        }
    }

    /// Serialized for snapshots: `out count u32 | (slot u16, attempt u64, to u64, flags u8,
    /// pending count u32, (len u32, key)...)... | in count u32 | (slot u16, attempt u64, from
    /// u64)... | epoch count u32 | (slot u16, epoch u64)...`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.outgoing.len() as u32).to_le_bytes());
        for (slot, o) in &self.outgoing {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&o.attempt.to_le_bytes());
            out.extend_from_slice(&o.to.to_le_bytes());
            out.push(u8::from(o.reset) | (u8::from(o.released) << 1));
            out.extend_from_slice(&(o.pending.len() as u32).to_le_bytes());
            for key in &o.pending {
                out.extend_from_slice(&(key.len() as u32).to_le_bytes());
                out.extend_from_slice(key);
            }
        }
        out.extend_from_slice(&(self.incoming.len() as u32).to_le_bytes());
        for (slot, i) in &self.incoming {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&i.attempt.to_le_bytes());
            out.extend_from_slice(&i.from.to_le_bytes());
        }
        out.extend_from_slice(&(self.epochs.len() as u32).to_le_bytes());
        for (slot, e) in &self.epochs {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&e.to_le_bytes());
        }
    }

    /// Reads what [`Moves::encode`] wrote from the front of `data`; returns it and the bytes
    /// it took. None when the bytes are not that.
    pub fn decode(data: &[u8]) -> Option<(Moves, usize)> {
        let mut pos = 0usize;
        let mut take = |n: usize| -> Option<&[u8]> {
            let s = data.get(pos..pos.checked_add(n)?)?;
            pos += n;
            Some(s)
        };
        let mut m = Moves::default();
        macro_rules! int {
            ($t:ty) => {
                <$t>::from_le_bytes(take(std::mem::size_of::<$t>())?.try_into().ok()?)
            };
        }
        let slot_ok = |s: u16| (s as usize) < crate::slot::SLOTS;
        for _ in 0..int!(u32) {
            let slot = int!(u16);
            let attempt = int!(u64);
            let to = int!(u64);
            let flags = take(1)?[0];
            let mut pending = BTreeSet::new();
            for _ in 0..int!(u32) {
                let len = int!(u32) as usize;
                pending.insert(take(len)?.to_vec());
            }
            if !slot_ok(slot) || flags > 3 {
                return None;
            }
            let out = Outgoing {
                attempt,
                to,
                pending,
                reset: flags & 1 != 0,
                released: flags & 2 != 0,
            };
            m.outgoing.insert(slot, out);
        }
        for _ in 0..int!(u32) {
            let slot = int!(u16);
            let attempt = int!(u64);
            let from = int!(u64);
            if !slot_ok(slot) {
                return None;
            }
            m.incoming.insert(slot, Incoming { attempt, from });
        }
        for _ in 0..int!(u32) {
            let slot = int!(u16);
            let epoch = int!(u64);
            if !slot_ok(slot) {
                return None;
            }
            m.epochs.insert(slot, epoch);
        }
        Some((m, pos))
    }
}
