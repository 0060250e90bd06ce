//! Clients blocked on a command (BLPOP, BLMOVE, BZPOPMIN, XREAD BLOCK, XREADGROUP BLOCK, ...).
//!
//! The store runs a blocking command once, without waiting (see
//! `cairn_store::cmd::blocking`): with nothing to give, it answers as Redis answers a client
//! that may not block. The connection then blocks instead of answering: it queues itself on
//! the keys in the store of the keys' shard (`cairn_store::blocking`), and runs the command
//! again each time it is woken, until it gets something or its timeout passes (then the reply
//! is a nil array, as in Redis). Each retry is an ordinary command: under replication it goes
//! through the shard's log, on the leader, so an element is only ever taken for a client that
//! is waiting for it, and a change of leader changes nothing for the blocked client but where
//! its next retry goes.
//!
//! The queue lives on the client's own node, woken when that node applies a change to a key.
//! A node with no replica of the shard registers its blocked clients' keys with the other
//! nodes instead (see `crate::pubsub`, `Hub::wait_on`), and the shard's leader, when it
//! applies a change to one of those keys, sends it a wake-up. Wake-ups travel at most once,
//! so such a client also tries again every [`POLL`] in case one was lost. Connections that
//! relay another node's requests never block (the other node's client does): they answer at
//! once.

use crate::connection::Client;
use crate::Shared;
use cairn_resp::Reply;
use cairn_store::blocking::Waiter;
use cairn_store::cmd::blocking::{blocking_form, XREAD_FROM};
use cairn_store::Store;
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How often a client blocked on a shard this node holds no replica of tries again, woken or
/// not (a lost wake-up costs at most this long).
pub const POLL: Duration = Duration::from_secs(1);

pub struct BlockedClient {
    /// The request to run again (for XREAD, with `$` replaced by the IDs it stood for).
    pub args: Vec<Vec<u8>>,
    deadline: Option<Instant>,
    keys: Vec<Vec<u8>>,
    notify: Arc<Notify>,
    registration: Option<Registration>,
    /// Blocked on a shard this node holds no replica of: woken by its leader, and polling.
    remote: Option<RemoteWait>,
    polling: bool,
}

/// A blocked client's keys as registered with the other nodes; dropped, it unregisters.
struct RemoteWait {
    hub: Arc<crate::pubsub::Hub>,
    keys: Vec<Vec<u8>>,
    client: u64,
}

impl Drop for RemoteWait {
    fn drop(&mut self) {
        self.hub.stop_waiting(&self.keys, self.client);
    }
}

/// A place in the store's queues; leaving them (dropped) hands a wake-up to the next waiter.
struct Registration {
    store: Arc<Mutex<Store>>,
    keys: Vec<Vec<u8>>,
    waiter: Arc<Waiter>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.store
            .lock()
            .watches
            .blocked
            .unregister(&self.keys, self.waiter.id);
    }
}

/// What running a blocking-capable request gave.
pub enum Outcome {
    /// The "nothing to give" reply: block.
    Nothing,
    /// XREAD's `$` resolved to these IDs (one per stream): block after them.
    From(Vec<Vec<u8>>),
    /// Anything else goes to the client.
    Answer,
}

pub fn outcome_of_bytes(reply: &[u8]) -> Outcome {
    match reply {
        b"*-1\r\n" | b"$-1\r\n" | b"_\r\n" => Outcome::Nothing,
        [b'-', rest @ ..] if rest.starts_with(XREAD_FROM.as_bytes()) => {
            from_ids(&String::from_utf8_lossy(&rest[XREAD_FROM.len()..]))
        }
        _ => Outcome::Answer,
    }
}

/// The IDs of an XREADFROM reply, space-separated.
fn from_ids(text: &str) -> Outcome {
    Outcome::From(
        text.trim_end()
            .split(' ')
            .map(|id| id.as_bytes().to_vec())
            .collect(),
    )
}

pub fn outcome_of(reply: &Reply) -> Outcome {
    match reply {
        Reply::Nil | Reply::NilArray => Outcome::Nothing,
        Reply::Error(e) if e.starts_with(XREAD_FROM) => from_ids(&e[XREAD_FROM.len()..]),
        _ => Outcome::Answer,
    }
}

pub use cairn_store::cmd::blocking::may_block;

/// After `args` ran with `outcome`: true when the client blocks on it (its reply is withheld),
/// false when the reply goes out (and any earlier blocking on it ends).
pub fn block_on(client: &mut Client, args: &[Vec<u8>], outcome: Outcome) -> bool {
    if client.relaying_for_a_node || client.multi.is_some() || !may_block(args) {
        return false;
    }
    let name = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let Some(form) = blocking_form(&name, args) else {
        finish(client);
        return false;
    };
    let args = match outcome {
        Outcome::Answer => {
            finish(client);
            return false;
        }
        Outcome::Nothing => args.to_vec(),
        Outcome::From(ids) => {
            let mut args = args.to_vec();
            let n = ids.len();
            if args.len() < n {
                return false;
            }
            let at = args.len() - n;
            args.splice(at.., ids);
            args
        }
    };
    match &mut client.blocked {
        Some(b) => b.args = args,
        None => {
            client.blocked = Some(BlockedClient {
                args,
                deadline: (form.timeout_ms > 0)
                    .then(|| Instant::now() + Duration::from_millis(form.timeout_ms)),
                keys: form.keys,
                notify: Arc::new(Notify::new()),
                registration: None,
                remote: None,
                polling: false,
            })
        }
    }
    true
}

/// Ends a client's blocking. Its place in the store's queue is given up later, by
/// [`release`]: this may run with the store locked (the standalone path holds the lock across a
/// batch), and giving the place up takes that lock.
fn finish(client: &mut Client) {
    client
        .info
        .blocked
        .store(false, std::sync::atomic::Ordering::Relaxed);
    if let Some(b) = client.blocked.take() {
        client.unblocked.push(b);
    }
}

/// Gives up the queue places of blocking that ended (see [`finish`]); the store must not be
/// locked by the caller.
pub fn release(client: &mut Client) {
    client.unblocked.clear();
}

/// What ended a wait.
pub enum Woken {
    /// Run the request again.
    Retry,
    /// The timeout passed: answer a nil array.
    TimedOut,
    /// The connection is to close (the client left, was killed, or the server stops).
    Close,
}

/// The store the blocked client's keys live in on this node, if it holds them.
fn local_store(shared: &Shared, keys: &[Vec<u8>]) -> Option<Arc<Mutex<Store>>> {
    let group = match shared.shards.group_of_keys(keys.iter().map(Vec::as_slice)) {
        Ok(Some(g)) => g,
        _ => return None,
    };
    match &shared.replication {
        Some(repl) if !repl.hosts(group) => None,
        _ if shared.shards.has(group) => Some(shared.shards.store(group).clone()),
        _ => None,
    }
}

/// Waits for a blocked client's next try. Bytes the client sends meanwhile are kept in
/// `inbuf` (up to `limit`; past it the connection closes, as for any client).
pub async fn wait<S: crate::connection::Stream>(
    shared: &Shared,
    client: &mut Client,
    socket: &mut S,
    inbuf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Woken> {
    use tokio::io::AsyncReadExt;
    let id = client.id();
    let info = client.info.clone();
    let b = client.blocked.as_mut().expect("a blocked client");
    if b.registration.is_none() && !b.polling {
        // First wait: join the queue, then try once more at once, so that a change made
        // between the first try and now is not missed.
        match local_store(shared, &b.keys) {
            Some(store) => {
                let notify = b.notify.clone();
                let waiter = Waiter::new(id, Box::new(move || notify.notify_one()));
                store.lock().watches.blocked.register(&b.keys, &waiter);
                info.blocked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                b.registration = Some(Registration {
                    store,
                    keys: b.keys.clone(),
                    waiter,
                });
            }
            None => {
                b.polling = true;
                if shared.replication.is_some() {
                    // Answered by the others before the next try, so that no change after
                    // that try goes unreported.
                    let mut acks = crate::pubsub::Pending::default();
                    shared.pubsub.wait_on(&b.keys, id, &b.notify, &mut acks);
                    b.remote = Some(RemoteWait {
                        hub: shared.pubsub.clone(),
                        keys: b.keys.clone(),
                        client: id,
                    });
                    acks.wait().await;
                }
                info.blocked
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
        return Ok(Woken::Retry);
    }
    let mut shutdown = shared.shutdown.clone();
    loop {
        if b.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Woken::TimedOut);
        }
        let until_deadline = async {
            match b.deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let poll = async {
            if b.polling {
                tokio::time::sleep(POLL).await
            } else {
                std::future::pending().await
            }
        };
        tokio::select! {
            _ = b.notify.notified() => {
                if let Some(r) = &b.registration {
                    r.waiter.take_wake();
                }
                return Ok(Woken::Retry);
            }
            _ = until_deadline => return Ok(Woken::TimedOut),
            _ = poll => return Ok(Woken::Retry),
            n = socket.read_buf(inbuf) => {
                if n? == 0 || inbuf.len() > limit {
                    return Ok(Woken::Close);
                }
            }
            _ = info.kill.notified() => return Ok(Woken::Close),
            _ = shutdown.changed() => return Ok(Woken::Close),
        }
    }
}
