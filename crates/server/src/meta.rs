//! The meta group: Raft group 0, on every node, holding the cluster's own state:
//! - the shards created after the cluster was (by splits): each is a committed entry here, so
//!   every node opens the same groups with the same voters, and opens them again after a
//!   restart when it replays this log;
//! - the slot map's changes: each finished move is recorded here with the slots' new owner
//!   and epoch, and every node's routing map follows these records as well as its own shard
//!   replicas. Which shard *serves* a slot is still decided in the shards' own logs
//!   (`cairn_store::moves`): a record here comes after the move's ACQUIRE, newest epoch wins.
//!
//! Its members are the cluster's nodes (the node registry: a node joins the cluster by joining
//! this group). Which nodes hold each shard is not recorded here: it lives in each shard's own
//! log, and the nodes learn it from the shards' leaders (`crate::placement`).
//! - the users (`crate::acl`): every node applies each ACL change, so a user made through any
//!   node logs in on all of them; and the node secret, a random value the first ACL change
//!   brings, which nodes show each other on their own connections (`CAIRN.RELAY`).
//!
//! Entries are [`LogEntry`] command runs, like a shard's, of one command:
//! `CAIRN.META CREATE-SHARD <voter>...` → the new shard's id (the next free one);
//! `CAIRN.META SLOTS <first>-<last> <shard> <epoch>` → how many slots it updated;
//! `CAIRN.META ACL <secret> SETUSER <name> <rule>...` → OK or the rule's error (passwords
//! only as hashes);
//! `CAIRN.META ACL <secret> DELUSER <name>...` → how many were deleted.

use crate::shard::ShardMachine;
use crate::shards::MAX_SHARDS;
use cairn_replication::StateMachine;
use cairn_resp::{Protocol, Reply};
use cairn_store::entry::{LogEntry, Operation};
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The meta group's id.
pub const GROUP: u64 = 0;

/// The command name of meta entries.
pub const NAME: &str = "cairn.meta";

/// The replicated state of the meta group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetaState {
    /// The shards created since the cluster was, with the voters each was created with.
    pub created: BTreeMap<u64, Vec<u64>>,
    /// Every slot that has moved: its shard and ownership epoch since its last move.
    pub slots: BTreeMap<u16, (u64, u64)>,
    /// The node secret (hex), set by the first ACL change.
    pub secret: Option<String>,
}

/// A shard the meta group created: every node opens its group.
pub type Created = (u64, Vec<u64>);

#[derive(Clone)]
pub struct MetaMachine {
    pub state: Arc<Mutex<MetaState>>,
    /// The shard ids below this one existed when the cluster was created.
    pub first_free: u64,
    /// Told of every shard created (again after a restart), to open its group.
    pub created_tx: tokio::sync::mpsc::UnboundedSender<Created>,
    /// The node's routing map, told of every slot record (None in tests of the machine).
    pub owners: Option<Arc<crate::shards::SlotOwners>>,
    /// The node's users, which this group's entries change (None in tests of the machine).
    pub acl: Option<Arc<crate::acl::Acl>>,
    /// The cluster's function libraries (None in tests of the machine).
    pub functions: Option<Arc<crate::functions::Libraries>>,
}

const MAGIC: &[u8; 4] = b"CRMT";
const VERSION: u8 = 4;

impl MetaMachine {
    /// Records that `group` serves `slots` from `epoch` on, for each slot whose record is
    /// older; returns how many changed.
    fn record_slots(&mut self, first: u16, last: u16, group: u64, epoch: u64) -> usize {
        let mut state = self.state.lock();
        let mut changed = 0;
        for slot in first..=last {
            let newer = state.slots.get(&slot).is_none_or(|&(_, e)| e < epoch);
            if newer {
                state.slots.insert(slot, (group, epoch));
                changed += 1;
            }
            if let Some(owners) = &self.owners {
                owners.claim(slot as usize, group, epoch);
            }
        }
        changed
    }

    fn run(&mut self, args: &[Vec<u8>]) -> Reply {
        let sub = args
            .get(1)
            .map(|a| String::from_utf8_lossy(a).to_ascii_lowercase());
        match sub.as_deref() {
            Some("create-shard") if args.len() > 2 => {
                let voters: Option<Vec<u64>> = args[2..]
                    .iter()
                    .map(|a| std::str::from_utf8(a).ok()?.parse().ok())
                    .collect();
                let Some(voters) = voters.filter(|v| !v.contains(&0)) else {
                    return Reply::error("ERR voters are node ids");
                };
                let mut state = self.state.lock();
                let id = state
                    .created
                    .keys()
                    .next_back()
                    .map_or(self.first_free, |&last| last + 1)
                    .max(self.first_free);
                if id as usize > MAX_SHARDS {
                    return Reply::error(format!("ERR a cluster has at most {MAX_SHARDS} shards"));
                }
                state.created.insert(id, voters.clone());
                let _ = self.created_tx.send((id, voters));
                Reply::Int(id as i64)
            }
            Some("slots") if args.len() == 5 => {
                let text = String::from_utf8_lossy(&args[2]);
                let (a, b) = text.split_once('-').unwrap_or((&text, &text));
                let num = |v: &[u8]| std::str::from_utf8(v).ok()?.parse::<u64>().ok();
                match (
                    a.parse::<u16>(),
                    b.parse::<u16>(),
                    num(&args[3]),
                    num(&args[4]),
                ) {
                    (Ok(first), Ok(last), Some(group), Some(epoch))
                        if first <= last
                            && (last as usize) < cairn_store::slot::SLOTS
                            && group > 0
                            && group <= 0xffff
                            && epoch > 0
                            && epoch < 1 << 48 =>
                    {
                        Reply::Int(self.record_slots(first, last, group, epoch) as i64)
                    }
                    _ => Reply::error("ERR usage: CAIRN.META SLOTS <first>-<last> <shard> <epoch>"),
                }
            }
            Some("acl") if args.len() > 4 => self.acl_change(&args[2], &args[3..]),
            Some("function") if args.len() >= 3 => match &self.functions {
                Some(libs) => crate::cmd::scripting::function_change(libs, &args[2..]),
                None => Reply::error("ERR no functions here"),
            },
            _ => Reply::error("ERR unknown CAIRN.META command"),
        }
    }

    fn acl_change(&mut self, secret: &[u8], change: &[Vec<u8>]) -> Reply {
        let valid = secret.len() == 64 && secret.iter().all(u8::is_ascii_hexdigit);
        if !valid {
            return Reply::error("ERR the node secret must be 64 hex digits");
        }
        let Some(acl) = self.acl.clone() else {
            return Reply::error("ERR no users here");
        };
        let sub = String::from_utf8_lossy(&change[0]).to_ascii_lowercase();
        let reply = match sub.as_str() {
            "setuser" if change.len() >= 2 => {
                // Clear passwords never reach the log: the node that took the command hashed them.
                if change[2..]
                    .iter()
                    .any(|r| matches!(r.first(), Some(b'>' | b'<')))
                {
                    return Reply::error("ERR clear passwords are not taken here");
                }
                match acl.set_user(&change[1], &change[2..]) {
                    Ok(()) => Reply::OK,
                    Err(e) => return Reply::error(e),
                }
            }
            "deluser" if change.len() >= 2 => match acl.del_users(&change[1..]) {
                Ok(n) => Reply::Int(n as i64),
                Err(e) => return Reply::error(e),
            },
            _ => return Reply::error("ERR usage: CAIRN.META ACL <secret> SETUSER|DELUSER ..."),
        };
        let mut state = self.state.lock();
        if state.secret.is_none() {
            let s = String::from_utf8_lossy(secret).to_ascii_lowercase();
            state.secret = Some(s.clone());
            *acl.node_secret.write() = Some(s);
        }
        reply
    }
}

impl StateMachine for MetaMachine {
    fn apply(&mut self, _index: u64, data: &[u8]) -> Vec<u8> {
        let entry = match LogEntry::decode(data) {
            Ok(e) => e,
            Err(e) => return Reply::error(format!("ERR {e}")).to_bytes(Protocol::Resp2),
        };
        let Operation::Commands(cmds) = &entry.op else {
            return Reply::error("ERR the meta group takes commands only").to_bytes(entry.proto);
        };
        let mut out = Vec::new();
        for cmd in cmds {
            let reply = if cmd[0].eq_ignore_ascii_case(NAME.as_bytes()) {
                self.run(cmd)
            } else {
                Reply::error("ERR the meta group takes CAIRN.META commands only")
            };
            reply.encode(entry.proto, &mut out);
        }
        out
    }

    /// `MAGIC | version u8 | count u32 | (id u64, voters u32, voter u64...)... | slots u32 |
    /// (slot u16, shard u64, epoch u64)... | secret | users u32 | (name, rules u32, rule...)...`
    /// | libraries u32 | code...` (the slots since version 2, the secret and users since 3, the
    /// function libraries since 4; strings are u32 length + bytes, the secret empty when there
    /// is none).
    fn snapshot(&self) -> Vec<u8> {
        let state = self.state.lock();
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        out.extend_from_slice(&(state.created.len() as u32).to_le_bytes());
        for (id, voters) in &state.created {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&(voters.len() as u32).to_le_bytes());
            for v in voters {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(state.slots.len() as u32).to_le_bytes());
        for (slot, (group, epoch)) in &state.slots {
            out.extend_from_slice(&slot.to_le_bytes());
            out.extend_from_slice(&group.to_le_bytes());
            out.extend_from_slice(&epoch.to_le_bytes());
        }
        let put = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        put(&mut out, state.secret.as_deref().unwrap_or("").as_bytes());
        let users = self.acl.as_ref().map(|a| a.export()).unwrap_or_default();
        out.extend_from_slice(&(users.len() as u32).to_le_bytes());
        for (name, rules) in &users {
            put(&mut out, name);
            out.extend_from_slice(&(rules.len() as u32).to_le_bytes());
            for r in rules {
                put(&mut out, r);
            }
        }
        let libraries = self
            .functions
            .as_ref()
            .map(|f| f.export())
            .unwrap_or_default();
        out.extend_from_slice(&(libraries.len() as u32).to_le_bytes());
        for code in &libraries {
            put(&mut out, code);
        }
        out
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        let bad = || "meta snapshot is truncated or malformed".to_string();
        let rest = data.strip_prefix(MAGIC).ok_or_else(bad)?;
        let mut pos = 0usize;
        let mut take = |n: usize| -> Result<&[u8], String> {
            let s = rest
                .get(pos..pos.checked_add(n).ok_or_else(bad)?)
                .ok_or_else(bad)?;
            pos += n;
            Ok(s)
        };
        let version = take(1)?[0];
        if !(1..=VERSION).contains(&version) {
            return Err("meta snapshot version is unknown".into());
        }
        let u32_at = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let u64_at = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        let mut created = BTreeMap::new();
        for _ in 0..u32_at(take(4)?) {
            let id = u64_at(take(8)?);
            let n = u32_at(take(4)?) as usize;
            let mut voters = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                voters.push(u64_at(take(8)?));
            }
            created.insert(id, voters);
        }
        let mut slots = BTreeMap::new();
        if version >= 2 {
            for _ in 0..u32_at(take(4)?) {
                let slot = u16::from_le_bytes(take(2)?.try_into().expect("2 bytes"));
                let group = u64_at(take(8)?);
                let epoch = u64_at(take(8)?);
                if slot as usize >= cairn_store::slot::SLOTS {
                    return Err(bad());
                }
                slots.insert(slot, (group, epoch));
            }
        }
        let mut secret = None;
        let mut users = Vec::new();
        let mut libraries = Vec::new();
        if version >= 3 {
            let string = |take: &mut dyn FnMut(usize) -> Result<Vec<u8>, String>| {
                let n = u32::from_le_bytes(take(4)?.try_into().expect("4 bytes")) as usize;
                take(n)
            };
            let mut take_vec = |n: usize| take(n).map(<[u8]>::to_vec);
            let s = string(&mut take_vec)?;
            if !s.is_empty() {
                secret = Some(String::from_utf8(s).map_err(|_| bad())?);
            }
            let count = u32_at(&take_vec(4)?);
            for _ in 0..count {
                let name = string(&mut take_vec)?;
                let n = u32_at(&take_vec(4)?);
                let mut rules = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    rules.push(string(&mut take_vec)?);
                }
                users.push((name, rules));
            }
            if version >= 4 {
                for _ in 0..u32_at(&take_vec(4)?) {
                    libraries.push(string(&mut take_vec)?);
                }
            }
        }
        if pos != rest.len() {
            return Err(bad());
        }
        if let Some(functions) = &self.functions {
            functions
                .replace_all(&libraries)
                .map_err(|e| format!("meta snapshot holds a bad function library: {e}"))?;
        }
        if let Some(acl) = &self.acl {
            acl.replace_all(&users)
                .map_err(|e| format!("meta snapshot holds a bad user: {e}"))?;
            *acl.node_secret.write() = secret.clone();
        }
        self.state.lock().secret = secret;
        if let Some(owners) = &self.owners {
            for (&slot, &(group, epoch)) in &slots {
                owners.claim(slot as usize, group, epoch);
            }
        }
        self.state.lock().slots = slots;
        for (id, voters) in &created {
            let _ = self.created_tx.send((*id, voters.clone()));
        }
        self.state.lock().created = created;
        Ok(())
    }
}

/// Every group's state machine: a shard's, or the meta group's.
#[derive(Clone)]
pub enum GroupMachine {
    Shard(ShardMachine),
    Meta(MetaMachine),
}

impl StateMachine for GroupMachine {
    fn apply(&mut self, index: u64, data: &[u8]) -> Vec<u8> {
        match self {
            GroupMachine::Shard(m) => m.apply(index, data),
            GroupMachine::Meta(m) => m.apply(index, data),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        match self {
            GroupMachine::Shard(m) => m.snapshot(),
            GroupMachine::Meta(m) => m.snapshot(),
        }
    }

    fn snapshot_job(&self) -> Option<cairn_replication::driver::SnapshotJob> {
        match self {
            GroupMachine::Shard(m) => m.snapshot_job(),
            GroupMachine::Meta(m) => m.snapshot_job(),
        }
    }

    fn restore(&mut self, data: &[u8]) -> Result<(), String> {
        match self {
            GroupMachine::Shard(m) => m.restore(data),
            GroupMachine::Meta(m) => m.restore(data),
        }
    }

    fn set_leading(&mut self, leading: bool) {
        if let GroupMachine::Shard(m) = self {
            m.set_leading(leading);
        }
    }
}

/// Runs until the node stops: opens the group of every shard the meta group created (and
/// adds its store), as this node applies the entries that created them.
pub async fn open_created(
    shared: Arc<crate::Shared>,
    mut created: tokio::sync::mpsc::UnboundedReceiver<Created>,
) {
    let Some(repl) = shared.replication.as_ref() else {
        return;
    };
    while let Some((id, voters)) = created.recv().await {
        let Some(store) = shared.shards.add(id) else {
            tracing::error!(shard = id, "the meta group created a shard out of range");
            continue;
        };
        // Every node knows the shard; its voters hold it.
        if !voters.contains(&repl.me) {
            continue;
        }
        let machine = ShardMachine {
            store: store.clone(),
            routes: Some((id, shared.shards.owners().clone())),
            events: Some(shared.pubsub.clone()),
            leading: false,
        };
        match repl
            .node
            .open_group(id, voters, GroupMachine::Shard(machine))
            .await
        {
            Ok(true) => tracing::info!(shard = id, "opened a shard created at runtime"),
            Ok(false) => tracing::info!(shard = id, "a shard removed from this node stays closed"),
            Err(e) => tracing::error!(shard = id, error = %e, "cannot open a created shard"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create(voters: &[&str]) -> Vec<u8> {
        let mut words = vec!["CREATE-SHARD"];
        words.extend(voters);
        entry(&words)
    }

    fn entry(words: &[&str]) -> Vec<u8> {
        let mut cmd = vec![NAME.as_bytes().to_vec()];
        cmd.extend(words.iter().map(|v| v.as_bytes().to_vec()));
        LogEntry {
            now_ms: 1,
            seed: 1,
            proto: Protocol::Resp2,
            op: Operation::Commands(vec![cmd]),
        }
        .encode()
    }

    fn with_users() -> (MetaMachine, Arc<crate::acl::Acl>) {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let acl = Arc::new(crate::acl::Acl::new());
        let m = MetaMachine {
            state: Arc::default(),
            first_free: 4,
            created_tx: tx,
            owners: None,
            acl: Some(acl.clone()),
            functions: None,
        };
        (m, acl)
    }

    #[test]
    fn function_libraries_are_applied_and_survive_a_snapshot() {
        let with_functions = || {
            let (mut m, _) = with_users();
            let libs = Arc::new(crate::functions::Libraries::default());
            m.functions = Some(libs.clone());
            (m, libs)
        };
        let (mut m, libs) = with_functions();
        let code = "#!lua name=lib\nredis.register_function('f', function() return 1 end)";
        assert_eq!(
            m.apply(1, &entry(&["FUNCTION", "LOAD", code])),
            b"$3\r\nlib\r\n"
        );
        // The same refusal on every node: it is decided by the log.
        assert!(m
            .apply(2, &entry(&["FUNCTION", "LOAD", code]))
            .starts_with(b"-ERR Library 'lib' already exists"));
        let (mut b, libs_b) = with_functions();
        b.restore(&m.snapshot()).unwrap();
        assert_eq!(libs_b.export(), libs.export());
        assert!(libs_b.find("f").is_some());
        assert_eq!(
            m.apply(3, &entry(&["FUNCTION", "DELETE", "lib"])),
            b"+OK\r\n"
        );
        b.restore(&m.snapshot()).unwrap();
        assert!(libs_b.find("f").is_none());
    }

    #[test]
    fn users_and_the_node_secret_are_applied_and_survive_a_snapshot() {
        let (mut m, acl) = with_users();
        let secret = "ab".repeat(32);
        let hash = crate::acl::hash_password(b"pw");
        let set = [
            "ACL",
            &secret,
            "SETUSER",
            "alice",
            "on",
            &format!("#{hash}"),
            "~k*",
            "(+get ~x)",
            "+set",
        ];
        assert_eq!(m.apply(1, &entry(&set)), b"+OK\r\n");
        // Clear passwords are refused: they must never be in the log.
        let clear = ["ACL", &secret, "SETUSER", "bob", ">pw"];
        assert!(m
            .apply(2, &entry(&clear))
            .starts_with(b"-ERR clear passwords"));
        let other = "cd".repeat(32);
        assert_eq!(
            m.apply(3, &entry(&["ACL", &other, "SETUSER", "carol", "on"])),
            b"+OK\r\n"
        );
        // The first secret stays the cluster's.
        assert_eq!(acl.node_secret.read().as_deref(), Some(secret.as_str()));
        assert!(acl.user(b"alice").unwrap().accepts(b"pw"));
        let (mut b, acl_b) = with_users();
        b.restore(&m.snapshot()).unwrap();
        assert_eq!(acl_b.node_secret.read().as_deref(), Some(secret.as_str()));
        assert_eq!(
            acl_b.user(b"alice").unwrap().describe(),
            acl.user(b"alice").unwrap().describe()
        );
        assert!(acl_b.user(b"carol").is_some() && acl_b.user(b"bob").is_none());
        assert_eq!(
            m.apply(4, &entry(&["ACL", &secret, "DELUSER", "alice", "x"])),
            b":1\r\n"
        );
        assert!(acl.user(b"alice").is_none());
    }

    #[test]
    fn shards_get_the_next_free_id_and_survive_a_snapshot() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut m = MetaMachine {
            state: Arc::default(),
            first_free: 4,
            created_tx: tx,
            owners: None,
            acl: None,
            functions: None,
        };
        assert_eq!(m.apply(2, &create(&["1", "2", "3"])), b":4\r\n");
        assert_eq!(m.apply(3, &create(&["1", "2"])), b":5\r\n");
        assert_eq!(m.apply(4, &create(&["x"])), b"-ERR voters are node ids\r\n");
        assert_eq!(rx.try_recv().unwrap(), (4, vec![1, 2, 3]));
        assert_eq!(rx.try_recv().unwrap(), (5, vec![1, 2]));
        assert!(rx.try_recv().is_err());
        // A replica restored from the snapshot knows both, and is told to open them.
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        let mut b = MetaMachine {
            state: Arc::default(),
            first_free: 4,
            created_tx: tx2,
            owners: None,
            acl: None,
            functions: None,
        };
        let snap = m.snapshot();
        b.restore(&snap).unwrap();
        assert_eq!(*b.state.lock(), *m.state.lock());
        assert_eq!(rx2.try_recv().unwrap().0, 4);
        assert_eq!(rx2.try_recv().unwrap().0, 5);
        assert_eq!(b.apply(5, &create(&["1"])), b":6\r\n");
        // Slot records: newer epochs win, and they travel in the snapshot too.
        let slots = |range: &str, group: &str, epoch: &str| {
            let cmd = [NAME, "SLOTS", range, group, epoch].map(|a| a.as_bytes().to_vec());
            LogEntry {
                now_ms: 1,
                seed: 1,
                proto: Protocol::Resp2,
                op: Operation::Commands(vec![cmd.to_vec()]),
            }
            .encode()
        };
        let owners = crate::shards::Shards::even(2).owners().clone();
        b.owners = Some(owners.clone());
        assert_eq!(b.apply(6, &slots("0-9", "2", "3")), b":10\r\n");
        assert_eq!(
            b.apply(7, &slots("5-14", "1", "2")),
            b":5\r\n",
            "only 10-14 were older"
        );
        assert_eq!((owners.group(5), owners.epoch(5)), (2, 3));
        assert_eq!((owners.group(12), owners.epoch(12)), (1, 2));
        assert!(b
            .apply(8, &slots("9-3", "1", "5"))
            .starts_with(b"-ERR usage"));
        let mut c = MetaMachine {
            state: Arc::default(),
            first_free: 4,
            created_tx: tokio::sync::mpsc::unbounded_channel().0,
            owners: None,
            acl: None,
            functions: None,
        };
        c.restore(&b.snapshot()).unwrap();
        assert_eq!(*c.state.lock(), *b.state.lock());
        assert_eq!(c.state.lock().slots.len(), 15);
        for cut in 0..snap.len() {
            assert!(b.restore(&snap[..cut]).is_err(), "cut at {cut}");
        }
    }
}
