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
