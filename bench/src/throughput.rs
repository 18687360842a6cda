//! The throughput scenario: pipelined frames over many connections against every system.

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

pub(crate) fn throughput(report: &mut Report, rounds: usize, secs: f64, only: &[String]) {
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
