//! Replication: each shard is a Raft group (raft-rs), and every group on a node shares one
//! raft-engine log.
//!
//! [`storage`]: the log of every group on one engine, read by raft-rs and written in batches
//! (one fsync per round for all groups). [`driver`]: the sans-IO multi-raft driver (tick, step,
//! propose, read index, leadership transfer, and one Ready round for every group). [`bus`]: the
//! TCP transport between nodes (framed, batched per peer, reconnecting, with a fault hook).
//! [`node`]: the driver on its own thread with the bus, an async API for proposals and read
//! barriers, read leases and graceful hand-off. [`local`]: an in-process cluster for tests.
//! Still to come: snapshot streaming in chunks.

pub mod bus;
pub mod driver;
pub mod local;
mod log;
pub mod members;
pub mod node;
pub mod storage;

pub use bus::{Bus, BusEvent};
pub use driver::{
    Applied, DriverError, Envelope, GroupConfig, MemberChange, MultiRaft, RoundOutput, StateMachine,
};
pub use local::LocalCluster;
pub use node::{GroupStatus, Node, NodeConfig, NodeError, NodeStatus};
/// raft-rs's message types (conf changes among them), for callers of this crate.
pub use raft::eraftpb;
pub use storage::{GroupStorage, LogEngine, Staged, StorageFault};
