//! The cairn server: listeners, connections and command dispatch.
//!
//! The request path, in the order a request travels:
//! [`connection`] reads bytes and decodes requests (RESP with limits) → [`dispatch`] looks each up
//! in the command table, checks arity, queues it inside MULTI, and runs it either against the
//! store (data commands, with the entry time and seed of [`cairn_store::Env`]) or against the
//! connection and server ([`cmd`]: HELLO, CLIENT, MULTI/EXEC, COMMAND, INFO, CONFIG ...).
//!
//! `run` takes already-bound listeners so that tests can bind port 0 and start many servers in
//! one process.

pub mod acl;
pub mod admin;
pub mod blocking;
pub mod cmd;
pub mod config;
pub mod connection;
pub mod cross;
pub mod dispatch;
pub mod expiry;
pub mod functions;
pub mod meta;
pub mod placement;
pub mod pubsub;
pub mod replicated;
pub mod shard;
pub mod shards;
pub mod stats;
pub mod tls;

pub use config::Config;

use parking_lot::Mutex;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// What every connection of a server shares.
pub struct Shared {
    pub config: Mutex<Config>,
    /// The keyspace, shard by shard. Each shard's store is shared with its replication state
    /// machine in replicated mode.
    pub shards: shards::Shards,
    /// Set in replicated mode (`--initial-cluster`).
    pub replication: Option<replicated::Replication>,
    pub table: dispatch::Table,
    pub clients: connection::Registry,
    pub stats: stats::Stats,
    /// The slot moves this node coordinates.
    pub reshard: cmd::reshard::Jobs,
    /// Pub/Sub subscriptions on this node.
    pub pubsub: Arc<pubsub::Hub>,
    /// Scripts by SHA-1 (EVALSHA, SCRIPT).
    pub scripts: cmd::scripting::Cache,
    /// Function libraries (FUNCTION, FCALL): the meta group's, in a cluster.
    pub functions: Arc<functions::Libraries>,
    /// SLOWLOG's entries and settings.
    pub slowlog: cmd::slowlog::SlowLog,
    /// The TLS configuration new TLS clients get, when `tls-port` is set.
    pub tls: Option<Arc<tls::Tls>>,
    /// The users (the meta group's, in a cluster) and ACL LOG.
    pub acl: Arc<acl::Acl>,
    pub started_ms: u64,
    next_client_id: AtomicU64,
    /// Flips to true when the server shuts down.
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// Unix time in milliseconds. The only clock the data path reads: its value is written into the
/// entry (see `cairn_store::Env`), never read during apply.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Starts this node's replication when `--initial-cluster` names voters.
type Started = (
    shards::Shards,
    Option<replicated::Replication>,
    Option<tokio::sync::mpsc::UnboundedReceiver<meta::Created>>,
);

fn start_replication(
    config: &Config,
    bus: Option<std::net::TcpListener>,
    hub: &Arc<pubsub::Hub>,
    acl: &Arc<acl::Acl>,
    libraries: &Arc<functions::Libraries>,
) -> std::io::Result<Started> {
    if config.initial_cluster.is_empty() {
        return Ok((shards::Shards::single(), None, None));
    }
    let me = config.node_id;
    let peers: std::collections::HashMap<u64, std::net::SocketAddr> =
        config.initial_cluster.iter().copied().collect();
    if !peers.contains_key(&me) {
        return Err(std::io::Error::other(format!(
            "node {me} is not in --initial-cluster"
        )));
    }
    let client_addrs = peers
        .iter()
        .map(|(&id, a)| (id, std::net::SocketAddr::new(a.ip(), a.port() - 10000)))
        .collect();
    let bus = match bus {
        Some(bus) => bus,
        None => std::net::TcpListener::bind((config.bind.as_str(), config.bus_port))?,
    };
    let peer_tls = if config.tls_cluster {
        let tls = tls::bus_tls(&config.tls_files)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let _ = hub.peer_tls.set(tls.clone());
        Some(tls)
    } else {
        None
    };
    let node_config = cairn_replication::NodeConfig {
        id: me,
        data_dir: config.data_dir.join("raft"),
        peers,
        tick: std::time::Duration::from_millis(50),
        group: cairn_replication::GroupConfig {
            snapshot_every: config.snapshot_entries.max(1),
            unbalanced: vec![meta::GROUP],
            ..Default::default()
        },
        bus_tls: peer_tls.clone(),
    };
    // A joining node bootstraps nothing: its configuration arrives in the leader's snapshot.
    let voters: Vec<u64> = if config.join_existing {
        Vec::new()
    } else {
        config.initial_cluster.iter().map(|(id, _)| *id).collect()
    };
    // The shards this node holds from the start are bootstrapped on its first start only; on
    // later ones it reopens whatever it holds on disk (replicas move between nodes).
    let bootstrapped = config.data_dir.join("bootstrapped");
    let first_start = !bootstrapped.exists();
    // A new cluster has one shard per initial node unless told otherwise; a node joining a
    // running one asks it.
    let explicit = (config.shards > 0).then_some(config.shards);
    let count = shards::settle_count(&config.data_dir, explicit, || {
        if config.join_existing {
            let others: Vec<std::net::SocketAddr> = config
                .initial_cluster
                .iter()
                .filter(|(id, _)| *id != me)
                .map(|(_, a)| *a)
                .collect();
            shards::ask_cluster_size(&others, std::time::Duration::from_secs(30))
        } else {
            Ok(config.initial_cluster.len().min(shards::MAX_SHARDS))
        }
    })?;
    let shards = shards::Shards::even(count);
    let (created_tx, created_rx) = tokio::sync::mpsc::unbounded_channel();
    let meta_state: Arc<Mutex<meta::MetaState>> = Default::default();
    let meta = meta::MetaMachine {
        state: meta_state.clone(),
        first_free: count as u64 + 1,
        created_tx,
        owners: Some(shards.owners().clone()),
        acl: Some(acl.clone()),
        functions: Some(libraries.clone()),
    };
    let placement = placement::initial_placement(&voters, count, config.replicas);
    let machine_of = |group: u64| {
        let store = shards.add(group)?;
        Some(meta::GroupMachine::Shard(shard::ShardMachine {
            store: store.clone(),
            routes: Some((group, shards.owners().clone())),
            events: Some(hub.clone()),
            leading: false,
        }))
    };
    let mut machines = vec![(meta::GROUP, voters.clone(), meta::GroupMachine::Meta(meta))];
    if first_start {
        for (i, placed) in placement.iter().enumerate() {
            let group = i as u64 + 1;
            if placed.contains(&me) {
                machines.extend(machine_of(group).map(|m| (group, placed.clone(), m)));
            }
        }
    }
    let node = cairn_replication::Node::start_placed(node_config, bus, machines, &mut |group| {
        machine_of(group)
    })
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    if first_start {
        std::fs::write(&bootstrapped, b"1\n")?;
        std::fs::File::open(&bootstrapped)?.sync_all()?;
    }
    tracing::info!(
        node = me,
        bus_port = config.bus_port,
        shards = count,
        "replication started"
    );
    let repl = replicated::Replication {
        node: Arc::new(node),
        me,
        client_addrs,
        meta: meta_state,
        hints: Default::default(),
        placing: Default::default(),
        acl: acl.clone(),
        proposals: Default::default(),
        coordinator: Default::default(),
        peer_tls,
    };
    Ok((shards, Some(repl), Some(created_rx)))
}

/// Serves clients on `listener` until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    run_with_bus(config, listener, None, shutdown).await
}

/// As [`run`], with the cluster bus on `bus` (already bound) instead of binding
/// `config.bus_port`: tests that start many nodes hold their ports from the moment they pick
/// them, so that nothing else can take one in between.
pub async fn run_with_bus(
    config: Config,
    listener: TcpListener,
    bus: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    // TLS first: a node asked to serve TLS with files it cannot use does not start.
    let tls = if config.tls_port != 0 {
        let tls = tls::Tls::new(config.tls_files.clone())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let addr = format!("{}:{}", config.bind, config.tls_port);
        let listener = TcpListener::bind(&addr).await?;
        Some((Arc::new(tls), listener))
    } else {
        None
    };
    let admin_listener = if config.admin_port != 0 {
        Some(TcpListener::bind(format!("{}:{}", config.bind, config.admin_port)).await?)
    } else {
        None
    };
    let hub: Arc<pubsub::Hub> = Default::default();
    let table = dispatch::Table::build();
    let stats =
        stats::Stats {
            commands: stats::CommandStats::new(table.commands.iter().flat_map(|s| {
                std::iter::once(s.name.clone()).chain(s.subcommands.keys().cloned())
            })),
            ..Default::default()
        };
    let acl = Arc::new(acl::Acl::new());
    let _ = hub.acl.set(acl.clone());
    if !config.requirepass.is_empty() && config.initial_cluster.is_empty() {
        // A single node's users live here; a cluster's are set through its meta group
        // (`cmd::acl::require_password`).
        let rules = acl::hash_rules(&[
            b"resetpass".to_vec(),
            [b">".as_slice(), config.requirepass.as_bytes()].concat(),
        ]);
        acl.set_user(b"default", &rules)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    let libraries: Arc<functions::Libraries> = Default::default();
    let (shards, replication, created) = start_replication(&config, bus, &hub, &acl, &libraries)?;
    let shared = Arc::new(Shared {
        config: Mutex::new(config),
        shards,
        replication,
        table,
        clients: connection::Registry::default(),
        stats,
        reshard: Default::default(),
        pubsub: hub,
        tls: tls.as_ref().map(|(t, _)| t.clone()),
        acl,
        slowlog: Default::default(),
        scripts: Default::default(),
        functions: libraries,
        started_ms: now_ms(),
        next_client_id: AtomicU64::new(1),
        shutdown: stop_rx,
    });
    let expiry = tokio::spawn(expiry::run(shared.clone()));
    let watchdog = tokio::spawn(cmd::reshard::watchdog(shared.clone()));
    let opener = created.map(|rx| tokio::spawn(meta::open_created(shared.clone(), rx)));
    let leaders = tokio::spawn(placement::watch_leaders(shared.clone()));
    let closer = tokio::spawn(placement::close_removed(shared.clone()));
    let links = tokio::spawn(pubsub::link_peers(shared.clone()));
    let finisher = tokio::spawn(cross::finisher(shared.clone()));
    let recovery = tokio::spawn(cross::recover(shared.clone()));
    let admin = admin_listener.map(|listener| {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving the admin HTTP port");
        tokio::spawn(admin::serve(shared.clone(), listener))
    });
    let tls_listener = tls.map(|(tls, listener)| {
        tracing::info!(addr = ?listener.local_addr().ok(), "serving TLS clients");
        tokio::spawn(serve_tls(shared.clone(), tls, listener))
    });
    tracing::info!(addr = %listener.local_addr()?, commands = shared.table.len(), "cairn is serving clients");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((socket, peer)) => {
                    let shared = shared.clone();
                    tokio::spawn(async move { connection::serve(shared, socket, peer).await });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => break,
        }
    }
    // A leader hands its groups over before it goes, so the others need no election timeout.
    // Clients are still served meanwhile: requests that reach this node while raft drops
    // proposals wait and then go to the new leader.
    if let Some(repl) = &shared.replication {
        tracing::info!("shutting down: handing leadership over");
        let hand_off = repl.node.hand_off(HAND_OFF_WITHIN);
        tokio::pin!(hand_off);
        let (moved, still_leads) = loop {
            tokio::select! {
                done = &mut hand_off => break done,
                accepted = listener.accept() => if let Ok((socket, peer)) = accepted {
                    let shared = shared.clone();
                    tokio::spawn(async move { connection::serve(shared, socket, peer).await });
                },
            }
        };
        for (group, to) in moved {
            tracing::info!(group, to, "handed leadership over");
        }
        if still_leads {
            tracing::warn!(
                "still leading after {HAND_OFF_WITHIN:?}; the others will elect after a timeout"
            );
        }
    }
    // Connections finish the request they are running and close.
    let _ = stop_tx.send(true);
    expiry.abort();
    watchdog.abort();
    leaders.abort();
    closer.abort();
    links.abort();
    finisher.abort();
    recovery.abort();
    if let Some(a) = admin {
        a.abort();
    }
    if let Some(t) = tls_listener {
        t.abort();
    }
    if let Some(opener) = opener {
        opener.abort();
    }
    let deadline = tokio::time::Instant::now() + DRAIN_WITHIN;
    while !shared.clients.is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    tracing::info!(open = shared.clients.len(), "cairn stopped serving clients");
    Ok(())
}

/// Accepts TLS clients: each handshake in its own task (bounded in time, and in number by
/// `maxclients`), then the connection is served like any other.
async fn serve_tls(shared: Arc<Shared>, tls: Arc<tls::Tls>, listener: TcpListener) {
    let handshaking = Arc::new(AtomicU64::new(0));
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let limit = shared.config.lock().maxclients as u64;
                if handshaking.load(Ordering::Relaxed) >= limit {
                    // Handshakes cost CPU before any limit on clients applies: a flood of
                    // them is cut here.
                    stats::Stats::add(&shared.stats.connections_rejected, 1);
                    drop(socket);
                    continue;
                }
                handshaking.fetch_add(1, Ordering::Relaxed);
                let in_progress = handshaking.clone();
                let (shared, acceptor) = (shared.clone(), tls.acceptor());
                tokio::spawn(async move {
                    let _ = socket.set_nodelay(true);
                    let local = socket.local_addr().unwrap_or(peer);
                    let handshake = tokio::time::timeout(
                        connection::TLS_HANDSHAKE_WITHIN,
                        acceptor.accept(socket),
                    )
                    .await;
                    in_progress.fetch_sub(1, Ordering::Relaxed);
                    match handshake {
                        Ok(Ok(stream)) => {
                            connection::serve_stream(shared, stream, peer, local).await
                        }
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The longest a graceful shutdown waits for another node to take over leadership.
const HAND_OFF_WITHIN: std::time::Duration = std::time::Duration::from_secs(3);
/// The longest a graceful shutdown waits for open connections to finish their requests.
const DRAIN_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);
