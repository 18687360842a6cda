//! Security modes on a running node, over TCP and shared memory.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
use valkyrie_protocol::security::token::{TokenClient, TokenServer};
use valkyrie_protocol::{Config, ErrorCode, MessageType, SecurityMode};
use valkyrie_runtime::{Client, ClientConfig, ClientError, Node};

fn client_cfg(
    mode: SecurityMode,
    p: Arc<dyn valkyrie_protocol::security::HandshakeProvider>,
) -> ClientConfig {
    let base = ClientConfig::default();
    let protocol = Config {
        security: vec![mode],
        handshakes: vec![p],
        ..base.protocol.clone()
    };
    ClientConfig { protocol, ..base }
}

#[test]
fn noise_xk_node_serves_tcp_and_shm_clients_and_refuses_strangers() {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let shm = format!("shm://sec-noise-{}", std::process::id());
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen(&shm)
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::NoiseXk],
            handshakes: vec![Arc::new(
                NoiseXk::server(sk.clone()).allow_clients([ck.public]),
            )],
            ..Config::new("control")
        })
        .shards(2)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let good = client_cfg(
        SecurityMode::NoiseXk,
        Arc::new(NoiseXk::client(ck.clone(), sk.public)),
    );
    for url in [node.url(), shm.clone()] {
        let mut c = Client::connect_with(&url, good.clone()).unwrap();
        for _ in 0..20 {
            c.ping(b"sealed").unwrap();
        }
        let r = c
            .request(
                1,
                MessageType::JobRequest,
                Bytes::from_static(b"build 42"),
                Duration::from_secs(5),
            )
            .unwrap();
        let text = String::from_utf8(r.payload.to_vec()).unwrap();
        assert!(text.starts_with("build 42 from noise:"), "{text}");
        c.close().unwrap();
    }
    // A client that trusts another server key.
    let other = NoiseKeypair::generate();
    let bad = client_cfg(
        SecurityMode::NoiseXk,
        Arc::new(NoiseXk::client(ck, other.public)),
    );
    assert!(Client::connect_with(&node.url(), bad).is_err());
    // A plaintext client.
    match Client::connect(&node.url()) {
        Err(ClientError::Peer { code, .. }) => {
            assert_eq!(code, ErrorCode::UNSUPPORTED_SECURITY_MODE)
        }
        other => panic!("plaintext client was not refused: {other:?}"),
    }
    node.shutdown();
    node.join();
}

#[test]
fn token_node_accepts_the_right_secret_only() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenServer::new([(
                "agents".to_owned(),
                b"s3cret".to_vec(),
            )]))],
            ..Config::new("control")
        })
        .shards(1)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let good = client_cfg(
        SecurityMode::Token,
        Arc::new(TokenClient::new("agents", b"s3cret".to_vec())),
    );
    let mut c = Client::connect_with(&node.url(), good).unwrap();
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
    let bad = client_cfg(
        SecurityMode::Token,
        Arc::new(TokenClient::new("agents", b"guess".to_vec())),
    );
    match Client::connect_with(&node.url(), bad) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::AUTH_FAILED),
        other => panic!("a wrong secret was not refused: {other:?}"),
    }
    node.shutdown();
    node.join();
}

#[test]
fn zero_trust_node_denies_by_policy_with_701_and_audits_it() {
    use valkyrie_protocol::security::noise_xk::hex;
    use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
    use valkyrie_runtime::audit::AuditLog;
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let path = std::env::temp_dir().join(format!("valkyrie-zt-{}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let audit = AuditLog::to_file(&path).unwrap();
    let policy = Policy::parse(&format!("noise:{} JOB_REQUEST", hex(&ck.public))).unwrap();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(NoiseXk::server(sk.clone())))],
            policy: Some(Arc::new(policy)),
            ..Config::new("control")
        })
        .audit(audit.clone())
        .shards(1)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let cfg = client_cfg(
        SecurityMode::ZeroTrust,
        Arc::new(ZeroTrust::over(NoiseXk::client(ck, sk.public))),
    );
    let mut c = Client::connect_with(&node.url(), cfg).unwrap();
    let r = c
        .request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"go"),
            Duration::from_secs(5),
        )
        .unwrap();
    assert!(r.payload.starts_with(b"go from noise:"));
    match c.request(
        3,
        MessageType::JobCancel,
        Bytes::from_static(b"stop"),
        Duration::from_secs(5),
    ) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::UNAUTHORISED),
        other => panic!("JOB_CANCEL was not denied: {other:?}"),
    }
    // The connection stays usable after a denial.
    c.ping(b"still here").unwrap();
    c.close().unwrap();
    node.shutdown();
    node.join();
    audit.close();
    let log = std::fs::read_to_string(&path).unwrap();
    let denied: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "denied")
        .collect();
    assert_eq!(denied.len(), 1, "{log}");
    assert_eq!(denied[0]["type"], "JOB_CANCEL");
    assert_eq!(denied[0]["code"], 701);
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn builders_refuse_a_mode_offered_without_its_provider() {
    use valkyrie_protocol::connection::ConfigError;
    // A node that would accept token with no token provider does not start.
    let err = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Token, SecurityMode::Plaintext],
            ..Config::new("control")
        })
        .shards(1)
        .start()
        .expect_err("token has no provider");
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<ConfigError>());
    assert_eq!(
        inner,
        Some(&ConfigError::MissingProvider(SecurityMode::Token))
    );

    // A client with a provider for a mode it does not offer is refused before connecting
    // (the URL needs no node: nothing is sent).
    let cfg = ClientConfig {
        protocol: Config {
            security: vec![SecurityMode::Plaintext],
            handshakes: vec![Arc::new(TokenClient::new("agents", b"s3cret".to_vec()))],
            ..Config::new("agent")
        },
        ..ClientConfig::default()
    };
    match Client::connect_with("tcp://127.0.0.1:9", cfg) {
        Err(ClientError::Config(ConfigError::UnusedProvider(SecurityMode::Token))) => {}
        other => panic!("an unused provider was not refused: {other:?}"),
    }

    // The same node with its provider starts, and a plaintext client is still served.
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Token, SecurityMode::Plaintext],
            handshakes: vec![Arc::new(TokenServer::new([(
                "agents".to_owned(),
                b"s3cret".to_vec(),
            )]))],
            ..Config::new("control")
        })
        .shards(1)
        .start()
        .unwrap();
    let mut c = Client::connect(&node.url()).unwrap();
    c.ping(b"x").unwrap();
    c.close().unwrap();
    node.shutdown();
    node.join();
}
