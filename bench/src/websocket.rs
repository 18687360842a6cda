//! The ws scenario: a 64-byte PING over WebSocket, one at a time on one connection, to a
//! 1-shard node at `/ws` (answered with a PONG by the protocol) and to tokio-tungstenite on
//! one pinned current-thread runtime echoing the message back; servers on core 0, the
//! harness's client (blocking, `valkyrie_bridge::ws` framing, masked as a client must) on
//! core 1. Both answers are one 88-byte frame in one binary message.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_bridge::ws::{Decoder, Opcode, Progress, client_request, write_frame};
use valkyrie_protocol::{Config, Connection, Event, Frame, MessageType, Side};
use valkyrie_runtime::{Echo, Node};

use crate::peers::pin;
use crate::report::{Report, median, progress};

const SERVER_CORE: usize = 0;
const CLIENT_CORE: usize = 1;
const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x8e];

enum Server {
    Valkyrie(Node),
    Tungstenite(crate::peers::TokioServer),
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, samples: usize) {
    let systems = ["valkyrie", "tungstenite"];
    println!(
        "\nws: 64-byte PING over WebSocket, one at a time on one connection; valkyrie: 1 shard, /ws, PONG from the protocol; tungstenite: tokio-tungstenite echo on 1 current-thread runtime; server on core {SERVER_CORE}, client on core {CLIENT_CORE}; {samples} round trips x {rounds} rounds, medians"
    );
    let bar = progress((rounds * systems.len()) as u64, "ws");
    let mut runs: Vec<[Vec<f64>; 3]> = systems.iter().map(|_| Default::default()).collect();
    for _ in 0..rounds {
        for (i, system) in systems.iter().enumerate() {
            let h = run(system, samples);
            for (j, q) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                runs[i][j].push(h.value_at_quantile(q) as f64 / 1000.0);
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let med: Vec<[f64; 3]> = runs.into_iter().map(|r| r.map(median)).collect();
    let peer = med[1];
    for (i, system) in systems.iter().enumerate() {
        let [p50, p99, p999] = med[i];
        println!(
            "  {system:<12} p50 {p50:>7.1} us  p99 {p99:>7.1} us  p999 {p999:>7.1} us   {:.2}x tungstenite's p50, {:.2}x its p99",
            p50 / peer[0],
            p99 / peer[1]
        );
        let params = json!({"payload": 64, "connections": 1, "server_core": SERVER_CORE});
        report.add("ws", system, "rtt_p50", "us", p50, params.clone());
        report.add("ws", system, "rtt_p99", "us", p99, params.clone());
        report.add("ws", system, "rtt_p999", "us", p999, params);
    }
}

fn run(system: &str, samples: usize) -> Histogram<u64> {
    // Server threads inherit the affinity of their creator.
    let server = std::thread::scope(|s| {
        s.spawn(|| {
            pin(SERVER_CORE);
            match system {
                "valkyrie" => Server::Valkyrie(
                    Node::builder()
                        .listen("tcp://127.0.0.1:0")
                        .expect("endpoint")
                        .shards(1)
                        .service(|_| Echo)
                        .start()
                        .expect("valkyrie node"),
                ),
                _ => Server::Tungstenite(
                    crate::peers::tungstenite_echo::start(SERVER_CORE, 1).expect("tungstenite"),
                ),
            }
        })
        .join()
        .expect("server start")
    });
    let addr = match &server {
        Server::Valkyrie(n) => n.url().trim_start_matches("tcp://").to_owned(),
        Server::Tungstenite(t) => t.addr.to_string(),
    };
    let valkyrie = system == "valkyrie";
    let hist = std::thread::scope(|s| {
        s.spawn(|| {
            pin(CLIENT_CORE);
            let mut c = WsClient::connect(&addr, valkyrie).expect("connect");
            let mut ping = Vec::new();
            Frame::new(MessageType::Ping, 0, vec![0xA5u8; 64])
                .with_correlation(1)
                .encode(&mut ping);
            let mut wire = BytesMut::new();
            write_frame(Opcode::Binary, true, &ping, Some(MASK), &mut wire);
            for _ in 0..samples / 10 {
                c.round_trip(&wire, ping.len()).expect("warm-up");
            }
            let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
            for _ in 0..samples {
                let t = Instant::now();
                c.round_trip(&wire, ping.len()).expect("round trip");
                h.saturating_record(t.elapsed().as_nanos() as u64);
            }
            h
        })
        .join()
        .expect("client")
    });
    match server {
        Server::Valkyrie(n) => {
            n.shutdown();
            n.join();
        }
        Server::Tungstenite(t) => drop(t),
    }
    hist
}

/// The harness's WebSocket client: a blocking socket, the bridge's framing.
struct WsClient {
    s: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
    payload: Vec<u8>,
    reply: BytesMut,
}

impl WsClient {
    /// Open `/ws` on `addr`; for a Valkyrie node, also its HELLO exchange.
    fn connect(addr: &str, valkyrie: bool) -> std::io::Result<WsClient> {
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let (req, accept) = client_request(addr, "/ws", *b"valkyrie-bench-k");
        s.write_all(req.as_bytes())?;
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b)?;
            head.push(b[0]);
        }
        let text = String::from_utf8_lossy(&head);
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert!(
            text.to_ascii_lowercase()
                .contains(&accept.to_ascii_lowercase())
        );
        let mut c = WsClient {
            s,
            decoder: Decoder::client(1 << 20, 0x5eed),
            buf: vec![0; 64 * 1024],
            payload: Vec::new(),
            reply: BytesMut::new(),
        };
        if valkyrie {
            let mut conn = Connection::new(
                Side::Client,
                Arc::new(Config::new("ws-bench")),
                Instant::now(),
                0,
            );
            let mut hello = BytesMut::new();
            conn.write_transmits(&mut hello, usize::MAX);
            let mut wire = BytesMut::new();
            write_frame(Opcode::Binary, true, &hello, Some(MASK), &mut wire);
            c.s.write_all(&wire)?;
            loop {
                let got = c.read_message()?;
                conn.handle_input(&got, Instant::now());
                if let Some(Event::Connected(_)) = conn.poll_event() {
                    break;
                }
            }
        }
        Ok(c)
    }

    /// Read until at least one message's payload has arrived; return the payload bytes.
    fn read_message(&mut self) -> std::io::Result<Vec<u8>> {
        self.payload.clear();
        while self.payload.is_empty() {
            let n = self.s.read(&mut self.buf)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            match self
                .decoder
                .feed(&self.buf[..n], &mut self.payload, &mut self.reply)
            {
                Ok(Progress::Open) => {}
                other => return Err(std::io::Error::other(format!("{other:?}"))),
            }
        }
        Ok(std::mem::take(&mut self.payload))
    }

    /// Send `wire` (one masked message) and read the answer: `len` payload bytes.
    fn round_trip(&mut self, wire: &[u8], len: usize) -> std::io::Result<()> {
        self.s.write_all(wire)?;
        let mut got = 0;
        while got < len {
            got += self.read_message()?.len();
        }
        Ok(())
    }
}
