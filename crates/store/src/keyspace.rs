//! The keyspace: every key of a shard, partitioned by hash slot, with expiry deadlines.
//!
//! Keys live in one map per slot, so a slot's keys can be counted, listed and moved to another
//! shard without touching the rest, and SCAN walks slot by slot with the slot number as cursor:
//! a full scan returns every key that was present throughout it, however the maps grow.
//!
//! A key whose deadline has passed is logically gone at once: reads (`get`) skip it without
//! changing anything (reads must not write, so that followers and read paths stay pure), and
//! writes (`get_mut`, `insert`) remove it. Active expiry removes due keys earliest-first from the
//! deadline index.

use crate::rng::Rng;
use crate::slot::{key_slot, SLOTS};
use crate::value::Value;
use foldhash::fast::RandomState;
use std::collections::{BTreeSet, HashMap};

pub type Key = Box<[u8]>;
type SlotMap = HashMap<Key, Entry, RandomState>;

pub struct Entry {
    pub value: Value,
    /// Absolute deadline in Unix milliseconds; 0 when the key does not expire.
    pub expire_at_ms: u64,
}

impl Entry {
    pub fn new(value: Value) -> Entry {
        Entry {
            value,
            expire_at_ms: 0,
        }
    }

    /// Redis's rule: a key is expired once the time is strictly past its deadline.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expire_at_ms != 0 && now_ms > self.expire_at_ms
    }
}

pub struct Keyspace {
    /// One map per slot, allocated when the slot gets its first key: an empty map still
    /// costs 48 bytes, and a shard that serves a few slots should not pay for all 16384.
    slots: Vec<Option<Box<SlotMap>>>,
    /// The slots this shard serves: commands see only their keys. A slot's keys can be stored
    /// without being served (copied in ahead of a move, or handed over and not yet dropped):
    /// KEYS, SCAN, RANDOMKEY, DBSIZE and FLUSHALL leave those alone.
    served: SlotSet,
    /// (deadline, key) for every key with a deadline.
    deadlines: BTreeSet<(u64, Key)>,
    len: usize,
}

impl Default for Keyspace {
    fn default() -> Self {
        Keyspace {
            slots: (0..SLOTS).map(|_| None).collect(),
            served: SlotSet::all(),
            deadlines: BTreeSet::new(),
            len: 0,
        }
    }
}

/// A set of hash slots, one bit each.
#[derive(Clone, PartialEq, Eq)]
pub struct SlotSet(Box<[u64; SLOTS / 64]>);

impl SlotSet {
    pub fn all() -> SlotSet {
        SlotSet(Box::new([u64::MAX; SLOTS / 64]))
    }

    pub fn none() -> SlotSet {
        SlotSet(Box::new([0; SLOTS / 64]))
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.0[slot / 64] & (1 << (slot % 64)) != 0
    }

    pub fn set(&mut self, slot: usize, on: bool) {
        if on {
            self.0[slot / 64] |= 1 << (slot % 64);
        } else {
            self.0[slot / 64] &= !(1 << (slot % 64));
        }
    }

    pub fn is_all(&self) -> bool {
        self.0.iter().all(|&w| w == u64::MAX)
    }

    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        (0..SLOTS).filter(|&s| self.contains(s))
    }

    /// The words, for snapshots.
    pub fn words(&self) -> &[u64; SLOTS / 64] {
        &self.0
    }

    pub fn from_words(words: [u64; SLOTS / 64]) -> SlotSet {
        SlotSet(Box::new(words))
    }
}

impl Keyspace {
    /// Keys stored, served or not, including expired ones not yet removed.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Keys in served slots, including expired ones not yet removed (what DBSIZE counts).
    pub fn served_len(&self) -> usize {
        if self.served.is_all() {
            return self.len;
        }
        self.served.iter().map(|s| self.slot_len(s)).sum()
    }

    pub fn serves(&self, slot: usize) -> bool {
        self.served.contains(slot)
    }

    pub fn served(&self) -> &SlotSet {
        &self.served
    }

    /// Starts or stops serving `slot`; its stored keys stay where they are either way.
    pub fn set_served(&mut self, slot: usize, on: bool) {
        self.served.set(slot, on);
    }

    pub fn set_served_slots(&mut self, served: SlotSet) {
        self.served = served;
    }

    /// Drops every key of `slot`; returns how many there were.
    pub fn clear_slot(&mut self, slot: usize) -> usize {
        let Some(map) = self.slots[slot].take() else {
            return 0;
        };
        for (key, e) in map.iter() {
            if e.expire_at_ms != 0 {
                self.deadlines.remove(&(e.expire_at_ms, key.clone()));
            }
        }
        self.len -= map.len();
        map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Keys that carry a deadline.
    pub fn volatile_len(&self) -> usize {
        self.deadlines.len()
    }

    /// The stored entry of `key`, live or expired.
    fn stored(&self, key: &[u8]) -> Option<&Entry> {
        self.slots[key_slot(key)].as_ref()?.get(key)
    }

    fn stored_mut(&mut self, key: &[u8]) -> Option<&mut Entry> {
        self.slots[key_slot(key)].as_mut()?.get_mut(key)
    }

    pub fn get(&self, key: &[u8], now_ms: u64) -> Option<&Entry> {
        self.stored(key).filter(|e| !e.is_expired(now_ms))
    }

    /// Whether `key` is stored but past its deadline (expired, not yet removed).
    pub fn is_expired_in_place(&self, key: &[u8], now_ms: u64) -> bool {
        self.stored(key).is_some_and(|e| e.is_expired(now_ms))
    }

    pub fn value(&self, key: &[u8], now_ms: u64) -> Option<&Value> {
        self.get(key, now_ms).map(|e| &e.value)
    }

    pub fn contains(&self, key: &[u8], now_ms: u64) -> bool {
        self.get(key, now_ms).is_some()
    }

    /// The entry for writing; an expired entry is removed first and `None` returned.
    pub fn get_mut(&mut self, key: &[u8], now_ms: u64) -> Option<&mut Entry> {
        if self.stored(key).is_some_and(|e| e.is_expired(now_ms)) {
            self.remove(key);
            return None;
        }
        self.stored_mut(key)
    }

    /// Sets `key` to `value` with no deadline (as SET does), replacing whatever was there.
    pub fn insert(&mut self, key: &[u8], value: Value) {
        self.insert_entry(key, Entry::new(value));
    }

    pub fn insert_entry(&mut self, key: &[u8], entry: Entry) {
        let at = entry.expire_at_ms;
        let map = self.slots[key_slot(key)].get_or_insert_with(Box::default);
        // Overwriting is the common case (SET on a live key): reuse the stored key, allocate nothing.
        if let Some(existing) = map.get_mut(key) {
            let old_at = std::mem::replace(existing, entry).expire_at_ms;
            if old_at != 0 {
                self.deadlines.remove(&(old_at, key.into()));
            }
        } else {
            map.insert(key.into(), entry);
            self.len += 1;
        }
        if at != 0 {
            self.deadlines.insert((at, key.into()));
        }
    }

    /// Replaces the value, keeping the key's deadline if it has one and is live.
    pub fn replace_value(&mut self, key: &[u8], value: Value, now_ms: u64) {
        match self.get_mut(key, now_ms) {
            Some(e) => e.value = value,
            None => self.insert(key, value),
        }
    }

    /// The value at `key`, created with `make` when absent (or expired).
    pub fn get_or_insert_with(
        &mut self,
        key: &[u8],
        now_ms: u64,
        make: impl FnOnce() -> Value,
    ) -> &mut Entry {
        if self.get_mut(key, now_ms).is_none() {
            self.insert(key, make());
        }
        self.stored_mut(key).expect("just inserted")
    }

    pub fn remove(&mut self, key: &[u8]) -> Option<Entry> {
        let e = self.slots[key_slot(key)].as_mut()?.remove(key)?;
        self.len -= 1;
        if e.expire_at_ms != 0 {
            self.deadlines.remove(&(e.expire_at_ms, key.into()));
        }
        Some(e)
    }

    /// Removes a live key; an expired one is removed too but reported as absent.
    pub fn remove_live(&mut self, key: &[u8], now_ms: u64) -> Option<Entry> {
        self.remove(key).filter(|e| !e.is_expired(now_ms))
    }

    /// Sets or clears (0) the deadline of an existing key. Returns false when the key is absent.
    pub fn set_expire(&mut self, key: &[u8], at_ms: u64) -> bool {
        let Some(e) = self.stored_mut(key) else {
            return false;
        };
        let old = std::mem::replace(&mut e.expire_at_ms, at_ms);
        if old != 0 {
            self.deadlines.remove(&(old, key.into()));
        }
        if at_ms != 0 {
            self.deadlines.insert((at_ms, key.into()));
        }
        true
    }

    /// Up to `max` keys whose deadline has passed, earliest first, without removing them.
    pub fn due(&self, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        self.deadlines
            .iter()
            .take_while(|(at, _)| *at < now_ms)
            .take(max)
            .map(|(_, k)| k.to_vec())
            .collect()
    }

    /// Removes up to `max` keys whose deadline has passed, earliest first.
    pub fn remove_expired(&mut self, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        let mut due = Vec::new();
        for (at, key) in self.deadlines.iter() {
            if due.len() >= max || *at >= now_ms {
                break;
            }
            due.push(key.to_vec());
        }
        for key in &due {
            self.remove(key);
        }
        due
    }

    /// Drops every key of the served slots (FLUSHALL).
    pub fn clear(&mut self) {
        if !self.served.is_all() {
            for slot in 0..SLOTS {
                if self.served.contains(slot) && self.slot_len(slot) > 0 {
                    self.clear_slot(slot);
                }
            }
            return;
        }
        for m in self.slots.iter_mut() {
            *m = None;
        }
        self.deadlines.clear();
        self.len = 0;
    }

    /// Every stored entry of the served slots, slot by slot (expired ones included).
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(slot, _)| self.served.contains(*slot))
            .filter_map(|(_, m)| m.as_deref())
            .flat_map(|m| m.iter().map(|(k, e)| (&k[..], e)))
    }

    pub fn slot_len(&self, slot: usize) -> usize {
        self.slots
            .get(slot)
            .and_then(|m| m.as_deref())
            .map_or(0, HashMap::len)
    }

    /// Every stored entry of one slot (expired ones included).
    pub fn iter_slot(&self, slot: usize) -> impl Iterator<Item = (&[u8], &Entry)> {
        self.slots[slot]
            .iter()
            .flat_map(|m| m.iter())
            .map(|(k, e)| (&k[..], e))
    }

    pub fn slot_keys(&self, slot: usize, now_ms: u64) -> impl Iterator<Item = &[u8]> {
        self.iter_slot(slot)
            .filter(move |(_, e)| !e.is_expired(now_ms))
            .map(|(k, _)| k)
    }

    /// One SCAN step from `cursor` (a slot number): whole slots until at least `count` keys were
    /// visited. Returns the next cursor (0 when done) and the visited live keys.
    pub fn scan(&self, cursor: u64, count: usize, now_ms: u64) -> (u64, Vec<(&[u8], &Entry)>) {
        let mut slot = cursor as usize;
        let mut out = Vec::new();
        let mut visited = 0;
        while slot < SLOTS && visited < count.max(1) {
            if !self.served.contains(slot) {
                slot += 1;
                continue;
            }
            visited += self.slot_len(slot);
            out.extend(self.iter_slot(slot).filter(|(_, e)| !e.is_expired(now_ms)));
            slot += 1;
        }
        let next = if slot >= SLOTS { 0 } else { slot as u64 };
        (next, out)
    }

    /// A random live key, or None when there is none. Tries a bounded number of times.
    pub fn random_key(&self, rng: &mut Rng, now_ms: u64) -> Option<&[u8]> {
        if self.len == 0 {
            return None;
        }
        for _ in 0..100 {
            let start = rng.below(SLOTS);
            let map = (0..SLOTS)
                .map(|i| (start + i) % SLOTS)
                .filter(|&s| self.served.contains(s))
                .filter_map(|s| self.slots[s].as_deref())
                .find(|m| !m.is_empty())?;
            let (k, e) = map
                .iter()
                .nth(rng.below(map.len()))
                .expect("index below len");
            if !e.is_expired(now_ms) {
                return Some(k);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> Value {
        Value::Str(v.as_bytes().to_vec())
    }

    #[test]
    fn expiry_is_lazy_for_reads_and_eager_for_writes() {
        let mut ks = Keyspace::default();
        ks.insert(b"k", s("v"));
        ks.set_expire(b"k", 100);
        assert!(ks.get(b"k", 100).is_some(), "alive at its deadline");
        assert!(ks.get(b"k", 101).is_none());
        assert_eq!(ks.len(), 1, "a read removes nothing");
        assert!(ks.get_mut(b"k", 101).is_none());
        assert_eq!(ks.len(), 0);
        assert_eq!(ks.volatile_len(), 0);
    }

    #[test]
    fn active_expiry_is_earliest_first_and_bounded() {
        let mut ks = Keyspace::default();
        for i in 0..10u64 {
            let k = format!("k{i}");
            ks.insert(k.as_bytes(), s("v"));
            ks.set_expire(k.as_bytes(), 100 - i);
        }
        let gone = ks.remove_expired(1000, 3);
        assert_eq!(gone, vec![b"k9".to_vec(), b"k8".to_vec(), b"k7".to_vec()]);
        assert_eq!(ks.len(), 7);
    }

    #[test]
    fn full_scan_sees_every_key_present_throughout() {
        let mut ks = Keyspace::default();
        for i in 0..2000 {
            ks.insert(format!("stay{i}").as_bytes(), s("v"));
        }
        let mut seen = std::collections::HashSet::new();
        let mut cursor = 0;
        let mut round = 0;
        loop {
            let (next, keys) = ks.scan(cursor, 10, 0);
            seen.extend(keys.iter().map(|(k, _)| k.to_vec()));
            // Churn while scanning: add and remove other keys.
            for j in 0..50 {
                ks.insert(format!("churn{round}-{j}").as_bytes(), s("v"));
                ks.remove(format!("churn{}-{j}", round.max(1) - 1).as_bytes());
            }
            round += 1;
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for i in 0..2000 {
            assert!(
                seen.contains(format!("stay{i}").as_bytes()),
                "missed stay{i}"
            );
        }
    }
}
