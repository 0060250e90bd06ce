//! `cairn dev`: a local cluster for trying cairn, one child process per node.
//!
//! Until replication lands, nodes do not form one cluster: `--nodes` other than 1 is refused
//! with an explanation, and the one node runs as a child process with its data under
//! `--data-dir`.

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DevArgs {
    /// How many nodes to start.
    #[arg(long, default_value_t = 1, env = "CAIRN_DEV_NODES")]
    nodes: usize,
    /// Client port of the first node; node i listens on base-port + i - 1.
    #[arg(long, default_value_t = 7001, env = "CAIRN_DEV_BASE_PORT")]
    base_port: u16,
    /// Where the nodes keep their data (one folder per node).
    #[arg(long, default_value = "./cairn-dev", env = "CAIRN_DEV_DATA_DIR")]
    data_dir: PathBuf,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes != 1 {
        anyhow::bail!(
            "cairn dev --nodes {}: multi-node clusters arrive with replication; this build runs a single node (use --nodes 1)",
            args.nodes
        );
    }
    let exe = std::env::current_exe().context("finding the cairn binary")?;
    let dir = args.data_dir.join("node1");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut child = tokio::process::Command::new(exe)
        .arg("server")
        .arg("--port")
        .arg(args.base_port.to_string())
        .arg("--data-dir")
        .arg(&dir)
        .kill_on_drop(true)
        .spawn()
        .context("starting node 1")?;
    println!("cairn dev: 1 node (single-node mode: replication is not built yet)");
    println!(
        "  node 1: redis-cli -p {}   data in {}",
        args.base_port,
        dir.display()
    );
    println!("Press Ctrl-C to stop.");
    tokio::select! {
        status = child.wait() => anyhow::bail!("node 1 exited: {}", status?),
        _ = tokio::signal::ctrl_c() => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            println!("cairn dev: stopped");
        }
    }
    Ok(())
}
