//! Whole-keyspace commands that belong to the state machine: DBSIZE, FLUSHDB, FLUSHALL.

use crate::exec::*;
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] =
    &[("dbsize", dbsize), ("flushdb", flush), ("flushall", flush)];

fn dbsize(ctx: &mut Ctx, _args: &[Vec<u8>]) -> Reply {
    Reply::Int(ctx.ks.served_len() as i64)
}

fn flush(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    match args.get(1) {
        None => {}
        Some(a) if (is(a, "sync") || is(a, "async")) && args.len() == 2 => {}
        Some(_) => return syntax(),
    }
    ctx.dirty += ctx.ks.served_len() as u64 + 1;
    ctx.ks.clear();
    ctx.moves.flushed(ctx.ks);
    ctx.watches.signal_all();
    Reply::OK
}
