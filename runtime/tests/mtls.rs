//! mtls on a running node: TLS 1.3 under the frames on the io_uring path, certificates
//! verified both ways, the identity reaching services and the zero_trust policy, refusals
//! audited and counted by intrusion detection (a ban after repeated bad certificates).

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::security::mtls::{DevPki, Mtls};
use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
use valkyrie_protocol::{Config, ErrorCode, MessageType, SecurityMode};
use valkyrie_runtime::audit::AuditLog;
use valkyrie_runtime::guard::GuardConfig;
use valkyrie_runtime::{Client, ClientConfig, ClientError, Node};

fn server_protocol(zero_trust: Option<Policy>) -> Config {
    match zero_trust {
        None => Config {
            security: vec![SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            ..Config::new("control")
        },
        Some(p) => Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
            policy: Some(Arc::new(p)),
            ..Config::new("control")
        },
    }
}

fn client_cfg(pki: &DevPki, trust: &DevPki, mode: SecurityMode) -> ClientConfig {
    common::mtls_client(
        ClientConfig::default(),
        pki,
        &trust.ca_pem,
        mode == SecurityMode::ZeroTrust,
    )
}

fn node(pki: &DevPki, protocol: Config, guard: Option<GuardConfig>, audit: Arc<AuditLog>) -> Node {
    let tls = pki.server_config(0).unwrap();
    let mut b = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(protocol)
        .tls(tls)
        .audit(audit)
        .shards(2)
        .service(|_| common::Identify);
    if let Some(g) = guard {
        b = b.guard(g);
    }
    b.start().unwrap()
}

fn audit_file(name: &str) -> (std::path::PathBuf, Arc<AuditLog>) {
    let path = std::env::temp_dir().join(format!("valkyrie-{name}-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let log = AuditLog::to_file(&path).unwrap();
    (path, log)
}

fn events(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn mtls_node_serves_a_certified_client_and_refuses_the_others() {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let rogue = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let (path, audit) = audit_file("mtls");
    let node = node(&pki, server_protocol(None), None, audit.clone());

    // Several clients, many round trips each, on both shards.
    for _ in 0..4 {
        let mut c =
            Client::connect_with(&node.url(), client_cfg(&pki, &pki, SecurityMode::Mtls)).unwrap();
        assert_eq!(
            c.peer().unwrap().identity.as_deref(),
            Some("x509:127.0.0.1")
        );
        for _ in 0..50 {
            c.ping(b"over tls").unwrap();
        }
        // A payload larger than one TLS record (16 KiB) crosses intact.
        let big = Bytes::from(vec![7u8; 100_000]);
        let r = c
            .request(
                1,
                MessageType::JobRequest,
                big.clone(),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(&r.payload[..big.len()], &big[..]);
        assert!(r.payload.ends_with(b" from x509:agent-7"));
        c.close().unwrap();
    }

    // A client certificate from another CA.
    match Client::connect_with(&node.url(), client_cfg(&rogue, &pki, SecurityMode::Mtls)) {
        Err(ClientError::Tls(_) | ClientError::Io(_) | ClientError::Closed(_)) => {}
        other => panic!("a foreign client certificate was accepted: {other:?}"),
    }
    // A client that does not trust the node's CA.
    match Client::connect_with(&node.url(), client_cfg(&pki, &rogue, SecurityMode::Mtls)) {
        Err(ClientError::Tls(e)) => assert_eq!(e.code(), ErrorCode::AUTH_FAILED, "{e}"),
        other => panic!("a foreign server certificate was accepted: {other:?}"),
    }
    // A plaintext client on the TLS listener is told, in the clear, that security is
    // required.
    match Client::connect(&node.url()) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::AUTH_REQUIRED),
        other => panic!("a plaintext client got {other:?}"),
    }
    node.shutdown();
    node.join();
    audit.close();
    let ev = events(&path);
    let ok: Vec<_> = ev.iter().filter(|e| e["event"] == "handshake_ok").collect();
    assert_eq!(ok.len(), 4, "{ev:?}");
    assert!(
        ok.iter()
            .all(|e| e["identity"] == "x509:agent-7" && e["mode"] == "mtls")
    );
    assert!(
        ev.iter()
            .any(|e| e["event"] == "auth_failure" && e["mode"] == "tls" && e["code"] == 201),
        "{ev:?}"
    );
    assert!(
        ev.iter()
            .any(|e| e["event"] == "auth_failure" && e["mode"] == "tls" && e["code"] == 200),
        "the plaintext HELLO is recorded: {ev:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn zero_trust_over_mtls_authorises_by_certificate_name() {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let (path, audit) = audit_file("zt-mtls");
    let policy = Policy::parse("x509:agent-7 JOB_REQUEST\n").unwrap();
    let node = node(&pki, server_protocol(Some(policy)), None, audit.clone());
    let mut c =
        Client::connect_with(&node.url(), client_cfg(&pki, &pki, SecurityMode::ZeroTrust)).unwrap();
    let r = c
        .request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"go"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(&r.payload[..], b"go from x509:agent-7");
    match c.request(
        3,
        MessageType::JobCancel,
        Bytes::from_static(b"stop"),
        Duration::from_secs(5),
    ) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHORISED),
        other => panic!("JOB_CANCEL was not denied: {other:?}"),
    }
    c.ping(b"still here").unwrap();
    c.close().unwrap();
    node.shutdown();
    node.join();
    audit.close();
    let ev = events(&path);
    assert!(
        ev.iter()
            .any(|e| e["event"] == "denied" && e["type"] == "JOB_CANCEL" && e["code"] == 701),
        "{ev:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn repeated_bad_certificates_get_the_address_banned() {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let rogue = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let (path, audit) = audit_file("mtls-ban");
    let node = node(
        &pki,
        server_protocol(None),
        Some(GuardConfig {
            throttle_after: 100,
            ban_after: 3,
            ban_for: Duration::from_secs(60),
            // This test bans loopback itself: empty the trusted list.
            trusted: Vec::new(),
            ..Default::default()
        }),
        audit.clone(),
    );
    for _ in 0..3 {
        assert!(
            Client::connect_with(&node.url(), client_cfg(&rogue, &pki, SecurityMode::Mtls))
                .is_err()
        );
    }
    // Even a good certificate is now refused, before any TLS, with a plaintext 702 the client
    // recognises.
    let mut refused = None;
    for _ in 0..50 {
        match Client::connect_with(&node.url(), client_cfg(&pki, &pki, SecurityMode::Mtls)) {
            Err(ClientError::Peer { code, .. }) => {
                refused = Some(code);
                break;
            }
            Ok(c) => {
                // The ban may still be on its way from the home shard over the mesh.
                drop(c);
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(refused, Some(ErrorCode::BANNED));
    node.shutdown();
    node.join();
    audit.close();
    let ev = events(&path);
    assert!(ev.iter().any(|e| e["event"] == "ban"), "{ev:?}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn token_runs_inside_tls() {
    use valkyrie_protocol::security::token::{TokenClient, TokenServer};
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let (path, audit) = audit_file("token-tls");
    let node = node(
        &pki,
        Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenServer::new([(
                "agents".to_owned(),
                b"s3cret".to_vec(),
            )]))],
            ..Config::new("control")
        },
        None,
        audit.clone(),
    );
    let mut cfg = client_cfg(&pki, &pki, SecurityMode::Mtls);
    cfg.protocol.security = vec![SecurityMode::Token];
    cfg.protocol.handshakes = vec![Arc::new(TokenClient::new("agents", b"s3cret".to_vec()))];
    let mut c = Client::connect_with(&node.url(), cfg.clone()).unwrap();
    let r = c
        .request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"hi"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(&r.payload[..], b"hi from token:agents");
    c.close().unwrap();
    // The wrong secret is still refused, inside the tunnel.
    cfg.protocol.handshakes = vec![Arc::new(TokenClient::new("agents", b"guess".to_vec()))];
    match Client::connect_with(&node.url(), cfg) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::AUTH_FAILED),
        other => panic!("a wrong secret was not refused: {other:?}"),
    }
    node.shutdown();
    node.join();
    audit.close();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn many_concurrent_tls_clients_on_both_shards() {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let (path, audit) = audit_file("mtls-many");
    let node = node(&pki, server_protocol(None), None, audit.clone());
    let url = node.url();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let (url, cfg) = (url.clone(), client_cfg(&pki, &pki, SecurityMode::Mtls));
            std::thread::spawn(move || {
                let mut c = Client::connect_with(&url, cfg).unwrap();
                for i in 0..100u32 {
                    // Sizes from one byte to several TLS records.
                    let len = 1 + (i as usize * 7919 + t * 131) % 40_000;
                    let body = Bytes::from(vec![(i % 251) as u8; len]);
                    let r = c
                        .request(
                            1,
                            MessageType::JobRequest,
                            body.clone(),
                            Duration::from_secs(10),
                        )
                        .unwrap();
                    assert_eq!(&r.payload[..len], &body[..]);
                }
                c.close().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    node.shutdown();
    node.join();
    audit.close();
    let ok = events(&path)
        .iter()
        .filter(|e| e["event"] == "handshake_ok")
        .count();
    assert_eq!(ok, 8);
    std::fs::remove_file(&path).unwrap();
}
