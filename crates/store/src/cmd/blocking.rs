//! The blocking pops: BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP, BZPOPMIN, BZPOPMAX, BZMPOP.
//!
//! Here each runs once and never waits: with something to pop it answers as Redis does, else it
//! gives the reply Redis gives a client that may not block (inside MULTI): a nil array, or a nil
//! bulk for BLMOVE and BRPOPLPUSH. Waiting is the connection's business (see
//! [`blocking_form`]): it retries the command whenever a key it waits on changes, until it
//! gets something else or its timeout passes.

use crate::cmd::lists::{get_list, move_one, parse_end, parse_mpop, pop_n, End};
use crate::cmd::zsets::{parse_zmpop, pop as zpop};
use crate::exec::*;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("blpop", blpop),
    ("brpop", brpop),
    ("brpoplpush", brpoplpush),
    ("blmove", blmove),
    ("blmpop", blmpop),
    ("bzpopmin", bzpopmin),
    ("bzpopmax", bzpopmax),
    ("bzmpop", bzmpop),
];

/// A blocking timeout in seconds (a float, 0 for ever) as milliseconds, as Redis 7.0 parses
/// it, `now_ms` being the command's time: past what a 64-bit count of milliseconds holds
/// (infinity included) Redis's conversion wraps to a negative number, and a deadline past that
/// limit is out of range.
pub fn timeout_secs(arg: &[u8], now_ms: u64) -> Result<u64, Reply> {
    let secs = crate::numbers::parse_f64(arg)
        .ok_or_else(|| err("ERR timeout is not a float or out of range"))?;
    let ms = (secs * 1000.0).ceil();
    if ms < 0.0 || ms >= i64::MAX as f64 {
        return Err(err("ERR timeout is negative"));
    }
    let ms = ms as u64;
    if ms > 0 && ms > i64::MAX as u64 - now_ms {
        return Err(err("ERR timeout is out of range"));
    }
    Ok(ms)
}

/// A blocking timeout in milliseconds (XREAD BLOCK).
pub fn timeout_ms(arg: &[u8]) -> Result<u64, Reply> {
    let ms = int_arg(arg).map_err(|_| err("ERR timeout is not an integer or out of range"))?;
    if ms < 0 {
        return Err(err("ERR timeout is negative"));
    }
    Ok(ms as u64)
}

/// The error prefix with which XREAD BLOCK ... `$` that finds nothing tells the connection the
/// IDs `$` stood for (so that each retry reads after the same IDs). Never sent to a client:
/// the connection blocks instead (see `cairn_server::blocking`).
pub const XREAD_FROM: &str = "XREADFROM ";

/// Whether a request is a blocking command (an XREAD or XREADGROUP with BLOCK included): a
/// test without allocation, for every request; [`blocking_form`] then has the details.
pub fn may_block(args: &[Vec<u8>]) -> bool {
    const NAMES: [&str; 8] = [
        "blpop",
        "brpop",
        "brpoplpush",
        "blmove",
        "blmpop",
        "bzpopmin",
        "bzpopmax",
        "bzmpop",
    ];
    let name = &args[0];
    if NAMES.iter().any(|n| is(name, n)) {
        return true;
    }
    (is(name, "xread") || is(name, "xreadgroup"))
        && args[1..]
            .iter()
            .take_while(|a| !is(a, "streams"))
            .any(|a| is(a, "block"))
}

/// What a connection needs to block on a command: how long, and on which keys.
#[derive(Debug, PartialEq)]
pub struct Blocking {
    /// Milliseconds; 0 waits for ever.
    pub timeout_ms: u64,
    pub keys: Vec<Vec<u8>>,
}

/// The blocking form of a request, or None when it does not block (not a blocking command, an
/// XREAD without BLOCK, or arguments it answers with an error anyway).
pub fn blocking_form(name: &str, args: &[Vec<u8>]) -> Option<Blocking> {
    let n = args.len();
    let (timeout_ms, keys) = match name {
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" if n >= 3 => {
            (timeout_secs(&args[n - 1], 0).ok()?, args[1..n - 1].to_vec())
        }
        "brpoplpush" if n == 4 => (timeout_secs(&args[3], 0).ok()?, vec![args[1].clone()]),
        "blmove" if n == 6 => (timeout_secs(&args[5], 0).ok()?, vec![args[1].clone()]),
        "blmpop" if n >= 5 => {
            let (keys, _, _) = parse_mpop(&args[2..]).ok()?;
            (timeout_secs(&args[1], 0).ok()?, keys)
        }
        "bzmpop" if n >= 5 => {
            let (keys, _, _) = parse_zmpop(&args[2..]).ok()?;
            (timeout_secs(&args[1], 0).ok()?, keys)
        }
        "xread" | "xreadgroup" => {
            let streams = args.iter().position(|a| is(a, "streams"))?;
            let block = args[..streams].iter().position(|a| is(a, "block"))?;
            let ms = timeout_ms(args.get(block + 1)?).ok()?;
            let rest = &args[streams + 1..];
            if rest.is_empty() || !rest.len().is_multiple_of(2) {
                return None;
            }
            (ms, rest[..rest.len() / 2].to_vec())
        }
        _ => return None,
    };
    Some(Blocking { timeout_ms, keys })
}

/// The request as it runs inside MULTI, where nothing blocks: XREAD and XREADGROUP without
/// their `BLOCK ms` (when valid; an invalid one is left for the command to refuse).
pub fn without_block(mut args: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    if !(is(&args[0], "xread") || is(&args[0], "xreadgroup")) {
        return args;
    }
    let streams = args
        .iter()
        .position(|a| is(a, "streams"))
        .unwrap_or(args.len());
    if let Some(at) = args[..streams].iter().position(|a| is(a, "block")) {
        if args.get(at + 1).is_some_and(|t| timeout_ms(t).is_ok()) && at + 1 < streams {
            args.drain(at..at + 2);
        }
    }
    args
}

fn blpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    bpop(ctx, args, End::Left)
}

fn brpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    bpop(ctx, args, End::Right)
}

fn bpop(ctx: &mut Ctx, args: &[Vec<u8>], end: End) -> Reply {
    reply((|| {
        timeout_secs(&args[args.len() - 1], ctx.now_ms)?;
        for key in &args[1..args.len() - 1] {
            if let Some(mut v) = pop_n(ctx, key, end, 1)? {
                if let Some(item) = v.pop() {
                    return Ok(Reply::Array(vec![
                        Reply::Bulk(key.clone()),
                        Reply::Bulk(item),
                    ]));
                }
            }
        }
        Ok(Reply::NilArray)
    })())
}

fn brpoplpush(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    if let Err(e) = timeout_secs(&args[3], ctx.now_ms) {
        return e;
    }
    move_one(ctx, &args[1], &args[2], End::Right, End::Left)
}

fn blmove(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (Some(from), Some(to)) = (parse_end(&args[3]), parse_end(&args[4])) else {
        return syntax();
    };
    if let Err(e) = timeout_secs(&args[5], ctx.now_ms) {
        return e;
    }
    move_one(ctx, &args[1], &args[2], from, to)
}

fn blmpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply((|| {
        let (keys, end, count) = parse_mpop(&args[2..])?;
        timeout_secs(&args[1], ctx.now_ms)?;
        for key in keys {
            // A key of another type answers WRONGTYPE, as in Redis.
            get_list(ctx, &key)?;
            if let Some(v) = pop_n(ctx, &key, end, count)? {
                if !v.is_empty() {
                    return Ok(Reply::Array(vec![
                        Reply::Bulk(key),
                        Reply::Array(v.into_iter().map(Reply::Bulk).collect()),
                    ]));
                }
            }
        }
        Ok(Reply::NilArray)
    })())
}

fn bzpopmin(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    bzpop(ctx, args, false)
}

fn bzpopmax(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    bzpop(ctx, args, true)
}

fn bzpop(ctx: &mut Ctx, args: &[Vec<u8>], max: bool) -> Reply {
    reply((|| {
        timeout_secs(&args[args.len() - 1], ctx.now_ms)?;
        for key in &args[1..args.len() - 1] {
            if let Some(mut items) = zpop(ctx, key, max, 1)? {
                if let Some((member, score)) = items.pop() {
                    return Ok(Reply::Array(vec![
                        Reply::Bulk(key.clone()),
                        Reply::Bulk(member),
                        Reply::Double(score),
                    ]));
                }
            }
        }
        Ok(Reply::NilArray)
    })())
}

fn bzmpop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply((|| {
        let (keys, max, count) = parse_zmpop(&args[2..])?;
        timeout_secs(&args[1], ctx.now_ms)?;
        for key in keys {
            if let Some(items) = zpop(ctx, &key, max, count)? {
                if !items.is_empty() {
                    let pairs = items
                        .into_iter()
                        .map(|(m, s)| Reply::Array(vec![Reply::Bulk(m), Reply::Double(s)]))
                        .collect();
                    return Ok(Reply::Array(vec![Reply::Bulk(key), Reply::Array(pairs)]));
                }
            }
        }
        Ok(Reply::NilArray)
    })())
}
