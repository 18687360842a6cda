//! The node over shared memory: the same services as TCP, large frames through small rings,
//! and clean-up when a client closes or is killed.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{Client, ConnRef, Ctx, Node, Service};
use valkyrie_shm::ShmConfig;

/// Answers a JOB_REQUEST with its own payload.
struct Echo;
impl Service for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload)
                .unwrap();
        }
    }
}

fn name(tag: &str) -> String {
    format!("rt-{tag}-{}", std::process::id())
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn shm_clients_get_the_same_service_as_tcp_clients() {
    let shm = format!("shm://{}", name("same"));
    // Small rings (64 KiB): a 200 KB frame crosses in chunks, with back-pressure both ways.
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen(&shm)
        .unwrap()
        .shm(ShmConfig {
            ring_capacity: 64 * 1024,
            ..ShmConfig::default()
        })
        .shards(2)
        .service(|_| Echo)
        .start()
        .unwrap();
    let tcp = node.url();
    let big: Bytes = (0..200_000).map(|i| (i * 7 % 251) as u8).collect();
    for url in [shm.as_str(), tcp.as_str()] {
        let mut c = Client::connect(url).unwrap();
        assert_eq!(c.peer().unwrap().version, 2, "{url}");
        for _ in 0..200 {
            c.ping(b"over shared memory").unwrap();
        }
        for payload in [Bytes::from_static(b"small"), big.clone()] {
            let r = c
                .request(
                    1,
                    MessageType::JobRequest,
                    payload.clone(),
                    Duration::from_secs(10),
                )
                .unwrap();
            assert_eq!(r.msg_type(), MessageType::JobAccept);
            assert_eq!(r.payload, payload, "{url}");
        }
        if url.starts_with("shm") {
            let m = node.metrics_text();
            assert!(
                m.contains(
                    "valkyrie_connections_active{security=\"plaintext\",transport=\"shm\"} 1"
                ),
                "{m}"
            );
        }
        c.close().unwrap();
    }
    wait_until("connections to close", || node.connections() == 0);
    node.shutdown();
    node.join();
}

#[test]
fn many_shm_clients_at_once() {
    let shm = format!("shm://{}", name("many"));
    let node = Node::builder()
        .listen(&shm)
        .unwrap()
        .shm(ShmConfig {
            ring_capacity: 16 * 1024,
            ..ShmConfig::default()
        })
        .shards(2)
        .service(|_| Echo)
        .start()
        .unwrap();
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let shm = shm.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&shm).unwrap();
                for i in 0..300u32 {
                    let p = Bytes::from(format!("{t}-{i}-{}", "x".repeat(i as usize * 10)));
                    let r = c
                        .request(
                            1,
                            MessageType::JobRequest,
                            p.clone(),
                            Duration::from_secs(10),
                        )
                        .unwrap();
                    assert_eq!(r.payload, p);
                }
                c.close().unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    wait_until("connections to close", || node.connections() == 0);
    node.shutdown();
    node.join();
}

/// Child process: connect, ping once, say so, then wait to be killed.
#[test]
#[ignore = "run by killed_shm_client_is_released as a child process"]
fn child_client() {
    let url = std::env::var("SHM_URL").expect("SHM_URL");
    let mut c = Client::connect(&url).unwrap();
    c.ping(b"hi").unwrap();
    println!("connected");
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn killed_shm_client_is_released_within_a_second() {
    let shm = format!("shm://{}", name("killed"));
    let node = Node::builder()
        .listen(&shm)
        .unwrap()
        .shards(1)
        .start()
        .unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_client", "--ignored", "--nocapture"])
        .env("SHM_URL", &shm)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.trim_end().ends_with("connected") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited");
    }
    assert_eq!(node.connections(), 1);
    let killed = Instant::now();
    child.kill().unwrap();
    child.wait().unwrap();
    while node.connections() != 0 {
        assert!(
            killed.elapsed() < Duration::from_secs(1),
            "a killed client's connection is still open"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    // The node serves the next client as before.
    let mut c = Client::connect(&shm).unwrap();
    c.ping(b"next").unwrap();
    c.close().unwrap();
    node.shutdown();
    node.join();
}
