//! SORT and SORT_RO: sort a list, set or sorted set numerically or by bytes, optionally by
//! external keys (`BY weight_*`, `BY hash_*->field`), fetching others (`GET`), with LIMIT and STORE.

use crate::exec::*;
use crate::numbers::parse_f64;
use crate::value::Value;
use cairn_resp::Reply;
use std::cmp::Ordering;

pub const COMMANDS: &[(&str, Handler)] = &[("sort", sort), ("sort_ro", sort_ro)];

struct Options {
    by: Option<Vec<u8>>,
    dont_sort: bool,
    limit: Option<(i64, i64)>,
    gets: Vec<Vec<u8>>,
    desc: bool,
    alpha: bool,
    store: Option<Vec<u8>>,
}

fn parse(args: &[Vec<u8>], allow_store: bool) -> Result<Options, Reply> {
    let mut o = Options {
        by: None,
        dont_sort: false,
        limit: None,
        gets: vec![],
        desc: false,
        alpha: false,
        store: None,
    };
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        let left = args.len() - i - 1;
        if is(a, "asc") {
            o.desc = false;
        } else if is(a, "desc") {
            o.desc = true;
        } else if is(a, "alpha") {
            o.alpha = true;
        } else if is(a, "limit") && left >= 2 {
            o.limit = Some((int_arg(&args[i + 1])?, int_arg(&args[i + 2])?));
            i += 2;
        } else if is(a, "store") && left >= 1 && allow_store {
            o.store = Some(args[i + 1].clone());
            i += 1;
        } else if is(a, "by") && left >= 1 {
            // A pattern without '*' means "do not sort".
            o.dont_sort = !args[i + 1].contains(&b'*');
            o.by = Some(args[i + 1].clone());
            i += 1;
        } else if is(a, "get") && left >= 1 {
            o.gets.push(args[i + 1].clone());
            i += 1;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    Ok(o)
}

/// Looks up a SORT pattern for `element`: `#` is the element itself, `key_*` a string key,
/// `key_*->field` a hash field. None when absent.
fn lookup_pattern(ctx: &Ctx, pattern: &[u8], element: &[u8]) -> Option<Vec<u8>> {
    if pattern == b"#" {
        return Some(element.to_vec());
    }
    let star = pattern.iter().position(|&b| b == b'*')?;
    let arrow = pattern[star + 1..]
        .windows(2)
        .position(|w| w == b"->")
        .map(|p| p + star + 1);
    let (key_pattern, field) = match arrow {
        Some(p) if p + 2 < pattern.len() => (&pattern[..p], Some(&pattern[p + 2..])),
        _ => (pattern, None),
    };
    let mut key = key_pattern[..star].to_vec();
    key.extend_from_slice(element);
    key.extend_from_slice(&key_pattern[star + 1..]);
    match (ctx.value(&key)?, field) {
        (Value::Str(s), None) => Some(s.clone()),
        (Value::Hash(h), Some(f)) => h.get(f).cloned(),
        _ => None,
    }
}

/// A sort weight as Redis reads it with `strtod`: leading spaces skipped, an empty string is 0.
fn sort_score(text: &[u8]) -> Option<f64> {
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let trimmed = &text[start..];
    if trimmed.is_empty() {
        return Some(0.0);
    }
    parse_f64(trimmed)
}

fn sort(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(sort_body(ctx, args, true))
}

fn sort_ro(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(sort_body(ctx, args, false))
}

fn sort_body(ctx: &mut Ctx, args: &[Vec<u8>], allow_store: bool) -> Result<Reply, Reply> {
    let mut o = parse(args, allow_store)?;
    let (mut elements, is_zset): (Vec<Vec<u8>>, bool) = match ctx.value(&args[1]) {
        None => (vec![], false),
        Some(Value::List(l)) => (l.iter().cloned().collect(), false),
        Some(Value::Set(s)) => (s.iter().cloned().collect(), false),
        Some(Value::ZSet(z)) => (z.iter().map(|(m, _)| m.to_vec()).collect(), true),
        Some(_) => return Err(wrongtype()),
    };
    // Sets have no order of their own: to be deterministic, unsorted set output is sorted by bytes.
    if o.dont_sort && matches!(ctx.value(&args[1]), Some(Value::Set(_))) {
        o.dont_sort = false;
        o.alpha = true;
        o.by = None;
    }
    if !o.dont_sort {
        let keys: Vec<Option<Vec<u8>>> = elements
            .iter()
            .map(|e| match &o.by {
                Some(p) => lookup_pattern(ctx, p, e),
                None => Some(e.clone()),
            })
            .collect();
        let mut scores = vec![0.0f64; elements.len()];
        if !o.alpha {
            for (s, k) in scores.iter_mut().zip(&keys) {
                if let Some(k) = k {
                    *s = sort_score(k).ok_or_else(|| {
                        err("ERR One or more scores can't be converted into double")
                    })?;
                }
            }
        }
        let mut order: Vec<usize> = (0..elements.len()).collect();
        order.sort_by(|&a, &b| {
            let c = if o.alpha {
                match (&keys[a], &keys[b]) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => Ordering::Less,
                    (Some(_), None) => Ordering::Greater,
                    (Some(x), Some(y)) => x.cmp(y),
                }
            } else {
                scores[a]
                    .partial_cmp(&scores[b])
                    .unwrap_or(Ordering::Equal)
                    .then_with(|| elements[a].cmp(&elements[b]))
            };
            if o.desc {
                c.reverse()
            } else {
                c
            }
        });
        elements = order
            .into_iter()
            .map(|i| std::mem::take(&mut elements[i]))
            .collect();
    } else if is_zset && o.desc {
        elements.reverse();
    }
    let (start, count) = match o.limit {
        None => (0, elements.len()),
        Some((off, cnt)) => {
            let start = (off.max(0) as usize).min(elements.len());
            let count = if cnt < 0 {
                elements.len()
            } else {
                cnt as usize
            };
            (start, count.min(elements.len() - start))
        }
    };
    let picked = &elements[start..start + count];
    let mut out: Vec<Option<Vec<u8>>> = Vec::new();
    for e in picked {
        if o.gets.is_empty() {
            out.push(Some(e.clone()));
        }
        for g in &o.gets {
            out.push(lookup_pattern(ctx, g, e));
        }
    }
    if let Some(dst) = o.store {
        let n = out.len();
        let existed = ctx.ks.remove_live(&dst, ctx.now_ms).is_some();
        if n > 0 {
            let list: std::collections::VecDeque<Vec<u8>> =
                out.into_iter().map(Option::unwrap_or_default).collect();
            ctx.ks.insert(&dst, Value::List(Box::new(list)));
        }
        if n > 0 || existed {
            ctx.modified(&dst);
            if n > 0 {
                ctx.notify(crate::notify::LIST, "sortstore", &dst);
            } else {
                ctx.notify(crate::notify::GENERIC, "del", &dst);
            }
        }
        return Ok(Reply::Int(n as i64));
    }
    Ok(Reply::Array(
        out.into_iter()
            .map(|v| v.map_or(Reply::Nil, Reply::Bulk))
            .collect(),
    ))
}
