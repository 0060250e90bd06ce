//! Command argument parsing and execution: up to four commands (arguments separated by 0x00,
//! commands by 0xff) run on one store through the command table, as a standalone node runs
//! them. Nothing may panic; the store's invariants are checked by its debug assertions.
#![no_main]

use cairn_commands::{CommandTable, Lookup};
use cairn_resp::Protocol;
use cairn_store::{Env, Store};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn table() -> &'static CommandTable {
    static TABLE: OnceLock<CommandTable> = OnceLock::new();
    TABLE.get_or_init(|| CommandTable::load(|name| cairn_store::cmd::handler(name).is_some()))
}

/// Refuses inputs that only ask for memory Redis would also give (a 512 MB SETRANGE): the
/// fuzzer looks for crashes, not for allocations the protocol allows.
fn too_big(args: &[Vec<u8>]) -> bool {
    args.iter().skip(1).any(|a| {
        std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .is_some_and(|n| n.abs() > 100_000.0)
    })
}

fuzz_target!(|data: &[u8]| {
    let mut store = Store::new();
    for (i, cmd) in data.split(|&b| b == 0xff).take(4).enumerate() {
        let args: Vec<Vec<u8>> = cmd.split(|&b| b == 0).map(<[u8]>::to_vec).collect();
        if args[0].is_empty() || too_big(&args) {
            continue;
        }
        let Lookup::Found(spec) = table().lookup(&args) else {
            continue;
        };
        let Some(handler) = cairn_store::cmd::handler(&spec.name) else {
            continue;
        };
        let env = Env {
            now_ms: 1_700_000_000_000 + i as u64,
            seed: i as u64,
            proto: if i % 2 == 0 {
                Protocol::Resp2
            } else {
                Protocol::Resp3
            },
        };
        let reply = store.execute(handler, &args, &env);
        let _ = reply.to_bytes(env.proto);
    }
});
