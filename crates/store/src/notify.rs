//! Keyspace notifications (`notify-keyspace-events`): the events a command's changes emit,
//! collected while it runs and published by the server as Pub/Sub messages.
//!
//! Commands call [`crate::Ctx::notify`] where Redis calls `notifyKeyspaceEvent`, with the same
//! class and event name, in the same order. What is collected depends on the flags only; the
//! flags are a node's setting, not replicated state, and collecting changes nothing else, so
//! replies and state stay the same on every replica. Under replication only the shard's leader
//! collects (see the server's shard machine), so each change is published once.

/// `K`: `__keyspace@0__:<key>` channels, the event as message.
pub const KEYSPACE: u32 = 1 << 0;
/// `E`: `__keyevent@0__:<event>` channels, the key as message.
pub const KEYEVENT: u32 = 1 << 1;
pub const GENERIC: u32 = 1 << 2;
pub const STRING: u32 = 1 << 3;
pub const LIST: u32 = 1 << 4;
pub const SET: u32 = 1 << 5;
pub const HASH: u32 = 1 << 6;
pub const ZSET: u32 = 1 << 7;
pub const EXPIRED: u32 = 1 << 8;
pub const EVICTED: u32 = 1 << 9;
pub const STREAM: u32 = 1 << 10;
pub const KEY_MISS: u32 = 1 << 11;
pub const MODULE: u32 = 1 << 12;
pub const NEW: u32 = 1 << 13;
/// `A`: every class but key-miss and new (as Redis 7.0 defines it).
pub const ALL: u32 =
    GENERIC | STRING | LIST | SET | HASH | ZSET | EXPIRED | EVICTED | STREAM | MODULE;

/// The class letters in the order Redis writes them back.
const LETTERS: [(char, u32); 10] = [
    ('g', GENERIC),
    ('$', STRING),
    ('l', LIST),
    ('s', SET),
    ('h', HASH),
    ('z', ZSET),
    ('x', EXPIRED),
    ('e', EVICTED),
    ('t', STREAM),
    ('d', MODULE),
];

/// Parses a `notify-keyspace-events` value; None for a letter Redis does not know.
pub fn parse(value: &str) -> Option<u32> {
    let mut flags = 0;
    for c in value.chars() {
        flags |= match c {
            'A' => ALL,
            'K' => KEYSPACE,
            'E' => KEYEVENT,
            'm' => KEY_MISS,
            'n' => NEW,
            _ => LETTERS.iter().find(|(l, _)| *l == c)?.1,
        };
    }
    Some(flags)
}

/// The value CONFIG GET shows for `flags` (Redis's canonical spelling).
pub fn format(flags: u32) -> String {
    let mut out = String::new();
    if flags & ALL == ALL {
        out.push('A');
    } else {
        out.extend(
            LETTERS
                .iter()
                .filter(|(_, f)| flags & f != 0)
                .map(|(l, _)| l),
        );
    }
    for (l, f) in [
        ('K', KEYSPACE),
        ('E', KEYEVENT),
        ('m', KEY_MISS),
        ('n', NEW),
    ] {
        if flags & f != 0 {
            out.push(l);
        }
    }
    out
}

/// One change to report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub name: &'static str,
    pub key: Vec<u8>,
}

impl Event {
    /// The Pub/Sub (channel, message) pairs this event becomes under `flags`.
    pub fn messages(&self, flags: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut out = Vec::new();
        if flags & KEYSPACE != 0 {
            let mut channel = b"__keyspace@0__:".to_vec();
            channel.extend_from_slice(&self.key);
            out.push((channel, self.name.as_bytes().to_vec()));
        }
        if flags & KEYEVENT != 0 {
            let channel = format!("__keyevent@0__:{}", self.name).into_bytes();
            out.push((channel, self.key.clone()));
        }
        out
    }
}

/// The events collected so far, and which classes to collect.
#[derive(Default)]
pub struct Events {
    /// The `notify-keyspace-events` flags in force (0: collect nothing).
    pub flags: u32,
    pub list: Vec<Event>,
    /// Whether to collect the keys commands modify (for waking blocked clients on nodes that
    /// hold no replica of the shard), and those keys.
    pub collect_keys: bool,
    pub keys: Vec<Vec<u8>>,
}

impl Events {
    /// Whether an event of `class` is reported at all.
    pub fn wants(&self, class: u32) -> bool {
        self.flags & class != 0 && self.flags & (KEYSPACE | KEYEVENT) != 0
    }

    pub fn push(&mut self, class: u32, name: &'static str, key: &[u8]) {
        if self.wants(class) {
            self.list.push(Event {
                name,
                key: key.to_vec(),
            });
        }
    }

    pub fn take(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.list)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_read_and_write_as_redis_spells_them() {
        assert_eq!(parse(""), Some(0));
        assert_eq!(parse("KEA").map(format).as_deref(), Some("AKE"));
        assert_eq!(parse("Kl$g").map(format).as_deref(), Some("g$lK"));
        assert_eq!(parse("Eg$lshzxetd").map(format).as_deref(), Some("AE"));
        assert_eq!(parse("KEAmn").map(format).as_deref(), Some("AKEmn"));
        assert_eq!(parse("KEq"), None);
        assert_eq!(parse("k"), None);
    }

    #[test]
    fn nothing_is_collected_without_a_channel_kind_or_a_class() {
        let mut e = Events {
            flags: parse("A").unwrap(),
            ..Events::default()
        };
        e.push(GENERIC, "del", b"k");
        assert!(e.take().is_empty(), "no K or E: no channel to send to");
        e.flags = parse("Kl").unwrap();
        e.push(GENERIC, "del", b"k");
        e.push(LIST, "lpush", b"k");
        assert_eq!(
            e.take(),
            vec![Event {
                name: "lpush",
                key: b"k".to_vec()
            }]
        );
        let ev = Event {
            name: "set",
            key: b"a".to_vec(),
        };
        assert_eq!(
            ev.messages(KEYSPACE | KEYEVENT),
            vec![
                (b"__keyspace@0__:a".to_vec(), b"set".to_vec()),
                (b"__keyevent@0__:set".to_vec(), b"a".to_vec())
            ]
        );
    }
}
