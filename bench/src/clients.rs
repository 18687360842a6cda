//! The clients scenario: requests per second from one thread through each of Valkyrie's
//! clients against the same node (JOB_REQUEST → JOB_ACCEPT, 64-byte payloads, 2 shards): the
//! blocking `Client` one request at a time, the blocking `Client` pipelined by hand, and the
//! non-blocking `ClientHandle` with futures and with callbacks (1,000 in flight); and the
//! request round trip through `Ctx::request` from one node's service to another node, over
//! TCP, shared memory and QUIC (`node_to_node.rs`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::json;
use valkyrie_protocol::{Event, Flags, MessageType, SendOptions};
use valkyrie_runtime::{BusyPoll, Client, ClientError, Node, Reply};

use crate::node_to_node::{self, Accept};
use crate::report::{Report, median, progress};

/// Requests kept in flight by the pipelining clients.
const DEPTH: usize = 1_000;

fn accept_node() -> Node {
    Node::builder()
        .listen("tcp://127.0.0.1:0")
        .expect("endpoint")
        .shards(2)
        .service(|_| Accept)
        .start()
        .expect("node")
}

const WAYS: [&str; 4] = [
    "blocking, one at a time",
    "blocking, pipelined",
    "handle, futures",
    "handle, callbacks",
];

pub(crate) fn scenario(report: &mut Report, rounds: usize, secs: f64) {
    println!(
        "\nclients: JOB_REQUEST -> JOB_ACCEPT (64-byte payloads) from one thread against a 2-shard node; pipelined ways keep {DEPTH} in flight; {secs} s x {rounds} rounds, medians"
    );
    let payload = Bytes::from(vec![0x5Au8; 64]);
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); WAYS.len()];
    let bar = progress((rounds * (WAYS.len() + 1)) as u64, "clients");
    // Node to node over each transport, sleeping shards and busy-polling ones:
    // [transport][mode][p50, p99] over rounds.
    let mut rtts: [[[Vec<f64>; 2]; 2]; 3] = Default::default();
    for _ in 0..rounds {
        let node = accept_node();
        for (i, runs) in per.iter_mut().enumerate() {
            runs.push(drive(i, &node.url(), &payload, secs));
            bar.inc(1);
        }
        node.shutdown();
        node.join();
        for (t, transport) in node_to_node::TRANSPORTS.into_iter().enumerate() {
            for (m, busy) in [BusyPoll::Off, BusyPoll::Always].into_iter().enumerate() {
                let h = node_to_node::round_trips(transport, busy, 20_000);
                rtts[t][m][0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
                rtts[t][m][1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            }
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let one = median(per[0].clone());
    for (i, way) in WAYS.iter().enumerate() {
        let rate = median(per[i].clone());
        println!(
            "  {way:<26} {rate:>12.0} requests/s   {:>6.1}x one at a time",
            rate / one
        );
        report.add(
            "clients",
            "valkyrie",
            "requests_per_sec",
            "req/s",
            rate,
            json!({"client": way, "depth": if i == 0 { 1 } else { DEPTH }, "size": 64, "shards": 2}),
        );
    }
    for (t, transport) in node_to_node::TRANSPORTS.into_iter().enumerate() {
        for (m, mode) in ["blocking", "busy-poll"].into_iter().enumerate() {
            let rtt = &rtts[t][m];
            let (p50, p99) = (median(rtt[0].clone()), median(rtt[1].clone()));
            println!(
                "  node to node over {transport:<4}, Ctx::request one in flight, {mode:<9} (A's shard on core 0, B's on core 1): p50 {p50:.1} us, p99 {p99:.1} us"
            );
            for (metric, v) in [("request_rtt_p50", p50), ("request_rtt_p99", p99)] {
                report.add(
                    "clients",
                    "valkyrie",
                    metric,
                    "us",
                    v,
                    json!({"path": "node to node", "transport": transport, "mode": mode, "size": 64}),
                );
            }
        }
    }
}

/// Requests per second through client way `way` for `secs`.
fn drive(way: usize, url: &str, payload: &Bytes, secs: f64) -> f64 {
    let warm = Duration::from_millis(200);
    let measure = Duration::from_secs_f64(secs);
    match way {
        0 => {
            let mut c = Client::connect(url).expect("connect");
            let t0 = Instant::now();
            let mut n = 0u64;
            let mut start = None;
            while t0.elapsed() < warm + measure {
                c.request(
                    101,
                    MessageType::JobRequest,
                    payload.clone(),
                    Duration::from_secs(5),
                )
                .expect("answer");
                if start.is_none() && t0.elapsed() >= warm {
                    start = Some((Instant::now(), n));
                }
                n += 1;
            }
            let (s, n0) = start.expect("ran past the warm-up");
            let _ = c.close();
            (n - n0) as f64 / s.elapsed().as_secs_f64()
        }
        1 => {
            let mut c = Client::connect(url).expect("connect");
            let mut in_flight = 0usize;
            let mut done = 0u64;
            let t0 = Instant::now();
            let mut start = None;
            while t0.elapsed() < warm + measure {
                while in_flight < DEPTH {
                    match c.connection().request(
                        101,
                        MessageType::JobRequest,
                        payload.clone(),
                        SendOptions::default(),
                    ) {
                        Ok(_) => in_flight += 1,
                        Err(e) if e.is_backpressure() => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                c.flush_now().expect("flush");
                while let Some(e) = c.next_event(Duration::from_millis(1)).expect("events") {
                    if let Event::Frame(f) = e
                        && f.header.flags.contains(Flags::RESPONSE)
                    {
                        in_flight -= 1;
                        done += 1;
                    }
                    if in_flight < DEPTH / 2 {
                        break;
                    }
                }
                if start.is_none() && t0.elapsed() >= warm {
                    start = Some((Instant::now(), done));
                }
            }
            let (s, n0) = start.expect("ran past the warm-up");
            (done - n0) as f64 / s.elapsed().as_secs_f64()
        }
        2 => {
            let c = Client::builder().connect([url]).expect("connect");
            let mut window = VecDeque::with_capacity(DEPTH);
            let mut done = 0u64;
            let t0 = Instant::now();
            let mut start = None;
            while t0.elapsed() < warm + measure {
                while window.len() < DEPTH {
                    match c.request(
                        101,
                        MessageType::JobRequest,
                        payload.clone(),
                        Duration::from_secs(5),
                    ) {
                        Ok(f) => window.push_back(f),
                        Err(ClientError::QueueFull(_)) => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                for _ in 0..DEPTH / 2 {
                    let Some(f) = window.pop_front() else {
                        break;
                    };
                    assert!(matches!(f.wait(), Reply::Answer(_)));
                    done += 1;
                }
                if start.is_none() && t0.elapsed() >= warm {
                    start = Some((Instant::now(), done));
                }
            }
            let (s, n0) = start.expect("ran past the warm-up");
            let rate = (done - n0) as f64 / s.elapsed().as_secs_f64();
            for f in window {
                f.wait();
            }
            c.close();
            rate
        }
        _ => {
            let c = Client::builder().connect([url]).expect("connect");
            let answered = Arc::new(AtomicU64::new(0));
            let mut issued = 0u64;
            let t0 = Instant::now();
            let mut start = None;
            while t0.elapsed() < warm + measure {
                if issued - answered.load(Ordering::Relaxed) >= DEPTH as u64 {
                    std::hint::spin_loop();
                } else {
                    let a = answered.clone();
                    match c.request_with(
                        101,
                        MessageType::JobRequest,
                        payload.clone(),
                        Duration::from_secs(5),
                        move |r| {
                            debug_assert!(matches!(r, Reply::Answer(_)));
                            a.fetch_add(1, Ordering::Relaxed);
                        },
                    ) {
                        Ok(()) => issued += 1,
                        Err(ClientError::QueueFull(_)) => std::thread::yield_now(),
                        Err(e) => panic!("{e}"),
                    }
                }
                if start.is_none() && t0.elapsed() >= warm {
                    start = Some((Instant::now(), answered.load(Ordering::Relaxed)));
                }
            }
            let (s, n0) = start.expect("ran past the warm-up");
            let rate = (answered.load(Ordering::Relaxed) - n0) as f64 / s.elapsed().as_secs_f64();
            c.close();
            rate
        }
    }
}
