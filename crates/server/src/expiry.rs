//! Active expiry: a background worker that removes keys whose deadline passed, a bounded number
//! per cycle so that a mass expiry never stalls clients. Under replication the leader runs it
//! and replicates the deletes; the store itself never looks at a clock.

use crate::stats::Stats;
use crate::Shared;
use std::sync::Arc;
use std::time::Duration;

/// Keys removed at most per cycle.
pub const MAX_PER_CYCLE: usize = 1000;

pub async fn run(shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let hz = shared.config.lock().hz.max(1);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(1000 / hz as u64)) => {}
            _ = shutdown.changed() => return,
        }
        let removed = match &shared.replication {
            Some(repl) => crate::replicated::expire_due(&shared, repl).await,
            None => {
                let mut store = shared.shards.only().lock();
                store.events.flags = shared.pubsub.keyspace_flags();
                let removed = store.expire_due(crate::now_ms(), MAX_PER_CYCLE).len();
                let events = store.events.take();
                drop(store);
                shared.pubsub.publish_events(events);
                removed
            }
        };
        Stats::add(&shared.stats.expired_keys, removed as u64);
    }
}
