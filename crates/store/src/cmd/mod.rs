//! One file per command family. Each exports `COMMANDS`: the names it implements (subcommands as
//! `parent|sub`) and their handlers; [`handler`] looks a name up across all of them.

pub mod bitmaps;
pub mod blocking;
pub mod hashes;
pub mod hll;
pub mod keys;
pub mod lists;
pub mod migrate;
pub mod scripting;
pub mod server;
pub mod sets;
pub mod sort;
pub mod streams;
pub mod strings;
pub mod zsets;

use crate::exec::Handler;
use std::collections::HashMap;
use std::sync::OnceLock;

const FAMILIES: &[&[(&str, Handler)]] = &[
    strings::COMMANDS,
    keys::COMMANDS,
    lists::COMMANDS,
    hashes::COMMANDS,
    sets::COMMANDS,
    server::COMMANDS,
    zsets::COMMANDS,
    hll::COMMANDS,
    bitmaps::COMMANDS,
    sort::COMMANDS,
    blocking::COMMANDS,
    streams::COMMANDS,
    scripting::COMMANDS,
];

fn registry() -> &'static HashMap<&'static str, Handler> {
    static REGISTRY: OnceLock<HashMap<&'static str, Handler>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut map = HashMap::new();
        for family in FAMILIES {
            for (name, h) in family.iter() {
                let previous = map.insert(*name, *h);
                assert!(previous.is_none(), "command {name} is implemented twice");
            }
        }
        map
    })
}

/// The store's implementation of a command (lower-case name, `parent|sub` for subcommands).
pub fn handler(name: &str) -> Option<Handler> {
    registry().get(name).copied()
}

/// Names of every command the store implements.
pub fn names() -> impl Iterator<Item = &'static str> {
    registry().keys().copied()
}
