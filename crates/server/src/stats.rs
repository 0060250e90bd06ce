//! Server-wide counters for INFO.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Stats {
    pub connections_received: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub commands_processed: AtomicU64,
    pub expired_keys: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub error_replies: AtomicU64,
}

impl Stats {
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
        ] {
            c.store(0, Ordering::Relaxed);
        }
    }
}
