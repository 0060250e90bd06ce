//! Clients blocked on keys (BLPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, ...): who waits on which key,
//! in the order they blocked, and which of those keys changed since the last wake-up.
//!
//! A blocked command is not parked here: its client retries it whenever woken, as an ordinary
//! command (under replication, through the log), so an element is only ever taken by a client
//! that is there to receive it. This registry only decides whom to wake. A changed key wakes
//! only its first waiter (if not woken already), so clients are served in the order they
//! blocked (Redis's fairness); a waiter that leaves (served, timed out, gone) passes the
//! wake-up on to the next one, since what it did not take (or did not take away, as XREAD) may
//! serve another. Waking a later waiter while the first has not yet retried would let the two
//! race for one element, and the later one could win it.

use foldhash::fast::RandomState;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// One blocked client.
pub struct Waiter {
    pub id: u64,
    woken: AtomicBool,
    wake: Box<dyn Fn() + Send + Sync>,
}

impl Waiter {
    /// A waiter that `wake` wakes up (it must not block or take the store's lock).
    pub fn new(id: u64, wake: Box<dyn Fn() + Send + Sync>) -> Arc<Waiter> {
        Arc::new(Waiter {
            id,
            woken: AtomicBool::new(false),
            wake,
        })
    }

    /// Clears the wake-up before a retry; whether there was one.
    pub fn take_wake(&self) -> bool {
        self.woken.swap(false, Ordering::SeqCst)
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        (self.wake)();
    }
}

#[derive(Default)]
pub struct Blocked {
    by_key: HashMap<Vec<u8>, VecDeque<Arc<Waiter>>, RandomState>,
    /// Keys with waiters that changed since [`Blocked::wake_ready`] last ran.
    ready: Vec<Vec<u8>>,
}

impl Blocked {
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    /// Queues `waiter` behind those already waiting on each of `keys`.
    pub fn register(&mut self, keys: &[Vec<u8>], waiter: &Arc<Waiter>) {
        for key in keys {
            let queue = self.by_key.entry(key.clone()).or_default();
            if !queue.iter().any(|w| w.id == waiter.id) {
                queue.push_back(waiter.clone());
            }
        }
    }

    /// Takes waiter `id` off `keys`, and hands a wake-up to the next waiter of each.
    pub fn unregister(&mut self, keys: &[Vec<u8>], id: u64) {
        for key in keys {
            if let Some(queue) = self.by_key.get_mut(key.as_slice()) {
                queue.retain(|w| w.id != id);
                if queue.is_empty() {
                    self.by_key.remove(key.as_slice());
                } else {
                    self.ready.push(key.clone());
                }
            }
        }
        self.wake_ready();
    }

    /// Records that `key` changed (called for every modification: cheap when nobody waits).
    pub fn touched(&mut self, key: &[u8]) {
        if !self.by_key.is_empty() && self.by_key.contains_key(key) {
            self.ready.push(key.to_vec());
        }
    }

    /// Wakes, for each key that changed, its first waiter, unless it is woken already (its
    /// retry will see the change; when it leaves, the next one is woken).
    pub fn wake_ready(&mut self) {
        for key in std::mem::take(&mut self.ready) {
            if let Some(w) = self
                .by_key
                .get(&key)
                .and_then(|q| q.front())
                .filter(|w| !w.woken.load(Ordering::SeqCst))
            {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn counting(id: u64) -> (Arc<Waiter>, Arc<AtomicUsize>) {
        let n = Arc::new(AtomicUsize::new(0));
        let m = n.clone();
        let w = Waiter::new(
            id,
            Box::new(move || {
                m.fetch_add(1, Ordering::SeqCst);
            }),
        );
        (w, n)
    }

    #[test]
    fn a_change_wakes_the_first_waiter_then_the_next_as_each_leaves() {
        let mut b = Blocked::default();
        let (w1, n1) = counting(1);
        let (w2, n2) = counting(2);
        b.register(&[b"k".to_vec()], &w1);
        b.register(&[b"k".to_vec(), b"j".to_vec()], &w2);
        b.touched(b"k");
        b.wake_ready();
        assert_eq!(
            (n1.load(Ordering::SeqCst), n2.load(Ordering::SeqCst)),
            (1, 0)
        );
        // A second change while the first has not retried yet wakes nobody else: the next
        // waiter must not race the first for what the first is owed.
        b.touched(b"k");
        b.wake_ready();
        assert_eq!(n2.load(Ordering::SeqCst), 0);
        // The first retries (its wake-up taken) and blocks again: a change wakes it again.
        assert!(w1.take_wake());
        b.touched(b"k");
        b.wake_ready();
        assert_eq!(n1.load(Ordering::SeqCst), 2);
        // The first leaves: the next is woken in its place.
        b.unregister(&[b"k".to_vec()], 1);
        assert_eq!(n2.load(Ordering::SeqCst), 1);
        assert!(w2.take_wake());
        b.unregister(&[b"k".to_vec(), b"j".to_vec()], 2);
        assert!(b.is_empty());
        b.touched(b"unwatched");
        assert!(b.ready.is_empty());
    }
}
