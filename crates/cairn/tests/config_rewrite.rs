//! CONFIG REWRITE: settings changed with CONFIG SET are written into the `--config` file,
//! its other lines kept, and a node restarted from the file has them.

mod common;

use common::{Answer, Conn};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn start(config: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .args(["server", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn connect(port: u16) -> Conn {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(mut c) = Conn::open(port) {
            if c.call(&[b"PING"]) == Some(Answer::Ok) {
                return c;
            }
        }
        assert!(Instant::now() < deadline, "the node did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn get(c: &mut Conn, name: &str) -> String {
    match c.call(&[b"CONFIG", b"GET", name.as_bytes()]) {
        Some(Answer::Array(v)) => match v.get(1) {
            Some(Answer::Value(Some(b))) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("{other:?}"),
        },
        other => panic!("{other:?}"),
    }
}

#[test]
fn config_rewrite_keeps_what_config_set_changed_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::pick_ports(1)[0];
    let path = dir.path().join("cairn.toml");
    let original = format!(
        "# my node\nport = {port}\ndata_dir = {:?}\nmaxclients = 50\n",
        dir.path().join("data").display().to_string()
    );
    std::fs::write(&path, &original).unwrap();
    let mut node = start(&path);
    let mut c = connect(port);
    assert_eq!(get(&mut c, "maxclients"), "50");
    for (k, v) in [
        ("maxclients", "123"),
        ("timeout", "7"),
        ("protected-mode", "no"),
    ] {
        assert_eq!(
            c.call(&[b"CONFIG", b"SET", k.as_bytes(), v.as_bytes()]),
            Some(Answer::Ok)
        );
    }
    assert_eq!(c.call(&[b"CONFIG", b"REWRITE"]), Some(Answer::Ok));
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.starts_with("# my node\n"), "{text}");
    assert!(text.contains(&format!("port = {port}\n")), "{text}");
    assert!(
        text.contains("maxclients = 123\n") && !text.contains("maxclients = 50"),
        "{text}"
    );
    assert!(
        text.contains("timeout = 7\n") && text.contains("protected_mode = \"no\"\n"),
        "{text}"
    );
    let _ = node.kill();
    let _ = node.wait();
    let mut node = start(&path);
    let mut c = connect(port);
    assert_eq!(get(&mut c, "maxclients"), "123");
    assert_eq!(get(&mut c, "timeout"), "7");
    assert_eq!(get(&mut c, "protected-mode"), "no");
    let _ = node.kill();
    let _ = node.wait();
}
