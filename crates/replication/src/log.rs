//! raft-rs logs through slog; cairn logs through tracing. This drain forwards raft-rs's records
//! as tracing events with target `raft` (so `CAIRN_LOG=warn,raft=info` shows elections,
//! transfers and rejected votes), and costs nothing when that target is off.

use std::fmt::Write;

pub struct TracingDrain;

/// Collects a record's key-value pairs as ` key=value`.
struct Pairs(String);

impl slog::Serializer for Pairs {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let level = match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::Level::ERROR,
            slog::Level::Warning => tracing::Level::WARN,
            slog::Level::Info => tracing::Level::INFO,
            slog::Level::Debug => tracing::Level::DEBUG,
            slog::Level::Trace => tracing::Level::TRACE,
        };
        let enabled = match level {
            tracing::Level::ERROR => tracing::enabled!(target: "raft", tracing::Level::ERROR),
            tracing::Level::WARN => tracing::enabled!(target: "raft", tracing::Level::WARN),
            tracing::Level::INFO => tracing::enabled!(target: "raft", tracing::Level::INFO),
            tracing::Level::DEBUG => tracing::enabled!(target: "raft", tracing::Level::DEBUG),
            tracing::Level::TRACE => tracing::enabled!(target: "raft", tracing::Level::TRACE),
        };
        if !enabled {
            return Ok(());
        }
        let mut pairs = Pairs(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut pairs);
        let _ = slog::KV::serialize(values, record, &mut pairs);
        let msg = format!("{}{}", record.msg(), pairs.0);
        match level {
            tracing::Level::ERROR => tracing::error!(target: "raft", "{msg}"),
            tracing::Level::WARN => tracing::warn!(target: "raft", "{msg}"),
            tracing::Level::INFO => tracing::info!(target: "raft", "{msg}"),
            tracing::Level::DEBUG => tracing::debug!(target: "raft", "{msg}"),
            tracing::Level::TRACE => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}
