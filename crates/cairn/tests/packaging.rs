//! The packaging files (`packaging/`) cannot run here; what can be checked is: the YAML and
//! JSON parse, every `cairn server` flag they pass exists, and every metric the Grafana
//! dashboard queries is exported by a running node.

mod common;

use std::path::PathBuf;
use std::process::Command;

fn packaging() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../packaging")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(packaging().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The `--flags` `cairn server --help` lists.
fn server_flags() -> Vec<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--help"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .collect()
}

#[test]
fn every_flag_the_packaging_passes_exists() {
    let known = server_flags();
    assert!(
        known.contains(&"--initial-cluster".to_string()),
        "{known:?}"
    );
    let mut checked = 0;
    for file in [
        "Dockerfile",
        "docker-compose.yml",
        "k8s/cairn.yaml",
        "systemd/cairn.service",
    ] {
        // The lines that start a node: the image's ENTRYPOINT, Compose's commands, the
        // StatefulSet's shell line and its continuation, systemd's ExecStart.
        let runs_cairn = |l: &str| {
            let t = l.trim_start();
            t.starts_with("ENTRYPOINT")
                || t.starts_with("command:")
                || t.starts_with("exec cairn server")
                || (t.starts_with("--") && !t.starts_with("---"))
                || t.starts_with("ExecStart=")
        };
        let text: String = read(file)
            .lines()
            .filter(|l| runs_cairn(l))
            .collect::<Vec<_>>()
            .join("\n");
        for word in text.split(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '[') {
            if word.starts_with("--") && word.len() > 2 {
                assert!(
                    known.iter().any(|k| k == word),
                    "{file}: {word} is no flag of cairn server"
                );
                checked += 1;
            }
        }
    }
    assert!(checked > 20, "{checked}");
}

#[test]
fn the_yaml_and_json_parse() {
    let json: serde_json::Value =
        serde_json::from_str(&read("grafana/cairn-dashboard.json")).unwrap();
    assert!(json["panels"].as_array().is_some_and(|p| p.len() >= 8));
    // YAML: parsed by PyYAML (.ci/run installs it), every
    // document, and the Kubernetes kinds the issue asks for are all there.
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_yaml {
        if std::env::var("CAIRN_REQUIRE_TOOLS").as_deref() == Ok("1") {
            panic!("PyYAML is needed (pip install pyyaml)");
        }
        eprintln!("\n*** SKIPPED the YAML check: no PyYAML (pip install pyyaml) ***\n");
        return;
    }
    let script = "import sys, yaml\n\
        kinds = []\n\
        for path in sys.argv[1:]:\n\
        \x20   for doc in yaml.safe_load_all(open(path)):\n\
        \x20       kinds.append(doc.get('kind', 'compose'))\n\
        print(' '.join(kinds))\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(packaging().join("docker-compose.yml"))
        .arg(packaging().join("k8s/cairn.yaml"))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kinds = String::from_utf8_lossy(&out.stdout).to_string();
    for kind in ["compose", "Service", "StatefulSet", "PodDisruptionBudget"] {
        assert!(
            kinds.split_whitespace().any(|k| k == kind),
            "{kind} missing: {kinds}"
        );
    }
}

#[test]
fn every_metric_the_grafana_dashboard_queries_is_exported() {
    let json: serde_json::Value =
        serde_json::from_str(&read("grafana/cairn-dashboard.json")).unwrap();
    let mut wanted = std::collections::BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("cairn_") {
                    wanted.insert(word.trim_end_matches("_bucket").to_string());
                }
            }
        }
    }
    let cluster = common::Cluster::with_admin(&[]);
    let ports: Vec<u16> = cluster.procs.iter().map(|p| p.port).collect();
    common::wait_serving(&ports, std::time::Duration::from_secs(30));
    let metrics = http_get(ports[0] + 2000, "/metrics");
    for m in &wanted {
        assert!(
            metrics.contains(&format!("# TYPE {m} ")),
            "the dashboard queries {m}, which /metrics does not export"
        );
    }
    println!(
        "{} metrics the dashboard queries are exported",
        wanted.len()
    );
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}
