//! Set commands.

use crate::cmd::hashes::{
    distinct_indexes, rand_count, random_missing, random_picks, scan_reply, scan_window,
};
use crate::cmd::keys::parse_container_scan;
use crate::exec::*;
use crate::glob;
use crate::notify::{GENERIC, SET};
use crate::value::{SetValue, Value};
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("sadd", sadd),
    ("srem", srem),
    ("scard", scard),
    ("sismember", sismember),
    ("smismember", smismember),
    ("smembers", smembers),
    ("spop", spop),
    ("srandmember", srandmember),
    ("smove", smove),
    ("sinter", sinter),
    ("sintercard", sintercard),
    ("sinterstore", sinterstore),
    ("sunion", sunion),
    ("sunionstore", sunionstore),
    ("sdiff", sdiff),
    ("sdiffstore", sdiffstore),
    ("sscan", sscan),
];

pub fn get_set<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a SetValue>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(wrongtype()),
    }
}

fn set_mut<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<Option<&'a mut SetValue>, Reply> {
    match ctx.ks.get_mut(key, ctx.now_ms).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Set(s)) => Ok(Some(s)),
        Some(_) => Err(wrongtype()),
    }
}

fn sadd(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    if let Err(e) = get_set(ctx, key) {
        return e;
    }
    let now = ctx.now_ms;
    let Value::Set(s) = &mut ctx.ks.get_or_insert_with(key, now, Value::new_set).value else {
        unreachable!()
    };
    let added = args[2..].iter().filter(|m| s.insert((*m).clone())).count();
    if added > 0 {
        ctx.modified(key);
        ctx.notify(SET, "sadd", key);
    }
    Reply::Int(added as i64)
}

fn srem(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    let s = match set_mut(ctx, key) {
        Ok(Some(s)) => s,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let removed = args[2..].iter().filter(|m| s.swap_remove(*m)).count();
    if removed > 0 {
        ctx.notify(SET, "srem", key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Reply::Int(removed as i64)
}

fn scard(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_set(ctx, &args[1]) {
        Ok(s) => Reply::Int(s.map_or(0, |s| s.len()) as i64),
        Err(e) => e,
    }
}

fn sismember(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_set(ctx, &args[1]) {
        Ok(s) => Reply::Int(s.is_some_and(|s| s.contains(&args[2])) as i64),
        Err(e) => e,
    }
}

fn smismember(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_set(ctx, &args[1]) {
        Ok(s) => Reply::Array(
            args[2..]
                .iter()
                .map(|m| Reply::Int(s.is_some_and(|s| s.contains(m)) as i64))
                .collect(),
        ),
        Err(e) => e,
    }
}

fn set_reply<'a>(items: impl IntoIterator<Item = &'a Vec<u8>>) -> Reply {
    Reply::Set(items.into_iter().map(|m| Reply::Bulk(m.clone())).collect())
}

fn smembers(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_set(ctx, &args[1]) {
        Ok(s) => set_reply(s.into_iter().flatten()),
        Err(e) => e,
    }
}

fn spop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if args.len() > 3 {
        return syntax();
    }
    let count = match args.get(2).map(|c| positive_arg(c)) {
        None => None,
        Some(Ok(c)) => Some(c as usize),
        Some(Err(e)) => return e,
    };
    let key = &args[1];
    let len = match get_set(ctx, key) {
        Ok(Some(s)) => s.len(),
        Ok(None) => {
            return if count.is_some() {
                Reply::Set(vec![])
            } else {
                Reply::Nil
            }
        }
        Err(e) => return e,
    };
    let n = count.unwrap_or(1).min(len);
    let mut picks = distinct_indexes(ctx, len, n);
    // Remove from the highest index down so swap_remove never disturbs a pick still to come.
    picks.sort_unstable_by(|a, b| b.cmp(a));
    let s = set_mut(ctx, key).expect("checked").expect("checked");
    let popped: Vec<Vec<u8>> = picks
        .iter()
        .filter_map(|&i| s.swap_remove_index(i))
        .collect();
    if !popped.is_empty() {
        ctx.notify(SET, "spop", key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    match count {
        None => popped.into_iter().next().map_or(Reply::Nil, Reply::Bulk),
        Some(_) => Reply::Set(popped.into_iter().map(Reply::Bulk).collect()),
    }
}

fn srandmember(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if args.len() > 3 {
        return syntax();
    }
    let count = match rand_count(args, false) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let len = match get_set(ctx, &args[1]) {
        Ok(Some(s)) => s.len(),
        Ok(None) => return random_missing(count),
        Err(e) => return e,
    };
    let picks = random_picks(ctx, len, count);
    let s = get_set(ctx, &args[1]).expect("checked").expect("checked");
    let item = |i: usize| Reply::Bulk(s.get_index(i).expect("below len").clone());
    match count {
        None => item(picks[0]),
        Some(_) => Reply::Array(picks.into_iter().map(item).collect()),
    }
}

fn smove(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (src, dst, m) = (&args[1], &args[2], &args[3]);
    // As Redis: an absent source answers 0 before either type is checked.
    let present = match get_set(ctx, src) {
        Ok(Some(s)) => s.contains(m),
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    if let Err(e) = get_set(ctx, dst) {
        return e;
    }
    if !present {
        return Reply::Int(0);
    }
    if src == dst {
        return Reply::Int(1);
    }
    set_mut(ctx, src)
        .expect("checked")
        .expect("checked")
        .swap_remove(m);
    ctx.notify(SET, "srem", src);
    ctx.drop_if_emptied(src);
    ctx.modified(src);
    let now = ctx.now_ms;
    let Value::Set(d) = &mut ctx.ks.get_or_insert_with(dst, now, Value::new_set).value else {
        unreachable!()
    };
    if d.insert(m.clone()) {
        ctx.modified(dst);
        ctx.notify(SET, "sadd", dst);
    }
    Reply::Int(1)
}

/// The sets at `keys` (missing keys are empty sets); WRONGTYPE if any key holds another type.
fn sets_of<'a>(ctx: &'a Ctx, keys: &[Vec<u8>]) -> Result<Vec<Option<&'a SetValue>>, Reply> {
    keys.iter().map(|k| get_set(ctx, k)).collect()
}

enum SetOp {
    Inter,
    Union,
    Diff,
}

fn compute(ctx: &Ctx, keys: &[Vec<u8>], op: SetOp, limit: usize) -> Result<Vec<Vec<u8>>, Reply> {
    let sets = sets_of(ctx, keys)?;
    let mut out: Vec<Vec<u8>> = Vec::new();
    match op {
        SetOp::Inter => {
            if sets.iter().any(Option::is_none) {
                return Ok(out);
            }
            let mut sets: Vec<&SetValue> = sets.into_iter().flatten().collect();
            sets.sort_by_key(|s| s.len());
            for m in sets[0].iter() {
                if sets[1..].iter().all(|s| s.contains(m)) {
                    out.push(m.clone());
                    if out.len() >= limit {
                        break;
                    }
                }
            }
        }
        SetOp::Union => {
            let mut seen = SetValue::default();
            for s in sets.into_iter().flatten() {
                for m in s.iter() {
                    if seen.insert(m.clone()) {
                        out.push(m.clone());
                    }
                }
            }
        }
        SetOp::Diff => {
            if let Some(Some(first)) = sets.first() {
                for m in first.iter() {
                    if !sets[1..].iter().flatten().any(|s| s.contains(m)) {
                        out.push(m.clone());
                    }
                }
            }
        }
    }
    Ok(out)
}

fn sinter(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    compute(ctx, &args[1..], SetOp::Inter, usize::MAX).map_or_else(|e| e, |v| set_reply(&v))
}

fn sunion(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    compute(ctx, &args[1..], SetOp::Union, usize::MAX).map_or_else(|e| e, |v| set_reply(&v))
}

fn sdiff(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    compute(ctx, &args[1..], SetOp::Diff, usize::MAX).map_or_else(|e| e, |v| set_reply(&v))
}

fn store(ctx: &mut Ctx, args: &[Vec<u8>], op: SetOp) -> Reply {
    let event = match op {
        SetOp::Inter => "sinterstore",
        SetOp::Union => "sunionstore",
        SetOp::Diff => "sdiffstore",
    };
    let members = match compute(ctx, &args[2..], op, usize::MAX) {
        Ok(m) => m,
        Err(e) => return e,
    };
    let dst = &args[1];
    let n = members.len();
    let existed = ctx.ks.remove_live(dst, ctx.now_ms).is_some();
    if n > 0 {
        ctx.ks
            .insert(dst, Value::Set(Box::new(members.into_iter().collect())));
    }
    if n > 0 || existed {
        ctx.modified(dst);
        ctx.notify(
            if n > 0 { SET } else { GENERIC },
            if n > 0 { event } else { "del" },
            dst,
        );
    }
    Reply::Int(n as i64)
}

fn sinterstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    store(ctx, args, SetOp::Inter)
}

fn sunionstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    store(ctx, args, SetOp::Union)
}

fn sdiffstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    store(ctx, args, SetOp::Diff)
}

/// Parses `numkeys key... [LIMIT n]` for SINTERCARD and ZINTERCARD.
pub fn parse_intercard(args: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, usize), Reply> {
    let numkeys = int_arg(&args[1])?;
    if numkeys <= 0 {
        return Err(err("ERR numkeys should be greater than 0"));
    }
    let numkeys = numkeys as usize;
    if numkeys > args.len() - 2 {
        return Err(err(
            "ERR Number of keys can't be greater than number of args",
        ));
    }
    let keys = args[2..2 + numkeys].to_vec();
    let mut limit = usize::MAX;
    let rest = &args[2 + numkeys..];
    let mut i = 0;
    while i < rest.len() {
        if is(&rest[i], "limit") && i + 1 < rest.len() {
            let l = int_arg(&rest[i + 1])?;
            if l < 0 {
                return Err(err("ERR LIMIT can't be negative"));
            }
            limit = if l == 0 { usize::MAX } else { l as usize };
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    Ok((keys, limit))
}

fn sintercard(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (keys, limit) = match parse_intercard(args) {
        Ok(p) => p,
        Err(e) => return e,
    };
    compute(ctx, &keys, SetOp::Inter, limit).map_or_else(|e| e, |v| Reply::Int(v.len() as i64))
}

fn sscan(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (cursor, o) = match parse_container_scan(args) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    let s = match get_set(ctx, &args[1]) {
        Ok(Some(s)) => s,
        Ok(None) => return scan_reply(0, vec![]),
        Err(e) => return e,
    };
    let (next, range) = scan_window(s.len(), cursor, o.count);
    let items = s.as_slice()[range]
        .iter()
        .filter(|m| {
            o.pattern
                .as_ref()
                .is_none_or(|p| glob::matches(p, m, false))
        })
        .map(|m| Reply::Bulk(m.clone()))
        .collect();
    scan_reply(next, items)
}
