//! Bitmap commands over strings: SETBIT, GETBIT, BITCOUNT, BITPOS, BITOP, BITFIELD(_RO).
//! Bit 0 is the most significant bit of the first byte, as in Redis.

use crate::cmd::strings::{get_str, MAX_STRING_LEN};
use crate::exec::*;
use crate::notify::{GENERIC, STRING};
use crate::value::Value;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("setbit", setbit),
    ("getbit", getbit),
    ("bitcount", bitcount),
    ("bitpos", bitpos),
    ("bitop", bitop),
    ("bitfield", bitfield),
    ("bitfield_ro", bitfield_ro),
];

const BAD_OFFSET: &str = "ERR bit offset is not an integer or out of range";

fn bit_offset(arg: &[u8]) -> Result<u64, Reply> {
    match cairn_resp::decode::parse_i64(arg) {
        Some(n) if n >= 0 && (n as u64) < (MAX_STRING_LEN as u64) * 8 => Ok(n as u64),
        _ => Err(err(BAD_OFFSET)),
    }
}

fn get_bit(s: &[u8], offset: u64) -> u8 {
    let byte = (offset / 8) as usize;
    s.get(byte).map_or(0, |b| (b >> (7 - offset % 8)) & 1)
}

/// The string at `key` for writing bits, grown with zero bytes to at least `len` bytes.
fn bits_mut<'a>(ctx: &'a mut Ctx, key: &[u8], len: usize) -> Result<&'a mut Vec<u8>, Reply> {
    get_str(ctx, key)?;
    let now = ctx.now_ms;
    let Value::Str(s) = &mut ctx
        .ks
        .get_or_insert_with(key, now, || Value::Str(Vec::new()))
        .value
    else {
        unreachable!("checked to be a string")
    };
    if s.len() < len {
        s.resize(len, 0);
    }
    Ok(s)
}

fn setbit(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(setbit_body(ctx, args))
}

fn setbit_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let offset = bit_offset(&args[2])?;
    let on = match args[3].as_slice() {
        b"1" => true,
        b"0" => false,
        _ => return Err(err("ERR bit is not an integer or out of range")),
    };
    let key = &args[1];
    let needed = (offset / 8) as usize + 1;
    let grown = get_str(ctx, key)?.is_none_or(|s| s.len() < needed);
    let s = bits_mut(ctx, key, needed)?;
    let old = get_bit(s, offset);
    let mask = 1u8 << (7 - offset % 8);
    let byte = &mut s[(offset / 8) as usize];
    if on {
        *byte |= mask;
    } else {
        *byte &= !mask;
    }
    // As Redis: a bit set to what it was, in a string that did not grow, changes nothing.
    if grown || (old != 0) != on {
        ctx.modified(key);
        ctx.notify(STRING, "setbit", key);
    }
    Ok(Reply::Int(old as i64))
}

fn getbit(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let offset = match bit_offset(&args[2]) {
        Ok(o) => o,
        Err(e) => return e,
    };
    match get_str(ctx, &args[1]) {
        Ok(s) => Reply::Int(s.map_or(0, |s| get_bit(s, offset)) as i64),
        Err(e) => e,
    }
}

/// Resolves Redis-style start/end (negative from the end) over `total` units; None when empty.
/// BITCOUNT (not BITPOS) also treats two negative indexes in the wrong order as empty.
fn unit_range(start: i64, end: i64, total: i64, negative_shortcut: bool) -> Option<(i64, i64)> {
    if negative_shortcut && start < 0 && end < 0 && start > end {
        return None;
    }
    let mut s = if start < 0 { start + total } else { start };
    let mut e = if end < 0 { end + total } else { end };
    s = s.max(0);
    e = e.max(0);
    if e >= total {
        e = total - 1;
    }
    (s <= e && total > 0).then_some((s, e))
}

/// Parses `[start end [BYTE|BIT]]` starting at `args[i]`: (start, end given, bit mode).
fn parse_range(args: &[Vec<u8>], i: usize) -> Result<(Option<i64>, Option<i64>, bool), Reply> {
    let start = args.get(i).map(|a| int_arg(a)).transpose()?;
    let end = args.get(i + 1).map(|a| int_arg(a)).transpose()?;
    let bit = match args.get(i + 2) {
        None => false,
        Some(a) if is(a, "bit") => true,
        Some(a) if is(a, "byte") => false,
        Some(_) => return Err(syntax()),
    };
    if args.len() > i + 3 {
        return Err(syntax());
    }
    Ok((start, end, bit))
}

fn count_bits(s: &[u8], from_bit: u64, to_bit: u64) -> u64 {
    (from_bit..=to_bit).filter(|&b| get_bit(s, b) == 1).count() as u64
}

fn bitcount(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(bitcount_body(ctx, args))
}

fn bitcount_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    // Redis 7.0 looks the key up before it looks at the arguments.
    let Some(s) = get_str(ctx, &args[1])? else {
        return Ok(Reply::Int(0));
    };
    if args.len() == 3 {
        return Err(syntax());
    }
    let (start, end, bit) = parse_range(args, 2)?;
    let (Some(start), Some(end)) = (start, end) else {
        return Ok(Reply::Int(s.iter().map(|b| b.count_ones() as i64).sum()));
    };
    let total = if bit {
        s.len() as i64 * 8
    } else {
        s.len() as i64
    };
    let Some((a, b)) = unit_range(start, end, total, true) else {
        return Ok(Reply::Int(0));
    };
    Ok(Reply::Int(if bit {
        count_bits(s, a as u64, b as u64) as i64
    } else {
        s[a as usize..=b as usize]
            .iter()
            .map(|x| x.count_ones() as i64)
            .sum()
    }))
}

fn bitpos(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(bitpos_body(ctx, args))
}

fn bitpos_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let want = match int_arg(&args[2])? {
        0 => 0u8,
        1 => 1u8,
        _ => return Err(err("ERR The bit argument must be 1 or 0.")),
    };
    // An absent key answers before the range is parsed, as in Redis 7.0.
    let Some(s) = get_str(ctx, &args[1])? else {
        return Ok(Reply::Int(if want == 1 { -1 } else { 0 }));
    };
    let (start, end, bit) = parse_range(args, 3)?;
    let total = if bit {
        s.len() as i64 * 8
    } else {
        s.len() as i64
    };
    let end_given = end.is_some();
    let Some((a, b)) = unit_range(start.unwrap_or(0), end.unwrap_or(-1), total, false) else {
        return Ok(Reply::Int(-1));
    };
    let (first_bit, last_bit) = if bit {
        (a as u64, b as u64)
    } else {
        (a as u64 * 8, b as u64 * 8 + 7)
    };
    if let Some(pos) = (first_bit..=last_bit).find(|&p| get_bit(s, p) == want) {
        return Ok(Reply::Int(pos as i64));
    }
    // Looking for a clear bit with no end given: the string is as if padded with zeros.
    Ok(Reply::Int(if want == 0 && !end_given {
        last_bit as i64 + 1
    } else {
        -1
    }))
}

fn bitop(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(bitop_body(ctx, args))
}

fn bitop_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let op = args[1].to_ascii_lowercase();
    let op = match op.as_slice() {
        b"and" | b"or" | b"xor" | b"not" => op,
        _ => return Err(syntax()),
    };
    let sources = &args[3..];
    if op == b"not" && sources.len() != 1 {
        return Err(err(
            "ERR BITOP NOT must be called with a single source key.",
        ));
    }
    let inputs: Vec<Vec<u8>> = sources
        .iter()
        .map(|k| match ctx.value(k) {
            None => Ok(Vec::new()),
            Some(Value::Str(s)) => Ok(s.clone()),
            Some(_) => Err(wrongtype()),
        })
        .collect::<Result<_, _>>()?;
    let len = inputs.iter().map(Vec::len).max().unwrap_or(0);
    let byte = |v: &Vec<u8>, i: usize| v.get(i).copied().unwrap_or(0);
    let result: Vec<u8> = (0..len)
        .map(|i| match op.as_slice() {
            b"not" => !byte(&inputs[0], i),
            b"and" => inputs.iter().fold(0xff, |acc, v| acc & byte(v, i)),
            b"or" => inputs.iter().fold(0, |acc, v| acc | byte(v, i)),
            _ => inputs.iter().fold(0, |acc, v| acc ^ byte(v, i)),
        })
        .collect();
    let dst = &args[2];
    if result.is_empty() {
        if ctx.ks.remove_live(dst, ctx.now_ms).is_some() {
            ctx.modified(dst);
            ctx.notify(GENERIC, "del", dst);
        }
        return Ok(Reply::Int(0));
    }
    ctx.ks.insert(dst, Value::Str(result));
    ctx.modified(dst);
    ctx.notify(STRING, "set", dst);
    Ok(Reply::Int(len as i64))
}

#[derive(Clone, Copy, PartialEq)]
enum Overflow {
    Wrap,
    Sat,
    Fail,
}

#[derive(Clone, Copy)]
struct Field {
    signed: bool,
    bits: u32,
    offset: u64,
}

enum FieldOp {
    Get(Field),
    Set(Field, i64, Overflow),
    Incr(Field, i64, Overflow),
}

fn parse_type(arg: &[u8]) -> Result<(bool, u32), Reply> {
    let bad = || {
        err("ERR Invalid bitfield type. Use something like i16 u8. Note that u64 is not supported but i64 is.")
    };
    let (signed, digits) = match arg.first() {
        Some(b'i') | Some(b'I') => (true, &arg[1..]),
        Some(b'u') | Some(b'U') => (false, &arg[1..]),
        _ => return Err(bad()),
    };
    let bits: u32 = std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    if bits < 1 || (signed && bits > 64) || (!signed && bits > 63) {
        return Err(bad());
    }
    Ok((signed, bits))
}

fn parse_field(ty: &[u8], off: &[u8]) -> Result<Field, Reply> {
    let (signed, bits) = parse_type(ty)?;
    let offset = match off.strip_prefix(b"#") {
        Some(n) => cairn_resp::decode::parse_i64(n)
            .filter(|&n| n >= 0)
            .and_then(|n| (n as u64).checked_mul(bits as u64))
            .ok_or_else(|| err(BAD_OFFSET))?,
        None => cairn_resp::decode::parse_i64(off)
            .filter(|&n| n >= 0)
            .ok_or_else(|| err(BAD_OFFSET))? as u64,
    };
    if offset + bits as u64 > MAX_STRING_LEN as u64 * 8 {
        return Err(err(BAD_OFFSET));
    }
    Ok(Field {
        signed,
        bits,
        offset,
    })
}

fn parse_bitfield(args: &[Vec<u8>], read_only: bool) -> Result<Vec<FieldOp>, Reply> {
    let mut ops = Vec::new();
    let mut overflow = Overflow::Wrap;
    let mut i = 2;
    while i < args.len() {
        let a = &args[i];
        let left = args.len() - i - 1;
        if is(a, "get") && left >= 2 {
            ops.push(FieldOp::Get(parse_field(&args[i + 1], &args[i + 2])?));
            i += 3;
        } else if (is(a, "set") || is(a, "incrby")) && left >= 3 {
            if read_only {
                return Err(err("ERR BITFIELD_RO only supports the GET subcommand"));
            }
            let f = parse_field(&args[i + 1], &args[i + 2])?;
            let v = int_arg(&args[i + 3])?;
            ops.push(if is(a, "set") {
                FieldOp::Set(f, v, overflow)
            } else {
                FieldOp::Incr(f, v, overflow)
            });
            i += 4;
        } else if is(a, "overflow") && left >= 1 {
            if read_only {
                return Err(err("ERR BITFIELD_RO only supports the GET subcommand"));
            }
            let o = &args[i + 1];
            overflow = if is(o, "wrap") {
                Overflow::Wrap
            } else if is(o, "sat") {
                Overflow::Sat
            } else if is(o, "fail") {
                Overflow::Fail
            } else {
                return Err(err("ERR Invalid OVERFLOW type specified"));
            };
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    Ok(ops)
}

fn read_field(s: &[u8], f: Field) -> i64 {
    let mut v: u64 = 0;
    for b in 0..f.bits as u64 {
        v = (v << 1) | get_bit(s, f.offset + b) as u64;
    }
    if f.signed && f.bits < 64 && v & (1 << (f.bits - 1)) != 0 {
        v |= u64::MAX << f.bits;
    }
    v as i64
}

fn write_field(s: &mut [u8], f: Field, value: i64) {
    let v = value as u64;
    for b in 0..f.bits as u64 {
        let bit = (v >> (f.bits as u64 - 1 - b)) & 1;
        let pos = f.offset + b;
        let mask = 1u8 << (7 - pos % 8);
        let byte = &mut s[(pos / 8) as usize];
        if bit == 1 {
            *byte |= mask;
        } else {
            *byte &= !mask;
        }
    }
}

/// Adds `incr` to `value` in a field of `f`'s type; None when FAIL applies.
fn add_with_overflow(f: Field, value: i128, incr: i64, how: Overflow) -> Option<i64> {
    let wrap = |x: i128| -> i64 {
        let m = 1i128 << f.bits;
        let mut r = x.rem_euclid(m);
        if f.signed && r >= m / 2 {
            r -= m;
        }
        r as i64
    };
    let (min, max): (i128, i128) = if f.signed {
        (-(1i128 << (f.bits - 1)), (1i128 << (f.bits - 1)) - 1)
    } else {
        (0, (1i128 << f.bits) - 1)
    };
    let exact = value + incr as i128;
    if exact >= min && exact <= max {
        return Some(exact as i64);
    }
    match how {
        Overflow::Wrap => Some(wrap(exact)),
        Overflow::Sat => Some(if exact > max { max as i64 } else { min as i64 }),
        Overflow::Fail => None,
    }
}

fn bitfield(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(bitfield_body(ctx, args, false))
}

fn bitfield_ro(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(bitfield_body(ctx, args, true))
}

fn bitfield_body(ctx: &mut Ctx, args: &[Vec<u8>], read_only: bool) -> Result<Reply, Reply> {
    let ops = parse_bitfield(args, read_only)?;
    let key = &args[1];
    let writes = ops.iter().any(|o| !matches!(o, FieldOp::Get(_)));
    if !writes {
        let s = get_str(ctx, key)?.cloned().unwrap_or_default();
        return Ok(Reply::Array(
            ops.iter()
                .map(|o| match o {
                    FieldOp::Get(f) => Reply::Int(read_field(&s, *f)),
                    _ => unreachable!("no writes"),
                })
                .collect(),
        ));
    }
    let needed = ops
        .iter()
        .filter_map(|o| match o {
            FieldOp::Set(f, ..) | FieldOp::Incr(f, ..) => {
                Some((f.offset + f.bits as u64).div_ceil(8) as usize)
            }
            FieldOp::Get(_) => None,
        })
        .max()
        .unwrap_or(0);
    // As Redis: a write counts as a change when it alters the field or when the string had to
    // be created or grown for it; only changes signal the key and notify.
    let grown = get_str(ctx, key)?.is_none_or(|s| s.len() < needed);
    let s = bits_mut(ctx, key, needed)?;
    let mut out = Vec::with_capacity(ops.len());
    let mut changed = false;
    for op in &ops {
        out.push(match *op {
            FieldOp::Get(f) => Reply::Int(read_field(s, f)),
            FieldOp::Set(f, v, how) => {
                let old = read_field(s, f);
                // Redis reads an unsigned field's new value as a u64: -5 is a huge number.
                let value = if f.signed {
                    v as i128
                } else {
                    v as u64 as i128
                };
                match add_with_overflow(f, value, 0, how) {
                    Some(new) => {
                        write_field(s, f, new);
                        changed |= grown || new != old;
                        Reply::Int(old)
                    }
                    None => Reply::Nil,
                }
            }
            FieldOp::Incr(f, incr, how) => {
                let old = read_field(s, f);
                match add_with_overflow(f, old as i128, incr, how) {
                    Some(new) => {
                        write_field(s, f, new);
                        changed |= grown || new != old;
                        Reply::Int(new)
                    }
                    None => Reply::Nil,
                }
            }
        });
    }
    if changed {
        ctx.modified(key);
        ctx.notify(STRING, "setbit", key);
    }
    Ok(Reply::Array(out))
}
