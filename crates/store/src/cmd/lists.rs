//! List commands (the blocking ones arrive with queues).

use crate::exec::*;
use crate::notify::LIST;
use crate::value::Value;
use cairn_resp::Reply;
use std::collections::VecDeque;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("lpush", lpush),
    ("rpush", rpush),
    ("lpushx", lpushx),
    ("rpushx", rpushx),
    ("lpop", lpop),
    ("rpop", rpop),
    ("llen", llen),
    ("lrange", lrange),
    ("lindex", lindex),
    ("lset", lset),
    ("linsert", linsert),
    ("lrem", lrem),
    ("ltrim", ltrim),
    ("lpos", lpos),
    ("lmove", lmove),
    ("rpoplpush", rpoplpush),
    ("lmpop", lmpop),
];

type List = VecDeque<Vec<u8>>;

/// The list at `key` for reading.
pub fn get_list<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a List>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l)),
        Some(_) => Err(wrongtype()),
    }
}

/// The list at `key` for writing.
pub fn list_mut<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<Option<&'a mut List>, Reply> {
    match ctx.ks.get_mut(key, ctx.now_ms).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::List(l)) => Ok(Some(l)),
        Some(_) => Err(wrongtype()),
    }
}

#[derive(Clone, Copy, PartialEq)]
pub enum End {
    Left,
    Right,
}

pub fn parse_end(arg: &[u8]) -> Option<End> {
    if is(arg, "left") {
        Some(End::Left)
    } else if is(arg, "right") {
        Some(End::Right)
    } else {
        None
    }
}

fn push(ctx: &mut Ctx, args: &[Vec<u8>], end: End, only_existing: bool) -> Reply {
    let key = &args[1];
    let now = ctx.now_ms;
    let list = match ctx.ks.get_mut(key, now).map(|e| &mut e.value) {
        Some(Value::List(l)) => l,
        Some(_) => return wrongtype(),
        None if only_existing => return Reply::Int(0),
        None => {
            ctx.ks.insert(key, Value::new_list());
            let Some(Value::List(l)) = ctx.ks.get_mut(key, now).map(|e| &mut e.value) else {
                unreachable!()
            };
            l
        }
    };
    for v in &args[2..] {
        match end {
            End::Left => list.push_front(v.clone()),
            End::Right => list.push_back(v.clone()),
        }
    }
    let len = list.len();
    ctx.modified(key);
    ctx.notify(LIST, push_event(end), key);
    Reply::Int(len as i64)
}

fn lpush(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    push(ctx, args, End::Left, false)
}

fn rpush(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    push(ctx, args, End::Right, false)
}

fn lpushx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    push(ctx, args, End::Left, true)
}

fn rpushx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    push(ctx, args, End::Right, true)
}

fn push_event(end: End) -> &'static str {
    match end {
        End::Left => "lpush",
        End::Right => "rpush",
    }
}

fn pop_event(end: End) -> &'static str {
    match end {
        End::Left => "lpop",
        End::Right => "rpop",
    }
}

/// Pops up to `count` elements from `end`; removes the key when it empties.
pub fn pop_n(
    ctx: &mut Ctx,
    key: &[u8],
    end: End,
    count: usize,
) -> Result<Option<Vec<Vec<u8>>>, Reply> {
    let Some(list) = list_mut(ctx, key)? else {
        return Ok(None);
    };
    let n = count.min(list.len());
    let out: Vec<Vec<u8>> = match end {
        End::Left => list.drain(..n).collect(),
        End::Right => (0..n).filter_map(|_| list.pop_back()).collect(),
    };
    if n > 0 {
        ctx.notify(LIST, pop_event(end), key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Ok(Some(out))
}

fn pop(ctx: &mut Ctx, args: &[Vec<u8>], end: End) -> Reply {
    if args.len() > 3 {
        return crate::cmd::strings::cairn_wrong_arity(if end == End::Left {
            "lpop"
        } else {
            "rpop"
        });
    }
    let count = match args.get(2).map(|a| positive_arg(a)) {
        None => None,
        Some(Ok(n)) => Some(n as usize),
        Some(Err(e)) => return e,
    };
    match (pop_n(ctx, &args[1], end, count.unwrap_or(1)), count) {
        (Err(e), _) => e,
        (Ok(None), None) => Reply::Nil,
        (Ok(None), Some(_)) => Reply::NilArray,
        (Ok(Some(mut v)), None) => v.pop().map_or(Reply::Nil, Reply::Bulk),
        (Ok(Some(v)), Some(_)) => Reply::Array(v.into_iter().map(Reply::Bulk).collect()),
    }
}

fn lpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    pop(ctx, args, End::Left)
}

fn rpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    pop(ctx, args, End::Right)
}

fn llen(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_list(ctx, &args[1]) {
        Ok(l) => Reply::Int(l.map_or(0, |l| l.len()) as i64),
        Err(e) => e,
    }
}

fn lrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (start, end) = match (int_arg(&args[2]), int_arg(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    match get_list(ctx, &args[1]) {
        Ok(Some(l)) => match clamp_range(start, end, l.len()) {
            Some((s, e)) => bulks(l.range(s..=e)),
            None => Reply::Array(vec![]),
        },
        Ok(None) => Reply::Array(vec![]),
        Err(e) => e,
    }
}

fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let i = if index < 0 { len as i64 + index } else { index };
    (0..len as i64).contains(&i).then_some(i as usize)
}

fn lindex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    // Redis looks the key up before it parses the index.
    match get_list(ctx, &args[1]) {
        Ok(Some(l)) => match int_arg(&args[2]) {
            Ok(index) => {
                resolve_index(index, l.len()).map_or(Reply::Nil, |i| Reply::Bulk(l[i].clone()))
            }
            Err(e) => e,
        },
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

fn lset(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    // Redis looks the key up before it parses the index.
    match get_list(ctx, key) {
        Ok(Some(_)) => {}
        Ok(None) => return err(NO_SUCH_KEY),
        Err(e) => return e,
    }
    let index = match int_arg(&args[2]) {
        Ok(i) => i,
        Err(e) => return e,
    };
    let l = list_mut(ctx, key).expect("checked").expect("checked");
    match resolve_index(index, l.len()) {
        Some(i) => {
            l[i] = args[3].clone();
            ctx.modified(key);
            ctx.notify(LIST, "lset", key);
            Reply::OK
        }
        None => err("ERR index out of range"),
    }
}

fn linsert(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let after = if is(&args[2], "after") {
        true
    } else if is(&args[2], "before") {
        false
    } else {
        return syntax();
    };
    let key = &args[1];
    match list_mut(ctx, key) {
        Ok(Some(l)) => match l.iter().position(|v| v == &args[3]) {
            Some(p) => {
                l.insert(if after { p + 1 } else { p }, args[4].clone());
                let len = l.len();
                ctx.modified(key);
                ctx.notify(LIST, "linsert", key);
                Reply::Int(len as i64)
            }
            None => Reply::Int(-1),
        },
        Ok(None) => Reply::Int(0),
        Err(e) => e,
    }
}

fn lrem(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let count = match int_arg(&args[2]) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let key = &args[1];
    let elem = &args[3];
    let l = match list_mut(ctx, key) {
        Ok(Some(l)) => l,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let limit = if count == 0 {
        usize::MAX
    } else {
        count.unsigned_abs() as usize
    };
    let mut removed = 0;
    if count >= 0 {
        let mut i = 0;
        while i < l.len() && removed < limit {
            if &l[i] == elem {
                l.remove(i);
                removed += 1;
            } else {
                i += 1;
            }
        }
    } else {
        let mut i = l.len();
        while i > 0 && removed < limit {
            i -= 1;
            if &l[i] == elem {
                l.remove(i);
                removed += 1;
            }
        }
    }
    if removed > 0 {
        ctx.notify(LIST, "lrem", key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Reply::Int(removed as i64)
}

fn ltrim(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (start, end) = match (int_arg(&args[2]), int_arg(&args[3])) {
        (Ok(s), Ok(e)) => (s, e),
        (Err(e), _) | (_, Err(e)) => return e,
    };
    let key = &args[1];
    let l = match list_mut(ctx, key) {
        Ok(Some(l)) => l,
        Ok(None) => return Reply::OK,
        Err(e) => return e,
    };
    match clamp_range(start, end, l.len()) {
        Some((s, e)) => {
            l.truncate(e + 1);
            l.drain(..s);
        }
        None => l.clear(),
    }
    ctx.notify(LIST, "ltrim", key);
    ctx.drop_if_emptied(key);
    ctx.modified(key);
    Reply::OK
}

fn lpos(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(lpos_body(ctx, args))
}

fn lpos_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut rank, mut count, mut maxlen) = (1i64, None, 0usize);
    let mut i = 3;
    while i < args.len() {
        let Some(v) = args.get(i + 1) else {
            return Err(syntax());
        };
        if is(&args[i], "rank") {
            rank = int_arg(v)?;
            if rank == 0 {
                return Err(err("ERR RANK can't be zero: use 1 to start from the first match, 2 from the second ... or use negative to start from the end of the list"));
            }
            // Redis 7.0 negates i64::MIN into itself, which then acts as a rank of -1.
            if rank == i64::MIN {
                rank = -1;
            }
        } else if is(&args[i], "count") {
            let c = int_arg(v)?;
            if c < 0 {
                return Err(err("ERR COUNT can't be negative"));
            }
            count = Some(c as usize);
        } else if is(&args[i], "maxlen") {
            let m = int_arg(v)?;
            if m < 0 {
                return Err(err("ERR MAXLEN can't be negative"));
            }
            maxlen = m as usize;
        } else {
            return Err(syntax());
        }
        i += 2;
    }
    let Some(l) = get_list(ctx, &args[1])? else {
        return Ok(if count.is_some() {
            Reply::Array(vec![])
        } else {
            Reply::Nil
        });
    };
    let want = match count {
        Some(0) => usize::MAX,
        Some(c) => c,
        None => 1,
    };
    let mut skip = rank.unsigned_abs() as usize - 1;
    let mut found = Vec::new();
    let indexes: Box<dyn Iterator<Item = usize>> = if rank > 0 {
        Box::new(0..l.len())
    } else {
        Box::new((0..l.len()).rev())
    };
    for (checked, idx) in indexes.enumerate() {
        if maxlen != 0 && checked >= maxlen {
            break;
        }
        if l[idx] == args[2] {
            if skip > 0 {
                skip -= 1;
            } else {
                found.push(Reply::Int(idx as i64));
                if found.len() >= want {
                    break;
                }
            }
        }
    }
    Ok(match count {
        Some(_) => Reply::Array(found),
        None => found.pop().unwrap_or(Reply::Nil),
    })
}

/// Moves one element from `src`'s `from` end to `dst`'s `to` end (LMOVE, RPOPLPUSH, and the
/// blocking forms later).
pub fn move_one(ctx: &mut Ctx, src: &[u8], dst: &[u8], from: End, to: End) -> Reply {
    // As Redis: an absent source answers nil before the destination's type is looked at.
    match get_list(ctx, src) {
        Ok(Some(_)) => {}
        Ok(None) => return Reply::Nil,
        Err(e) => return e,
    }
    if let Err(e) = get_list(ctx, dst) {
        return e;
    }
    if src == dst {
        // A rotation, in place: popping first would empty a one-element list, delete the key
        // and lose its TTL, which Redis keeps.
        let now = ctx.now_ms;
        let entry = ctx.ks.get_or_insert_with(src, now, Value::new_list);
        let Value::List(l) = &mut entry.value else {
            unreachable!("checked to be a list")
        };
        let v = match from {
            End::Left => l.pop_front(),
            End::Right => l.pop_back(),
        }
        .expect("a live list is never empty");
        match to {
            End::Left => l.push_front(v.clone()),
            End::Right => l.push_back(v.clone()),
        }
        ctx.modified(src);
        ctx.notify(LIST, push_event(to), src);
        ctx.notify(LIST, pop_event(from), src);
        return Reply::Bulk(v);
    }
    let l = list_mut(ctx, src)
        .expect("checked to be a list")
        .expect("checked to exist");
    let v = match from {
        End::Left => l.pop_front(),
        End::Right => l.pop_back(),
    }
    .expect("a live list is never empty");
    let now = ctx.now_ms;
    let entry = ctx.ks.get_or_insert_with(dst, now, Value::new_list);
    let Value::List(l) = &mut entry.value else {
        unreachable!("checked to be a list")
    };
    match to {
        End::Left => l.push_front(v.clone()),
        End::Right => l.push_back(v.clone()),
    }
    ctx.modified(dst);
    // Redis's order: the push, then the pop (and the source's deletion when it empties).
    ctx.notify(LIST, push_event(to), dst);
    ctx.notify(LIST, pop_event(from), src);
    ctx.drop_if_emptied(src);
    ctx.modified(src);
    Reply::Bulk(v)
}

fn lmove(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match (parse_end(&args[3]), parse_end(&args[4])) {
        (Some(from), Some(to)) => move_one(ctx, &args[1], &args[2], from, to),
        _ => syntax(),
    }
}

fn rpoplpush(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    move_one(ctx, &args[1], &args[2], End::Right, End::Left)
}

/// Parses `numkeys key... LEFT|RIGHT [COUNT n]` (LMPOP; BLMPOP after its timeout).
pub fn parse_mpop(args: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, End, usize), Reply> {
    let numkeys = int_arg(&args[0])?;
    if numkeys <= 0 {
        return Err(err("ERR numkeys should be greater than 0"));
    }
    let numkeys = numkeys as usize;
    if args.len() < numkeys + 2 {
        return Err(syntax());
    }
    let keys = args[1..=numkeys].to_vec();
    let end = parse_end(&args[numkeys + 1]).ok_or_else(syntax)?;
    let rest = &args[numkeys + 2..];
    let count = match rest {
        [] => 1,
        [c, n] if is(c, "count") => {
            let n = int_arg(n)?;
            if n <= 0 {
                return Err(err("ERR count should be greater than 0"));
            }
            n as usize
        }
        _ => return Err(syntax()),
    };
    Ok((keys, end, count))
}

fn lmpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (keys, end, count) = match parse_mpop(&args[1..]) {
        Ok(p) => p,
        Err(e) => return e,
    };
    for key in keys {
        match pop_n(ctx, &key, end, count) {
            Ok(Some(v)) if !v.is_empty() => {
                return Reply::Array(vec![
                    Reply::Bulk(key),
                    Reply::Array(v.into_iter().map(Reply::Bulk).collect()),
                ])
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    Reply::NilArray
}
