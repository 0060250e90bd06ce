//! Stream commands: XADD, XRANGE, XREVRANGE, XLEN, XDEL, XTRIM, XREAD, XSETID, the consumer
//! groups (XGROUP, XREADGROUP, XACK, XPENDING, XCLAIM, XAUTOCLAIM) and XINFO.
//!
//! Replies and errors follow Redis 7.0 (`t_stream.c`) argument by argument. Every time a group
//! records (delivery, a consumer last seen) is the command's clock, `ctx.now_ms`: under
//! replication that is the log entry's, the same on every replica. `BLOCK` does not wait here:
//! a read that finds nothing answers at once, and the connection blocks and retries (see
//! `cmd::blocking`).

use crate::exec::*;
use crate::notify::STREAM;
use crate::stream::{Group, Pending, Stream, StreamId, Trim, INVALID_ENTRIES_READ};
use crate::value::Value;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[
    ("xadd", xadd),
    ("xrange", xrange),
    ("xrevrange", xrange),
    ("xlen", xlen),
    ("xdel", xdel),
    ("xtrim", xtrim),
    ("xread", xread),
    ("xreadgroup", xread),
    ("xsetid", xsetid),
    ("xgroup|create", xgroup),
    ("xgroup|setid", xgroup),
    ("xgroup|destroy", xgroup),
    ("xgroup|createconsumer", xgroup),
    ("xgroup|delconsumer", xgroup),
    ("xack", xack),
    ("xpending", xpending),
    ("xclaim", xclaim),
    ("xautoclaim", xautoclaim),
    ("xinfo|stream", xinfo_stream),
    ("xinfo|groups", xinfo_groups),
    ("xinfo|consumers", xinfo_consumers),
];

const INVALID_ID: &str = "ERR Invalid stream ID specified as stream command argument";
/// Redis's default `LIMIT` of an approximate trim: 100 × stream-node-max-entries.
const APPROX_TRIM_LIMIT: u64 = 100 * crate::stream::NODE_MAX_ENTRIES;

fn get_stream<'a>(ctx: &'a Ctx, key: &[u8]) -> Result<Option<&'a Stream>, Reply> {
    match ctx.value(key) {
        None => Ok(None),
        Some(Value::Stream(s)) => Ok(Some(s)),
        Some(_) => Err(wrongtype()),
    }
}

fn stream_mut<'a>(ctx: &'a mut Ctx, key: &[u8]) -> Result<Option<&'a mut Stream>, Reply> {
    match ctx.ks.get_mut(key, ctx.now_ms).map(|e| &mut e.value) {
        None => Ok(None),
        Some(Value::Stream(s)) => Ok(Some(s)),
        Some(_) => Err(wrongtype()),
    }
}

/// An unsigned decimal as Redis's `string2ull` takes it (digits, leading zeros allowed).
fn parse_u64(s: &[u8]) -> Option<u64> {
    let digits = s.strip_prefix(b"+").unwrap_or(s);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Redis's `streamGenericParseIDOrReply`: `ms-seq`, `ms` (the sequence is `missing_seq`),
/// `-`/`+` unless `strict`, and with `auto_seq` also `ms-*`. Returns the ID and whether the
/// sequence was given.
fn parse_id_full(
    arg: &[u8],
    missing_seq: u64,
    strict: bool,
    auto_seq: bool,
) -> Result<(StreamId, bool), Reply> {
    let invalid = || Reply::error(INVALID_ID);
    if arg.len() > 127 {
        return Err(invalid());
    }
    match arg {
        b"-" | b"+" if strict => return Err(invalid()),
        b"-" => return Ok((StreamId::MIN, true)),
        b"+" => return Ok((StreamId::MAX, true)),
        _ => {}
    }
    let (ms, seq) = match arg.iter().position(|&b| b == b'-') {
        Some(dash) => (&arg[..dash], Some(&arg[dash + 1..])),
        None => (arg, None),
    };
    let ms = parse_u64(ms).ok_or_else(invalid)?;
    match seq {
        Some(b"*") if auto_seq => Ok((StreamId::new(ms, 0), false)),
        Some(seq) => Ok((StreamId::new(ms, parse_u64(seq).ok_or_else(invalid)?), true)),
        None => Ok((StreamId::new(ms, missing_seq), true)),
    }
}

fn parse_strict_id(arg: &[u8]) -> Result<StreamId, Reply> {
    parse_id_full(arg, 0, true, false).map(|(id, _)| id)
}

/// A range bound: `(id` is exclusive (then strict), else `-`, `+` or an ID.
fn parse_bound(arg: &[u8], missing_seq: u64) -> Result<(StreamId, bool), Reply> {
    if arg.len() > 1 && arg[0] == b'(' {
        let (id, _) = parse_id_full(&arg[1..], missing_seq, true, false)?;
        Ok((id, true))
    } else {
        let (id, _) = parse_id_full(arg, missing_seq, false, false)?;
        Ok((id, false))
    }
}

fn range_start(arg: &[u8]) -> Result<StreamId, Reply> {
    match parse_bound(arg, 0)? {
        (id, true) => id
            .next()
            .ok_or_else(|| Reply::error("ERR invalid start ID for the interval")),
        (id, false) => Ok(id),
    }
}

fn range_end(arg: &[u8]) -> Result<StreamId, Reply> {
    match parse_bound(arg, u64::MAX)? {
        (id, true) => id
            .prev()
            .ok_or_else(|| Reply::error("ERR invalid end ID for the interval")),
        (id, false) => Ok(id),
    }
}

fn id_reply(id: StreamId) -> Reply {
    Reply::Bulk(id.to_bytes())
}

fn entry_reply(id: StreamId, fields: &[Vec<u8>]) -> Reply {
    Reply::Array(vec![id_reply(id), bulks(fields)])
}

/// The entry `id` as XRANGE shows it, or `[id, nil]` when it was deleted.
fn entry_or_gap(s: &Stream, id: StreamId) -> Reply {
    match s.entries.get(&id) {
        Some(f) => entry_reply(id, f),
        None => Reply::Array(vec![id_reply(id), Reply::NilArray]),
    }
}

fn nogroup(key: &[u8], group: &[u8]) -> Reply {
    Reply::error(format!(
        "NOGROUP No such key '{}' or consumer group '{}'",
        String::from_utf8_lossy(key),
        String::from_utf8_lossy(group)
    ))
}

/// Parsed `MAXLEN|MINID [=|~] threshold [LIMIT n]` (and for XADD `NOMKSTREAM` and the ID).
struct AddTrimArgs {
    trim: Option<Trim>,
    approx: bool,
    limit: u64,
    no_mkstream: bool,
    /// XADD: the explicit ID and whether its sequence was given (`ms-*` gives false).
    id: Option<(StreamId, bool)>,
    /// XADD: where the field/value pairs start.
    fields_at: usize,
}

/// Redis's `streamParseAddOrTrimArgsOrReply`.
fn parse_add_trim(args: &[Vec<u8>], xadd: bool) -> Result<AddTrimArgs, Reply> {
    let mut a = AddTrimArgs {
        trim: None,
        approx: false,
        limit: 0,
        no_mkstream: false,
        id: None,
        fields_at: args.len(),
    };
    let mut limit_given = false;
    let mut i = 2;
    let both = || {
        Reply::error(
            "ERR syntax error, MAXLEN and MINID options at the same time are not compatible",
        )
    };
    while i < args.len() {
        let more = args.len() - 1 - i;
        let opt = &args[i];
        if xadd && opt.as_slice() == b"*" {
            break;
        } else if (is(opt, "maxlen") || is(opt, "minid")) && more > 0 {
            if a.trim.is_some() {
                return Err(both());
            }
            a.approx = false;
            if more >= 2 && args[i + 1].as_slice() == b"~" {
                a.approx = true;
                i += 1;
            } else if more >= 2 && args[i + 1].as_slice() == b"=" {
                i += 1;
            }
            let threshold = &args[i + 1];
            a.trim = Some(if is(opt, "maxlen") {
                let n = int_arg(threshold)?;
                if n < 0 {
                    return Err(Reply::error("ERR The MAXLEN argument must be >= 0."));
                }
                Trim::MaxLen(n as u64)
            } else {
                Trim::MinId(parse_strict_id(threshold)?)
            });
            i += 1;
        } else if is(opt, "limit") && more > 0 {
            let n = int_arg(&args[i + 1])?;
            if n < 0 {
                return Err(Reply::error("ERR The LIMIT argument must be >= 0."));
            }
            a.limit = n as u64;
            limit_given = true;
            i += 1;
        } else if xadd && is(opt, "nomkstream") {
            a.no_mkstream = true;
        } else if xadd {
            a.id = Some(parse_id_full(opt, 0, true, true)?);
            break;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    a.fields_at = i + 1;
    if a.limit > 0 && a.trim.is_none() {
        return Err(Reply::error(
            "ERR syntax error, LIMIT cannot be used without specifying a trimming strategy",
        ));
    }
    if !xadd && a.trim.is_none() {
        return Err(Reply::error(
            "ERR syntax error, XTRIM must be called with a trimming strategy",
        ));
    }
    if limit_given {
        if !a.approx {
            return Err(Reply::error(
                "ERR syntax error, LIMIT cannot be used without the special ~ option",
            ));
        }
    } else if a.approx {
        a.limit = APPROX_TRIM_LIMIT;
    } else {
        a.limit = 0;
    }
    Ok(a)
}

fn xadd(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xadd_inner(ctx, args))
}

fn xadd_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let a = parse_add_trim(args, true)?;
    let pairs = args.len().saturating_sub(a.fields_at);
    if a.fields_at >= args.len() || pairs < 2 || pairs % 2 == 1 {
        return Err(crate::cmd::strings::cairn_wrong_arity("xadd"));
    }
    if let Some((id, true)) = a.id {
        if id.is_zero() {
            return Err(Reply::error(
                "ERR The ID specified in XADD must be greater than 0-0",
            ));
        }
    }
    let key = &args[1];
    match get_stream(ctx, key)? {
        None if a.no_mkstream => return Ok(Reply::Nil),
        _ => {}
    }
    let now = ctx.now_ms;
    let s = match &mut ctx
        .ks
        .get_or_insert_with(key, now, || Value::Stream(Box::default()))
        .value
    {
        Value::Stream(s) => s,
        _ => unreachable!("type checked above"),
    };
    if s.last_id == StreamId::MAX {
        return Err(Reply::error(
            "ERR The stream has exhausted the last possible ID, unable to add more items",
        ));
    }
    let id = match a.id {
        Some((id, true)) => Some(id),
        Some((id, false)) if id.ms == s.last_id.ms => s.last_id.next().filter(|n| n.ms == id.ms),
        Some((id, false)) => Some(id),
        None if now > s.last_id.ms => Some(StreamId::new(now, 0)),
        None => s.last_id.next(),
    };
    // (A stream created just now has last ID 0-0, and 0-0 itself was refused above: only an
    // existing stream can refuse the ID, so no empty stream is left behind.)
    let Some(id) = id.filter(|&id| id > s.last_id) else {
        return Err(Reply::error(
            "ERR The ID specified in XADD is equal or smaller than the target stream top item",
        ));
    };
    s.append(id, args[a.fields_at..].to_vec());
    let trimmed = a.trim.is_some_and(|how| s.trim(how, a.approx, a.limit) > 0);
    debug_assert!({
        s.check();
        true
    });
    ctx.modified(key);
    ctx.notify(STREAM, "xadd", key);
    if trimmed {
        ctx.notify(STREAM, "xtrim", key);
    }
    Ok(id_reply(id))
}

fn xrange(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xrange_inner(ctx, args))
}

fn xrange_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let rev = is(&args[0], "xrevrange");
    let (start_arg, end_arg) = if rev {
        (&args[3], &args[2])
    } else {
        (&args[2], &args[3])
    };
    let start = range_start(start_arg)?;
    let end = range_end(end_arg)?;
    let mut count: i64 = -1;
    let mut j = 4;
    while j < args.len() {
        if is(&args[j], "count") && j + 1 < args.len() {
            count = int_arg(&args[j + 1])?.max(0);
            j += 2;
        } else {
            return Err(syntax());
        }
    }
    let Some(s) = get_stream(ctx, &args[1])? else {
        return Ok(Reply::Array(vec![]));
    };
    if count == 0 {
        return Ok(Reply::NilArray);
    }
    let limit = if count < 0 {
        usize::MAX
    } else {
        count as usize
    };
    if start > end {
        return Ok(Reply::Array(vec![]));
    }
    let range = s.entries.range(start..=end);
    let items: Vec<Reply> = if rev {
        range
            .rev()
            .take(limit)
            .map(|(id, f)| entry_reply(*id, f))
            .collect()
    } else {
        range
            .take(limit)
            .map(|(id, f)| entry_reply(*id, f))
            .collect()
    };
    Ok(Reply::Array(items))
}

fn xlen(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match get_stream(ctx, &args[1]) {
        Ok(s) => Reply::Int(s.map_or(0, |s| s.len() as i64)),
        Err(e) => e,
    }
}

fn xdel(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xdel_inner(ctx, args))
}

fn xdel_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let key = &args[1];
    if get_stream(ctx, key)?.is_none() {
        return Ok(Reply::Int(0));
    }
    let ids = args[2..]
        .iter()
        .map(|a| parse_strict_id(a))
        .collect::<Result<Vec<_>, _>>()?;
    let s = stream_mut(ctx, key)?.expect("checked above");
    let mut deleted = 0;
    for id in ids {
        if s.delete(id) {
            s.max_deleted = s.max_deleted.max(id);
            deleted += 1;
        }
    }
    if deleted > 0 {
        ctx.modified(key);
        ctx.notify(STREAM, "xdel", key);
    }
    Ok(Reply::Int(deleted))
}

fn xtrim(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xtrim_inner(ctx, args))
}

fn xtrim_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let a = parse_add_trim(args, false)?;
    let key = &args[1];
    let Some(s) = stream_mut(ctx, key)? else {
        return Ok(Reply::Int(0));
    };
    let deleted = s.trim(a.trim.expect("XTRIM has a strategy"), a.approx, a.limit);
    if deleted > 0 {
        ctx.modified(key);
        ctx.notify(STREAM, "xtrim", key);
    }
    Ok(Reply::Int(deleted as i64))
}

fn xsetid(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xsetid_inner(ctx, args))
}

fn xsetid_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let id = parse_strict_id(&args[2])?;
    let mut entries_added: i64 = -1;
    let mut max_deleted = StreamId::MIN;
    let mut i = 3;
    while i < args.len() {
        let more = args.len() - 1 - i;
        if is(&args[i], "entriesadded") && more > 0 {
            entries_added = int_arg(&args[i + 1])?;
            if entries_added < 0 {
                return Err(Reply::error("ERR entries_added must be positive"));
            }
        } else if is(&args[i], "maxdeletedid") && more > 0 {
            max_deleted = parse_strict_id(&args[i + 1])?;
            if id < max_deleted {
                return Err(Reply::error(
                    "ERR The ID specified in XSETID is smaller than the provided max_deleted_entry_id",
                ));
            }
        } else {
            return Err(syntax());
        }
        i += 2;
    }
    let key = &args[1];
    let Some(s) = stream_mut(ctx, key)? else {
        return Err(err(NO_SUCH_KEY));
    };
    if !s.is_empty() {
        if id < s.last_present() {
            return Err(Reply::error(
                "ERR The ID specified in XSETID is smaller than the target stream top item",
            ));
        }
        if entries_added != -1 && (s.len() as i64) > entries_added {
            return Err(Reply::error(
                "ERR The entries_added specified in XSETID is smaller than the target stream length",
            ));
        }
        // Redis 7.0 does not compare the ID with the stream's own
        // max_deleted_entry_id (later versions do); the differential runs
        // hold cairn to 7.0.
    }
    s.last_id = id;
    if entries_added != -1 {
        s.entries_added = entries_added as u64;
    }
    if !max_deleted.is_zero() {
        s.max_deleted = max_deleted;
    }
    ctx.modified(key);
    ctx.notify(STREAM, "xsetid", key);
    Ok(Reply::OK)
}

/// XREAD and XREADGROUP (without blocking, see the module notes).
fn xread(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xread_inner(ctx, args))
}

fn xread_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let group_read = is(&args[0], "xreadgroup");
    let name = if group_read { "xreadgroup" } else { "xread" };
    let mut count: usize = 0;
    let mut streams_at = 0;
    let mut group: Option<(&[u8], &[u8])> = None;
    let mut noack = false;
    let mut block = false;
    let mut i = 1;
    while i < args.len() {
        let more = args.len() - 1 - i;
        let o = &args[i];
        if is(o, "block") && more > 0 {
            i += 1;
            crate::cmd::blocking::timeout_ms(&args[i])?;
            block = true;
        } else if is(o, "count") && more > 0 {
            i += 1;
            count = int_arg(&args[i])?.max(0) as usize;
        } else if is(o, "streams") && more > 0 {
            streams_at = i + 1;
            if !(args.len() - streams_at).is_multiple_of(2) {
                let symbol = if group_read { '>' } else { '$' };
                return Err(Reply::error(format!(
                    "ERR Unbalanced '{name}' list of streams: for each stream key an ID or '{symbol}' must be specified."
                )));
            }
            break;
        } else if is(o, "group") && more >= 2 {
            if !group_read {
                return Err(Reply::error(
                    "ERR The GROUP option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            group = Some((&args[i + 1], &args[i + 2]));
            i += 2;
        } else if is(o, "noack") {
            if !group_read {
                return Err(Reply::error(
                    "ERR The NOACK option is only supported by XREADGROUP. You called XREAD instead.",
                ));
            }
            noack = true;
        } else {
            return Err(syntax());
        }
        i += 1;
    }
    if streams_at == 0 {
        return Err(syntax());
    }
    if group_read && group.is_none() {
        return Err(Reply::error("ERR Missing GROUP option for XREADGROUP"));
    }
    let n = (args.len() - streams_at) / 2;
    let keys = &args[streams_at..streams_at + n];
    // Resolve every ID first (as Redis does), so that an error changes nothing.
    // None stands for ">" (new entries for the group).
    let mut from: Vec<Option<StreamId>> = Vec::with_capacity(n);
    for (key, id_arg) in keys.iter().zip(&args[streams_at + n..]) {
        let s = get_stream(ctx, key)?;
        if let Some((g, _)) = group {
            if s.is_none_or(|s| !s.groups.contains_key(g)) {
                return Err(Reply::error(format!(
                    "NOGROUP No such key '{}' or consumer group '{}' in XREADGROUP with GROUP option",
                    String::from_utf8_lossy(key),
                    String::from_utf8_lossy(g)
                )));
            }
        }
        from.push(match id_arg.as_slice() {
            b"$" if group_read => {
                return Err(Reply::error(
                    "ERR The $ ID is meaningless in the context of XREADGROUP: you want to read the history of this consumer by specifying a proper ID, or use the > ID to get new messages. The $ ID would just return an empty result set.",
                ))
            }
            b"$" => Some(s.map_or(StreamId::MIN, |s| s.last_id)),
            b">" if !group_read => {
                return Err(Reply::error(
                    "ERR The > ID can be specified only when calling XREADGROUP using the GROUP <group> <consumer> option.",
                ))
            }
            b">" => None,
            // Redis marks ">" with the largest ID, so that ID given explicitly means ">" too.
            _ => Some(parse_strict_id(id_arg)?).filter(|&id| !(group_read && id == StreamId::MAX)),
        });
    }
    let limit = if count == 0 { usize::MAX } else { count };
    let now = ctx.now_ms;
    let mut served: Vec<(Reply, Reply)> = Vec::new();
    let mut consumers_created: Vec<Vec<u8>> = Vec::new();
    // XREAD BLOCK with `$` that finds nothing tells the connection what `$` stood for, so that
    // its retries read after those IDs (see `cairn_server::blocking`); never seen by clients.
    let dollars = !group_read && block && args[streams_at + n..].iter().any(|a| a == b"$");
    let resolved: Vec<Vec<u8>> = if dollars {
        from.iter()
            .map(|id| id.unwrap_or_default().to_bytes())
            .collect()
    } else {
        Vec::new()
    };
    for (key, after) in keys.iter().zip(from) {
        let Some((g, consumer)) = group else {
            let Some(s) = get_stream(ctx, key)? else {
                continue;
            };
            let after = after.expect("XREAD IDs are explicit");
            if s.last_present() <= after || s.is_empty() {
                continue;
            }
            let Some(start) = after.next() else {
                continue;
            };
            let items = s
                .entries
                .range(start..)
                .take(limit)
                .map(|(id, f)| entry_reply(*id, f))
                .collect();
            served.push((Reply::Bulk(key.clone()), Reply::Array(items)));
            continue;
        };
        let s = stream_mut(ctx, key)?.expect("checked above");
        // Nothing new for the group: nothing to serve, and (as in Redis) the consumer is not
        // created or seen.
        let group_last = s.groups[g].last_id;
        if after.is_none() && (s.is_empty() || s.last_present() <= group_last) {
            continue;
        }
        let grp = s.groups.get_mut(g).expect("checked above");
        if !grp.consumers.contains_key(consumer) {
            consumers_created.push(key.clone());
        }
        grp.consumer(consumer, now);
        match after {
            Some(after) => {
                // History: this consumer's own pending entries after `after`.
                let Some(start) = after.next() else {
                    served.push((Reply::Bulk(key.clone()), Reply::Array(vec![])));
                    ctx.modified(key);
                    continue;
                };
                let ids: Vec<StreamId> = grp.consumers[consumer]
                    .pel
                    .range(start..)
                    .take(limit)
                    .copied()
                    .collect();
                let mut items = Vec::with_capacity(ids.len());
                for id in ids {
                    items.push(entry_or_gap(s, id));
                    if s.entries.contains_key(&id) {
                        let grp = s.groups.get_mut(g).expect("checked above");
                        let p = grp
                            .pel
                            .get_mut(&id)
                            .expect("consumer PEL is in the group's");
                        p.delivery_time = now;
                        p.delivery_count += 1;
                    }
                }
                served.push((Reply::Bulk(key.clone()), Reply::Array(items)));
            }
            None => {
                let last = grp.last_id;
                let start = last.next().expect("below an existing ID");
                let ids: Vec<StreamId> = s
                    .entries
                    .range(start..)
                    .take(limit)
                    .map(|(id, _)| *id)
                    .collect();
                let mut items = Vec::with_capacity(ids.len());
                for id in ids {
                    s.advance_group(g, id);
                    items.push(entry_reply(id, &s.entries[&id]));
                    if noack {
                        continue;
                    }
                    let grp = s.groups.get_mut(g).expect("checked above");
                    grp.pel.insert(
                        id,
                        Pending {
                            consumer: consumer.to_vec(),
                            delivery_time: now,
                            delivery_count: 1,
                        },
                    );
                    // An entry already pending (after XGROUP SETID went back) changes hands.
                    for (name, c) in grp.consumers.iter_mut() {
                        if name.as_slice() != consumer {
                            c.pel.remove(&id);
                        }
                    }
                    grp.consumers
                        .get_mut(consumer)
                        .expect("created above")
                        .pel
                        .insert(id);
                }
                served.push((Reply::Bulk(key.clone()), Reply::Array(items)));
            }
        }
        // Serving through a group changes it (at least the consumer's seen time).
        ctx.modified(key);
    }
    for key in consumers_created {
        ctx.notify(STREAM, "xgroup-createconsumer", &key);
    }
    if served.is_empty() && dollars {
        let ids = String::from_utf8_lossy(&resolved.join(&b' ')).into_owned();
        return Err(Reply::error(format!(
            "{}{ids}",
            crate::cmd::blocking::XREAD_FROM
        )));
    }
    if served.is_empty() {
        return Ok(Reply::NilArray);
    }
    Ok(if ctx.resp3() {
        Reply::Map(served)
    } else {
        Reply::Array(
            served
                .into_iter()
                .map(|(k, v)| Reply::Array(vec![k, v]))
                .collect(),
        )
    })
}

fn xgroup(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xgroup_inner(ctx, args))
}

fn xgroup_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let sub = String::from_utf8_lossy(&args[1]).to_ascii_lowercase();
    let (key, name) = (&args[2], &args[3]);
    let mut mkstream = false;
    let mut entries_read = INVALID_ENTRIES_READ;
    let parse_entries_read = |arg: &[u8]| -> Result<i64, Reply> {
        let n = int_arg(arg)?;
        if n < 0 && n != INVALID_ENTRIES_READ {
            return Err(Reply::error(
                "ERR value for ENTRIESREAD must be positive or -1",
            ));
        }
        Ok(n)
    };
    let sub_syntax = || {
        Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try XGROUP HELP.",
            String::from_utf8_lossy(&args[1])
        ))
    };
    if sub == "create" || sub == "setid" {
        let mut i = 5;
        while i < args.len() {
            if sub == "create" && is(&args[i], "mkstream") {
                mkstream = true;
                i += 1;
            } else if is(&args[i], "entriesread") && i + 1 < args.len() {
                entries_read = parse_entries_read(&args[i + 1])?;
                i += 2;
            } else {
                return Err(sub_syntax());
            }
        }
    }
    let exists = get_stream(ctx, key)?.is_some();
    if !exists && !mkstream {
        return Err(Reply::error(
            "ERR The XGROUP subcommand requires the key to exist. Note that for CREATE you may want to use the MKSTREAM option to create an empty stream automatically.",
        ));
    }
    let has_group = get_stream(ctx, key)?.is_some_and(|s| s.groups.contains_key(name));
    if !has_group && matches!(sub.as_str(), "setid" | "createconsumer" | "delconsumer") {
        return Err(Reply::error(format!(
            "NOGROUP No such consumer group '{}' for key name '{}'",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(key)
        )));
    }
    let now = ctx.now_ms;
    match sub.as_str() {
        "create" if args.len() <= 8 => {
            let last = get_stream(ctx, key)?.map(|s| s.last_id);
            let id = match args[4].as_slice() {
                b"$" => last.unwrap_or_default(),
                a => parse_strict_id(a)?,
            };
            if !exists {
                ctx.ks.insert(key, Value::Stream(Box::default()));
            }
            let s = stream_mut(ctx, key)?.expect("exists or just created");
            if s.groups.contains_key(name) {
                return Err(Reply::error("BUSYGROUP Consumer Group name already exists"));
            }
            s.groups.insert(name.clone(), Group::new(id, entries_read));
            ctx.modified(key);
            ctx.notify(STREAM, "xgroup-create", key);
            Ok(Reply::OK)
        }
        "setid" if args.len() == 5 || args.len() == 7 => {
            let s = stream_mut(ctx, key)?.expect("checked above");
            let id = match args[4].as_slice() {
                b"$" => s.last_id,
                a => parse_id_full(a, 0, false, false)?.0,
            };
            let g = s.groups.get_mut(name).expect("checked above");
            g.last_id = id;
            g.entries_read = entries_read;
            ctx.modified(key);
            ctx.notify(STREAM, "xgroup-setid", key);
            Ok(Reply::OK)
        }
        "destroy" => {
            let s = stream_mut(ctx, key)?.expect("checked above");
            if s.groups.remove(name).is_some() {
                ctx.modified(key);
                ctx.notify(STREAM, "xgroup-destroy", key);
                Ok(Reply::Int(1))
            } else {
                Ok(Reply::Int(0))
            }
        }
        "createconsumer" => {
            let s = stream_mut(ctx, key)?.expect("checked above");
            let g = s.groups.get_mut(name).expect("checked above");
            if g.consumers.contains_key(&args[4]) {
                return Ok(Reply::Int(0));
            }
            g.consumer(&args[4], now);
            ctx.modified(key);
            ctx.notify(STREAM, "xgroup-createconsumer", key);
            Ok(Reply::Int(1))
        }
        "delconsumer" => {
            let s = stream_mut(ctx, key)?.expect("checked above");
            let g = s.groups.get_mut(name).expect("checked above");
            match g.delete_consumer(&args[4]) {
                Some(pending) => {
                    ctx.modified(key);
                    ctx.notify(STREAM, "xgroup-delconsumer", key);
                    Ok(Reply::Int(pending as i64))
                }
                None => Ok(Reply::Int(0)),
            }
        }
        _ => Err(sub_syntax()),
    }
}

fn xack(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xack_inner(ctx, args))
}

fn xack_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let key = &args[1];
    let has_group = get_stream(ctx, key)?.is_some_and(|s| s.groups.contains_key(&args[2]));
    if !has_group {
        return Ok(Reply::Int(0));
    }
    let ids = args[3..]
        .iter()
        .map(|a| parse_strict_id(a))
        .collect::<Result<Vec<_>, _>>()?;
    let s = stream_mut(ctx, key)?.expect("checked above");
    let g = s.groups.get_mut(&args[2]).expect("checked above");
    let acked = ids.into_iter().filter(|&id| g.ack(id)).count();
    if acked > 0 {
        ctx.modified(key);
    }
    Ok(Reply::Int(acked as i64))
}

fn xpending(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xpending_inner(ctx, args))
}

fn xpending_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let argc = args.len();
    if argc != 3 && !(6..=9).contains(&argc) {
        return Err(syntax());
    }
    let mut range = None;
    let mut min_idle = 0i64;
    let mut consumer = None;
    if argc >= 6 {
        let mut at = 3;
        if is(&args[3], "idle") {
            min_idle = int_arg(&args[4])?;
            if argc < 8 {
                return Err(syntax());
            }
            at += 2;
        }
        let count = int_arg(&args[at + 2])?.max(0);
        let start = range_start(&args[at])?;
        let end = range_end(&args[at + 1])?;
        consumer = args.get(at + 3);
        range = Some((start, end, count as usize));
    }
    let (key, group) = (&args[1], &args[2]);
    let Some(g) = get_stream(ctx, key)?.and_then(|s| s.groups.get(group)) else {
        return Err(nogroup(key, group));
    };
    let now = ctx.now_ms as i64;
    let Some((start, end, count)) = range else {
        let (Some((first, _)), Some((last, _))) = (g.pel.first_key_value(), g.pel.last_key_value())
        else {
            return Ok(Reply::Array(vec![
                Reply::Int(0),
                Reply::Nil,
                Reply::Nil,
                Reply::NilArray,
            ]));
        };
        let holders = g
            .consumers
            .iter()
            .filter(|(_, c)| !c.pel.is_empty())
            .map(|(name, c)| {
                Reply::Array(vec![
                    Reply::Bulk(name.clone()),
                    Reply::Bulk(c.pel.len().to_string().into_bytes()),
                ])
            })
            .collect();
        return Ok(Reply::Array(vec![
            Reply::Int(g.pel.len() as i64),
            id_reply(*first),
            id_reply(*last),
            Reply::Array(holders),
        ]));
    };
    let ids: Vec<StreamId> = match consumer {
        Some(name) => match g.consumers.get(name) {
            None => return Ok(Reply::Array(vec![])),
            Some(c) if start <= end => c.pel.range(start..=end).copied().collect(),
            Some(_) => vec![],
        },
        None if start <= end => g.pel.range(start..=end).map(|(id, _)| *id).collect(),
        None => vec![],
    };
    let mut out = Vec::new();
    for id in ids {
        if out.len() >= count {
            break;
        }
        let p = &g.pel[&id];
        let idle = now - p.delivery_time as i64;
        if min_idle != 0 && idle < min_idle {
            continue;
        }
        out.push(Reply::Array(vec![
            id_reply(id),
            Reply::Bulk(p.consumer.clone()),
            Reply::Int(idle.max(0)),
            Reply::Int(p.delivery_count as i64),
        ]));
    }
    Ok(Reply::Array(out))
}

fn xclaim(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xclaim_inner(ctx, args))
}

fn xclaim_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (key, group, name) = (&args[1], &args[2], &args[3]);
    let has_group = get_stream(ctx, key)?.is_some_and(|s| s.groups.contains_key(group));
    if !has_group {
        return Err(nogroup(key, group));
    }
    let min_idle = int_arg(&args[4])
        .map_err(|_| Reply::error("ERR Invalid min-idle-time argument for XCLAIM"))?
        .max(0);
    let mut j = 5;
    let mut ids = Vec::new();
    while j < args.len() {
        match parse_strict_id(&args[j]) {
            Ok(id) => ids.push(id),
            Err(_) => break,
        }
        j += 1;
    }
    let now = ctx.now_ms as i64;
    let (mut force, mut justid) = (false, false);
    let mut retry: i64 = -1;
    let mut delivery: i64 = -1;
    let mut last_id = StreamId::MIN;
    while j < args.len() {
        let more = args.len() - 1 - j;
        let opt = &args[j];
        if is(opt, "force") {
            force = true;
        } else if is(opt, "justid") {
            justid = true;
        } else if is(opt, "idle") && more > 0 {
            j += 1;
            let idle = int_arg(&args[j])
                .map_err(|_| Reply::error("ERR Invalid IDLE option argument for XCLAIM"))?;
            delivery = now - idle;
        } else if is(opt, "time") && more > 0 {
            j += 1;
            delivery = int_arg(&args[j])
                .map_err(|_| Reply::error("ERR Invalid TIME option argument for XCLAIM"))?;
        } else if is(opt, "retrycount") && more > 0 {
            j += 1;
            retry = int_arg(&args[j])
                .map_err(|_| Reply::error("ERR Invalid RETRYCOUNT option argument for XCLAIM"))?;
        } else if is(opt, "lastid") && more > 0 {
            j += 1;
            last_id = parse_strict_id(&args[j])?;
        } else {
            return Err(Reply::error(format!(
                "ERR Unrecognized XCLAIM option '{}'",
                String::from_utf8_lossy(opt)
            )));
        }
        j += 1;
    }
    let delivery = if delivery < 0 || delivery > now {
        now
    } else {
        delivery
    } as u64;
    let s = stream_mut(ctx, key)?.expect("checked above");
    let mut changed = false;
    let mut out = Vec::new();
    {
        let g = s.groups.get_mut(group).expect("checked above");
        if last_id > g.last_id {
            g.last_id = last_id;
            changed = true;
        }
    }
    let mut consumer_made = false;
    let mut consumer_created = false;
    for id in ids {
        let exists = s.entries.contains_key(&id);
        let g = s.groups.get_mut(group).expect("checked above");
        if !exists {
            // Gone from the stream: it leaves the PEL too.
            changed |= g.ack(id);
            continue;
        }
        let mut fresh = false;
        if force && !g.pel.contains_key(&id) {
            g.pel.insert(
                id,
                Pending {
                    consumer: Vec::new(),
                    delivery_time: now as u64,
                    delivery_count: 1,
                },
            );
            fresh = true;
        }
        let Some(p) = g.pel.get(&id) else {
            continue;
        };
        if !fresh && min_idle > 0 && now - (p.delivery_time as i64) < min_idle {
            continue;
        }
        if !consumer_made {
            consumer_created = !g.consumers.contains_key(name);
            g.consumer(name, now as u64);
            consumer_made = true;
        }
        let p = g.pel.get_mut(&id).expect("present");
        p.delivery_time = delivery;
        if retry >= 0 {
            p.delivery_count = retry as u64;
        } else if !justid {
            p.delivery_count += 1;
        }
        g.assign(id, name);
        changed = true;
        out.push(if justid {
            id_reply(id)
        } else {
            entry_reply(id, &s.entries[&id])
        });
    }
    if changed || consumer_made {
        ctx.modified(key);
    }
    if consumer_created {
        ctx.notify(STREAM, "xgroup-createconsumer", key);
    }
    Ok(Reply::Array(out))
}

fn xautoclaim(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xautoclaim_inner(ctx, args))
}

fn xautoclaim_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let (key, group, name) = (&args[1], &args[2], &args[3]);
    let min_idle = int_arg(&args[4])
        .map_err(|_| Reply::error("ERR Invalid min-idle-time argument for XAUTOCLAIM"))?
        .max(0);
    let start = range_start(&args[5])?;
    let mut count: i64 = 100;
    let mut justid = false;
    let mut j = 6;
    while j < args.len() {
        let more = args.len() - 1 - j;
        if is(&args[j], "count") && more > 0 {
            const MAX_COUNT: i64 = i64::MAX / 16;
            count = match int_arg(&args[j + 1]) {
                Ok(n) if (1..=MAX_COUNT).contains(&n) => n,
                _ => return Err(Reply::error("ERR COUNT must be > 0")),
            };
            j += 1;
        } else if is(&args[j], "justid") {
            justid = true;
        } else {
            return Err(syntax());
        }
        j += 1;
    }
    let has_group = get_stream(ctx, key)?.is_some_and(|s| s.groups.contains_key(group));
    if !has_group {
        return Err(nogroup(key, group));
    }
    let now = ctx.now_ms;
    let s = stream_mut(ctx, key)?.expect("checked above");
    // Redis looks at most ten pending entries per entry it may claim.
    let attempts = count.saturating_mul(10);
    let pending: Vec<StreamId> = s.groups[group]
        .pel
        .range(start..)
        .take(
            usize::try_from(attempts)
                .unwrap_or(usize::MAX)
                .saturating_add(1),
        )
        .map(|(id, _)| *id)
        .collect();
    let (mut looked, mut left) = (0usize, count);
    let mut claimed = Vec::new();
    let mut deleted = Vec::new();
    let mut consumer_made = false;
    let mut consumer_created = false;
    while (looked as i64) < attempts && left > 0 && looked < pending.len() {
        let id = pending[looked];
        looked += 1;
        let exists = s.entries.contains_key(&id);
        let g = s.groups.get_mut(group).expect("checked above");
        if !exists {
            // Gone from the stream: it leaves the PEL, and is reported.
            g.ack(id);
            deleted.push(id_reply(id));
            left -= 1;
            continue;
        }
        let p = &g.pel[&id];
        if min_idle > 0 && (now as i64 - p.delivery_time as i64) < min_idle {
            continue;
        }
        if !consumer_made {
            consumer_created = !g.consumers.contains_key(name);
            g.consumer(name, now);
            consumer_made = true;
        }
        let p = g.pel.get_mut(&id).expect("present");
        p.delivery_time = now;
        if !justid {
            p.delivery_count += 1;
        }
        g.assign(id, name);
        claimed.push(if justid {
            id_reply(id)
        } else {
            entry_reply(id, &s.entries[&id])
        });
        left -= 1;
    }
    // The cursor for the next call: the first pending entry not looked at (0-0: none).
    let next = pending.get(looked).copied();
    if consumer_made || !deleted.is_empty() {
        ctx.modified(key);
    }
    if consumer_created {
        ctx.notify(STREAM, "xgroup-createconsumer", key);
    }
    Ok(Reply::Array(vec![
        id_reply(next.unwrap_or_default()),
        Reply::Array(claimed),
        Reply::Array(deleted),
    ]))
}

fn entries_read_reply(g: &Group) -> Reply {
    if g.entries_read == INVALID_ENTRIES_READ {
        Reply::Nil
    } else {
        Reply::Int(g.entries_read)
    }
}

fn lag_reply(s: &Stream, g: &Group) -> Reply {
    s.lag(g).map_or(Reply::Nil, Reply::Int)
}

fn field(name: &'static str, value: Reply) -> (Reply, Reply) {
    (Reply::Bulk(name.as_bytes().to_vec()), value)
}

fn xinfo_stream(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    reply(xinfo_stream_inner(ctx, args))
}

fn xinfo_stream_inner(ctx: &mut Ctx, args: &[Vec<u8>]) -> Result<Reply, Reply> {
    let mut full = false;
    let mut count: usize = 10;
    match args.len() {
        3 => {}
        4 if is(&args[3], "full") => full = true,
        6 if is(&args[3], "full") && is(&args[4], "count") => {
            full = true;
            let n = int_arg(&args[5])?;
            count = if n <= 0 { usize::MAX } else { n as usize };
        }
        _ => return Err(syntax()),
    }
    let Some(s) = get_stream(ctx, &args[2])? else {
        return Err(err(NO_SUCH_KEY));
    };
    let mut m = vec![
        field("length", Reply::Int(s.len() as i64)),
        field("radix-tree-keys", Reply::Int(s.nodes.len() as i64)),
        // Redis counts the inner nodes of its radix tree here; cairn has none to count.
        field("radix-tree-nodes", Reply::Int(s.nodes.len() as i64 + 1)),
        field("last-generated-id", id_reply(s.last_id)),
        field("max-deleted-entry-id", id_reply(s.max_deleted)),
        field("entries-added", Reply::Int(s.entries_added as i64)),
        field("recorded-first-entry-id", id_reply(s.first_id())),
    ];
    if !full {
        let edge = |e: Option<(&StreamId, &Vec<Vec<u8>>)>| {
            e.map_or(Reply::Nil, |(id, f)| entry_reply(*id, f))
        };
        m.push(field("groups", Reply::Int(s.groups.len() as i64)));
        m.push(field("first-entry", edge(s.entries.iter().next())));
        m.push(field("last-entry", edge(s.entries.iter().next_back())));
        return Ok(Reply::Map(m));
    }
    let entries = s
        .entries
        .iter()
        .take(count)
        .map(|(id, f)| entry_reply(*id, f))
        .collect();
    m.push(field("entries", Reply::Array(entries)));
    let groups = s
        .groups
        .iter()
        .map(|(name, g)| {
            let pel = g
                .pel
                .iter()
                .take(count)
                .map(|(id, p)| {
                    Reply::Array(vec![
                        id_reply(*id),
                        Reply::Bulk(p.consumer.clone()),
                        Reply::Int(p.delivery_time as i64),
                        Reply::Int(p.delivery_count as i64),
                    ])
                })
                .collect();
            let consumers = g
                .consumers
                .iter()
                .map(|(cname, c)| {
                    let pending = c
                        .pel
                        .iter()
                        .take(count)
                        .map(|id| {
                            let p = &g.pel[id];
                            Reply::Array(vec![
                                id_reply(*id),
                                Reply::Int(p.delivery_time as i64),
                                Reply::Int(p.delivery_count as i64),
                            ])
                        })
                        .collect();
                    Reply::Map(vec![
                        field("name", Reply::Bulk(cname.clone())),
                        field("seen-time", Reply::Int(c.seen_time as i64)),
                        field("pel-count", Reply::Int(c.pel.len() as i64)),
                        field("pending", Reply::Array(pending)),
                    ])
                })
                .collect();
            Reply::Map(vec![
                field("name", Reply::Bulk(name.clone())),
                field("last-delivered-id", id_reply(g.last_id)),
                field("entries-read", entries_read_reply(g)),
                field("lag", lag_reply(s, g)),
                field("pel-count", Reply::Int(g.pel.len() as i64)),
                field("pending", Reply::Array(pel)),
                field("consumers", Reply::Array(consumers)),
            ])
        })
        .collect();
    m.push(field("groups", Reply::Array(groups)));
    Ok(Reply::Map(m))
}

fn xinfo_groups(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let s = match get_stream(ctx, &args[2]) {
        Ok(Some(s)) => s,
        Ok(None) => return err(NO_SUCH_KEY),
        Err(e) => return e,
    };
    Reply::Array(
        s.groups
            .iter()
            .map(|(name, g)| {
                Reply::Map(vec![
                    field("name", Reply::Bulk(name.clone())),
                    field("consumers", Reply::Int(g.consumers.len() as i64)),
                    field("pending", Reply::Int(g.pel.len() as i64)),
                    field("last-delivered-id", id_reply(g.last_id)),
                    field("entries-read", entries_read_reply(g)),
                    field("lag", lag_reply(s, g)),
                ])
            })
            .collect(),
    )
}

fn xinfo_consumers(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    let (key, group) = (&args[2], &args[3]);
    let s = match get_stream(ctx, key) {
        Ok(Some(s)) => s,
        Ok(None) => return err(NO_SUCH_KEY),
        Err(e) => return e,
    };
    let Some(g) = s.groups.get(group) else {
        return Reply::error(format!(
            "NOGROUP No such consumer group '{}' for key name '{}'",
            String::from_utf8_lossy(group),
            String::from_utf8_lossy(key)
        ));
    };
    let now = ctx.now_ms as i64;
    Reply::Array(
        g.consumers
            .iter()
            .map(|(name, c)| {
                Reply::Map(vec![
                    field("name", Reply::Bulk(name.clone())),
                    field("pending", Reply::Int(c.pel.len() as i64)),
                    field("idle", Reply::Int((now - c.seen_time as i64).max(0))),
                ])
            })
            .collect(),
    )
}
