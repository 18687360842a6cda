//! The `valkyrie` binary run as a user runs it: a node serving pings, and its clean exit.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use valkyrie_runtime::Client;

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_cli_node_serves_pings_and_exits_cleanly_on_sigterm() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut node = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["node", "--listen", &url, "--shards", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the node to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let ping = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["ping", &url, "--count", "200"])
        .output()
        .unwrap();
    assert!(ping.status.success());
    let text = String::from_utf8_lossy(&ping.stdout);
    for q in ["p50", "p99", "p999", "max"] {
        assert!(text.contains(q), "{text}");
    }
    // A connected client is told the node is going away.
    let mut c = Client::connect(&url).unwrap();
    let kill = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let t = Instant::now();
    let status = loop {
        if let Some(s) = node.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "node did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status:?}");
    let mut saw_close = false;
    while let Ok(Some(e)) = c.next_event(Duration::from_secs(2)) {
        if let valkyrie_protocol::Event::CloseRequested { code, .. } = e {
            assert_eq!(code, valkyrie_protocol::ErrorCode::SHUTTING_DOWN.0);
            saw_close = true;
        }
    }
    assert!(saw_close, "the node sent CLOSE before exiting");
}
