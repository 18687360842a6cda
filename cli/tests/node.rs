//! The `valkyrie` binary run as a user runs it: a node serving pings, and its clean exit.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use valkyrie_runtime::Client;

mod common;
use common::{free_port, valkyrie_listening, wait_until};

/// `valkyrie node --listen tcp://127.0.0.1:PORT EXTRA...` on a free port, once it listens:
/// the process, the port and the URL.
fn spawn_node(extra: &[&str]) -> (std::process::Child, u16, String) {
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut args = vec!["node", "--listen", &url];
    args.extend_from_slice(extra);
    (valkyrie_listening(args, port), port, url)
}

#[test]
fn the_cli_node_serves_pings_and_exits_cleanly_on_sigterm() {
    let (mut node, _port, url) = spawn_node(&["--shards", "2"]);
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

/// `valkyrie keygen ...` in `dir`.
fn keygen(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A blocking mtls client with `agent` (its .crt and .key in `dir`) trusting the CA `ca`.
fn mtls_client(
    url: &str,
    dir: &std::path::Path,
    agent: &str,
    ca: &str,
) -> Result<valkyrie_runtime::Client, valkyrie_runtime::ClientError> {
    use std::sync::Arc;
    use valkyrie_protocol::security::mtls::{self, Mtls};
    let read = |f: String| std::fs::read(dir.join(f)).unwrap();
    let base = valkyrie_runtime::ClientConfig::default();
    let cfg = valkyrie_runtime::ClientConfig {
        protocol: valkyrie_protocol::Config {
            security: vec![valkyrie_protocol::SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            ..base.protocol.clone()
        },
        tls: Some(
            mtls::client_config(
                &read(format!("{agent}.crt")),
                &read(format!("{agent}.key")),
                &read(format!("{ca}.crt")),
            )
            .unwrap(),
        ),
        ..base
    };
    Client::connect_with(url, cfg)
}

#[test]
fn sighup_reloads_the_certificate_for_new_connections_and_keeps_the_old_ones() {
    let dir = std::env::temp_dir().join(format!("valkyrie-sighup-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&dir, &["ca", "ca1"]);
    keygen(
        &dir,
        &[
            "cert",
            "node1",
            "--ca",
            "ca1",
            "--subject",
            "127.0.0.1",
            "--role",
            "server",
        ],
    );
    keygen(
        &dir,
        &[
            "cert",
            "agent1",
            "--ca",
            "ca1",
            "--subject",
            "agent",
            "--role",
            "client",
        ],
    );
    keygen(&dir, &["ca", "ca2"]);
    keygen(
        &dir,
        &[
            "cert",
            "node2",
            "--ca",
            "ca2",
            "--subject",
            "127.0.0.1",
            "--role",
            "server",
        ],
    );
    keygen(
        &dir,
        &[
            "cert",
            "agent2",
            "--ca",
            "ca2",
            "--subject",
            "agent",
            "--role",
            "client",
        ],
    );
    // The files the node is started with.
    for (from, to) in [
        ("node1.crt", "node.crt"),
        ("node1.key", "node.key"),
        ("ca1.crt", "clients.crt"),
    ] {
        std::fs::copy(dir.join(from), dir.join(to)).unwrap();
    }
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut node = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args([
            "node",
            "--listen",
            &url,
            "--shards",
            "1",
            "--security",
            "mtls",
        ])
        .args([
            "--tls-cert",
            "node.crt",
            "--tls-key",
            "node.key",
            "--tls-ca",
            "clients.crt",
        ])
        .current_dir(&dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until("the node to listen", || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut before = mtls_client(&url, &dir, "agent1", "ca1").unwrap();
    before.ping(b"1").unwrap();
    let hup = |node: &std::process::Child| {
        let s = Command::new("kill")
            .args(["-HUP", &node.id().to_string()])
            .status()
            .unwrap();
        assert!(s.success());
    };

    // New files, then SIGHUP: new connections get the new certificate.
    for (from, to) in [
        ("node2.crt", "node.crt"),
        ("node2.key", "node.key"),
        ("ca2.crt", "clients.crt"),
    ] {
        std::fs::copy(dir.join(from), dir.join(to)).unwrap();
    }
    hup(&node);
    wait_until("the new certificate", || {
        mtls_client(&url, &dir, "agent2", "ca2").is_ok()
    });
    assert!(
        mtls_client(&url, &dir, "agent1", "ca1").is_err(),
        "the old certificate is gone"
    );
    before
        .ping(b"2")
        .expect("the connection made before the reload stays up");

    // A broken file is refused: the node keeps the material it has.
    std::fs::write(dir.join("node.crt"), b"not a certificate").unwrap();
    hup(&node);
    std::thread::sleep(Duration::from_millis(300));
    let mut after = mtls_client(&url, &dir, "agent2", "ca2").unwrap();
    after.ping(b"3").unwrap();
    before.ping(b"4").unwrap();
    assert!(
        node.try_wait().unwrap().is_none(),
        "the node is still running"
    );

    Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status()
        .unwrap();
    let out = node.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("reloaded"), "{log}");
    assert!(log.contains("reload refused"), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_echo_node_answers_frames_and_http_on_one_port() {
    let (mut node, port, url) = spawn_node(&["--shards", "1", "--echo"]);
    let mut c = Client::connect(&url).unwrap();
    let answer = c
        .request(
            7,
            valkyrie_protocol::MessageType::LogEntry,
            bytes::Bytes::from_static(b"echo me"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(answer.msg_type(), valkyrie_protocol::MessageType::LogEntry);
    assert_eq!(&answer.payload[..], b"echo me");
    let health = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            &format!("http://127.0.0.1:{port}/healthz"),
        ])
        .output()
        .expect("curl runs");
    let body = String::from_utf8_lossy(&health.stdout);
    assert!(body.contains("\"healthy\":true"), "{body}");
    let _ = c.close();
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn a_token_node_serves_http_clients_with_a_minted_bearer_token() {
    let dir = std::env::temp_dir().join(format!("valkyrie-bearer-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    keygen(&dir, &["token", "tokens", "--key-id", "agents"]);
    let file = dir.join("tokens");
    let file = file.to_str().unwrap();
    let (mut node, port, _url) = spawn_node(&[
        "--shards",
        "1",
        "--echo",
        "--security",
        "token",
        "--token-file",
        file,
    ]);
    let mint = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["token", "mint", "--token-file", file, "--ttl-secs", "60"])
        .output()
        .unwrap();
    assert!(
        mint.status.success(),
        "{}",
        String::from_utf8_lossy(&mint.stderr)
    );
    let token = String::from_utf8(mint.stdout).unwrap().trim().to_owned();
    assert!(token.starts_with("agents."), "{token}");
    let status = |auth: Option<&str>, path: &str, body: Option<&str>| {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ]);
        if let Some(a) = auth {
            cmd.arg("-H").arg(format!("authorization: Bearer {a}"));
        }
        if let Some(b) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{port}{path}"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert_eq!(status(None, "/healthz", None), "401");
    assert_eq!(status(Some(&token), "/healthz", None), "200");
    let job = r#"{"job_id": "j1", "spec": {"command": ["true"]}}"#;
    assert_eq!(
        status(Some(&token), "/api/v1/messages/job_request", Some(job)),
        "200"
    );
    // One changed digit of the MAC, and the token is refused.
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(status(Some(&forged), "/healthz", None), "401");
    let _ = node.kill();
    let _ = node.wait();
    let _ = std::fs::remove_dir_all(&dir);
}
