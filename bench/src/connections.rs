//! The `connections` scenario: hold N live, heartbeating connections on one node and measure what
//! each costs and how the node answers while they are held.
//!
//! One process may hold at most 20,000 descriptors here, so the load is spread the way a
//! deployment on a constrained host would spread it: the node keeps its connections in io_uring
//! direct-descriptor tables spread over several rings (shards; a table is capped at
//! RLIMIT_NOFILE per ring, and direct descriptors are not in the process's file table), and the
//! clients live in several child processes, each connecting from its own 127.0.0.x source address
//! so that no source runs out of ephemeral ports.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use socket2::{Domain, Socket, Type};
use valkyrie_protocol::message::{Hello, Payload};
use valkyrie_protocol::{Frame, HEADER_LEN, MessageType, SecurityMode};
use valkyrie_runtime::{BusyPoll, Node, RecvMode};

use crate::memory::{heap_bytes, rss_bytes, slab_bytes};
use crate::raw_client::RawClient;
use crate::report::Report;

/// Connections one holder process keeps (below its 20,000-descriptor limit).
const PER_HOLDER: usize = 18_000;
/// Connections per shard the node is sized for. SO_REUSEPORT spreads connections over the
/// shards by a hash of their addresses, not evenly: a shard whose table is full stops
/// accepting and the connections hashed to it wait in its listener's queue, so the tables
/// get ~17 % of headroom over this average.
const PER_SHARD: usize = 17_000;
/// Each shard's direct-descriptor table (a ring's table is capped at RLIMIT_NOFILE, 20,000).
const TABLE: u32 = 19_900;

fn hello(heartbeat_ms: u32) -> Vec<u8> {
    let hello = Hello::new(
        "holder",
        vec![SecurityMode::Plaintext],
        1 << 16,
        heartbeat_ms,
    );
    let mut v = Vec::new();
    Frame::new(MessageType::Hello, 0, hello.to_bytes()).encode(&mut v);
    v
}

fn read_frame(s: &mut TcpStream) -> std::io::Result<()> {
    let mut head = [0u8; HEADER_LEN];
    s.read_exact(&mut head)?;
    let len = u32::from_be_bytes(head[12..16].try_into().expect("4 bytes")) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)
}

/// (child process) Open `n` connections from `src`, complete HELLO on each, print `ready`, then
/// send a PING on every connection every `ping_every` and drain the answers, until stdin closes.
pub(crate) fn hold(addr: SocketAddr, n: usize, src: Ipv4Addr, heartbeat: Duration) {
    valkyrie_runtime::raise_nofile();
    let hello = hello(heartbeat.as_millis() as u32);
    // A client pings once per heartbeat interval, as a Valkyrie client with nothing else to send
    // does (the node allows 1.5 intervals of silence).
    let ping_every = heartbeat;
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, &b"hb"[..]).encode(&mut ping);
    let mut buf = vec![0u8; 4096];
    let mut conns: Vec<TcpStream> = Vec::with_capacity(n);
    // Source ports are chosen here, not by bind(port 0): the kernel's search for a free port at
    // bind time grows with the ports already in use, a sequential choice is O(1).
    let mut port: u16 = 20_000;
    let mut last_beat = Instant::now();
    let mut failed = 0usize;
    // Connect in batches: send each batch's HELLOs, then read their HELLO_ACKs, so the node's
    // accept queue is never flooded; keep the connections already up heartbeating meanwhile.
    while conns.len() < n {
        let start = conns.len();
        let batch = (n - start).min(500);
        while conns.len() < start + batch {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
            s.set_reuse_address(true).expect("SO_REUSEADDR");
            port = port
                .checked_add(1)
                .expect("out of source ports on this address");
            if s.bind(&SocketAddrV4::new(src, port).into()).is_err() {
                continue;
            }
            s.connect(&addr.into()).expect("connect");
            s.set_tcp_nodelay(true).expect("nodelay");
            let mut s: TcpStream = s.into();
            s.write_all(&hello).expect("hello");
            conns.push(s);
        }
        // A connection whose HELLO_ACK does not come within 30 s of its batch's HELLOs is
        // given up on (and counted), as a real client would.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut k = start;
        while k < conns.len() {
            let s = &mut conns[k];
            let left = deadline.saturating_duration_since(Instant::now());
            s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .expect("timeout");
            if read_frame(s).is_ok() {
                s.set_nonblocking(true).expect("nonblocking");
                k += 1;
            } else {
                conns.swap_remove(k);
                failed += 1;
            }
        }
        if failed > n / 10 {
            eprintln!("holder {src}: {failed} connections got no HELLO_ACK in 30 s: giving up");
            return;
        }
        if last_beat.elapsed() >= ping_every * 3 / 4 {
            beat(&mut conns[..start], &ping, &mut buf);
            last_beat = Instant::now();
        }
    }
    if failed > 0 {
        eprintln!("holder {src}: {failed} connections got no HELLO_ACK in 30 s");
    }
    // Every connection pinged now, then once per interval from here (the ramp's pings came at
    // most 3/4 of an interval apart).
    beat(&mut conns, &ping, &mut buf);
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = std::io::stdin().read_line(&mut sink);
        s2.store(true, Ordering::SeqCst);
    });
    // Pace the heartbeats evenly over the interval, a few connections every 5 ms tick (as
    // independent clients would), and read each slice's PONGs on the next tick: a client that
    // left its PONG unread would keep the frame's buffers in both loopback ends' kernels.
    let tick = Duration::from_millis(5);
    let ticks = (ping_every.as_nanos() / tick.as_nanos()).max(1) as usize;
    let mut lost = 0usize;
    let mut k = 0usize;
    let mut prev = 0..0;
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        drain(&mut conns[prev.clone()], &mut buf);
        let slice = k * conns.len() / ticks..(k + 1) * conns.len() / ticks;
        lost += ping_all(&mut conns[slice.clone()], &ping);
        prev = slice;
        k = (k + 1) % ticks;
        next += tick;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    if lost > 0 {
        eprintln!("holder {src}: {lost} heartbeat writes failed");
    }
}

/// Send one PING on every connection. Returns failed writes.
fn ping_all(conns: &mut [TcpStream], ping: &[u8]) -> usize {
    conns
        .iter_mut()
        .map(|s| usize::from(s.write_all(ping).is_err()))
        .sum()
}

/// Read whatever has arrived on every connection (non-blocking).
fn drain(conns: &mut [TcpStream], buf: &mut [u8]) {
    for s in conns.iter_mut() {
        while let Ok(1..) = s.read(buf) {}
    }
}

/// Send one PING on every connection and drain what has arrived. Returns failed writes.
fn beat(conns: &mut [TcpStream], ping: &[u8], buf: &mut [u8]) -> usize {
    let lost = ping_all(conns, ping);
    drain(conns, buf);
    lost
}

fn spawn_holder(addr: SocketAddr, n: usize, src: Ipv4Addr, heartbeat: Duration) -> Child {
    Command::new(std::env::current_exe().expect("own path"))
        .args([
            "hold-heartbeating",
            &addr.to_string(),
            &n.to_string(),
            &src.to_string(),
            &heartbeat.as_millis().to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn holder")
}

/// Hold `n` connections for two heartbeat intervals plus a second, probing RTT meanwhile.
pub(crate) fn scenario(report: &mut Report, n: usize, heartbeat: Duration, busy: BusyPoll) {
    let hold = heartbeat * 2 + Duration::from_secs(1);
    let shards = n.div_ceil(PER_SHARD).max(2);
    let holders = n.div_ceil(PER_HOLDER);
    println!(
        "\nconnections: {n} live connections (HELLO done; each client PINGs once per {:.0} s heartbeat, paced over the interval) held by {holders} client processes from {holders} source addresses; node with {shards} shards (one direct-descriptor table each), receive mode poll, buffers released when drained",
        heartbeat.as_secs_f64()
    );
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .expect("endpoint")
        .shards(shards)
        .heartbeat(heartbeat)
        .busy_poll(busy)
        .configure(|c| {
            c.recv_mode = RecvMode::PollThenRecv;
            c.shrink_when_drained = true;
            c.direct_descriptors = Some(TABLE);
            c.recv_buffers = 16; // 1 MiB of 64 KiB buffers per shard
        })
        .start()
        .expect("node");
    let addr = match &node.endpoints()[0] {
        valkyrie_runtime::Endpoint::Tcp(a) => *a,
        _ => unreachable!("tcp"),
    };
    std::thread::sleep(Duration::from_millis(200));
    let (rss0, slab0, heap0) = (rss_bytes(), slab_bytes(), heap_bytes());
    let t0 = Instant::now();
    // Ramp up one client process at a time (as a fleet comes online), so that connecting never
    // competes with every earlier process's heartbeats at once.
    let mut children: Vec<Child> = Vec::with_capacity(holders);
    let mut ready = 0;
    for i in 0..holders {
        let k = (n - i * PER_HOLDER).min(PER_HOLDER);
        let mut c = spawn_holder(addr, k, Ipv4Addr::new(127, 0, 1, 1 + i as u8), heartbeat);
        let mut line = String::new();
        if let Some(out) = c.stdout.as_mut() {
            let _ = BufReader::new(out).read_line(&mut line);
        }
        if line.trim() == "ready" {
            ready += 1;
        }
        children.push(c);
    }
    let connect_secs = t0.elapsed().as_secs_f64();
    let held_at_ready = node.connections();
    println!(
        "  {ready}/{holders} holders ready, {held_at_ready} connections open after {connect_secs:.1} s"
    );
    // Hold for at least two heartbeat intervals, probing meanwhile.
    let mut probe = RawClient::connect(addr, true, false).expect("probe connect");
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0xA5u8; 64]).encode(&mut ping);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let hold_start = Instant::now();
    let mut probe_error = None;
    let mut min_held = held_at_ready;
    while hold_start.elapsed() < hold {
        for _ in 0..100 {
            if probe_error.is_some() {
                break;
            }
            match probe.round_trip(&ping) {
                Ok(d) => h.saturating_record(d.as_nanos() as u64),
                Err(e) => probe_error = Some(e),
            }
        }
        min_held = min_held.min(node.connections());
        std::thread::sleep(Duration::from_millis(10));
    }
    let (rss1, slab1, heap1) = (rss_bytes(), slab_bytes(), heap_bytes());
    let held = (node.connections() - 1).max(0) as usize; // the probe is not counted
    let timeouts: u64 = node
        .shard_metrics()
        .iter()
        .map(|m| m.heartbeat_timeouts())
        .sum();
    for c in &mut children {
        drop(c.stdin.take());
    }
    for mut c in children {
        let _ = c.wait();
    }
    let p99 = h.value_at_quantile(0.99) as f64 / 1000.0;
    let params = json!({"transport": "tcp", "connections": n, "shards": shards, "recv": "poll", "shrink_when_drained": true, "holders": holders, "hold_s": hold.as_secs(), "heartbeat_ms": heartbeat.as_millis() as u64, "pings_per_heartbeat": 1, "busy_poll": format!("{busy:?}")});
    let (user, kernel) =
        crate::memory::report_memory(report, held, (rss0, slab0), (rss1, slab1), &params);
    report.add(
        "connections",
        "valkyrie",
        "probe_rtt_p99",
        "us",
        p99,
        params,
    );
    println!(
        "  held {held} for {:.0} s (lowest count seen {}), heartbeat timeouts {timeouts}; per connection: user {user:.0} B + kernel {kernel:.0} B = {:.0} B (target 4.5 KiB = 4608 B)",
        hold.as_secs_f64(),
        min_held - 1,
        user + kernel
    );
    println!(
        "  heap allocated and not freed while held, beyond the shards' reserved connection tables (glibc mallinfo2): {:.0} B per connection",
        heap1.saturating_sub(heap0) as f64 / held.max(1) as f64
    );
    println!(
        "  probe RTT while held: p50 {:.1} us, p99 {p99:.1} us (target < 100 us), {} samples",
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.len()
    );
    if let Some(e) = probe_error {
        println!("  the probe connection failed while held: {e}");
    }
    drop(node);
}
