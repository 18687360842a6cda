//! UPGRADE to shared memory: a client and a node on the same host (both say so in HELLO)
//! move a TCP or Unix connection to a shared-memory segment in band, with frames in flight
//! both ways — a million requests and their answers, in order, across the switch; the
//! socket stays as the control channel and takes the traffic back when the segment breaks;
//! a peer elsewhere (another boot or network namespace) is refused and stays on its socket;
//! the rendezvous wants the challenge sent on the connection.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::message::HostId;
use valkyrie_protocol::{ErrorCode, Event, MessageType, SendOptions};
use valkyrie_runtime::{Client, ClientConfig, ClientError, Node};

fn node(url: &str) -> Node {
    Node::builder()
        .listen(url)
        .unwrap()
        .shards(2)
        .service(|_| common::Accept)
        .start()
        .unwrap()
}

/// Send `total` JOB_REQUESTs numbered from `first` with up to `window` unanswered, reading the
/// answers (JOB_ACCEPT with the same number) and checking they come in order; `midway` is
/// called once, when half are answered.
fn pipeline(
    c: &mut Client,
    first: u64,
    total: u64,
    window: u64,
    mut midway: impl FnMut(&mut Client),
) {
    let (mut sent, mut answered) = (0u64, 0u64);
    let mut called = false;
    let t = Instant::now();
    while answered < total {
        while sent < total && sent - answered < window {
            let n = first + sent;
            match c.connection().send(
                0,
                MessageType::JobRequest,
                Bytes::copy_from_slice(&n.to_be_bytes()),
                SendOptions::default(),
            ) {
                Ok(_) => sent += 1,
                Err(_) => break,
            }
        }
        c.flush_now().unwrap();
        while let Some(ev) = c.next_event(Duration::from_millis(0)).unwrap() {
            if let Event::Frame(f) = ev {
                assert_eq!(f.msg_type(), MessageType::JobAccept);
                let n = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
                assert_eq!(n, first + answered, "answers out of order");
                answered += 1;
            }
        }
        if !called && answered >= total / 2 {
            called = true;
            midway(c);
        }
        if sent - answered >= window || (sent == total && answered < total) {
            // Wait for at least one answer.
            if let Some(Event::Frame(f)) = c.next_event(Duration::from_secs(5)).unwrap() {
                let n = u64::from_be_bytes(f.payload[..8].try_into().unwrap());
                assert_eq!(n, first + answered, "answers out of order");
                answered += 1;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "stalled at {answered} of {total}"
        );
    }
}

#[test]
fn a_million_frames_in_order_across_the_switch_to_shared_memory() {
    let node = node("tcp://127.0.0.1:0");
    let mut c = Client::connect(&node.url()).unwrap();
    assert!(
        c.peer().unwrap().same_host,
        "the node did not say where it runs"
    );
    let mut switched = false;
    pipeline(&mut c, 0, 1_000_000, 512, |c| {
        // A quarter of a million requests in flight history, 512 unanswered right now.
        switched = c.upgrade_to_shm(Duration::from_secs(5)).unwrap();
    });
    assert!(switched, "the upgrade was refused");
    assert!(c.is_upgraded(), "reads never moved to the segment");
    let upgrades: u64 = node.shard_metrics().iter().map(|m| m.upgrades()).sum();
    assert_eq!(upgrades, 1);
    c.ping(b"over shm").unwrap();
}

#[test]
fn a_unix_connection_upgrades_and_the_socket_takes_the_traffic_back_when_the_segment_breaks() {
    let path = std::env::temp_dir().join(format!("valkyrie-upgrade-{}.sock", std::process::id()));
    let url = format!("unix://{}", path.display());
    let node = node(&url);
    let cfg = ClientConfig {
        upgrade: true,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&url, cfg).unwrap();
    pipeline(&mut c, 0, 20_000, 64, |_| {});
    assert!(c.is_upgraded());
    // The segment breaks under a flowing connection: both ways come back to the socket.
    c.break_upgrade();
    assert!(!c.is_upgraded());
    let t = Instant::now();
    loop {
        // The first request after the break may have been written to the segment as it
        // broke: a lost frame, the request is sent again.
        match c.request(
            0,
            MessageType::JobRequest,
            Bytes::from_static(&[0; 8]),
            Duration::from_millis(500),
        ) {
            Ok(f) => {
                assert_eq!(f.msg_type(), MessageType::JobAccept);
                break;
            }
            Err(ClientError::Timeout) if t.elapsed() < Duration::from_secs(5) => {}
            Err(e) => panic!("after the break: {e}"),
        }
    }
    pipeline(&mut c, 0, 10_000, 64, |_| {});
    c.ping(b"back on the socket").unwrap();
    drop(c);
    drop(node);
}

#[test]
fn a_peer_on_another_host_is_refused_and_stays_on_its_socket() {
    let node = node("tcp://127.0.0.1:0");
    let mut cfg = ClientConfig::default();
    cfg.protocol.host = Some(HostId {
        boot: "another-machine".into(),
        netns: 1,
    });
    let mut c = Client::connect_with(&node.url(), cfg).unwrap();
    assert!(!c.peer().unwrap().same_host);
    assert!(!c.upgrade_to_shm(Duration::from_secs(2)).unwrap());
    // Asked anyway: the node refuses with 602 (unreachable), the connection goes on.
    let id = c.connection().request_upgrade("shm").unwrap();
    c.flush_now().unwrap();
    let t = Instant::now();
    loop {
        match c.next_event(Duration::from_secs(2)).unwrap() {
            Some(Event::PeerError {
                code,
                correlation_id,
                ..
            }) if correlation_id == id => {
                assert_eq!(code, ErrorCode::UNREACHABLE);
                break;
            }
            _ => assert!(
                t.elapsed() < Duration::from_secs(5),
                "no answer to the request"
            ),
        }
    }
    c.ping(b"still on tcp").unwrap();
    let upgrades: u64 = node.shard_metrics().iter().map(|m| m.upgrades()).sum();
    assert_eq!(upgrades, 0);
}
