//! The idle-memory scenario: connections held by a child process, and the bytes each costs
//! the node.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use valkyrie_protocol::HEADER_LEN;
use valkyrie_runtime::{Node, RecvMode};

use crate::memory::{report_memory, rss_bytes, slab_bytes};
use crate::raw_client::hello_frame;
use crate::report::Report;
use crate::server::Server;

pub(crate) fn idle_memory(report: &mut Report, n: usize) {
    println!(
        "\nidle memory: {n} idle connections (HELLO done) to a 2-shard node; clients in a child process"
    );
    // Each mode is measured in a fresh process, so that neither inherits the other's (or any
    // earlier scenario's) allocator state.
    for recv in ["multishot", "poll"] {
        let out = Command::new(std::env::current_exe().expect("own path"))
            .args(["idle-memory", recv, &n.to_string()])
            .stderr(Stdio::null())
            .output()
            .expect("run idle-memory child");
        let text = String::from_utf8_lossy(&out.stdout);
        for line in text.lines() {
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Array(rows)) => report.results.extend(rows),
                _ => println!("{line}"),
            }
        }
    }
}

pub(crate) fn idle_memory_mode(report: &mut Report, n: usize, recv: RecvMode) {
    let recv_name = if recv == RecvMode::Multishot {
        "multishot"
    } else {
        "poll"
    };
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .expect("endpoint")
        .shards(2)
        .heartbeat(Duration::from_secs(60))
        .configure(|c| c.recv_mode = recv)
        .start()
        .expect("node");
    let Server::Valkyrie(node) = Server::Valkyrie(node) else {
        unreachable!()
    };
    let addr = match &node.endpoints()[0] {
        valkyrie_runtime::Endpoint::Tcp(a) => *a,
        _ => unreachable!(),
    };
    let hold = |k: usize| spawn_holder(&["hold", &addr.to_string(), &k.to_string()]);
    // Warm-up: a few connections, so that one-time start-up allocations are not counted.
    // (Receive buffers are faulted in when the node starts; the per-connection tables are
    // not pre-grown, so their growth is part of what is measured.)
    let mut warm = hold(n.min(64));
    drop(warm.stdin.take());
    let _ = warm.wait();
    let t = Instant::now();
    while node.connections() > 0 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, slab0) = (rss_bytes(), slab_bytes());
    let mut child = hold(n);
    let t = Instant::now();
    while (node.connections() as usize) < n && t.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    // Let every connection's first timer pass so idle buffers are released.
    std::thread::sleep(Duration::from_millis(500));
    let (rss1, slab1) = (rss_bytes(), slab_bytes());
    let held = node.connections() as usize;
    drop(child.stdin.take());
    let _ = child.wait();
    let params = json!({"transport": "tcp", "connections": held, "shards": 2, "recv": recv_name, "idle": true});
    let (user, kernel) = report_memory(report, held, (rss0, slab0), (rss1, slab1), &params);
    println!(
        "  valkyrie   recv {recv_name:<9} {held} held: user {user:.0} B/conn (RSS delta / N, target <= 1024), kernel ~{kernel:.0} B/conn (Slab delta / N / 2)"
    );
}

/// This program again with `args` (a holder of connections), once it says `ready`; it lets
/// them go when its stdin closes.
pub(crate) fn spawn_holder(args: &[&str]) -> Child {
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn holder");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("ready line");
    assert_eq!(line.trim(), "ready", "holder failed");
    child
}

pub(crate) fn hold(addr: SocketAddr, n: usize) {
    valkyrie_runtime::raise_nofile();
    let hello = hello_frame();
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.write_all(&hello).expect("hello");
        let mut head = [0u8; HEADER_LEN];
        s.read_exact(&mut head).expect("hello ack");
        let len = u32::from_be_bytes(head[12..16].try_into().expect("4")) as usize;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).expect("hello ack body");
        conns.push(s);
    }
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}
