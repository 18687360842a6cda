//! Agents over QUIC and over shared memory: `valkyrie control-plane --listen quic://…` with a
//! certificate made by `valkyrie keygen`, and `valkyrie agent --connect quic://… --tls-ca` —
//! the agent's link is a QUIC connection from its shard's own endpoint; `--listen shm://NAME`
//! and `--connect shm://NAME,tcp://…` — the link maps the control plane's segment. Jobs run on
//! them with their output complete.

use std::net::UdpSocket;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

use common::jobs::{Cluster, lines_of};

fn keygen(dir: &Path, args: &[&str]) {
    let ok = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .arg("keygen")
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "keygen {args:?}");
}

#[test]
fn agents_reach_the_control_plane_over_quic_and_run_its_jobs() {
    // A UDP port nobody holds (the TCP port of the same number is the cluster's own).
    let quic_port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let quic = format!("quic://127.0.0.1:{quic_port}");
    let listen = quic.clone();
    let c = Cluster::start_with("jobs-quic", 2000, move |dir| {
        keygen(dir, &["ca", "ca"]);
        keygen(
            dir,
            &[
                "cert",
                "plane",
                "--ca",
                "ca",
                "--subject",
                "127.0.0.1",
                "--role",
                "server",
            ],
        );
        vec![
            "--listen".into(),
            listen,
            // QUIC's certificate alone: the TCP listener (the HTTP API) stays plain.
            "--quic-cert".into(),
            dir.join("plane.crt").display().to_string(),
            "--quic-key".into(),
            dir.join("plane.key").display().to_string(),
        ]
    });
    let ca = c.dir.join("ca.crt").display().to_string();
    let _a = c.agent_with("quic-1", &["linux"], 2, &quic, &["--tls-ca", &ca]);
    let _b = c.agent_with("quic-2", &["linux"], 2, &quic, &["--tls-ca", &ca]);
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.agents().iter().filter(|a| a["connected"] == true).count() < 2 {
        assert!(Instant::now() < deadline, "agents: {:?}", c.agents());
        std::thread::sleep(Duration::from_millis(20));
    }
    let ids: Vec<String> = (0..6)
        .map(|i| {
            c.submit(&json!({
                "command": ["sh", "-c", format!("for n in 1 2 3; do echo job{i} line $n; done")],
                "labels": ["linux"],
            }))
        })
        .collect();
    for (i, id) in ids.iter().enumerate() {
        let job = c.wait_state(id, "succeeded", 30);
        let agent = job["attempts"][0]["agent"].as_str().unwrap_or_default();
        assert!(agent.starts_with("quic-"), "{job}");
        let lines = lines_of(&c.logs(id), "stdout");
        assert_eq!(
            lines,
            (1..=3)
                .map(|n| format!("job{i} line {n}"))
                .collect::<Vec<_>>()
        );
    }
    // The agents' connections are QUIC ones.
    let metrics = c.metrics();
    let quic_active = metrics
        .lines()
        .find(|l| l.starts_with("valkyrie_connections_active") && l.contains("quic"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        quic_active.ends_with(" 2"),
        "two agents on QUIC: {quic_active:?}"
    );
}

#[test]
fn an_agent_on_the_control_planes_host_reaches_it_over_shared_memory() {
    let name = format!("shm://jobs-shm-{}", std::process::id());
    let listen = name.clone();
    let c = Cluster::start_with("jobs-shm", 2000, move |_| vec!["--listen".into(), listen]);
    // Shared memory first, the control plane's TCP port after it.
    let urls = format!("{name},tcp://127.0.0.1:{}", c.port);
    let _a = c.agent_to("local", &["linux"], 2, &urls);
    let deadline = Instant::now() + Duration::from_secs(15);
    while c.agents().iter().filter(|a| a["connected"] == true).count() < 1 {
        assert!(Instant::now() < deadline, "agents: {:?}", c.agents());
        std::thread::sleep(Duration::from_millis(20));
    }
    let id = c.submit(&json!({"command": ["sh", "-c", "echo over the segment"]}));
    let job = c.wait_state(&id, "succeeded", 30);
    assert_eq!(job["attempts"][0]["agent"], "local", "{job}");
    assert_eq!(lines_of(&c.logs(&id), "stdout"), ["over the segment"]);
    let metrics = c.metrics();
    let on_shm = metrics
        .lines()
        .find(|l| l.starts_with("valkyrie_connections_active") && l.contains("\"shm\""))
        .unwrap_or_default()
        .to_owned();
    assert!(
        on_shm.ends_with(" 1"),
        "the agent on shared memory: {on_shm:?}"
    );
}
