//! `cairn dev`: a local cluster for trying cairn, one child process per node.
//!
//! Node i listens for clients on base-port + i - 1 and for the cluster bus on that + 10000 (the
//! Redis Cluster convention), keeps its data in DATA_DIR/node<i>, and all nodes form one
//! replicated group. With `--nodes 1` the node is standalone (memory only, no replication).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes to start (3 gives a cluster that survives losing any one).
    #[arg(long, default_value_t = 3, env = "CAIRN_DEV_NODES")]
    nodes: u16,
    /// Client port of the first node; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001, env = "CAIRN_DEV_BASE_PORT")]
    base_port: u16,
    /// Where the nodes keep their data (one folder per node).
    #[arg(long, default_value = "./cairn-dev", env = "CAIRN_DEV_DATA_DIR")]
    data_dir: PathBuf,
}

/// A node's admin HTTP port is its client port plus this (7001 → 9001).
const ADMIN_OFFSET: u16 = 2000;

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=9).contains(&args.nodes),
        "--nodes must be between 1 and 9"
    );
    anyhow::ensure!(
        args.base_port.checked_add(10000 + args.nodes).is_some(),
        "--base-port is too high for its bus ports"
    );
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let cluster: Vec<String> = (0..args.nodes)
        .map(|i| format!("{}=127.0.0.1:{}", i + 1, args.base_port + i + 10000))
        .collect();
    let mut children = Vec::new();
    for i in 0..args.nodes {
        let id = i + 1;
        let port = args.base_port + i;
        let dir = args.data_dir.join(format!("node{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("server")
            .arg("--port")
            .arg(port.to_string())
            .arg("--admin-port")
            .arg((port + ADMIN_OFFSET).to_string())
            .arg("--data-dir")
            .arg(&dir);
        if args.nodes > 1 {
            cmd.arg("--node-id")
                .arg(id.to_string())
                .arg("--bus-port")
                .arg((port + 10000).to_string());
            cmd.arg("--initial-cluster").arg(cluster.join(","));
        }
        children.push(
            cmd.kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting node {id}"))?,
        );
    }
    if args.nodes == 1 {
        println!(
            "cairn dev: 1 standalone node (memory only; use --nodes 3 for a replicated cluster)"
        );
    } else {
        println!("cairn dev: {} nodes, the slots in one shard per node, each shard replicated (every write on a majority of its replicas' disks before it is acknowledged)", args.nodes);
    }
    for i in 0..args.nodes {
        println!(
            "  node {}: redis-cli -p {}   dashboard http://127.0.0.1:{}/   data in {}",
            i + 1,
            args.base_port + i,
            args.base_port + i + ADMIN_OFFSET,
            args.data_dir.join(format!("node{}", i + 1)).display()
        );
    }
    println!("Any node answers any command (followers relay to the leader). Press Ctrl-C to stop.");
    // A node that dies is reported, not fatal: the others keep serving (that is the point).
    let mut alive: Vec<bool> = vec![true; children.len()];
    loop {
        let mut waits: Vec<_> = children
            .iter_mut()
            .zip(&alive)
            .filter(|(_, a)| **a)
            .map(|(c, _)| Box::pin(c.wait()))
            .collect();
        let live: Vec<usize> = alive
            .iter()
            .enumerate()
            .filter(|(_, a)| **a)
            .map(|(i, _)| i)
            .collect();
        if waits.is_empty() {
            anyhow::bail!("every node exited");
        }
        tokio::select! {
            (status, k, _) = futures_select(&mut waits) => {
                let i = live[k];
                drop(waits);
                alive[i] = false;
                println!("cairn dev: node {} exited ({}); the others keep serving", i + 1, status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    for c in children.iter_mut() {
        let _ = c.start_kill();
    }
    for c in children.iter_mut() {
        let _ = c.wait().await;
    }
    println!("cairn dev: stopped");
    Ok(())
}

/// Waits for the first of several futures (a tiny select_all, to avoid a dependency).
async fn futures_select<F: std::future::Future + Unpin>(
    futures: &mut [F],
) -> (F::Output, usize, ()) {
    std::future::poll_fn(|cx| {
        for (i, f) in futures.iter_mut().enumerate() {
            if let std::task::Poll::Ready(out) = std::pin::Pin::new(f).poll(cx) {
                return std::task::Poll::Ready((out, i, ()));
            }
        }
        std::task::Poll::Pending
    })
    .await
}
