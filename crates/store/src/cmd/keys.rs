//! Generic key commands: existence, deletion, renaming, expiry, scanning, DUMP/RESTORE, OBJECT.

use crate::exec::*;
use crate::glob;
use crate::notify::GENERIC;
use crate::value::Value;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("del", del),
    ("unlink", del),
    ("memory|usage", memory_usage),
    ("exists", exists),
    ("touch", exists),
    ("type", type_),
    ("rename", rename),
    ("renamenx", renamenx),
    ("copy", copy),
    ("move", move_),
    ("keys", keys),
    ("scan", scan),
    ("randomkey", randomkey),
    ("expire", expire),
    ("pexpire", pexpire),
    ("expireat", expireat),
    ("pexpireat", pexpireat),
    ("ttl", ttl),
    ("pttl", pttl),
    ("expiretime", expiretime),
    ("pexpiretime", pexpiretime),
    ("persist", persist),
    ("dump", dump),
    ("restore", restore),
    ("object|encoding", object_encoding),
    ("object|freq", object_freq),
    ("object|idletime", object_idletime),
    ("object|refcount", object_refcount),
    ("object|help", object_help),
];

fn del(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let mut n = 0;
    for key in &args[1..] {
        if ctx.ks.remove_live(key, ctx.now_ms).is_some() {
            ctx.modified(key);
            ctx.notify(GENERIC, "del", key);
            n += 1;
        }
    }
    Reply::Int(n)
}

fn exists(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    Reply::Int(
        args[1..]
            .iter()
            .filter(|k| ctx.ks.contains(k, ctx.now_ms))
            .count() as i64,
    )
}

fn type_(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    Reply::Status(ctx.value(&args[1]).map_or("none", Value::type_name).into())
}

fn rename(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    rename_generic(ctx, args, false)
}

fn renamenx(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    rename_generic(ctx, args, true)
}

fn rename_generic(ctx: &mut Ctx, args: &[Vec<u8>], nx: bool) -> Reply {
    let (src, dst) = (&args[1], &args[2]);
    if !ctx.ks.contains(src, ctx.now_ms) {
        return err(NO_SUCH_KEY);
    }
    if src == dst {
        return if nx { Reply::Int(0) } else { Reply::OK };
    }
    if nx && ctx.ks.contains(dst, ctx.now_ms) {
        return Reply::Int(0);
    }
    let entry = ctx.ks.remove(src).expect("checked live");
    ctx.ks.remove(dst);
    ctx.ks.insert_entry(dst, entry);
    ctx.modified(src);
    ctx.modified(dst);
    ctx.notify(GENERIC, "rename_from", src);
    ctx.notify(GENERIC, "rename_to", dst);
    if nx {
        Reply::Int(1)
    } else {
        Reply::OK
    }
}

fn copy(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (src, dst) = (&args[1], &args[2]);
    let mut replace = false;
    let mut i = 3;
    while i < args.len() {
        if is(&args[i], "replace") {
            replace = true;
        } else if is(&args[i], "db") && i + 1 < args.len() {
            match int_arg(&args[i + 1]) {
                Ok(0) => {}
                Ok(_) => return err("ERR DB index is out of range"),
                Err(e) => return e,
            }
            i += 1;
        } else {
            return syntax();
        }
        i += 1;
    }
    if src == dst {
        return err("ERR source and destination objects are the same");
    }
    let Some(e) = ctx.ks.get(src, ctx.now_ms) else {
        return Reply::Int(0);
    };
    let (value, at) = (e.value.duplicate(), e.expire_at_ms);
    if ctx.ks.contains(dst, ctx.now_ms) {
        if !replace {
            return Reply::Int(0);
        }
        ctx.ks.remove(dst);
    }
    ctx.ks.insert_entry(
        dst,
        crate::keyspace::Entry {
            value,
            expire_at_ms: at,
        },
    );
    ctx.modified(dst);
    ctx.notify(GENERIC, "copy_to", dst);
    Reply::Int(1)
}

fn move_(_ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match int_arg(&args[2]) {
        Ok(0) => err("ERR source and destination objects are the same"),
        Ok(_) => err("ERR DB index is out of range"),
        Err(e) => e,
    }
}

fn keys(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let pattern = &args[1];
    let now = ctx.now_ms;
    let all = pattern.as_slice() == b"*";
    Reply::Array(
        ctx.ks
            .iter()
            .filter(|(k, e)| !e.is_expired(now) && (all || glob::matches(pattern, k, false)))
            .map(|(k, _)| Reply::Bulk(k.to_vec()))
            .collect(),
    )
}

/// Parses SCAN-family options after the cursor: MATCH, COUNT and (for SCAN) TYPE.
pub struct ScanOptions {
    pub pattern: Option<Vec<u8>>,
    pub count: usize,
    pub type_name: Option<Vec<u8>>,
    pub novalues: bool,
}

pub fn parse_scan_cursor(arg: &[u8]) -> Result<u64, Reply> {
    std::str::from_utf8(arg)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|_| !arg.starts_with(b"+"))
        .ok_or_else(|| err("ERR invalid cursor"))
}

/// Parses a container SCAN's `cursor [MATCH p] [COUNT n]` (HSCAN, SSCAN, ZSCAN: args[2..]).
pub fn parse_container_scan(args: &[Vec<u8>]) -> Result<(usize, ScanOptions), Reply> {
    let cursor = parse_scan_cursor(&args[2])? as usize;
    Ok((cursor, parse_scan_options(&args[3..], false)?))
}

pub fn parse_scan_options(args: &[Vec<u8>], allow_type: bool) -> Result<ScanOptions, Reply> {
    let mut o = ScanOptions {
        pattern: None,
        count: 10,
        type_name: None,
        novalues: false,
    };
    let mut i = 0;
    while i < args.len() {
        let more = i + 1 < args.len();
        if is(&args[i], "count") && more {
            let n = int_arg(&args[i + 1])?;
            if n < 1 {
                return Err(syntax());
            }
            o.count = n as usize;
            i += 2;
        } else if is(&args[i], "match") && more {
            o.pattern = Some(args[i + 1].clone());
            i += 2;
        } else if is(&args[i], "type") && more && allow_type {
            o.type_name = Some(args[i + 1].to_ascii_lowercase());
            i += 2;
        } else {
            return Err(syntax());
        }
    }
    Ok(o)
}

fn scan(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let cursor = match parse_scan_cursor(&args[1]) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let o = match parse_scan_options(&args[2..], true) {
        Ok(o) => o,
        Err(e) => return e,
    };
    let (next, found) = ctx.ks.scan(cursor, o.count, ctx.now_ms);
    let keys = found
        .into_iter()
        .filter(|(k, e)| {
            o.pattern
                .as_ref()
                .is_none_or(|p| glob::matches(p, k, false))
                && o.type_name
                    .as_ref()
                    .is_none_or(|t| t.as_slice() == e.value.type_name().as_bytes())
        })
        .map(|(k, _)| Reply::Bulk(k.to_vec()))
        .collect();
    Reply::Array(vec![
        Reply::Bulk(next.to_string().into_bytes()),
        Reply::Array(keys),
    ])
}

fn randomkey(ctx: &mut Ctx, _args: &[Vec<u8>]) -> Reply {
    match ctx.ks.random_key(ctx.rng, ctx.now_ms) {
        Some(k) => Reply::Bulk(k.to_vec()),
        None => Reply::Nil,
    }
}

fn expire(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    expire_generic(ctx, args, 1000, false)
}

fn pexpire(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    expire_generic(ctx, args, 1, false)
}

fn expireat(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    expire_generic(ctx, args, 1000, true)
}

fn pexpireat(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    expire_generic(ctx, args, 1, true)
}

/// EXPIRE, PEXPIRE, EXPIREAT, PEXPIREAT with NX/XX/GT/LT, as Redis 7.0.
fn expire_generic(ctx: &mut Ctx, args: &[Vec<u8>], unit: i64, absolute: bool) -> Reply {
    reply(expire_body(ctx, args, unit, absolute))
}

fn expire_body(ctx: &mut Ctx, args: &[Vec<u8>], unit: i64, absolute: bool) -> Result<Reply, Reply> {
    let key = &args[1];
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for a in &args[3..] {
        match () {
            _ if is(a, "nx") => nx = true,
            _ if is(a, "xx") => xx = true,
            _ if is(a, "gt") => gt = true,
            _ if is(a, "lt") => lt = true,
            _ => {
                return Err(Reply::error(format!(
                    "ERR Unsupported option {}",
                    String::from_utf8_lossy(a)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(err(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(err(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    let name = String::from_utf8_lossy(&args[0]).to_lowercase();
    let invalid = || Reply::error(format!("ERR invalid expire time in '{name}' command"));
    let v = int_arg(&args[2])?;
    let mut when = v.checked_mul(unit).ok_or_else(invalid)?;
    if !absolute {
        when = when.checked_add(ctx.now_ms as i64).ok_or_else(invalid)?;
    }
    let Some(e) = ctx.ks.get(key, ctx.now_ms) else {
        return Ok(Reply::Int(0));
    };
    let current = e.expire_at_ms;
    if (nx && current != 0) || (xx && current == 0) {
        return Ok(Reply::Int(0));
    }
    // A key without a deadline counts as an infinite TTL for GT and LT.
    if gt && (current == 0 || when <= current as i64) {
        return Ok(Reply::Int(0));
    }
    if lt && current != 0 && when >= current as i64 {
        return Ok(Reply::Int(0));
    }
    if when <= ctx.now_ms as i64 {
        ctx.ks.remove(key);
        ctx.modified(key);
        ctx.notify(GENERIC, "del", key);
    } else {
        ctx.ks.set_expire(key, when as u64);
        ctx.modified(key);
        ctx.notify(GENERIC, "expire", key);
    }
    Ok(Reply::Int(1))
}

fn ttl_generic(ctx: &mut Ctx, key: &[u8], ms: bool, absolute: bool) -> Reply {
    let Some(e) = ctx.ks.get(key, ctx.now_ms) else {
        return Reply::Int(-2);
    };
    if e.expire_at_ms == 0 {
        return Reply::Int(-1);
    }
    let t = if absolute {
        e.expire_at_ms as i64
    } else {
        (e.expire_at_ms as i64 - ctx.now_ms as i64).max(0)
    };
    Reply::Int(if ms { t } else { (t + 500) / 1000 })
}

fn ttl(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    ttl_generic(ctx, &args[1], false, false)
}

fn pttl(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    ttl_generic(ctx, &args[1], true, false)
}

fn expiretime(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    ttl_generic(ctx, &args[1], false, true)
}

fn pexpiretime(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    ttl_generic(ctx, &args[1], true, true)
}

fn persist(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.ks.get(&args[1], ctx.now_ms) {
        Some(e) if e.expire_at_ms != 0 => {
            ctx.ks.set_expire(&args[1], 0);
            ctx.modified(&args[1]);
            ctx.notify(GENERIC, "persist", &args[1]);
            Reply::Int(1)
        }
        _ => Reply::Int(0),
    }
}

/// MEMORY USAGE key [SAMPLES n]: an estimate of the key's bytes: its name, its value as
/// serialized (DUMP's payload without its trailer), and 48 bytes for the entry and its
/// bookkeeping. Redis counts its allocator's block sizes, so the numbers differ; what they
/// share is that more data is more bytes, and a missing key is nil. SAMPLES is accepted (the
/// whole value is always counted).
fn memory_usage(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match args.len() {
        3 => {}
        5 if is(&args[3], "samples") => match int_arg(&args[4]) {
            Ok(n) if n >= 0 => {}
            Ok(_) => return err("ERR value is out of range, must be positive"),
            Err(e) => return e,
        },
        _ => return syntax(),
    }
    match ctx.value(&args[2]) {
        Some(v) => {
            let payload = crate::snapshot::dump_value(v).len().saturating_sub(10);
            Reply::Int((48 + args[2].len() + payload) as i64)
        }
        None => Reply::Nil,
    }
}

fn dump(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.value(&args[1]) {
        Some(v) => Reply::Bulk(crate::snapshot::dump_value(v)),
        None => Reply::Nil,
    }
}

fn restore(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(restore_body(ctx, args))
}

fn restore_body(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let key = &args[1];
    let (mut replace, mut absttl) = (false, false);
    let mut i = 4;
    while i < args.len() {
        let more = i + 1 < args.len();
        if is(&args[i], "replace") {
            replace = true;
        } else if is(&args[i], "absttl") {
            absttl = true;
        } else if is(&args[i], "idletime") && more {
            if int_arg(&args[i + 1])? < 0 {
                return Err(err("ERR Invalid IDLETIME value, must be >= 0"));
            }
            i += 1;
        } else if is(&args[i], "freq") && more {
            let f = int_arg(&args[i + 1])?;
            if !(0..=255).contains(&f) {
                return Err(err("ERR Invalid FREQ value, must be >= 0 and <= 255"));
            }
            i += 1;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    let ttl = int_arg(&args[2])?;
    if ttl < 0 {
        return Err(err("ERR Invalid TTL value, must be >= 0"));
    }
    if !replace && ctx.ks.contains(key, ctx.now_ms) {
        return Err(err("BUSYKEY Target key name already exists."));
    }
    let value = crate::snapshot::restore_value(&args[3])
        .ok_or_else(|| err("ERR DUMP payload version or checksum are wrong"))?;
    let at = match (ttl, absttl) {
        (0, _) => 0,
        (t, true) => t as u64,
        (t, false) => ctx.now_ms.saturating_add(t as u64),
    };
    let replaced = ctx
        .ks
        .remove(key)
        .is_some_and(|e| !e.is_expired(ctx.now_ms));
    if at != 0 && at <= ctx.now_ms {
        // Already expired: Redis deletes instead of storing.
        ctx.modified(key);
        if replaced {
            ctx.notify(GENERIC, "del", key);
        }
        return Ok(Reply::OK);
    }
    ctx.ks.insert_entry(
        key,
        crate::keyspace::Entry {
            value,
            expire_at_ms: at,
        },
    );
    ctx.modified(key);
    ctx.notify(GENERIC, "restore", key);
    Ok(Reply::OK)
}

fn object_encoding(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.value(&args[2]) {
        Some(v) => Reply::from(v.encoding()),
        None => Reply::Nil,
    }
}

fn object_freq(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.value(&args[2]) {
        Some(_) => err("ERR An LFU maxmemory policy is not selected, access frequency not tracked. Please note that when switching between policies at runtime LRU and LFU data will take some time to adjust."),
        None => Reply::Nil,
    }
}

/// cairn does not track access times: a read that wrote would make replicas differ.
fn object_idletime(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.value(&args[2]) {
        Some(_) => Reply::Int(0),
        None => Reply::Nil,
    }
}

fn object_refcount(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match ctx.value(&args[2]) {
        Some(_) => Reply::Int(1),
        None => Reply::Nil,
    }
}

fn object_help(_ctx: &mut Ctx, _args: &[Vec<u8>]) -> Reply {
    let lines = [
        "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        "ENCODING <key>",
        "    Return the kind of internal representation used in order to store the value",
        "    associated with a <key>.",
        "FREQ <key>",
        "    Return the access frequency index of the <key>. The returned integer is",
        "    proportional to the logarithm of the recent access frequency of the key.",
        "IDLETIME <key>",
        "    Return the idle time of the <key>, that is the approximated number of",
        "    seconds elapsed since the last access to the key.",
        "REFCOUNT <key>",
        "    Return the number of references of the value associated with the specified",
        "    <key>.",
        "HELP",
        "    Print this help.",
    ];
    Reply::Array(lines.iter().map(|l| Reply::Status((*l).into())).collect())
}
