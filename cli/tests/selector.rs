//! The transport selector (`Client::connect_any`) against real nodes: a peer reachable over
//! shared memory and over TCP is reached over shared memory whatever order the URLs come in;
//! when the shared-memory node is killed (SIGKILL, mid-stream of requests) the client moves to
//! TCP and every request is answered — none lost; when a node serves that name again, the
//! client moves back within two heartbeat intervals of its next calls.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::MessageType;
use valkyrie_runtime::{Client, ClientConfig};

mod common;

fn echo_node(listen: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["node", "--listen", listen, "--shards", "1", "--echo"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn ask(c: &mut Client, n: u32) -> Bytes {
    let body = Bytes::from(format!("request {n}"));
    let f = c
        .request(
            101,
            MessageType::JobRequest,
            body.clone(),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|e| panic!("request {n}: {e}"));
    assert_eq!(f.payload, body, "answer to {n}");
    f.payload
}

fn kill(mut c: Child) {
    let _ = c.kill();
    let _ = c.wait();
}

#[test]
fn the_selector_prefers_shared_memory_falls_back_to_tcp_and_returns() {
    let name = format!("selector-{}", std::process::id());
    let port = common::free_port();
    let (shm, tcp) = (format!("shm://{name}"), format!("tcp://127.0.0.1:{port}"));
    let tcp_node = echo_node(&tcp);
    let shm_node = echo_node(&shm);
    common::wait_until("the TCP node", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let mut cfg = ClientConfig::default();
    cfg.protocol.heartbeat = Duration::from_millis(100);
    // TCP first in the list: the selector still takes shared memory.
    let t = Instant::now();
    let mut c = loop {
        match Client::connect_any(
            &[tcp.as_str(), shm.as_str()],
            cfg.clone(),
            Duration::from_secs(5),
        ) {
            Ok(c) if c.url().map(ToString::to_string) == Some(shm.clone()) => break c,
            _ if t.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(20))
            }
            other => panic!(
                "not on shared memory: {:?}",
                other.map(|c| c.url().cloned())
            ),
        }
    };
    let mut n = 0;
    for _ in 0..200 {
        ask(&mut c, n);
        n += 1;
    }
    // Killed under the client: the next requests go over TCP, each answered.
    kill(shm_node);
    for _ in 0..200 {
        ask(&mut c, n);
        n += 1;
    }
    assert_eq!(c.url().map(ToString::to_string), Some(tcp.clone()));
    // Shared memory is back: within two heartbeat intervals of calls the client returns.
    let again = echo_node(&shm);
    let t = Instant::now();
    while c.url().map(ToString::to_string) != Some(shm.clone()) {
        assert!(t.elapsed() < Duration::from_secs(10), "never moved back");
        ask(&mut c, n);
        n += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    let back_after = t.elapsed();
    for _ in 0..100 {
        ask(&mut c, n);
        n += 1;
    }
    eprintln!(
        "{n} requests, every one answered; back on shared memory {back_after:?} after it returned; {} sent again",
        c.retried()
    );
    let _ = c.close();
    kill(again);
    kill(tcp_node);
}

#[test]
fn urls_that_cannot_reach_a_peer_from_here_are_skipped() {
    let missing = format!("unix:///tmp/valkyrie-no-such-{}.sock", std::process::id());
    let Err(e) = Client::connect_any(
        &[missing.as_str(), "not a url"],
        ClientConfig::default(),
        Duration::from_millis(200),
    ) else {
        panic!("nothing to reach, yet connected");
    };
    assert!(e.to_string().contains("none of these reaches"), "{e}");
    let ranks: Vec<u8> = ["tcp://127.0.0.1:1", "unix:///tmp/x", "shm://x"]
        .iter()
        .map(|u| valkyrie_runtime::transport_rank(&u.parse().unwrap()))
        .collect();
    assert!(ranks[2] < ranks[1] && ranks[1] < ranks[0], "{ranks:?}");
}
