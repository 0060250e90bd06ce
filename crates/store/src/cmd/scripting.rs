//! EVAL and EVAL_RO: a Lua script run as one command (see `crate::script`). EVALSHA and
//! EVALSHA_RO reach the store as EVAL and EVAL_RO: the node that took the command looks the
//! script up by its sha and puts its body in the log entry, so that every replica runs the same
//! text whatever scripts it has seen.

use crate::exec::{Ctx, Handler};
use cairn_resp::Reply;

pub const COMMANDS: &[(&str, Handler)] = &[("eval", eval), ("eval_ro", eval_ro)];

fn eval(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    crate::script::eval(ctx, args, false)
}

fn eval_ro(ctx: &mut Ctx, args: &[Vec<u8>]) -> Reply {
    crate::script::eval(ctx, args, true)
}
