//! The throughput scenario: pipelined 64-byte PINGs against every system, in the shapes users
//! run — many connections a little deep (64 × 32), and deep pipelines (1,000 in flight) on one
//! connection and on 16 — with the server's CPU time per message beside each rate.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::BusyPoll;

use crate::raw_client::RawClient;
use crate::report::{Report, median, progress};
use crate::server::start;

/// Connections and frames in flight on each.
#[derive(Clone, Copy)]
struct Shape {
    conns: usize,
    depth: usize,
}

const SHAPES: [Shape; 3] = [
    Shape {
        conns: 64,
        depth: 32,
    },
    Shape {
        conns: 1,
        depth: 1000,
    },
    Shape {
        conns: 16,
        depth: 1000,
    },
];

/// One run: messages per second and the server's CPU nanoseconds per message.
struct Run {
    rate: f64,
    cpu_ns: f64,
}

pub(crate) fn throughput(report: &mut Report, rounds: usize, secs: f64, only: &[String]) {
    let systems: Vec<&str> = ["valkyrie", "valkyrie-1-shard", "tokio", "floor-batch"]
        .into_iter()
        .filter(|s| only.is_empty() || only.iter().any(|o| s.starts_with(o.as_str())))
        .collect();
    println!(
        "\nthroughput: 64-byte PING/PONG pipelined (write `depth` frames to each connection, read their answers), up to 2 client threads, servers unpinned with 2 shards/workers (valkyrie-1-shard: one shard pinned to core 0; floor-batch: a thread per connection answering all it read in one write); {secs} s x {rounds} rounds, medians; server CPU = process CPU less the client threads'"
    );
    for shape in SHAPES {
        let mut per: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
        let bar = progress(
            (rounds * systems.len()) as u64,
            &format!("{}x{}", shape.conns, shape.depth),
        );
        for _ in 0..rounds {
            for &system in &systems {
                per.entry(system)
                    .or_default()
                    .push(run(system, shape, secs));
                bar.inc(1);
            }
        }
        bar.finish_and_clear();
        println!("  {} connections x {} in flight:", shape.conns, shape.depth);
        let rate_of = |s: &str| {
            per.get(s)
                .map_or(f64::NAN, |v| median(v.iter().map(|r| r.rate).collect()))
        };
        let (tokio, floor) = (rate_of("tokio"), rate_of("floor-batch"));
        let (two, one) = (rate_of("valkyrie"), rate_of("valkyrie-1-shard"));
        for &system in &systems {
            let rate = rate_of(system);
            let cpu_ns = median(per[system].iter().map(|r| r.cpu_ns).collect());
            println!(
                "    {system:<16} {rate:>12.0} msgs/s  {:>7.1} MB/s  {cpu_ns:>6.0} ns server CPU/msg   {:.2}x tokio  {:.2}x floor-batch",
                rate * 88.0 / 1e6,
                rate / tokio,
                rate / floor,
            );
            let (name, shards) = match system {
                "valkyrie-1-shard" => ("valkyrie", 1),
                other => (other, 2),
            };
            let params = json!({"transport": "tcp", "size": 64, "connections": shape.conns, "depth": shape.depth, "shards": shards});
            report.add(
                "throughput",
                name,
                "msgs_per_sec",
                "msgs/s",
                rate,
                params.clone(),
            );
            report.add(
                "throughput",
                name,
                "bytes_per_sec",
                "B/s",
                rate * 88.0,
                params.clone(),
            );
            report.add(
                "throughput",
                name,
                "server_cpu_ns_per_msg",
                "ns",
                cpu_ns,
                params,
            );
        }
        if two.is_finite() && one.is_finite() {
            println!("    valkyrie 2 shards / 1 shard: {:.2}x", two / one);
        }
    }
}

fn run(system: &str, shape: Shape, secs: f64) -> Run {
    // Started from a thread of its own: a one-shard node pins its starter (the shard inherits
    // that), and the client threads started here must not inherit the pin.
    let server = std::thread::scope(|s| {
        s.spawn(|| match system {
            "valkyrie-1-shard" => start("valkyrie", 0, 1, false, BusyPoll::Off),
            other => start(other, 0, 2, false, BusyPoll::Off),
        })
        .join()
        .expect("server start")
    });
    let addr = server.addr();
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0x5Au8; 64]).encode(&mut ping);
    let batch: Vec<u8> = ping
        .iter()
        .copied()
        .cycle()
        .take(ping.len() * shape.depth)
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let measuring = Arc::new(AtomicBool::new(false));
    let client_cpu = Arc::new(AtomicU64::new(0));
    let threads = shape.conns.min(2);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (stop, count, batch) = (stop.clone(), count.clone(), batch.clone());
            let (measuring, client_cpu) = (measuring.clone(), client_cpu.clone());
            let mine = shape.conns / threads + usize::from(t < shape.conns % threads);
            let valkyrie = system.starts_with("valkyrie");
            std::thread::spawn(move || {
                let mut conns: Vec<RawClient> = (0..mine)
                    .map(|_| RawClient::connect(addr, valkyrie, false).expect("connect"))
                    .collect();
                let mut sink = vec![0u8; batch.len()];
                let mut start_cpu = None;
                while !stop.load(Ordering::Relaxed) {
                    if start_cpu.is_none() && measuring.load(Ordering::Relaxed) {
                        start_cpu = Some(crate::cpu::thread());
                    }
                    for c in conns.iter_mut() {
                        c.s.write_all(&batch).expect("write");
                    }
                    for c in conns.iter_mut() {
                        c.s.read_exact(&mut sink).expect("read");
                    }
                    count.fetch_add((shape.depth * conns.len()) as u64, Ordering::Relaxed);
                }
                let spent = start_cpu.map_or(Duration::ZERO, |s| crate::cpu::thread() - s);
                client_cpu.fetch_add(spent.as_nanos() as u64, Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    measuring.store(true, Ordering::Relaxed);
    let c0 = count.load(Ordering::Relaxed);
    let cpu0 = crate::cpu::process();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let n = count.load(Ordering::Relaxed) - c0;
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let cpu1 = crate::cpu::process();
    for h in handles {
        let _ = h.join();
    }
    drop(server);
    // Client threads measured from their first round after `measuring` to their exit (a
    // round past `stop`): a slight over-count of the client, so the server figure errs low
    // by at most one round per thread.
    let client = Duration::from_nanos(client_cpu.load(Ordering::Relaxed));
    let server_cpu = (cpu1 - cpu0).saturating_sub(client);
    Run {
        rate: n as f64 / elapsed,
        cpu_ns: server_cpu.as_nanos() as f64 / n.max(1) as f64,
    }
}
