//! ACL, AUTH and the permission check every request passes (see `crate::acl` for the model).

use crate::acl::{Acl, Denied, Request, User};
use crate::connection::Client;
use crate::dispatch::Call;
use crate::Shared;
use cairn_commands::{CommandSpec, Flags};
use cairn_resp::Reply;
use std::sync::Arc;

/// The user a connection runs as, re-read when the users changed.
pub fn current_user(acl: &Acl, client: &mut Client) -> Option<Arc<User>> {
    let version = acl.version();
    if let Some((v, u)) = &client.acl_user {
        if *v == version {
            return Some(u.clone());
        }
    }
    let user = acl.user(&client.user)?;
    client.acl_user = Some((version, user.clone()));
    Some(user)
}

/// Whether this client may run anything without a check (the common case, kept cheap: a
/// version compare and a flag).
pub fn unchecked(shared: &Shared, client: &mut Client) -> bool {
    if client.internal {
        return true;
    }
    let acl = &shared.acl;
    if !client.authenticated && acl.auth_required() {
        return false;
    }
    current_user(acl, client).is_some_and(|u| u.unrestricted)
}

/// The check before a command runs: None to go on, or the error to answer instead (and the
/// denial is in ACL LOG). Inside MULTI a refusal also fails the transaction, as in Redis.
pub fn refused(
    shared: &Shared,
    client: &mut Client,
    spec: &Arc<CommandSpec>,
    args: &[Vec<u8>],
) -> Option<Reply> {
    let refusal = check(shared, client, spec, args)?;
    if client.multi.is_some() {
        client.multi_failed = true;
    }
    shared.stats.error_reply(&refusal);
    shared.stats.commands.reject(&spec.name);
    Some(refusal)
}

fn check(
    shared: &Shared,
    client: &mut Client,
    spec: &Arc<CommandSpec>,
    args: &[Vec<u8>],
) -> Option<Reply> {
    if client.internal {
        return None;
    }
    let acl = &shared.acl;
    let no_auth = spec.flags.contains(Flags::NO_AUTH);
    if !client.authenticated && acl.auth_required() && !no_auth {
        return Some(Reply::error("NOAUTH Authentication required."));
    }
    let Some(user) = current_user(acl, client) else {
        // The user was deleted: Redis closes its connections.
        client.close_after_reply = true;
        return Some(Reply::error("ERR the user of this connection was deleted"));
    };
    if user.unrestricted || no_auth {
        return None;
    }
    let denied = permitted(acl, &user, spec, args).err()?;
    let (reason, object, text) = match denied {
        Denied::Command => (
            "command",
            spec.name.clone(),
            format!(
                "NOPERM this user has no permissions to run the '{}' command",
                spec.name
            ),
        ),
        Denied::Key(p) => (
            "key",
            String::from_utf8_lossy(&args[p]).into_owned(),
            "NOPERM this user has no permissions to access one of the keys used as arguments"
                .to_string(),
        ),
        Denied::Channel(p) => (
            "channel",
            String::from_utf8_lossy(&args[p]).into_owned(),
            "NOPERM this user has no permissions to access one of the channels used as arguments"
                .to_string(),
        ),
    };
    // The log's client line names the refused command, as Redis's does.
    *client.info.last_command.lock() = Some(spec.clone());
    acl.log_denial(
        reason,
        "toplevel",
        object,
        String::from_utf8_lossy(&user.name).into_owned(),
        client.info.describe(crate::now_ms()),
    );
    Some(Reply::error(text))
}

/// What `user` may do with this request.
pub fn permitted(
    acl: &Acl,
    user: &User,
    spec: &CommandSpec,
    args: &[Vec<u8>],
) -> Result<(), Denied> {
    let Some(command) = acl.commands.id(&spec.name) else {
        return Err(Denied::Command);
    };
    let mut keys = Vec::new();
    for ks in &spec.key_specs {
        let has = |f: &str| ks.flags.iter().any(|x| x.eq_ignore_ascii_case(f));
        let mut read = has("access");
        let mut write = has("insert") || has("delete") || has("update");
        if has("variable_flags") {
            // The two commands whose key flags depend on their arguments, as Redis decides.
            let any = |words: &[&str]| {
                args[2..]
                    .iter()
                    .any(|a| words.iter().any(|w| a.eq_ignore_ascii_case(w.as_bytes())))
            };
            match spec.name.as_str() {
                "set" => read = any(&["get"]),
                "bitfield" => write = any(&["set", "incrby"]),
                _ => {}
            }
        }
        for p in cairn_commands::keys::positions(std::slice::from_ref(ks), args) {
            keys.push((p, read, write));
        }
    }
    let channels = match spec.name.as_str() {
        "publish" | "spublish" if args.len() > 1 => vec![(1, false)],
        "subscribe" | "ssubscribe" => (1..args.len()).map(|p| (p, false)).collect(),
        "psubscribe" => (1..args.len()).map(|p| (p, true)).collect(),
        _ => Vec::new(),
    };
    user.check(
        &acl.commands,
        &Request {
            command,
            args,
            keys,
            channels,
        },
    )
}

/// AUTH [user] password.
pub fn auth(c: &mut Call) -> Reply {
    if c.args.len() > 3 {
        return Reply::error("ERR syntax error");
    }
    let (name, password) = if c.args.len() == 2 {
        if !c.shared.acl.auth_required() {
            return Reply::error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?");
        }
        (b"default".as_slice(), &c.args[1])
    } else {
        (c.args[1].as_slice(), &c.args[2])
    };
    match authenticate(c.shared, c.client, name, password) {
        Ok(()) => Reply::OK,
        Err(e) => e,
    }
}

/// Logs the client in as `name`, or answers WRONGPASS (and logs the attempt).
pub fn authenticate(
    shared: &Shared,
    client: &mut Client,
    name: &[u8],
    password: &[u8],
) -> Result<(), Reply> {
    let acl = &shared.acl;
    match acl.user(name) {
        Some(u) if u.accepts(password) => {
            client.user = name.to_vec();
            client.authenticated = true;
            client.acl_user = None;
            *client.info.user.lock() = name.to_vec();
            Ok(())
        }
        _ => {
            acl.log_denial(
                "auth",
                "toplevel",
                "AUTH".into(),
                String::from_utf8_lossy(name).into_owned(),
                client.info.describe(crate::now_ms()),
            );
            Err(Reply::error(
                "WRONGPASS invalid username-password pair or user is disabled.",
            ))
        }
    }
}

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

fn bulk(s: impl Into<Vec<u8>>) -> Reply {
    Reply::Bulk(s.into())
}

/// ACL SETUSER on a single node (a cluster sends it through its meta group, see
/// [`cluster_change`]).
pub fn setuser(c: &mut Call) -> Reply {
    // Clear passwords are hashed as they are applied: nothing leaves this node.
    match c.shared.acl.set_user(&c.args[2], &c.args[3..]) {
        Ok(()) => Reply::OK,
        Err(e) => Reply::error(e),
    }
}

pub fn deluser(c: &mut Call) -> Reply {
    match c.shared.acl.del_users(&c.args[2..]) {
        Ok(n) => Reply::Int(n as i64),
        Err(e) => Reply::error(e),
    }
}

pub fn getuser(c: &mut Call) -> Reply {
    match c.shared.acl.user(&c.args[2]) {
        Some(u) => u.getuser_reply(),
        None => Reply::Nil,
    }
}

pub fn list(c: &mut Call) -> Reply {
    Reply::Array(
        c.shared
            .acl
            .users()
            .iter()
            .map(|u| bulk(u.describe()))
            .collect(),
    )
}

pub fn users(c: &mut Call) -> Reply {
    Reply::Array(
        c.shared
            .acl
            .users()
            .iter()
            .map(|u| bulk(u.name.clone()))
            .collect(),
    )
}

pub fn whoami(c: &mut Call) -> Reply {
    bulk(c.client.user.clone())
}

pub fn cat(c: &mut Call) -> Reply {
    match c.args.get(2) {
        None => Reply::Array(crate::acl::CATEGORIES.iter().map(|&s| bulk(s)).collect()),
        Some(name) => {
            let name = String::from_utf8_lossy(name);
            match c.shared.acl.commands.in_category(&name) {
                Some(cmds) => Reply::Array(cmds.into_iter().map(bulk).collect()),
                None => Reply::error(format!("ERR Unknown category '{name}'")),
            }
        }
    }
}

pub fn genpass(c: &mut Call) -> Reply {
    let bits = match c.args.get(2) {
        None => 256,
        Some(a) => match cairn_resp::decode::parse_i64(a) {
            Some(n @ 1..=4096) => n as usize,
            _ => {
                return Reply::error(
                    "ERR ACL GENPASS argument must be the number of bits for the output password, a positive number up to 4096",
                )
            }
        },
    };
    let chars = bits.div_ceil(4);
    let mut bytes = vec![0u8; chars.div_ceil(2)];
    use ring::rand::SecureRandom;
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return Reply::error("ERR no randomness available");
    }
    let mut hex = crate::acl::hex(&bytes);
    hex.truncate(chars);
    bulk(hex)
}

pub fn log(c: &mut Call) -> Reply {
    let acl = &c.shared.acl;
    let count = match c.args.get(2) {
        None => 10,
        Some(a) if is(a, "reset") => {
            acl.reset_log();
            return Reply::OK;
        }
        Some(a) => match cairn_resp::decode::parse_i64(a) {
            Some(n) if n >= 0 => n as usize,
            _ => return Reply::error("ERR value is out of range, must be positive"),
        },
    };
    let now = crate::now_ms();
    Reply::Array(
        acl.log_entries(count)
            .into_iter()
            .map(|e| {
                let age = now.saturating_sub(e.created_ms) as f64 / 1000.0;
                Reply::Map(vec![
                    (bulk("count"), Reply::Int(e.count as i64)),
                    (bulk("reason"), bulk(e.reason)),
                    (bulk("context"), bulk(e.context)),
                    (bulk("object"), bulk(e.object)),
                    (bulk("username"), bulk(e.username)),
                    (bulk("age-seconds"), Reply::Double(age)),
                    (bulk("client-info"), bulk(e.client_info)),
                ])
            })
            .collect(),
    )
}

pub fn dryrun(c: &mut Call) -> Reply {
    let acl = &c.shared.acl;
    let Some(user) = acl.user(&c.args[2]) else {
        return Reply::error(format!(
            "ERR User '{}' not found",
            String::from_utf8_lossy(&c.args[2])
        ));
    };
    let args = &c.args[3..];
    let spec = match c.shared.table.commands.lookup(args) {
        cairn_commands::Lookup::Found(s) => s.clone(),
        cairn_commands::Lookup::Error(_)
            if c.shared
                .table
                .commands
                .get(&cairn_commands::lower(&args[0]))
                .is_none() =>
        {
            return Reply::error(format!(
                "ERR Command '{}' not found",
                String::from_utf8_lossy(&args[0])
            ))
        }
        cairn_commands::Lookup::Error(e) => return e,
    };
    match permitted(acl, &user, &spec, args) {
        Ok(()) => Reply::OK,
        Err(Denied::Command) => bulk(format!(
            "This user has no permissions to run the '{}' command",
            spec.name
        )),
        Err(Denied::Key(p)) => bulk(format!(
            "This user has no permissions to access the '{}' key",
            String::from_utf8_lossy(&args[p])
        )),
        Err(Denied::Channel(p)) => bulk(format!(
            "This user has no permissions to access the '{}' channel",
            String::from_utf8_lossy(&args[p])
        )),
    }
}

pub fn no_file(_: &mut Call) -> Reply {
    Reply::error("ERR This Redis instance is not configured to use an ACL file. You may want to specify users via the ACL SETUSER command and then issue a CONFIG REWRITE (assuming you have a Redis configuration file set) in order to store users in the Redis configuration.")
}

/// In a cluster, ACL SETUSER and DELUSER (and CONFIG SET requirepass) change the meta group:
/// the entry holds password hashes only, and carries a secret for the nodes' own
/// connections that the first such entry makes the cluster's (see `crate::meta`).
pub async fn cluster_change(shared: &Shared, client: &mut Client, change: Vec<Vec<u8>>) -> Vec<u8> {
    let mut entry = vec![
        crate::meta::NAME.as_bytes().to_vec(),
        b"ACL".to_vec(),
        fresh_secret().into_bytes(),
    ];
    entry.extend(change);
    crate::replicated::propose_to(shared, client, crate::meta::GROUP, entry).await
}

/// ACL SETUSER's rules for `CONFIG SET requirepass <p>`.
pub fn requirepass_rules(password: &[u8]) -> Vec<Vec<u8>> {
    if password.is_empty() {
        vec![b"nopass".to_vec()]
    } else {
        crate::acl::hash_rules(&[b"resetpass".to_vec(), [b">", password].concat()])
    }
}

fn fresh_secret() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // Without randomness the entry is refused by the meta machine (an empty secret).
    if ring::rand::SystemRandom::new().fill(&mut bytes).is_err() {
        return String::new();
    }
    crate::acl::hex(&bytes)
}
