//! String commands: GET, SET and friends, counters, ranges, LCS.

use crate::exec::*;
use crate::notify::{GENERIC, STRING};
use crate::numbers::{format_human, parse_f64};
use crate::value::Value;
use cairn_resp::decode::parse_i64;
use cairn_resp::Reply;

/// Redis's `proto-max-bulk-len`: no string may grow past it.
pub const MAX_STRING_LEN: usize = 512 * 1024 * 1024;
const TOO_BIG: &str = "ERR string exceeds maximum allowed size (proto-max-bulk-len)";

pub const COMMANDS: &[(&str, Handler)] = &[
    ("get", get),
    ("set", set),
    ("setnx", setnx),
    ("setex", setex),
    ("psetex", psetex),
    ("getex", getex),
    ("getdel", getdel),
    ("getset", getset),
    ("mget", mget),
    ("mset", mset),
    ("msetnx", msetnx),
    ("append", append),
    ("strlen", strlen),
    ("getrange", getrange),
    ("substr", getrange),
    ("setrange", setrange),
    ("incr", incr),
    ("decr", decr),
    ("incrby", incrby),
    ("decrby", decrby),
    ("incrbyfloat", incrbyfloat),
    ("lcs", lcs),
];

/// The string at `key`: Ok(None) when absent, Err(WRONGTYPE) when another type.
pub fn get_str<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a Vec<u8>>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::Str(s)) => Ok(Some(s)),
        Some(_) => Err(wrongtype()),
    }
}

fn get(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_str(ctx, &args[1]) {
        Ok(Some(s)) => Reply::Bulk(s.clone()),
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

/// When a key should expire, as SET/GETEX options give it.
#[derive(Clone, Copy, PartialEq)]
enum Ttl {
    Unchanged,
    Keep,
    At(u64),
}

/// Parses a relative or absolute expire option value into an absolute deadline.
fn deadline(ctx: &Ctx, arg: &[u8], unit_ms: i64, absolute: bool, cmd: &str) -> Result<u64, Reply> {
    let invalid = || Reply::error(format!("ERR invalid expire time in '{cmd}' command"));
    let v = int_arg(arg)?;
    if v <= 0 {
        return Err(invalid());
    }
    let ms = v.checked_mul(unit_ms).ok_or_else(invalid)?;
    let at = if absolute {
        ms
    } else {
        ms.checked_add(ctx.now_ms as i64).ok_or_else(invalid)?
    };
    Ok(at as u64)
}

fn set(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(set_body(ctx, args))
}

fn set_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (key, val) = (&args[1], &args[2]);
    let (mut nx, mut xx, mut want_get, mut ttl) = (false, false, false, Ttl::Unchanged);
    let mut i = 3;
    while i < args.len() {
        let a = &args[i];
        let next = args.get(i + 1);
        let expire_free = ttl == Ttl::Unchanged;
        if is(a, "nx") && !xx {
            nx = true;
        } else if is(a, "xx") && !nx {
            xx = true;
        } else if is(a, "get") {
            want_get = true;
        } else if is(a, "keepttl") && expire_free {
            ttl = Ttl::Keep;
        } else if let (true, Some(n), true) = (
            is(a, "ex") || is(a, "px") || is(a, "exat") || is(a, "pxat"),
            next,
            expire_free,
        ) {
            let unit = if is(a, "ex") || is(a, "exat") {
                1000
            } else {
                1
            };
            ttl = Ttl::At(deadline(
                ctx,
                n,
                unit,
                is(a, "exat") || is(a, "pxat"),
                "set",
            )?);
            i += 1;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    let old = if want_get {
        get_str(ctx, key)?.cloned()
    } else {
        None
    };
    let exists = ctx.ks.contains(key, ctx.now_ms);
    if (nx && exists) || (xx && !exists) {
        return Ok(if want_get {
            old.map_or(Reply::Nil, Reply::Bulk)
        } else {
            Reply::Nil
        });
    }
    store_string(ctx, key, val.clone(), ttl);
    Ok(if want_get {
        old.map_or(Reply::Nil, Reply::Bulk)
    } else {
        Reply::OK
    })
}

/// Writes a string value with the given TTL handling and signals the change.
fn store_string(ctx: &mut Ctx, key: &[u8], val: Vec<u8>, ttl: Ttl) {
    match ttl {
        Ttl::Keep => ctx.ks.replace_value(key, Value::Str(val), ctx.now_ms),
        Ttl::At(at) => {
            ctx.ks.insert(key, Value::Str(val));
            ctx.ks.set_expire(key, at);
        }
        Ttl::Unchanged => ctx.ks.insert(key, Value::Str(val)),
    }
    ctx.modified(key);
    ctx.notify(STRING, "set", key);
    if let Ttl::At(_) = ttl {
        ctx.notify(GENERIC, "expire", key);
    }
}

fn setnx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if ctx.ks.contains(&args[1], ctx.now_ms) {
        return Reply::Int(0);
    }
    store_string(ctx, &args[1], args[2].clone(), Ttl::Unchanged);
    Reply::Int(1)
}

fn setex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    setex_generic(ctx, args, 1000, "setex")
}

fn psetex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    setex_generic(ctx, args, 1, "psetex")
}

fn setex_generic(ctx: &mut Ctx, args: &[Vec<u8>], unit: i64, name: &str) -> Reply {
    match deadline(ctx, &args[2], unit, false, name) {
        Ok(at) => {
            store_string(ctx, &args[1], args[3].clone(), Ttl::At(at));
            Reply::OK
        }
        Err(e) => e,
    }
}

fn getex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(getex_body(ctx, args))
}

fn getex_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let key = &args[1];
    let mut persist = false;
    let mut expire: Option<(&[u8], i64, bool)> = None;
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        let free = !persist && expire.is_none();
        if is(a, "persist") && free {
            persist = true;
        } else if let (true, Some(n), true) = (
            is(a, "ex") || is(a, "px") || is(a, "exat") || is(a, "pxat"),
            args.get(i + 1),
            free,
        ) {
            let unit = if is(a, "ex") || is(a, "exat") {
                1000
            } else {
                1
            };
            expire = Some((n, unit, is(a, "exat") || is(a, "pxat")));
            i += 1;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    // Redis looks the key up before it validates the expire time.
    let Some(val) = get_str(ctx, key)?.cloned() else {
        return Ok(Reply::Nil);
    };
    if let Some((n, unit, absolute)) = expire {
        let at = deadline(ctx, n, unit, absolute, "getex")?;
        if at <= ctx.now_ms {
            ctx.ks.remove(key);
            ctx.modified(key);
            ctx.notify(GENERIC, "del", key);
        } else {
            ctx.ks.set_expire(key, at);
            ctx.modified(key);
            ctx.notify(GENERIC, "expire", key);
        }
    } else if persist
        && ctx
            .ks
            .get(key, ctx.now_ms)
            .is_some_and(|e| e.expire_at_ms != 0)
    {
        ctx.ks.set_expire(key, 0);
        ctx.modified(key);
        ctx.notify(GENERIC, "persist", key);
    }
    Ok(Reply::Bulk(val))
}

fn getdel(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_str(ctx, &args[1]) {
        Ok(Some(_)) => {
            let e = ctx.ks.remove(&args[1]).expect("just read");
            ctx.modified(&args[1]);
            ctx.notify(GENERIC, "del", &args[1]);
            match e.value {
                Value::Str(s) => Reply::Bulk(s),
                _ => unreachable!("checked to be a string"),
            }
        }
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

fn getset(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_str(ctx, &args[1]) {
        Ok(old) => {
            let old = old.cloned();
            store_string(ctx, &args[1], args[2].clone(), Ttl::Unchanged);
            old.map_or(Reply::Nil, Reply::Bulk)
        }
        Err(e) => e,
    }
}

fn mget(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    Reply::Array(
        args[1..]
            .iter()
            .map(|k| match ctx.value(k) {
                Some(Value::Str(s)) => Reply::Bulk(s.clone()),
                _ => Reply::Nil,
            })
            .collect(),
    )
}

fn mset(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if args.len().is_multiple_of(2) {
        return cairn_wrong_arity("mset");
    }
    for kv in args[1..].chunks(2) {
        store_string(ctx, &kv[0], kv[1].clone(), Ttl::Unchanged);
    }
    Reply::OK
}

fn msetnx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if args.len().is_multiple_of(2) {
        return cairn_wrong_arity("msetnx");
    }
    if args[1..]
        .chunks(2)
        .any(|kv| ctx.ks.contains(&kv[0], ctx.now_ms))
    {
        return Reply::Int(0);
    }
    for kv in args[1..].chunks(2) {
        store_string(ctx, &kv[0], kv[1].clone(), Ttl::Unchanged);
    }
    Reply::Int(1)
}

pub fn cairn_wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

fn append(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    let now = ctx.now_ms;
    let len = match ctx.ks.get_mut(key, now) {
        None => {
            ctx.ks.insert(key, Value::Str(args[2].clone()));
            args[2].len()
        }
        Some(e) => match &mut e.value {
            Value::Str(s) => {
                if s.len() + args[2].len() > MAX_STRING_LEN {
                    return err(TOO_BIG);
                }
                s.extend_from_slice(&args[2]);
                s.len()
            }
            _ => return wrongtype(),
        },
    };
    ctx.modified(key);
    ctx.notify(STRING, "append", key);
    Reply::Int(len as i64)
}

fn strlen(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_str(ctx, &args[1]) {
        Ok(s) => Reply::Int(s.map_or(0, |s| s.len()) as i64),
        Err(e) => e,
    }
}

fn getrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (start, end) = match (int_arg(&args[2]), int_arg(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let s = match get_str(ctx, &args[1]) {
        Ok(Some(s)) => s,
        Ok(None) => return Reply::bulk(""),
        Err(e) => return e,
    };
    Reply::Bulk(substring(s, start, end).to_vec())
}

/// GETRANGE's index rules (Redis 7.0).
pub fn substring(s: &[u8], start: i64, end: i64) -> &[u8] {
    let len = s.len() as i64;
    if start < 0 && end < 0 && start > end {
        return &[];
    }
    let mut start = if start < 0 { len + start } else { start };
    let mut end = if end < 0 { len + end } else { end };
    start = start.max(0);
    end = end.max(0);
    if end >= len {
        end = len - 1;
    }
    if start > end || len == 0 {
        return &[];
    }
    &s[start as usize..=end as usize]
}

fn setrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    let offset = match int_arg(&args[2]) {
        Ok(o) if o < 0 => return err("ERR offset is out of range"),
        Ok(o) => o as usize,
        Err(e) => return e,
    };
    let value = &args[3];
    let now = ctx.now_ms;
    let current_len = match ctx.ks.value(key, now) {
        None => None,
        Some(Value::Str(s)) => Some(s.len()),
        Some(_) => return wrongtype(),
    };
    if value.is_empty() {
        return Reply::Int(current_len.unwrap_or(0) as i64);
    }
    if offset + value.len() > MAX_STRING_LEN {
        return err(TOO_BIG);
    }
    let entry = ctx
        .ks
        .get_or_insert_with(key, now, || Value::Str(Vec::new()));
    let Value::Str(s) = &mut entry.value else {
        unreachable!("checked to be a string")
    };
    if s.len() < offset + value.len() {
        s.resize(offset + value.len(), 0);
    }
    s[offset..offset + value.len()].copy_from_slice(value);
    let len = s.len();
    ctx.modified(key);
    ctx.notify(STRING, "setrange", key);
    Reply::Int(len as i64)
}

fn incr(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    incr_by(ctx, &args[1], 1)
}

fn decr(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    incr_by(ctx, &args[1], -1)
}

fn incrby(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match int_arg(&args[2]) {
        Ok(n) => incr_by(ctx, &args[1], n),
        Err(e) => e,
    }
}

fn decrby(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match int_arg(&args[2]) {
        Ok(i64::MIN) => err("ERR decrement would overflow"),
        Ok(n) => incr_by(ctx, &args[1], -n),
        Err(e) => e,
    }
}

fn incr_by(ctx: &mut Ctx, key: &[u8], by: i64) -> Reply {
    let now = ctx.now_ms;
    // One lookup on the hot path: update the string in place when the key exists.
    let new = match ctx.ks.get_mut(key, now).map(|e| &mut e.value) {
        Some(Value::Str(s)) => {
            let Some(current) = parse_i64(s) else {
                return err(NOT_INTEGER);
            };
            let Some(new) = current.checked_add(by) else {
                return err(OVERFLOW);
            };
            s.clear();
            cairn_resp::reply::push_i64(s, new);
            new
        }
        Some(_) => return wrongtype(),
        None => {
            let mut text = Vec::with_capacity(20);
            cairn_resp::reply::push_i64(&mut text, by);
            ctx.ks.insert(key, Value::Str(text));
            by
        }
    };
    ctx.modified(key);
    ctx.notify(STRING, "incrby", key);
    Reply::Int(new)
}

fn incrbyfloat(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    // Redis's order: the key's type, then its value, then the increment.
    let current = match get_str(ctx, key) {
        Ok(None) => 0.0,
        Ok(Some(s)) => match parse_f64(s) {
            Some(v) => v,
            None => return err(NOT_FLOAT),
        },
        Err(e) => return e,
    };
    let by = match float_arg(&args[2]) {
        Ok(v) => v,
        Err(e) => return e,
    };
    let new = current + by;
    if new.is_nan() || new.is_infinite() {
        return err("ERR increment would produce NaN or Infinity");
    }
    let text = format_human(new).into_bytes();
    ctx.ks
        .replace_value(key, Value::Str(text.clone()), ctx.now_ms);
    ctx.modified(key);
    ctx.notify(STRING, "incrbyfloat", key);
    Reply::Bulk(text)
}

fn lcs(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(lcs_body(ctx, args))
}

fn lcs_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut want_len, mut want_idx, mut with_match_len, mut min_len) = (false, false, false, 0i64);
    let mut i = 3;
    while i < args.len() {
        let a = &args[i];
        if is(a, "idx") {
            want_idx = true;
        } else if is(a, "len") {
            want_len = true;
        } else if is(a, "withmatchlen") {
            with_match_len = true;
        } else if is(a, "minmatchlen") && i + 1 < args.len() {
            min_len = int_arg(&args[i + 1])?.max(0);
            i += 1;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    let a = get_str(ctx, &args[1])
        .map_err(|_| err("ERR The specified keys must contain string values"))?;
    let a = a.cloned().unwrap_or_default();
    let b = get_str(ctx, &args[2])
        .map_err(|_| err("ERR The specified keys must contain string values"))?;
    let b = b.cloned().unwrap_or_default();
    if want_len && want_idx {
        return Err(err(
            "ERR If you want both the length and indexes, please just use IDX.",
        ));
    }
    // Transient memory is bounded like Redis: the table may not exceed proto-max-bulk-len.
    let cells = (a.len() as u64 + 1) * (b.len() as u64 + 1);
    if cells * 4 > MAX_STRING_LEN as u64 {
        return Err(err(
            "ERR Insufficient memory, transient memory for LCS exceeds proto-max-bulk-len",
        ));
    }
    let w = b.len() + 1;
    let mut dp = vec![0u32; (a.len() + 1) * w];
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            dp[i * w + j] = if a[i - 1] == b[j - 1] {
                dp[(i - 1) * w + j - 1] + 1
            } else {
                dp[(i - 1) * w + j].max(dp[i * w + j - 1])
            };
        }
    }
    let total = dp[a.len() * w + b.len()] as usize;
    if want_len {
        return Ok(Reply::Int(total as i64));
    }
    // Walk back from the end, collecting the common string and (for IDX) the matching ranges.
    let mut result = vec![0u8; total];
    let mut idx = total;
    let (mut i, mut j) = (a.len(), b.len());
    let mut matches = Vec::new();
    let mut range: Option<(usize, usize, usize, usize)> = None; // a_start, a_end, b_start, b_end
    let emit = |r: (usize, usize, usize, usize), matches: &mut Vec<Reply>| {
        let len = r.1 - r.0 + 1;
        if len as i64 >= min_len {
            let mut m = vec![
                Reply::Array(vec![Reply::Int(r.0 as i64), Reply::Int(r.1 as i64)]),
                Reply::Array(vec![Reply::Int(r.2 as i64), Reply::Int(r.3 as i64)]),
            ];
            if with_match_len {
                m.push(Reply::Int(len as i64));
            }
            matches.push(Reply::Array(m));
        }
    };
    while i > 0 && j > 0 {
        if a[i - 1] == b[j - 1] {
            idx -= 1;
            result[idx] = a[i - 1];
            let (ai, bj) = (i - 1, j - 1);
            range = match range {
                Some(r) if r.0 == ai + 1 && r.2 == bj + 1 => Some((ai, r.1, bj, r.3)),
                Some(r) => {
                    emit(r, &mut matches);
                    Some((ai, ai, bj, bj))
                }
                None => Some((ai, ai, bj, bj)),
            };
            i -= 1;
            j -= 1;
        } else if dp[(i - 1) * w + j] > dp[i * w + j - 1] {
            i -= 1;
        } else {
            j -= 1;
        }
    }
    if let Some(r) = range {
        emit(r, &mut matches);
    }
    if !want_idx {
        return Ok(Reply::Bulk(result));
    }
    Ok(Reply::Map(vec![
        (Reply::from("matches"), Reply::Array(matches)),
        (Reply::from("len"), Reply::Int(total as i64)),
    ]))
}
