//! The command table: one place that declares every command's arity, flags, key positions and ACL
//! categories.
//!
//! The facts are Redis 7.0's own, taken from a real redis-server by `tools/gen_command_table.py`
//! into `commands.json` (the COMMAND INFO and COMMAND DOCS replies of every command). Dispatch,
//! arity checks, key extraction (for routing, WATCH and ACL) and the `COMMAND` command all read
//! this table. A command appears in cairn's table only when cairn implements it, so `COMMAND`
//! never advertises what cairn cannot do.

mod json;
pub mod keys;

use cairn_resp::Reply;
use std::collections::HashMap;
use std::sync::Arc;

pub use keys::KeySpec;

/// One command or subcommand (`config|get`).
#[derive(Debug)]
pub struct CommandSpec {
    /// Lower-case name; subcommands are `parent|sub`.
    pub name: String,
    /// Redis arity: `n` means exactly n arguments including the name, `-n` at least n.
    pub arity: i64,
    pub flags: Flags,
    /// Legacy key positions (first, last, step) as COMMAND INFO reports them.
    pub first_key: i64,
    pub last_key: i64,
    pub key_step: i64,
    /// ACL categories without the `@`.
    pub categories: Vec<String>,
    pub key_specs: Vec<KeySpec>,
    pub subcommands: HashMap<String, Arc<CommandSpec>>,
    /// The COMMAND INFO reply for this command, as Redis gives it.
    pub info: Reply,
    /// The COMMAND DOCS entry (name, docs) for this command.
    pub docs: Option<Reply>,
}

/// Command flags, as in Redis's COMMAND INFO.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Flags(u32);

macro_rules! flags {
    ($($name:ident = $bit:expr, $text:literal;)*) => {
        impl Flags {
            $(pub const $name: Flags = Flags(1 << $bit);)*

            fn from_name(name: &str) -> Flags {
                match name {
                    $($text => Flags::$name,)*
                    _ => Flags(0),
                }
            }
        }
    };
}

flags! {
    WRITE = 0, "write";
    READONLY = 1, "readonly";
    DENYOOM = 2, "denyoom";
    ADMIN = 3, "admin";
    PUBSUB = 4, "pubsub";
    NOSCRIPT = 5, "noscript";
    BLOCKING = 6, "blocking";
    LOADING = 7, "loading";
    STALE = 8, "stale";
    FAST = 9, "fast";
    NO_AUTH = 10, "no_auth";
    MOVABLEKEYS = 11, "movablekeys";
    NO_MULTI = 12, "no_multi";
    ALLOW_BUSY = 13, "allow_busy";
    NO_MANDATORY_KEYS = 14, "no_mandatory_keys";
}

impl Flags {
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl CommandSpec {
    /// Whether the command may change data: Redis's `write` flag, and the scripts that may
    /// write (Redis flags EVAL `may_replicate` instead; in cairn a script that may write runs
    /// through the log).
    pub fn is_write(&self) -> bool {
        self.flags.contains(Flags::WRITE)
            || matches!(self.name.as_str(), "eval" | "evalsha" | "fcall")
    }

    /// Whether `argc` arguments (the name included) satisfy the arity.
    pub fn arity_ok(&self, argc: usize) -> bool {
        let argc = argc as i64;
        if self.arity >= 0 {
            argc == self.arity
        } else {
            argc >= -self.arity
        }
    }

    /// Positions of the keys in `args` (the name at 0), found from the key specs as Redis does.
    pub fn key_positions(&self, args: &[Vec<u8>]) -> Vec<usize> {
        let mut keys = keys::positions(&self.key_specs, args);
        if self.name == "sort" {
            // SORT's STORE destination has no key spec Redis can state (its spec is "unknown"):
            // found as Redis's own sortGetKeys finds it, skipping LIMIT's and BY/GET's arguments.
            if let Some(at) = keys::sort_store_position(args) {
                keys.push(at);
            }
        }
        keys
    }
}

/// What looking a request up in the table found.
pub enum Lookup<'a> {
    Found(&'a Arc<CommandSpec>),
    /// The error reply Redis gives: unknown command, unknown subcommand or wrong arity.
    Error(Reply),
}

/// Every command cairn implements, by lower-case name.
pub struct CommandTable {
    commands: HashMap<String, Arc<CommandSpec>>,
    /// Sorted names, for `COMMAND` and `COMMAND LIST` in a stable order.
    names: Vec<String>,
    pub source: String,
}

impl CommandTable {
    /// Loads Redis's facts, keeping the commands (and subcommands) `implemented` says yes to.
    pub fn load(implemented: impl Fn(&str) -> bool) -> CommandTable {
        let (source, all) = json::load();
        let mut commands = HashMap::new();
        for mut spec in all {
            if !implemented(&spec.name) {
                continue;
            }
            spec.subcommands.retain(|name, _| implemented(name));
            if let Reply::Array(items) = &mut spec.info {
                if let Some(Reply::Array(subs)) = items.get_mut(9) {
                    subs.retain(|s| sub_name(s).is_some_and(&implemented));
                }
            }
            commands.insert(spec.name.clone(), Arc::new(spec));
        }
        let mut names: Vec<String> = commands.keys().cloned().collect();
        names.sort();
        CommandTable {
            commands,
            names,
            source,
        }
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Arc<CommandSpec>> {
        self.commands.get(name)
    }

    /// All commands in name order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CommandSpec>> {
        self.names.iter().map(|n| &self.commands[n])
    }

    /// Finds the spec for a request and checks its arity, answering as Redis does when either fails.
    pub fn lookup(&self, args: &[Vec<u8>]) -> Lookup<'_> {
        // Lower-case the name on the stack: this runs for every request.
        let mut buf = [0u8; 32];
        let found = match args[0].len() {
            n if n <= buf.len() => {
                buf[..n].copy_from_slice(&args[0]);
                buf[..n].make_ascii_lowercase();
                std::str::from_utf8(&buf[..n])
                    .ok()
                    .and_then(|name| self.commands.get(name))
            }
            _ => None,
        };
        let Some(spec) = found else {
            return Lookup::Error(unknown_command(args));
        };
        if spec.subcommands.is_empty() {
            if !spec.arity_ok(args.len()) {
                return Lookup::Error(wrong_arity(&spec.name));
            }
            return Lookup::Found(spec);
        }
        if args.len() < 2 {
            // A container such as COMMAND may also be called bare when its arity allows.
            return if spec.arity_ok(1) {
                Lookup::Found(spec)
            } else {
                Lookup::Error(wrong_arity(&spec.name))
            };
        }
        let sub = format!("{}|{}", spec.name, lower(&args[1]));
        match spec.subcommands.get(&sub) {
            Some(s) if s.arity_ok(args.len()) => Lookup::Found(s),
            Some(s) => Lookup::Error(wrong_arity(&s.name)),
            None => Lookup::Error(Reply::error(format!(
                "ERR unknown subcommand '{}'. Try {} HELP.",
                trunc(&args[1], 128),
                spec.name.to_uppercase()
            ))),
        }
    }
}

fn sub_name(info: &Reply) -> Option<&str> {
    match info {
        Reply::Array(items) => match items.first() {
            Some(Reply::Bulk(b)) => std::str::from_utf8(b).ok(),
            _ => None,
        },
        _ => None,
    }
}

/// Lower-cases a command name (names are ASCII; anything else cannot match).
pub fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

fn trunc(arg: &[u8], max: usize) -> String {
    let s = String::from_utf8_lossy(&arg[..arg.len().min(max)]);
    s.into_owned()
}

/// `ERR wrong number of arguments for 'get' command`
pub fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!(
        "ERR wrong number of arguments for '{name}' command"
    ))
}

/// Redis's unknown-command error, which quotes the first arguments.
pub fn unknown_command(args: &[Vec<u8>]) -> Reply {
    let mut quoted = String::new();
    for a in args[1..].iter() {
        if quoted.len() >= 128 {
            break;
        }
        let remaining = 128 - quoted.len();
        quoted.push('\'');
        quoted.push_str(&trunc(a, remaining));
        quoted.push_str("' ");
    }
    Reply::error(format!(
        "ERR unknown command '{}', with args beginning with: {}",
        trunc(&args[0], 128),
        quoted
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys_of(table: &CommandTable, line: &str) -> Vec<String> {
        let args: Vec<Vec<u8>> = line.split(' ').map(|w| w.as_bytes().to_vec()).collect();
        let Lookup::Found(spec) = table.lookup(&args) else {
            panic!("{line} is not a command")
        };
        spec.key_positions(&args)
            .into_iter()
            .map(|i| line.split(' ').nth(i).unwrap().to_string())
            .collect()
    }

    #[test]
    fn key_positions_follow_the_key_specs_and_sorts_store() {
        let table = CommandTable::load(|_| true);
        assert_eq!(keys_of(&table, "MSET a 1 b 2"), ["a", "b"]);
        assert_eq!(
            keys_of(&table, "ZUNIONSTORE d 2 x y WEIGHTS 1 2"),
            ["d", "x", "y"]
        );
        assert_eq!(keys_of(&table, "SORT s ALPHA STORE d"), ["s", "d"]);
        // LIMIT's and BY/GET's arguments are never taken for STORE, and the last STORE counts.
        assert_eq!(
            keys_of(&table, "SORT s BY store LIMIT 0 1 GET # STORE a STORE b"),
            ["s", "b"]
        );
        assert_eq!(keys_of(&table, "SORT s GET store"), ["s"]);
    }
}
