//! Replication: each shard is a Raft group (raft-rs), and every group on a node shares one
//! raft-engine log.
//!
//! Built so far: [`storage`], the log of every group on one engine, read by raft-rs and written
//! in batches (one fsync per round for all groups). Coming with the replication issue: the
//! multi-raft driver (tick, step, Ready for every group in one loop), the cluster bus, snapshot
//! streaming, membership changes.

pub mod storage;

pub use storage::{GroupStorage, LogEngine, Staged, StorageFault};
