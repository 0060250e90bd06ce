//! Connection commands: PING, ECHO, HELLO, SELECT, QUIT, RESET, AUTH, CLIENT.

use crate::dispatch::Call;
use cairn_resp::{Protocol, Reply};
use std::sync::atomic::Ordering;

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

pub fn ping(c: &mut Call) -> Reply {
    // A subscribed RESP2 connection gets PING's answer in the shape of a message.
    let subscribed = c.client.subs.as_ref().is_some_and(|s| !s.is_empty());
    if subscribed && c.client.proto == Protocol::Resp2 && c.args.len() <= 2 {
        let arg = c.args.get(1).cloned().unwrap_or_default();
        return Reply::Array(vec![Reply::from("pong"), Reply::Bulk(arg)]);
    }
    match c.args.len() {
        1 => Reply::Status("PONG".into()),
        2 => Reply::Bulk(c.args[1].clone()),
        _ => cairn_commands::wrong_arity("ping"),
    }
}

pub fn echo(c: &mut Call) -> Reply {
    Reply::Bulk(c.args[1].clone())
}

pub fn hello(c: &mut Call) -> Reply {
    let args = c.args;
    let mut proto = c.client.proto;
    if let Some(v) = args.get(1) {
        match cairn_resp::decode::parse_i64(v) {
            Some(2) => proto = Protocol::Resp2,
            Some(3) => proto = Protocol::Resp3,
            Some(_) => return Reply::error("NOPROTO unsupported protocol version"),
            None => return Reply::error("ERR Protocol version is not an integer or out of range"),
        }
    }
    let mut i = 2;
    let mut name = None;
    let mut login = None;
    while i < args.len() {
        if is(&args[i], "auth") && i + 2 < args.len() {
            login = Some((args[i + 1].clone(), args[i + 2].clone()));
            i += 3;
        } else if is(&args[i], "setname") && i + 1 < args.len() {
            if let Err(e) = valid_name(&args[i + 1]) {
                return e;
            }
            name = Some(args[i + 1].clone());
            i += 2;
        } else {
            return Reply::error(format!(
                "ERR Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(&args[i])
            ));
        }
    }
    match login {
        Some((user, password)) => {
            if let Err(e) = super::acl::authenticate(c.shared, c.client, &user, &password) {
                return e;
            }
        }
        None if !c.client.authenticated && !c.client.internal && c.shared.acl.auth_required() => {
            return Reply::error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time");
        }
        None => {}
    }
    if let Some(n) = name {
        *c.client.info.name.lock() = n;
    }
    c.client.proto = proto;
    c.client.info.resp.store(
        if proto == Protocol::Resp3 { 3 } else { 2 },
        Ordering::Relaxed,
    );
    Reply::Map(vec![
        (Reply::from("server"), Reply::from("redis")),
        (Reply::from("version"), Reply::from("7.0.15")),
        (
            Reply::from("proto"),
            Reply::Int(if proto == Protocol::Resp3 { 3 } else { 2 }),
        ),
        (Reply::from("id"), Reply::Int(c.client.id() as i64)),
        (Reply::from("mode"), Reply::from("standalone")),
        (Reply::from("role"), Reply::from("master")),
        (Reply::from("modules"), Reply::Array(vec![])),
    ])
}

pub fn select(c: &mut Call) -> Reply {
    match cairn_resp::decode::parse_i64(&c.args[1]) {
        Some(0) => Reply::OK,
        Some(_) => Reply::error("ERR DB index is out of range"),
        None => Reply::error("ERR value is not an integer or out of range"),
    }
}

pub fn quit(c: &mut Call) -> Reply {
    c.client.close_after_reply = true;
    Reply::OK
}

pub fn reset(c: &mut Call) -> Reply {
    c.client.multi = None;
    c.client.multi_failed = false;
    c.client.info.in_multi.store(false, Ordering::Relaxed);
    super::transactions::unwatch_locked(c.store.as_deref_mut(), c.client);
    c.client.proto = Protocol::Resp2;
    c.client.info.resp.store(2, Ordering::Relaxed);
    c.client.info.name.lock().clear();
    c.client.subs = None;
    c.client.user = b"default".to_vec();
    c.client.authenticated = false;
    c.client.acl_user = None;
    *c.client.info.user.lock() = b"default".to_vec();
    Reply::Status("RESET".into())
}

pub fn client_id(c: &mut Call) -> Reply {
    Reply::Int(c.client.id() as i64)
}

fn valid_name(name: &[u8]) -> Result<(), Reply> {
    if name.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(Reply::error(
            "ERR Client names cannot contain spaces, newlines or special characters.",
        ));
    }
    Ok(())
}

pub fn client_setname(c: &mut Call) -> Reply {
    if let Err(e) = valid_name(&c.args[2]) {
        return e;
    }
    *c.client.info.name.lock() = c.args[2].clone();
    Reply::OK
}

pub fn client_getname(c: &mut Call) -> Reply {
    let name = c.client.info.name.lock();
    if name.is_empty() {
        Reply::Nil
    } else {
        Reply::Bulk(name.clone())
    }
}

pub fn client_setinfo(c: &mut Call) -> Reply {
    let value = c.args[3].clone();
    if value.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Reply::error(format!(
            "ERR {} cannot contain spaces, newlines or special characters.",
            String::from_utf8_lossy(&c.args[2])
        ));
    }
    if is(&c.args[2], "lib-name") {
        *c.client.info.lib_name.lock() = value;
    } else if is(&c.args[2], "lib-ver") {
        *c.client.info.lib_ver.lock() = value;
    } else {
        return Reply::error(format!(
            "ERR Unrecognized option '{}'",
            String::from_utf8_lossy(&c.args[2])
        ));
    }
    Reply::OK
}

pub fn client_list(c: &mut Call) -> Reply {
    let now = crate::now_ms();
    let mut out = String::new();
    for info in c.shared.clients.all() {
        out.push_str(&info.describe(now));
        out.push('\n');
    }
    Reply::Verbatim("txt", out.into_bytes())
}

pub fn client_info(c: &mut Call) -> Reply {
    let mut line = c.client.info.describe(crate::now_ms());
    line.push('\n');
    Reply::Verbatim("txt", line.into_bytes())
}

pub fn client_kill(c: &mut Call) -> Reply {
    let args = &c.args[2..];
    if args.len() == 1 {
        // Old form: CLIENT KILL ip:port
        let target = String::from_utf8_lossy(&args[0]).to_string();
        return match c
            .shared
            .clients
            .all()
            .into_iter()
            .find(|i| i.addr.to_string() == target)
        {
            Some(i) => {
                i.kill();
                Reply::OK
            }
            None => Reply::error("ERR No such client"),
        };
    }
    if !args.len().is_multiple_of(2) {
        return Reply::error("ERR syntax error");
    }
    let mut skipme = true;
    let mut filters: Vec<(String, String)> = Vec::new();
    for pair in args.chunks(2) {
        let (k, v) = (
            String::from_utf8_lossy(&pair[0]).to_lowercase(),
            String::from_utf8_lossy(&pair[1]).to_string(),
        );
        match k.as_str() {
            "id" if v.parse::<u64>().is_err() => {
                return Reply::error("ERR client-id should be greater than 0");
            }
            "skipme" => skipme = !v.eq_ignore_ascii_case("no"),
            "id" | "addr" | "laddr" | "user" | "type" => filters.push((k, v)),
            _ => return Reply::error("ERR syntax error"),
        }
    }
    let me = c.client.id();
    let mut killed = 0;
    for info in c.shared.clients.all() {
        if skipme && info.id == me {
            continue;
        }
        let hit = filters.iter().all(|(k, v)| match k.as_str() {
            "id" => info.id.to_string() == *v,
            "addr" => info.addr.to_string() == *v,
            "laddr" => info.laddr.to_string() == *v,
            "user" => v == "default",
            "type" => v.eq_ignore_ascii_case("normal"),
            _ => false,
        });
        if hit {
            info.kill();
            killed += 1;
        }
    }
    Reply::Int(killed)
}

pub fn client_on_off(c: &mut Call) -> Reply {
    if is(&c.args[2], "on") || is(&c.args[2], "off") {
        Reply::OK
    } else {
        Reply::error("ERR syntax error")
    }
}
