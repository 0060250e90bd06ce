//! Server-wide counters for INFO and `/metrics`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (microseconds) of the per-command latency histogram's buckets: powers of two
/// from 1 µs to 16.8 s, as LATENCY HISTOGRAM reports them; one more bucket counts everything
/// slower.
pub const LATENCY_BUCKETS_US: [u64; 25] = {
    let mut b = [0u64; 25];
    let mut i = 0;
    while i < 25 {
        b[i] = 1 << i;
        i += 1;
    }
    b
};

/// One command's counters (INFO commandstats, `/metrics`).
#[derive(Default)]
pub struct CommandStat {
    pub calls: AtomicU64,
    /// Microseconds from the command's start to its reply (replication included).
    pub usec: AtomicU64,
    /// Calls that answered an error.
    pub failed: AtomicU64,
    /// Requests refused before running (wrong arity, ACL), as Redis's `rejected_calls`.
    pub rejected: AtomicU64,
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
}

/// Per command (`parent|sub` for subcommands), built once from the command table.
#[derive(Default)]
pub struct CommandStats {
    by_name: HashMap<String, CommandStat>,
}

impl CommandStats {
    pub fn new(names: impl Iterator<Item = String>) -> CommandStats {
        CommandStats {
            by_name: names.map(|n| (n, CommandStat::default())).collect(),
        }
    }

    /// Records one call of `name` that took `took` and failed or not.
    pub fn record(&self, name: &str, took: Duration, failed: bool) {
        let Some(s) = self.by_name.get(name) else {
            return;
        };
        let us = took.as_micros() as u64;
        s.calls.fetch_add(1, Ordering::Relaxed);
        s.usec.fetch_add(us, Ordering::Relaxed);
        if failed {
            s.failed.fetch_add(1, Ordering::Relaxed);
        }
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        s.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a request for `name` refused before it ran.
    pub fn reject(&self, name: &str) {
        if let Some(s) = self.by_name.get(name) {
            s.rejected.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts the refusal a lookup error stands for, when it names a command (wrong arity).
    pub fn reject_lookup(&self, error: &cairn_resp::Reply) {
        if let cairn_resp::Reply::Error(text) = error {
            if let Some(name) = text
                .strip_prefix("ERR wrong number of arguments for '")
                .and_then(|t| t.strip_suffix("' command"))
            {
                self.reject(name);
            }
        }
    }

    /// The commands called (or refused) at least once, by name.
    pub fn called(&self) -> Vec<(&str, &CommandStat)> {
        let mut v: Vec<(&str, &CommandStat)> = self
            .by_name
            .iter()
            .filter(|(_, s)| {
                s.calls.load(Ordering::Relaxed) > 0 || s.rejected.load(Ordering::Relaxed) > 0
            })
            .map(|(n, s)| (n.as_str(), s))
            .collect();
        v.sort_by_key(|(n, _)| *n);
        v
    }

    pub fn reset(&self) {
        for s in self.by_name.values() {
            for c in [&s.calls, &s.usec, &s.failed, &s.rejected]
                .into_iter()
                .chain(&s.buckets)
            {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub commands_processed: AtomicU64,
    pub expired_keys: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub error_replies: AtomicU64,
    /// Clients closed for passing `client-query-buffer-limit` (Redis 7.2's INFO field).
    pub query_limit_disconnections: AtomicU64,
    pub commands: CommandStats,
    /// Error replies by their code (the first word: `ERR`, `WRONGTYPE`, ...), INFO
    /// errorstats. At most [`MAX_ERROR_CODES`] codes, as Redis keeps.
    pub errors: parking_lot::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// The most distinct error codes counted (Redis's limit): more would let clients that make
/// up error codes (a script's errors) grow the table.
pub const MAX_ERROR_CODES: usize = 128;

impl Stats {
    /// Counts one error reply (its text, without the `-`).
    pub fn error(&self, text: &[u8]) {
        Stats::add(&self.error_replies, 1);
        let end = text
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(text.len());
        let code = String::from_utf8_lossy(&text[..end]).into_owned();
        let mut errors = self.errors.lock();
        if let Some(n) = errors.get_mut(&code) {
            *n += 1;
        } else if errors.len() < MAX_ERROR_CODES {
            errors.insert(code, 1);
        }
    }

    /// Counts the error reply `reply` when it is one.
    pub fn error_reply(&self, reply: &cairn_resp::Reply) {
        if let cairn_resp::Reply::Error(text) = reply {
            self.error(text.as_bytes());
        }
    }

    /// Counts an encoded reply (`-CODE message\r\n`) when it is an error.
    pub fn error_bytes(&self, reply: &[u8]) {
        if let Some(text) = reply.strip_prefix(b"-") {
            self.error(text);
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    pub fn reset(&self) {
        for c in [
            &self.connections_received,
            &self.connections_rejected,
            &self.commands_processed,
            &self.expired_keys,
            &self.protocol_errors,
            &self.error_replies,
            &self.query_limit_disconnections,
        ] {
            c.store(0, Ordering::Relaxed);
        }
        self.commands.reset();
        self.errors.lock().clear();
    }
}
