//! Intrusion detection and the audit log on a running node: failures from one address are
//! counted, the address is banned (702) on every shard, the ban ends after its period, and
//! every decision is a JSON line in the audit log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use valkyrie_protocol::security::token::{TokenClient, TokenServer};
use valkyrie_protocol::{Config, ErrorCode, SecurityMode};
use valkyrie_runtime::audit::AuditLog;
use valkyrie_runtime::guard::GuardConfig;
use valkyrie_runtime::{Client, ClientConfig, ClientError, Node};

fn client(secret: &[u8]) -> ClientConfig {
    let base = ClientConfig::default();
    ClientConfig {
        protocol: Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenClient::new("agents", secret.to_vec()))],
            ..base.protocol.clone()
        },
        ..base
    }
}

fn code(r: Result<Client, ClientError>) -> Option<u16> {
    match r {
        Ok(_) => None,
        Err(ClientError::Peer { code, .. }) => Some(code.0),
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

#[test]
fn repeated_failures_ban_an_address_until_the_period_ends() {
    let path = std::env::temp_dir().join(format!("valkyrie-audit-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let audit = AuditLog::to_file(&path).unwrap();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenServer::new([(
                "agents".to_owned(),
                b"right".to_vec(),
            )]))],
            ..Config::new("control")
        })
        .guard(GuardConfig {
            throttle_after: 100,
            ban_after: 3,
            ban_for: Duration::from_millis(1500),
            // This test bans loopback itself: empty the trusted list.
            trusted: Vec::new(),
            ..GuardConfig::default()
        })
        .audit(audit.clone())
        .shards(2)
        .start()
        .unwrap();
    let url = node.url();
    assert_eq!(code(Client::connect_with(&url, client(b"right"))), None);
    // Three wrong secrets (whichever shard each lands on) ban 127.0.0.1 everywhere.
    for _ in 0..3 {
        assert_eq!(
            code(Client::connect_with(&url, client(b"wrong"))),
            Some(ErrorCode::AUTH_FAILED.0)
        );
    }
    let banned_at = Instant::now();
    // The home shard of 127.0.0.1 counts the failures and broadcasts the ban: give the mesh
    // a moment.
    std::thread::sleep(Duration::from_millis(20));
    // Now even the right secret is refused, on every shard.
    for _ in 0..6 {
        assert_eq!(
            code(Client::connect_with(&url, client(b"right"))),
            Some(ErrorCode::BANNED.0)
        );
    }
    // After the period the address is served again.
    std::thread::sleep(Duration::from_millis(1600).saturating_sub(banned_at.elapsed()));
    assert_eq!(code(Client::connect_with(&url, client(b"right"))), None);
    node.shutdown();
    node.join();
    audit.close();
    let log = std::fs::read_to_string(&path).unwrap();
    let events: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let count = |e: &str| events.iter().filter(|v| v["event"] == e).count();
    assert_eq!(count("auth_failure"), 3, "{log}");
    assert_eq!(count("ban"), 1, "{log}");
    assert_eq!(count("refused"), 6, "{log}");
    assert_eq!(count("handshake_ok"), 2, "{log}");
    let ok = events
        .iter()
        .find(|v| v["event"] == "handshake_ok")
        .unwrap();
    assert_eq!(ok["identity"], "token:agents");
    assert_eq!(ok["peer"], "127.0.0.1");
    assert_eq!(ok["mode"], "token");
    let fail = events
        .iter()
        .find(|v| v["event"] == "auth_failure")
        .unwrap();
    assert_eq!(fail["code"], 201);
    assert!(fail["ts"].as_u64().unwrap() > 1_700_000_000_000);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_ban_is_logged_with_its_reason_and_counted_in_the_metrics() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenServer::new([(
                "agents".to_owned(),
                b"right".to_vec(),
            )]))],
            ..Config::new("control")
        })
        .guard(GuardConfig {
            throttle_after: 2,
            throttle_interval: Duration::from_secs(60),
            ban_after: 3,
            ban_for: Duration::from_secs(60),
            trusted: Vec::new(),
            ..GuardConfig::default()
        })
        .shards(1)
        .start()
        .unwrap();
    let url = node.url();
    for _ in 0..2 {
        assert_eq!(
            code(Client::connect_with(&url, client(b"wrong"))),
            Some(ErrorCode::AUTH_FAILED.0)
        );
    }
    // Throttled now: the first connection of the interval is served (and fails), the next
    // is refused.
    assert_eq!(
        code(Client::connect_with(&url, client(b"wrong"))),
        Some(ErrorCode::AUTH_FAILED.0)
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        code(Client::connect_with(&url, client(b"right"))),
        Some(ErrorCode::BANNED.0)
    );
    let text = node.metrics_text();
    for (event, n) in [("throttle", 1), ("ban", 1), ("refused_banned", 1)] {
        let line = format!("valkyrie_intrusion_events_total{{event=\"{event}\"}} {n}");
        assert!(text.contains(&line), "{line} missing from:\n{text}");
    }
    node.shutdown();
    node.join();
}

#[test]
fn loopback_is_trusted_by_default_so_malformed_local_peers_lock_nobody_out() {
    use std::io::{Read, Write};
    let path = std::env::temp_dir().join(format!(
        "valkyrie-audit-trusted-{}.jsonl",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&path);
    let audit = AuditLog::to_file(&path).unwrap();
    // The guard with its defaults: ban after 10 failures, loopback trusted.
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .guard(GuardConfig::default())
        .audit(audit.clone())
        .shards(2)
        .start()
        .unwrap();
    let addr = node.url().trim_start_matches("tcp://").to_owned();
    // A conformance run of malformed frames: each answered with its ERROR, then closed.
    let bad: [(&[u8], u16); 3] = [
        (b"XX\x02\x02\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 100),
        (b"RC\x09\x02\x00\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 101),
        (b"RC\x02\x02\xC0\x80\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", 105),
    ];
    for round in 0..10 {
        for (frame, want) in bad {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(frame).unwrap();
            let mut answer = Vec::new();
            let _ = s.read_to_end(&mut answer);
            assert!(
                answer.len() >= 24,
                "round {round}: no ERROR for code {want}"
            );
            let f = valkyrie_protocol::Frame::decode(&mut bytes::Bytes::from(answer), 1 << 20)
                .unwrap()
                .unwrap();
            let e = <valkyrie_protocol::message::ErrorPayload as valkyrie_protocol::message::Payload>::from_bytes(&f.payload).unwrap();
            assert_eq!(e.code, want);
        }
    }
    // Then 500 connections from 127.0.0.1: every one served.
    for i in 0..500 {
        let mut c = Client::connect(&node.url()).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        c.ping(b"still here").unwrap();
        c.close().unwrap();
    }
    assert!(
        node.metrics_text()
            .contains("valkyrie_intrusion_events_total{event=\"ban\"} 0")
    );
    node.shutdown();
    node.join();
    audit.close();
    let log = std::fs::read_to_string(&path).unwrap();
    let count = |e: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("\"event\":\"{e}\"")))
            .count()
    };
    assert_eq!(
        count("malformed"),
        30,
        "every malformed frame is still audited"
    );
    assert_eq!(
        count("ban") + count("throttle") + count("refused"),
        0,
        "{log}"
    );
    std::fs::remove_file(&path).unwrap();
}
