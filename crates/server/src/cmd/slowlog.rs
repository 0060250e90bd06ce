//! SLOWLOG GET/LEN/RESET/HELP: the commands that took longer than `slowlog-log-slower-than`
//! microseconds, newest first, at most `slowlog-max-len` of them (Redis's defaults: 10000 and
//! 128). A command's time runs from its start to its reply (replication included, see
//! `crate::stats`), so on a cluster a slow disk or a slow majority shows here.

use crate::connection::ClientInfo;
use crate::dispatch::Call;
use cairn_resp::Reply;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Arguments an entry keeps, and bytes of each (as Redis).
const MAX_ARGS: usize = 32;
const MAX_ARG_BYTES: usize = 128;

struct Entry {
    id: u64,
    at_secs: u64,
    micros: u64,
    args: Vec<Vec<u8>>,
    addr: String,
    name: Vec<u8>,
}

pub struct SlowLog {
    /// `slowlog-log-slower-than` (negative: off; 0: every command).
    pub slower_than_us: AtomicI64,
    /// `slowlog-max-len`.
    pub max_len: AtomicUsize,
    next_id: AtomicU64,
    entries: Mutex<VecDeque<Entry>>,
}

impl Default for SlowLog {
    fn default() -> Self {
        SlowLog {
            slower_than_us: AtomicI64::new(10_000),
            max_len: AtomicUsize::new(128),
            next_id: AtomicU64::new(0),
            entries: Mutex::new(VecDeque::new()),
        }
    }
}

/// What an entry keeps of a command's arguments: at most 32, each at most 128 bytes, saying
/// what was left out (as Redis). Bounded whatever the command's size.
pub fn summarize(args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let secret = secret_positions(args);
    let mut kept: Vec<Vec<u8>> = args
        .iter()
        .take(if args.len() > MAX_ARGS {
            MAX_ARGS - 1
        } else {
            MAX_ARGS
        })
        .enumerate()
        .map(|(i, a)| {
            if secret.contains(&i) {
                b"(redacted)".to_vec()
            } else if a.len() > MAX_ARG_BYTES {
                let mut s = a[..MAX_ARG_BYTES].to_vec();
                s.extend_from_slice(
                    format!("... ({} more bytes)", a.len() - MAX_ARG_BYTES).as_bytes(),
                );
                s
            } else {
                a.clone()
            }
        })
        .collect();
    if args.len() > MAX_ARGS {
        kept.push(format!("... ({} more arguments)", args.len() - MAX_ARGS + 1).into_bytes());
    }
    kept
}

/// The arguments that may hold a password, which Redis writes as `(redacted)`: AUTH's,
/// HELLO's after AUTH, ACL SETUSER's, CONFIG SET requirepass's value, and a node's secret.
fn secret_positions(args: &[Vec<u8>]) -> Vec<usize> {
    let is = |i: usize, w: &str| {
        args.get(i)
            .is_some_and(|a| a.eq_ignore_ascii_case(w.as_bytes()))
    };
    if is(0, "auth") {
        (1..args.len()).collect()
    } else if is(0, "hello") {
        (2..args.len())
            .filter(|&i| is(i, "auth"))
            .flat_map(|i| [i + 1, i + 2])
            .collect()
    } else if is(0, "acl") && is(1, "setuser") {
        (2..args.len()).collect()
    } else if is(0, "config") && is(1, "set") {
        (2..args.len())
            .step_by(2)
            .filter(|&i| is(i, "requirepass"))
            .map(|i| i + 1)
            .collect()
    } else if is(0, "cairn.relay") || is(0, "cairn.meta") {
        (1..args.len()).collect()
    } else {
        Vec::new()
    }
}

impl SlowLog {
    /// Whether anything is logged at all.
    pub fn enabled(&self) -> bool {
        self.slower_than_us.load(Ordering::Relaxed) >= 0
    }

    /// Logs `args` if they took long enough.
    pub fn consider(&self, args: &[Vec<u8>], took: Duration, client: &ClientInfo) {
        if self.is_slow(took) {
            self.log(summarize(args), took, client);
        }
    }

    fn is_slow(&self, took: Duration) -> bool {
        let threshold = self.slower_than_us.load(Ordering::Relaxed);
        threshold >= 0 && took.as_micros() as i64 >= threshold
    }

    /// Logs arguments already summarized (see [`summarize`]) if they took long enough.
    pub fn consider_summary(&self, args: Vec<Vec<u8>>, took: Duration, client: &ClientInfo) {
        if self.is_slow(took) {
            self.log(args, took, client);
        }
    }

    fn log(&self, args: Vec<Vec<u8>>, took: Duration, client: &ClientInfo) {
        let entry = Entry {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            at_secs: crate::now_ms() / 1000,
            micros: took.as_micros() as u64,
            args,
            addr: client.addr.to_string(),
            name: client.name.lock().clone(),
        };
        let max = self.max_len.load(Ordering::Relaxed);
        let mut entries = self.entries.lock();
        entries.push_front(entry);
        entries.truncate(max);
    }

    /// Drops entries past a new `slowlog-max-len`.
    pub fn trim(&self) {
        let max = self.max_len.load(Ordering::Relaxed);
        self.entries.lock().truncate(max);
    }
}

pub fn slowlog_get(c: &mut Call) -> Reply {
    let count = match c.args.get(2) {
        None => 10,
        Some(a) => match cairn_resp::decode::parse_i64(a) {
            Some(-1) => usize::MAX,
            Some(n) if n >= 0 => n as usize,
            _ => return Reply::error("ERR count should be greater than or equal to -1"),
        },
    };
    let entries = c.shared.slowlog.entries.lock();
    Reply::Array(
        entries
            .iter()
            .take(count)
            .map(|e| {
                Reply::Array(vec![
                    Reply::Int(e.id as i64),
                    Reply::Int(e.at_secs as i64),
                    Reply::Int(e.micros as i64),
                    Reply::Array(e.args.iter().cloned().map(Reply::Bulk).collect()),
                    Reply::Bulk(e.addr.clone().into_bytes()),
                    Reply::Bulk(e.name.clone()),
                ])
            })
            .collect(),
    )
}

pub fn slowlog_len(c: &mut Call) -> Reply {
    Reply::Int(c.shared.slowlog.entries.lock().len() as i64)
}

pub fn slowlog_reset(c: &mut Call) -> Reply {
    c.shared.slowlog.entries.lock().clear();
    Reply::OK
}

pub fn slowlog_help(_c: &mut Call) -> Reply {
    Reply::Array(
        [
            "SLOWLOG <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "GET [<count>]",
            "    Return top <count> entries from the slowlog (default: 10, -1 mean all).",
            "    Entries are made of:",
            "    id, timestamp, time in microseconds, arguments array, client IP and port,",
            "    client name",
            "LEN",
            "    Return the length of the slowlog.",
            "RESET",
            "    Reset the slowlog.",
            "HELP",
            "    Print this help.",
        ]
        .into_iter()
        .map(Reply::from)
        .collect(),
    )
}
