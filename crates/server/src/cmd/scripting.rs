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
        Err(_) if !args[0].to_ascii_lowercase().starts_with(b"fcall") => {
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

/// [`resolve`] with this node's scripts only. FCALL and FCALL_RO resolve here too (every
/// node has every library).
pub fn resolve_here(shared: &Shared, args: &[Vec<u8>]) -> Option<Result<Vec<Vec<u8>>, Reply>> {
    if let Some(resolved) = crate::functions::resolve(&shared.functions, args) {
        return Some(resolved);
    }
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
    for peer in repl.all_client_addrs().into_keys() {
        if peer == repl.me {
            continue;
        }
        let ask = vec![
            b"CAIRN.SCRIPT".to_vec(),
            b"GET".to_vec(),
            sha.as_bytes().to_vec(),
        ];
        if let Some(Reply::Bulk(body)) = crate::cross::ask_node(shared, peer, ask).await {
            if cairn_store::script::sha1hex(&body) == sha {
                return Some(body);
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
    for peer in repl.all_client_addrs().into_keys() {
        if peer == repl.me {
            continue;
        }
        let ask = vec![b"CAIRN.SCRIPT".to_vec(), b"FLUSH".to_vec()];
        let _ = crate::cross::ask_node(shared, peer, ask).await;
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

/// A FUNCTION change (`args`: LOAD, DELETE, FLUSH or RESTORE and their arguments, as after
/// FUNCTION) applied to `libs`: on a standalone node by the command itself, on a cluster by the
/// meta group's entry, on every node.
pub fn function_change(libs: &crate::functions::Libraries, args: &[Vec<u8>]) -> Reply {
    let sub = String::from_utf8_lossy(&args[0]).to_ascii_lowercase();
    let rest = &args[1..];
    let result = match sub.as_str() {
        "load" => match rest {
            [code] => libs.load(code, false).map(|n| Reply::bulk(n.into_bytes())),
            [opt, code] if opt.eq_ignore_ascii_case(b"replace") => {
                libs.load(code, true).map(|n| Reply::bulk(n.into_bytes()))
            }
            [opt, ..] => Err(format!(
                "ERR Unknown option given: {}",
                String::from_utf8_lossy(opt)
            )),
            [] => Err("ERR wrong number of arguments for 'function|load' command".into()),
        },
        "delete" => match rest {
            [name] => libs.delete(name).map(|()| Reply::OK),
            _ => Err("ERR wrong number of arguments for 'function|delete' command".into()),
        },
        "flush" => match rest {
            [] => Ok(()),
            [m] if m.eq_ignore_ascii_case(b"sync") || m.eq_ignore_ascii_case(b"async") => Ok(()),
            _ => Err("ERR FUNCTION FLUSH only supports SYNC|ASYNC option".into()),
        }
        .map(|()| {
            libs.flush();
            Reply::OK
        }),
        "restore" => match rest {
            [payload] => libs.restore(payload, "append").map(|()| Reply::OK),
            [payload, policy] => libs
                .restore(
                    payload,
                    &String::from_utf8_lossy(policy).to_ascii_lowercase(),
                )
                .map(|()| Reply::OK),
            _ => Err("ERR wrong number of arguments for 'function|restore' command".into()),
        },
        _ => Err("ERR unknown FUNCTION change".into()),
    };
    result.unwrap_or_else(Reply::error)
}

/// Whether `spec` is a FUNCTION change (which a cluster makes through its meta group).
pub fn is_function_change(name: &str) -> bool {
    matches!(
        name,
        "function|load" | "function|delete" | "function|flush" | "function|restore"
    )
}

/// FUNCTION LOAD, DELETE, FLUSH, RESTORE on this node's libraries (a standalone node; a
/// cluster's go through `replicated`, see [`function_change`]).
pub fn function_local_change(c: &mut Call) -> Reply {
    function_change(&c.shared.functions, &c.args[1..])
}

pub fn function_list(c: &mut Call) -> Reply {
    let mut pattern = None;
    let mut with_code = false;
    let mut i = 2;
    while i < c.args.len() {
        let a = &c.args[i];
        if a.eq_ignore_ascii_case(b"withcode") && !with_code {
            with_code = true;
        } else if a.eq_ignore_ascii_case(b"libraryname") && pattern.is_none() {
            match c.args.get(i + 1) {
                Some(p) => pattern = Some(p.as_slice()),
                None => return Reply::error("ERR library name argument was not given"),
            }
            i += 1;
        } else {
            return Reply::error(format!(
                "ERR Unknown argument {}",
                String::from_utf8_lossy(a)
            ));
        }
        i += 1;
    }
    c.shared.functions.list(pattern, with_code)
}

pub fn function_stats(c: &mut Call) -> Reply {
    c.shared.functions.stats()
}

pub fn function_dump(c: &mut Call) -> Reply {
    Reply::bulk(c.shared.functions.dump())
}

/// Functions, like scripts, are stopped by their instruction limit, never by a kill.
pub fn function_kill(_c: &mut Call) -> Reply {
    Reply::error("NOTBUSY No scripts in execution right now.")
}
