//! Closing and opening one listener of a running node: its connections are sent away (CLOSE
//! 502) while the node's other listeners and connections go on. The transport selector
//! (`Client::connect_any`) on a node listening on shared memory and TCP: when the
//! shared-memory listener closes, the client moves to TCP without losing a request; while it
//! is closed the client keeps probing it (every two heartbeat intervals of its calls) and
//! stays on TCP; when it opens again the client moves back. With QUIC beside TCP, the
//! selector ranks QUIC first, and leaves a closed QUIC listener (which refuses new clients
//! at once) for TCP the same way. A QUIC listener opened on a running node serves, forwards
//! a moving client's datagrams between its shards' sockets, and closes alone.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::security::mtls::{self, DevPki};
use valkyrie_runtime::quic::QuicSocket;
use valkyrie_runtime::transport::ClientSocket;
use valkyrie_runtime::{Client, ClientConfig, Node};

fn ask(c: &mut Client, n: u32) {
    let body = Bytes::from(format!("request {n}"));
    let f = c
        .request(
            0,
            MessageType::JobRequest,
            body.clone(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("request {n}: {e}"));
    assert_eq!(f.msg_type(), MessageType::JobAccept);
    assert_eq!(f.payload, body, "answer to {n}");
}

fn on(c: &Client) -> String {
    c.url().map(ToString::to_string).unwrap_or_default()
}

/// A selector's client and the number of its next request.
struct Asking {
    c: Client,
    n: u32,
}

impl Asking {
    /// `k` requests, each answered.
    fn times(&mut self, k: u32) {
        for _ in 0..k {
            ask(&mut self.c, self.n);
            self.n += 1;
        }
    }

    /// Requests 5 ms apart for `d`.
    fn during(&mut self, d: Duration) {
        let t = Instant::now();
        while t.elapsed() < d {
            self.times(1);
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Requests 5 ms apart until the client is on `url` (within 5 s): how long it took.
    fn until_on(&mut self, url: &str) -> Duration {
        let t = Instant::now();
        while on(&self.c) != url {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "never moved back to {url}"
            );
            self.times(1);
            std::thread::sleep(Duration::from_millis(5));
        }
        t.elapsed()
    }
}

#[test]
fn the_selector_leaves_a_closed_shm_listener_for_tcp_and_returns_when_it_opens() {
    let shm = format!("shm://listeners-{}", std::process::id());
    let mut node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen(&shm)
        .unwrap()
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let tcp = node.endpoints()[0].to_string();
    let mut cfg = ClientConfig::default();
    let heartbeat = Duration::from_millis(100);
    cfg.protocol.heartbeat = heartbeat;
    let c =
        Client::connect_any(&[tcp.as_str(), shm.as_str()], cfg, Duration::from_secs(5)).unwrap();
    assert_eq!(on(&c), shm, "TCP listed first, shared memory taken");
    // Another client straight over TCP: closing shm must not touch it.
    let mut bystander = Client::connect(&tcp).unwrap();
    let mut a = Asking { c, n: 0 };
    a.times(100);

    node.close_listener(&shm).unwrap();
    assert!(!node.is_listening(&shm.parse().unwrap()));
    a.times(100);
    assert_eq!(on(&a.c), tcp, "the client did not move to TCP");
    bystander.ping(b"still here").unwrap();
    assert_eq!(bystander.reconnects(), 0);

    // Closed for ten heartbeat intervals of calls: the probes find nothing, the client stays.
    a.during(heartbeat * 10);
    assert_eq!(on(&a.c), tcp);

    node.open_listener(&shm).unwrap();
    let back = a.until_on(&shm);
    assert!(
        back <= heartbeat * 2 + Duration::from_millis(150),
        "back on shm after {back:?}, more than two heartbeat intervals"
    );
    a.times(100);
    eprintln!(
        "{} requests, every one answered ({} sent again); back on shm {back:?} after it opened",
        a.n,
        a.c.retried()
    );
}

#[test]
fn a_new_listener_opens_on_a_running_node_and_closes_alone() {
    let mut node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let first = node.endpoints()[0].to_string();
    let path = std::env::temp_dir().join(format!("valkyrie-listeners-{}.sock", std::process::id()));
    let unix = format!("unix://{}", path.display());
    node.open_listener(&unix).unwrap();
    let mut over_unix = Client::connect(&unix).unwrap();
    let mut over_tcp = Client::connect(&first).unwrap();
    ask(&mut over_unix, 1);
    node.close_listener(&unix).unwrap();
    // Sent away: its next request fails (a plain client does not reconnect), TCP goes on.
    let t = Instant::now();
    loop {
        if over_unix.ping(b"x").is_err() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the unix connection stayed"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        Client::connect(&unix).is_err(),
        "a closed listener accepted"
    );
    ask(&mut over_tcp, 2);
    // And back on the same path.
    node.open_listener(&unix).unwrap();
    ask(&mut Client::connect(&unix).unwrap(), 3);
}

#[test]
fn the_selector_ranks_quic_above_tcp_and_leaves_a_closed_quic_listener_for_tcp() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let tls = pki.server_config_without_client_auth(0).unwrap();
    // The same certificate on both: TLS under the frames on TCP, QUIC's own on QUIC.
    let mut node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .tls(tls.clone())
        .quic_tls(tls, false)
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let (tcp, quic) = (
        node.endpoints()[0].to_string(),
        node.endpoints()[1].to_string(),
    );
    let heartbeat = Duration::from_millis(100);
    let mut cfg = ClientConfig {
        tls: Some(mtls::server_only_client_config(&pki.ca_pem).unwrap()),
        tls_server_name: Some("node-a".into()),
        ..ClientConfig::default()
    };
    cfg.protocol.heartbeat = heartbeat;
    let c = Client::connect_any(
        &[tcp.as_str(), quic.as_str()],
        cfg.clone(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(on(&c), quic, "TCP listed first, QUIC taken");
    let mut bystander = Client::connect_with(&tcp, cfg.clone()).unwrap();
    let mut a = Asking { c, n: 0 };
    a.times(100);

    // Closed: the QUIC connections are sent away, new QUIC clients refused at once.
    node.close_listener(&quic).unwrap();
    assert!(!node.is_listening(&quic.parse().unwrap()));
    a.times(100);
    assert_eq!(on(&a.c), tcp, "the client did not move to TCP");
    let t = Instant::now();
    assert!(Client::connect_with(&quic, cfg.clone()).is_err());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "a refused QUIC client waited {:?} (a timeout, not a refusal)",
        t.elapsed()
    );
    bystander.ping(b"still here").unwrap();
    a.during(heartbeat * 6);
    assert_eq!(on(&a.c), tcp, "moved back to a closed listener");

    node.open_listener(&quic).unwrap();
    assert!(node.is_listening(&quic.parse().unwrap()));
    let back = a.until_on(&quic);
    a.times(100);
    assert_eq!(bystander.reconnects(), 0);
    eprintln!(
        "{} requests, every one answered ({} sent again); back on QUIC {back:?} after it opened",
        a.n,
        a.c.retried()
    );
}

#[test]
fn a_quic_listener_opened_on_a_running_node_serves_and_forwards() {
    let pki = DevPki::generate(&["node-a"], &[]).unwrap();
    let tls = pki.server_config_without_client_auth(0).unwrap();
    // Started with TCP alone; its QUIC TLS waits for a QUIC endpoint.
    let mut node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .quic_tls(tls, false)
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let bound = node.open_listener("quic://127.0.0.1:0").unwrap();
    assert!(node.is_listening(&bound));
    let addr = match &bound {
        valkyrie_runtime::url::Endpoint::Quic(a) => *a,
        other => panic!("{other}"),
    };
    let client_tls = mtls::server_only_client_config(&pki.ca_pem).unwrap();
    let cfg = ClientConfig {
        tls: Some(client_tls.clone()),
        tls_server_name: Some("node-a".into()),
        ..ClientConfig::default()
    };
    let mut clients: Vec<Client> = (0..6)
        .map(|_| Client::connect_with(&bound.to_string(), cfg.clone()).unwrap())
        .collect();
    for (i, c) in clients.iter_mut().enumerate() {
        ask(c, i as u32);
    }
    // A client whose port changes lands on either shard's socket of the new listener: what
    // reaches the other one is forwarded to the connection's owner.
    let quic = valkyrie_runtime::quic::client_config(&client_tls).unwrap();
    let sock = QuicSocket::connect(addr, "node-a", quic, Duration::from_secs(5)).unwrap();
    let mut moving =
        Client::over(ClientSocket::Quic(Box::new(sock)), ClientConfig::default()).unwrap();
    for n in 0..16 {
        let ClientSocket::Quic(q) = moving.socket_mut() else {
            unreachable!()
        };
        q.rebind().unwrap();
        ask(&mut moving, 100 + n);
    }
    let forwarded: u64 = node
        .shard_metrics()
        .iter()
        .map(|m| m.quic_forwarded())
        .sum();
    assert!(forwarded > 0, "16 new ports and nothing forwarded");
    // And it closes alone, like the others.
    node.close_listener(&bound.to_string()).unwrap();
    assert!(Client::connect_with(&bound.to_string(), cfg).is_err());
    ask(
        &mut Client::connect(&node.endpoints()[0].to_string()).unwrap(),
        200,
    );
}
