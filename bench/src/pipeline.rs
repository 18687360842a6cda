//! The pipeline scenario: the load generator users bring (the pattern of `redis-benchmark -P`
//! or memtier). One connection, HELLO first, then batches of 1,000 64-byte PINGs with up to
//! 200,000 in flight, reading whatever has come back between writes; every PONG is checked,
//! in order. The client thread is pinned to core 1, the server to core 0 (Valkyrie with one
//! shard), so client and server never share a core. Valkyrie with its default shard count
//! (SO_REUSEPORT puts the connection on either shard) is measured over fresh connections.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_protocol::{Frame, HEADER_LEN, MessageType};
use valkyrie_runtime::BusyPoll;

use crate::peers::pin;
use crate::raw_client::RawClient;
use crate::report::{Report, median, progress};
use crate::server::start;

/// PINGs per write.
const BATCH: usize = 1000;
/// Most PINGs in flight.
const WINDOW: u64 = 200_000;

/// One measured connection.
struct Run {
    rate: f64,
    cpu_ns: f64,
}

pub(crate) fn pipeline(report: &mut Report, rounds: usize, secs: f64, only: &[String]) {
    let systems: Vec<&str> = [
        "valkyrie",
        "valkyrie-default-shards",
        "tokio",
        "floor-batch",
    ]
    .into_iter()
    .filter(|s| only.is_empty() || only.iter().any(|o| s.starts_with(o.as_str())))
    .collect();
    println!(
        "\npipeline: one connection, batches of {BATCH} 64-byte PINGs, up to {WINDOW} in flight, every PONG checked in order; client on core 1, server on core 0 (valkyrie: 1 shard; valkyrie-default-shards: 2 shards, {} fresh connections a round); {secs} s a connection, {rounds} alternating rounds, medians",
        FRESH
    );
    let mut per: BTreeMap<&str, Vec<Run>> = BTreeMap::new();
    let bar = progress((rounds * systems.len()) as u64, "pipeline");
    for _ in 0..rounds {
        for &system in &systems {
            let runs = per.entry(system).or_default();
            if system == "valkyrie-default-shards" {
                let server = start("valkyrie", 0, 2, false, BusyPoll::Off);
                for _ in 0..FRESH {
                    runs.push(drive(server.addr(), true, secs));
                }
            } else {
                let server = start(system, 0, 1, false, BusyPoll::Off);
                runs.push(drive(server.addr(), system.starts_with("valkyrie"), secs));
            }
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let rate_of = |s: &str| {
        per.get(s)
            .map_or(f64::NAN, |v| median(v.iter().map(|r| r.rate).collect()))
    };
    let (one, floor) = (rate_of("valkyrie"), rate_of("floor-batch"));
    for &system in &systems {
        let rate = rate_of(system);
        let cpu_ns = median(per[system].iter().map(|r| r.cpu_ns).collect());
        println!(
            "  {system:<24} {rate:>12.0} PONGs/s  {cpu_ns:>6.0} ns server CPU/msg   {:.2}x floor-batch  {:.2}x valkyrie 1 shard",
            rate / floor,
            rate / one,
        );
        let params = json!({"transport": "tcp", "size": 64, "connections": 1, "batch": BATCH, "window": WINDOW,
            "shards": if system == "valkyrie-default-shards" { 2 } else { 1 }});
        report.add(
            "pipeline",
            system,
            "msgs_per_sec",
            "msgs/s",
            rate,
            params.clone(),
        );
        report.add(
            "pipeline",
            system,
            "server_cpu_ns_per_msg",
            "ns",
            cpu_ns,
            params,
        );
    }
}

/// Fresh connections a round to the node with its default shard count.
const FRESH: usize = 5;

/// One connection driven for `secs` (after a warm-up) from a thread pinned to core 1.
fn drive(addr: std::net::SocketAddr, valkyrie: bool, secs: f64) -> Run {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let (s2, c2) = (stop.clone(), count.clone());
    let client = std::thread::spawn(move || {
        // The thread that started a one-shard node is pinned to core 0 (the shard inherits
        // it); `pin` picks among all online cores, whatever the inherited mask.
        pin(1);
        let c = RawClient::connect(addr, valkyrie, false).expect("connect");
        let cpu0 = crate::cpu::thread();
        pump(c, &s2, &c2);
        crate::cpu::thread() - cpu0
    });
    std::thread::sleep(Duration::from_millis(300));
    let n0 = count.load(Ordering::Relaxed);
    let cpu0 = crate::cpu::process();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let n = count.load(Ordering::Relaxed) - n0;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu1 = crate::cpu::process();
    stop.store(true, Ordering::Relaxed);
    let client_cpu = client.join().expect("pipelining client");
    // The client spins on its core the whole time; scale its CPU to the measured window.
    let client_share = client_cpu.as_secs_f64() * elapsed / (elapsed + 0.3);
    let server = (cpu1 - cpu0).as_secs_f64() - client_share;
    Run {
        rate: n as f64 / elapsed,
        cpu_ns: server.max(0.0) * 1e9 / n.max(1) as f64,
    }
}

/// Write batches while fewer than WINDOW are in flight, read what came back, check each PONG.
fn pump(c: RawClient, stop: &AtomicBool, count: &AtomicU64) {
    let mut s = c.s;
    s.set_nonblocking(true).expect("nonblocking");
    let mut ping = Vec::new();
    Frame::new(MessageType::Ping, 0, vec![0x5Au8; 64]).encode(&mut ping);
    let frame = ping.len();
    let mut batch: Vec<u8> = ping.iter().copied().cycle().take(frame * BATCH).collect();
    let mut sent: u64 = 0;
    let mut off = batch.len(); // nothing pending
    let mut expect: u64 = 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut have = 0usize;
    while !stop.load(Ordering::Relaxed) {
        if off == batch.len() && sent - (expect - 1) + BATCH as u64 <= WINDOW {
            for (i, f) in batch.chunks_exact_mut(frame).enumerate() {
                f[16..20].copy_from_slice(&((sent + 1 + i as u64) as u32).to_be_bytes());
            }
            sent += BATCH as u64;
            off = 0;
        }
        if off < batch.len() {
            match s.write(&batch[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
        }
        match s.read(&mut buf[have..]) {
            Ok(0) => panic!("the server closed the connection at PONG {expect}"),
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => panic!("read: {e}"),
        }
        let mut at = 0;
        while have - at >= HEADER_LEN {
            let h = &buf[at..at + HEADER_LEN];
            let len = u32::from_be_bytes(h[12..16].try_into().expect("4 bytes")) as usize;
            if have - at < HEADER_LEN + len {
                break;
            }
            assert_eq!(h[3], MessageType::Pong.to_u8(), "a PONG");
            let corr = u32::from_be_bytes(h[16..20].try_into().expect("4 bytes"));
            assert_eq!(corr, expect as u32, "PONGs in order");
            expect += 1;
            at += HEADER_LEN + len;
        }
        buf.copy_within(at..have, 0);
        have -= at;
        count.store(expect - 1, Ordering::Relaxed);
    }
}
