//! The stream type: entries by ID, consumer groups with their pending entries, and the
//! bookkeeping Redis 7 keeps beside them (entries added, the largest deleted ID, per-group
//! entries read) from which lag is derived.
//!
//! Everything here is replicated state: every time in it (delivery times, consumers' seen
//! times) comes from the log entry's clock, so every replica holds the same values.
//!
//! Redis keeps entries in listpack nodes of at most `stream-node-max-entries` (100) entries and
//! about `stream-node-max-bytes` (4096) bytes, and approximate trimming (`MAXLEN ~`) removes only
//! whole nodes. cairn keeps the entries in one ordered map and tracks the node boundaries Redis
//! would have (from the same history of appends and deletions) so that `~` trims the same
//! entries. The byte size of a node is an estimate, so streams with large entries may be cut
//! at slightly different places than Redis would.

use crate::value::Bytes;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Redis's `stream-node-max-entries` default.
pub const NODE_MAX_ENTRIES: u64 = 100;
/// Redis's `stream-node-max-bytes` default.
pub const NODE_MAX_BYTES: usize = 4096;

/// A stream entry ID: milliseconds and a sequence number.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    pub const MIN: StreamId = StreamId { ms: 0, seq: 0 };
    pub const MAX: StreamId = StreamId {
        ms: u64::MAX,
        seq: u64::MAX,
    };

    pub fn new(ms: u64, seq: u64) -> StreamId {
        StreamId { ms, seq }
    }

    /// The next ID, None after the last possible one.
    pub fn next(self) -> Option<StreamId> {
        match (self.ms, self.seq) {
            (u64::MAX, u64::MAX) => None,
            (ms, u64::MAX) => Some(StreamId::new(ms + 1, 0)),
            (ms, seq) => Some(StreamId::new(ms, seq + 1)),
        }
    }

    /// The previous ID, None before 0-0.
    pub fn prev(self) -> Option<StreamId> {
        match (self.ms, self.seq) {
            (0, 0) => None,
            (ms, 0) => Some(StreamId::new(ms - 1, u64::MAX)),
            (ms, seq) => Some(StreamId::new(ms, seq - 1)),
        }
    }

    pub fn is_zero(self) -> bool {
        self == StreamId::MIN
    }

    pub fn to_bytes(self) -> Vec<u8> {
        format!("{}-{}", self.ms, self.seq).into_bytes()
    }
}

/// "Unknown" for a group's entries-read counter (Redis's SCG_INVALID_ENTRIES_READ).
pub const INVALID_ENTRIES_READ: i64 = -1;

/// One pending (delivered, not acknowledged) entry of a group.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    pub consumer: Bytes,
    pub delivery_time: u64,
    pub delivery_count: u64,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Consumer {
    pub seen_time: u64,
    /// The IDs this consumer holds (each is also in the group's PEL with this consumer).
    pub pel: BTreeSet<StreamId>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Group {
    pub last_id: StreamId,
    pub entries_read: i64,
    pub pel: BTreeMap<StreamId, Pending>,
    pub consumers: BTreeMap<Bytes, Consumer>,
}

impl Group {
    pub fn new(last_id: StreamId, entries_read: i64) -> Group {
        Group {
            last_id,
            entries_read,
            pel: BTreeMap::new(),
            consumers: BTreeMap::new(),
        }
    }

    /// The consumer named `name`, created (seen now) if absent; its seen time is refreshed.
    pub fn consumer(&mut self, name: &[u8], now: u64) -> &mut Consumer {
        let c = self.consumers.entry(name.to_vec()).or_default();
        c.seen_time = now;
        c
    }

    /// Hands pending entry `id` to `consumer` (already present in `consumers`).
    pub fn assign(&mut self, id: StreamId, consumer: &[u8]) {
        let Some(p) = self.pel.get_mut(&id) else {
            return;
        };
        if p.consumer != consumer {
            if let Some(old) = self.consumers.get_mut(&p.consumer) {
                old.pel.remove(&id);
            }
            p.consumer = consumer.to_vec();
        }
        if let Some(c) = self.consumers.get_mut(consumer) {
            c.pel.insert(id);
        }
    }

    /// Removes pending entry `id` from the group and its consumer; whether it was pending.
    pub fn ack(&mut self, id: StreamId) -> bool {
        match self.pel.remove(&id) {
            Some(p) => {
                if let Some(c) = self.consumers.get_mut(&p.consumer) {
                    c.pel.remove(&id);
                }
                true
            }
            None => false,
        }
    }

    /// Deletes a consumer and its pending entries; how many it had.
    pub fn delete_consumer(&mut self, name: &[u8]) -> Option<usize> {
        let c = self.consumers.remove(name)?;
        for id in &c.pel {
            self.pel.remove(id);
        }
        Some(c.pel.len())
    }

    /// Checks that the group's PEL and its consumers' agree (tests and debug builds).
    pub fn check(&self) {
        let held: usize = self.consumers.values().map(|c| c.pel.len()).sum();
        assert_eq!(held, self.pel.len(), "group PEL and consumer PELs disagree");
        for (name, c) in &self.consumers {
            for id in &c.pel {
                assert_eq!(
                    self.pel.get(id).map(|p| &p.consumer),
                    Some(name),
                    "entry {id:?} held by the wrong consumer"
                );
            }
        }
    }
}

/// Where Redis would have put a node boundary (see the module notes).
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// The node's master ID: the first ID appended to it.
    pub first: StreamId,
    /// The last ID appended to it (deleted or not).
    pub last: StreamId,
    /// Entries not deleted.
    pub live: u64,
    /// Entries appended, deleted or not.
    pub total: u64,
    /// Estimated listpack bytes.
    pub bytes: usize,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stream {
    /// Entry ID → flat field/value list.
    pub entries: BTreeMap<StreamId, Vec<Bytes>>,
    pub last_id: StreamId,
    pub max_deleted: StreamId,
    pub entries_added: u64,
    pub groups: BTreeMap<Bytes, Group>,
    pub nodes: VecDeque<Node>,
}

/// How a trim decides what goes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Trim {
    MaxLen(u64),
    MinId(StreamId),
}

impl Stream {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn first_id(&self) -> StreamId {
        self.entries.keys().next().copied().unwrap_or_default()
    }

    /// The ID of the last entry present (0-0 when empty).
    pub fn last_present(&self) -> StreamId {
        self.entries.keys().next_back().copied().unwrap_or_default()
    }

    /// Appends an entry whose ID the caller checked is above `last_id`.
    pub fn append(&mut self, id: StreamId, fields: Vec<Bytes>) {
        debug_assert!(id > self.last_id, "stream IDs must grow");
        let payload: usize = fields.iter().map(Vec::len).sum();
        let size = 8 + fields.iter().map(|f| f.len() + 2).sum::<usize>();
        let fresh = match self.nodes.back() {
            None => true,
            Some(n) => n.bytes + payload >= NODE_MAX_BYTES || n.total >= NODE_MAX_ENTRIES,
        };
        if fresh {
            self.nodes.push_back(Node {
                first: id,
                last: id,
                live: 0,
                total: 0,
                bytes: 16 + fields.iter().step_by(2).map(|f| f.len() + 2).sum::<usize>(),
            });
        }
        let node = self.nodes.back_mut().expect("a node was just ensured");
        node.last = id;
        node.live += 1;
        node.total += 1;
        node.bytes += size;
        self.entries.insert(id, fields);
        self.last_id = id;
        self.entries_added += 1;
    }

    /// The index of the node holding `id`.
    fn node_of(&self, id: StreamId) -> Option<usize> {
        let after = self.nodes.partition_point(|n| n.first <= id);
        after.checked_sub(1)
    }

    /// Removes entry `id` (XDEL); whether it was there. Does not touch `max_deleted`.
    pub fn delete(&mut self, id: StreamId) -> bool {
        if self.entries.remove(&id).is_none() {
            return false;
        }
        if let Some(i) = self.node_of(id) {
            let node = &mut self.nodes[i];
            node.live -= 1;
            if node.live == 0 {
                self.nodes.remove(i);
            }
        }
        true
    }

    /// Trims as Redis's `streamTrim` does: whole nodes from the head while the condition
    /// allows, then (unless `approx`) single entries of the next node. `limit` bounds the
    /// entries removed (0: no bound). Returns how many went.
    pub fn trim(&mut self, how: Trim, approx: bool, limit: u64) -> u64 {
        let mut deleted = 0u64;
        while let Some(node) = self.nodes.front() {
            if let Trim::MaxLen(max) = how {
                if self.entries.len() as u64 <= max {
                    break;
                }
            }
            if limit > 0 && deleted + node.live > limit {
                break;
            }
            let whole = match how {
                Trim::MaxLen(max) => self.entries.len() as u64 - node.live >= max,
                Trim::MinId(min) => node.last < min,
            };
            if whole {
                let node = self.nodes.pop_front().expect("front exists");
                let ids: Vec<StreamId> = self
                    .entries
                    .range(node.first..=node.last)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.entries.remove(&id);
                }
                deleted += node.live;
                continue;
            }
            if approx {
                break;
            }
            // Single entries of this node, which stays (it keeps at least one entry).
            let (first, last) = (node.first, node.last);
            let ids: Vec<StreamId> = self
                .entries
                .range(first..=last)
                .map(|(id, _)| *id)
                .collect();
            for id in ids {
                let stop = match how {
                    Trim::MaxLen(max) => self.entries.len() as u64 <= max,
                    Trim::MinId(min) => id >= min,
                };
                if stop {
                    break;
                }
                self.entries.remove(&id);
                self.nodes[0].live -= 1;
                deleted += 1;
            }
            // MINID can empty a node whose last appended entry was deleted before: Redis keeps
            // such a node (all tombstones); cairn drops it, a difference only in where later
            // approximate trims may cut.
            if self.nodes[0].live == 0 {
                self.nodes.pop_front();
            }
            break;
        }
        deleted
    }

    /// Redis's `streamRangeHasTombstones` from `start` to the end.
    pub fn has_tombstones_from(&self, start: StreamId) -> bool {
        if self.entries.is_empty() || self.max_deleted.is_zero() {
            return false;
        }
        if self.first_id() > self.max_deleted {
            return false;
        }
        start <= self.max_deleted
    }

    /// Redis's `streamEstimateDistanceFromFirstEverEntry`: the entries-read counter of a
    /// group whose last delivered ID is `id`, or [`INVALID_ENTRIES_READ`].
    pub fn entries_read_at(&self, id: StreamId) -> i64 {
        if self.entries_added == 0 {
            return 0;
        }
        if self.entries.is_empty() && id <= self.last_id {
            return self.entries_added as i64;
        }
        match id.cmp(&self.last_id) {
            std::cmp::Ordering::Equal => return self.entries_added as i64,
            std::cmp::Ordering::Greater => return INVALID_ENTRIES_READ,
            std::cmp::Ordering::Less => {}
        }
        let first = self.first_id();
        if self.max_deleted.is_zero() || self.max_deleted < first {
            let before = (self.entries_added - self.entries.len() as u64) as i64;
            if id < first {
                return before;
            }
            if id == first {
                return before + 1;
            }
        }
        INVALID_ENTRIES_READ
    }

    /// A group's lag, None when it cannot be known.
    pub fn lag(&self, group: &Group) -> Option<i64> {
        if self.entries_added == 0 {
            return Some(0);
        }
        if group.entries_read != INVALID_ENTRIES_READ && !self.has_tombstones_from(group.last_id) {
            return Some(self.entries_added as i64 - group.entries_read);
        }
        match self.entries_read_at(group.last_id) {
            INVALID_ENTRIES_READ => None,
            read => Some(self.entries_added as i64 - read),
        }
    }

    /// Records that `group` delivered entry `id` (Redis's update of last_id and entries_read
    /// when a group reads past its last delivered ID).
    pub fn advance_group(&mut self, group: &[u8], id: StreamId) {
        let tombstones = self.has_tombstones_from(id);
        let estimate = self.entries_read_at(id);
        let added = self.entries_added;
        let Some(g) = self.groups.get_mut(group) else {
            return;
        };
        if id <= g.last_id {
            return;
        }
        if g.entries_read != INVALID_ENTRIES_READ && !tombstones {
            g.entries_read += 1;
        } else if added > 0 {
            g.entries_read = estimate;
        }
        g.last_id = id;
    }

    /// Checks the invariants (tests and debug builds): node bookkeeping matches the entries,
    /// and every group's PELs agree.
    pub fn check(&self) {
        let live: u64 = self.nodes.iter().map(|n| n.live).sum();
        assert_eq!(live, self.entries.len() as u64, "node counts disagree");
        for n in &self.nodes {
            let present = self.entries.range(n.first..=n.last).count() as u64;
            assert_eq!(present, n.live, "node {:?} live count", n.first);
            assert!(n.live > 0, "an empty node was kept");
        }
        if let Some(&last) = self.entries.keys().next_back() {
            assert!(last <= self.last_id, "an entry above the last ID");
        }
        for g in self.groups.values() {
            g.check();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> StreamId {
        StreamId::new(ms, 0)
    }

    fn filled(n: u64) -> Stream {
        let mut s = Stream::default();
        for i in 1..=n {
            s.append(id(i), vec![b"f".to_vec(), b"v".to_vec()]);
        }
        s
    }

    #[test]
    fn ids_step_over_sequence_overflow() {
        assert_eq!(StreamId::new(1, u64::MAX).next(), Some(StreamId::new(2, 0)));
        assert_eq!(StreamId::MAX.next(), None);
        assert_eq!(StreamId::new(2, 0).prev(), Some(StreamId::new(1, u64::MAX)));
        assert_eq!(StreamId::MIN.prev(), None);
    }

    #[test]
    fn nodes_split_at_a_hundred_entries_and_approximate_trim_takes_whole_nodes() {
        let mut s = filled(250);
        assert_eq!(s.nodes.len(), 3);
        s.check();
        // 250 entries in nodes of 100, 100, 50: MAXLEN ~ 180 cannot remove a whole node (150
        // would be left), ~ 150 removes the first one.
        assert_eq!(s.trim(Trim::MaxLen(180), true, 10_000), 0);
        assert_eq!(s.trim(Trim::MaxLen(150), true, 10_000), 100);
        assert_eq!(s.len(), 150);
        // ~ 149 cannot remove the next node (it would leave 50 < 149).
        assert_eq!(s.trim(Trim::MaxLen(149), true, 10_000), 0);
        // Exact trimming cuts inside the node.
        assert_eq!(s.trim(Trim::MaxLen(149), false, 0), 1);
        assert_eq!(s.first_id(), id(102));
        s.check();
    }

    #[test]
    fn deleting_every_entry_of_a_node_drops_it() {
        let mut s = filled(150);
        for i in 1..=100 {
            assert!(s.delete(id(i)));
        }
        assert!(!s.delete(id(1)));
        assert_eq!(s.nodes.len(), 1);
        s.check();
    }

    #[test]
    fn minid_trims_below_the_id() {
        let mut s = filled(150);
        assert_eq!(s.trim(Trim::MinId(id(120)), false, 0), 119);
        assert_eq!(s.first_id(), id(120));
        s.check();
    }

    #[test]
    fn lag_follows_reads_and_becomes_unknown_after_a_deletion_ahead() {
        let mut s = filled(10);
        s.groups.insert(b"g".to_vec(), Group::new(StreamId::MIN, 0));
        s.advance_group(b"g", id(1));
        s.advance_group(b"g", id(2));
        assert_eq!(s.lag(&s.groups[&b"g".to_vec()]), Some(8));
        s.delete(id(5));
        s.max_deleted = id(5);
        assert_eq!(s.lag(&s.groups[&b"g".to_vec()]), None);
    }
}
