//! The node over loopback: SPEC conformance on raw sockets, many connections, cross-shard
//! routing, Unix sockets, shutdown, refusal, deadlines.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{Close, ErrorPayload, HealthCheck, Hello, HelloAck, Payload};
use valkyrie_protocol::{
    CloseReason, ErrorCode, Event, Flags, Frame, Header, MessageType, SecurityMode, SendOptions,
};
use valkyrie_runtime::{Client, ClientConfig, ClientError, ConnRef, Ctx, Node, Service};

fn frame_bytes(f: &Frame) -> Vec<u8> {
    let mut v = Vec::new();
    f.encode(&mut v);
    v
}

/// A raw TCP peer that speaks frames by hand.
struct Raw {
    s: TcpStream,
    dec: Decoder,
}

impl Raw {
    fn connect(url: &str) -> Raw {
        let addr = url.strip_prefix("tcp://").unwrap();
        let s = TcpStream::connect(addr).unwrap();
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw {
            s,
            dec: Decoder::new(valkyrie_protocol::MAX_FRAME_LIMIT),
        }
    }

    fn hello(url: &str) -> (Raw, HelloAck) {
        let mut r = Raw::connect(url);
        let hello = Hello::new("raw", vec![SecurityMode::Plaintext], 1 << 20, 60_000);
        r.write(&frame_bytes(&Frame::new(
            MessageType::Hello,
            0,
            hello.to_bytes(),
        )));
        let f = r.read_frame().expect("HELLO_ACK");
        assert_eq!(f.msg_type(), MessageType::HelloAck);
        assert!(f.header.flags.contains(Flags::RESPONSE));
        (r, HelloAck::from_bytes(&f.payload).unwrap())
    }

    fn write(&mut self, b: &[u8]) {
        self.s.write_all(b).unwrap();
    }

    /// The next frame, or None at end of file.
    fn read_frame(&mut self) -> Option<Frame> {
        let mut buf = [0u8; 4096];
        loop {
            if let Some(f) = self.dec.decode().unwrap() {
                return Some(f);
            }
            let n = self.s.read(&mut buf).unwrap();
            if n == 0 {
                return None;
            }
            self.dec.feed(&buf[..n]);
        }
    }

    fn expect_error(&mut self, code: ErrorCode) -> Frame {
        let f = self.read_frame().expect("an ERROR frame");
        assert_eq!(f.msg_type(), MessageType::Error, "{f:?}");
        assert_eq!(ErrorPayload::from_bytes(&f.payload).unwrap().code, code.0);
        f
    }

    fn expect_eof(&mut self) {
        assert!(self.read_frame().is_none(), "connection should be closed");
    }
}

fn node(shards: usize) -> Node {
    Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(shards)
        .start()
        .unwrap()
}

#[test]
fn hello_and_ping_pong_follow_the_spec() {
    let node = node(1);
    let (mut r, ack) = Raw::hello(&node.url());
    assert_eq!(ack.version, 2);
    assert_eq!(ack.security, SecurityMode::Plaintext);
    for size in [0usize, 64, 1024] {
        let payload = vec![7u8; size];
        let ping = Frame::new(MessageType::Ping, 0, payload.clone()).with_correlation(4242);
        r.write(&frame_bytes(&ping));
        let pong = r.read_frame().unwrap();
        assert_eq!(pong.msg_type(), MessageType::Pong);
        assert_eq!(&pong.payload[..], &payload[..]);
        assert_eq!(pong.header.correlation_id, 4242);
        assert!(pong.header.flags.contains(Flags::RESPONSE));
    }
}

#[test]
fn every_malformed_class_is_answered_with_its_code() {
    let node = node(2);
    let good = frame_bytes(&Frame::new(MessageType::Ping, 0, &b"x"[..]));
    for (offset, value, code) in [
        (0usize, 0x00u8, 100u16),
        (2, 9, 101),
        (4, 0x80, 105),
        (7, 1, 105),
    ] {
        let (mut r, _) = Raw::hello(&node.url());
        let mut bad = good.clone();
        bad[offset] = value;
        r.write(&bad);
        r.expect_error(ErrorCode(code));
        r.expect_eof();
    }
    // 102: answered as soon as the header is in, before any payload.
    let (mut r, ack) = Raw::hello(&node.url());
    r.write(&Header::new(MessageType::StreamData, 101, ack.max_frame + 1).to_bytes());
    r.expect_error(ErrorCode::FRAME_TOO_LARGE);
    r.expect_eof();
    // 103 and 104 leave the connection usable.
    let (mut r, _) = Raw::hello(&node.url());
    r.write(&frame_bytes(
        &Frame::new(MessageType::Unknown(0x7E), 0, &b"?"[..]).with_correlation(9),
    ));
    let e = r.expect_error(ErrorCode::UNKNOWN_MESSAGE_TYPE);
    assert_eq!(e.header.correlation_id, 9);
    r.write(&frame_bytes(&Frame::new(
        MessageType::StreamOpen,
        101,
        &b"\xc1"[..],
    )));
    r.expect_error(ErrorCode::MALFORMED_PAYLOAD);
    r.write(&frame_bytes(&Frame::new(
        MessageType::Ping,
        0,
        &b"alive"[..],
    )));
    assert_eq!(r.read_frame().unwrap().msg_type(), MessageType::Pong);
    let m = node
        .shard_metrics()
        .iter()
        .map(|m| m.errors_sent(103))
        .sum::<u64>();
    assert_eq!(m, 1);
}

#[test]
fn close_is_answered_and_the_connection_ends() {
    let node = node(1);
    let (mut r, _) = Raw::hello(&node.url());
    r.write(&frame_bytes(&Frame::new(
        MessageType::Close,
        0,
        Close {
            code: 0,
            reason: "bye".into(),
        }
        .to_bytes(),
    )));
    let f = r.read_frame().unwrap();
    assert_eq!(f.msg_type(), MessageType::Close);
    assert!(f.header.flags.contains(Flags::RESPONSE));
    r.expect_eof();
}

#[test]
fn a_silent_connection_is_closed_at_the_handshake_deadline() {
    let mut cfg = valkyrie_protocol::Config::new("n");
    cfg.handshake_timeout = Duration::from_millis(300);
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(cfg)
        .start()
        .unwrap();
    let mut r = Raw::connect(&node.url());
    r.write(&[0x52]); // a slow-drip peer: one byte, then nothing
    let t = Instant::now();
    r.expect_error(ErrorCode::HANDSHAKE_TIMEOUT);
    r.expect_eof();
    assert!(t.elapsed() >= Duration::from_millis(250));
    assert_eq!(node.shard_metrics()[0].handshake_timeouts(), 1);
}

#[test]
fn a_connection_that_stops_heartbeating_is_closed_108() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .heartbeat(Duration::from_millis(100))
        .start()
        .unwrap();
    let mut r = Raw::connect(&node.url());
    let hello = Hello::new("quiet", vec![SecurityMode::Plaintext], 1 << 20, 100);
    r.write(&frame_bytes(&Frame::new(
        MessageType::Hello,
        0,
        hello.to_bytes(),
    )));
    assert_eq!(r.read_frame().unwrap().msg_type(), MessageType::HelloAck);
    r.expect_error(ErrorCode::HEARTBEAT_TIMEOUT);
    r.expect_eof();
    assert_eq!(node.shard_metrics()[0].heartbeat_timeouts(), 1);
}

#[test]
fn ten_thousand_connections_over_two_shards_all_ping() {
    valkyrie_runtime::raise_nofile();
    let node = node(2);
    let cfg = ClientConfig {
        read_buffer: 1024,
        ..ClientConfig::default()
    };
    let mut clients = Vec::with_capacity(10_000);
    for i in 0..10_000 {
        match Client::connect_with(&node.url(), cfg.clone()) {
            Ok(c) => clients.push(c),
            Err(e) => panic!("connection {i}: {e}"),
        }
    }
    let t = Instant::now();
    while node.connections() < 10_000 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(node.connections(), 10_000);
    let per_shard: Vec<i64> = node
        .shard_metrics()
        .iter()
        .map(|m| m.connections())
        .collect();
    assert!(
        per_shard.iter().all(|&n| n > 1000),
        "SO_REUSEPORT spreads connections: {per_shard:?}"
    );
    for (i, c) in clients.iter_mut().enumerate() {
        c.ping(&(i as u64).to_be_bytes())
            .unwrap_or_else(|e| panic!("ping on connection {i}: {e}"));
    }
    drop(clients);
    let t = Instant::now();
    while node.connections() > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        node.connections(),
        0,
        "every connection is released after its client goes away"
    );
}

/// Tells a client which shard it landed on (HEALTH_CHECK answer), and forwards every
/// JOB_REQUEST to all other connections of the node, on whatever shard they live.
struct Relay {
    known: Vec<ConnRef>,
}

impl Service for Relay {
    fn on_connect(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnRef,
        _peer: &valkyrie_protocol::PeerInfo,
    ) {
        self.known.push(conn);
        for s in 0..ctx.shards() {
            if s != ctx.shard() {
                ctx.send_to_shard(s, Box::new(conn)).unwrap();
            }
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _from: usize, msg: Box<dyn std::any::Any + Send>) {
        if let Ok(c) = msg.downcast::<ConnRef>() {
            self.known.push(*c);
        }
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, conn: ConnRef, _reason: &CloseReason) {
        self.known.retain(|c| *c != conn);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        match frame.msg_type() {
            MessageType::HealthCheck => {
                let mut hc = HealthCheck {
                    status: Some("serving".into()),
                    ..Default::default()
                };
                hc.checks.insert("shard".into(), ctx.shard().to_string());
                ctx.respond(conn, &frame.header, MessageType::HealthCheck, hc.to_bytes())
                    .unwrap();
            }
            MessageType::JobRequest => {
                for &to in &self.known {
                    if to != conn {
                        ctx.send(
                            to,
                            100,
                            MessageType::JobRequest,
                            frame.payload.clone(),
                            SendOptions::default(),
                        )
                        .unwrap();
                    }
                }
            }
            _ => {}
        }
    }
}

fn shard_of(c: &mut Client) -> String {
    let f = c
        .request(
            0,
            MessageType::HealthCheck,
            HealthCheck::default().to_bytes(),
            Duration::from_secs(5),
        )
        .unwrap();
    HealthCheck::from_bytes(&f.payload).unwrap().checks["shard"].clone()
}

#[test]
fn a_message_is_routed_from_a_connection_on_shard_0_to_one_on_shard_1() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(|_| Relay { known: Vec::new() })
        .start()
        .unwrap();
    let mut on0 = None;
    let mut on1 = None;
    for _ in 0..200 {
        let mut c = Client::connect(&node.url()).unwrap();
        match shard_of(&mut c).as_str() {
            "0" if on0.is_none() => on0 = Some(c),
            "1" if on1.is_none() => on1 = Some(c),
            _ => {}
        }
        if on0.is_some() && on1.is_some() {
            break;
        }
    }
    let (mut a, mut b) = (
        on0.expect("a connection on shard 0"),
        on1.expect("a connection on shard 1"),
    );
    // Let shard 1 learn about shard 0's connection and vice versa.
    std::thread::sleep(Duration::from_millis(50));
    a.send(
        101,
        MessageType::JobRequest,
        Bytes::from_static(b"\x81\xa6job_id\xa4j-42"),
        SendOptions::default(),
    )
    .unwrap();
    let routed = loop {
        match b.next_event(Duration::from_secs(5)).unwrap() {
            Some(Event::Frame(f)) => break f,
            Some(_) => continue,
            None => panic!("nothing routed to shard 1"),
        }
    };
    assert_eq!(routed.msg_type(), MessageType::JobRequest);
    assert_eq!(routed.stream_id(), 100);
    assert_eq!(&routed.payload[..], b"\x81\xa6job_id\xa4j-42");
}

#[test]
fn unix_sockets_serve_the_same_protocol() {
    let path = std::env::temp_dir().join(format!("valkyrie-test-{}.sock", std::process::id()));
    let url = format!("unix://{}", path.display());
    let node = Node::builder()
        .listen(&url)
        .unwrap()
        .shards(2)
        .start()
        .unwrap();
    let mut c = Client::connect(&url).unwrap();
    assert_eq!(c.peer().unwrap().version, 2);
    for _ in 0..100 {
        c.ping(b"over unix").unwrap();
    }
    c.close().unwrap();
    node.shutdown();
    node.join();
    assert!(!path.exists(), "the socket file is removed at shutdown");
}

/// Answers a JOB_REQUEST with 2000 one-KiB STREAM_DATA frames on stream 100.
struct Burst;
impl Service for Burst {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let chunk = Bytes::from(vec![0xABu8; 1024]);
            for _ in 0..2000 {
                ctx.send(
                    conn,
                    100,
                    MessageType::StreamData,
                    chunk.clone(),
                    SendOptions::default(),
                )
                .unwrap();
            }
        }
    }
}

#[test]
fn shutdown_drains_queued_frames_then_closes_with_502() {
    let mut proto = valkyrie_protocol::Config::new("n");
    proto.window = valkyrie_protocol::streams::WindowStrategy::Fixed(4 << 20);
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(proto)
        .service(|_| Burst)
        .start()
        .unwrap();
    let mut client_proto = valkyrie_protocol::Config::new("c");
    client_proto.window = valkyrie_protocol::streams::WindowStrategy::Fixed(4 << 20);
    let mut c = Client::connect_with(
        &node.url(),
        ClientConfig {
            protocol: client_proto,
            ..ClientConfig::default()
        },
    )
    .unwrap();
    c.send(
        101,
        MessageType::JobRequest,
        Bytes::from_static(b"\x80"),
        SendOptions::default(),
    )
    .unwrap();
    // Give the node time to queue the burst (more than the socket buffers hold), then stop it
    // while most of it is still unsent.
    std::thread::sleep(Duration::from_millis(100));
    node.shutdown();
    let mut data = 0;
    let mut close = None;
    while let Some(e) = c
        .next_event(Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("after {data} frames, close {close:?}: {e}"))
    {
        match e {
            Event::Frame(f) if f.msg_type() == MessageType::StreamData => {
                assert!(close.is_none(), "data after CLOSE");
                data += 1;
            }
            Event::CloseRequested { code, .. } => close = Some(code),
            Event::Closed(_) => break,
            _ => {}
        }
    }
    assert_eq!(
        data, 2000,
        "every queued frame was delivered before the close"
    );
    assert_eq!(close, Some(ErrorCode::SHUTTING_DOWN.0));
    node.join();
}

#[test]
fn past_the_connection_limit_new_connections_get_501() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .max_connections_per_shard(2)
        .start()
        .unwrap();
    let mut a = Client::connect(&node.url()).unwrap();
    let mut b = Client::connect(&node.url()).unwrap();
    match Client::connect(&node.url()) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::OVERLOADED),
        other => panic!("expected ERROR 501, got {other:?}"),
    }
    assert_eq!(node.shard_metrics()[0].refused(), 1);
    // The node is unharmed: the held connections still work, and room frees up again.
    a.ping(b"a").unwrap();
    b.ping(b"b").unwrap();
    drop(a);
    let t = Instant::now();
    let c = loop {
        match Client::connect(&node.url()) {
            Ok(c) => break c,
            Err(_) if t.elapsed() < Duration::from_secs(5) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) => panic!("{e}"),
        }
    };
    drop(c);
}

#[test]
fn requests_without_a_service_get_504_and_metrics_are_exported() {
    let node = node(2);
    let mut c = Client::connect(&node.url()).unwrap();
    match c.request(
        101,
        MessageType::JobRequest,
        Bytes::from_static(b"\x80"),
        Duration::from_secs(5),
    ) {
        Err(ClientError::Peer { code, .. }) => assert_eq!(code, ErrorCode::SERVICE_UNAVAILABLE),
        other => panic!("{other:?}"),
    }
    c.ping(b"x").unwrap();
    let text = node.metrics_text();
    for name in [
        "valkyrie_connections_active{security=\"plaintext\",transport=\"tcp\"} 1",
        "valkyrie_messages_received_total{status=\"ok\",type=\"job_request\"} 1",
        "valkyrie_messages_sent_total{priority=\"critical\",type=\"pong\"} 1",
        "valkyrie_errors_total{code=\"504\",type=\"system\"} 1",
        "valkyrie_message_bytes_total{direction=\"in\",type=\"job_request\"} 25",
        "valkyrie_message_bytes_total{direction=\"out\",type=\"pong\"} 25",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
}
