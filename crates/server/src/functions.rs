//! Redis 7 Functions: libraries of Lua functions (FUNCTION LOAD) called by name (FCALL).
//!
//! Libraries are cluster state, like ACL users: on a cluster, FUNCTION LOAD, DELETE, FLUSH and
//! RESTORE are entries of the meta group (`CAIRN.META FUNCTION ...`) that every node applies,
//! and the meta group's snapshots carry the libraries' code; so a library loaded through any
//! node is durable and callable through every node. A standalone node keeps its own.
//!
//! FCALL runs like EVALSHA: the node that took it puts the library's code in the log entry (as
//! an EVAL body, see `cairn_store::script::function_body`), so every replica runs the same code
//! whatever it has applied of the meta group.

use cairn_resp::Reply;
use cairn_store::script::{FunctionInfo, LibraryInfo};
use std::collections::BTreeMap;

/// The most libraries a cluster keeps, and the most bytes of code.
const MAX_LIBRARIES: usize = 10_000;
const MAX_CODE_BYTES: usize = 64 * 1024 * 1024;

struct Library {
    code: Vec<u8>,
    info: LibraryInfo,
}

pub struct Libraries {
    libs: parking_lot::RwLock<BTreeMap<String, Library>>,
    /// Counts the changes applied here, so that the node that took a FUNCTION change can wait
    /// until this node has applied it too (the meta group's leader may be another node).
    changes: tokio::sync::watch::Sender<u64>,
}

impl Default for Libraries {
    fn default() -> Libraries {
        Libraries {
            libs: Default::default(),
            changes: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Libraries {
    /// Resolves at the next change applied here (from the call on).
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// FUNCTION LOAD: the library's name, or Redis's error.
    pub fn load(&self, code: &[u8], replace: bool) -> Result<String, String> {
        let info = cairn_store::script::load_library(code)?;
        let mut libs = self.libs.write();
        if libs.contains_key(&info.name) && !replace {
            return Err(format!("ERR Library '{}' already exists", info.name));
        }
        for f in &info.functions {
            let taken = libs.iter().any(|(lib, l)| {
                *lib != info.name && l.info.functions.iter().any(|g| g.name == f.name)
            });
            if taken {
                return Err(format!("ERR Function {} already exists", f.name));
            }
        }
        let bytes: usize = libs.values().map(|l| l.code.len()).sum();
        if !libs.contains_key(&info.name)
            && (libs.len() >= MAX_LIBRARIES || bytes + code.len() > MAX_CODE_BYTES)
        {
            return Err("ERR too many libraries (at most 10000, 64 MB of code)".into());
        }
        let name = info.name.clone();
        libs.insert(
            name.clone(),
            Library {
                code: code.to_vec(),
                info,
            },
        );
        drop(libs);
        self.changed();
        Ok(name)
    }

    pub fn delete(&self, name: &[u8]) -> Result<(), String> {
        let name = String::from_utf8_lossy(name);
        let removed = self.libs.write().remove(name.as_ref());
        match removed {
            Some(_) => {
                self.changed();
                Ok(())
            }
            None => Err("ERR Library not found".into()),
        }
    }

    pub fn flush(&self) {
        self.libs.write().clear();
        self.changed();
    }

    /// Function `name`: its library's code and what it registered.
    pub fn find(&self, name: &str) -> Option<(Vec<u8>, FunctionInfo)> {
        let libs = self.libs.read();
        libs.values().find_map(|l| {
            l.info
                .functions
                .iter()
                .find(|f| f.name == name)
                .map(|f| (l.code.clone(), f.clone()))
        })
    }

    /// Every library's code, by name (snapshots, FUNCTION DUMP).
    pub fn export(&self) -> Vec<Vec<u8>> {
        self.libs.read().values().map(|l| l.code.clone()).collect()
    }

    /// Replaces every library by those of `codes` (a snapshot, FUNCTION RESTORE FLUSH); all or
    /// nothing.
    pub fn replace_all(&self, codes: &[Vec<u8>]) -> Result<(), String> {
        let fresh = Libraries::default();
        for code in codes {
            fresh.load(code, false)?;
        }
        *self.libs.write() = std::mem::take(&mut *fresh.libs.write());
        self.changed();
        Ok(())
    }

    /// FUNCTION RESTORE: `policy` APPEND (a library already here is an error), REPLACE or FLUSH.
    pub fn restore(&self, payload: &[u8], policy: &str) -> Result<(), String> {
        let codes = undump(payload).ok_or("ERR payload version or checksum are wrong")?;
        match policy {
            "flush" => self.replace_all(&codes),
            "append" | "replace" => {
                // Checked on a copy first: all or nothing.
                let trial = Libraries::default();
                trial.replace_all(&self.export())?;
                for code in &codes {
                    trial.load(code, policy == "replace")?;
                }
                *self.libs.write() = std::mem::take(&mut *trial.libs.write());
                self.changed();
                Ok(())
            }
            _ => Err(
                "ERR Wrong restore policy given, value should be either FLUSH, APPEND or REPLACE."
                    .into(),
            ),
        }
    }

    /// FUNCTION LIST [LIBRARYNAME pattern] [WITHCODE].
    pub fn list(&self, pattern: Option<&[u8]>, with_code: bool) -> Reply {
        let libs = self.libs.read();
        let items = libs
            .iter()
            .filter(|(name, _)| {
                pattern.is_none_or(|p| cairn_store::glob::matches(p, name.as_bytes(), false))
            })
            .map(|(name, l)| {
                let functions = l
                    .info
                    .functions
                    .iter()
                    .map(|f| {
                        Reply::Map(vec![
                            (
                                Reply::bulk(b"name".to_vec()),
                                Reply::bulk(f.name.clone().into_bytes()),
                            ),
                            (
                                Reply::bulk(b"description".to_vec()),
                                f.description
                                    .clone()
                                    .map_or(Reply::Nil, |d| Reply::bulk(d.into_bytes())),
                            ),
                            (
                                Reply::bulk(b"flags".to_vec()),
                                Reply::Set(
                                    f.flags
                                        .iter()
                                        // (Redis writes flags as status strings.)
                                        .map(|x| Reply::Status(x.clone().into()))
                                        .collect(),
                                ),
                            ),
                        ])
                    })
                    .collect();
                let mut fields = vec![
                    (
                        Reply::bulk(b"library_name".to_vec()),
                        Reply::bulk(name.clone().into_bytes()),
                    ),
                    (
                        Reply::bulk(b"engine".to_vec()),
                        Reply::bulk(b"LUA".to_vec()),
                    ),
                    (Reply::bulk(b"functions".to_vec()), Reply::Array(functions)),
                ];
                if with_code {
                    fields.push((
                        Reply::bulk(b"library_code".to_vec()),
                        Reply::bulk(l.code.clone()),
                    ));
                }
                Reply::Map(fields)
            })
            .collect();
        Reply::Array(items)
    }

    /// FUNCTION STATS (no function is ever running when a command is served).
    pub fn stats(&self) -> Reply {
        let libs = self.libs.read();
        let functions: usize = libs.values().map(|l| l.info.functions.len()).sum();
        Reply::Map(vec![
            (Reply::bulk(b"running_script".to_vec()), Reply::Nil),
            (
                Reply::bulk(b"engines".to_vec()),
                Reply::Map(vec![(
                    Reply::bulk(b"LUA".to_vec()),
                    Reply::Map(vec![
                        (
                            Reply::bulk(b"libraries_count".to_vec()),
                            Reply::Int(libs.len() as i64),
                        ),
                        (
                            Reply::bulk(b"functions_count".to_vec()),
                            Reply::Int(functions as i64),
                        ),
                    ]),
                )]),
            ),
        ])
    }

    /// FUNCTION DUMP: cairn's own payload (`CAIRNFN1`, count, then each library's code as
    /// u32 length + bytes, then an FNV-1a checksum); only cairn's RESTORE reads it.
    pub fn dump(&self) -> Vec<u8> {
        let codes = self.export();
        let mut out = b"CAIRNFN1".to_vec();
        out.extend_from_slice(&(codes.len() as u32).to_le_bytes());
        for c in &codes {
            out.extend_from_slice(&(c.len() as u32).to_le_bytes());
            out.extend_from_slice(c);
        }
        let sum = cairn_store::snapshot::fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }
}

/// The libraries' code in a [`Libraries::dump`] payload; None when it is not one.
fn undump(payload: &[u8]) -> Option<Vec<Vec<u8>>> {
    let (body, sum) = payload.split_at(payload.len().checked_sub(8)?);
    if cairn_store::snapshot::fnv1a(body).to_le_bytes() != sum {
        return None;
    }
    let mut rest = body.strip_prefix(b"CAIRNFN1")?;
    let mut take = |n: usize| -> Option<&[u8]> {
        let (a, b) = (rest.get(..n)?, rest.get(n..)?);
        rest = b;
        Some(a)
    };
    let count = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
    let mut codes = Vec::with_capacity(count.min(MAX_LIBRARIES));
    for _ in 0..count {
        let n = u32::from_le_bytes(take(4)?.try_into().ok()?) as usize;
        codes.push(take(n)?.to_vec());
    }
    rest.is_empty().then_some(codes)
}

/// FCALL/FCALL_RO as EVAL/EVAL_RO with the function's library in the body (None: `args` is
/// not a function call).
pub fn resolve(libraries: &Libraries, args: &[Vec<u8>]) -> Option<Result<Vec<Vec<u8>>, Reply>> {
    let name = args.first()?;
    let ro = if name.eq_ignore_ascii_case(b"fcall") {
        false
    } else if name.eq_ignore_ascii_case(b"fcall_ro") {
        true
    } else {
        return None;
    };
    let fname = String::from_utf8_lossy(args.get(1)?).to_string();
    let Some((code, info)) = libraries.find(&fname) else {
        return Some(Err(Reply::error("ERR Function not found")));
    };
    let no_writes = info.flags.iter().any(|f| f == "no-writes");
    if ro && !no_writes {
        return Some(Err(Reply::error(
            "ERR Can not execute a script with write flag using *_ro command.",
        )));
    }
    let mut out = args.to_vec();
    out[0] = if ro || no_writes {
        b"EVAL_RO".to_vec()
    } else {
        b"EVAL".to_vec()
    };
    out[1] = cairn_store::script::function_body(&fname, &code);
    Some(Ok(out))
}
