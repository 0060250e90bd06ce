//! Server introspection: COMMAND, INFO, CONFIG, TIME, LASTSAVE, DEBUG.

use crate::dispatch::Call;
use crate::pubsub::Kind;
use crate::stats::Stats;
use cairn_resp::Reply;
use std::time::Duration;

fn is(arg: &[u8], word: &str) -> bool {
    arg.eq_ignore_ascii_case(word.as_bytes())
}

pub fn command(c: &mut Call) -> Reply {
    Reply::Array(
        c.shared
            .table
            .commands
            .iter()
            .map(|s| s.info.clone())
            .collect(),
    )
}

pub fn command_count(c: &mut Call) -> Reply {
    Reply::Int(c.shared.table.commands.len() as i64)
}

pub fn command_info(c: &mut Call) -> Reply {
    if c.args.len() == 2 {
        return command(c);
    }
    let table = &c.shared.table.commands;
    Reply::Array(
        c.args[2..]
            .iter()
            .map(|n| {
                table
                    .get(&cairn_commands::lower(n))
                    .map_or(Reply::Nil, |s| s.info.clone())
            })
            .collect(),
    )
}

pub fn command_docs(c: &mut Call) -> Reply {
    let table = &c.shared.table.commands;
    let specs: Vec<_> = if c.args.len() == 2 {
        table.iter().collect()
    } else {
        c.args[2..]
            .iter()
            .filter_map(|n| table.get(&cairn_commands::lower(n)))
            .collect()
    };
    let mut pairs = Vec::new();
    for spec in specs {
        if let Some(Reply::Array(doc)) = &spec.docs {
            if let [name, body] = &doc[..] {
                pairs.push((name.clone(), body.clone()));
            }
        }
    }
    Reply::Map(pairs)
}

pub fn command_list(c: &mut Call) -> Reply {
    let table = &c.shared.table.commands;
    let filter = &c.args[2..];
    let names = table
        .iter()
        .flat_map(|s| std::iter::once(s).chain(s.subcommands.values()));
    let keep = |s: &cairn_commands::CommandSpec| -> Result<bool, Reply> {
        match filter {
            [] => Ok(true),
            [f, kind, value] if is(f, "filterby") => {
                if is(kind, "module") {
                    Ok(false)
                } else if is(kind, "aclcat") {
                    Ok(s.categories
                        .iter()
                        .any(|c| c.as_bytes().eq_ignore_ascii_case(value)))
                } else if is(kind, "pattern") {
                    Ok(cairn_store::glob::matches(value, s.name.as_bytes(), true))
                } else {
                    Err(Reply::error("ERR syntax error"))
                }
            }
            _ => Err(Reply::error("ERR syntax error")),
        }
    };
    let mut out = Vec::new();
    for s in names {
        match keep(s) {
            Ok(true) => out.push(Reply::from(s.name.as_str())),
            Ok(false) => {}
            Err(e) => return e,
        }
    }
    Reply::Array(out)
}

pub fn command_getkeys(c: &mut Call) -> Reply {
    let args = &c.args[2..];
    let table = &c.shared.table.commands;
    let spec = match table.lookup(args) {
        cairn_commands::Lookup::Found(s) => s.clone(),
        cairn_commands::Lookup::Error(_) => {
            return if table.get(&cairn_commands::lower(&args[0])).is_some() {
                Reply::error("ERR Invalid number of arguments specified for command")
            } else {
                Reply::error("ERR Invalid command specified")
            };
        }
    };
    let keys = spec.key_positions(args);
    if keys.is_empty() {
        return Reply::error("ERR The command has no key arguments");
    }
    Reply::Array(
        keys.into_iter()
            .map(|i| Reply::Bulk(args[i].clone()))
            .collect(),
    )
}

/// This process's user and system CPU time in seconds (Linux: /proc/self/stat, in the
/// kernel's 100 Hz clock ticks; zero elsewhere).
fn cpu_seconds() -> (f64, f64) {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return (0.0, 0.0);
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 100.0;
    // utime and stime are the 14th and 15th fields: 12th and 13th after the name.
    (ticks(11), ticks(12))
}

pub fn info(c: &mut Call) -> Reply {
    let wanted: Vec<String> = c.args[1..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_lowercase())
        .collect();
    let all = wanted.is_empty()
        || wanted
            .iter()
            .any(|w| w == "all" || w == "everything" || w == "default");
    let want = |s: &str| all || wanted.iter().any(|w| w == s);
    let sh = c.shared;
    let now = crate::now_ms();
    let mut out = String::new();
    let mut section = |name: &str, lines: Vec<(String, String)>| {
        if want(&name.to_lowercase()) {
            if !out.is_empty() {
                out.push_str("\r\n");
            }
            out.push_str(&format!("# {name}\r\n"));
            for (k, v) in lines {
                out.push_str(&format!("{k}:{v}\r\n"));
            }
        }
    };
    let port = sh.config.lock().port;
    section(
        "Server",
        vec![
            ("redis_version".into(), "7.0.15".into()),
            ("cairn_version".into(), env!("CARGO_PKG_VERSION").into()),
            ("redis_mode".into(), "standalone".into()),
            ("os".into(), std::env::consts::OS.into()),
            ("arch_bits".into(), "64".into()),
            ("process_id".into(), std::process::id().to_string()),
            ("tcp_port".into(), port.to_string()),
            (
                "uptime_in_seconds".into(),
                ((now - sh.started_ms) / 1000).to_string(),
            ),
        ],
    );
    section(
        "Clients",
        vec![("connected_clients".into(), sh.clients.len().to_string())],
    );
    // cairn does not count allocations; the resident set size is the honest number it has.
    let rss = resident_bytes();
    section(
        "Memory",
        vec![
            ("used_memory".into(), rss.to_string()),
            ("used_memory_rss".into(), rss.to_string()),
            ("maxmemory".into(), "0".into()),
        ],
    );
    section(
        "Persistence",
        vec![
            ("loading".into(), "0".into()),
            ("rdb_changes_since_last_save".into(), {
                let mut dirty = 0;
                c.each_store(|store| dirty += store.dirty);
                dirty.to_string()
            }),
        ],
    );
    let st = &sh.stats;
    section(
        "Stats",
        vec![
            (
                "total_connections_received".into(),
                Stats::get(&st.connections_received).to_string(),
            ),
            (
                "total_commands_processed".into(),
                Stats::get(&st.commands_processed).to_string(),
            ),
            (
                "total_net_input_bytes".into(),
                Stats::get(&crate::connection::NET_INPUT_BYTES).to_string(),
            ),
            (
                "total_net_output_bytes".into(),
                Stats::get(&crate::connection::NET_OUTPUT_BYTES).to_string(),
            ),
            (
                "rejected_connections".into(),
                Stats::get(&st.connections_rejected).to_string(),
            ),
            (
                "expired_keys".into(),
                Stats::get(&st.expired_keys).to_string(),
            ),
            (
                "total_error_replies".into(),
                Stats::get(&st.error_replies).to_string(),
            ),
            (
                "protocol_errors".into(),
                Stats::get(&st.protocol_errors).to_string(),
            ),
            (
                "client_query_buffer_limit_disconnections".into(),
                Stats::get(&st.query_limit_disconnections).to_string(),
            ),
            (
                "client_output_buffer_limit_disconnections".into(),
                crate::pubsub::OUTPUT_LIMIT_DISCONNECTIONS
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ),
            (
                "pubsub_channels".into(),
                sh.pubsub.names(Kind::Channel, None).len().to_string(),
            ),
            (
                "acl_access_denied_auth".into(),
                Stats::get(&sh.acl.denied_auth).to_string(),
            ),
            (
                "acl_access_denied_cmd".into(),
                Stats::get(&sh.acl.denied_cmd).to_string(),
            ),
            (
                "acl_access_denied_key".into(),
                Stats::get(&sh.acl.denied_key).to_string(),
            ),
            (
                "acl_access_denied_channel".into(),
                Stats::get(&sh.acl.denied_channel).to_string(),
            ),
            ("pubsub_patterns".into(), sh.pubsub.patterns().to_string()),
            (
                "pubsub_shardchannels".into(),
                sh.pubsub.names(Kind::Shard, None).len().to_string(),
            ),
            // cairn's own: messages other nodes forwarded here (only where subscribers want them).
            (
                "pubsub_forwarded_in".into(),
                Stats::get(&sh.pubsub.forwarded_in).to_string(),
            ),
        ]
        .into_iter()
        .chain(cross_shard_stats(sh))
        .collect(),
    );
    section(
        "Replication",
        vec![
            ("role".into(), "master".into()),
            ("connected_slaves".into(), "0".into()),
        ],
    );
    let (user, sys) = cpu_seconds();
    section(
        "CPU",
        vec![
            ("used_cpu_sys".into(), format!("{sys:.6}")),
            ("used_cpu_user".into(), format!("{user:.6}")),
            ("used_cpu_sys_children".into(), "0.000000".into()),
            ("used_cpu_user_children".into(), "0.000000".into()),
        ],
    );
    if let Some(repl) = &sh.replication {
        let status = repl.node.status().borrow().clone();
        let mut lines = vec![("node_id".to_string(), repl.me.to_string())];
        let ranges = sh.shards.ranges();
        for (group, g) in &status.groups {
            let role = if g.is_leader {
                "leader"
            } else if g.learners.contains(&repl.me) {
                "learner"
            } else {
                "follower"
            };
            let ids = |v: &[u64]| v.iter().map(u64::to_string).collect::<Vec<_>>().join(";");
            let leader = g.leader.map_or("none".to_string(), |l| l.to_string());
            // The shard's slots, `a-b` ranges joined by `;`.
            let slots = ranges
                .iter()
                .find(|(s, _)| s == group)
                .map(|(_, r)| {
                    r.iter()
                        .map(|(a, b)| format!("{a}-{b}"))
                        .collect::<Vec<_>>()
                        .join(";")
                })
                .unwrap_or_default();
            lines.push((
                format!("group{group}"),
                format!(
                    "role={role},leader={leader},term={},commit={},applied={},snapshot={},snapshots_installed={},voters={},learners={},slots={slots}",
                    g.term, g.commit, g.applied, g.snapshot_index, g.snapshots_installed,
                    ids(&g.voters), ids(&g.learners)
                ),
            ));
        }
        if let Some(why) = &status.stopped {
            lines.push(("stopped".into(), why.clone()));
        }
        // cairn's own: the Raft log on this node's disk.
        let log = repl.node.log_stats();
        let ord = std::sync::atomic::Ordering::Relaxed;
        let synced = log.synced.load(ord);
        lines.push((
            "log_disk_bytes".into(),
            repl.node.log_disk_bytes().to_string(),
        ));
        lines.push(("log_writes".into(), log.writes.load(ord).to_string()));
        lines.push(("log_written_bytes".into(), log.bytes.load(ord).to_string()));
        lines.push(("log_fsyncs".into(), synced.to_string()));
        lines.push((
            "log_fsync_usec_per_call".into(),
            format!(
                "{:.2}",
                log.sync_usec.load(ord) as f64 / synced.max(1) as f64
            ),
        ));
        // Every member's client address: enough for `cairn cluster status` to visit them all.
        for (id, addr) in repl.all_client_addrs() {
            lines.push((format!("node{id}"), format!("addr={addr}")));
        }
        section("Raft", lines);
    }
    // Only when asked for by name, or with `all`/`everything`, as in Redis.
    if wanted
        .iter()
        .any(|w| w == "commandstats" || w == "all" || w == "everything")
    {
        let lines = sh
            .stats
            .commands
            .called()
            .into_iter()
            .map(|(name, s)| {
                let calls = s.calls.load(std::sync::atomic::Ordering::Relaxed);
                let usec = s.usec.load(std::sync::atomic::Ordering::Relaxed);
                let failed = s.failed.load(std::sync::atomic::Ordering::Relaxed);
                let rejected = s.rejected.load(std::sync::atomic::Ordering::Relaxed);
                (
                    format!("cmdstat_{name}"),
                    format!(
                        "calls={calls},usec={usec},usec_per_call={:.2},rejected_calls={rejected},failed_calls={failed}",
                        usec as f64 / calls.max(1) as f64
                    ),
                )
            })
            .collect();
        section("Commandstats", lines);
    }
    if want("errorstats") {
        let lines = sh
            .stats
            .errors
            .lock()
            .iter()
            .map(|(code, n)| (format!("errorstat_{code}"), format!("count={n}")))
            .collect();
        section("Errorstats", lines);
    }
    let enabled = if sh.replication.is_some() { "1" } else { "0" };
    section("Cluster", vec![("cluster_enabled".into(), enabled.into())]);
    let (mut keys, mut expires) = (0, 0);
    c.each_store(|store| {
        keys += store.keyspace.len();
        expires += store.keyspace.volatile_len();
    });
    let keyspace = if keys == 0 {
        vec![]
    } else {
        vec![(
            "db0".into(),
            format!("keys={keys},expires={expires},avg_ttl=0"),
        )]
    };
    section("Keyspace", keyspace);
    Reply::Verbatim("txt", out.into_bytes())
}

/// This process's resident set size in bytes (0 where /proc is not available).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

pub fn config_get(c: &mut Call) -> Reply {
    let mut params = c.shared.config.lock().params();
    for (name, value) in params.iter_mut() {
        if *name == "notify-keyspace-events" {
            *value = cairn_store::notify::format(c.shared.pubsub.keyspace_flags());
        }
    }
    let mut pairs = Vec::new();
    for (name, value) in params {
        if c.args[2..]
            .iter()
            .any(|p| cairn_store::glob::matches(p, name.as_bytes(), true))
            && !pairs
                .iter()
                .any(|(n, _): &(Reply, Reply)| *n == Reply::from(name))
        {
            pairs.push((Reply::from(name), Reply::from(value.as_str())));
        }
    }
    Reply::Map(pairs)
}

pub fn config_set(c: &mut Call) -> Reply {
    let args = &c.args[2..];
    if !args.len().is_multiple_of(2) {
        return cairn_commands::wrong_arity("config|set");
    }
    let mut config = c.shared.config.lock();
    let mut next = config.clone();
    for pair in args.chunks(2) {
        let name = String::from_utf8_lossy(&pair[0]).to_lowercase();
        let value = String::from_utf8_lossy(&pair[1]).to_string();
        if let Err(why) = next.set(&name, &value) {
            return if why == "unknown" {
                Reply::error(format!(
                    "ERR Unknown option or number of arguments for CONFIG SET - '{name}'"
                ))
            } else {
                Reply::error(format!(
                    "ERR CONFIG SET failed (possibly related to argument '{name}') - {why}"
                ))
            };
        }
    }
    let events = next.notify_keyspace_events;
    let password = args
        .chunks(2)
        .rev()
        .find(|p| p[0].eq_ignore_ascii_case(b"requirepass"))
        .map(|p| p[1].clone());
    if let Some(password) = &password {
        if c.shared.replication.is_some() {
            // A cluster's users change through its meta group (`replicated::acl_change`).
            return Reply::error(
                "ERR CONFIG SET failed (possibly related to argument 'requirepass') - in a cluster, set requirepass alone in its CONFIG SET",
            );
        }
        let rules = super::acl::requirepass_rules(password);
        if let Err(e) = c.shared.acl.set_user(b"default", &rules) {
            return Reply::error(e);
        }
    }
    c.shared.acl.log_max.store(
        next.acllog_max_len as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
    c.shared.acl.trim_log();
    let (hard, soft, secs) = next.output_limits[2];
    let ord = std::sync::atomic::Ordering::Relaxed;
    crate::pubsub::PUBSUB_HARD_LIMIT.store(hard as usize, ord);
    crate::pubsub::PUBSUB_SOFT_LIMIT.store(soft as usize, ord);
    crate::pubsub::PUBSUB_SOFT_SECS.store(secs, ord);
    // Any TLS file setting reads the files again (a replaced certificate is picked up by
    // setting the same path): new connections get the new configuration, and a bad one
    // leaves everything as it was.
    if args.chunks(2).any(|p| {
        String::from_utf8_lossy(&p[0])
            .to_ascii_lowercase()
            .starts_with("tls-")
    }) {
        let unusable = |why: String| {
            Reply::error(format!(
                "ERR CONFIG SET failed (possibly related to argument 'tls-cert-file') - Unable to update TLS configuration: {why}"
            ))
        };
        let bus = c
            .shared
            .replication
            .as_ref()
            .and_then(|r| r.peer_tls.as_ref());
        if c.shared.tls.is_none() && bus.is_none() {
            return Reply::error(
                "ERR CONFIG SET failed (possibly related to argument 'tls-port') - TLS is not enabled on this node (start it with --tls-port or --tls-cluster yes)",
            );
        }
        // Both are made before either is used: a file one cannot use leaves both as they were.
        let bus_next = match bus
            .map(|_| crate::tls::bus_tls(&next.tls_files))
            .transpose()
        {
            Ok(b) => b,
            Err(why) => return unusable(why),
        };
        if let Some(tls) = &c.shared.tls {
            if let Err(why) = tls.reload(next.tls_files.clone()) {
                return unusable(why);
            }
        }
        // The cluster's mutual TLS (bus links, node connections to client ports): new
        // connections use the new files; open ones go on.
        if let (Some(bus), Some(next)) = (bus, bus_next) {
            bus.replace(&next);
        }
    }
    let slowlog = &c.shared.slowlog;
    slowlog.slower_than_us.store(
        next.slowlog_log_slower_than,
        std::sync::atomic::Ordering::Relaxed,
    );
    slowlog
        .max_len
        .store(next.slowlog_max_len, std::sync::atomic::Ordering::Relaxed);
    slowlog.trim();
    *config = next;
    drop(config);
    if args
        .chunks(2)
        .any(|p| p[0].eq_ignore_ascii_case(b"notify-keyspace-events"))
    {
        let mut acks = std::mem::take(&mut c.client.interest_acks);
        c.shared.pubsub.set_keyspace_events(events, &mut acks);
        c.client.interest_acks = acks;
    }
    Reply::OK
}

/// LATENCY HISTOGRAM [command ...]: per command, its calls and the cumulative count of calls
/// per power-of-two bucket of microseconds (only the buckets where calls fell), as Redis 7
/// gives it. The times are cairn's: from a command's start to its reply, replication included.
pub fn latency_histogram(c: &mut Call) -> Reply {
    let wanted: Vec<String> = c.args[2..]
        .iter()
        .map(|a| String::from_utf8_lossy(a).to_lowercase())
        .collect();
    let ord = std::sync::atomic::Ordering::Relaxed;
    let mut out = Vec::new();
    for (name, s) in c.shared.stats.commands.called() {
        let calls = s.calls.load(ord);
        if calls == 0 || !(wanted.is_empty() || wanted.iter().any(|w| w == name)) {
            continue;
        }
        let mut cumulative = 0;
        let mut buckets = Vec::new();
        for (i, b) in s.buckets.iter().enumerate() {
            let n = b.load(ord);
            cumulative += n;
            if n > 0 {
                let bound = crate::stats::LATENCY_BUCKETS_US
                    .get(i)
                    .copied()
                    .unwrap_or(1 << crate::stats::LATENCY_BUCKETS_US.len());
                buckets.push((Reply::Int(bound as i64), Reply::Int(cumulative as i64)));
            }
        }
        out.push((
            Reply::Bulk(name.as_bytes().to_vec()),
            Reply::Map(vec![
                (Reply::from("calls"), Reply::Int(calls as i64)),
                (Reply::from("histogram_usec"), Reply::Map(buckets)),
            ]),
        ));
    }
    Reply::Map(out)
}

/// CONFIG REWRITE: writes the settings CONFIG SET changed into the file `--config` named,
/// keeping every other line (comments included): a line that sets one of them is replaced, the
/// others are appended. Written whole to a new file, synced, then renamed over the old one.
pub fn config_rewrite(c: &mut Call) -> Reply {
    let (path, settings) = {
        let config = c.shared.config.lock();
        (config.config_file.clone(), config.file_settings())
    };
    let Some(path) = path else {
        return Reply::error("ERR The server is running without a config file");
    };
    match rewrite(&path, &settings) {
        Ok(()) => Reply::OK,
        Err(e) => Reply::error(format!("ERR Rewriting config file: {e}")),
    }
}

fn rewrite(path: &std::path::Path, settings: &[(&str, String)]) -> std::io::Result<()> {
    use std::io::Write;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let mut written = vec![false; settings.len()];
    let mut out = String::new();
    for line in old.lines() {
        let key = line.split('=').next().unwrap_or_default().trim();
        match settings.iter().position(|(k, _)| *k == key) {
            Some(i) if line.contains('=') && !line.trim_start().starts_with('#') => {
                out.push_str(&format!("{key} = {}\n", settings[i].1));
                written[i] = true;
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let missing: Vec<usize> = (0..settings.len()).filter(|&i| !written[i]).collect();
    if !missing.is_empty() {
        out.push_str("# Written by CONFIG REWRITE\n");
        for i in missing {
            out.push_str(&format!("{} = {}\n", settings[i].0, settings[i].1));
        }
    }
    let tmp = path.with_extension("rewrite.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(out.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

/// MEMORY STATS: what cairn knows of its memory (the process's resident size; it does not
/// count its allocations as Redis does), the keys it holds, and its clients.
pub fn memory_stats(c: &mut Call) -> Reply {
    let rss = resident_bytes();
    let mut keys = 0u64;
    c.each_store(|store| keys += store.keyspace.served_len() as u64);
    let per_key = rss.checked_div(keys).unwrap_or(0);
    Reply::Map(vec![
        (Reply::from("peak.allocated"), Reply::Int(rss as i64)),
        (Reply::from("total.allocated"), Reply::Int(rss as i64)),
        (
            Reply::from("clients.normal"),
            Reply::Int(c.shared.clients.len() as i64),
        ),
        (Reply::from("keys.count"), Reply::Int(keys as i64)),
        (
            Reply::from("keys.bytes-per-key"),
            Reply::Int(per_key as i64),
        ),
    ])
}

pub fn config_resetstat(c: &mut Call) -> Reply {
    c.shared.stats.reset();
    Reply::OK
}

pub fn time(c: &mut Call) -> Reply {
    let micros = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    let _ = c;
    Reply::Array(vec![
        Reply::Bulk((micros / 1_000_000).to_string().into_bytes()),
        Reply::Bulk((micros % 1_000_000).to_string().into_bytes()),
    ])
}

pub fn lastsave(c: &mut Call) -> Reply {
    Reply::Int((c.shared.started_ms / 1000) as i64)
}

/// DEBUG SLEEP and DEBUG OBJECT; the rest of Redis's DEBUG is not offered.
pub fn debug(c: &mut Call) -> Reply {
    let args = c.args;
    if args.len() == 3 && is(&args[1], "sleep") {
        let Some(secs) = std::str::from_utf8(&args[2])
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
        else {
            return Reply::error("ERR value is not a valid float");
        };
        // Bounded: a client cannot park its connection for more than an hour.
        c.client.sleep = Some(Duration::from_secs_f64(secs.clamp(0.0, 3600.0)));
        return Reply::OK;
    }
    if args.len() == 3 && is(&args[1], "object") {
        let (key, now) = (&args[2], c.env.now_ms);
        return c.slot_store(cairn_store::slot::key_slot(key), |store| {
            match store.keyspace.value(key, now) {
                None => Reply::error("ERR no such key"),
                Some(v) => Reply::Status(
                    format!(
                        "Value at:0x0 refcount:1 encoding:{} serializedlength:{} lru:0 lru_seconds_idle:0",
                        v.encoding(),
                        cairn_store::snapshot::dump_value(v).len()
                    )
                    .into(),
                ),
            }
        });
    }
    if args.len() == 2 && is(&args[1], "digest") {
        // This node's own state, never relayed: replicas are compared with it.
        let mut digest = cairn_store::snapshot::Digest::default();
        c.each_store(|store| digest.add(&store.keyspace));
        return Reply::Status(digest.finish().into());
    }
    if args.len() == 3 && is(&args[1], "digest-shard") {
        // This node's replica of one shard (nil when it holds none): replicas of a shard are
        // compared with it when nodes hold different shards.
        let group = std::str::from_utf8(&args[2])
            .ok()
            .and_then(|g| g.parse::<u64>().ok())
            .filter(|&g| g > 0 && c.shared.shards.has(g));
        let Some(group) = group else {
            return Reply::error("ERR no such shard");
        };
        let held = match c.shared.replication.as_ref() {
            Some(repl) => repl.hosts(group),
            None => true,
        };
        if !held {
            return Reply::Nil;
        }
        let store = c.shared.shards.store(group).lock();
        return Reply::Bulk(cairn_store::snapshot::digest(&store.keyspace).into_bytes());
    }
    if args.len() >= 2 && is(&args[1], "network") {
        return debug_network(c);
    }
    Reply::error(
        "ERR DEBUG subcommand not supported by cairn (SLEEP, OBJECT, DIGEST, DIGEST-SHARD and NETWORK are)",
    )
}

/// `DEBUG NETWORK CUT <node-id>...`, `DEBUG NETWORK HEAL [<node-id>...]`, `DEBUG NETWORK`:
/// cut, mend (all when no id is given) or list this node's links to peers. Fault injection for
/// tests, refused unless the server runs with `--fault-hooks yes`.
fn debug_network(c: &mut Call) -> Reply {
    if !c.shared.config.lock().fault_hooks {
        return Reply::error(
            "ERR DEBUG NETWORK is disabled; start the server with --fault-hooks yes to allow it",
        );
    }
    let Some(repl) = c.shared.replication.as_ref() else {
        return Reply::error("ERR DEBUG NETWORK needs a replicated node");
    };
    let mut ids = Vec::new();
    for a in c.args.iter().skip(3) {
        match std::str::from_utf8(a)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(id) => ids.push(id),
            None => return Reply::error("ERR node id is not an integer"),
        }
    }
    match c.args.get(2) {
        None => {}
        Some(a) if is(a, "cut") && !ids.is_empty() => {
            ids.iter().for_each(|&id| repl.node.set_link_cut(id, true));
            return Reply::OK;
        }
        Some(a) if is(a, "heal") => {
            if ids.is_empty() {
                ids = repl.node.cut_links();
            }
            ids.iter().for_each(|&id| repl.node.set_link_cut(id, false));
            return Reply::OK;
        }
        Some(_) => {
            return Reply::error(
                "ERR syntax: DEBUG NETWORK [CUT <node-id>... | HEAL [<node-id>...]]",
            )
        }
    }
    Reply::Array(
        repl.node
            .cut_links()
            .into_iter()
            .map(|id| Reply::Int(id as i64))
            .collect(),
    )
}

/// cairn's own: cross-shard transactions this node coordinated, tried again, and resolved for
/// a lost coordinator, and the locks the shards it leads hold now (see `crate::cross`).
fn cross_shard_stats(sh: &crate::Shared) -> Vec<(String, String)> {
    let Some(repl) = sh.replication.as_ref() else {
        return Vec::new();
    };
    let c = &repl.coordinator;
    let get = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    let locks: usize = repl
        .groups()
        .into_iter()
        .filter(|(_, g)| g.is_leader)
        .map(|(group, _)| sh.shards.store(group).lock().txns.locks.len())
        .sum();
    vec![
        ("cross_shard_runs".into(), get(&c.runs).to_string()),
        (
            "cross_shard_snapshot_reads".into(),
            get(&c.snapshots).to_string(),
        ),
        (
            "cross_shard_committed".into(),
            get(&c.committed).to_string(),
        ),
        ("cross_shard_retries".into(), get(&c.retried).to_string()),
        (
            "cross_shard_recovered".into(),
            get(&c.recovered).to_string(),
        ),
        ("cross_shard_locks".into(), locks.to_string()),
    ]
}
