//! The `quic` scenario: the node's `quic://` listener (one shard on its own core) beside
//! quinn's own tokio endpoint (one current-thread runtime on the same core) with the same
//! framing, the same TLS and transport configuration, and the same client — a quinn-proto
//! connection driven in the calling thread (`valkyrie_runtime::quic::QuicSocket`) on the other
//! core. Closed-loop 64-byte PING/PONG round trips (p50, p99), pipelined PINGs with 32 in
//! flight (messages a second), and the memory each idle QUIC connection costs the server
//! (connections held by a child process; the server's resident-set growth over N).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::security::mtls::{self, DevPki};
use valkyrie_protocol::{Frame, HEADER_LEN, MessageType};
use valkyrie_runtime::Node;
use valkyrie_runtime::quic::QuicSocket;

use crate::memory::rss_bytes;
use crate::peers::quinn_echo::QuinnEcho;
use crate::peers::{Pinning, pin};
use crate::raw_client::hello_frame;
use crate::report::{Report, median, progress};

/// Frames in flight in the pipelined run.
const DEPTH: usize = 32;
/// Connections held for the memory figure.
const IDLE: usize = 1000;

/// The name the throw-away server certificate carries.
pub(crate) const SERVER_NAME: &str = "node-a";

/// A throw-away PKI with one server certificate ([`SERVER_NAME`]): what every QUIC figure's
/// server shows.
pub(crate) fn pki() -> DevPki {
    DevPki::generate(&[SERVER_NAME], &[]).expect("dev PKI")
}

/// The server's TLS: its certificate, no client certificates asked for.
pub(crate) fn server_tls(pki: &DevPki) -> Arc<mtls::rustls::ServerConfig> {
    pki.server_config_without_client_auth(0)
        .expect("server TLS")
}

/// A client's TLS that trusts the PKI's CA and presents no certificate.
pub(crate) fn client_tls(pki: &DevPki) -> Arc<mtls::rustls::ClientConfig> {
    mtls::server_only_client_config(&pki.ca_pem).expect("client TLS")
}

fn client_quic(ca_pem: &[u8]) -> quinn::ClientConfig {
    let tls = mtls::server_only_client_config(ca_pem).expect("client TLS");
    valkyrie_runtime::quic::client_config(&tls).expect("client QUIC")
}

/// The same client for both servers: PING frames written, PONG frames read, over the first
/// bidirectional stream.
struct QuicRaw {
    s: QuicSocket,
    rbuf: Vec<u8>,
}

impl QuicRaw {
    fn connect(addr: SocketAddr, ca_pem: &[u8], valkyrie: bool) -> std::io::Result<QuicRaw> {
        let s = QuicSocket::connect(addr, "node-a", client_quic(ca_pem), Duration::from_secs(5))?;
        let mut c = QuicRaw {
            s,
            rbuf: vec![0u8; 64 * 1024],
        };
        if valkyrie {
            c.s.write_all(&hello_frame())?;
            c.read_frame()?;
        } else {
            // quinn sees the stream once bytes arrive on it: a PING opens it.
            let mut ping = Vec::new();
            Frame::new(MessageType::Ping, 0, vec![0u8; 8]).encode(&mut ping);
            c.s.write_all(&ping)?;
            c.read_frame()?;
        }
        Ok(c)
    }

    fn read_frame(&mut self) -> std::io::Result<usize> {
        self.s.read_exact(&mut self.rbuf[..HEADER_LEN])?;
        let len = u32::from_be_bytes(self.rbuf[12..16].try_into().expect("4")) as usize;
        if HEADER_LEN + len > self.rbuf.len() {
            self.rbuf.resize(HEADER_LEN + len, 0);
        }
        self.s
            .read_exact(&mut self.rbuf[HEADER_LEN..HEADER_LEN + len])?;
        Ok(HEADER_LEN + len)
    }

    fn round_trip(&mut self, ping: &[u8]) -> std::io::Result<Duration> {
        let t = Instant::now();
        self.s.write_all(ping)?;
        self.read_frame()?;
        debug_assert_eq!(self.rbuf[3], MessageType::Pong.to_u8());
        Ok(t.elapsed())
    }

    /// PINGs with `DEPTH` in flight for `secs`: answers a second.
    fn pipelined(&mut self, ping: &[u8], secs: f64) -> std::io::Result<f64> {
        let batch: Vec<u8> = ping.repeat(DEPTH);
        self.s.write_all(&batch)?;
        let mut pending = 0usize; // bytes of a partly read answer
        let mut answered = 0u64;
        let t = Instant::now();
        let until = t + Duration::from_secs_f64(secs);
        let mut in_flight = DEPTH;
        while Instant::now() < until {
            let n = self.s.read(&mut self.rbuf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            pending += n;
            let whole = pending / ping.len();
            pending %= ping.len();
            answered += whole as u64;
            in_flight -= whole;
            let more = DEPTH - in_flight;
            if more > 0 {
                self.s.write_all(&batch[..more * ping.len()])?;
                in_flight = DEPTH;
            }
        }
        Ok(answered as f64 / t.elapsed().as_secs_f64())
    }
}

enum Server {
    Valkyrie(Node),
    Quinn(QuinnEcho),
}

impl Server {
    fn start(system: &str, pki: &DevPki, core: usize) -> Server {
        match system {
            "valkyrie" => Server::Valkyrie(
                Node::builder()
                    .listen("quic://127.0.0.1:0")
                    .expect("endpoint")
                    .quic_tls(server_tls(pki), false)
                    .shards(1)
                    .heartbeat(Duration::from_secs(60))
                    .start()
                    .expect("node"),
            ),
            _ => {
                let cfg = valkyrie_runtime::quic::server_config(&server_tls(pki)).expect("quic");
                Server::Quinn(QuinnEcho::start(core, cfg).expect("quinn"))
            }
        }
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Valkyrie(n) => match &n.endpoints()[0] {
                valkyrie_runtime::Endpoint::Quic(a) => *a,
                other => panic!("{other}"),
            },
            Server::Quinn(q) => q.addr,
        }
    }
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, samples: usize, secs: f64) {
    println!(
        "\nquic: 64 B PING/PONG over QUIC (TLS 1.3, X25519MLKEM768), one server core, the same quinn-proto client; {samples} round trips, then {DEPTH} in flight for {secs} s, x {rounds} rounds, medians"
    );
    let pki = pki();
    let pinning = Pinning {
        server: 0,
        client: 1,
    };
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0xA5u8; 64])
        .with_correlation(1)
        .encode(&mut ping);
    let systems = ["valkyrie", "quinn"];
    let bar = progress((rounds * systems.len()) as u64, "quic");
    let mut per: std::collections::BTreeMap<&str, [Vec<f64>; 3]> = Default::default();
    for round in 0..rounds {
        // Alternate which goes first, so drift on a shared host favours neither.
        let order: Vec<&str> = if round % 2 == 0 {
            systems.to_vec()
        } else {
            systems.iter().rev().copied().collect()
        };
        for system in order {
            let server = Server::start(system, &pki, pinning.server);
            pin(pinning.client);
            let mut c = QuicRaw::connect(server.addr(), &pki.ca_pem, system == "valkyrie")
                .expect("connect");
            for _ in 0..samples / 10 {
                c.round_trip(&ping).expect("warm-up");
            }
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("hist");
            for _ in 0..samples {
                let d = c.round_trip(&ping).expect("round trip");
                h.saturating_record(d.as_nanos() as u64);
            }
            let rate = c.pipelined(&ping, secs).expect("pipelined");
            drop(c);
            drop(server);
            crate::peers::unpin();
            let e = per.entry(system).or_default();
            e[0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
            e[1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            e[2].push(rate);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let quinn_p50 = median(per["quinn"][0].clone());
    let quinn_rate = median(per["quinn"][2].clone());
    for system in systems {
        let p50 = median(per[system][0].clone());
        let p99 = median(per[system][1].clone());
        let rate = median(per[system][2].clone());
        println!(
            "  {system:<9} rtt p50 {p50:>7.1} us  p99 {p99:>7.1} us  ({:.2}x quinn p50)   pipelined {rate:>9.0} msg/s ({:.2}x quinn)",
            p50 / quinn_p50,
            rate / quinn_rate
        );
        let params = json!({"transport": "quic", "size": 64, "shards": 1});
        report.add("quic", system, "rtt_p50", "us", p50, params.clone());
        report.add("quic", system, "rtt_p99", "us", p99, params.clone());
        let mut p = params;
        p["depth"] = json!(DEPTH);
        report.add("quic", system, "msgs_per_sec", "msg/s", rate, p);
    }
    idle_memory(report, &pki);
}

/// Bytes each idle QUIC connection costs the server: `IDLE` connections held by a child
/// process, the server's resident set before and after.
fn idle_memory(report: &mut Report, pki: &DevPki) {
    let ca = std::env::temp_dir().join(format!("valkyrie-bench-quic-{}.pem", std::process::id()));
    std::fs::write(&ca, &pki.ca_pem).expect("CA file");
    for system in ["valkyrie", "quinn"] {
        let server = Server::start(system, pki, 0);
        let hold = |n: usize| {
            crate::idle_memory::spawn_holder(&[
                "hold-quic",
                &server.addr().to_string(),
                &n.to_string(),
                ca.to_str().expect("path"),
                if system == "valkyrie" { "1" } else { "0" },
            ])
        };
        // Warm-up: one-time allocations are not counted.
        let mut warm = hold(50);
        drop(warm.stdin.take());
        let _ = warm.wait();
        std::thread::sleep(Duration::from_millis(300));
        let rss0 = rss_bytes();
        let mut child = hold(IDLE);
        std::thread::sleep(Duration::from_millis(500));
        let rss1 = rss_bytes();
        drop(child.stdin.take());
        let _ = child.wait();
        drop(server);
        let per_conn = rss1.saturating_sub(rss0) as f64 / IDLE as f64;
        println!(
            "  {system:<9} {IDLE} idle QUIC connections: {per_conn:.0} B each (server RSS delta / N)"
        );
        report.add(
            "quic",
            system,
            "bytes_per_connection",
            "B",
            per_conn,
            json!({"transport": "quic", "connections": IDLE, "idle": true}),
        );
    }
    let _ = std::fs::remove_file(&ca);
}

/// (The child of the memory figure.) Hold `n` QUIC connections to `addr` — HELLO done when
/// `valkyrie` — until stdin closes.
pub(crate) fn hold(addr: SocketAddr, n: usize, ca: &std::path::Path, valkyrie: bool) {
    valkyrie_runtime::raise_nofile();
    let ca_pem = std::fs::read(ca).expect("CA file");
    let conns: Vec<QuicRaw> = (0..n)
        .map(|_| QuicRaw::connect(addr, &ca_pem, valkyrie).expect("connect"))
        .collect();
    println!("ready");
    std::io::stdout().flush().expect("flush");
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
    drop(conns);
}
