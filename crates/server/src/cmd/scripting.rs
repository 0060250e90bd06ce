//! The script cache and SCRIPT: scripts by their SHA-1, as Redis keeps them.
//!
//! EVAL runs in the store (`cairn_store::script`), as part of a log entry. EVALSHA and
//! EVALSHA_RO are turned into EVAL and EVAL_RO with the script's body here, on the node that
//! took the command ([`resolve`]), so that the entry carries the text every replica runs. Every
//! node keeps the scripts it was given (by EVAL or SCRIPT LOAD); a sha unknown here is asked of
//! the other nodes before the client is told NOSCRIPT, so a script loaded through one node
//! serves through all.

use crate::dispatch::Call;
use crate::Shared;
use cairn_resp::Reply;
use std::collections::HashMap;

/// The most scripts a node keeps; past it the cache starts over (clients reload on NOSCRIPT).
const MAX_SCRIPTS: usize = 10_000;
/// The most bytes of script text a node keeps.
const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Cache {
    scripts: parking_lot::Mutex<(HashMap<String, Vec<u8>>, usize)>,
}

impl Cache {
    pub fn get(&self, sha: &str) -> Option<Vec<u8>> {
        self.scripts.lock().0.get(sha).cloned()
    }

    pub fn contains(&self, sha: &str) -> bool {
        self.scripts.lock().0.contains_key(sha)
    }

    /// Keeps `body`; returns its sha.
    pub fn add(&self, body: &[u8]) -> String {
        let sha = cairn_store::script::sha1hex(body);
        let mut guard = self.scripts.lock();
        let (scripts, bytes) = &mut *guard;
        if !scripts.contains_key(&sha) {
            if scripts.len() >= MAX_SCRIPTS || *bytes + body.len() > MAX_BYTES {
                scripts.clear();
                *bytes = 0;
            }
            *bytes += body.len();
            scripts.insert(sha.clone(), body.to_vec());
        }
        sha
    }

    pub fn flush(&self) {
        let mut guard = self.scripts.lock();
        guard.0.clear();
        guard.1 = 0;
    }
}

const NOSCRIPT: &str = "NOSCRIPT No matching script. Please use EVAL.";

fn noscript() -> Reply {
    Reply::error(NOSCRIPT)
}

/// What MULTI queues for an EVALSHA whose script is unknown: Redis queues it and answers
/// NOSCRIPT in its place at EXEC; a script that answers just that does the same here.
pub fn queued_noscript(args: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = vec![
        b"EVAL".to_vec(),
        format!("return redis.error_reply('{NOSCRIPT}')").into_bytes(),
        b"0".to_vec(),
    ];
    // (Its keys still route it, so that it takes part where the transaction runs.)
    if let Some(n) = args.get(2) {
        out[2] = n.clone();
        out.extend(args[3..].iter().cloned());
    }
    out
}

/// EVALSHA/EVALSHA_RO as EVAL/EVAL_RO with the body (None: `args` is no script call, or
/// EVAL, whose body is kept). The script is looked for here, then on the other nodes.
pub async fn resolve(shared: &Shared, args: &[Vec<u8>]) -> Option<Result<Vec<Vec<u8>>, Reply>> {
    match resolve_here(shared, args)? {
        Err(_) => {
            let sha = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
            let body = ask_others(shared, &sha).await;
            Some(match body {
                Some(b) => {
                    shared.scripts.add(&b);
                    resolve_here(shared, args)?
                }
                None => Err(noscript()),
            })
        }
        found => Some(found),
    }
}

/// [`resolve`] with this node's scripts only.
pub fn resolve_here(shared: &Shared, args: &[Vec<u8>]) -> Option<Result<Vec<Vec<u8>>, Reply>> {
    let name = args.first()?;
    let ro = if name.eq_ignore_ascii_case(b"evalsha") {
        false
    } else if name.eq_ignore_ascii_case(b"evalsha_ro") {
        true
    } else {
        if (name.eq_ignore_ascii_case(b"eval") || name.eq_ignore_ascii_case(b"eval_ro"))
            && args.len() > 1
        {
            shared.scripts.add(&args[1]);
        }
        return None;
    };
    let sha = String::from_utf8_lossy(args.get(1)?).to_ascii_lowercase();
    let Some(body) = shared.scripts.get(&sha) else {
        return Some(Err(noscript()));
    };
    let mut out = args.to_vec();
    out[0] = if ro {
        b"EVAL_RO".to_vec()
    } else {
        b"EVAL".to_vec()
    };
    out[1] = body;
    Some(Ok(out))
}

/// The body of script `sha` from another node that has it (`CAIRN.SCRIPT GET`).
async fn ask_others(shared: &Shared, sha: &str) -> Option<Vec<u8>> {
    let repl = shared.replication.as_ref()?;
    if sha.len() != 40 {
        return None;
    }
    for (peer, addr) in repl.all_client_addrs() {
        if peer == repl.me {
            continue;
        }
        let ask = vec![
            b"CAIRN.SCRIPT".to_vec(),
            b"GET".to_vec(),
            sha.as_bytes().to_vec(),
        ];
        let Some(mut relay) =
            crate::replicated::open_relay(repl, addr, peer, cairn_resp::Protocol::Resp2).await
        else {
            continue;
        };
        if let Some(mut replies) = crate::replicated::relay_on(&mut relay, &[ask]).await {
            if let Some(Reply::Bulk(body)) = replies.pop().and_then(|r| cairn_resp::parse_reply(&r))
            {
                if cairn_store::script::sha1hex(&body) == sha {
                    return Some(body);
                }
            }
        }
    }
    None
}

/// SCRIPT FLUSH on a cluster: every node forgets its scripts (else EVALSHA would find them
/// again on another node). Nodes that cannot be reached keep theirs.
pub async fn flush_everywhere(shared: &Shared) {
    shared.scripts.flush();
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    for (peer, addr) in repl.all_client_addrs() {
        if peer == repl.me {
            continue;
        }
        let ask = vec![b"CAIRN.SCRIPT".to_vec(), b"FLUSH".to_vec()];
        if let Some(mut relay) =
            crate::replicated::open_relay(repl, addr, peer, cairn_resp::Protocol::Resp2).await
        {
            let _ = crate::replicated::relay_on(&mut relay, &[ask]).await;
        }
    }
}

/// `CAIRN.SCRIPT GET <sha>`: this node's copy of a script, or nil. `CAIRN.SCRIPT FLUSH`: this
/// node forgets its scripts.
pub fn get_for_node(shared: &Shared, args: &[Vec<u8>]) -> Reply {
    if args.len() == 2 && args[1].eq_ignore_ascii_case(b"flush") {
        shared.scripts.flush();
        return Reply::OK;
    }
    match args.get(2) {
        Some(sha) if args.len() == 3 && args[1].eq_ignore_ascii_case(b"get") => shared
            .scripts
            .get(&String::from_utf8_lossy(sha).to_ascii_lowercase())
            .map_or(Reply::Nil, Reply::Bulk),
        _ => Reply::error("ERR usage: CAIRN.SCRIPT GET <sha>"),
    }
}

pub fn load(c: &mut Call) -> Reply {
    let body = &c.args[2];
    if let Err(e) = cairn_store::script::check_compiles(body) {
        return e;
    }
    Reply::bulk(c.shared.scripts.add(body).into_bytes())
}

pub fn exists(c: &mut Call) -> Reply {
    Reply::Array(
        c.args[2..]
            .iter()
            .map(|sha| {
                let sha = String::from_utf8_lossy(sha).to_ascii_lowercase();
                Reply::Int(i64::from(c.shared.scripts.contains(&sha)))
            })
            .collect(),
    )
}

pub fn flush(c: &mut Call) -> Reply {
    match c.args.get(2) {
        None => {}
        Some(mode) if mode.eq_ignore_ascii_case(b"sync") || mode.eq_ignore_ascii_case(b"async") => {
        }
        Some(_) => {
            return Reply::error("ERR SCRIPT FLUSH only support SYNC|ASYNC option");
        }
    }
    c.shared.scripts.flush();
    Reply::OK
}

/// Scripts never run past their instruction limit, and other shards are never kept waiting
/// by one: there is nothing to kill.
pub fn kill(_c: &mut Call) -> Reply {
    Reply::error("NOTBUSY No scripts in execution right now.")
}
