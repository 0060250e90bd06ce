//! Hash commands.

use crate::cmd::keys::parse_container_scan;
use crate::exec::*;
use crate::glob;
use crate::notify::HASH;
use crate::numbers::{format_human, parse_f64};
use crate::value::{HashValue, Value};
use cairn_resp::decode::parse_i64;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("hset", hset),
    ("hmset", hset),
    ("hsetnx", hsetnx),
    ("hget", hget),
    ("hmget", hmget),
    ("hdel", hdel),
    ("hlen", hlen),
    ("hstrlen", hstrlen),
    ("hexists", hexists),
    ("hkeys", hkeys),
    ("hvals", hvals),
    ("hgetall", hgetall),
    ("hincrby", hincrby),
    ("hincrbyfloat", hincrbyfloat),
    ("hrandfield", hrandfield),
    ("hscan", hscan),
];

pub fn get_hash<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a HashValue>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(wrongtype()),
    }
}

/// The hash at `key` for writing, created when absent.
fn hash_mut_or_new<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<&'a mut HashValue, Reply> {
    let now = ctx.now_ms;
    match &mut ctx.ks.get_or_insert_with(key, now, Value::new_hash).value {
        Value::Hash(h) => Ok(h),
        _ => Err(wrongtype()),
    }
}

fn hash_mut<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<Option<&'a mut HashValue>, Reply> {
    match ctx.ks.get_mut(key, ctx.now_ms).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Hash(h)) => Ok(Some(h)),
        Some(_) => Err(wrongtype()),
    }
}

fn hset(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let legacy = is(&args[0], "hmset");
    if args.len() % 2 == 1 {
        return crate::cmd::strings::cairn_wrong_arity(if legacy { "hmset" } else { "hset" });
    }
    let key = &args[1];
    let h = match hash_mut_or_new(ctx, key) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let mut added = 0;
    for fv in args[2..].chunks(2) {
        if h.insert(fv[0].clone(), fv[1].clone()).is_none() {
            added += 1;
        }
    }
    ctx.modified(key);
    ctx.notify(HASH, "hset", key);
    if legacy {
        Reply::OK
    } else {
        Reply::Int(added)
    }
}

fn hsetnx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Err(e) => return e,
        Ok(Some(h)) if h.contains_key(&args[2]) => return Reply::Int(0),
        Ok(_) => {}
    }
    let h = hash_mut_or_new(ctx, &args[1]).expect("type checked above");
    h.insert(args[2].clone(), args[3].clone());
    ctx.modified(&args[1]);
    ctx.notify(HASH, "hset", &args[1]);
    Reply::Int(1)
}

fn hget(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => h
            .and_then(|h| h.get(&args[2]))
            .map_or(Reply::Nil, |v| Reply::Bulk(v.clone())),
        Err(e) => e,
    }
}

fn hmget(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => Reply::Array(
            args[2..]
                .iter()
                .map(|f| {
                    h.and_then(|h| h.get(f))
                        .map_or(Reply::Nil, |v| Reply::Bulk(v.clone()))
                })
                .collect(),
        ),
        Err(e) => e,
    }
}

fn hdel(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    let h = match hash_mut(ctx, key) {
        Ok(Some(h)) => h,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let removed = args[2..]
        .iter()
        .filter(|f| h.swap_remove(*f).is_some())
        .count();
    if removed > 0 {
        ctx.notify(HASH, "hdel", key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Reply::Int(removed as i64)
}

fn hlen(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => Reply::Int(h.map_or(0, |h| h.len()) as i64),
        Err(e) => e,
    }
}

fn hstrlen(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => Reply::Int(h.and_then(|h| h.get(&args[2])).map_or(0, |v| v.len()) as i64),
        Err(e) => e,
    }
}

fn hexists(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => Reply::Int(h.is_some_and(|h| h.contains_key(&args[2])) as i64),
        Err(e) => e,
    }
}

fn hkeys(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => bulks(h.into_iter().flat_map(|h| h.keys())),
        Err(e) => e,
    }
}

fn hvals(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => bulks(h.into_iter().flat_map(|h| h.values())),
        Err(e) => e,
    }
}

fn hgetall(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_hash(ctx, &args[1]) {
        Ok(h) => Reply::Map(
            h.into_iter()
                .flat_map(|h| h.iter())
                .map(|(k, v)| (Reply::Bulk(k.clone()), Reply::Bulk(v.clone())))
                .collect(),
        ),
        Err(e) => e,
    }
}

fn hincrby(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let by = match int_arg(&args[3]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let key = &args[1];
    let h = match hash_mut_or_new(ctx, key) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let current = match h.get(&args[2]) {
        None => 0,
        Some(v) => match parse_i64(v) {
            Some(n) => n,
            None => return err("ERR hash value is not an integer"),
        },
    };
    let Some(new) = current.checked_add(by) else {
        return err(OVERFLOW);
    };
    h.insert(args[2].clone(), new.to_string().into_bytes());
    ctx.modified(key);
    ctx.notify(HASH, "hincrby", key);
    Reply::Int(new)
}

fn hincrbyfloat(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let by = match float_arg(&args[3]) {
        Ok(n) => n,
        Err(e) => return e,
    };
    let key = &args[1];
    let h = match hash_mut_or_new(ctx, key) {
        Ok(h) => h,
        Err(e) => return e,
    };
    let current = match h.get(&args[2]) {
        None => 0.0,
        Some(v) => match parse_f64(v) {
            Some(n) => n,
            None => return err("ERR hash value is not a float"),
        },
    };
    let new = current + by;
    if new.is_nan() || new.is_infinite() {
        ctx.drop_if_empty(key);
        return err("ERR increment would produce NaN or Infinity");
    }
    let text = format_human(new).into_bytes();
    h.insert(args[2].clone(), text.clone());
    ctx.modified(key);
    ctx.notify(HASH, "hincrbyfloat", key);
    Reply::Bulk(text)
}

/// Picks `count` distinct indexes below `len` (count <= len), in a deterministic random order.
pub fn distinct_indexes(ctx: &mut Ctx, len: usize, count: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..len).collect();
    for i in 0..count {
        let j = i + ctx.rng.below(len - i);
        idx.swap(i, j);
    }
    idx.truncate(count);
    idx
}

/// The positions a RANDMEMBER-family command returns from `len` (> 0) elements: one without a
/// count, `count` distinct ones for a positive count, |count| with repeats for a negative one.
pub fn random_picks(ctx: &mut Ctx, len: usize, count: Option<i64>) -> Vec<usize> {
    match count {
        None => vec![ctx.rng.below(len)],
        Some(c) if c >= 0 => distinct_indexes(ctx, len, (c as usize).min(len)),
        Some(c) => (0..c.unsigned_abs()).map(|_| ctx.rng.below(len)).collect(),
    }
}

/// What a RANDMEMBER-family command answers for a missing key.
pub fn random_missing(count: Option<i64>) -> Reply {
    if count.is_some() {
        Reply::Array(vec![])
    } else {
        Reply::Nil
    }
}

/// Parses a RANDMEMBER-style count: Ok(None) without one.
pub fn rand_count(args: &[Vec<u8>], with_values: bool) -> Result<Option<i64>, Reply> {
    let Some(c) = args.get(2) else {
        return Ok(None);
    };
    let c = int_arg(c)?;
    if with_values && (c < -(i64::MAX / 2)) {
        return Err(err("ERR value is out of range"));
    }
    Ok(Some(c))
}

fn hrandfield(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let with_values = match args.get(3) {
        None => false,
        Some(a) if is(a, "withvalues") && args.len() == 4 => true,
        Some(_) => return syntax(),
    };
    let count = match rand_count(args, with_values) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let len = match get_hash(ctx, &args[1]) {
        Ok(Some(h)) => h.len(),
        Ok(None) => return random_missing(count),
        Err(e) => return e,
    };
    let picks = random_picks(ctx, len, count);
    let h = get_hash(ctx, &args[1]).expect("checked").expect("checked");
    let item = |i: usize| h.get_index(i).expect("index below len");
    match count {
        None => Reply::Bulk(item(picks[0]).0.clone()),
        Some(_) if with_values => pairs_reply(
            ctx.resp3(),
            picks
                .iter()
                .map(|&i| {
                    (
                        Reply::Bulk(item(i).0.clone()),
                        Reply::Bulk(item(i).1.clone()),
                    )
                })
                .collect(),
        ),
        Some(_) => Reply::Array(
            picks
                .iter()
                .map(|&i| Reply::Bulk(item(i).0.clone()))
                .collect(),
        ),
    }
}

fn hscan(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (cursor, o) = match parse_container_scan(args) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    let h = match get_hash(ctx, &args[1]) {
        Ok(Some(h)) => h,
        Ok(None) => return scan_reply(0, vec![]),
        Err(e) => return e,
    };
    let (next, range) = scan_window(h.len(), cursor, o.count);
    let mut items = Vec::new();
    for (k, v) in h.as_slice()[range].iter() {
        if o.pattern
            .as_ref()
            .is_none_or(|p| glob::matches(p, k, false))
        {
            items.push(Reply::Bulk(k.clone()));
            items.push(Reply::Bulk(v.clone()));
        }
    }
    scan_reply(next, items)
}

/// The window of a container SCAN: small containers (up to 128 elements, what Redis keeps as a
/// listpack) come back whole; larger ones `count` elements at a time by position.
pub fn scan_window(len: usize, cursor: usize, count: usize) -> (u64, std::ops::Range<usize>) {
    if len <= 128 {
        return (0, if cursor == 0 { 0..len } else { 0..0 });
    }
    let start = cursor.min(len);
    let end = start.saturating_add(count).min(len);
    (if end >= len { 0 } else { end as u64 }, start..end)
}

pub fn scan_reply(next: u64, items: Vec<Reply>) -> Reply {
    Reply::Array(vec![
        Reply::Bulk(next.to_string().into_bytes()),
        Reply::Array(items),
    ])
}
