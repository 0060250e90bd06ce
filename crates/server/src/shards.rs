//! The keyspace divided into shards: which shard owns each of the 16384 hash slots, and each
//! shard's store.
//!
//! A shard is one Raft group (its id is the group's) with a store of its own: a snapshot, a
//! WATCH stamp or a log index always belongs to exactly one shard. A standalone server is one
//! shard owning every slot. In replicated mode the slots are split into contiguous ranges of
//! equal size when the cluster is created (`--shards`, by default one shard per initial node so
//! that every node can lead one); the count is recorded in the data directory and may not
//! change afterwards. Slots then move between shards online (`cmd/reshard.rs`): which shard
//! serves a slot is decided in the shards' own logs (`cairn_store::moves`), and this map
//! follows them: it is where requests are sent, kept current by every apply that makes a
//! shard serve a slot, each with the slot's ownership epoch so that the newest claim wins
//! whatever order the shards replay in.

use cairn_store::keyspace::SlotSet;
use cairn_store::slot::{key_slot, SLOTS};
use cairn_store::Store;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// The most shards a cluster may be created with: every shard costs each of its replicas a
/// Raft group (ticks, heartbeats, a log) even when idle.
pub const MAX_SHARDS: usize = 256;

/// Keys that live in different shards (`-CROSSSLOT` for now).
#[derive(Debug, PartialEq)]
pub struct CrossShard;

/// Slot → the shard that serves it, as far as this node has applied: `epoch << 16 | group`
/// per slot.
pub struct SlotOwners(Vec<AtomicU64>);

impl SlotOwners {
    pub fn group(&self, slot: usize) -> u64 {
        self.0[slot].load(Ordering::Relaxed) & 0xffff
    }

    pub fn epoch(&self, slot: usize) -> u64 {
        self.0[slot].load(Ordering::Relaxed) >> 16
    }

    /// Records that `group` serves `slot` from ownership `epoch` on, unless a newer epoch is
    /// known already.
    pub fn claim(&self, slot: usize, group: u64, epoch: u64) {
        debug_assert!(group <= 0xffff && epoch < 1 << 48);
        let new = epoch << 16 | group;
        let _ = self.0[slot].fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
            (epoch > old >> 16).then_some(new)
        });
    }
}

pub struct Shards {
    owner: Arc<SlotOwners>,
    /// Indexed by group id (0, the meta group, has none). Shards are only ever added (a split
    /// creates one at runtime), so a store once there stays, and lookups need no lock.
    stores: Vec<OnceLock<Arc<Mutex<Store>>>>,
    /// The shards the cluster was created with (the even split of the slots among them).
    initial: usize,
}

impl Shards {
    /// One shard, group 1, owning every slot.
    pub fn single() -> Shards {
        Shards::even(1)
    }

    /// `count` shards, groups `1..=count`, shard `i` owning the `i`-th of `count` equal runs of
    /// slots (the split `redis-cli --cluster create` makes).
    pub fn even(count: usize) -> Shards {
        assert!(
            (1..=MAX_SHARDS).contains(&count),
            "shard count {count} out of range"
        );
        // As redis-cli --cluster create splits: shard i ends at round((i + 1) * SLOTS / count - 1).
        let per = SLOTS as f64 / count as f64;
        let mut owner = Vec::with_capacity(SLOTS);
        for i in 0..count {
            let last = if i + 1 == count {
                SLOTS - 1
            } else {
                ((i as f64 + 1.0) * per - 1.0).round() as usize
            };
            owner.resize(last + 1, i as u64 + 1);
        }
        let stores: Vec<OnceLock<Arc<Mutex<Store>>>> =
            (0..=MAX_SHARDS).map(|_| OnceLock::new()).collect();
        for g in 1..=count as u64 {
            let mut served = SlotSet::none();
            (0..SLOTS)
                .filter(|&s| owner[s] == g)
                .for_each(|s| served.set(s, true));
            let _ = stores[g as usize].set(Arc::new(Mutex::new(Store::serving(served))));
        }
        let owner = SlotOwners(owner.into_iter().map(AtomicU64::new).collect());
        Shards {
            owner: Arc::new(owner),
            stores,
            initial: count,
        }
    }

    /// How many shards the cluster was created with.
    pub fn initial(&self) -> usize {
        self.initial
    }

    /// Adds shard `group`, serving no slot yet (slots are moved into it), unless it exists;
    /// returns its store either way. None for an id out of range.
    pub fn add(&self, group: u64) -> Option<&Arc<Mutex<Store>>> {
        let cell = self.stores.get(group as usize).filter(|_| group > 0)?;
        Some(cell.get_or_init(|| Arc::new(Mutex::new(Store::serving(SlotSet::none())))))
    }

    /// Whether shard `group` exists.
    pub fn has(&self, group: u64) -> bool {
        self.stores
            .get(group as usize)
            .is_some_and(|c| c.get().is_some())
    }

    /// The slot → shard map, for the state machines to keep current.
    pub fn owners(&self) -> &Arc<SlotOwners> {
        &self.owner
    }

    pub fn len(&self) -> usize {
        self.stores().count()
    }

    pub fn is_empty(&self) -> bool {
        self.stores().next().is_none()
    }

    pub fn group_of_slot(&self, slot: usize) -> u64 {
        self.owner.group(slot)
    }

    pub fn group_of_key(&self, key: &[u8]) -> u64 {
        self.owner.group(key_slot(key))
    }

    /// The shard that owns every one of `keys`, or `Err(CrossShard)` when they are in different shards
    /// (`Ok(None)` for no keys). Keys in different slots of one shard are fine: one shard
    /// applies them in one entry.
    pub fn group_of_keys<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Option<u64>, CrossShard> {
        let mut group = None;
        for key in keys {
            let g = self.group_of_key(key);
            match group {
                Some(seen) if seen != g => return Err(CrossShard),
                _ => group = Some(g),
            }
        }
        Ok(group)
    }

    /// The store of shard `group`. Panics for a group that is not a shard: group ids come from
    /// this map.
    pub fn store(&self, group: u64) -> &Arc<Mutex<Store>> {
        self.stores[group as usize]
            .get()
            .unwrap_or_else(|| panic!("shard {group} does not exist"))
    }

    /// Every shard's group id and store, in group order.
    pub fn stores(&self) -> impl Iterator<Item = (u64, &Arc<Mutex<Store>>)> {
        self.stores
            .iter()
            .enumerate()
            .filter_map(|(g, s)| Some((g as u64, s.get()?)))
    }

    /// The store of a standalone server, its only shard.
    pub fn only(&self) -> &Arc<Mutex<Store>> {
        debug_assert_eq!(self.len(), 1, "only() on a sharded keyspace");
        self.store(1)
    }

    /// Each shard's slots as inclusive ranges, in slot order.
    pub fn ranges(&self) -> Vec<(u64, Vec<(usize, usize)>)> {
        let mut out: BTreeMap<u64, Vec<(usize, usize)>> = BTreeMap::new();
        let mut start = 0;
        for slot in 1..=SLOTS {
            if slot == SLOTS || self.group_of_slot(slot) != self.group_of_slot(start) {
                out.entry(self.group_of_slot(start))
                    .or_default()
                    .push((start, slot - 1));
                start = slot;
            }
        }
        out.into_iter().collect()
    }
}

/// The shard count a node uses: the one recorded in its data directory when there is one
/// (a different `--shards` is refused: slots would change owner with data in place), else
/// `explicit` (`--shards`) or else `default()`, recorded for the next start.
pub fn settle_count(
    dir: &std::path::Path,
    explicit: Option<usize>,
    default: impl FnOnce() -> std::io::Result<usize>,
) -> std::io::Result<usize> {
    let path = dir.join("shards");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let recorded: usize = text.trim().parse().map_err(|_| {
                std::io::Error::other(format!("{} is not a shard count", path.display()))
            })?;
            if let Some(wanted) = explicit.filter(|&w| w != recorded) {
                return Err(std::io::Error::other(format!(
                    "this node's data was created with {recorded} shards, not {wanted}; \
                     start it with --shards {recorded} (the shard count of a cluster is fixed)"
                )));
            }
            Ok(recorded)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let wanted = match explicit {
                Some(n) => n,
                None => default()?,
            };
            if !(1..=MAX_SHARDS).contains(&wanted) {
                return Err(std::io::Error::other(format!(
                    "a cluster has 1 to {MAX_SHARDS} shards, not {wanted}"
                )));
            }
            std::fs::create_dir_all(dir)?;
            let tmp = dir.join("shards.tmp");
            std::fs::write(&tmp, format!("{wanted}\n"))?;
            std::fs::File::open(&tmp)?.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(dir)?.sync_all()?;
            Ok(wanted)
        }
        Err(e) => Err(e),
    }
}

/// How many shards a running cluster was created with, asked of its members (CLUSTER INFO's
/// `cairn_initial_shards` on their client ports, bus port - 10000): what a node joining with
/// no `--shards` must use. Tries each member in turn for up to `within`.
pub fn ask_cluster_size(
    members: &[std::net::SocketAddr],
    within: std::time::Duration,
) -> std::io::Result<usize> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + within;
    let ask = |bus: &std::net::SocketAddr| -> Option<usize> {
        let client = std::net::SocketAddr::new(bus.ip(), bus.port().checked_sub(10000)?);
        let timeout = std::time::Duration::from_secs(2);
        let mut s = std::net::TcpStream::connect_timeout(&client, timeout).ok()?;
        s.set_read_timeout(Some(timeout)).ok()?;
        s.write_all(b"*2\r\n$7\r\nCLUSTER\r\n$4\r\nINFO\r\n").ok()?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        while buf.len() < 64 * 1024 {
            let n = s.read(&mut chunk).ok()?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf);
            // The count the cluster was created with (shards split off later are created
            // from the meta group's log, not from this count).
            if let Some(rest) = text.split("cairn_initial_shards:").nth(1) {
                if let Some(end) = rest.find("\r\n") {
                    return rest[..end].trim().parse().ok();
                }
            }
        }
        None
    };
    loop {
        if let Some(n) = members.iter().find_map(ask) {
            return Ok(n);
        }
        if std::time::Instant::now() >= deadline {
            return Err(std::io::Error::other(
                "no member of the cluster told its shard count; start this node with --shards",
            ));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn even_split_covers_every_slot_once_in_contiguous_ranges() {
        for count in [1, 2, 3, 5, 16, 256] {
            let s = Shards::even(count);
            let ranges = s.ranges();
            assert_eq!(ranges.len(), count);
            let mut covered = 0;
            for (i, (group, runs)) in ranges.iter().enumerate() {
                assert_eq!(*group, i as u64 + 1);
                assert_eq!(runs.len(), 1, "one contiguous run per shard");
                let (a, b) = runs[0];
                assert_eq!(a, covered, "no gap, no overlap");
                for slot in a..=b {
                    assert_eq!(s.group_of_slot(slot), *group);
                }
                covered = b + 1;
            }
            assert_eq!(covered, SLOTS);
        }
        // redis-cli --cluster create's split for three masters.
        let three = Shards::even(3).ranges();
        assert_eq!(three[0].1, vec![(0, 5460)]);
        assert_eq!(three[1].1, vec![(5461, 10922)]);
        assert_eq!(three[2].1, vec![(10923, 16383)]);
    }

    #[test]
    fn keys_of_one_shard_share_it_and_others_do_not() {
        let s = Shards::even(3);
        // Hash tags put keys in one slot; "a" (15495) and "b" (3300) are in shards 3 and 1.
        let tagged: [&[u8]; 2] = [b"{user}:1", b"{user}:2"];
        assert!(s.group_of_keys(tagged).unwrap().is_some());
        let apart: [&[u8]; 2] = [b"a", b"b"];
        assert_eq!(s.group_of_keys(apart), Err(CrossShard));
        assert_eq!(s.group_of_keys(std::iter::empty()), Ok(None));
        // Slots 3300 and 7365: different shards of three, one shard (slots 0-8191) of two.
        let near: [&[u8]; 2] = [b"b", b"c"];
        assert_eq!(key_slot(b"b"), 3300);
        assert_eq!(key_slot(b"c"), 7365);
        assert_eq!(s.group_of_keys(near), Err(CrossShard));
        assert_eq!(Shards::even(2).group_of_keys(near), Ok(Some(1)));
    }

    #[test]
    fn the_recorded_count_wins_and_a_different_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("cairn-shards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let never = || -> std::io::Result<usize> { panic!("the default is not needed") };
        assert_eq!(settle_count(&dir, None, || Ok(4)).unwrap(), 4);
        assert_eq!(settle_count(&dir, Some(4), never).unwrap(), 4);
        assert_eq!(settle_count(&dir, None, never).unwrap(), 4);
        let err = settle_count(&dir, Some(3), never).unwrap_err().to_string();
        assert!(err.contains("created with 4 shards"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
