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
    let tls = pki.server_config_without_client_auth(0).unwrap();
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

/// The first datagram of `n` new handshakes (real Initial packets, each with its own
/// connection id), from a client that never answers what comes back.
fn initials(n: usize, addr: std::net::SocketAddr, pki: &DevPki) -> Vec<Vec<u8>> {
    let quic = valkyrie_runtime::quic::client_config(
        &mtls::server_only_client_config(&pki.ca_pem).unwrap(),
    )
    .unwrap();
    let mut ep = quinn_proto::Endpoint::new(
        Arc::new(quinn_proto::EndpointConfig::default()),
        None,
        false,
        None,
    );
    let now = std::time::Instant::now();
    (0..n)
        .map(|_| {
            let (_, mut conn) = ep.connect(now, quic.clone(), addr, "node-a").unwrap();
            let mut buf = Vec::new();
            let t = conn.poll_transmit(now, 1, &mut buf).unwrap();
            buf.truncate(t.size);
            buf
        })
        .collect()
}

#[test]
fn garbage_spoofed_ids_and_an_initial_flood_leave_the_node_serving_others() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let node = server_only_node(&pki, 2);
    let addr = match &node.endpoints()[0] {
        valkyrie_runtime::url::Endpoint::Quic(a) => *a,
        other => panic!("{other}"),
    };
    let url = node.endpoints()[0].to_string();
    let mut before = Client::connect_with(&url, server_only_client(&pki)).unwrap();
    before.ping(b"before").unwrap();

    let flood = initials(2000, addr, &pki);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let attacker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let mut seed = 0x9E37_79B9_7F4A_7C15u64;
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed
            };
            let mut sent = 0u64;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                // Garbage of any size, including empty and larger than any QUIC packet.
                let len = (next() % 1600) as usize;
                let junk: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let _ = sock.send_to(&junk, addr);
                // Short-header packets whose connection id names a shard but is forged.
                let mut spoof = vec![0x40 | (next() as u8 & 0x3F), (next() % 2) as u8];
                spoof.extend((0..60).map(|_| next() as u8));
                let _ = sock.send_to(&spoof, addr);
                // Real Initials of handshakes never finished.
                let _ = sock.send_to(&flood[i % flood.len()], addr);
                i += 1;
                sent += 3;
                if i % 64 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    // Under the flood: the established client and new ones are served.
    for i in 0..20 {
        before.ping(b"during").unwrap();
        let mut c = Client::connect_with(&url, server_only_client(&pki))
            .unwrap_or_else(|e| panic!("new client {i} under the flood: {e}"));
        assert_eq!(&job(&mut c, b"served")[..], b"served");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = attacker.join().unwrap();
    assert!(sent > 3000, "the attacker sent only {sent} datagrams");
    let retries: u64 = node.shard_metrics().iter().map(|m| m.quic_retries()).sum();
    assert!(
        retries > 0,
        "no Retry while thousands of handshakes were half-open"
    );
    before.ping(b"after").unwrap();
}

#[test]
fn ten_thousand_quic_connections_over_two_shards_all_ping() {
    const N: usize = 10_000;
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let tls = pki.server_config_without_client_auth(0).unwrap();
    let node = Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .quic_tls(tls, false)
        .shards(2)
        // The clients are driven one at a time: the node's heartbeat must not close those
        // waiting their turn.
        .heartbeat(Duration::from_secs(120))
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let url = node.endpoints()[0].to_string();
    let mut cfg = server_only_client(&pki);
    cfg.protocol.heartbeat = Duration::from_secs(120);
    let mut clients = Vec::with_capacity(N);
    for i in 0..N {
        clients.push(
            Client::connect_with(&url, cfg.clone())
                .unwrap_or_else(|e| panic!("connection {i}: {e}")),
        );
    }
    let per_shard: Vec<i64> = node
        .shard_metrics()
        .iter()
        .map(|m| m.connections())
        .collect();
    assert_eq!(per_shard.iter().sum::<i64>(), N as i64, "{per_shard:?}");
    assert!(
        per_shard.iter().all(|&n| n > 1000),
        "one shard took almost all: {per_shard:?}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.ping(b"all").unwrap_or_else(|e| panic!("ping {i}: {e}"));
    }
    // And once more, the last first.
    for c in clients.iter_mut().rev() {
        c.ping(b"again").unwrap();
    }
}

#[test]
fn valkyrie_streams_ride_quic_streams_of_their_own_when_both_sides_agree() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let node = server_only_node(&pki, 2);
    let url = node.endpoints()[0].to_string();
    for agree in [true, false] {
        let cfg = ClientConfig {
            quic_streams: agree,
            ..server_only_client(&pki)
        };
        let mut c = Client::connect_with(&url, cfg).unwrap();
        assert_eq!(c.peer().unwrap().quic_streams, agree);
        // Requests on four streams, interleaved; each answer comes on its request's stream.
        for round in 0..50u32 {
            for s in [1u32, 3, 5, 7] {
                let body = Bytes::from(format!("stream {s} round {round}"));
                let f = c
                    .request(
                        s,
                        MessageType::JobRequest,
                        body.clone(),
                        Duration::from_secs(5),
                    )
                    .unwrap();
                assert_eq!(f.stream_id(), s);
                assert_eq!(f.payload, body);
            }
            c.ping(b"stream 0").unwrap();
        }
        let ClientSocket::Quic(q) = c.socket_mut() else {
            unreachable!()
        };
        let (opened, accepted) = q.quic_streams_used();
        if agree {
            assert_eq!(opened, 4, "one QUIC stream per Valkyrie stream sent on");
            assert_eq!(
                accepted, 4,
                "the node answered each stream on one of its own"
            );
        } else {
            assert_eq!((opened, accepted), (0, 0), "everything on the first stream");
        }
    }
}
