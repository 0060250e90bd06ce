//! The context a command runs in, and the helpers every command family shares.

use crate::keyspace::Keyspace;
use crate::rng::Rng;
use crate::value::Value;
use crate::watch::Watches;
use cairn_resp::{Protocol, Reply};

/// What the log entry carries besides the command: the leader's clock and a random seed.
#[derive(Clone, Copy, Debug)]
pub struct Env {
    pub now_ms: u64,
    pub seed: u64,
    /// The protocol of the client the reply goes to (it shapes replies, never state).
    pub proto: Protocol,
}

/// A command's implementation: `args[0]` is the command name, arity already checked.
pub type Handler = fn(&mut Ctx, &[Vec<u8>]) -> Reply;

pub struct Ctx<'a> {
    pub ks: &'a mut Keyspace,
    pub watches: &'a mut Watches,
    pub moves: &'a mut crate::moves::Moves,
    pub now_ms: u64,
    pub rng: &'a mut Rng,
    pub proto: Protocol,
    /// Modifications this command made.
    pub dirty: u64,
    /// Keyspace notifications.
    pub events: &'a mut crate::notify::Events,
}

impl Ctx<'_> {
    /// Records that `key` changed: counts the change and fails the EXEC of anyone watching it.
    /// Every command calls this exactly where Redis signals a modified key.
    pub fn modified(&mut self, key: &[u8]) {
        self.dirty += 1;
        self.watches.touched(key);
        self.moves.modified(key);
        if self.events.collect_keys {
            self.events.keys.push(key.to_vec());
        }
    }

    /// Reports a keyspace event (`notifyKeyspaceEvent` in Redis): called with Redis's class
    /// and event name, in Redis's order.
    pub fn notify(&mut self, class: u32, event: &'static str, key: &[u8]) {
        self.events.push(class, event, key);
    }

    /// Removes `key` if its container became empty, reporting `del` as Redis does.
    pub fn drop_if_emptied(&mut self, key: &[u8]) {
        if self.remove_if_empty(key) {
            self.notify(crate::notify::GENERIC, "del", key);
        }
    }

    pub fn resp3(&self) -> bool {
        self.proto == Protocol::Resp3
    }

    /// The live value at `key`, for reading.
    pub fn value(&self, key: &[u8]) -> Option<&Value> {
        self.ks.value(key, self.now_ms)
    }

    /// Removes `key` if its container became empty, silently (one the command itself made
    /// a moment ago and left empty, which Redis never creates).
    pub fn drop_if_empty(&mut self, key: &[u8]) {
        self.remove_if_empty(key);
    }

    fn remove_if_empty(&mut self, key: &[u8]) -> bool {
        let empty = self
            .ks
            .value(key, self.now_ms)
            .is_some_and(Value::is_empty_container);
        if empty {
            self.ks.remove(key);
        }
        empty
    }
}

pub const WRONGTYPE: &str = "WRONGTYPE Operation against a key holding the wrong kind of value";
pub const NOT_INTEGER: &str = "ERR value is not an integer or out of range";
pub const NOT_FLOAT: &str = "ERR value is not a valid float";
pub const SYNTAX: &str = "ERR syntax error";
pub const NO_SUCH_KEY: &str = "ERR no such key";
pub const OVERFLOW: &str = "ERR increment or decrement would overflow";

pub fn wrongtype() -> Reply {
    Reply::error(WRONGTYPE)
}

pub fn syntax() -> Reply {
    Reply::error(SYNTAX)
}

pub fn err(text: &'static str) -> Reply {
    Reply::error(text)
}

/// Parses an integer argument, answering as Redis does when it is not one.
pub fn int_arg(arg: &[u8]) -> Result<i64, Reply> {
    cairn_resp::decode::parse_i64(arg).ok_or_else(|| err(NOT_INTEGER))
}

/// Parses a non-negative integer argument with Redis's "must be positive" message.
pub fn positive_arg(arg: &[u8]) -> Result<i64, Reply> {
    match int_arg(arg)? {
        n if n < 0 => Err(err("ERR value is out of range, must be positive")),
        n => Ok(n),
    }
}

/// Parses a float argument (no NaN), answering as Redis does when it is not one.
pub fn float_arg(arg: &[u8]) -> Result<f64, Reply> {
    crate::numbers::parse_f64(arg).ok_or_else(|| err(NOT_FLOAT))
}

/// Whether `arg` is `word`, ignoring ASCII case.
pub fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

/// Unwraps a `Result<Reply, Reply>`-returning body: both arms are replies.
pub fn reply(r: Result<Reply, Reply>) -> Reply {
    r.unwrap_or_else(|e| e)
}

/// Flattens (item, score) pairs for replies that are flat in RESP2 and pairs in RESP3.
pub fn pairs_reply(resp3: bool, pairs: Vec<(Reply, Reply)>) -> Reply {
    if resp3 {
        Reply::Array(
            pairs
                .into_iter()
                .map(|(a, b)| Reply::Array(vec![a, b]))
                .collect(),
        )
    } else {
        Reply::Array(pairs.into_iter().flat_map(|(a, b)| [a, b]).collect())
    }
}

/// Turns Redis-style start/end indexes (negative from the end) into a clamped range over `len`.
/// None when the range is empty.
pub fn clamp_range(start: i64, end: i64, len: usize) -> Option<(usize, usize)> {
    let len = len as i64;
    let mut s = if start < 0 { len + start } else { start };
    let mut e = if end < 0 { len + end } else { end };
    if s < 0 {
        s = 0;
    }
    if s > e || s >= len {
        return None;
    }
    if e >= len {
        e = len - 1;
    }
    Some((s as usize, e as usize))
}

/// Bytes of a list of strings as bulk replies.
pub fn bulks<'a>(items: impl IntoIterator<Item = &'a Vec<u8>>) -> Reply {
    Reply::Array(items.into_iter().map(|b| Reply::Bulk(b.clone())).collect())
}
