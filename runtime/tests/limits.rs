//! Resource limits: direct-descriptor table exhaustion, slow consumers, signals.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::message::{Hello, Payload};
use valkyrie_protocol::streams::WindowStrategy;
use valkyrie_protocol::{Frame, MessageType, SecurityMode, SendOptions};
use valkyrie_runtime::{Client, ClientConfig, ClientError, ConnRef, Ctx, Node, Service};

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_full_direct_descriptor_table_pauses_accepting_and_resumes_when_slots_free() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .configure(|c| c.direct_descriptors = Some(8))
        .start()
        .unwrap();
    let quick = ClientConfig {
        connect_timeout: Duration::from_millis(300),
        ..ClientConfig::default()
    };
    let mut held = Vec::new();
    loop {
        match Client::connect_with(&node.url(), quick.clone()) {
            Ok(c) => held.push(c),
            Err(ClientError::Timeout) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(held.len() < 8, "the table holds at most 8");
    }
    assert_eq!(
        held.len(),
        7,
        "accepting pauses one slot before the table is full"
    );
    assert!(node.shard_metrics()[0].accept_pauses() >= 1);
    // The node is fine, and the held connections still work.
    for c in &mut held {
        c.ping(b"still here").unwrap();
    }
    // Freeing slots resumes accepting.
    held.truncate(4);
    wait_until("slots to free", || node.connections() == 4);
    let mut c = Client::connect(&node.url()).expect("accepting resumed");
    c.ping(b"new").unwrap();
}

/// Floods whoever sends a JOB_REQUEST with data until the outbound queue pushes back.
struct Flood;
impl Service for Flood {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let chunk = Bytes::from(vec![7u8; 16 * 1024]);
            let mut queued = 0;
            while ctx
                .send(
                    conn,
                    100,
                    MessageType::StreamData,
                    chunk.clone(),
                    SendOptions::default(),
                )
                .is_ok()
            {
                queued += 1;
                assert!(queued < 100_000, "the outbound queue must be bounded");
            }
        }
    }
}

#[test]
fn a_reader_that_stays_too_slow_is_closed_and_counted() {
    let mut proto = valkyrie_protocol::Config::new("n");
    proto.window = WindowStrategy::Fixed(1 << 30);
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(proto)
        .slow_consumer_timeout(Duration::from_millis(500))
        .service(|_| Flood)
        .start()
        .unwrap();
    let addr = node.url().strip_prefix("tcp://").unwrap().to_owned();
    let mut s = TcpStream::connect(addr).unwrap();
    let hello = Hello {
        stream_window: Some(1 << 30),
        ..Hello::new("slow", vec![SecurityMode::Plaintext], 1 << 20, 60_000)
    };
    let mut out = Vec::new();
    Frame::new(MessageType::Hello, 0, hello.to_bytes()).encode(&mut out);
    Frame::new(MessageType::JobRequest, 101, &b"\x80"[..]).encode(&mut out);
    s.write_all(&out).unwrap();
    // Never read. The node's send stalls once the socket buffers fill, and after the timeout
    // the connection is closed.
    wait_until("the connection to be accepted", || node.connections() == 1);
    let t = Instant::now();
    wait_until("the slow consumer to be closed", || node.connections() == 0);
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed for being slow, not for anything else"
    );
    assert_eq!(node.shard_metrics()[0].slow_consumers(), 1);
    // What was buffered can still be read, then the stream ends.
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
}
