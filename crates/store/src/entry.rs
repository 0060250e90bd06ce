//! The log entry: what a shard's leader proposes and every replica applies.
//!
//! An entry carries everything apply may depend on besides the state itself: the leader's clock
//! (`now_ms`), a random seed, and the client's protocol (which shapes replies, never state). Its
//! operation is one atomic unit: a single command, a whole MULTI/EXEC block, or the keys active
//! expiry found due, which are deleted only if still expired at the entry's time.
//!
//! Layout (little-endian): `version u8 | now_ms u64 | seed u64 | proto u8 | kind u8 | count u32 |
//! items`, where a command is `argc u32` then `len u32 + bytes` per argument and an expiry
//! item is one key as `len u32 + bytes`. A transaction with watched keys (kind 3) puts
//! `count u32 | (key, index u64)...` before its commands.

use crate::Store;
use cairn_resp::{Protocol, Reply};

pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Operation {
    /// Commands applied as one atomic unit (a client's pipeline of independent commands).
    Commands(Vec<Vec<Vec<u8>>>),
    /// A MULTI/EXEC block: atomic, and answered as one array even with one command.
    Transaction(Vec<Vec<Vec<u8>>>),
    /// Keys the leader found past their deadline.
    Expire(Vec<Vec<u8>>),
    /// A MULTI/EXEC block after WATCH: each key with the log index it was watched at. It runs
    /// only if no watched key changed since (see `watch.rs`); else it answers a nil array.
    WatchedTransaction {
        watched: Vec<(Vec<u8>, u64)>,
        cmds: Vec<Vec<Vec<u8>>>,
    },
}

fn put_commands(out: &mut Vec<u8>, cmds: &[Vec<Vec<u8>>]) {
    out.extend_from_slice(&(cmds.len() as u32).to_le_bytes());
    for argv in cmds {
        out.extend_from_slice(&(argv.len() as u32).to_le_bytes());
        argv.iter().for_each(|a| put_bytes(out, a));
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub now_ms: u64,
    pub seed: u64,
    pub proto: Protocol,
    pub op: Operation,
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EntryError {
    #[error("log entry version {0} is newer than this cairn understands")]
    UnknownVersion(u8),
    #[error("log entry is truncated or malformed")]
    Malformed,
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

impl LogEntry {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64);
        out.push(VERSION);
        out.extend_from_slice(&self.now_ms.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.push(if self.proto == Protocol::Resp3 { 3 } else { 2 });
        match &self.op {
            Operation::Commands(cmds) | Operation::Transaction(cmds) => {
                out.push(if matches!(self.op, Operation::Transaction(_)) {
                    2
                } else {
                    0
                });
                put_commands(&mut out, cmds);
            }
            Operation::WatchedTransaction { watched, cmds } => {
                out.push(3);
                out.extend_from_slice(&(watched.len() as u32).to_le_bytes());
                for (key, index) in watched {
                    put_bytes(&mut out, key);
                    out.extend_from_slice(&index.to_le_bytes());
                }
                put_commands(&mut out, cmds);
            }
            Operation::Expire(keys) => {
                out.push(1);
                out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
                keys.iter().for_each(|k| put_bytes(&mut out, k));
            }
        }
        out
    }

    pub fn decode(data: &[u8]) -> Result<LogEntry, EntryError> {
        let mut r = Reader { data, pos: 0 };
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryError::UnknownVersion(version));
        }
        let now_ms = r.u64()?;
        let seed = r.u64()?;
        let proto = if r.u8()? == 3 {
            Protocol::Resp3
        } else {
            Protocol::Resp2
        };
        let op = match r.u8()? {
            0 => Operation::Commands(r.commands()?),
            2 => Operation::Transaction(r.commands()?),
            3 => {
                let n = r.count()?;
                let mut watched = Vec::with_capacity(n);
                for _ in 0..n {
                    watched.push((r.bytes()?, r.u64()?));
                }
                Operation::WatchedTransaction {
                    watched,
                    cmds: r.commands()?,
                }
            }
            1 => {
                let n = r.count()?;
                let mut keys = Vec::with_capacity(n);
                for _ in 0..n {
                    keys.push(r.bytes()?);
                }
                Operation::Expire(keys)
            }
            _ => return Err(EntryError::Malformed),
        };
        if r.pos != data.len() {
            return Err(EntryError::Malformed);
        }
        Ok(LogEntry {
            now_ms,
            seed,
            proto,
            op,
        })
    }
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], EntryError> {
        let end = self.pos.checked_add(n).ok_or(EntryError::Malformed)?;
        let s = self.data.get(self.pos..end).ok_or(EntryError::Malformed)?;
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, EntryError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, EntryError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    /// A count, which can never exceed what the remaining bytes could hold (4 bytes an item).
    fn count(&mut self) -> Result<usize, EntryError> {
        let n = self.u32()? as usize;
        if n > (self.data.len() - self.pos) / 4 {
            return Err(EntryError::Malformed);
        }
        Ok(n)
    }
    fn commands(&mut self) -> Result<Vec<Vec<Vec<u8>>>, EntryError> {
        let n = self.count()?;
        let mut cmds = Vec::with_capacity(n);
        for _ in 0..n {
            let argc = self.count()?;
            let mut argv = Vec::with_capacity(argc);
            for _ in 0..argc {
                argv.push(self.bytes()?);
            }
            if argv.is_empty() {
                return Err(EntryError::Malformed);
            }
            cmds.push(argv);
        }
        Ok(cmds)
    }
    fn bytes(&mut self) -> Result<Vec<u8>, EntryError> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
}

impl Store {
    /// Applies one log entry and returns a reply for each command in it (one for an expiry).
    /// Deterministic: the same entry on the same state gives the same state and replies.
    pub fn apply_entry(&mut self, entry: &LogEntry) -> Vec<Reply> {
        let replies = self.apply_entry_quietly(entry);
        self.watches.blocked.wake_ready();
        replies
    }

    fn apply_entry_quietly(&mut self, entry: &LogEntry) -> Vec<Reply> {
        self.txns.clock = self.txns.clock.max(entry.now_ms);
        match &entry.op {
            Operation::WatchedTransaction { watched, cmds } => {
                if self.watch_conflict(watched, entry.now_ms) {
                    return vec![];
                }
                self.run_commands(entry, cmds)
            }
            Operation::Commands(cmds) | Operation::Transaction(cmds) => {
                self.run_commands(entry, cmds)
            }
            Operation::Expire(keys) => {
                let mut removed = 0;
                for key in keys {
                    // A locked key keeps its value until its transaction ends (reads see it
                    // as gone all the same); a later expiry entry removes it.
                    if self.keyspace.is_expired_in_place(key, entry.now_ms)
                        && !self.txns.is_locked(key)
                    {
                        self.keyspace.remove(key);
                        self.watches.touched(key);
                        self.moves.modified(key);
                        self.events.push(crate::notify::EXPIRED, "expired", key);
                        self.dirty += 1;
                        removed += 1;
                    }
                }
                vec![Reply::Int(removed)]
            }
        }
    }

    /// Whether a watched transaction must abort: a watched key changed after it was watched, or
    /// has expired by the entry's time without being deleted yet (Redis aborts on expiry too;
    /// a key already expired when watched aborts here as well, which Redis would not do).
    pub fn watch_conflict(&self, watched: &[(Vec<u8>, u64)], now_ms: u64) -> bool {
        watched.iter().any(|(key, since)| {
            self.watches.changed_since(key, *since)
                || self.keyspace.is_expired_in_place(key, now_ms)
        })
    }

    fn run_commands(&mut self, entry: &LogEntry, cmds: &[Vec<Vec<u8>>]) -> Vec<Reply> {
        cmds.iter()
            .enumerate()
            .map(|(i, argv)| {
                let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
                let env = crate::Env {
                    now_ms: entry.now_ms,
                    seed: entry.seed.wrapping_add(i as u64),
                    proto: entry.proto,
                };
                if name == crate::cmd::migrate::NAME {
                    return self.migrate(argv, &env);
                }
                if name == crate::txn::NAME {
                    return self.txn(argv, &env);
                }
                // A container command (XGROUP CREATE) is implemented as `parent|sub`.
                let found = crate::cmd::handler(&name).or_else(|| {
                    let sub = String::from_utf8_lossy(argv.get(1)?).to_ascii_lowercase();
                    crate::cmd::handler(&format!("{name}|{sub}"))
                });
                match found {
                    Some(h) => self.execute(h, argv, &env),
                    // The leader only proposes commands it knows; a newer leader's command
                    // on an older replica answers the same error everywhere.
                    None => Reply::error(format!("ERR unknown command '{name}' in log entry")),
                }
            })
            .collect()
    }

    /// Keys whose deadline has passed at `now_ms`, earliest first, at most `max`: what the
    /// leader proposes as an [`Operation::Expire`] entry. Reads only.
    pub fn due_keys(&self, now_ms: u64, max: usize) -> Vec<Vec<u8>> {
        self.keyspace.due(now_ms, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Operation) -> LogEntry {
        LogEntry {
            now_ms: 1_700_000_000_000,
            seed: 42,
            proto: Protocol::Resp3,
            op,
        }
    }

    #[test]
    fn watched_transactions_round_trip() {
        let e = entry(Operation::WatchedTransaction {
            watched: vec![(b"k".to_vec(), 41), (b"".to_vec(), u64::MAX)],
            cmds: vec![vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()]],
        });
        let bytes = e.encode();
        assert_eq!(LogEntry::decode(&bytes).unwrap(), e);
        for cut in 0..bytes.len() {
            assert!(LogEntry::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn round_trips_and_refuses_damage() {
        let e = entry(Operation::Commands(vec![
            vec![b"SET".to_vec(), b"k".to_vec(), b"v".to_vec()],
            vec![b"INCR".to_vec(), b"n".to_vec()],
        ]));
        let bytes = e.encode();
        assert_eq!(LogEntry::decode(&bytes).unwrap(), e);
        for cut in 0..bytes.len() {
            assert!(
                LogEntry::decode(&bytes[..cut]).is_err(),
                "truncated at {cut}"
            );
        }
        let mut future = bytes.clone();
        future[0] = 9;
        assert_eq!(
            LogEntry::decode(&future),
            Err(EntryError::UnknownVersion(9))
        );
        let t = entry(Operation::Transaction(vec![vec![
            b"INCR".to_vec(),
            b"n".to_vec(),
        ]]));
        assert_eq!(LogEntry::decode(&t.encode()).unwrap(), t);
        let x = entry(Operation::Expire(vec![b"a".to_vec(), b"b".to_vec()]));
        assert_eq!(LogEntry::decode(&x.encode()).unwrap(), x);
    }

    #[test]
    fn a_huge_count_with_no_bytes_behind_it_is_refused_without_allocating() {
        let mut bytes = entry(Operation::Commands(vec![])).encode();
        let n = bytes.len();
        bytes[n - 4..].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(LogEntry::decode(&bytes), Err(EntryError::Malformed));
    }

    #[test]
    fn expiry_entries_delete_only_what_is_still_expired_at_their_time() {
        let mut s = Store::new();
        let set = |key: &str, px: &str| {
            entry(Operation::Commands(vec![vec![
                b"SET".to_vec(),
                key.into(),
                b"v".to_vec(),
                b"PX".to_vec(),
                px.into(),
            ]]))
        };
        s.apply_entry(&LogEntry {
            now_ms: 1_000,
            ..set("a", "100")
        });
        s.apply_entry(&LogEntry {
            now_ms: 1_000,
            ..set("b", "100")
        });
        assert_eq!(s.due_keys(1_101, 10), vec![b"a".to_vec(), b"b".to_vec()]);
        // Between the leader's look and the entry's apply, "b" was rewritten without a deadline.
        s.apply_entry(&LogEntry {
            now_ms: 1_050,
            ..entry(Operation::Commands(vec![vec![
                b"SET".to_vec(),
                b"b".to_vec(),
                b"new".to_vec(),
            ]]))
        });
        let r = s.apply_entry(&LogEntry {
            now_ms: 1_101,
            ..entry(Operation::Expire(vec![b"a".to_vec(), b"b".to_vec()]))
        });
        assert_eq!(r, vec![Reply::Int(1)]);
        assert_eq!(s.keyspace.len(), 1, "b survives");
    }
}
