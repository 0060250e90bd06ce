//! The admin HTTP port (`--admin-port`, axum): `/health`, `/ready`, `/metrics` in Prometheus's
//! text format, `/api/cluster`, the cluster as this node sees it, in JSON, `/api/overview`,
//! what every node says of itself (asked over the nodes' own connections), and `/`, the
//! dashboard: one page, served from the binary, drawn from `/api/overview` every second.
//!
//! Everything here reads what the node already keeps (the counters INFO shows, the Raft status
//! the driver publishes); nothing on this port changes anything.

use crate::stats::Stats;
use crate::Shared;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use std::fmt::Write as _;
use std::sync::Arc;

/// Serves the admin port until the task is dropped.
pub async fn serve(shared: Arc<Shared>, listener: tokio::net::TcpListener) {
    let app = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/api/cluster", get(cluster))
        .route("/api/overview", get(overview))
        .route("/", get(dashboard))
        .with_state(shared);
    if let Err(e) = axum::serve(listener, app).await {
        tracing::warn!(error = %e, "the admin port stopped");
    }
}

/// The process runs and serves this port.
async fn health() -> &'static str {
    "ok\n"
}

/// Whether this node can serve writes: every group it holds has a leader (a standalone node
/// always can).
async fn ready(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let Some(repl) = &shared.replication else {
        return (StatusCode::OK, "ready\n".to_string());
    };
    let status = repl.node.status().borrow().clone();
    if let Some(why) = status.stopped {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("stopped: {why}\n"));
    }
    let leaderless: Vec<String> = status
        .groups
        .iter()
        .filter(|(_, g)| g.leader.is_none())
        .map(|(id, _)| id.to_string())
        .collect();
    if status.groups.is_empty() || !leaderless.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("groups without a leader: [{}]\n", leaderless.join(", ")),
        );
    }
    (StatusCode::OK, "ready\n".to_string())
}

/// A metric's samples: (labels, value).
type Samples = Vec<(String, u64)>;

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Prometheus text exposition of the node's counters and of each Raft group it holds.
async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let st = &shared.stats;
    let mut out = String::new();
    let one = |v: u64| vec![(String::new(), v)];
    let acl = &shared.acl;
    let counters: [(&str, &str, u64); 11] = [
        (
            "cairn_connections_received_total",
            "Client connections accepted.",
            Stats::get(&st.connections_received),
        ),
        (
            "cairn_connections_rejected_total",
            "Client connections refused at maxclients.",
            Stats::get(&st.connections_rejected),
        ),
        (
            "cairn_commands_processed_total",
            "Commands run for clients.",
            Stats::get(&st.commands_processed),
        ),
        (
            "cairn_error_replies_total",
            "Error replies sent.",
            Stats::get(&st.error_replies),
        ),
        (
            "cairn_protocol_errors_total",
            "Connections closed for a protocol error.",
            Stats::get(&st.protocol_errors),
        ),
        (
            "cairn_expired_keys_total",
            "Keys removed by active expiry on this node.",
            Stats::get(&st.expired_keys),
        ),
        (
            "cairn_query_buffer_limit_disconnections_total",
            "Clients closed for passing client-query-buffer-limit.",
            Stats::get(&st.query_limit_disconnections),
        ),
        (
            "cairn_output_buffer_limit_disconnections_total",
            "Subscribers closed for passing the Pub/Sub output buffer limit.",
            crate::pubsub::OUTPUT_LIMIT_DISCONNECTIONS.load(std::sync::atomic::Ordering::Relaxed),
        ),
        (
            "cairn_acl_denied_auth_total",
            "Failed AUTH and HELLO AUTH attempts.",
            Stats::get(&acl.denied_auth),
        ),
        (
            "cairn_acl_denied_total",
            "Commands refused by ACL (command, key or channel).",
            Stats::get(&acl.denied_cmd)
                + Stats::get(&acl.denied_key)
                + Stats::get(&acl.denied_channel),
        ),
        (
            "cairn_pubsub_forwarded_in_total",
            "Pub/Sub messages and wake-ups other nodes forwarded here.",
            Stats::get(&shared.pubsub.forwarded_in),
        ),
    ];
    for (name, help, value) in counters {
        metric(&mut out, name, "counter", help, &one(value));
    }
    metric(
        &mut out,
        "cairn_connected_clients",
        "gauge",
        "Clients connected now.",
        &one(shared.clients.len() as u64),
    );
    let keys: u64 = shared
        .shards
        .stores()
        .map(|(_, s)| s.lock().keyspace.len() as u64)
        .sum();
    metric(
        &mut out,
        "cairn_keys",
        "gauge",
        "Keys held on this node, every replica it holds counted.",
        &one(keys),
    );
    command_metrics(&mut out, &shared.stats.commands);
    if let Some(repl) = &shared.replication {
        let status = repl.node.status().borrow().clone();
        let per_group = |f: &dyn Fn(&cairn_replication::GroupStatus) -> u64| -> Samples {
            status
                .groups
                .iter()
                .map(|(id, g)| (format!("{{group=\"{id}\"}}"), f(g)))
                .collect()
        };
        let groups: [(&str, &str, &str, Samples); 6] = [
            (
                "cairn_raft_leader",
                "gauge",
                "1 when this node leads the group (group 0: the meta group).",
                per_group(&|g| u64::from(g.is_leader)),
            ),
            (
                "cairn_raft_term",
                "gauge",
                "The group's Raft term here.",
                per_group(&|g| g.term),
            ),
            (
                "cairn_raft_commit_index",
                "gauge",
                "The group's commit index here.",
                per_group(&|g| g.commit),
            ),
            (
                "cairn_raft_applied_index",
                "gauge",
                "The group's applied index here.",
                per_group(&|g| g.applied),
            ),
            (
                "cairn_raft_snapshot_index",
                "gauge",
                "The index of the group's newest snapshot here.",
                per_group(&|g| g.snapshot_index),
            ),
            (
                "cairn_raft_snapshots_installed_total",
                "counter",
                "Snapshots of the group installed from a leader since start.",
                per_group(&|g| g.snapshots_installed),
            ),
        ];
        for (name, kind, help, samples) in groups {
            metric(&mut out, name, kind, help, &samples);
        }
        log_metrics(&mut out, &repl.node);
        let proposals: Samples = repl
            .proposals
            .lock()
            .iter()
            .map(|(g, n)| (format!("{{group=\"{g}\"}}"), *n))
            .collect();
        metric(
            &mut out,
            "cairn_raft_proposals_total",
            "counter",
            "Entries this node proposed (as the group's leader) and saw applied.",
            &proposals,
        );
    }
    let errors: Samples = shared
        .stats
        .errors
        .lock()
        .iter()
        .map(|(code, n)| (format!("{{code=\"{}\"}}", code.escape_default()), *n))
        .collect();
    metric(
        &mut out,
        "cairn_errors_total",
        "counter",
        "Error replies by code (INFO errorstats).",
        &errors,
    );
    let net: [(&str, &str, u64); 2] = [
        (
            "cairn_net_input_bytes_total",
            "Bytes read from clients.",
            Stats::get(&crate::connection::NET_INPUT_BYTES),
        ),
        (
            "cairn_net_output_bytes_total",
            "Bytes written to clients.",
            Stats::get(&crate::connection::NET_OUTPUT_BYTES),
        ),
    ];
    for (name, help, value) in net {
        metric(&mut out, name, "counter", help, &one(value));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

/// The Raft log on this node's disk: its size, writes, bytes written, and fsync latency.
fn log_metrics(out: &mut String, node: &cairn_replication::Node) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = node.log_stats();
    let one = |v: u64| vec![(String::new(), v)];
    metric(
        out,
        "cairn_log_disk_bytes",
        "gauge",
        "Bytes of the Raft log's files on disk.",
        &one(node.log_disk_bytes()),
    );
    metric(
        out,
        "cairn_log_writes_total",
        "counter",
        "Batches written to the Raft log (one per round of the driver).",
        &one(s.writes.load(Relaxed)),
    );
    metric(
        out,
        "cairn_log_written_bytes_total",
        "counter",
        "Bytes written to the Raft log.",
        &one(s.bytes.load(Relaxed)),
    );
    let name = "cairn_log_fsync_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time of each synced write to the Raft log."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    let mut cumulative = 0;
    for i in 0..cairn_replication::storage::SYNC_BUCKETS {
        cumulative += s.sync_buckets[i].load(Relaxed);
        let le = (1u64 << i) as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
    }
    let count = s.synced.load(Relaxed);
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {}", s.sync_usec.load(Relaxed) as f64 / 1e6);
    let _ = writeln!(out, "{name}_count {count}");
}

/// Per command called at least once: calls, failures and a latency histogram (time to the
/// reply, replication included).
fn command_metrics(out: &mut String, commands: &crate::stats::CommandStats) {
    use std::sync::atomic::Ordering::Relaxed;
    let called = commands.called();
    let calls: Samples = called
        .iter()
        .map(|(n, s)| (format!("{{cmd=\"{n}\"}}"), s.calls.load(Relaxed)))
        .collect();
    metric(
        out,
        "cairn_command_calls_total",
        "counter",
        "Calls of each command on this node.",
        &calls,
    );
    let failed: Samples = called
        .iter()
        .map(|(n, s)| (format!("{{cmd=\"{n}\"}}"), s.failed.load(Relaxed)))
        .collect();
    metric(
        out,
        "cairn_command_failed_total",
        "counter",
        "Calls of each command that answered an error.",
        &failed,
    );
    let name = "cairn_command_duration_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Time from a command's start to its reply, replication included."
    );
    let _ = writeln!(out, "# TYPE {name} histogram");
    for (cmd, s) in &called {
        let mut cumulative = 0;
        for (i, bound) in crate::stats::LATENCY_BUCKETS_US.iter().enumerate() {
            cumulative += s.buckets[i].load(Relaxed);
            let le = *bound as f64 / 1e6;
            let _ = writeln!(
                out,
                "{name}_bucket{{cmd=\"{cmd}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let count = s.calls.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{cmd=\"{cmd}\",le=\"+Inf\"}} {count}");
        let sum = s.usec.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{cmd=\"{cmd}\"}} {sum}");
        let _ = writeln!(out, "{name}_count{{cmd=\"{cmd}\"}} {count}");
    }
}

/// The cluster as this node sees it: its id, the nodes' client addresses, and each group it
/// knows with leader, term, members and (for shards) slot ranges.
async fn cluster(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let Some(repl) = &shared.replication else {
        return Json(serde_json::json!({ "mode": "standalone" }));
    };
    let status = repl.node.status().borrow().clone();
    let ranges = shared.shards.ranges();
    let nodes: Vec<serde_json::Value> = repl
        .all_client_addrs()
        .into_iter()
        .map(|(id, addr)| serde_json::json!({ "id": id, "addr": addr.to_string() }))
        .collect();
    let groups: Vec<serde_json::Value> = status
        .groups
        .iter()
        .map(|(id, g)| {
            let slots: Vec<[usize; 2]> = ranges
                .iter()
                .find(|(group, _)| group == id)
                .map(|(_, r)| r.iter().map(|&(a, b)| [a, b]).collect())
                .unwrap_or_default();
            serde_json::json!({
                "id": id,
                "kind": if *id == crate::meta::GROUP { "meta" } else { "shard" },
                "leader": g.leader,
                "term": g.term,
                "commit": g.commit,
                "applied": g.applied,
                "voters": g.voters,
                "learners": g.learners,
                "slots": slots,
            })
        })
        .collect();
    Json(serde_json::json!({
        "mode": "cluster",
        "node": repl.me,
        "stopped": status.stopped,
        "nodes": nodes,
        "groups": groups,
    }))
}

/// The dashboard page (`dashboard.html` beside this file, in the binary).
async fn dashboard() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("dashboard.html"),
    )
}

/// How long the overview waits for one node's answer: a node that takes longer is shown down.
const ASK_WITHIN: std::time::Duration = std::time::Duration::from_millis(800);

/// What every member says of itself: INFO's raft, stats and commandstats sections, asked
/// through the connection nodes open to each other (`CAIRN.RELAY` with the node secret, so a
/// password on the cluster changes nothing here). A node that does not answer in
/// [`ASK_WITHIN`] is `up: false`.
async fn overview(State(shared): State<Arc<Shared>>) -> Json<serde_json::Value> {
    let Some(repl) = &shared.replication else {
        return Json(serde_json::json!({ "mode": "standalone" }));
    };
    let mut asks = tokio::task::JoinSet::new();
    for (id, addr) in repl.all_client_addrs() {
        let shared = shared.clone();
        asks.spawn(async move {
            let answer = tokio::time::timeout(ASK_WITHIN, ask_info(&shared, id, addr))
                .await
                .ok()
                .flatten();
            (id, addr, answer)
        });
    }
    let mut nodes = Vec::new();
    while let Some(Ok((id, addr, answer))) = asks.join_next().await {
        nodes.push(node_json(id, addr, answer));
    }
    nodes.sort_by_key(|n| n["id"].as_u64());
    Json(serde_json::json!({
        "mode": "cluster",
        "node": repl.me,
        "time_ms": crate::now_ms(),
        "nodes": nodes,
    }))
}

async fn ask_info(shared: &Shared, id: u64, addr: std::net::SocketAddr) -> Option<String> {
    let repl = shared.replication.as_ref()?;
    let mut r = crate::replicated::open_relay(repl, addr, id, cairn_resp::Protocol::Resp2).await?;
    let requests: Vec<Vec<Vec<u8>>> = ["raft", "stats", "commandstats"]
        .iter()
        .map(|s| vec![b"INFO".to_vec(), s.as_bytes().to_vec()])
        .collect();
    let replies = crate::replicated::relay_on(&mut r, &requests).await?;
    let mut text = String::new();
    for reply in replies {
        // `$<len>\r\n<text>\r\n`
        let body = reply.splitn(2, |&b| b == b'\n').nth(1)?;
        text.push_str(&String::from_utf8_lossy(body));
    }
    Some(text)
}

fn node_json(id: u64, addr: std::net::SocketAddr, info: Option<String>) -> serde_json::Value {
    let Some(info) = info else {
        return serde_json::json!({ "id": id, "addr": addr.to_string(), "up": false });
    };
    let mut groups = serde_json::Map::new();
    let (mut commands, mut calls, mut usec) = (0u64, 0u64, 0u64);
    for line in info.lines() {
        let Some((k, v)) = line.trim_end().split_once(':') else {
            continue;
        };
        let fields: std::collections::BTreeMap<&str, &str> =
            v.split(',').filter_map(|kv| kv.split_once('=')).collect();
        let num = |f: &str| {
            fields
                .get(f)
                .and_then(|x| x.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if let Some(g) = k.strip_prefix("group") {
            let list = |f: &str| -> Vec<u64> {
                fields
                    .get(f)
                    .map(|x| x.split(';').filter_map(|i| i.parse().ok()).collect())
                    .unwrap_or_default()
            };
            groups.insert(
                g.to_string(),
                serde_json::json!({
                    "role": fields.get("role"),
                    "leader": fields.get("leader").and_then(|l| l.parse::<u64>().ok()),
                    "term": num("term"),
                    "commit": num("commit"),
                    "applied": num("applied"),
                    "voters": list("voters"),
                    "slots": fields.get("slots"),
                }),
            );
        } else if k == "total_commands_processed" {
            commands = v.trim().parse().unwrap_or(0);
        } else if k.starts_with("cmdstat_") {
            calls += num("calls");
            usec += num("usec");
        }
    }
    serde_json::json!({
        "id": id,
        "addr": addr.to_string(),
        "up": true,
        "commands_processed": commands,
        "command_calls": calls,
        "command_usec": usec,
        "groups": groups,
    })
}
