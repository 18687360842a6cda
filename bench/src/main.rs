//! `valkyrie-bench`: measures Valkyrie beside the systems a user would pick instead, in one run.
//!
//! Rules (../shared/BENCH.md): same run, same machine, same payloads; systems alternate within
//! each round (A B C A B C ...); every figure is the median over rounds; every sample is recorded
//! in an hdrhistogram; pinning and modes are printed with the results.
#![allow(missing_docs, unreachable_pub)]

mod connections;
mod peers;
mod plot;
mod shm;
mod targets;
mod transfer;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use valkyrie_protocol::message::{Hello, Payload};
use valkyrie_protocol::{Frame, HEADER_LEN, MessageType, SecurityMode};
use valkyrie_runtime::{BusyPoll, Node, RecvMode};

use peers::{Pinning, floor::Floor, pin, tokio_echo::TokioEcho};

#[derive(Parser)]
#[command(name = "valkyrie-bench", about = "Valkyrie benchmark harness")]
struct Cli {
    /// Scenario to run (idle-memory, handshake, latency, throughput, transfer, shm, connections);
    /// repeatable. Default: all but connections.
    #[arg(long = "scenario")]
    scenarios: Vec<String>,
    /// Rounds per scenario (at least 3).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Longer runs.
    #[arg(long)]
    full: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<String>,
    /// Write an SVG plot of the latency distributions here.
    #[arg(long)]
    plot: Option<String>,
    /// Only these systems (valkyrie, valkyrie-poll, tokio, glommio, grpc, floor); repeatable.
    /// Default: all.
    #[arg(long = "system")]
    systems: Vec<String>,
    /// How a Valkyrie shard busy-polls in the latency scenario's busy-poll mode: always, or
    /// adaptive[:MICROS] (spin that long after the last completion, then sleep).
    #[arg(long, default_value = "always")]
    spin: BusyPoll,
    /// Heartbeat interval for the connections scenario, in milliseconds (each held connection
    /// PINGs once per interval; the node's own default interval is 5 s).
    #[arg(long, default_value_t = 60_000)]
    heartbeat_ms: u64,
    /// How the node's shards busy-poll in the connections scenario: off (default),
    /// adaptive[:MICROS] or always.
    #[arg(long, default_value = "off")]
    node_busy_poll: BusyPoll,
    /// Connections for the idle-memory and connections scenarios.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    #[command(subcommand)]
    internal: Option<Internal>,
}

#[derive(Subcommand)]
enum Internal {
    /// (internal) Hold N connections to URL open until stdin closes.
    Hold { addr: SocketAddr, n: usize },
    /// (internal) Measure idle memory for one receive mode in this fresh process.
    IdleMemory { recv: String, n: usize },
    /// (internal) Hold N heartbeating connections from source address SRC until stdin closes.
    HoldHeartbeating {
        addr: SocketAddr,
        n: usize,
        src: std::net::Ipv4Addr,
        heartbeat_ms: u64,
    },
    /// (internal) The peer process of the shm scenario.
    ShmPeer {
        system: String,
        name: String,
        role: String,
        mode: String,
        n: u64,
    },
}

pub(crate) struct Report {
    results: Vec<Value>,
}

impl Report {
    fn add(
        &mut self,
        scenario: &str,
        system: &str,
        metric: &str,
        unit: &str,
        value: f64,
        params: Value,
    ) {
        self.results.push(json!({
            "scenario": scenario, "system": system, "metric": metric, "unit": unit,
            "value": (value * 100.0).round() / 100.0, "params": params,
        }));
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn hello_frame() -> Vec<u8> {
    let hello = Hello::new("bench", vec![SecurityMode::Plaintext], 1 << 20, 60_000);
    let mut v = Vec::new();
    Frame::new(MessageType::Hello, 0, hello.to_bytes()).encode(&mut v);
    v
}

/// The same client for every system: writes a PING frame, reads the PONG frame.
pub(crate) struct RawClient {
    s: TcpStream,
    busy: bool,
    rbuf: Vec<u8>,
}

impl RawClient {
    pub(crate) fn connect(
        addr: SocketAddr,
        valkyrie: bool,
        busy: bool,
    ) -> std::io::Result<RawClient> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut c = RawClient {
            s,
            busy: false,
            rbuf: vec![0u8; 64 * 1024],
        };
        if valkyrie {
            c.s.write_all(&hello_frame())?;
            c.read_frame()?;
        }
        c.busy = busy;
        c.s.set_nonblocking(busy)?;
        Ok(c)
    }

    fn read_exact(&mut self, n: usize) -> std::io::Result<()> {
        let mut got = 0;
        while got < n {
            match self.s.read(&mut self.rbuf[got..n]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read one frame; returns its total length.
    fn read_frame(&mut self) -> std::io::Result<usize> {
        self.read_exact(HEADER_LEN)?;
        let len = u32::from_be_bytes(self.rbuf[12..16].try_into().expect("4 bytes")) as usize;
        let mut tail = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.s.read(&mut tail[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(HEADER_LEN + len)
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        let mut off = 0;
        while off < b.len() {
            match self.s.write(&b[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn round_trip(&mut self, ping: &[u8]) -> std::io::Result<Duration> {
        let t = Instant::now();
        self.write_all(ping)?;
        let n = self.read_exact(ping.len()).map(|_| ping.len());
        let _ = n?;
        debug_assert_eq!(self.rbuf[3], MessageType::Pong.to_u8());
        Ok(t.elapsed())
    }
}

enum Server {
    Valkyrie(Node),
    Tokio(peers::TokioServer),
    Floor(Floor),
    Grpc(peers::TokioServer),
    Glommio(peers::glommio_echo::GlommioEcho),
}

impl Server {
    fn addr(&self) -> SocketAddr {
        match self {
            Server::Valkyrie(n) => match &n.endpoints()[0] {
                valkyrie_runtime::Endpoint::Tcp(a) => *a,
                _ => unreachable!("bench listens on tcp"),
            },
            Server::Tokio(t) => t.addr,
            Server::Floor(f) => f.addr,
            Server::Grpc(g) => g.addr,
            Server::Glommio(g) => g.addr,
        }
    }
}

fn start(system: &str, core: usize, shards: usize, busy: bool, spin: BusyPoll) -> Server {
    match system {
        "valkyrie" | "valkyrie-poll" => {
            let recv = if system == "valkyrie" {
                RecvMode::Multishot
            } else {
                RecvMode::PollThenRecv
            };
            let mut b = Node::builder()
                .configure(|c| c.recv_mode = recv)
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .shards(shards)
                .heartbeat(Duration::from_secs(60))
                .busy_poll(if busy { spin } else { BusyPoll::Off });
            if shards == 1 {
                // Pin the single shard to the server core.
                b = b.pin(false);
                pin_next_thread_hint(core);
            }
            let node = b.start().expect("valkyrie node");
            Server::Valkyrie(node)
        }
        "tokio" => Server::Tokio(
            TokioEcho::start(core, if shards > 1 { shards } else { 1 }).expect("tokio"),
        ),
        "floor" => Server::Floor(Floor::start(core).expect("floor")),
        "glommio" => {
            Server::Glommio(peers::glommio_echo::GlommioEcho::start(core).expect("glommio"))
        }
        "grpc" => Server::Grpc(peers::grpc::GrpcEcho::start(core, shards.max(1)).expect("grpc")),
        other => panic!("unknown system {other}"),
    }
}

/// `samples` unary gRPC calls of a 64-byte payload (after a tenth as warm-up), one at a time.
fn grpc_round_trips(addr: SocketAddr, samples: usize) -> Histogram<u64> {
    let mut c = peers::grpc::GrpcClient::connect(addr).expect("grpc connect");
    let payload = [0xA5u8; 64];
    for _ in 0..samples / 10 {
        c.round_trip(&payload).expect("warm-up");
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for _ in 0..samples {
        let d = c.round_trip(&payload).expect("grpc call");
        h.saturating_record(d.as_nanos() as u64);
    }
    h
}

/// Shard threads pin themselves to core `id % cores` when pinning is on; with one shard and
/// pinning off, the shard inherits the affinity of the thread that starts it, so pin that.
fn pin_next_thread_hint(core: usize) {
    pin(core);
}

fn latency(
    report: &mut Report,
    rounds: usize,
    samples: usize,
    only: &[String],
    spin: BusyPoll,
) -> Vec<plot::Distribution> {
    let mut dists: Vec<plot::Distribution> = Vec::new();
    let pinning = Pinning {
        server: 0,
        client: 1,
    };
    let systems: Vec<&str> = [
        "valkyrie",
        "valkyrie-poll",
        "tokio",
        "glommio",
        "grpc",
        "floor",
    ]
    .into_iter()
    .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
    .collect();
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0xA5u8; 64])
        .with_correlation(1)
        .encode(&mut ping);
    println!(
        "\nlatency: 64-byte PING/PONG over TCP loopback, server on core {}, client on core {}, {samples} round trips x {rounds} rounds, medians",
        pinning.server, pinning.client
    );
    println!(
        "  {:<10} {:<10} {:>9} {:>9} {:>9} {:>9}   p99 vs tokio",
        "mode", "system", "p50 us", "p99 us", "p999 us", "max us"
    );
    let bar = progress((2 * rounds * systems.len()) as u64, "latency");
    for (mode, busy) in [("busy-poll", true), ("blocking", false)] {
        let mut per: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
        for _ in 0..rounds {
            for &system in &systems {
                if busy && system == "grpc" {
                    // tonic has no busy-poll mode: it is measured blocking only.
                    bar.inc(1);
                    continue;
                }
                // Server threads inherit the affinity of their creator: create them from a
                // thread pinned to the server core.
                let server = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(pinning.server);
                        start(system, pinning.server, 1, busy, spin)
                    })
                    .join()
                    .expect("server start")
                });
                let addr = server.addr();
                let hist = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(pinning.client);
                        if system == "grpc" {
                            return grpc_round_trips(addr, samples);
                        }
                        let mut c = RawClient::connect(addr, system.starts_with("valkyrie"), busy)
                            .expect("connect");
                        for _ in 0..samples / 10 {
                            c.round_trip(&ping).expect("warm-up");
                        }
                        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3)
                            .expect("histogram");
                        for _ in 0..samples {
                            let d = c.round_trip(&ping).expect("round trip");
                            h.saturating_record(d.as_nanos() as u64);
                        }
                        h
                    })
                    .join()
                    .expect("client")
                });
                drop(server);
                bar.inc(1);
                let e = per.entry(system).or_default();
                for (i, q) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                    e[i].push(hist.value_at_quantile(q) as f64 / 1000.0);
                }
                e[3].push(hist.max() as f64 / 1000.0);
                let label = system.to_owned();
                match dists.iter_mut().find(|d| d.0 == mode && d.1 == label) {
                    Some(d) => {
                        let _ = d.2.add(&hist);
                    }
                    None => dists.push((mode.to_owned(), label, hist)),
                }
            }
        }
        if mode == "blocking" {
            bar.finish_and_clear();
        }
        let tokio_p99 = per.get("tokio").map_or(f64::NAN, |v| median(v[1].clone()));
        for &system in &systems {
            let Some(v) = per.get(system) else {
                continue;
            };
            let (p50, p99, p999, max) = (
                median(v[0].clone()),
                median(v[1].clone()),
                median(v[2].clone()),
                median(v[3].clone()),
            );
            println!(
                "  {mode:<10} {system:<10} {p50:>9.1} {p99:>9.1} {p999:>9.1} {max:>9.1}   {:.2}",
                p99 / tokio_p99
            );
            let mut params = json!({"spin": if busy { format!("{spin:?}") } else { "off".into() }, "transport": "tcp", "size": 64, "mode": mode, "server_core": pinning.server, "client_core": pinning.client, "shards": 1});
            let name = match system {
                "valkyrie" => {
                    params["recv"] = json!("multishot");
                    "valkyrie"
                }
                "valkyrie-poll" => {
                    params["recv"] = json!("poll");
                    "valkyrie"
                }
                other => other,
            };
            for (metric, value) in [
                ("rtt_p50", p50),
                ("rtt_p99", p99),
                ("rtt_p999", p999),
                ("rtt_max", max),
            ] {
                report.add("latency", name, metric, "us", value, params.clone());
            }
        }
    }
    dists
}

fn throughput(report: &mut Report, rounds: usize, secs: f64, only: &[String]) {
    const CONNS: usize = 64;
    const DEPTH: usize = 32;
    let systems: Vec<&str> = ["valkyrie", "tokio", "floor"]
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| o == s))
        .collect();
    println!(
        "\nthroughput: 64-byte PING/PONG pipelined, {CONNS} connections x {DEPTH} in flight, 2 client threads, servers unpinned with 2 shards/workers; {secs} s x {rounds} rounds, medians"
    );
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0x5Au8; 64]).encode(&mut ping);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * DEPTH)
        .collect();
    let mut per: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let bar = progress((rounds * systems.len()) as u64, "throughput");
    for _ in 0..rounds {
        for &system in &systems {
            let server = start(system, 0, 2, false, BusyPoll::Off);
            let addr = server.addr();
            let stop = Arc::new(AtomicBool::new(false));
            let count = Arc::new(AtomicU64::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (stop, count, batch) = (stop.clone(), count.clone(), batch.clone());
                    std::thread::spawn(move || {
                        let mut conns: Vec<RawClient> = (0..CONNS / 2)
                            .map(|_| {
                                RawClient::connect(addr, system.starts_with("valkyrie"), false)
                                    .expect("connect")
                            })
                            .collect();
                        let mut sink = vec![0u8; batch.len()];
                        while !stop.load(Ordering::Relaxed) {
                            for c in conns.iter_mut() {
                                c.s.write_all(&batch).expect("write");
                            }
                            for c in conns.iter_mut() {
                                c.s.read_exact(&mut sink).expect("read");
                            }
                            count.fetch_add((DEPTH * conns.len()) as u64, Ordering::Relaxed);
                        }
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_millis(300));
            let c0 = count.load(Ordering::Relaxed);
            let t0 = Instant::now();
            std::thread::sleep(Duration::from_secs_f64(secs));
            let rate = (count.load(Ordering::Relaxed) - c0) as f64 / t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
            drop(server);
            per.entry(system).or_default().push(rate);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let tokio = per.get("tokio").map_or(f64::NAN, |v| median(v.clone()));
    for &system in &systems {
        let rate = median(per[system].clone());
        println!(
            "  {system:<10} {:>12.0} msgs/s  {:>8.1} MB/s   {:.2}x tokio   (seed target 10,000,000 msgs/s per node: {:.1}%)",
            rate,
            rate * ping.len() as f64 / 1e6,
            rate / tokio,
            rate / 1e7 * 100.0
        );
        let params = json!({"transport": "tcp", "size": 64, "connections": CONNS, "depth": DEPTH, "shards": 2});
        report.add(
            "throughput",
            system,
            "msgs_per_sec",
            "msgs/s",
            rate,
            params.clone(),
        );
        report.add(
            "throughput",
            system,
            "bytes_per_sec",
            "B/s",
            rate * ping.len() as f64,
            params,
        );
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  {msg:<11} [{bar:30}] {pos}/{len} runs, {elapsed}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// TLS configurations for a node and its client (mtls).
type TlsPair = (
    Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
    Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>,
);

/// A node and a client configuration for one security mode (fresh keys per call), and TLS
/// for mtls.
fn secured(
    mode: &str,
) -> (
    valkyrie_protocol::Config,
    valkyrie_protocol::Config,
    Option<TlsPair>,
) {
    use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
    use valkyrie_protocol::security::token::{TokenClient, TokenServer};
    let (mut server, mut client) = (
        valkyrie_protocol::Config::new("bench-node"),
        valkyrie_protocol::Config::new("bench-client"),
    );
    let mut tls = None;
    match mode {
        "mtls" => {
            use valkyrie_protocol::security::mtls::{DevPki, Mtls};
            let pki = DevPki::generate(&["127.0.0.1"], &["bench-client"]).expect("dev pki");
            let s = pki.server_config(0).expect("tls server");
            let c = pki.client_config(0).expect("tls client");
            tls = Some((s, c));
            server.security = vec![SecurityMode::Mtls];
            server.handshakes = vec![Arc::new(Mtls)];
            client.security = vec![SecurityMode::Mtls];
            client.handshakes = vec![Arc::new(Mtls)];
        }
        "token" => {
            server.security = vec![SecurityMode::Token];
            server.handshakes = vec![Arc::new(TokenServer::new([(
                "bench".to_owned(),
                b"bench secret".to_vec(),
            )]))];
            client.security = vec![SecurityMode::Token];
            client.handshakes = vec![Arc::new(TokenClient::new(
                "bench",
                b"bench secret".to_vec(),
            ))];
        }
        "post_quantum" => {
            use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
            let (si, ci) = (PqIdentity::generate(), PqIdentity::generate());
            let sfp = si.fingerprint();
            server.security = vec![SecurityMode::PostQuantum];
            server.handshakes = vec![Arc::new(PostQuantum::server(si))];
            client.security = vec![SecurityMode::PostQuantum];
            client.handshakes = vec![Arc::new(PostQuantum::client(ci, sfp))];
        }
        "noise_xk" => {
            let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
            server.security = vec![SecurityMode::NoiseXk];
            server.handshakes = vec![Arc::new(NoiseXk::server(sk.clone()))];
            client.security = vec![SecurityMode::NoiseXk];
            client.handshakes = vec![Arc::new(NoiseXk::client(ck, sk.public))];
        }
        _ => {}
    }
    (server, client, tls)
}

/// Connect + full handshake per security mode, one connection at a time, against a 2-shard
/// node; then the round-trip cost of sealing: 64-byte PINGs over plaintext, noise_xk and mtls.
fn handshake(report: &mut Report, rounds: usize, n: usize) {
    const MODES: [&str; 5] = ["plaintext", "token", "noise_xk", "mtls", "post_quantum"];
    println!(
        "\nhandshake: TCP connect + HELLO/HELLO_ACK + the mode's handshake over loopback (blocking client), {n} connections x {rounds} rounds per mode, modes alternating, medians"
    );
    let bar = progress((rounds * MODES.len() * 2) as u64, "handshake");
    let mut per: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
    let pings = n * 5;
    for _ in 0..rounds {
        for mode in MODES {
            let (server, client, tls) = secured(mode);
            let mut b = Node::builder()
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .protocol(server)
                .shards(2);
            if let Some((s, _)) = &tls {
                b = b.tls(s.clone());
            }
            let node = b.start().expect("node");
            let url = node.url();
            let cfg = valkyrie_runtime::ClientConfig {
                protocol: client,
                tls: tls.map(|(_, c)| c),
                ..valkyrie_runtime::ClientConfig::default()
            };
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
            for _ in 0..n {
                let t = Instant::now();
                let c =
                    valkyrie_runtime::Client::connect_with(&url, cfg.clone()).expect("handshake");
                h.saturating_record(t.elapsed().as_nanos() as u64);
                drop(c);
            }
            bar.inc(1);
            let e = per.entry(mode).or_default();
            e[0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
            e[1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            if matches!(mode, "plaintext" | "noise_xk" | "mtls") {
                // Sealed against plaintext round trips on one connection.
                let mut c = valkyrie_runtime::Client::connect_with(&url, cfg).expect("connect");
                let payload = [0xA5u8; 64];
                for _ in 0..pings / 10 {
                    c.ping(&payload).expect("ping");
                }
                let mut r =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                for _ in 0..pings {
                    r.saturating_record(c.ping(&payload).expect("ping").as_nanos() as u64);
                }
                e[2].push(r.value_at_quantile(0.5) as f64 / 1000.0);
                e[3].push(r.value_at_quantile(0.99) as f64 / 1000.0);
            }
            bar.inc(1);
            drop(node);
        }
    }
    bar.finish_and_clear();
    let plain_rtt99 = per
        .get("plaintext")
        .map_or(f64::NAN, |v| median(v[3].clone()));
    for mode in MODES {
        let v = &per[mode];
        let (p50, p99) = (median(v[0].clone()), median(v[1].clone()));
        let target = if mode == "post_quantum" {
            2000.0
        } else {
            1000.0
        };
        println!(
            "  valkyrie   {mode:<10}  p50 {p50:>7.1} us  p99 {p99:>7.1} us   (target < {target:.0} us)"
        );
        let params = json!({"transport": "tcp", "security": mode, "shards": 2, "connections": n});
        report.add(
            "handshake",
            "valkyrie",
            "handshake_p50",
            "us",
            p50,
            params.clone(),
        );
        report.add("handshake", "valkyrie", "handshake_p99", "us", p99, params);
    }
    for mode in ["plaintext", "noise_xk", "mtls"] {
        let v = &per[mode];
        let (p50, p99) = (median(v[2].clone()), median(v[3].clone()));
        println!(
            "  64 B PING  {mode:<10}  p50 {p50:>7.1} us  p99 {p99:>7.1} us   p99 {:+.1} us vs plaintext (target <= +5 us)",
            p99 - plain_rtt99
        );
        let params = json!({"transport": "tcp", "security": mode, "size": 64, "mode": "blocking", "shards": 2});
        report.add("latency", "valkyrie", "rtt_p50", "us", p50, params.clone());
        report.add("latency", "valkyrie", "rtt_p99", "us", p99, params);
    }
}

pub(crate) fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

/// Bytes the allocator has handed out and not had back (glibc `mallinfo2`: small chunks in
/// every arena plus mmapped ones); 0 where glibc is not the allocator.
pub(crate) fn heap_bytes() -> u64 {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        #[allow(unsafe_code)]
        let m = unsafe { libc::mallinfo2() };
        (m.uordblks + m.hblkhd) as u64
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        0
    }
}

pub(crate) fn slab_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("Slab:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024
}

fn idle_memory(report: &mut Report, n: usize) {
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

fn idle_memory_mode(report: &mut Report, n: usize, recv: RecvMode) {
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
    let hold = |k: usize| {
        let mut child = Command::new(std::env::current_exe().expect("own path"))
            .args(["hold", &addr.to_string(), &k.to_string()])
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
    };
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

/// Memory per connection as BENCH.md defines it (server RSS growth / N; Slab growth / N / 2,
/// both loopback ends being on this host), added to the report under `connections`.
pub(crate) fn report_memory(
    report: &mut Report,
    held: usize,
    (rss0, slab0): (u64, u64),
    (rss1, slab1): (u64, u64),
    params: &Value,
) -> (f64, f64) {
    let n = held.max(1) as f64;
    let user = rss1.saturating_sub(rss0) as f64 / n;
    let kernel = slab1.saturating_sub(slab0) as f64 / n / 2.0;
    for (metric, unit, value) in [
        ("connections_held", "count", held as f64),
        ("bytes_per_connection", "B", user + kernel),
        ("bytes_per_connection_user", "B", user),
        ("bytes_per_connection_kernel", "B", kernel),
    ] {
        report.add(
            "connections",
            "valkyrie",
            metric,
            unit,
            value,
            params.clone(),
        );
    }
    (user, kernel)
}

fn hold(addr: SocketAddr, n: usize) {
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

fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The ring features this kernel gives a shard (one throw-away single-shard node).
    let uring = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .ok()
        .and_then(|b| b.shards(1).start().ok())
        .map(|node| {
            let f = node.ring_features()[0];
            json!({"single_issuer": f.single_issuer, "defer_taskrun": f.defer_taskrun,
                   "coop_taskrun": f.coop_taskrun, "direct_descriptors": f.direct_descriptors,
                   // The node registered its provided-buffer ring to start at all.
                   "provided_buffer_ring": true})
        })
        .unwrap_or(Value::Null);
    json!({"cores": cores, "cpu": cpu, "kernel": kernel, "memory_bytes": mem,
           "nofile": valkyrie_runtime::raise_nofile(), "io_uring": uring})
}

fn main() {
    let cli = Cli::parse();
    match cli.internal {
        Some(Internal::Hold { addr, n }) => {
            hold(addr, n);
            return;
        }
        Some(Internal::HoldHeartbeating {
            addr,
            n,
            src,
            heartbeat_ms,
        }) => {
            connections::hold(addr, n, src, Duration::from_millis(heartbeat_ms));
            return;
        }
        Some(Internal::ShmPeer {
            system,
            name,
            role,
            mode,
            n,
        }) => {
            shm::peer(&system, &name, &role, &mode, n);
            return;
        }
        Some(Internal::IdleMemory { recv, n }) => {
            let mode = if recv == "poll" {
                RecvMode::PollThenRecv
            } else {
                RecvMode::Multishot
            };
            let mut report = Report {
                results: Vec::new(),
            };
            idle_memory_mode(&mut report, n, mode);
            println!("{}", Value::Array(report.results));
            return;
        }
        None => {}
    }
    let h = host();
    println!(
        "valkyrie-bench on {} cores ({}), kernel {}, {:.1} GiB, RLIMIT_NOFILE {}",
        h["cores"],
        h["cpu"].as_str().unwrap_or(""),
        h["kernel"].as_str().unwrap_or(""),
        h["memory_bytes"].as_f64().unwrap_or(0.0) / (1u64 << 30) as f64,
        h["nofile"]
    );
    println!("io_uring: {}", h["io_uring"]);
    let rounds = cli.rounds.max(3);
    let all = cli.scenarios.is_empty();
    let wants = |s: &str| all || cli.scenarios.iter().any(|x| x == s);
    let mut report = Report {
        results: Vec::new(),
    };
    // The full suite holds at least 100,000 connections; the quick one none (minutes, not
    // seconds); `--scenario connections` holds `--connections`.
    let held = if cli.scenarios.iter().any(|s| s == "connections") {
        Some(cli.connections)
    } else {
        (all && cli.full).then(|| cli.connections.max(100_000))
    };
    if let Some(n) = held {
        connections::scenario(
            &mut report,
            n,
            Duration::from_millis(cli.heartbeat_ms),
            cli.node_busy_poll,
        );
    }
    if wants("idle-memory") {
        idle_memory(&mut report, cli.connections);
    }
    if wants("handshake") {
        handshake(&mut report, rounds, if cli.full { 10_000 } else { 2_000 });
    }
    if wants("latency") {
        let dists = latency(
            &mut report,
            rounds,
            if cli.full { 100_000 } else { 20_000 },
            &cli.systems,
            cli.spin,
        );
        if let Some(path) = &cli.plot {
            match plot::latency_svg(path, &dists) {
                Ok(()) => println!("\nlatency plot written to {path}"),
                Err(e) => eprintln!("could not write the plot: {e}"),
            }
        }
    }
    if wants("throughput") {
        throughput(
            &mut report,
            rounds,
            if cli.full { 5.0 } else { 1.5 },
            &cli.systems,
        );
    }
    if wants("transfer") {
        transfer::scenario(&mut report, rounds, if cli.full { 100 } else { 20 });
    }
    if wants("shm") {
        shm::scenario(
            &mut report,
            rounds,
            if cli.full { 200_000 } else { 50_000 },
            if cli.full { 20_000_000 } else { 5_000_000 },
        );
    }
    targets::print(&report.results);
    if let Some(path) = cli.json {
        let doc = json!({"version": 1, "host": h, "results": report.results});
        std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
            .expect("write report");
        println!("\nreport written to {path}");
    }
}
