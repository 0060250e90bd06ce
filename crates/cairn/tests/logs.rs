//! Structured logs: with CAIRN_LOG_FORMAT=json every line a node writes is one JSON object
//! with a level, a message and the event's fields.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn logs_are_json_lines_when_asked() {
    let port = common::pick_ports(1)[0];
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .env("CAIRN_LOG_FORMAT", "json")
        .env("CAIRN_LOG", "info")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{line}"
        );
        seen.push(v);
        if seen
            .iter()
            .any(|v| v["fields"]["message"] == "cairn is serving clients")
        {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let serving = seen
        .iter()
        .find(|v| v["fields"]["message"] == "cairn is serving clients")
        .unwrap_or_else(|| panic!("no serving line in {seen:?}"));
    // The event's fields are fields, not text to parse.
    assert!(serving["fields"]["addr"].is_string(), "{serving}");
}
