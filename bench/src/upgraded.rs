//! `latency` with `params.upgraded: true`: one connection through the protocol's blocking
//! `Client` to a one-shard node on the same host (server core 0, client core 1), 64-byte
//! PING/PONG round trips over TCP, then the same connection after UPGRADE moved it to shared
//! memory, in busy-poll and blocking modes.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_runtime::{BusyPoll, Client, ClientConfig, Node};

use crate::peers::{pin, unpin};
use crate::report::{Report, median, progress};

fn round_trips(c: &mut Client, samples: usize) -> Histogram<u64> {
    let payload = [0xA5u8; 64];
    for _ in 0..samples / 10 {
        c.ping(&payload).expect("warm-up");
    }
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for _ in 0..samples {
        let t = std::time::Instant::now();
        c.ping(&payload).expect("ping");
        h.saturating_record(t.elapsed().as_nanos() as u64);
    }
    h
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, samples: usize, spin: BusyPoll) {
    println!(
        "\nlatency after UPGRADE: one connection through the blocking Client, 64-byte PING/PONG over TCP loopback, then over the shared memory it moved to; server core 0, client core 1, {samples} round trips x {rounds} rounds, medians"
    );
    let bar = progress((2 * rounds) as u64, "upgraded");
    let mut lines = Vec::new();
    for (mode, busy) in [("busy-poll", true), ("blocking", false)] {
        // [before, after] x [p50, p99]
        let mut q: [[Vec<f64>; 2]; 2] = Default::default();
        for _ in 0..rounds {
            pin(0);
            let node = Node::builder()
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .shards(1)
                .busy_poll(if busy { spin } else { BusyPoll::Off })
                .heartbeat(Duration::from_secs(60))
                .start()
                .expect("node");
            pin(1);
            let cfg = ClientConfig {
                busy_poll: busy,
                ..ClientConfig::default()
            };
            let mut c = Client::connect_with(&node.url(), cfg).expect("connect");
            let before = round_trips(&mut c, samples);
            assert!(
                c.upgrade_to_shm(Duration::from_secs(5)).expect("upgrade"),
                "the node refused the upgrade"
            );
            let after = round_trips(&mut c, samples);
            assert!(c.is_upgraded());
            let _ = c.close();
            drop(node);
            unpin();
            for (i, h) in [before, after].iter().enumerate() {
                q[i][0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
                q[i][1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            }
            bar.inc(1);
        }
        for (i, upgraded) in [false, true].into_iter().enumerate() {
            let (p50, p99) = (median(q[i][0].clone()), median(q[i][1].clone()));
            let params = json!({"transport": "tcp", "size": 64, "mode": mode,
                "upgraded": upgraded, "client": "Client"});
            report.add("latency", "valkyrie", "rtt_p50", "us", p50, params.clone());
            report.add("latency", "valkyrie", "rtt_p99", "us", p99, params);
            lines.push((mode, upgraded, p50, p99));
        }
    }
    bar.finish_and_clear();
    for (mode, upgraded, p50, p99) in &lines {
        let before = lines
            .iter()
            .find(|l| l.0 == *mode && !l.1)
            .map_or(f64::NAN, |l| l.2);
        println!(
            "  {mode:<10} {:<22} p50 {p50:>7.1} us  p99 {p99:>7.1} us   p50 {:.2}x the same connection before",
            if *upgraded {
                "after UPGRADE (shm)"
            } else {
                "before (tcp)"
            },
            p50 / before
        );
    }
}
