//! Back-pressure end to end: a peer that pipelines deeper than the node's outbound queues is
//! slowed (its input held in the kernel), never closed, on TCP, Unix, TLS and shared memory,
//! in both receive modes; the blocking `Client` pipelines without deadlock; a peer that reads
//! nothing is closed after the slow-consumer timeout with its memory released.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{Hello, Payload};
use valkyrie_protocol::security::mtls::{DevPki, Mtls};
use valkyrie_protocol::streams::{SchedulerLimits, WindowStrategy};
use valkyrie_protocol::{
    Config, Event, Flags, Frame, MessageType, SecurityMode, SendError, SendOptions,
};
use valkyrie_runtime::{
    Client, ClientConfig, ClientError, ConnRef, Ctx, Node, NodeBuilder, RecvMode, Service,
    ShardMetrics,
};
use valkyrie_shm::ShmConfig;

/// Answers a JOB_REQUEST with its own payload.
struct Echo;
impl Service for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload)
                .expect("input is held before the outbound queue can fill");
        }
    }
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn hello_bytes() -> Vec<u8> {
    let hello = Hello::new("pipeliner", vec![SecurityMode::Plaintext], 1 << 20, 60_000);
    let mut out = Vec::new();
    Frame::new(MessageType::Hello, 0, hello.to_bytes()).encode(&mut out);
    out
}

/// `n` PINGs with 64-byte payloads and correlation ids 1..=n.
fn pings(n: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(n as usize * 88);
    for i in 1..=n {
        let mut f = Frame::new(MessageType::Ping, 0, Bytes::from(vec![(i % 251) as u8; 64]));
        f.header.correlation_id = i;
        f.encode(&mut out);
    }
    out
}

const PINGS: u32 = 100_000;

/// Write HELLO and 100,000 PINGs from a thread without reading, wait 2 s, then read: every
/// PING is answered, in order, and the connection stays open.
fn pipeline_without_reading<S>(mut read: S, mut write: S, node: &Node)
where
    S: Read + Write + Send + 'static,
{
    let writer = std::thread::spawn(move || {
        write.write_all(&hello_bytes()).unwrap();
        for chunk in pings(PINGS).chunks(88 * 1000) {
            write.write_all(chunk).unwrap();
        }
        write
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(node.connections(), 1, "not closed while not reading");
    let mut d = Decoder::new(1 << 20);
    let mut buf = vec![0u8; 256 * 1024];
    let mut next = 1u32;
    let mut acked = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next <= PINGS {
        assert!(Instant::now() < deadline, "PONG {next} never came");
        let n = read.read(&mut buf).unwrap();
        assert!(n > 0, "the node closed the connection at PONG {next}");
        d.feed(&buf[..n]);
        while let Some(f) = d.decode().unwrap() {
            match f.msg_type() {
                MessageType::HelloAck => acked = true,
                MessageType::Pong => {
                    assert_eq!(f.header.correlation_id, next, "PONGs in order");
                    assert_eq!(f.payload.len(), 64);
                    next += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    assert!(acked);
    let mut write = writer.join().unwrap();
    // Still open and served.
    let mut again = Frame::new(MessageType::Ping, 0, &b"again"[..]);
    again.header.correlation_id = 7;
    let mut out = Vec::new();
    again.encode(&mut out);
    write.write_all(&out).unwrap();
    loop {
        let n = read.read(&mut buf).unwrap();
        assert!(n > 0);
        d.feed(&buf[..n]);
        if let Some(f) = d.decode().unwrap() {
            assert_eq!(f.msg_type(), MessageType::Pong);
            assert_eq!(f.header.correlation_id, 7);
            break;
        }
    }
    assert_eq!(node.connections(), 1);
    let m = &node.shard_metrics()[0];
    assert!(held_back(m) >= 1, "input was held back at least once");
    assert_eq!(m.slow_consumers(), 0);
    assert!(
        node.metrics_text()
            .contains("valkyrie_backpressure_events_total{event=\"hold\"}"),
        "held input is counted in the metrics"
    );
}

fn one_shard(mode: RecvMode) -> NodeBuilder {
    Node::builder()
        .shards(1)
        .configure(move |c| c.recv_mode = mode)
}

#[test]
fn tcp_pings_pipelined_without_reading_are_all_answered_in_order() {
    let _alone = alone();
    for mode in [RecvMode::Multishot, RecvMode::PollThenRecv] {
        let node = one_shard(mode)
            .listen("tcp://127.0.0.1:0")
            .unwrap()
            .start()
            .unwrap();
        let addr = node.url().strip_prefix("tcp://").unwrap().to_owned();
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        pipeline_without_reading(s.try_clone().unwrap(), s, &node);
        let m = &node.shard_metrics()[0];
        match mode {
            // A multishot receive ends at its per-turn limit (kernel 6.17+) and rests while
            // the PONGs wait; without the limit its receive is cancelled.
            RecvMode::Multishot if kernel_at_least(6, 17) => {
                assert!(m.input_rests() >= 1, "{mode:?}: rested")
            }
            RecvMode::Multishot => assert!(m.input_holds() >= 1, "{mode:?}: cancelled"),
            // One-shot receives go on until the queues' mark, then the poll is cancelled.
            RecvMode::PollThenRecv => assert!(m.input_holds() >= 1, "{mode:?}: cancelled"),
        }
        node.shutdown();
        node.join();
    }
}

#[test]
fn unix_pings_pipelined_without_reading_are_all_answered_in_order() {
    let _alone = alone();
    let path = std::env::temp_dir().join(format!("valkyrie-bp-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let node = one_shard(RecvMode::Multishot)
        .listen(&format!("unix://{}", path.display()))
        .unwrap()
        .start()
        .unwrap();
    let s = UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    pipeline_without_reading(s.try_clone().unwrap(), s, &node);
    node.shutdown();
    node.join();
    let _ = std::fs::remove_file(&path);
}

/// A protocol config whose streams grant a window wide enough that the depth of a pipeline
/// is set by the outbound queues, not by stream credit.
/// Whether the running kernel is at least `major.minor`.
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Times the shard held a connection's input back: its receive cancelled at the queues'
/// high-water mark, or (the light form) not armed again while output waited behind a send.
fn held_back(m: &ShardMetrics) -> u64 {
    m.input_holds() + m.input_rests()
}

fn wide(cfg: Config) -> Config {
    Config {
        window: WindowStrategy::Fixed(1 << 30),
        ..cfg
    }
}

fn wide_client() -> ClientConfig {
    let base = ClientConfig::default();
    ClientConfig {
        protocol: wide(base.protocol.clone()),
        ..base
    }
}

/// Pipeline `n` JOB_REQUESTs through the blocking client, reading answers only when the
/// client has to, then collect every answer: all come, in order.
fn client_pipelines(c: &mut Client, n: u32) {
    let payload = Bytes::from(vec![0x5a; 64]);
    let mut ids = Vec::with_capacity(n as usize);
    let mut answers = Vec::with_capacity(n as usize);
    let take = |e: Event, answers: &mut Vec<u32>| {
        if let Event::Frame(f) = e {
            assert_eq!(f.msg_type(), MessageType::JobAccept);
            assert!(f.header.flags.contains(Flags::RESPONSE));
            answers.push(f.header.correlation_id);
        }
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.len() < n as usize {
        assert!(Instant::now() < deadline, "pipelining stalled");
        match c.connection().request(
            1,
            MessageType::JobRequest,
            payload.clone(),
            SendOptions::default(),
        ) {
            Ok(id) => ids.push(id),
            Err(e) if e.is_backpressure() => {
                c.flush_now().unwrap();
                while let Some(e) = c.next_event(Duration::from_millis(1)).unwrap() {
                    take(e, &mut answers);
                }
                continue;
            }
            Err(SendError::Closing) => panic!("closed while pipelining"),
            Err(e) => panic!("{e}"),
        }
        if ids.len() % 500 == 0 {
            match c.flush_now() {
                Ok(()) => {}
                Err(ClientError::Backlog(_)) => {
                    while let Some(e) = c.next_event(Duration::ZERO).unwrap() {
                        take(e, &mut answers);
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    c.flush_now().unwrap();
    while answers.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "{} of {n} answered; connection {:?}",
            answers.len(),
            c.connection().state()
        );
        if let Some(e) = c.next_event(Duration::from_millis(100)).unwrap() {
            take(e, &mut answers);
        }
    }
    assert_eq!(answers, ids, "every request answered, in order");
}

#[test]
fn the_blocking_client_pipelines_over_tcp_unix_and_shm_without_deadlock() {
    let _alone = alone();
    let path = std::env::temp_dir().join(format!("valkyrie-bpc-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let shm = format!("shm://rt-bp-{}", std::process::id());
    let unix = format!("unix://{}", path.display());
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen(&unix)
        .unwrap()
        .listen(&shm)
        .unwrap()
        .shm(ShmConfig {
            ring_capacity: 64 * 1024,
            ..ShmConfig::default()
        })
        .shards(1)
        .protocol(wide(Config::new("node")))
        .service(|_| Echo)
        .start()
        .unwrap();
    for url in [node.url(), unix.clone(), shm.clone()] {
        let mut c = Client::connect_with(&url, wide_client()).unwrap();
        let t = Instant::now();
        client_pipelines(&mut c, 100_000);
        eprintln!("{url}: 100,000 requests answered in {:?}", t.elapsed());
        c.ping(b"still open").unwrap();
        c.close().unwrap();
    }
    assert!(held_back(&node.shard_metrics()[0]) >= 1);
    assert_eq!(node.shard_metrics()[0].slow_consumers(), 0);
    node.shutdown();
    node.join();
    let _ = std::fs::remove_file(&path);
}

#[test]
fn the_blocking_client_pipelines_over_tls_without_deadlock() {
    let _alone = alone();
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-7"]).unwrap();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(wide(Config {
            security: vec![SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            // A turn's receive (at most the shard's per-turn budget, ~2,000 requests) answered
            // in one flush never reaches the default queue's mark: a small queue makes sure
            // this run is held back at least once.
            scheduler: SchedulerLimits {
                max_frames: 512,
                ..SchedulerLimits::default()
            },
            ..Config::new("control")
        }))
        .tls(pki.server_config(0).unwrap())
        .shards(1)
        .service(|_| Echo)
        .start()
        .unwrap();
    let cfg = common::mtls_client(wide_client(), &pki, &pki.ca_pem, false);
    let mut c = Client::connect_with(&node.url(), cfg).unwrap();
    client_pipelines(&mut c, 100_000);
    c.ping(b"still open").unwrap();
    assert!(held_back(&node.shard_metrics()[0]) >= 1);
    assert_eq!(node.shard_metrics()[0].slow_consumers(), 0);
    c.close().unwrap();
    node.shutdown();
    node.join();
}

/// Every test here runs alone: two of them measure this process's resident memory, which
/// another test's node (faulting in its buffers) would move.
static ALONE: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn alone() -> std::sync::MutexGuard<'static, ()> {
    ALONE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Resident memory of this process, in bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// The bound docs/RUNTIME.md ("Back-pressure") states for one connection with the default
/// limits: 8 MiB of data queues, 1 MiB of critical queue, 0.4 MiB of queue bookkeeping, 1 MiB
/// of decoder, 1.25 MiB of send buffer, and what the socket had received when its receive was
/// cancelled (at most its receive buffer, 6 MiB with Linux's default `tcp_rmem`).
const CONNECTION_BOUND: u64 = 18 * 1024 * 1024;

/// Connect over TCP and finish the handshake with a sans-IO client connection whose
/// receive windows are wide, then hand both back; the caller never reads again.
fn handshaken(addr: &str) -> (TcpStream, valkyrie_protocol::Connection) {
    use valkyrie_protocol::{Connection, Side};
    let mut s = TcpStream::connect(addr).unwrap();
    let mut c = Connection::new(
        Side::Client,
        Arc::new(wide(Config::new("never-reads"))),
        Instant::now(),
        0,
    );
    let mut out = bytes::BytesMut::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !c.is_established() {
        out.clear();
        c.write_transmits(&mut out, usize::MAX);
        s.write_all(&out).unwrap();
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed during the handshake");
        c.handle_input(&buf[..n], Instant::now());
        while c.poll_event().is_some() {}
    }
    (s, c)
}

#[test]
fn a_peer_that_never_reads_large_answers_is_held_within_the_stated_bound() {
    let _alone = alone();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(wide(Config::new("node")))
        .slow_consumer_timeout(Duration::from_secs(1))
        .service(|_| Echo)
        .start()
        .unwrap();
    let addr = node.url().strip_prefix("tcp://").unwrap().to_owned();
    let before = rss();
    let (s, mut c) = handshaken(&addr);
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    // 60 KiB requests, each echoed: the node's data queues (8 MiB) bound what it holds.
    let writer = std::thread::spawn(move || {
        let payload = Bytes::from(vec![0x33; 60 * 1024]);
        let mut out = bytes::BytesMut::new();
        let t = Instant::now();
        let mut sent = 0u32;
        while t.elapsed() < Duration::from_secs(20) {
            while out.is_empty() && sent < 10_000 {
                match c.request(
                    1,
                    MessageType::JobRequest,
                    payload.clone(),
                    SendOptions::default(),
                ) {
                    Ok(_) => sent += 1,
                    Err(e) if e.is_backpressure() => break,
                    Err(e) => panic!("{e}"),
                }
                c.write_transmits(&mut out, usize::MAX);
            }
            match w.write(&out) {
                Ok(n) => {
                    let _ = out.split_to(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => break, // reset or broken pipe: the node closed it
            }
        }
        sent
    });
    wait_until(
        "the connection to be accepted",
        Duration::from_secs(10),
        || node.connections() == 1,
    );
    let mut peak = 0;
    let t = Instant::now();
    while node.connections() == 1 {
        assert!(t.elapsed() < Duration::from_secs(15), "never closed");
        peak = peak.max(rss().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(10));
    }
    let m = &node.shard_metrics()[0];
    assert_eq!(m.slow_consumers(), 1, "closed as a slow consumer");
    assert!(held_back(m) >= 1, "its input was held first");
    eprintln!("a connection held back with 60 KiB answers: peak {peak} bytes over the start");
    assert!(
        peak < CONNECTION_BOUND,
        "a connection held {peak} bytes under back-pressure, bound {CONNECTION_BOUND}"
    );
    drop(s);
    assert!(
        writer.join().unwrap() > 70,
        "more requests than the queues hold were sent"
    );
    node.shutdown();
    node.join();
}

#[test]
fn a_peer_that_never_reads_is_closed_after_the_timeout_and_its_memory_stays_bounded() {
    let _alone = alone();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .slow_consumer_timeout(Duration::from_secs(1))
        .start()
        .unwrap();
    let addr = node.url().strip_prefix("tcp://").unwrap().to_owned();
    let s = TcpStream::connect(addr).unwrap();
    let chunk = pings(1000);
    let before = rss();
    let mut w = s.try_clone().unwrap();
    w.set_write_timeout(Some(Duration::from_secs(1))).unwrap();
    // Write PINGs until the node stops taking them (input held) and closes the connection.
    let writer = std::thread::spawn(move || {
        w.write_all(&hello_bytes()).unwrap();
        let t = Instant::now();
        let mut written = 0usize;
        while t.elapsed() < Duration::from_secs(20) {
            match w.write(&chunk) {
                Ok(n) => written += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break, // reset or broken pipe: the node closed it
            }
        }
        written
    });
    wait_until(
        "the connection to be accepted",
        Duration::from_secs(10),
        || node.connections() == 1,
    );
    let mut peak = 0;
    let t = Instant::now();
    while node.connections() == 1 {
        assert!(t.elapsed() < Duration::from_secs(15), "never closed");
        peak = peak.max(rss().saturating_sub(before));
        std::thread::sleep(Duration::from_millis(20));
    }
    let m = &node.shard_metrics()[0];
    assert_eq!(m.slow_consumers(), 1, "closed as a slow consumer");
    assert!(held_back(m) >= 1, "its input was held first");
    eprintln!("a connection held back with PONGs: peak {peak} bytes over the start");
    assert!(
        peak < CONNECTION_BOUND,
        "a connection held {peak} bytes under back-pressure, bound {CONNECTION_BOUND}"
    );
    drop(s);
    let written = writer.join().unwrap();
    assert!(written > 0);
    node.shutdown();
    node.join();
}
