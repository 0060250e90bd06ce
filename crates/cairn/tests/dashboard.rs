//! The dashboard in a real browser (Debian's Chromium, driven by playwright-core from
//! `tests/dashboard/check.mjs`) against a live three-process cluster: the nodes and shard
//! leaders it shows are those `cairn cluster status` reports; a node killed with SIGKILL
//! turns red and its shards show new leaders within seconds. Screenshots are kept in
//! `target/tmp/dashboard/` (before.png, after.png).
//!
//! Needs node, Chromium and `npm install` in tests/dashboard (`.ci/run` installs them); skipped
//! with a loud message without them, unless CAIRN_REQUIRE_BROWSER=1 (CI), where that fails.

mod common;

use common::{wait_serving, Cluster};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn browser_ready(script_dir: &Path) -> Result<(), String> {
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    if !Path::new(&chromium).exists() {
        return Err(format!(
            "no Chromium at {chromium} (apt-get install chromium)"
        ));
    }
    if Command::new("node").arg("--version").output().is_err() {
        return Err("no node on PATH".into());
    }
    if !script_dir.join("node_modules/playwright-core").exists() {
        return Err("playwright-core is not installed (cd tests/dashboard && npm install)".into());
    }
    Ok(())
}

/// `group id → leader` from `cairn cluster status`'s summary lines (the meta group is 0).
fn status_leaders(port: u16) -> BTreeMap<u64, u64> {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["cluster", "status", "--port", &port.to_string()])
        .output()
        .expect("run cairn cluster status");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .filter_map(|l| {
            let (name, rest) = l.split_once(": leader node ")?;
            let leader = rest.split(',').next()?.parse().ok()?;
            let group = if name == "meta group" {
                0
            } else {
                name.strip_prefix("group ")?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()?
            };
            Some((group, leader))
        })
        .collect()
}

fn shown_leaders(view: &serde_json::Value) -> BTreeMap<u64, u64> {
    view["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let leader = s["leader"].as_str().unwrap().parse().unwrap_or(0);
            (s["id"].as_u64().unwrap(), leader)
        })
        .collect()
}

#[test]
fn the_dashboard_shows_the_cluster_and_a_killed_node_turns_red() {
    let script_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/dashboard");
    if let Err(why) = browser_ready(&script_dir) {
        if std::env::var("CAIRN_REQUIRE_BROWSER").as_deref() == Ok("1") {
            panic!("the dashboard test cannot run: {why}");
        }
        eprintln!("\n*** SKIPPED the dashboard browser test: {why} ***\n");
        return;
    }
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap();
    let mut cluster = Cluster::with_admin(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    wait_serving(&ports, Duration::from_secs(30));
    let url = format!("http://127.0.0.1:{}/", ports[0] + 2000);
    let victim = 3;
    let mut browser = Command::new("node")
        .arg(script_dir.join("check.mjs"))
        .args([&url, out.to_str().unwrap(), "3", &victim.to_string()])
        .spawn()
        .expect("run node");
    let deadline = Instant::now() + Duration::from_secs(60);
    let before_file = out.join("before.json");
    while !before_file.exists() {
        if let Ok(Some(status)) = browser.try_wait() {
            panic!("the browser script ended early: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed the cluster"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What the page shows is what `cairn cluster status` says. Leadership may move between
    // two readings (balancing after start): both are read again until they agree, or 20 s.
    let read = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(&before_file).unwrap()).unwrap()
    };
    let agree_by = Instant::now() + Duration::from_secs(20);
    let (before, shown, status) = loop {
        let status = status_leaders(ports[1]);
        let before = read();
        let shown = shown_leaders(&before);
        if shown == status || Instant::now() > agree_by {
            break (before, shown, status);
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    let nodes: Vec<(u64, String)> = before["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["id"].as_u64().unwrap(),
                n["state"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        nodes,
        vec![(1, "up".into()), (2, "up".into()), (3, "up".into())]
    );
    assert_eq!(
        shown, status,
        "the page shows these leaders, cairn cluster status those"
    );
    println!("page and cairn cluster status agree: leaders {shown:?}");
    cluster.kill9(victim as usize - 1);
    let killed = Instant::now();
    std::fs::write(out.join("killed"), b"1").unwrap();
    let status = loop {
        if let Ok(Some(s)) = browser.try_wait() {
            break s;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(60),
            "the browser script hangs"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "the page did not show node {victim} down and new leaders"
    );
    let after: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("after.json")).unwrap()).unwrap();
    println!(
        "node {victim} shown down with new leaders {:?} {:.1} s after SIGKILL; screenshots in {}",
        shown_leaders(&after),
        after["seconds"].as_f64().unwrap_or(0.0),
        out.display()
    );
    assert!(out.join("after.png").exists() && out.join("before.png").exists());
}
