//! QUIC on a running node: the frames on the first bidirectional stream of a QUIC
//! connection served by the shards' own UDP loops (quinn-proto, no other runtime), with the
//! server alone authenticated or both sides (`mtls`, the client certificate's identity
//! reaching the service); a client whose UDP port changes under it (the kernel hashes it to
//! another shard, which forwards its datagrams to the owner); a resumed client's HELLO in
//! 0-RTT.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::security::mtls::{self, DevPki};
use valkyrie_runtime::quic::QuicSocket;
use valkyrie_runtime::transport::ClientSocket;
use valkyrie_runtime::{Client, ClientConfig, Node};

fn server_only_node(pki: &DevPki, shards: usize) -> Node {
    let tls =
        mtls::server_config_without_client_auth(&pki.server_chain_pem(0), &pki.server_key_pem(0))
            .unwrap();
    Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .quic_tls(tls, false)
        .shards(shards)
        .service(|_| common::Accept)
        .start()
        .unwrap()
}

fn server_only_client(pki: &DevPki) -> ClientConfig {
    ClientConfig {
        tls: Some(mtls::server_only_client_config(&pki.ca_pem).unwrap()),
        tls_server_name: Some("node-a".into()),
        ..ClientConfig::default()
    }
}

fn job(client: &mut Client, body: &'static [u8]) -> Bytes {
    let f = client
        .request(
            0,
            MessageType::JobRequest,
            Bytes::from_static(body),
            Duration::from_secs(5),
        )
        .unwrap();
    assert_eq!(f.msg_type(), MessageType::JobAccept);
    f.payload
}

#[test]
fn a_quic_client_is_served_with_the_node_alone_authenticated() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let node = server_only_node(&pki, 2);
    let url = node.endpoints()[0].to_string();
    assert!(url.starts_with("quic://127.0.0.1:"), "{url}");
    let mut clients: Vec<Client> = (0..8)
        .map(|_| Client::connect_with(&url, server_only_client(&pki)).unwrap())
        .collect();
    for _ in 0..50 {
        for c in &mut clients {
            c.ping(b"q").unwrap();
        }
    }
    for c in &mut clients {
        assert_eq!(&job(c, b"build 7")[..], b"build 7");
    }
    let active: i64 = node.shard_metrics().iter().map(|m| m.connections()).sum();
    assert_eq!(active, 8);
    drop(clients);
    drop(node);
}

#[test]
fn a_client_that_rebinds_its_port_stays_served_through_the_forwarding_shard() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let node = server_only_node(&pki, 2);
    let addr = match &node.endpoints()[0] {
        valkyrie_runtime::url::Endpoint::Quic(a) => *a,
        other => panic!("{other}"),
    };
    let quic = valkyrie_runtime::quic::client_config(
        &mtls::server_only_client_config(&pki.ca_pem).unwrap(),
    )
    .unwrap();
    let sock = QuicSocket::connect(addr, "node-a", quic, Duration::from_secs(5)).unwrap();
    let mut client =
        Client::over(ClientSocket::Quic(Box::new(sock)), ClientConfig::default()).unwrap();
    client.ping(b"before").unwrap();
    let mut ports = Vec::new();
    for i in 0..16 {
        let ClientSocket::Quic(q) = client.socket_mut() else {
            unreachable!()
        };
        ports.push(q.rebind().unwrap().port());
        client.ping(b"after").unwrap();
        assert_eq!(
            &job(&mut client, b"still here")[..],
            b"still here",
            "rebind {i}"
        );
    }
    let forwarded: u64 = node
        .shard_metrics()
        .iter()
        .map(|m| m.quic_forwarded())
        .sum();
    assert!(
        forwarded > 0,
        "16 new ports and no datagram landed on the other shard ({ports:?})"
    );
}

#[test]
fn quic_with_client_certificates_negotiates_mtls_with_their_identity() {
    let pki = DevPki::generate(&["node-a"], &["agent-7"]).unwrap();
    let node = Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .quic_tls(pki.server_config(0).unwrap(), true)
        .protocol(valkyrie_protocol::Config {
            security: vec![valkyrie_protocol::SecurityMode::Mtls],
            handshakes: vec![Arc::new(mtls::Mtls)],
            ..valkyrie_protocol::Config::new("control")
        })
        .shards(2)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let url = node.endpoints()[0].to_string();
    let mut cfg = common::mtls_client(ClientConfig::default(), &pki, &pki.ca_pem, false);
    cfg.tls_server_name = Some("node-a".into());
    let mut client = Client::connect_with(&url, cfg).unwrap();
    assert_eq!(
        client.peer().unwrap().security,
        valkyrie_protocol::SecurityMode::Mtls
    );
    assert_eq!(&job(&mut client, b"who")[..], b"who from x509:agent-7");

    // Without a certificate the handshake fails.
    let err = Client::connect_with(&url, server_only_client(&pki));
    assert!(err.is_err(), "a client without a certificate was served");
}

#[test]
fn a_resumed_client_sends_its_hello_in_0rtt() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let node = server_only_node(&pki, 1);
    let addr = match &node.endpoints()[0] {
        valkyrie_runtime::url::Endpoint::Quic(a) => *a,
        other => panic!("{other}"),
    };
    let tls = mtls::server_only_client_config(&pki.ca_pem).unwrap();
    let connect = || {
        let quic = valkyrie_runtime::quic::client_config(&tls).unwrap();
        QuicSocket::connect(addr, "node-a", quic, Duration::from_secs(5)).unwrap()
    };
    let first = connect();
    assert!(!first.sent_early());
    let mut c = Client::over(ClientSocket::Quic(Box::new(first)), ClientConfig::default()).unwrap();
    c.ping(b"x").unwrap();
    // The session ticket arrives after the handshake: give it a moment.
    c.ping(b"x").unwrap();
    drop(c);
    let second = connect();
    assert!(
        second.sent_early(),
        "the second connection did not resume with 0-RTT"
    );
    let mut c = Client::over(
        ClientSocket::Quic(Box::new(second)),
        ClientConfig::default(),
    )
    .unwrap();
    c.ping(b"y").unwrap();
    assert_eq!(&job(&mut c, b"after 0-rtt")[..], b"after 0-rtt");
    let ClientSocket::Quic(q) = c.socket_mut() else {
        unreachable!()
    };
    assert!(q.early_accepted(), "the node refused the early data");
}
