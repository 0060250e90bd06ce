//! The versioned snapshot of a whole keyspace, and the DUMP payload of one value.
//!
//! Snapshot layout (all integers little-endian):
//! ```text
//! "CAIRNSNP" | version u32 | key count u64 | entries... | FNV-1a-64 of everything before
//! entry: key (len u32 + bytes) | expire_at_ms u64 | value
//! value: type u8 | string: bytes | list/set: count u64, items | hash: count u64, (field, value)
//!        | zset: count u64, (member, score f64 bits)
//!        | stream: see `put_stream`
//! ```
//! Keys are written slot by slot and sorted within a slot, and containers in their own order, so
//! two keyspaces with the same contents and orders produce identical bytes; restoring reproduces
//! the orders (hash and set insertion order, list order) exactly.

use crate::keyspace::{Entry, Keyspace};
use crate::stream::{Consumer, Group, Node, Pending, Stream, StreamId};
use crate::value::{Value, ZSet};
use std::collections::VecDeque;

const MAGIC: &[u8; 8] = b"CAIRNSNP";
pub const VERSION: u32 = 1;
const DUMP_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SnapshotError {
    #[error("not a cairn snapshot")]
    BadMagic,
    #[error("snapshot version {0} is newer than this cairn understands ({VERSION})")]
    UnknownVersion(u32),
    #[error("snapshot checksum mismatch")]
    Checksum,
    #[error("snapshot is truncated or malformed")]
    Malformed,
}

pub fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3)
    })
}

/// An order-independent digest of a keyspace, for comparing replicas: equal datasets (keys,
/// values with their element order, deadlines) give equal digests however their maps are laid
/// out. 40 hex digits, all zeros when empty, like Redis's `DEBUG DIGEST` (whose bytes differ).
pub fn digest(ks: &Keyspace) -> String {
    let mut d = Digest::default();
    d.add(ks);
    d.finish()
}

/// The digest of several keyspaces taken as one (a node's shards): the same as [`digest`] of
/// one keyspace holding all their keys, since the per-key hashes are combined in an order-free
/// way.
#[derive(Default)]
pub struct Digest {
    sum: u64,
    mix: u64,
    len: usize,
}

impl Digest {
    pub fn add(&mut self, ks: &Keyspace) {
        let mut record = Vec::new();
        for (key, entry) in ks.iter() {
            record.clear();
            put_bytes(&mut record, key);
            put_value(&mut record, &entry.value);
            record.extend_from_slice(&entry.expire_at_ms.to_le_bytes());
            let h = fnv1a(&record);
            self.sum = self.sum.wrapping_add(h);
            self.mix ^= h.rotate_left(17).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
        self.len += ks.served_len();
    }

    pub fn finish(&self) -> String {
        if self.len == 0 {
            return "0".repeat(40);
        }
        format!("{:016x}{:016x}{:08x}", self.sum, self.mix, self.len as u32)
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Str(s) => {
            out.push(0);
            put_bytes(out, s);
        }
        Value::List(l) => {
            out.push(1);
            out.extend_from_slice(&(l.len() as u64).to_le_bytes());
            l.iter().for_each(|i| put_bytes(out, i));
        }
        Value::Set(s) => {
            out.push(2);
            out.extend_from_slice(&(s.len() as u64).to_le_bytes());
            s.iter().for_each(|i| put_bytes(out, i));
        }
        Value::Hash(h) => {
            out.push(3);
            out.extend_from_slice(&(h.len() as u64).to_le_bytes());
            for (k, v) in h.iter() {
                put_bytes(out, k);
                put_bytes(out, v);
            }
        }
        Value::ZSet(z) => {
            out.push(4);
            out.extend_from_slice(&(z.len() as u64).to_le_bytes());
            for (m, s) in z.iter() {
                put_bytes(out, m);
                out.extend_from_slice(&s.to_bits().to_le_bytes());
            }
        }
        Value::Stream(s) => {
            out.push(5);
            put_stream(out, s);
        }
    }
}

fn put_id(out: &mut Vec<u8>, id: StreamId) {
    out.extend_from_slice(&id.ms.to_le_bytes());
    out.extend_from_slice(&id.seq.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

/// A stream: `last_id | max_deleted | entries_added u64 | count u64, (id, count u64, field or
/// value...)... | nodes: count u64, (first id, last id, live u64, total u64, bytes u64)... |
/// groups: count u64, (name, last_id, entries_read i64, PEL count u64, (id, consumer,
/// delivery_time u64, delivery_count u64)..., consumers count u64, (name, seen_time u64)...)...`
/// (IDs as two u64). Consumers' own PELs are rebuilt from the group's.
fn put_stream(out: &mut Vec<u8>, s: &Stream) {
    put_id(out, s.last_id);
    put_id(out, s.max_deleted);
    put_u64(out, s.entries_added);
    put_u64(out, s.entries.len() as u64);
    for (id, fields) in &s.entries {
        put_id(out, *id);
        put_u64(out, fields.len() as u64);
        fields.iter().for_each(|f| put_bytes(out, f));
    }
    put_u64(out, s.nodes.len() as u64);
    for n in &s.nodes {
        put_id(out, n.first);
        put_id(out, n.last);
        put_u64(out, n.live);
        put_u64(out, n.total);
        put_u64(out, n.bytes as u64);
    }
    put_u64(out, s.groups.len() as u64);
    for (name, g) in &s.groups {
        put_bytes(out, name);
        put_id(out, g.last_id);
        out.extend_from_slice(&g.entries_read.to_le_bytes());
        put_u64(out, g.pel.len() as u64);
        for (id, p) in &g.pel {
            put_id(out, *id);
            put_bytes(out, &p.consumer);
            put_u64(out, p.delivery_time);
            put_u64(out, p.delivery_count);
        }
        put_u64(out, g.consumers.len() as u64);
        for (name, c) in &g.consumers {
            put_bytes(out, name);
            put_u64(out, c.seen_time);
        }
    }
}

/// Writes the whole keyspace.
pub fn write(ks: &Keyspace) -> Vec<u8> {
    let mut out = begin(ks);
    for slot in 0..crate::slot::SLOTS {
        write_slot(ks, slot, &mut out);
    }
    finish(out)
}

/// The same bytes as [`write`], in pieces: `begin`, then `write_slot` for every slot in
/// order, then `finish`. A caller may let go of the keyspace between pieces (to keep a lock
/// short) if nothing changes it meanwhile.
pub fn begin(ks: &Keyspace) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ks.len() * 32);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(ks.len() as u64).to_le_bytes());
    out
}

/// Appends one slot's keys, sorted.
pub fn write_slot(ks: &Keyspace, slot: usize, out: &mut Vec<u8>) {
    if ks.slot_len(slot) == 0 {
        return;
    }
    let mut entries: Vec<(&[u8], &Entry)> = ks.iter_slot(slot).collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    for (k, e) in entries {
        put_bytes(out, k);
        out.extend_from_slice(&e.expire_at_ms.to_le_bytes());
        put_value(out, &e.value);
    }
}

/// Appends the checksum.
pub fn finish(mut out: Vec<u8>) -> Vec<u8> {
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        let end = self.pos.checked_add(n).ok_or(SnapshotError::Malformed)?;
        let s = self
            .data
            .get(self.pos..end)
            .ok_or(SnapshotError::Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn bytes(&mut self) -> Result<Vec<u8>, SnapshotError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    /// A count that cannot claim more items than bytes remain (each item takes at least 4).
    fn count(&mut self) -> Result<usize, SnapshotError> {
        let n = self.u64()?;
        if n > (self.data.len() - self.pos) as u64 / 4 {
            return Err(SnapshotError::Malformed);
        }
        Ok(n as usize)
    }
    fn id(&mut self) -> Result<StreamId, SnapshotError> {
        Ok(StreamId::new(self.u64()?, self.u64()?))
    }

    /// Reads what [`put_stream`] wrote, refusing anything inconsistent (IDs out of order, a
    /// pending entry of an unknown consumer, node counts that do not match the entries).
    fn stream(&mut self) -> Result<Stream, SnapshotError> {
        let mut s = Stream {
            last_id: self.id()?,
            max_deleted: self.id()?,
            entries_added: self.u64()?,
            ..Stream::default()
        };
        let n = self.count()?;
        let mut previous = None;
        for _ in 0..n {
            let id = self.id()?;
            if previous.is_some_and(|p| p >= id) || id > s.last_id {
                return Err(SnapshotError::Malformed);
            }
            previous = Some(id);
            let count = self.count()?;
            if count == 0 || !count.is_multiple_of(2) {
                return Err(SnapshotError::Malformed);
            }
            let mut fields = Vec::with_capacity(count);
            for _ in 0..count {
                fields.push(self.bytes()?);
            }
            s.entries.insert(id, fields);
        }
        let nodes = self.count()?;
        for _ in 0..nodes {
            let node = Node {
                first: self.id()?,
                last: self.id()?,
                live: self.u64()?,
                total: self.u64()?,
                bytes: self.u64()? as usize,
            };
            let present = s.entries.range(node.first..=node.last).count() as u64;
            if node.first > node.last || node.live == 0 || present != node.live {
                return Err(SnapshotError::Malformed);
            }
            s.nodes.push_back(node);
        }
        if s.nodes.iter().map(|n| n.live).sum::<u64>() != s.entries.len() as u64 {
            return Err(SnapshotError::Malformed);
        }
        let groups = self.count()?;
        for _ in 0..groups {
            let name = self.bytes()?;
            let mut g = Group::new(self.id()?, self.u64()? as i64);
            let pending = self.count()?;
            for _ in 0..pending {
                let id = self.id()?;
                let p = Pending {
                    consumer: self.bytes()?,
                    delivery_time: self.u64()?,
                    delivery_count: self.u64()?,
                };
                g.pel.insert(id, p);
            }
            let consumers = self.count()?;
            for _ in 0..consumers {
                let name = self.bytes()?;
                let c = Consumer {
                    seen_time: self.u64()?,
                    pel: Default::default(),
                };
                g.consumers.insert(name, c);
            }
            for (id, p) in &g.pel {
                let c = g
                    .consumers
                    .get_mut(&p.consumer)
                    .ok_or(SnapshotError::Malformed)?;
                c.pel.insert(*id);
            }
            s.groups.insert(name, g);
        }
        Ok(s)
    }

    fn value(&mut self) -> Result<Value, SnapshotError> {
        Ok(match self.u8()? {
            0 => Value::Str(self.bytes()?),
            1 => {
                let n = self.count()?;
                let mut l = VecDeque::with_capacity(n);
                for _ in 0..n {
                    l.push_back(self.bytes()?);
                }
                Value::List(Box::new(l))
            }
            2 => {
                let n = self.count()?;
                let mut s = crate::value::SetValue::default();
                for _ in 0..n {
                    s.insert(self.bytes()?);
                }
                Value::Set(Box::new(s))
            }
            3 => {
                let n = self.count()?;
                let mut h = crate::value::HashValue::default();
                for _ in 0..n {
                    let k = self.bytes()?;
                    h.insert(k, self.bytes()?);
                }
                Value::Hash(Box::new(h))
            }
            4 => {
                let n = self.count()?;
                let mut z = ZSet::default();
                for _ in 0..n {
                    let m = self.bytes()?;
                    let score = f64::from_bits(self.u64()?);
                    if score.is_nan() {
                        return Err(SnapshotError::Malformed);
                    }
                    z.insert(&m, score);
                }
                Value::ZSet(Box::new(z))
            }
            5 => Value::Stream(Box::new(self.stream()?)),
            _ => return Err(SnapshotError::Malformed),
        })
    }
}

/// Reads a snapshot written by [`write`] into a fresh keyspace.
pub fn read(data: &[u8]) -> Result<Keyspace, SnapshotError> {
    if data.len() < MAGIC.len() + 4 + 8 + 8 || &data[..8] != MAGIC {
        return Err(SnapshotError::BadMagic);
    }
    let (body, sum) = data.split_at(data.len() - 8);
    let mut r = Reader { data: body, pos: 8 };
    let version = r.u32()?;
    if version != VERSION {
        return Err(SnapshotError::UnknownVersion(version));
    }
    if fnv1a(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
        return Err(SnapshotError::Checksum);
    }
    let n = r.count()?;
    let mut ks = Keyspace::default();
    for _ in 0..n {
        let key = r.bytes()?;
        let expire_at_ms = r.u64()?;
        let value = r.value()?;
        ks.insert_entry(
            &key,
            Entry {
                value,
                expire_at_ms,
            },
        );
    }
    if r.pos != body.len() {
        return Err(SnapshotError::Malformed);
    }
    Ok(ks)
}

/// The DUMP payload: version byte, the value, and a checksum.
pub fn dump_value(v: &Value) -> Vec<u8> {
    let mut out = vec![DUMP_VERSION];
    put_value(&mut out, v);
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

/// Reads a DUMP payload; None if it is not one this cairn wrote.
pub fn restore_value(payload: &[u8]) -> Option<Value> {
    if payload.len() < 9 || payload[0] != DUMP_VERSION {
        return None;
    }
    let (body, sum) = payload.split_at(payload.len() - 8);
    if fnv1a(body) != u64::from_le_bytes(sum.try_into().ok()?) {
        return None;
    }
    let mut r = Reader { data: body, pos: 1 };
    let v = r.value().ok()?;
    (r.pos == body.len()).then_some(v)
}
