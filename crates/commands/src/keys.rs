//! Finding a request's keys from Redis 7 key specs.
//!
//! A key spec says where the search for keys begins (a fixed index, or after a keyword) and how
//! keys are laid out from there (a range with a step, or a count argument followed by keys). This
//! is what lets routing, WATCH and ACL checks find keys even for commands such as ZUNIONSTORE or
//! SORT ... STORE whose keys move.

use crate::json::map_get;
use serde_json::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum BeginSearch {
    Index(i64),
    /// Search for `keyword` starting at `start_from` (negative: from the end, backwards).
    Keyword {
        keyword: String,
        start_from: i64,
    },
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FindKeys {
    /// Keys from the start to `last_key` (negative: counted from the end) every `step`;
    /// `limit` > 1 takes only 1/limit of the remaining arguments.
    Range {
        last_key: i64,
        step: i64,
        limit: i64,
    },
    /// The argument at start+`keynum_index` is a count; keys begin at start+`first_key`.
    KeyNum {
        keynum_index: i64,
        first_key: i64,
        step: i64,
    },
    Unknown,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeySpec {
    pub begin: BeginSearch,
    pub find: FindKeys,
    /// Flags such as RW, RO, OW, access, insert, delete, incomplete, variable_flags.
    pub flags: Vec<String>,
}

impl KeySpec {
    pub(crate) fn from_json(v: &Value) -> KeySpec {
        let int = |v: Option<&Value>, k: &str| {
            v.and_then(|v| map_get(v, k))
                .and_then(Value::as_i64)
                .unwrap_or(0)
        };
        let flags = map_get(v, "flags")
            .and_then(|f| f.get("~"))
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|f| f.get("+").and_then(Value::as_str))
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let bs = map_get(v, "begin_search");
        let bs_spec = bs.and_then(|b| map_get(b, "spec"));
        let begin = match bs.and_then(|b| map_get(b, "type")).and_then(Value::as_str) {
            Some("index") => BeginSearch::Index(int(bs_spec, "index")),
            Some("keyword") => BeginSearch::Keyword {
                keyword: bs_spec
                    .and_then(|s| map_get(s, "keyword"))
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                start_from: int(bs_spec, "startfrom"),
            },
            _ => BeginSearch::Unknown,
        };
        let fk = map_get(v, "find_keys");
        let fk_spec = fk.and_then(|f| map_get(f, "spec"));
        let find = match fk.and_then(|f| map_get(f, "type")).and_then(Value::as_str) {
            Some("range") => FindKeys::Range {
                last_key: int(fk_spec, "lastkey"),
                step: int(fk_spec, "keystep"),
                limit: int(fk_spec, "limit"),
            },
            Some("keynum") => FindKeys::KeyNum {
                keynum_index: int(fk_spec, "keynumidx"),
                first_key: int(fk_spec, "firstkey"),
                step: int(fk_spec, "keystep"),
            },
            _ => FindKeys::Unknown,
        };
        KeySpec { begin, find, flags }
    }
}

/// The positions of keys in `args` under `specs`, in spec order, without duplicates.
/// Where SORT's STORE destination is, if it has one (the last STORE counts).
pub fn sort_store_position(args: &[Vec<u8>]) -> Option<usize> {
    let mut store = None;
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        if a.eq_ignore_ascii_case(b"limit") {
            i += 2;
        } else if a.eq_ignore_ascii_case(b"get") || a.eq_ignore_ascii_case(b"by") {
            i += 1;
        } else if a.eq_ignore_ascii_case(b"store") && i + 1 < args.len() {
            store = Some(i + 1);
            i += 1;
        }
        i += 1;
    }
    store
}

pub fn positions(specs: &[KeySpec], args: &[Vec<u8>]) -> Vec<usize> {
    let argc = args.len() as i64;
    let mut out = Vec::new();
    for spec in specs {
        let start = match &spec.begin {
            BeginSearch::Index(i) => *i,
            BeginSearch::Keyword {
                keyword,
                start_from,
            } => {
                let found = if *start_from >= 0 {
                    (*start_from..argc)
                        .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword.as_bytes()))
                } else {
                    let from = argc + start_from;
                    (1..=from)
                        .rev()
                        .find(|&i| args[i as usize].eq_ignore_ascii_case(keyword.as_bytes()))
                };
                match found {
                    Some(i) => i + 1,
                    None => continue,
                }
            }
            BeginSearch::Unknown => continue,
        };
        let (first, last, step) = match &spec.find {
            FindKeys::Range {
                last_key,
                step,
                limit,
            } => {
                let last = if *last_key >= 0 {
                    start + last_key
                } else if *limit <= 1 {
                    argc + last_key
                } else {
                    start + ((argc - start) / limit) + last_key
                };
                (start, last, (*step).max(1))
            }
            FindKeys::KeyNum {
                keynum_index,
                first_key,
                step,
            } => {
                let idx = start + keynum_index;
                let Some(n) = args
                    .get(idx as usize)
                    .and_then(|a| std::str::from_utf8(a).ok()?.parse::<i64>().ok())
                else {
                    continue;
                };
                if n <= 0 {
                    continue;
                }
                let first = start + first_key;
                (first, first + (n - 1) * step.max(&1), (*step).max(1))
            }
            FindKeys::Unknown => continue,
        };
        let mut i = first;
        while i <= last && i < argc {
            if i >= 1 && !out.contains(&(i as usize)) {
                out.push(i as usize);
            }
            i += step;
        }
    }
    out
}
