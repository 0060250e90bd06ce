//! The `cairn` binary: parses flags, sets up logging, binds sockets and hands over to the library.

mod backup;
mod cluster;
mod dev;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "cairn",
    version,
    about = "A Redis-compatible store and queue, strongly consistent by default"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one cairn node.
    Server(Box<ServerArgs>),
    /// Run a local development cluster on this machine.
    Dev(dev::DevArgs),
    /// Inspect a running cluster.
    Cluster(cluster::ClusterArgs),
    /// Write development TLS certificates: a CA, a node certificate and a client certificate.
    Certs(CertsArgs),
}

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Where to write ca.crt/.key, node.crt/.key and client.crt/.key.
    #[arg(long, default_value = "cairn-certs")]
    dir: PathBuf,
    /// Names and addresses the node certificate is good for, comma-separated.
    #[arg(long, default_value = "localhost,127.0.0.1,::1")]
    hosts: String,
}

/// Every flag has a config-file key (the same name with `-` replaced by `_`) and a `CAIRN_*`
/// environment variable; flags win over the environment, which wins over the file.
#[derive(Args, Debug, Default)]
pub struct ServerArgs {
    /// TOML file with any of the settings below.
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on for clients.
    #[arg(long, env = "CAIRN_BIND")]
    bind: Option<String>,
    /// Port for Redis clients.
    #[arg(long, env = "CAIRN_PORT")]
    port: Option<u16>,
    /// Where this node keeps its data.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Refuse non-loopback clients while the default user has no password (yes|no).
    #[arg(long, env = "CAIRN_PROTECTED_MODE")]
    protected_mode: Option<String>,
    /// The most clients served at once.
    #[arg(long, env = "CAIRN_MAXCLIENTS")]
    maxclients: Option<usize>,
    /// Close clients idle this many seconds (0: never).
    #[arg(long, env = "CAIRN_TIMEOUT")]
    timeout: Option<u64>,
    /// This node's id in the cluster.
    #[arg(long, env = "CAIRN_NODE_ID")]
    node_id: Option<u64>,
    /// Port for the cluster bus (by convention the client port + 10000).
    #[arg(long, env = "CAIRN_BUS_PORT")]
    bus_port: Option<u16>,
    /// Every voter: "1=HOST:BUSPORT,2=HOST:BUSPORT,3=HOST:BUSPORT". Without it the node is a
    /// standalone, memory-only server.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER")]
    initial_cluster: Option<String>,
    /// `new` bootstraps the cluster of --initial-cluster; `existing` joins a running one: the
    /// node waits until a member adds it (`cairn cluster add-node`).
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER_STATE", value_name = "new|existing")]
    initial_cluster_state: Option<String>,
    /// Answer keyed commands for another node's shard with -MOVED (Redis Cluster behaviour,
    /// for cluster-aware clients) instead of relaying them (yes|no, default no).
    #[arg(long, env = "CAIRN_CLUSTER_REDIRECTS", value_name = "yes|no")]
    cluster_redirects: Option<String>,
    /// Allow `DEBUG NETWORK` to cut this node's links to peers (fault-injection tests only).
    #[arg(long, env = "CAIRN_FAULT_HOOKS", value_name = "yes|no")]
    fault_hooks: Option<String>,
    /// A single node: the default user's password (clients must AUTH). A cluster keeps its
    /// users in its meta group: set them once with ACL SETUSER (or CONFIG SET requirepass).
    #[arg(long, env = "CAIRN_REQUIREPASS", hide_env_values = true)]
    requirepass: Option<String>,
    /// Replicated mode: snapshot and compact the log every this many applied entries.
    #[arg(long, env = "CAIRN_SNAPSHOT_ENTRIES")]
    snapshot_entries: Option<u64>,
    /// Replicated mode: how many shards the 16384 slots are divided into when the cluster is
    /// created (default: one per node of --initial-cluster). Fixed once data exists.
    #[arg(long, env = "CAIRN_SHARDS")]
    shards: Option<usize>,
    /// Replicated mode: how many nodes hold a replica of each shard (3, or every node when
    /// there are fewer). Chosen when the cluster is created.
    #[arg(long, env = "CAIRN_REPLICAS")]
    replicas: Option<usize>,
    /// Port for the admin HTTP server: /metrics (Prometheus), /health, /ready, /api/cluster
    /// (0 or absent: none).
    #[arg(long, env = "CAIRN_ADMIN_PORT")]
    admin_port: Option<u16>,
    /// Port for TLS clients (0 or absent: none).
    #[arg(long, env = "CAIRN_TLS_PORT")]
    tls_port: Option<u16>,
    /// PEM certificate chain the TLS port presents.
    #[arg(long, env = "CAIRN_TLS_CERT_FILE")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = "CAIRN_TLS_KEY_FILE")]
    tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that client certificates must be signed by.
    #[arg(long, env = "CAIRN_TLS_CA_CERT_FILE")]
    tls_ca_cert_file: Option<PathBuf>,
    /// Whether TLS clients must present a certificate (yes|optional|no, default yes).
    #[arg(long, env = "CAIRN_TLS_AUTH_CLIENTS", value_name = "yes|optional|no")]
    tls_auth_clients: Option<String>,
    /// Mutual TLS on the cluster bus with --tls-cert-file, --tls-key-file and the cluster CA
    /// of --tls-ca-cert-file: peers without a certificate from that CA are refused (yes|no).
    #[arg(long, env = "CAIRN_TLS_CLUSTER", value_name = "yes|no")]
    tls_cluster: Option<String>,
    /// Join the running cluster that the member at this bus address belongs to: this node
    /// learns the members from it, starts as a new member (needs a --node-id no member has),
    /// and has itself added to every group, as a voter once caught up. Instead of
    /// --initial-cluster.
    #[arg(long, env = "CAIRN_JOIN", value_name = "HOST:BUSPORT")]
    join: Option<String>,
}

/// The same settings as read from a config file.
#[derive(serde::Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    bind: Option<String>,
    port: Option<u16>,
    data_dir: Option<PathBuf>,
    protected_mode: Option<String>,
    maxclients: Option<usize>,
    timeout: Option<u64>,
    node_id: Option<u64>,
    bus_port: Option<u16>,
    initial_cluster: Option<String>,
    initial_cluster_state: Option<String>,
    cluster_redirects: Option<String>,
    fault_hooks: Option<String>,
    requirepass: Option<String>,
    snapshot_entries: Option<u64>,
    shards: Option<usize>,
    replicas: Option<usize>,
    join: Option<String>,
    admin_port: Option<u16>,
    tls_port: Option<u16>,
    tls_cert_file: Option<PathBuf>,
    tls_key_file: Option<PathBuf>,
    tls_ca_cert_file: Option<PathBuf>,
    tls_auth_clients: Option<String>,
    tls_cluster: Option<String>,
}

fn yes_no(v: &str) -> anyhow::Result<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => anyhow::bail!("expected yes or no, got {other:?}"),
    }
}

/// The node's settings, and the `--join` address when it has one.
fn server_config(args: &ServerArgs) -> anyhow::Result<(cairn_server::Config, Option<String>)> {
    let file: FileConfig = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => FileConfig::default(),
    };
    let mut c = cairn_server::Config::default();
    if let Some(v) = args.bind.clone().or(file.bind) {
        c.bind = v;
    }
    if let Some(v) = args.port.or(file.port) {
        c.port = v;
    }
    if let Some(v) = args.data_dir.clone().or(file.data_dir) {
        c.data_dir = v;
    }
    if let Some(v) = args.protected_mode.clone().or(file.protected_mode) {
        c.protected_mode = yes_no(&v).context("--protected-mode")?;
    }
    if let Some(v) = args
        .initial_cluster_state
        .clone()
        .or(file.initial_cluster_state)
    {
        c.join_existing = match v.to_ascii_lowercase().as_str() {
            "new" => false,
            "existing" => true,
            other => {
                anyhow::bail!("--initial-cluster-state: expected new or existing, got {other:?}")
            }
        };
    }
    if let Some(v) = args.cluster_redirects.clone().or(file.cluster_redirects) {
        c.cluster_redirects = yes_no(&v).context("--cluster-redirects")?;
    }
    c.config_file = args.config.clone();
    if let Some(v) = args.requirepass.clone().or(file.requirepass) {
        c.requirepass = v;
    }
    if let Some(v) = args.fault_hooks.clone().or(file.fault_hooks) {
        c.fault_hooks = yes_no(&v).context("--fault-hooks")?;
    }
    if let Some(v) = args.snapshot_entries.or(file.snapshot_entries) {
        anyhow::ensure!(v > 0, "--snapshot-entries must be at least 1");
        c.snapshot_entries = v;
    }
    if let Some(v) = args.shards.or(file.shards) {
        anyhow::ensure!(
            (1..=cairn_server::shards::MAX_SHARDS).contains(&v),
            "--shards must be between 1 and {}",
            cairn_server::shards::MAX_SHARDS
        );
        c.shards = v;
    }
    if let Some(v) = args.replicas.or(file.replicas) {
        anyhow::ensure!((1..=7).contains(&v), "--replicas must be between 1 and 7");
        c.replicas = v;
    }
    if let Some(v) = args.maxclients.or(file.maxclients) {
        c.maxclients = v;
    }
    if let Some(v) = args.timeout.or(file.timeout) {
        c.timeout_secs = v;
    }
    if let Some(v) = args.node_id.or(file.node_id) {
        c.node_id = v;
    }
    c.bus_port = args
        .bus_port
        .or(file.bus_port)
        .unwrap_or(c.port.saturating_add(10000));
    if let Some(v) = args.initial_cluster.clone().or(file.initial_cluster) {
        c.initial_cluster = cairn_server::config::parse_initial_cluster(&v)
            .map_err(|e| anyhow::anyhow!("--initial-cluster {e}"))?;
    }
    if let Some(v) = args.admin_port.or(file.admin_port) {
        c.admin_port = v;
    }
    if let Some(v) = args.tls_port.or(file.tls_port) {
        c.tls_port = v;
    }
    if let Some(v) = args.tls_cert_file.clone().or(file.tls_cert_file) {
        c.tls_files.cert = v;
    }
    if let Some(v) = args.tls_key_file.clone().or(file.tls_key_file) {
        c.tls_files.key = v;
    }
    c.tls_files.ca = args.tls_ca_cert_file.clone().or(file.tls_ca_cert_file);
    if let Some(v) = args.tls_auth_clients.clone().or(file.tls_auth_clients) {
        c.tls_files.auth_clients =
            cairn_server::tls::AuthClients::parse(&v).with_context(|| {
                format!("--tls-auth-clients: expected yes, optional or no, got {v:?}")
            })?;
    }
    if let Some(v) = args.tls_cluster.clone().or(file.tls_cluster) {
        c.tls_cluster = yes_no(&v).context("--tls-cluster")?;
    }
    if c.tls_port != 0 || c.tls_cluster {
        anyhow::ensure!(
            !c.tls_files.cert.as_os_str().is_empty() && !c.tls_files.key.as_os_str().is_empty(),
            "--tls-port and --tls-cluster need --tls-cert-file and --tls-key-file"
        );
    }
    anyhow::ensure!(
        c.requirepass.is_empty() || c.initial_cluster.is_empty(),
        "--requirepass is for a single node: a cluster keeps its users in its meta group, so set \
         the password once, through any node, with CONFIG SET requirepass or ACL SETUSER"
    );
    let join = args.join.clone().or(file.join);
    if join.is_some() {
        anyhow::ensure!(
            c.initial_cluster.is_empty(),
            "--join and --initial-cluster exclude each other"
        );
        anyhow::ensure!(
            args.node_id.or(file.node_id).is_some(),
            "--join needs a --node-id that no member of the cluster has"
        );
    }
    Ok((c, join))
}

/// `--join`: asks the member at bus address `join` for the cluster's members and sets this
/// node up to start as one of them (`--initial-cluster-state existing` with every member in
/// `--initial-cluster`). Returns the member's client address when this node still has to be
/// added (it is not a voter yet), with the bus address to add it under.
fn plan_join(
    config: &mut cairn_server::Config,
    join: &str,
) -> anyhow::Result<Option<(std::net::SocketAddr, std::net::SocketAddr)>> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let bus: SocketAddr = join
        .to_socket_addrs()
        .with_context(|| format!("resolving --join {join}"))?
        .next()
        .context("--join resolves to no address")?;
    let member = SocketAddr::new(
        bus.ip(),
        bus.port()
            .checked_sub(10000)
            .context("--join names a bus port (a client port + 10000)")?,
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let members = loop {
        match cluster::members(member) {
            Ok(m) => break m,
            Err(e) if std::time::Instant::now() < deadline => {
                tracing::info!(error = %e, "waiting for the member to join through");
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            Err(e) => return Err(e.context(format!("asking {member} for the cluster's members"))),
        }
    };
    let me = config.node_id;
    let voter = members.iter().any(|(id, v, _)| *id == me && *v);
    anyhow::ensure!(
        !voter || config.data_dir.join("raft").exists(),
        "node {me} is already a member of that cluster; a new node needs an id of its own"
    );
    // The address the member reaches this node at: the interface that reaches the member.
    let ip = std::net::TcpStream::connect_timeout(&member, std::time::Duration::from_secs(2))?
        .local_addr()?
        .ip();
    let my_bus = SocketAddr::new(ip, config.bus_port);
    config.initial_cluster = members
        .iter()
        .filter(|(id, _, _)| *id != me)
        .map(|(id, _, c)| (*id, SocketAddr::new(c.ip(), c.port() + 10000)))
        .chain(std::iter::once((me, my_bus)))
        .collect();
    config.join_existing = true;
    Ok((!voter).then_some((member, my_bus)))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn run_server(args: ServerArgs) -> anyhow::Result<()> {
    let (mut config, join) = server_config(&args)?;
    let to_add = match &join {
        Some(j) => plan_join(&mut config, j)?,
        None => None,
    };
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let addr = format!("{}:{}", config.bind, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    if let Some((member, my_bus)) = to_add {
        // Once this node serves, the member adds it to the meta group and moves replicas to
        // it (see `cluster::add_node`).
        let me = config.node_id;
        std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(500));
            match cluster::add_node(member, me, &my_bus.to_string(), false, 600) {
                Ok(()) => tracing::info!(
                    node = me,
                    "joined the cluster and holds its share of the replicas"
                ),
                Err(e) => tracing::error!(node = me, error = %e, "joining the cluster failed"),
            }
        });
    }
    cairn_server::run(config, listener, shutdown_signal()).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CAIRN_LOG")
                .unwrap_or_else(|_| "info,raft=warn,raft_engine=warn".into()),
        )
        .with_writer(std::io::stderr);
    // CAIRN_LOG_FORMAT=json: one JSON object per line, for log collectors.
    if std::env::var("CAIRN_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        logs.json().init();
    } else {
        // Colour only on a terminal: a log file or journal gets plain, greppable text.
        logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let cli = Cli::parse();
    let command = match cli.command {
        Command::Cluster(args) => return cluster::run(args),
        Command::Certs(args) => return certs(&args),
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match command {
        Command::Server(args) => runtime.block_on(run_server(*args)),
        Command::Dev(args) => runtime.block_on(dev::run(args)),
        Command::Cluster(_) | Command::Certs(_) => unreachable!("handled above"),
    }
}

/// `cairn certs`: development certificates, and how to use them.
fn certs(args: &CertsArgs) -> anyhow::Result<()> {
    let hosts: Vec<String> = args
        .hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(String::from)
        .collect();
    let written =
        cairn_server::tls::write_dev_certs(&args.dir, &hosts).map_err(anyhow::Error::msg)?;
    for path in &written {
        println!("wrote {}", path.display());
    }
    let d = args.dir.display();
    println!(
        "serve TLS: cairn server --tls-port 6380 --tls-cert-file {d}/node.crt --tls-key-file {d}/node.key --tls-ca-cert-file {d}/ca.crt\nconnect:   redis-cli -p 6380 --tls --cacert {d}/ca.crt --cert {d}/client.crt --key {d}/client.key"
    );
    Ok(())
}
