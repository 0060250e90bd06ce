//! Reading `commands.json` (see `tools/gen_command_table.py` for its form) into specs.
//!
//! Values are RESP3 replies written as JSON: strings and integers as themselves, arrays as lists,
//! `{"~": [...]}` sets, `{"%": [[k, v], ...]}` maps, `{"+": "..."}` simple strings.

use crate::keys::KeySpec;
use crate::{CommandSpec, Flags};
use cairn_resp::Reply;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

const TABLE: &str = include_str!("../commands.json");

pub(crate) fn load() -> (String, Vec<CommandSpec>) {
    let root: Value = serde_json::from_str(TABLE).expect("commands.json is valid JSON");
    let source = root["source"].as_str().unwrap_or_default().to_string();
    let commands = root["commands"]
        .as_array()
        .expect("commands.json has a commands list")
        .iter()
        .map(|c| spec_from_info(&c["info"], &c["docs"]))
        .collect::<Vec<_>>();
    let mut commands = commands;
    add_newer_subcommands(&mut commands);
    (source, commands)
}

/// Subcommands clients send that arrived after Redis 7.0, with Redis 7.2's facts. redis-py and
/// others send CLIENT SETINFO on every connect.
const NEWER: &str = r#"[
 {"parent": "client",
  "info": ["client|no-touch",3,{"~":[{"+":"noscript"},{"+":"loading"},{"+":"stale"}]},0,0,0,{"~":[{"+":"@slow"},{"+":"@connection"}]},{"~":[]},{"~":[]},{"~":[]}],
  "docs": {"%":[["summary","Controls whether commands sent by the client affect the LRU/LFU of accessed keys."],["since","7.2.0"],["group","connection"],["complexity","O(1)"],["arguments",[{"%":[["name","enabled"],["type","oneof"],["arguments",[{"%":[["name","on"],["type","pure-token"],["token","ON"]]},{"%":[["name","off"],["type","pure-token"],["token","OFF"]]}]]]}]]]}},
 {"parent": "client",
  "info": ["client|setinfo",-4,{"~":[{"+":"noscript"},{"+":"loading"},{"+":"stale"}]},0,0,0,{"~":[{"+":"@slow"},{"+":"@connection"}]},{"~":[]},{"~":[]},{"~":[]}],
  "docs": {"%":[["summary","Sets information specific to the client or connection."],["since","7.2.0"],["group","connection"],["complexity","O(1)"],["arguments",[{"%":[["name","attr"],["type","oneof"],["arguments",[{"%":[["name","libname"],["type","string"],["token","LIB-NAME"]]},{"%":[["name","libver"],["type","string"],["token","LIB-VER"]]}]]]}]]]}}
]"#;

fn add_newer_subcommands(commands: &mut [CommandSpec]) {
    let newer: Value = serde_json::from_str(NEWER).expect("NEWER is valid JSON");
    for entry in newer.as_array().expect("a list") {
        let Some(parent) = commands
            .iter_mut()
            .find(|c| Some(c.name.as_str()) == entry["parent"].as_str())
        else {
            continue;
        };
        let sub = spec_from_info(&entry["info"], &entry["docs"]);
        if let Reply::Array(items) = &mut parent.info {
            if let Some(Reply::Array(subs)) = items.get_mut(9) {
                subs.push(sub.info.clone());
            }
        }
        parent.subcommands.insert(sub.name.clone(), Arc::new(sub));
    }
}

fn spec_from_info(info: &Value, docs: &Value) -> CommandSpec {
    let items = info.as_array().expect("COMMAND INFO entry is an array");
    let name = items[0].as_str().expect("command name").to_string();
    let flags = set_items(&items[2])
        .iter()
        .filter_map(|f| simple(f))
        .fold(Flags::default(), |acc, f| {
            Flags(acc.0 | Flags::from_name(f).0)
        });
    let categories = set_items(&items[6])
        .iter()
        .filter_map(|c| simple(c))
        .map(|c| c.trim_start_matches('@').to_string())
        .collect();
    let key_specs = set_items(&items[8])
        .iter()
        .map(KeySpec::from_json)
        .collect();
    let mut subcommands = HashMap::new();
    for sub in items[9].as_array().into_iter().flatten() {
        let sub_docs = docs_subcommand(docs, sub[0].as_str().unwrap_or_default());
        let spec = spec_from_info(sub, &sub_docs);
        subcommands.insert(spec.name.clone(), Arc::new(spec));
    }
    let docs_reply = if docs.is_null() {
        None
    } else {
        Some(Reply::Array(vec![
            Reply::from(name.as_str()),
            to_reply(docs),
        ]))
    };
    CommandSpec {
        arity: items[1].as_i64().expect("arity"),
        first_key: items[3].as_i64().unwrap_or(0),
        last_key: items[4].as_i64().unwrap_or(0),
        key_step: items[5].as_i64().unwrap_or(0),
        info: to_reply(info),
        docs: docs_reply,
        name,
        flags,
        categories,
        key_specs,
        subcommands,
    }
}

/// The docs of a subcommand, from the parent's `subcommands` map.
fn docs_subcommand(parent_docs: &Value, name: &str) -> Value {
    map_get(parent_docs, "subcommands")
        .and_then(|m| map_get(m, name).cloned())
        .unwrap_or(Value::Null)
}

pub(crate) fn map_get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.get("%")?
        .as_array()?
        .iter()
        .find(|kv| kv[0].as_str() == Some(key))
        .map(|kv| &kv[1])
}

fn set_items(v: &Value) -> &[Value] {
    v.get("~")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn simple(v: &Value) -> Option<&str> {
    v.get("+").and_then(Value::as_str).or_else(|| v.as_str())
}

/// Turns a stored RESP3 value back into a reply.
pub(crate) fn to_reply(v: &Value) -> Reply {
    match v {
        Value::Null => Reply::Nil,
        Value::Bool(b) => Reply::Bool(*b),
        Value::Number(n) => Reply::Int(n.as_i64().unwrap_or(0)),
        Value::String(s) => Reply::from(s.as_str()),
        Value::Array(items) => Reply::Array(items.iter().map(to_reply).collect()),
        Value::Object(o) => {
            if let Some(items) = o.get("~").and_then(Value::as_array) {
                Reply::Set(items.iter().map(to_reply).collect())
            } else if let Some(pairs) = o.get("%").and_then(Value::as_array) {
                Reply::Map(
                    pairs
                        .iter()
                        .map(|kv| (to_reply(&kv[0]), to_reply(&kv[1])))
                        .collect(),
                )
            } else if let Some(s) = o.get("+").and_then(Value::as_str) {
                Reply::Status(s.to_string().into())
            } else if let Some(b) = o.get("#").and_then(Value::as_bool) {
                Reply::Bool(b)
            } else {
                Reply::Nil
            }
        }
    }
}
