//! MULTI, EXEC, DISCARD, WATCH, UNWATCH with Redis semantics: a queueing error aborts EXEC, and
//! EXEC fails (nil) if any watched key was changed by anyone, or expired, since WATCH.

use crate::connection::Client;
use crate::dispatch::{self, Call};
use cairn_commands::Lookup;
use cairn_resp::Reply;
use cairn_store::Store;
use std::sync::atomic::Ordering;

pub fn multi(c: &mut Call) -> Reply {
    if c.client.multi.is_some() {
        return Reply::error("ERR MULTI calls can not be nested");
    }
    c.client.multi = Some(Vec::new());
    c.client.multi_failed = false;
    c.client.info.in_multi.store(true, Ordering::Relaxed);
    Reply::OK
}

/// Forgets the client's watches when the store is already locked. (In replicated mode, with no
/// store here, a client's watches live in `watched_at`, which its caller clears.)
pub fn unwatch_locked(store: Option<&mut Store>, client: &mut Client) {
    let keys: Vec<Vec<u8>> = client.watched.drain(..).map(|(k, _)| k).collect();
    if let Some(store) = store {
        store.watches.unwatch(client.id(), &keys);
    }
}

/// The locked store of a standalone server: replicated mode runs EXEC and WATCH through the
/// log (crate::replicated) and never reaches these.
fn standalone<'a>(store: &'a mut Option<&mut Store>) -> &'a mut Store {
    store
        .as_deref_mut()
        .expect("EXEC and WATCH run here only on a standalone server")
}

pub fn exec(c: &mut Call) -> Reply {
    let Some(queue) = c.client.multi.take() else {
        return Reply::error("ERR EXEC without MULTI");
    };
    c.client.info.in_multi.store(false, Ordering::Relaxed);
    if std::mem::take(&mut c.client.multi_failed) {
        unwatch_locked(c.store.as_deref_mut(), c.client);
        return Reply::error("EXECABORT Transaction discarded because of previous errors.");
    }
    let now = c.env.now_ms;
    let store = standalone(&mut c.store);
    let touched = store.watches.is_dirty(c.client.id());
    let expired = c
        .client
        .watched
        .iter()
        .any(|(k, was_expired)| !was_expired && store.keyspace.is_expired_in_place(k, now));
    unwatch_locked(Some(store), c.client);
    if touched || expired {
        return Reply::NilArray;
    }
    let mut replies = Vec::with_capacity(queue.len());
    for args in queue {
        let reply = match c.shared.table.commands.lookup(&args) {
            Lookup::Found(spec) => dispatch::call(
                c.shared,
                c.client,
                c.store.as_deref_mut(),
                &spec.clone(),
                &args,
            ),
            Lookup::Error(e) => e,
        };
        replies.push(reply);
    }
    Reply::Array(replies)
}

pub fn discard(c: &mut Call) -> Reply {
    if c.client.multi.take().is_none() {
        return Reply::error("ERR DISCARD without MULTI");
    }
    c.client.multi_failed = false;
    c.client.info.in_multi.store(false, Ordering::Relaxed);
    unwatch_locked(c.store.as_deref_mut(), c.client);
    Reply::OK
}

pub fn watch(c: &mut Call) -> Reply {
    if c.client.multi.is_some() {
        return Reply::error("ERR WATCH inside MULTI is not allowed");
    }
    let now = c.env.now_ms;
    let store = standalone(&mut c.store);
    for key in &c.args[1..] {
        if c.client.watched.iter().any(|(k, _)| k == key) {
            continue;
        }
        let expired = store.keyspace.is_expired_in_place(key, now);
        store.watches.watch(c.client.id(), key);
        c.client.watched.push((key.clone(), expired));
    }
    Reply::OK
}

pub fn unwatch(c: &mut Call) -> Reply {
    unwatch_locked(c.store.as_deref_mut(), c.client);
    Reply::OK
}
