//! Sorted-set commands.

use crate::cmd::hashes::{rand_count, random_missing, random_picks, scan_reply, scan_window};
use crate::cmd::keys::parse_container_scan;
use crate::exec::*;
use crate::glob;
use crate::notify::{GENERIC, ZSET};
use crate::numbers::parse_f64;
use crate::value::{Score, Value, ZSet};
use cairn_resp::Reply;
use std::ops::Bound;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("zadd", zadd),
    ("zincrby", zincrby),
    ("zrem", zrem),
    ("zcard", zcard),
    ("zscore", zscore),
    ("zmscore", zmscore),
    ("zrank", zrank),
    ("zrevrank", zrevrank),
    ("zcount", zcount),
    ("zlexcount", zlexcount),
    ("zrange", zrange),
    ("zrangestore", zrangestore),
    ("zrevrange", zrevrange),
    ("zrangebyscore", zrangebyscore),
    ("zrevrangebyscore", zrevrangebyscore),
    ("zrangebylex", zrangebylex),
    ("zrevrangebylex", zrevrangebylex),
    ("zremrangebyrank", zremrangebyrank),
    ("zremrangebyscore", zremrangebyscore),
    ("zremrangebylex", zremrangebylex),
    ("zpopmin", zpopmin),
    ("zpopmax", zpopmax),
    ("zmpop", zmpop),
    ("zrandmember", zrandmember),
    ("zunion", zunion),
    ("zinter", zinter),
    ("zdiff", zdiff),
    ("zunionstore", zunionstore),
    ("zinterstore", zinterstore),
    ("zdiffstore", zdiffstore),
    ("zintercard", zintercard),
    ("zscan", zscan),
];

/// Members with their scores, in the order a reply lists them.
pub type Scored = Vec<(Vec<u8>, f64)>;

pub fn get_zset<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a ZSet>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z)),
        Some(_) => Err(wrongtype()),
    }
}

fn zset_mut<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<Option<&'a mut ZSet>, Reply> {
    match ctx.ks.get_mut(key, ctx.now_ms).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z)),
        Some(_) => Err(wrongtype()),
    }
}

/// Stores `members` as the sorted set at `dst` (deleting it when empty); returns the count.
/// `event` is what a non-empty result reports (an empty one reports `del`, if it deleted).
fn store_zset(ctx: &mut Ctx, dst: &[u8], members: Scored, event: &'static str) -> Reply {
    let existed = ctx.ks.remove_live(dst, ctx.now_ms).is_some();
    let n = members.len();
    if n > 0 {
        let mut z = ZSet::default();
        for (m, s) in members {
            z.insert(&m, s);
        }
        ctx.ks.insert(dst, Value::ZSet(Box::new(z)));
    }
    if n > 0 || existed {
        ctx.modified(dst);
        ctx.notify(
            if n > 0 { ZSET } else { GENERIC },
            if n > 0 { event } else { "del" },
            dst,
        );
    }
    Reply::Int(n as i64)
}

/// Members with scores as a reply: flat or paired per protocol, or members only.
fn scored_reply(ctx: &Ctx, items: Scored, with_scores: bool) -> Reply {
    if !with_scores {
        return Reply::Array(items.into_iter().map(|(m, _)| Reply::Bulk(m)).collect());
    }
    pairs_reply(
        ctx.resp3(),
        items
            .into_iter()
            .map(|(m, s)| (Reply::Bulk(m), Reply::Double(s)))
            .collect(),
    )
}

fn zadd(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(zadd_body(ctx, args))
}

fn zadd_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (mut nx, mut xx, mut gt, mut lt, mut ch, mut incr) =
        (false, false, false, false, false, false);
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        match () {
            _ if is(a, "nx") => nx = true,
            _ if is(a, "xx") => xx = true,
            _ if is(a, "gt") => gt = true,
            _ if is(a, "lt") => lt = true,
            _ if is(a, "ch") => ch = true,
            _ if is(a, "incr") => incr = true,
            _ => break,
        }
        i += 1;
    }
    let pairs = &args[i..];
    if pairs.is_empty() || !pairs.len().is_multiple_of(2) {
        return Err(syntax());
    }
    if nx && xx {
        return Err(err(
            "ERR XX and NX options at the same time are not compatible",
        ));
    }
    if (nx && (gt || lt)) || (gt && lt) {
        return Err(err(
            "ERR GT, LT, and/or NX options at the same time are not compatible",
        ));
    }
    if incr && pairs.len() > 2 {
        return Err(err(
            "ERR INCR option supports a single increment-element pair",
        ));
    }
    let scores: Vec<f64> = pairs
        .chunks(2)
        .map(|p| float_arg(&p[0]))
        .collect::<Result<_, _>>()?;
    let key = &args[1];
    get_zset(ctx, key)?;
    if !ctx.ks.contains(key, ctx.now_ms) {
        if xx {
            return Ok(if incr { Reply::Nil } else { Reply::Int(0) });
        }
        ctx.ks.insert(key, Value::new_zset());
    }
    let z = zset_mut(ctx, key)?.expect("exists");
    let (mut added, mut updated) = (0, 0);
    let mut incr_result = None;
    for (pair, score) in pairs.chunks(2).zip(scores) {
        let member = &pair[1];
        match z.score(member) {
            Some(current) => {
                if nx {
                    continue;
                }
                let new = if incr { current + score } else { score };
                if new.is_nan() {
                    ctx.drop_if_empty(key);
                    return Err(err("ERR resulting score is not a number (NaN)"));
                }
                if (gt && new <= current) || (lt && new >= current) {
                    continue;
                }
                incr_result = Some(new);
                if new != current {
                    z.insert(member, new);
                    updated += 1;
                }
            }
            None => {
                if xx {
                    continue;
                }
                z.insert(member, score);
                incr_result = Some(score);
                added += 1;
            }
        }
    }
    ctx.drop_if_empty(key);
    if added + updated > 0 {
        ctx.modified(key);
        ctx.notify(ZSET, if incr { "zincr" } else { "zadd" }, key);
    }
    Ok(if incr {
        incr_result.map_or(Reply::Nil, Reply::Double)
    } else {
        Reply::Int(if ch { added + updated } else { added })
    })
}

fn zincrby(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let rewritten = vec![
        b"zadd".to_vec(),
        args[1].clone(),
        b"INCR".to_vec(),
        args[2].clone(),
        args[3].clone(),
    ];
    zadd(ctx, &rewritten)
}

fn zrem(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let key = &args[1];
    let z = match zset_mut(ctx, key) {
        Ok(Some(z)) => z,
        Ok(None) => return Reply::Int(0),
        Err(e) => return e,
    };
    let removed = args[2..].iter().filter(|m| z.remove(m)).count();
    if removed > 0 {
        ctx.notify(ZSET, "zrem", key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Reply::Int(removed as i64)
}

fn zcard(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_zset(ctx, &args[1]) {
        Ok(z) => Reply::Int(z.map_or(0, ZSet::len) as i64),
        Err(e) => e,
    }
}

fn zscore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_zset(ctx, &args[1]) {
        Ok(z) => z
            .and_then(|z| z.score(&args[2]))
            .map_or(Reply::Nil, Reply::Double),
        Err(e) => e,
    }
}

fn zmscore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_zset(ctx, &args[1]) {
        Ok(z) => Reply::Array(
            args[2..]
                .iter()
                .map(|m| z.and_then(|z| z.score(m)).map_or(Reply::Nil, Reply::Double))
                .collect(),
        ),
        Err(e) => e,
    }
}

fn rank(ctx: &mut Ctx, args: &[Vec<u8>], rev: bool) -> Reply {
    match get_zset(ctx, &args[1]) {
        Ok(Some(z)) => match z.rank(&args[2]) {
            Some(r) => Reply::Int(if rev { z.len() - 1 - r } else { r } as i64),
            None => Reply::Nil,
        },
        Ok(None) => Reply::Nil,
        Err(e) => e,
    }
}

fn zrank(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    rank(ctx, args, false)
}

fn zrevrank(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    rank(ctx, args, true)
}

/// A score bound: value and whether it is exclusive.
#[derive(Clone, Copy)]
struct ScoreBound {
    value: f64,
    exclusive: bool,
}

fn parse_score_bound(arg: &[u8]) -> Option<ScoreBound> {
    let (exclusive, text) = match arg.first() {
        Some(b'(') => (true, &arg[1..]),
        _ => (false, arg),
    };
    parse_f64(text).map(|value| ScoreBound { value, exclusive })
}

fn parse_score_range(min: &[u8], max: &[u8]) -> Result<(ScoreBound, ScoreBound), Reply> {
    match (parse_score_bound(min), parse_score_bound(max)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(err("ERR min or max is not a float")),
    }
}

fn above_min(s: f64, min: ScoreBound) -> bool {
    if min.exclusive {
        s > min.value
    } else {
        s >= min.value
    }
}

fn below_max(s: f64, max: ScoreBound) -> bool {
    if max.exclusive {
        s < max.value
    } else {
        s <= max.value
    }
}

/// A lex bound: `-`, `+`, `[x` (inclusive), `(x` (exclusive).
#[derive(Clone)]
enum LexBound {
    Min,
    Max,
    Incl(Vec<u8>),
    Excl(Vec<u8>),
}

fn parse_lex_bound(arg: &[u8]) -> Option<LexBound> {
    match arg.first()? {
        b'-' if arg.len() == 1 => Some(LexBound::Min),
        b'+' if arg.len() == 1 => Some(LexBound::Max),
        b'[' => Some(LexBound::Incl(arg[1..].to_vec())),
        b'(' => Some(LexBound::Excl(arg[1..].to_vec())),
        _ => None,
    }
}

fn parse_lex_range(min: &[u8], max: &[u8]) -> Result<(LexBound, LexBound), Reply> {
    match (parse_lex_bound(min), parse_lex_bound(max)) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => Err(err("ERR min or max not valid string range item")),
    }
}

fn lex_above_min(m: &[u8], min: &LexBound) -> bool {
    match min {
        LexBound::Min => true,
        LexBound::Max => false,
        LexBound::Incl(v) => m >= v.as_slice(),
        LexBound::Excl(v) => m > v.as_slice(),
    }
}

fn lex_below_max(m: &[u8], max: &LexBound) -> bool {
    match max {
        LexBound::Min => false,
        LexBound::Max => true,
        LexBound::Incl(v) => m <= v.as_slice(),
        LexBound::Excl(v) => m < v.as_slice(),
    }
}

/// Members in a score range, in order (or reverse), after LIMIT.
fn by_score(
    z: &ZSet,
    min: ScoreBound,
    max: ScoreBound,
    rev: bool,
    offset: usize,
    count: usize,
) -> Scored {
    let lo = Bound::Included((Score(min.value), Vec::new()));
    let in_range = |s: f64| above_min(s, min) && below_max(s, max);
    if min.value > max.value {
        return vec![];
    }
    let range = z.order.range((lo, Bound::Unbounded));
    let collect = |it: &mut dyn Iterator<Item = &(Score, Vec<u8>)>| {
        it.filter(|(s, _)| in_range(s.0))
            .skip(offset)
            .take(count)
            .map(|(s, m)| (m.clone(), s.0))
            .collect()
    };
    if rev {
        let hi = Bound::Unbounded;
        let mut it = z
            .order
            .range((Bound::Included((Score(min.value), Vec::new())), hi))
            .rev()
            .skip_while(|(s, _)| !below_max(s.0, max))
            .take_while(|(s, _)| above_min(s.0, min));
        collect(&mut it)
    } else {
        let mut it = range
            .skip_while(|(s, _)| !above_min(s.0, min))
            .take_while(|(s, _)| below_max(s.0, max));
        collect(&mut it)
    }
}

fn by_lex(
    z: &ZSet,
    min: &LexBound,
    max: &LexBound,
    rev: bool,
    offset: usize,
    count: usize,
) -> Scored {
    // Lex ranges are meant for members that share one score. When scores differ, Redis first
    // checks the range against the first and last members and then scans in order; doing the
    // same keeps replies identical for such sets too.
    let (Some((_, first)), Some((_, last))) = (z.order.first(), z.order.last()) else {
        return vec![];
    };
    if !lex_range_nonempty(min, max) || !lex_above_min(last, min) || !lex_below_max(first, max) {
        return vec![];
    }
    let mut it: Box<dyn Iterator<Item = &(Score, Vec<u8>)>> = if rev {
        let mut it = z
            .order
            .iter()
            .rev()
            .skip_while(|(_, m)| !lex_below_max(m, max))
            .peekable();
        if it.peek().is_some_and(|(_, m)| !lex_above_min(m, min)) {
            return vec![];
        }
        Box::new(it.take_while(|(_, m)| lex_above_min(m, min)))
    } else {
        let mut it = z
            .order
            .iter()
            .skip_while(|(_, m)| !lex_above_min(m, min))
            .peekable();
        if it.peek().is_some_and(|(_, m)| !lex_below_max(m, max)) {
            return vec![];
        }
        Box::new(it.take_while(|(_, m)| lex_below_max(m, max)))
    };
    it.by_ref()
        .skip(offset)
        .take(count)
        .map(|(s, m)| (m.clone(), s.0))
        .collect()
}

/// Whether a lex range can contain anything at all.
fn lex_range_nonempty(min: &LexBound, max: &LexBound) -> bool {
    match (min, max) {
        (LexBound::Max, _) | (_, LexBound::Min) => false,
        (LexBound::Min, _) | (_, LexBound::Max) => true,
        (LexBound::Incl(a), LexBound::Incl(b)) => a <= b,
        (LexBound::Incl(a) | LexBound::Excl(a), LexBound::Incl(b) | LexBound::Excl(b)) => a < b,
    }
}

fn by_rank(z: &ZSet, start: i64, end: i64, rev: bool) -> Scored {
    let Some((s, e)) = clamp_range(start, end, z.len()) else {
        return vec![];
    };
    let it: Box<dyn Iterator<Item = &(Score, Vec<u8>)>> = if rev {
        Box::new(z.order.iter().rev())
    } else {
        Box::new(z.order.iter())
    };
    it.skip(s)
        .take(e - s + 1)
        .map(|(sc, m)| (m.clone(), sc.0))
        .collect()
}

#[derive(Clone, Copy, PartialEq)]
enum RangeKind {
    Rank,
    Score,
    Lex,
}

/// A parsed ZRANGE-family request.
struct RangeRequest {
    kind: RangeKind,
    rev: bool,
    with_scores: bool,
    limit: Option<(i64, i64)>,
}

/// Runs a range request on `key` with bounds `a` and `b` (already in min, max order for score
/// and lex requests).
fn run_range(
    ctx: &Ctx,
    key: &[u8],
    a: &[u8],
    b: &[u8],
    req: &RangeRequest,
) -> Result<Scored, Reply> {
    // A negative offset selects nothing, but only after the range and the key were checked.
    let (offset, count) = match req.limit {
        None => (0usize, usize::MAX),
        Some((o, _)) if o < 0 => (usize::MAX, 0),
        Some((o, c)) => (o as usize, if c < 0 { usize::MAX } else { c as usize }),
    };
    match req.kind {
        RangeKind::Rank => {
            let (s, e) = (int_arg(a)?, int_arg(b)?);
            Ok(get_zset(ctx, key)?.map_or(vec![], |z| by_rank(z, s, e, req.rev)))
        }
        RangeKind::Score => {
            let (min, max) = parse_score_range(a, b)?;
            Ok(get_zset(ctx, key)?
                .map_or(vec![], |z| by_score(z, min, max, req.rev, offset, count)))
        }
        RangeKind::Lex => {
            let (min, max) = parse_lex_range(a, b)?;
            Ok(get_zset(ctx, key)?
                .map_or(vec![], |z| by_lex(z, &min, &max, req.rev, offset, count)))
        }
    }
}

/// Parses ZRANGE's options (from `args[4..]` of ZRANGE, `args[5..]` of ZRANGESTORE).
fn parse_zrange_options(opts: &[Vec<u8>], allow_scores: bool) -> Result<RangeRequest, Reply> {
    let mut req = RangeRequest {
        kind: RangeKind::Rank,
        rev: false,
        with_scores: false,
        limit: None,
    };
    let mut i = 0;
    while i < opts.len() {
        let a = &opts[i];
        if is(a, "withscores") && allow_scores {
            req.with_scores = true;
        } else if is(a, "limit") && i + 2 < opts.len() {
            req.limit = Some((int_arg(&opts[i + 1])?, int_arg(&opts[i + 2])?));
            i += 2;
        } else if is(a, "byscore") {
            req.kind = RangeKind::Score;
        } else if is(a, "bylex") {
            req.kind = RangeKind::Lex;
        } else if is(a, "rev") {
            req.rev = true;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    if req.limit.is_some() && req.kind == RangeKind::Rank {
        return Err(err(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX",
        ));
    }
    if req.with_scores && req.kind == RangeKind::Lex {
        return Err(err(
            "ERR syntax error, WITHSCORES not supported in combination with BYLEX",
        ));
    }
    Ok(req)
}

fn zrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let req = match parse_zrange_options(&args[4..], true) {
        Ok(r) => r,
        Err(e) => return e,
    };
    // With REV, score and lex ranges are given max first.
    let (a, b) = if req.rev && req.kind != RangeKind::Rank {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    match run_range(ctx, &args[1], a, b, &req) {
        Ok(items) => scored_reply(ctx, items, req.with_scores),
        Err(e) => e,
    }
}

fn zrangestore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let req = match parse_zrange_options(&args[5..], false) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let (a, b) = if req.rev && req.kind != RangeKind::Rank {
        (&args[4], &args[3])
    } else {
        (&args[3], &args[4])
    };
    match run_range(ctx, &args[2], a, b, &req) {
        Ok(items) => store_zset(ctx, &args[1], items, "zrangestore"),
        Err(e) => e,
    }
}

/// Parses the legacy `[WITHSCORES] [LIMIT offset count]` tail of ZRANGEBYSCORE and friends.
fn legacy_options(opts: &[Vec<u8>], kind: RangeKind, rev: bool) -> Result<RangeRequest, Reply> {
    let mut req = RangeRequest {
        kind,
        rev,
        with_scores: false,
        limit: None,
    };
    let mut i = 0;
    while i < opts.len() {
        if is(&opts[i], "withscores") && kind != RangeKind::Lex {
            req.with_scores = true;
            i += 1;
        } else if is(&opts[i], "limit") && i + 2 < opts.len() && kind != RangeKind::Rank {
            req.limit = Some((int_arg(&opts[i + 1])?, int_arg(&opts[i + 2])?));
            i += 3;
        } else {
            return Err(syntax());
        }
    }
    Ok(req)
}

fn legacy_range(ctx: &mut Ctx, args: &[Vec<u8>], kind: RangeKind, rev: bool) -> Reply {
    let req = match legacy_options(&args[4..], kind, rev) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let (a, b) = if rev && kind != RangeKind::Rank {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    match run_range(ctx, &args[1], a, b, &req) {
        Ok(items) => scored_reply(ctx, items, req.with_scores),
        Err(e) => e,
    }
}

fn zrevrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    legacy_range(ctx, args, RangeKind::Rank, true)
}

fn zrangebyscore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    legacy_range(ctx, args, RangeKind::Score, false)
}

fn zrevrangebyscore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    legacy_range(ctx, args, RangeKind::Score, true)
}

fn zrangebylex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    legacy_range(ctx, args, RangeKind::Lex, false)
}

fn zrevrangebylex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    legacy_range(ctx, args, RangeKind::Lex, true)
}

fn zcount(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let req = RangeRequest {
        kind: RangeKind::Score,
        rev: false,
        with_scores: false,
        limit: None,
    };
    run_range(ctx, &args[1], &args[2], &args[3], &req)
        .map_or_else(|e| e, |v| Reply::Int(v.len() as i64))
}

fn zlexcount(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let req = RangeRequest {
        kind: RangeKind::Lex,
        rev: false,
        with_scores: false,
        limit: None,
    };
    run_range(ctx, &args[1], &args[2], &args[3], &req)
        .map_or_else(|e| e, |v| Reply::Int(v.len() as i64))
}

fn remove_range(ctx: &mut Ctx, args: &[Vec<u8>], kind: RangeKind) -> Reply {
    let req = RangeRequest {
        kind,
        rev: false,
        with_scores: false,
        limit: None,
    };
    let doomed = match run_range(ctx, &args[1], &args[2], &args[3], &req) {
        Ok(v) => v,
        Err(e) => return e,
    };
    if doomed.is_empty() {
        return Reply::Int(0);
    }
    let key = &args[1];
    let z = zset_mut(ctx, key)
        .expect("read above")
        .expect("non-empty range");
    for (m, _) in &doomed {
        z.remove(m);
    }
    let event = match kind {
        RangeKind::Rank => "zremrangebyrank",
        RangeKind::Score => "zremrangebyscore",
        RangeKind::Lex => "zremrangebylex",
    };
    ctx.notify(ZSET, event, key);
    ctx.drop_if_emptied(key);
    ctx.modified(key);
    Reply::Int(doomed.len() as i64)
}

fn zremrangebyrank(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    remove_range(ctx, args, RangeKind::Rank)
}

fn zremrangebyscore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    remove_range(ctx, args, RangeKind::Score)
}

fn zremrangebylex(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    remove_range(ctx, args, RangeKind::Lex)
}

/// Pops up to `count` lowest (or highest) members; Ok(None) when the key is absent.
pub fn pop(ctx: &mut Ctx, key: &[u8], max: bool, count: usize) -> Result<Option<Scored>, Reply> {
    let Some(z) = zset_mut(ctx, key)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    while out.len() < count {
        let next = if max { z.order.last() } else { z.order.first() };
        let Some((s, m)) = next.map(|(s, m)| (s.0, m.clone())) else {
            break;
        };
        z.remove(&m);
        out.push((m, s));
    }
    if !out.is_empty() {
        ctx.notify(ZSET, if max { "zpopmax" } else { "zpopmin" }, key);
        ctx.drop_if_emptied(key);
        ctx.modified(key);
    }
    Ok(Some(out))
}

fn zpop(ctx: &mut Ctx, args: &[Vec<u8>], max: bool) -> Reply {
    if args.len() > 3 {
        return syntax();
    }
    let count = match args.get(2).map(|c| positive_arg(c)) {
        None => None,
        Some(Ok(c)) => Some(c as usize),
        Some(Err(e)) => return e,
    };
    match pop(ctx, &args[1], max, count.unwrap_or(1)) {
        Err(e) => e,
        Ok(None) => Reply::Array(vec![]),
        Ok(Some(items)) => {
            // With a count, RESP3 nests each pair; without one the pair is flat.
            if count.is_some() {
                scored_reply(ctx, items, true)
            } else {
                Reply::Array(
                    items
                        .into_iter()
                        .flat_map(|(m, s)| [Reply::Bulk(m), Reply::Double(s)])
                        .collect(),
                )
            }
        }
    }
}

fn zpopmin(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    zpop(ctx, args, false)
}

fn zpopmax(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    zpop(ctx, args, true)
}

/// Parses `numkeys key... MIN|MAX [COUNT n]` (ZMPOP; BZMPOP after its timeout).
pub fn parse_zmpop(args: &[Vec<u8>]) -> Result<(Vec<Vec<u8>>, bool, usize), Reply> {
    let numkeys = int_arg(&args[0])?;
    if numkeys <= 0 {
        return Err(err("ERR numkeys should be greater than 0"));
    }
    let numkeys = numkeys as usize;
    if args.len() < numkeys + 2 {
        return Err(syntax());
    }
    let keys = args[1..=numkeys].to_vec();
    let where_ = &args[numkeys + 1];
    let max = if is(where_, "max") {
        true
    } else if is(where_, "min") {
        false
    } else {
        return Err(syntax());
    };
    let count = match &args[numkeys + 2..] {
        [] => 1,
        [c, n] if is(c, "count") => match int_arg(n)? {
            n if n <= 0 => return Err(err("ERR count should be greater than 0")),
            n => n as usize,
        },
        _ => return Err(syntax()),
    };
    Ok((keys, max, count))
}

fn zmpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (keys, max, count) = match parse_zmpop(&args[1..]) {
        Ok(p) => p,
        Err(e) => return e,
    };
    for key in keys {
        match pop(ctx, &key, max, count) {
            Ok(Some(items)) if !items.is_empty() => {
                let pairs = items
                    .into_iter()
                    .map(|(m, s)| Reply::Array(vec![Reply::Bulk(m), Reply::Double(s)]))
                    .collect();
                return Reply::Array(vec![Reply::Bulk(key), Reply::Array(pairs)]);
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    Reply::NilArray
}

fn zrandmember(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let with_scores = match args.get(3) {
        None => false,
        Some(a) if is(a, "withscores") && args.len() == 4 => true,
        Some(_) => return syntax(),
    };
    let count = match rand_count(args, with_scores) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let len = match get_zset(ctx, &args[1]) {
        Ok(Some(z)) => z.len(),
        Ok(None) => return random_missing(count),
        Err(e) => return e,
    };
    let picks = random_picks(ctx, len, count);
    let z = get_zset(ctx, &args[1]).expect("checked").expect("checked");
    // Order positions come from the sorted order, so the choice depends only on the contents.
    let ordered: Vec<(&[u8], f64)> = z.iter().collect();
    let items: Scored = picks
        .iter()
        .map(|&i| (ordered[i].0.to_vec(), ordered[i].1))
        .collect();
    match count {
        None => Reply::Bulk(items[0].0.clone()),
        Some(_) => scored_reply(ctx, items, with_scores),
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Aggregate {
    Sum,
    Min,
    Max,
}

#[derive(Clone, Copy, PartialEq)]
enum ZOp {
    Union,
    Inter,
    Diff,
}

/// The members and scores of a sorted set or (as score 1) a plain set at `key`.
fn scored_members(ctx: &Ctx, key: &[u8]) -> Result<Option<Scored>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::ZSet(z)) => Ok(Some(z.iter().map(|(m, s)| (m.to_vec(), s)).collect())),
        Some(Value::Set(s)) => Ok(Some(s.iter().map(|m| (m.clone(), 1.0)).collect())),
        Some(_) => Err(wrongtype()),
    }
}

/// Parses `numkeys key... [WEIGHTS ...] [AGGREGATE ...] [WITHSCORES]` and computes the result,
/// sorted by score then member.
fn combine(
    ctx: &Ctx,
    args: &[Vec<u8>],
    op: ZOp,
    allow_scores: bool,
    name: &str,
) -> Result<(Scored, bool), Reply> {
    let numkeys = int_arg(&args[0])?;
    if numkeys < 1 {
        return Err(Reply::error(format!(
            "ERR at least 1 input key is needed for '{name}' command"
        )));
    }
    let numkeys = numkeys as usize;
    if numkeys > args.len() - 1 {
        return Err(syntax());
    }
    let keys = &args[1..=numkeys];
    // Redis checks every input's type before it reads WEIGHTS and AGGREGATE.
    let inputs: Vec<Option<Scored>> = keys
        .iter()
        .map(|k| scored_members(ctx, k))
        .collect::<Result<_, _>>()?;
    let mut weights = vec![1.0; numkeys];
    let mut agg = Aggregate::Sum;
    let mut with_scores = false;
    let mut i = numkeys + 1;
    while i < args.len() {
        let a = &args[i];
        if is(a, "weights") && op != ZOp::Diff && i + numkeys < args.len() {
            for (w, arg) in weights.iter_mut().zip(&args[i + 1..=i + numkeys]) {
                *w = parse_f64(arg).ok_or_else(|| err("ERR weight value is not a float"))?;
            }
            i += numkeys + 1;
        } else if is(a, "aggregate") && op != ZOp::Diff && i + 1 < args.len() {
            let v = &args[i + 1];
            agg = if is(v, "sum") {
                Aggregate::Sum
            } else if is(v, "min") {
                Aggregate::Min
            } else if is(v, "max") {
                Aggregate::Max
            } else {
                return Err(syntax());
            };
            i += 2;
        } else if is(a, "withscores") && allow_scores {
            with_scores = true;
            i += 1;
        } else {
            return Err(syntax());
        }
    }
    let weigh = |s: f64, w: f64| {
        let v = s * w;
        if v.is_nan() {
            0.0
        } else {
            v
        }
    };
    let fold = |acc: f64, v: f64| match agg {
        Aggregate::Sum => {
            let r = acc + v;
            if r.is_nan() {
                0.0
            } else {
                r
            }
        }
        Aggregate::Min => acc.min(v),
        Aggregate::Max => acc.max(v),
    };
    let mut result: indexmap::IndexMap<Vec<u8>, f64, foldhash::fast::RandomState> =
        Default::default();
    match op {
        ZOp::Union => {
            for (input, w) in inputs.iter().zip(&weights) {
                for (m, s) in input.iter().flatten() {
                    let v = weigh(*s, *w);
                    result
                        .entry(m.clone())
                        .and_modify(|acc| *acc = fold(*acc, v))
                        .or_insert(v);
                }
            }
        }
        ZOp::Inter => {
            if inputs.iter().all(Option::is_some) {
                let maps: Vec<std::collections::HashMap<&[u8], f64>> = inputs
                    .iter()
                    .flatten()
                    .map(|v| v.iter().map(|(m, s)| (m.as_slice(), *s)).collect())
                    .collect();
                for (m, s) in inputs[0].iter().flatten() {
                    let mut acc = weigh(*s, weights[0]);
                    let mut everywhere = true;
                    for (map, w) in maps[1..].iter().zip(&weights[1..]) {
                        match map.get(m.as_slice()) {
                            Some(s2) => acc = fold(acc, weigh(*s2, *w)),
                            None => {
                                everywhere = false;
                                break;
                            }
                        }
                    }
                    if everywhere {
                        result.insert(m.clone(), acc);
                    }
                }
            }
        }
        ZOp::Diff => {
            if let Some(first) = &inputs[0] {
                for (m, s) in first {
                    let elsewhere = inputs[1..]
                        .iter()
                        .flatten()
                        .any(|other| other.iter().any(|(m2, _)| m2 == m));
                    if !elsewhere {
                        result.insert(m.clone(), *s);
                    }
                }
            }
        }
    }
    let mut items: Scored = result.into_iter().collect();
    items.sort_by(|a, b| Score(a.1).cmp(&Score(b.1)).then_with(|| a.0.cmp(&b.0)));
    Ok((items, with_scores))
}

fn zunion(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    combine(ctx, &args[1..], ZOp::Union, true, "zunion")
        .map_or_else(|e| e, |(v, w)| scored_reply(ctx, v, w))
}

fn zinter(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    combine(ctx, &args[1..], ZOp::Inter, true, "zinter")
        .map_or_else(|e| e, |(v, w)| scored_reply(ctx, v, w))
}

fn zdiff(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    combine(ctx, &args[1..], ZOp::Diff, true, "zdiff")
        .map_or_else(|e| e, |(v, w)| scored_reply(ctx, v, w))
}

fn zstore(ctx: &mut Ctx, args: &[Vec<u8>], op: ZOp, name: &'static str) -> Reply {
    match combine(ctx, &args[2..], op, false, name) {
        Ok((items, _)) => store_zset(ctx, &args[1], items, name),
        Err(e) => e,
    }
}

fn zunionstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    zstore(ctx, args, ZOp::Union, "zunionstore")
}

fn zinterstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    zstore(ctx, args, ZOp::Inter, "zinterstore")
}

fn zdiffstore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    zstore(ctx, args, ZOp::Diff, "zdiffstore")
}

fn zintercard(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (keys, limit) = match crate::cmd::sets::parse_intercard(args) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let mut rewritten = vec![keys.len().to_string().into_bytes()];
    rewritten.extend(keys);
    match combine(ctx, &rewritten, ZOp::Inter, false, "zintercard") {
        Ok((items, _)) => Reply::Int(items.len().min(limit) as i64),
        Err(e) => e,
    }
}

fn zscan(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (cursor, o) = match parse_container_scan(args) {
        Ok(parsed) => parsed,
        Err(e) => return e,
    };
    let z = match get_zset(ctx, &args[1]) {
        Ok(Some(z)) => z,
        Ok(None) => return scan_reply(0, vec![]),
        Err(e) => return e,
    };
    let (next, range) = scan_window(z.len(), cursor, o.count);
    let mut items = Vec::new();
    for (m, s) in z.iter().skip(range.start).take(range.len()) {
        if o.pattern
            .as_ref()
            .is_none_or(|p| glob::matches(p, m, false))
        {
            items.push(Reply::Bulk(m.to_vec()));
            items.push(Reply::Bulk(crate::numbers::format_score(s).into_bytes()));
        }
    }
    scan_reply(next, items)
}
