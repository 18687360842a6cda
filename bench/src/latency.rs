//! The latency scenario: closed-loop 64-byte PING/PONG against every system, busy-poll and
//! blocking modes, systems alternating over the rounds.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::BusyPoll;

use crate::peers::{self, Pinning, pin};
use crate::plot;
use crate::raw_client::RawClient;
use crate::report::{Report, median, progress};
use crate::server::start;

/// `samples` unary gRPC calls of a 64-byte payload (after a tenth as warm-up), one at a time.
pub(crate) fn grpc_round_trips(addr: SocketAddr, samples: usize) -> Histogram<u64> {
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

pub(crate) fn latency(
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
