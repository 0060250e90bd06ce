//! The Redis data types as cairn stores them.
//!
//! Hashes and sets are insertion-ordered (`indexmap`): any order a write can observe, such as the
//! member SPOP takes, then follows from the history of writes alone, identical on every replica
//! and preserved by snapshots, whatever the hash seed of the process.

use foldhash::fast::RandomState;
use indexmap::{IndexMap, IndexSet};
use std::cmp::Ordering;
use std::collections::{BTreeSet, HashMap, VecDeque};

pub type Bytes = Vec<u8>;
pub type HashValue = IndexMap<Bytes, Bytes, RandomState>;
pub type SetValue = IndexSet<Bytes, RandomState>;

pub enum Value {
    Str(Bytes),
    List(Box<VecDeque<Bytes>>),
    Hash(Box<HashValue>),
    Set(Box<SetValue>),
    ZSet(Box<ZSet>),
    Stream(Box<crate::stream::Stream>),
}

impl Value {
    /// The name TYPE reports.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Str(_) => "string",
            Value::List(_) => "list",
            Value::Hash(_) => "hash",
            Value::Set(_) => "set",
            Value::ZSet(_) => "zset",
            Value::Stream(_) => "stream",
        }
    }

    /// The encoding Redis 7.0 would report for a value of this shape under default thresholds.
    pub fn encoding(&self) -> &'static str {
        match self {
            Value::Str(s) if s.len() <= 20 && cairn_resp::decode::parse_i64(s).is_some() => "int",
            Value::Str(s) if s.len() <= 44 => "embstr",
            Value::Str(_) => "raw",
            Value::List(_) => "quicklist",
            Value::Hash(h)
                if h.len() <= 128 && h.iter().all(|(k, v)| k.len() <= 64 && v.len() <= 64) =>
            {
                "listpack"
            }
            Value::Hash(_) => "hashtable",
            Value::Set(s)
                if s.len() <= 512
                    && s.iter().all(|m| cairn_resp::decode::parse_i64(m).is_some()) =>
            {
                "intset"
            }
            Value::Set(_) => "hashtable",
            Value::ZSet(z) if z.len() <= 128 && z.scores.keys().all(|m| m.len() <= 64) => {
                "listpack"
            }
            Value::ZSet(_) => "skiplist",
            Value::Stream(_) => "stream",
        }
    }

    pub fn new_hash() -> Value {
        Value::Hash(Box::default())
    }

    pub fn new_set() -> Value {
        Value::Set(Box::default())
    }

    pub fn new_list() -> Value {
        Value::List(Box::default())
    }

    pub fn new_zset() -> Value {
        Value::ZSet(Box::default())
    }

    /// Deep copy (COPY, SORT ... STORE of the same key, snapshots in tests).
    pub fn duplicate(&self) -> Value {
        match self {
            Value::Str(s) => Value::Str(s.clone()),
            Value::List(l) => Value::List(l.clone()),
            Value::Hash(h) => Value::Hash(h.clone()),
            Value::Set(s) => Value::Set(s.clone()),
            Value::ZSet(z) => Value::ZSet(Box::new(ZSet {
                scores: z.scores.clone(),
                order: z.order.clone(),
            })),
            Value::Stream(s) => Value::Stream(s.clone()),
        }
    }

    /// Whether a container is empty (an empty container key must not exist).
    pub fn is_empty_container(&self) -> bool {
        match self {
            Value::Str(_) => false,
            Value::List(l) => l.is_empty(),
            Value::Hash(h) => h.is_empty(),
            Value::Set(s) => s.is_empty(),
            Value::ZSet(z) => z.is_empty(),
            // A stream outlives its entries: XDEL of the last one leaves an empty stream.
            Value::Stream(_) => false,
        }
    }
}

/// A score with the total order sorted sets need. Scores are never NaN (every path that could
/// make one is refused before it gets here), and -0 orders equal to 0 as in Redis.
#[derive(Clone, Copy, Debug)]
pub struct Score(pub f64);

impl PartialEq for Score {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    fn cmp(&self, other: &Self) -> Ordering {
        debug_assert!(
            !self.0.is_nan() && !other.0.is_nan(),
            "a NaN score reached a sorted set"
        );
        self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal)
    }
}

/// A sorted set: member → score, and (score, member) in order.
#[derive(Default)]
pub struct ZSet {
    pub scores: HashMap<Bytes, f64, RandomState>,
    pub order: BTreeSet<(Score, Bytes)>,
}

impl ZSet {
    pub fn len(&self) -> usize {
        self.scores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scores.is_empty()
    }

    pub fn score(&self, member: &[u8]) -> Option<f64> {
        self.scores.get(member).copied()
    }

    /// Sets `member`'s score. Returns true when the member is new.
    pub fn insert(&mut self, member: &[u8], score: f64) -> bool {
        debug_assert!(!score.is_nan());
        match self.scores.get_mut(member) {
            Some(old) => {
                if *old != score || old.is_sign_negative() != score.is_sign_negative() {
                    self.order.remove(&(Score(*old), member.to_vec()));
                    self.order.insert((Score(score), member.to_vec()));
                    *old = score;
                }
                false
            }
            None => {
                self.scores.insert(member.to_vec(), score);
                self.order.insert((Score(score), member.to_vec()));
                true
            }
        }
    }

    pub fn remove(&mut self, member: &[u8]) -> bool {
        match self.scores.remove(member) {
            Some(score) => {
                self.order.remove(&(Score(score), member.to_vec()));
                true
            }
            None => false,
        }
    }

    /// 0-based rank in ascending order.
    pub fn rank(&self, member: &[u8]) -> Option<usize> {
        let score = self.score(member)?;
        Some(self.order.range(..(Score(score), member.to_vec())).count())
    }

    /// Members in ascending order.
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&[u8], f64)> {
        self.order.iter().map(|(s, m)| (&m[..], s.0))
    }
}
