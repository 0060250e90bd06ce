//! The server's runtime configuration: what `CONFIG GET/SET` see and the limits connections obey.
//! Defaults are Redis 7's unless a comment says why not.

#[derive(Clone, Debug)]
pub struct Config {
    pub bind: String,
    pub port: u16,
    pub data_dir: std::path::PathBuf,
    /// The most clients served at once; one more is refused with Redis's error.
    pub maxclients: usize,
    /// `proto-max-bulk-len`: the longest argument a request may carry.
    pub proto_max_bulk_len: usize,
    /// `client-query-buffer-limit`: the most unprocessed input one client may have buffered.
    pub client_query_buffer_limit: usize,
    /// Seconds a client may stay idle before it is closed (0: never).
    pub timeout_secs: u64,
    /// Active-expiry cycles per second.
    pub hz: u32,
    pub protected_mode: bool,
    /// This node's id in the cluster.
    pub node_id: u64,
    /// Port of the cluster bus (Raft messages between nodes).
    pub bus_port: u16,
    /// Every voter's id and bus address. Empty: a standalone node (no replication, memory only).
    pub initial_cluster: Vec<(u64, std::net::SocketAddr)>,
    /// Whether `DEBUG NETWORK` may cut links to peers. For fault-injection tests; off by default.
    pub fault_hooks: bool,
    /// Join a running cluster (etcd's `--initial-cluster-state existing`): start with no
    /// configuration and wait for a leader to add this node, instead of bootstrapping one.
    pub join_existing: bool,
    /// Answer keyed commands sent to a node that does not lead their shard with `-MOVED`, as
    /// Redis Cluster does, instead of relaying them (for cluster-aware clients only: plain
    /// clients do not follow redirects).
    pub cluster_redirects: bool,
    /// Replicated mode: a shard snapshots its state and compacts its log every this many
    /// applied entries.
    pub snapshot_entries: u64,
    /// Replicated mode: how many shards (Raft groups) the slots are divided into when the
    /// cluster is created; 0 for one per initial node. Fixed afterwards.
    pub shards: usize,
    /// Replicated mode: how many nodes hold each shard created with the cluster (its Raft
    /// group's voters), at most the initial node count. Later shards get as many.
    pub replicas: usize,
    /// `notify-keyspace-events` as last set through CONFIG SET here (the setting in force is
    /// the Pub/Sub hub's, shared by the whole cluster: see `crate::pubsub`).
    pub notify_keyspace_events: u32,
    /// `tls-port`: where TLS clients are served (0: nowhere).
    pub tls_port: u16,
    /// `tls-cert-file`, `tls-key-file`, `tls-ca-cert-file`, `tls-auth-clients`.
    pub tls_files: crate::tls::TlsFiles,
    /// `tls-cluster`: the cluster bus is mutual TLS with the same certificate, key and CA.
    pub tls_cluster: bool,
    /// The admin HTTP port (`/metrics`, `/health`, `/ready`, `/api/cluster`); 0: none.
    pub admin_port: u16,
    /// `slowlog-log-slower-than` in microseconds (negative: off) and `slowlog-max-len`.
    pub slowlog_log_slower_than: i64,
    pub slowlog_max_len: usize,
    /// `--requirepass`: the default user's password on a single node (a cluster keeps its
    /// users in the meta group: set it there with ACL SETUSER or CONFIG SET). Never shown by
    /// CONFIG GET.
    pub requirepass: String,
    /// `acllog-max-len`: the most ACL LOG entries kept.
    pub acllog_max_len: usize,
    /// `client-output-buffer-limit`: (hard bytes, soft bytes, soft seconds) for the normal,
    /// replica and pubsub classes. The pubsub class is enforced (`crate::pubsub`); cairn has no
    /// replica clients; a normal client's unsent replies are bounded by construction (a
    /// connection stops reading while its replies wait), so its values are only kept.
    pub output_limits: [(u64, u64, u64); 3],
    /// The file `--config` named, which CONFIG REWRITE updates.
    pub config_file: Option<std::path::PathBuf>,
}

/// The classes of `client-output-buffer-limit`, in Redis's order and spelling.
const OUTPUT_CLASSES: [&str; 3] = ["normal", "slave", "pubsub"];

impl Default for Config {
    fn default() -> Self {
        Config {
            bind: "127.0.0.1".into(),
            port: 6379,
            data_dir: "cairn-data".into(),
            maxclients: 10_000,
            proto_max_bulk_len: 512 * 1024 * 1024,
            client_query_buffer_limit: 1024 * 1024 * 1024,
            timeout_secs: 0,
            hz: 10,
            protected_mode: true,
            node_id: 1,
            bus_port: 16379,
            initial_cluster: Vec::new(),
            fault_hooks: false,
            join_existing: false,
            cluster_redirects: false,
            snapshot_entries: 10_000,
            shards: 0,
            replicas: 3,
            notify_keyspace_events: 0,
            tls_port: 0,
            tls_files: Default::default(),
            tls_cluster: false,
            admin_port: 0,
            slowlog_log_slower_than: 10_000,
            slowlog_max_len: 128,
            requirepass: String::new(),
            acllog_max_len: 128,
            output_limits: [
                (0, 0, 0),
                (256 << 20, 64 << 20, 60),
                (32 << 20, 8 << 20, 60),
            ],
            config_file: None,
        }
    }
}

/// Parses `--initial-cluster`: `1=HOST:BUSPORT,2=HOST:BUSPORT,...`.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<(u64, std::net::SocketAddr)>, String> {
    use std::net::ToSocketAddrs;
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?}: expected ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{part:?}: node id must be a positive number"))?;
        if id == 0 || out.iter().any(|(i, _)| *i == id) {
            return Err(format!("{part:?}: node ids must be positive and distinct"));
        }
        let addr = addr
            .trim()
            .to_socket_addrs()
            .map_err(|e| format!("{part:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{part:?}: no address"))?;
        if addr.port() < 10000 {
            return Err(format!(
                "{part:?}: bus ports are client ports + 10000, so at least 10000"
            ));
        }
        out.push((id, addr));
    }
    Ok(out)
}

/// Parses a Redis memory amount: `1gb`, `512mb`, `64k`, `1024`.
pub fn parse_memory(s: &str) -> Option<usize> {
    let lower = s.to_ascii_lowercase();
    let split = lower
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult = match unit {
        "" | "b" => 1,
        "k" => 1000,
        "kb" => 1024,
        "m" => 1000 * 1000,
        "mb" => 1024 * 1024,
        "g" => 1000 * 1000 * 1000,
        "gb" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(mult)
}

impl Config {
    /// The settings CONFIG SET can change that the config file also holds, as the file writes
    /// them (`key = value` in TOML): what CONFIG REWRITE puts there.
    pub fn file_settings(&self) -> Vec<(&'static str, String)> {
        let quoted = |s: &str| format!("{s:?}");
        let mut out = vec![
            ("maxclients", self.maxclients.to_string()),
            ("timeout", self.timeout_secs.to_string()),
            (
                "protected_mode",
                quoted(if self.protected_mode { "yes" } else { "no" }),
            ),
        ];
        if self.tls_port != 0 {
            out.push((
                "tls_cert_file",
                quoted(&self.tls_files.cert.display().to_string()),
            ));
            out.push((
                "tls_key_file",
                quoted(&self.tls_files.key.display().to_string()),
            ));
            if let Some(ca) = &self.tls_files.ca {
                out.push(("tls_ca_cert_file", quoted(&ca.display().to_string())));
            }
            out.push((
                "tls_auth_clients",
                quoted(self.tls_files.auth_clients.name()),
            ));
        }
        out
    }

    /// The parameters CONFIG GET knows, with their current values.
    pub fn params(&self) -> Vec<(&'static str, String)> {
        vec![
            ("bind", self.bind.clone()),
            ("port", self.port.to_string()),
            ("dir", self.data_dir.display().to_string()),
            ("maxclients", self.maxclients.to_string()),
            ("proto-max-bulk-len", self.proto_max_bulk_len.to_string()),
            (
                "client-query-buffer-limit",
                self.client_query_buffer_limit.to_string(),
            ),
            ("timeout", self.timeout_secs.to_string()),
            ("hz", self.hz.to_string()),
            (
                "protected-mode",
                if self.protected_mode { "yes" } else { "no" }.into(),
            ),
            ("databases", "1".into()),
            ("save", String::new()),
            ("appendonly", "no".into()),
            ("maxmemory", "0".into()),
            ("maxmemory-policy", "noeviction".into()),
            (
                "notify-keyspace-events",
                cairn_store::notify::format(self.notify_keyspace_events),
            ),
            ("cluster-enabled", "no".into()),
            (
                "slowlog-log-slower-than",
                self.slowlog_log_slower_than.to_string(),
            ),
            ("slowlog-max-len", self.slowlog_max_len.to_string()),
            ("acllog-max-len", self.acllog_max_len.to_string()),
            (
                "client-output-buffer-limit",
                OUTPUT_CLASSES
                    .iter()
                    .zip(&self.output_limits)
                    .map(|(c, (h, s, t))| format!("{c} {h} {s} {t}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            ("tls-port", self.tls_port.to_string()),
            ("tls-cert-file", self.tls_files.cert.display().to_string()),
            ("tls-key-file", self.tls_files.key.display().to_string()),
            (
                "tls-ca-cert-file",
                self.tls_files
                    .ca
                    .as_ref()
                    .map_or(String::new(), |p| p.display().to_string()),
            ),
            (
                "tls-auth-clients",
                self.tls_files.auth_clients.name().into(),
            ),
            (
                "tls-cluster",
                if self.tls_cluster { "yes" } else { "no" }.into(),
            ),
        ]
    }

    /// Sets one parameter; Err carries Redis's message tail.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), String> {
        let bad = || "argument couldn't be parsed into an integer".to_string();
        match name {
            "maxclients" => self.maxclients = value.parse().map_err(|_| bad())?,
            "timeout" => self.timeout_secs = value.parse().map_err(|_| bad())?,
            "hz" => self.hz = value.parse::<u32>().map_err(|_| bad())?.clamp(1, 500),
            "slowlog-log-slower-than" => {
                self.slowlog_log_slower_than = value.parse().map_err(|_| bad())?
            }
            "slowlog-max-len" => self.slowlog_max_len = value.parse().map_err(|_| bad())?,
            "acllog-max-len" => self.acllog_max_len = value.parse().map_err(|_| bad())?,
            "client-output-buffer-limit" => {
                let words: Vec<&str> = value.split_whitespace().collect();
                if !words.len().is_multiple_of(4) {
                    return Err("Wrong number of arguments in buffer limit configuration.".into());
                }
                let mut limits = self.output_limits;
                for w in words.chunks(4) {
                    let class = match w[0].to_ascii_lowercase().as_str() {
                        "normal" => 0,
                        "slave" | "replica" => 1,
                        "pubsub" => 2,
                        _ => {
                            return Err(
                                "Invalid client class specified in buffer limit configuration."
                                    .into(),
                            )
                        }
                    };
                    let bad = || {
                        "Error in hard, soft or soft_seconds setting in buffer limit configuration."
                            .to_string()
                    };
                    let hard = parse_memory(w[1]).ok_or_else(bad)? as u64;
                    let soft = parse_memory(w[2]).ok_or_else(bad)? as u64;
                    let secs = w[3].parse().map_err(|_| bad())?;
                    limits[class] = (hard, soft, secs);
                }
                self.output_limits = limits;
            }
            // The password goes to the default user (`cmd::introspection::config_set`).
            "requirepass" => {}
            "proto-max-bulk-len" => {
                self.proto_max_bulk_len = parse_memory(value)
                    .filter(|&n| n >= 1024 * 1024)
                    .ok_or("argument must be a memory value")?
            }
            "client-query-buffer-limit" => {
                self.client_query_buffer_limit = parse_memory(value)
                    .filter(|&n| n >= 1024 * 1024)
                    .ok_or("argument must be a memory value")?
            }
            "protected-mode" => {
                self.protected_mode = match value.to_ascii_lowercase().as_str() {
                    "yes" => true,
                    "no" => false,
                    _ => return Err("argument must be 'yes' or 'no'".into()),
                }
            }
            "tls-cert-file" => self.tls_files.cert = value.into(),
            "tls-key-file" => self.tls_files.key = value.into(),
            "tls-ca-cert-file" => {
                self.tls_files.ca = (!value.is_empty()).then(|| value.into());
            }
            "tls-auth-clients" => {
                self.tls_files.auth_clients = crate::tls::AuthClients::parse(value)
                    .ok_or("argument must be 'yes', 'no' or 'optional'")?
            }
            "tls-port" | "tls-cluster" => {
                return Err(format!("{name} is set when the server starts"))
            }
            "notify-keyspace-events" => {
                self.notify_keyspace_events = cairn_store::notify::parse(value)
                    .ok_or("Invalid event class character. Use 'Ag$lshzxeKEtmdn'.")?
            }
            // Accepted for compatibility: cairn has no eviction or persistence knobs.
            "maxmemory-policy" | "save" | "appendonly" | "maxmemory" => {}
            _ => return Err("unknown".into()),
        }
        Ok(())
    }
}
