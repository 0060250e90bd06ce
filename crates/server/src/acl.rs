//! Users and their permissions: Redis 7's ACL model.
//!
//! A user has on/off, passwords (SHA-256 hashes only: a clear password is hashed where it
//! arrives and never stored, logged or replicated), and selectors. The root selector and each
//! extra `(...)` selector allow commands (a bit per command and subcommand of Redis's command
//! table, set by `+cmd`, `-cmd`, `+@category`, ...), key patterns (`~p`, `%R~p`, `%W~p`) and
//! channel patterns (`&p`). A request passes when any selector allows all of it.
//!
//! The command rules a user describes itself with are the rules it was given, compacted
//! without loss as Redis 7.2 does (a later rule for the same command or category replaces the
//! earlier one; `+@all`/`-@all` restart the list). Redis 7.0.15 instead regenerates parts of
//! the list in hash-table order, so its text varies from run to run: the differential tests
//! compare what the rules allow, command by command.
//!
//! In a cluster the users live in the meta group (`crate::meta`): an `ACL SETUSER` becomes a
//! `CAIRN.META ACL ...` entry carrying only hashes, and every node applies it, so a user made
//! on one node logs in on all of them. A single node keeps them here, in memory.

use cairn_commands::CommandTable;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Redis 7.0's ACL categories, in ACL CAT's order.
pub const CATEGORIES: [&str; 21] = [
    "keyspace",
    "read",
    "write",
    "set",
    "sortedset",
    "list",
    "hash",
    "string",
    "bitmap",
    "hyperloglog",
    "geo",
    "stream",
    "pubsub",
    "admin",
    "fast",
    "slow",
    "blocking",
    "dangerous",
    "connection",
    "transaction",
    "scripting",
];

/// The most users a cluster keeps, and the longest rule list a user may carry: bounds on
/// what ACL SETUSER can make any node hold.
pub const MAX_USERS: usize = 10_000;
pub const MAX_RULES: usize = 1024;

/// The refusal for a list at MAX_RULES (Redis has no such bound; cairn keeps every user's
/// lists bounded because each node holds all of them).
fn too_many(what: &str) -> String {
    format!("a selector holds at most {MAX_RULES} {what}")
}

/// Every command and subcommand of Redis's table (not only those cairn implements, so that a
/// rule naming any Redis command is accepted and categories hold what they hold in Redis).
pub struct Commands {
    names: Vec<String>,
    ids: HashMap<String, usize>,
    /// Category bits per id.
    categories: Vec<u32>,
    /// The subcommands of each container.
    children: Vec<Vec<usize>>,
    parent: Vec<Option<usize>>,
    no_auth: Vec<bool>,
}

impl Commands {
    pub fn load() -> Commands {
        let table = CommandTable::load(|_| true);
        let mut c = Commands {
            names: Vec::new(),
            ids: HashMap::new(),
            categories: Vec::new(),
            children: Vec::new(),
            parent: Vec::new(),
            no_auth: Vec::new(),
        };
        for spec in table.iter() {
            let id = c.add(spec, None);
            let mut subs: Vec<_> = spec.subcommands.values().collect();
            subs.sort_by(|a, b| a.name.cmp(&b.name));
            for sub in subs {
                let s = c.add(sub, Some(id));
                c.children[id].push(s);
            }
        }
        c
    }

    fn add(&mut self, spec: &cairn_commands::CommandSpec, parent: Option<usize>) -> usize {
        let id = self.names.len();
        self.names.push(spec.name.clone());
        self.ids.insert(spec.name.clone(), id);
        let bits = spec
            .categories
            .iter()
            .filter_map(|c| category_bit(c.trim_start_matches('@')))
            .fold(0, |a, b| a | b);
        self.categories.push(bits);
        self.children.push(Vec::new());
        self.parent.push(parent);
        self.no_auth
            .push(spec.flags.contains(cairn_commands::Flags::NO_AUTH));
        id
    }

    pub fn id(&self, name: &str) -> Option<usize> {
        self.ids.get(name).copied()
    }

    fn words(&self) -> usize {
        self.names.len().div_ceil(64)
    }

    /// The commands (and subcommands) of `category`, by name: ACL CAT's reply.
    pub fn in_category(&self, category: &str) -> Option<Vec<&str>> {
        let bit = category_bit(category)?;
        Some(
            self.names
                .iter()
                .enumerate()
                .filter(|(i, _)| self.categories[*i] & bit != 0)
                .map(|(_, n)| n.as_str())
                .collect(),
        )
    }
}

fn category_bit(name: &str) -> Option<u32> {
    let lower = name.to_ascii_lowercase();
    CATEGORIES.iter().position(|c| *c == lower).map(|i| 1 << i)
}

/// A key pattern and what it allows.
#[derive(Clone, Debug, PartialEq)]
struct KeyPattern {
    pattern: Vec<u8>,
    read: bool,
    write: bool,
}

/// One set of permissions: the root one, or a `(...)` selector.
#[derive(Clone, Debug, PartialEq)]
pub struct Selector {
    allowed: Vec<u64>,
    /// `+cmd|arg` on a command without subcommands: allowed with that first argument only.
    first_args: BTreeMap<usize, Vec<String>>,
    /// The rules after the last `+@all`/`-@all`, compacted.
    rules: Vec<String>,
    /// Whether the rules start from `+@all`.
    from_all: bool,
    all_keys: bool,
    keys: Vec<KeyPattern>,
    all_channels: bool,
    channels: Vec<Vec<u8>>,
}

impl Selector {
    fn new(cmds: &Commands) -> Selector {
        Selector {
            allowed: vec![0; cmds.words()],
            first_args: BTreeMap::new(),
            rules: Vec::new(),
            from_all: false,
            all_keys: false,
            keys: Vec::new(),
            all_channels: false,
            channels: Vec::new(),
        }
    }

    fn bit(&self, id: usize) -> bool {
        self.allowed[id / 64] & (1 << (id % 64)) != 0
    }

    fn set_bit(&mut self, id: usize, on: bool) {
        if on {
            self.allowed[id / 64] |= 1 << (id % 64);
        } else {
            self.allowed[id / 64] &= !(1 << (id % 64));
        }
    }

    /// A command and all its subcommands.
    fn change(&mut self, cmds: &Commands, id: usize, on: bool) {
        self.set_bit(id, on);
        self.first_args.remove(&id);
        for &c in &cmds.children[id] {
            self.set_bit(c, on);
        }
    }

    fn all_commands(&self, cmds: &Commands) -> bool {
        (0..cmds.names.len()).all(|i| self.bit(i))
    }

    /// Keeps the rule list compact: `rule` replaces any earlier rule it makes moot.
    fn record(&mut self, rule: String, moot: impl Fn(&str) -> bool) {
        self.rules.retain(|r| !moot(&r[1..]));
        self.rules.push(rule);
        if self.rules.len() > MAX_RULES {
            self.rules.remove(0);
        }
    }

    /// Applies one key, channel or command rule; Err is Redis's reason.
    fn apply(&mut self, cmds: &Commands, op: &[u8]) -> Result<(), String> {
        let text = String::from_utf8_lossy(op);
        let lower = text.to_ascii_lowercase();
        match lower.as_str() {
            "allkeys" => return self.apply(cmds, b"~*"),
            "allchannels" => return self.apply(cmds, b"&*"),
            "resetkeys" => {
                self.all_keys = false;
                self.keys.clear();
                return Ok(());
            }
            "resetchannels" => {
                self.all_channels = false;
                self.channels.clear();
                return Ok(());
            }
            "allcommands" | "+@all" => {
                self.allowed.iter_mut().for_each(|w| *w = u64::MAX);
                self.first_args.clear();
                self.rules.clear();
                self.from_all = true;
                return Ok(());
            }
            "nocommands" | "-@all" => {
                self.allowed.iter_mut().for_each(|w| *w = 0);
                self.first_args.clear();
                self.rules.clear();
                self.from_all = false;
                return Ok(());
            }
            _ => {}
        }
        if op.first() == Some(&b'~') || op.first() == Some(&b'%') {
            return self.add_keys(op);
        }
        if op.first() == Some(&b'&') {
            if self.all_channels {
                return Err("Adding a pattern after the * pattern (or the 'allchannels' flag) is not valid and does not have any effect. Try 'resetchannels' to start with an empty list of channels".into());
            }
            let pattern = op[1..].to_vec();
            if pattern == b"*" {
                self.all_channels = true;
                self.channels.clear();
            } else if !self.channels.contains(&pattern) {
                if self.channels.len() >= MAX_RULES {
                    return Err(too_many("channel patterns"));
                }
                self.channels.push(pattern);
            }
            return Ok(());
        }
        let (allow, name) = match lower.as_bytes().first() {
            Some(b'+') => (true, &lower[1..]),
            Some(b'-') => (false, &lower[1..]),
            _ => return Err("Syntax error".into()),
        };
        let unknown = || "Unknown command or category name in ACL".to_string();
        if let Some(category) = name.strip_prefix('@') {
            let bit = category_bit(category).ok_or_else(unknown)?;
            for id in 0..cmds.names.len() {
                if cmds.categories[id] & bit != 0 {
                    self.change(cmds, id, allow);
                }
            }
            let cat = format!("@{category}");
            self.record(format!("{}{cat}", if allow { '+' } else { '-' }), |r| {
                r == cat
            });
            return Ok(());
        }
        if let Some(id) = cmds.id(name) {
            self.change(cmds, id, allow);
            let prefix = format!("{name}|");
            self.record(format!("{}{name}", if allow { '+' } else { '-' }), |r| {
                r == name || (cmds.parent[id].is_none() && r.starts_with(&prefix))
            });
            return Ok(());
        }
        // `cmd|arg` for a command without subcommands: a first argument (allowing only).
        let (cmd, arg) = name.split_once('|').ok_or_else(unknown)?;
        let id = cmds.id(cmd).filter(|&i| cmds.children[i].is_empty());
        let id = id.filter(|_| allow && !arg.is_empty() && !arg.contains('|'));
        let id = id.ok_or_else(unknown)?;
        if !self.bit(id) {
            let args = self.first_args.entry(id).or_default();
            if !args.iter().any(|a| a == arg) {
                if args.len() >= MAX_RULES {
                    return Err(too_many("first arguments of one command"));
                }
                args.push(arg.to_string());
            }
        }
        self.record(format!("+{name}"), |r| r == name);
        Ok(())
    }

    fn add_keys(&mut self, op: &[u8]) -> Result<(), String> {
        let (read, write, pattern) = if op[0] == b'~' {
            (true, true, &op[1..])
        } else {
            let tilde = op.iter().position(|&b| b == b'~').ok_or("Syntax error")?;
            let mut read = false;
            let mut write = false;
            for &f in &op[1..tilde] {
                match f.to_ascii_uppercase() {
                    b'R' => read = true,
                    b'W' => write = true,
                    _ => return Err("Syntax error".into()),
                }
            }
            if !read && !write {
                return Err("Syntax error".into());
            }
            (read, write, &op[tilde + 1..])
        };
        if self.all_keys {
            return Err("Adding a pattern after the * pattern (or the 'allkeys' flag) is not valid and does not have any effect. Try 'resetkeys' to start with an empty list of patterns".into());
        }
        if pattern == b"*" && read && write {
            self.all_keys = true;
            self.keys.clear();
            return Ok(());
        }
        let full = self.keys.len() >= MAX_RULES;
        match self.keys.iter_mut().find(|k| k.pattern == pattern) {
            Some(k) => {
                k.read |= read;
                k.write |= write;
            }
            None if full => return Err(too_many("key patterns")),
            None => self.keys.push(KeyPattern {
                pattern: pattern.to_vec(),
                read,
                write,
            }),
        }
        Ok(())
    }

    fn describe_commands(&self) -> String {
        let mut out = String::from(if self.from_all { "+@all" } else { "-@all" });
        for r in &self.rules {
            out.push(' ');
            out.push_str(r);
        }
        out
    }

    fn describe_keys(&self) -> String {
        if self.all_keys {
            return "~*".into();
        }
        let parts: Vec<String> = self
            .keys
            .iter()
            .map(|k| {
                let flags = match (k.read, k.write) {
                    (true, true) => "",
                    (true, false) => "%R",
                    _ => "%W",
                };
                format!("{flags}~{}", String::from_utf8_lossy(&k.pattern))
            })
            .collect();
        parts.join(" ")
    }

    fn describe_channels(&self) -> String {
        if self.all_channels {
            return "&*".into();
        }
        let parts: Vec<String> = self
            .channels
            .iter()
            .map(|c| format!("&{}", String::from_utf8_lossy(c)))
            .collect();
        parts.join(" ")
    }

    /// The rules that rebuild this selector, as ACL LIST writes them: keys, channels,
    /// commands.
    fn tokens(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.all_keys {
            out.push(b"~*".to_vec());
        }
        for k in &self.keys {
            let flags: &[u8] = match (k.read, k.write) {
                (true, true) => b"~",
                (true, false) => b"%R~",
                _ => b"%W~",
            };
            out.push([flags, &k.pattern].concat());
        }
        if self.all_channels {
            out.push(b"&*".to_vec());
        } else {
            out.push(b"resetchannels".to_vec());
            out.extend(self.channels.iter().map(|c| [b"&", c.as_slice()].concat()));
        }
        out.push(if self.from_all {
            b"+@all".to_vec()
        } else {
            b"-@all".to_vec()
        });
        out.extend(self.rules.iter().map(|r| r.as_bytes().to_vec()));
        out
    }

    fn check(&self, cmds: &Commands, req: &Request<'_>) -> Result<(), Denied> {
        let id = req.command;
        if !cmds.no_auth[id] && !self.bit(id) {
            let by_arg = req.args.get(1).is_some_and(|a| {
                self.first_args
                    .get(&id)
                    .is_some_and(|l| l.iter().any(|x| x.as_bytes().eq_ignore_ascii_case(a)))
            });
            if !by_arg {
                return Err(Denied::Command);
            }
        }
        if !self.all_keys {
            for &(pos, read, write) in &req.keys {
                let key = &req.args[pos];
                let ok = self.keys.iter().any(|k| {
                    (!read || k.read)
                        && (!write || k.write)
                        && cairn_store::glob::matches(&k.pattern, key, false)
                });
                if !ok {
                    return Err(Denied::Key(pos));
                }
            }
        }
        if !self.all_channels {
            for &(pos, pattern) in &req.channels {
                let ch = &req.args[pos];
                let ok = self.channels.iter().any(|p| {
                    if pattern {
                        p == ch
                    } else {
                        cairn_store::glob::matches(p, ch, false)
                    }
                });
                if !ok {
                    return Err(Denied::Channel(pos));
                }
            }
        }
        Ok(())
    }

    fn unrestricted(&self, cmds: &Commands) -> bool {
        self.all_keys && self.all_channels && self.all_commands(cmds)
    }
}

/// Why a request was refused, with the refused argument's position.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Denied {
    Command,
    Key(usize),
    Channel(usize),
}

impl Denied {
    fn rank(self) -> (u8, usize) {
        match self {
            Denied::Command => (1, 0),
            Denied::Key(p) => (2, p),
            Denied::Channel(p) => (4, p),
        }
    }
}

/// What a permission check needs to know of a request.
pub struct Request<'a> {
    pub command: usize,
    pub args: &'a [Vec<u8>],
    /// Key positions, each with whether the command reads it and whether it writes it.
    pub keys: Vec<(usize, bool, bool)>,
    /// Channel positions, each with whether it is a pattern (PSUBSCRIBE).
    pub channels: Vec<(usize, bool)>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub name: Vec<u8>,
    pub enabled: bool,
    pub nopass: bool,
    sanitize: Option<bool>,
    /// Lower-case hex SHA-256 of each password, in the order added.
    pub passwords: Vec<String>,
    root: Selector,
    selectors: Vec<Selector>,
    /// The root selector allows everything (checked once per change, not per request).
    pub unrestricted: bool,
}

impl User {
    pub fn new(name: &[u8], cmds: &Commands) -> User {
        User {
            name: name.to_vec(),
            enabled: false,
            nopass: false,
            sanitize: None,
            passwords: Vec::new(),
            root: Selector::new(cmds),
            selectors: Vec::new(),
            unrestricted: false,
        }
    }

    /// Redis's default user: on, no password, everything allowed.
    pub fn default_user(cmds: &Commands) -> User {
        let mut u = User::new(b"default", cmds);
        for rule in ["on", "nopass", "~*", "&*", "+@all"] {
            u.apply(cmds, rule.as_bytes())
                .expect("the default user's rules");
        }
        u
    }

    /// Applies one ACL SETUSER rule; Err is Redis's reason. A clear password (`>`/`<`) must
    /// have been turned into its hash (`#`/`!`) already, except in tests of this module.
    pub fn apply(&mut self, cmds: &Commands, op: &[u8]) -> Result<(), String> {
        let lower = String::from_utf8_lossy(op).to_ascii_lowercase();
        match lower.as_str() {
            "on" => self.enabled = true,
            "off" => self.enabled = false,
            "nopass" => {
                self.nopass = true;
                self.passwords.clear();
            }
            "resetpass" => {
                self.nopass = false;
                self.passwords.clear();
            }
            "sanitize-payload" => self.sanitize = Some(true),
            "skip-sanitize-payload" => self.sanitize = Some(false),
            "clearselectors" => self.selectors.clear(),
            "reset" => {
                *self = User::new(&self.name, cmds);
                for r in [
                    "resetpass",
                    "resetkeys",
                    "resetchannels",
                    "off",
                    "-@all",
                    "sanitize-payload",
                ] {
                    self.apply(cmds, r.as_bytes())?;
                }
            }
            _ => match op.first() {
                Some(b'>') => self.add_hash(hash_password(&op[1..]))?,
                Some(b'<') => self.remove_hash(&hash_password(&op[1..]))?,
                Some(b'#') => self.add_hash(valid_hash(&op[1..])?)?,
                Some(b'!') => self.remove_hash(&valid_hash(&op[1..])?)?,
                Some(b'(') if op.last() == Some(&b')') => {
                    let mut s = Selector::new(cmds);
                    for rule in op[1..op.len() - 1].split(|&b| b == b' ') {
                        if !rule.is_empty() {
                            s.apply(cmds, rule)?;
                        }
                    }
                    if self.selectors.len() >= 64 {
                        return Err("Too many selectors".into());
                    }
                    self.selectors.push(s);
                }
                _ => self.root.apply(cmds, op)?,
            },
        }
        self.unrestricted = self.root.unrestricted(cmds);
        Ok(())
    }

    fn add_hash(&mut self, h: String) -> Result<(), String> {
        if !self.passwords.contains(&h) {
            if self.passwords.len() >= MAX_RULES {
                return Err(format!("a user holds at most {MAX_RULES} passwords"));
            }
            self.passwords.push(h);
        }
        self.nopass = false;
        Ok(())
    }

    fn remove_hash(&mut self, h: &str) -> Result<(), String> {
        let before = self.passwords.len();
        self.passwords.retain(|p| p != h);
        if self.passwords.len() == before {
            return Err(
                "The password you are trying to remove from the user does not exist".into(),
            );
        }
        self.nopass = false;
        Ok(())
    }

    /// Whether `password` opens this user (enabled, and nopass or a matching hash).
    pub fn accepts(&self, password: &[u8]) -> bool {
        if !self.enabled {
            return false;
        }
        if self.nopass {
            return true;
        }
        let h = hash_password(password);
        // Every stored hash is compared in full: the time taken says nothing of which matched.
        self.passwords.iter().fold(false, |found, p| {
            found | constant_eq(p.as_bytes(), h.as_bytes())
        })
    }

    /// Checks a request: Ok, or the most relevant refusal over all selectors (Redis's order).
    pub fn check(&self, cmds: &Commands, req: &Request<'_>) -> Result<(), Denied> {
        let mut worst: Option<Denied> = None;
        for s in std::iter::once(&self.root).chain(&self.selectors) {
            match s.check(cmds, req) {
                Ok(()) => return Ok(()),
                Err(d) => {
                    if worst.is_none_or(|w| d.rank() > w.rank()) {
                        worst = Some(d);
                    }
                }
            }
        }
        Err(worst.expect("at least the root selector"))
    }

    /// The ACL LIST line: `user <name> <rules>`, which SETUSER takes back as it is.
    pub fn describe(&self) -> String {
        let mut line = format!("user {}", String::from_utf8_lossy(&self.name));
        for r in self.rules() {
            line.push(' ');
            line.push_str(&String::from_utf8_lossy(&r));
        }
        line
    }

    /// Rules that rebuild this user from nothing (passwords as hashes), one per argument of
    /// an ACL SETUSER; a selector is one `(...)` rule.
    pub fn rules(&self) -> Vec<Vec<u8>> {
        let mut parts = vec![if self.enabled {
            b"on".to_vec()
        } else {
            b"off".to_vec()
        }];
        if self.nopass {
            parts.push(b"nopass".to_vec());
        }
        match self.sanitize {
            Some(true) => parts.push(b"sanitize-payload".to_vec()),
            Some(false) => parts.push(b"skip-sanitize-payload".to_vec()),
            None => {}
        }
        parts.extend(self.passwords.iter().map(|p| format!("#{p}").into_bytes()));
        parts.extend(self.root.tokens());
        for s in &self.selectors {
            let inner = s.tokens().join(&b' ');
            parts.push([b"(".as_slice(), &inner, b")"].concat());
        }
        parts
    }

    /// ACL GETUSER's reply.
    pub fn getuser_reply(&self) -> cairn_resp::Reply {
        use cairn_resp::Reply;
        let bulk = |s: String| Reply::Bulk(s.into_bytes());
        let mut flags = vec![bulk(if self.enabled { "on" } else { "off" }.into())];
        if self.nopass {
            flags.push(bulk("nopass".into()));
        }
        match self.sanitize {
            Some(true) => flags.push(bulk("sanitize-payload".into())),
            Some(false) => flags.push(bulk("skip-sanitize-payload".into())),
            None => {}
        }
        let selectors = self
            .selectors
            .iter()
            .map(|s| {
                Reply::Map(vec![
                    (bulk("commands".into()), bulk(s.describe_commands())),
                    (bulk("keys".into()), bulk(s.describe_keys())),
                    (bulk("channels".into()), bulk(s.describe_channels())),
                ])
            })
            .collect();
        Reply::Map(vec![
            (bulk("flags".into()), Reply::Set(flags)),
            (
                bulk("passwords".into()),
                Reply::Array(self.passwords.iter().map(|p| bulk(p.clone())).collect()),
            ),
            (bulk("commands".into()), bulk(self.root.describe_commands())),
            (bulk("keys".into()), bulk(self.root.describe_keys())),
            (bulk("channels".into()), bulk(self.root.describe_channels())),
            (bulk("selectors".into()), Reply::Array(selectors)),
        ])
    }
}

/// Lower-case hex SHA-256.
pub fn hash_password(password: &[u8]) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, password);
    hex(d.as_ref())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn valid_hash(h: &[u8]) -> Result<String, String> {
    if h.len() == 64
        && h.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    {
        Ok(String::from_utf8_lossy(h).into_owned())
    } else {
        Err("The password hash must be exactly 64 characters and contain only lowercase hexadecimal characters".into())
    }
}

pub fn constant_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Turns clear passwords into hashes (`>p` → `#h`, `<p` → `!h`), so that what goes further
/// (the meta group's log, snapshots, other nodes) never holds one.
pub fn hash_rules(rules: &[Vec<u8>]) -> Vec<Vec<u8>> {
    rules
        .iter()
        .map(|r| match r.first() {
            Some(b'>') => format!("#{}", hash_password(&r[1..])).into_bytes(),
            Some(b'<') => format!("!{}", hash_password(&r[1..])).into_bytes(),
            _ => r.clone(),
        })
        .collect()
}

/// Joins a selector given over several arguments (`(~x*` `+set)`) into one, as Redis does.
fn merge_selectors(rules: &[Vec<u8>]) -> Result<Vec<Vec<u8>>, String> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut open: Option<Vec<u8>> = None;
    for r in rules {
        match open.as_mut() {
            Some(sel) => {
                sel.push(b' ');
                sel.extend_from_slice(r);
                if r.last() == Some(&b')') {
                    out.extend(open.take());
                }
            }
            None if r.first() == Some(&b'(') && r.last() != Some(&b')') => open = Some(r.clone()),
            None => out.push(r.clone()),
        }
    }
    match open {
        Some(sel) => Err(format!(
            "ERR Unmatched parenthesis in acl selector starting at '{}'.",
            String::from_utf8_lossy(
                &sel[..sel.iter().position(|&b| b == b' ').unwrap_or(sel.len())]
            )
        )),
        None => Ok(out),
    }
}

/// One ACL LOG entry.
#[derive(Clone, Debug)]
pub struct LogEntry {
    pub count: u64,
    pub reason: &'static str,
    pub context: &'static str,
    pub object: String,
    pub username: String,
    pub created_ms: u64,
    pub updated_ms: u64,
    pub client_info: String,
}

/// The cluster's users (as this node has applied them), and this node's ACL LOG.
pub struct Acl {
    pub commands: Commands,
    users: RwLock<BTreeMap<Vec<u8>, Arc<User>>>,
    /// Bumped on every change: a connection re-reads its user when it moved.
    version: AtomicU64,
    log: Mutex<VecDeque<LogEntry>>,
    pub log_max: AtomicU64,
    pub denied_auth: AtomicU64,
    pub denied_cmd: AtomicU64,
    pub denied_key: AtomicU64,
    pub denied_channel: AtomicU64,
    /// In a cluster: the secret a node shows another on its internal connections (known once
    /// the first ACL change is applied; see `crate::meta`).
    pub node_secret: RwLock<Option<String>>,
}

impl Default for Acl {
    fn default() -> Self {
        Acl::new()
    }
}

impl Acl {
    pub fn new() -> Acl {
        let commands = Commands::load();
        let default = User::default_user(&commands);
        let mut users = BTreeMap::new();
        users.insert(b"default".to_vec(), Arc::new(default));
        Acl {
            commands,
            users: RwLock::new(users),
            version: AtomicU64::new(1),
            log: Mutex::new(VecDeque::new()),
            log_max: AtomicU64::new(128),
            denied_auth: AtomicU64::new(0),
            denied_cmd: AtomicU64::new(0),
            denied_key: AtomicU64::new(0),
            denied_channel: AtomicU64::new(0),
            node_secret: RwLock::new(None),
        }
    }

    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub fn user(&self, name: &[u8]) -> Option<Arc<User>> {
        self.users.read().get(name).cloned()
    }

    pub fn users(&self) -> Vec<Arc<User>> {
        self.users.read().values().cloned().collect()
    }

    /// Whether a connection that has not authenticated must (the default user has a password
    /// or is off).
    pub fn auth_required(&self) -> bool {
        self.user(b"default")
            .is_none_or(|u| !u.nopass || !u.enabled)
    }

    /// ACL SETUSER: applies `rules` to `name`, creating it; all or nothing.
    pub fn set_user(&self, name: &[u8], rules: &[Vec<u8>]) -> Result<(), String> {
        self.change_user(name, rules, true)
    }

    /// What ACL SETUSER would answer, changing nothing (a cluster node checks a change
    /// before it sends it, with its clear passwords, to the meta group as hashes).
    pub fn check_set_user(&self, name: &[u8], rules: &[Vec<u8>]) -> Result<(), String> {
        self.change_user(name, rules, false)
    }

    fn change_user(&self, name: &[u8], rules: &[Vec<u8>], store: bool) -> Result<(), String> {
        if name.is_empty() || name.iter().any(|b| b.is_ascii_whitespace()) {
            return Err("ERR Usernames can't contain spaces or null characters".into());
        }
        let mut users = self.users.write();
        let rules = merge_selectors(rules)?;
        let mut user = match users.get(name) {
            Some(u) => (**u).clone(),
            None if users.len() >= MAX_USERS => {
                return Err(format!("ERR a cluster has at most {MAX_USERS} users"))
            }
            None => User::new(name, &self.commands),
        };
        for rule in &rules {
            if let Err(why) = user.apply(&self.commands, rule) {
                return Err(format!(
                    "ERR Error in ACL SETUSER modifier '{}': {why}",
                    String::from_utf8_lossy(rule)
                ));
            }
        }
        if store {
            users.insert(name.to_vec(), Arc::new(user));
            self.version.fetch_add(1, Ordering::AcqRel);
        }
        Ok(())
    }

    /// ACL DELUSER: how many of `names` were deleted.
    pub fn del_users(&self, names: &[Vec<u8>]) -> Result<usize, String> {
        if names.iter().any(|n| n == b"default") {
            return Err("ERR The 'default' user cannot be removed".into());
        }
        let mut users = self.users.write();
        let n = names.iter().filter(|n| users.remove(*n).is_some()).count();
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(n)
    }

    /// Replaces every user (a meta snapshot): `lines` are ACL LIST lines.
    pub fn replace_all(&self, lines: &[(Vec<u8>, Vec<Vec<u8>>)]) -> Result<(), String> {
        let mut fresh = BTreeMap::new();
        fresh.insert(
            b"default".to_vec(),
            Arc::new(User::default_user(&self.commands)),
        );
        for (name, rules) in lines {
            let mut u = User::new(name, &self.commands);
            for r in rules {
                u.apply(&self.commands, r)?;
            }
            fresh.insert(name.clone(), Arc::new(u));
        }
        *self.users.write() = fresh;
        self.version.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Every user as (name, rules), for a snapshot.
    pub fn export(&self) -> Vec<(Vec<u8>, Vec<Vec<u8>>)> {
        self.users
            .read()
            .values()
            .map(|u| (u.name.clone(), u.rules()))
            .collect()
    }

    /// Files a refusal in ACL LOG: similar to one of the 10 newest entries (within a minute),
    /// it is counted in that entry, which moves to the front; else it is a new entry. (Redis
    /// looks no further than 10 entries either.)
    pub fn log_denial(
        &self,
        reason: &'static str,
        context: &'static str,
        object: String,
        username: String,
        client_info: String,
    ) {
        match reason {
            "auth" => &self.denied_auth,
            "command" => &self.denied_cmd,
            "key" => &self.denied_key,
            _ => &self.denied_channel,
        }
        .fetch_add(1, Ordering::Relaxed);
        let max = self.log_max.load(Ordering::Relaxed) as usize;
        let now = crate::now_ms();
        let mut log = self.log.lock();
        let similar = log.iter().take(10).position(|e| {
            e.reason == reason
                && e.context == context
                && e.object == object
                && e.username == username
                && now.saturating_sub(e.created_ms) < 60_000
        });
        let entry = match similar {
            Some(i) => {
                let mut e = log.remove(i).expect("found");
                e.count += 1;
                e.updated_ms = now;
                e.client_info = client_info;
                e
            }
            None => LogEntry {
                count: 1,
                reason,
                context,
                object,
                username,
                created_ms: now,
                updated_ms: now,
                client_info,
            },
        };
        log.push_front(entry);
        log.truncate(max);
    }

    pub fn log_entries(&self, count: usize) -> Vec<LogEntry> {
        self.log.lock().iter().take(count).cloned().collect()
    }

    pub fn reset_log(&self) {
        self.log.lock().clear();
    }

    pub fn trim_log(&self) {
        let max = self.log_max.load(Ordering::Relaxed) as usize;
        self.log.lock().truncate(max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(rules: &[&str]) -> (Commands, User) {
        let cmds = Commands::load();
        let mut u = User::new(b"u", &cmds);
        for r in rules {
            u.apply(&cmds, r.as_bytes()).unwrap();
        }
        (cmds, u)
    }

    fn args_name(a: &[u8]) -> String {
        String::from_utf8_lossy(a).to_lowercase()
    }

    fn commands(rules: &[&str]) -> String {
        user(rules).1.root.describe_commands()
    }

    #[test]
    fn command_rules_compact_as_redis_7_2_does() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["+@all", "-@hash", "-@slow", "+hget"],
                "+@all -@hash -@slow +hget",
            ),
            (
                &["+@all", "-@hash", "-@slow", "+hget", "-@hash"],
                "+@all -@slow +hget -@hash",
            ),
            (
                &["-@all", "+hget", "-hset", "+hset", "-hget"],
                "-@all +hset -hget",
            ),
            (
                &[
                    "-@all",
                    "+client|list",
                    "+client|list",
                    "+config|get",
                    "+config",
                    "+acl|list",
                    "-acl",
                ],
                "-@all +client|list +config -acl",
            ),
            (
                &[
                    "-@all",
                    "+select|0",
                    "+select|0",
                    "+debug|segfault",
                    "+debug",
                ],
                "-@all +select|0 +debug",
            ),
            (&["-@all", "-@dangerous"], "-@all -@dangerous"),
            (
                &["-@all", "+config", "+config|get", "-config|set", "+config"],
                "-@all +config",
            ),
            (&["-@string", "-@slow", "+@all"], "+@all"),
            (&["-@all", "+@HASH", "+@hash", "+@HaSh"], "-@all +@hash"),
        ];
        for (rules, want) in cases {
            assert_eq!(&commands(rules), want, "{rules:?}");
        }
    }

    #[test]
    fn permissions_follow_the_rules() {
        let (cmds, u) = user(&["on", "-@all", "+@hash", "-hset", "+client|id", "+select|0"]);
        let can = |args: &[&str]| {
            let args: Vec<Vec<u8>> = args.iter().map(|a| a.as_bytes().to_vec()).collect();
            let sub = args
                .get(1)
                .map(|a| format!("{}|{}", args_name(&args[0]), args_name(a)));
            let name = sub
                .filter(|s| cmds.id(s).is_some())
                .unwrap_or_else(|| args_name(&args[0]));
            let req = Request {
                command: cmds.id(&name).unwrap(),
                args: &args,
                keys: Vec::new(),
                channels: Vec::new(),
            };
            u.check(&cmds, &req).is_ok()
        };
        assert!(can(&["hget", "k", "f"]));
        assert!(!can(&["hset", "k", "f", "v"]));
        assert!(can(&["client", "id"]));
        assert!(!can(&["client", "list"]));
        assert!(can(&["select", "0"]));
        assert!(!can(&["select", "1"]));
        assert!(!can(&["get", "k"]));
        // AUTH needs no permission.
        assert!(can(&["auth", "x"]));
    }

    #[test]
    fn keys_and_channels() {
        let (cmds, u) = user(&["+@all", "~k*", "%R~r*", "%W~w*", "&ch*"]);
        let args: Vec<Vec<u8>> = vec![
            b"x".to_vec(),
            b"k1".to_vec(),
            b"r1".to_vec(),
            b"w1".to_vec(),
            b"ch1".to_vec(),
            b"ch*".to_vec(),
        ];
        let req = |keys: Vec<(usize, bool, bool)>, channels: Vec<(usize, bool)>| Request {
            command: cmds.id("get").unwrap(),
            args: &args,
            keys,
            channels,
        };
        assert_eq!(u.check(&cmds, &req(vec![(1, true, true)], vec![])), Ok(()));
        assert_eq!(u.check(&cmds, &req(vec![(2, true, false)], vec![])), Ok(()));
        assert_eq!(
            u.check(&cmds, &req(vec![(2, false, true)], vec![])),
            Err(Denied::Key(2))
        );
        assert_eq!(u.check(&cmds, &req(vec![(3, false, true)], vec![])), Ok(()));
        assert_eq!(
            u.check(&cmds, &req(vec![(3, true, false)], vec![])),
            Err(Denied::Key(3))
        );
        assert_eq!(u.check(&cmds, &req(vec![], vec![(4, false)])), Ok(()));
        // A pattern subscription must name a granted pattern exactly.
        assert_eq!(u.check(&cmds, &req(vec![], vec![(5, true)])), Ok(()));
        assert_eq!(
            u.check(&cmds, &req(vec![], vec![(4, true)])),
            Err(Denied::Channel(4))
        );
        assert_eq!(
            u.describe(),
            "user u off ~k* %R~r* %W~w* resetchannels &ch* +@all"
        );
    }

    #[test]
    fn passwords_are_kept_as_hashes_and_a_described_user_rebuilds_the_same() {
        let (cmds, u) = user(&["on", ">secret", "~a", "(+get ~b)", "-@all", "+set"]);
        let line = u.describe();
        assert!(!line.contains("secret"), "{line}");
        assert!(u.accepts(b"secret") && !u.accepts(b"other"));
        let mut again = User::new(b"u", &cmds);
        for r in u.rules() {
            again.apply(&cmds, &r).unwrap();
        }
        assert_eq!(again, u);
    }

    #[test]
    fn every_list_a_user_carries_is_bounded() {
        let (cmds, mut u) = user(&["on"]);
        for i in 0..MAX_RULES {
            u.apply(&cmds, format!("~k{i}").as_bytes()).unwrap();
            u.apply(&cmds, format!("&c{i}").as_bytes()).unwrap();
            u.apply(&cmds, format!("+select|{i}").as_bytes()).unwrap();
            u.apply(&cmds, format!(">p{i}").as_bytes()).unwrap();
        }
        let err = u.apply(&cmds, b">one-more").unwrap_err();
        assert!(err.contains("passwords"), "{err}");
        // Repeats are not new entries; new ones past the bound are refused, not kept.
        u.apply(&cmds, b"~k0").unwrap();
        u.apply(&cmds, b"&c0").unwrap();
        let err = u.apply(&cmds, b"~one-more").unwrap_err();
        assert!(err.contains("key patterns"), "{err}");
        let err = u.apply(&cmds, b"&one-more").unwrap_err();
        assert!(err.contains("channel patterns"), "{err}");
        let err = u.apply(&cmds, b"+select|one-more").unwrap_err();
        assert!(err.contains("first arguments"), "{err}");
        assert!(u.rules().len() <= 4 * MAX_RULES + 8, "{}", u.rules().len());
        for _ in 0..70 {
            if u.apply(&cmds, b"(~x)").is_err() {
                return;
            }
        }
        panic!("selectors are not bounded");
    }
}
