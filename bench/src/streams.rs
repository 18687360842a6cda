//! The seed's two other round trips, measured through the protocol's own blocking `Client`
//! against a one-shard node (server core 0, client core 1), in busy-poll and blocking modes:
//! message dispatch (a 64-byte STREAM_DATA sent with ACK → its STREAM_ACK; seed < 100 µs) and
//! stream open (STREAM_OPEN → the STREAM_ACK that makes the stream usable; seed < 500 µs).
//! No peer has streams of its own: these rows stand beside the seed's targets, and the
//! PING round trip of the latency scenario is the comparison with the other systems.

use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::message::StreamOpen;
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{ErrorCode, Event, Flags, MessageType, SendOptions};
use valkyrie_runtime::{BusyPoll, Client, ClientConfig};

use crate::peers::pin;
use crate::report::{Report, median, progress};
use crate::server::start;

/// The two round trips.
#[derive(Clone, Copy)]
enum Op {
    Dispatch,
    StreamOpen,
}

impl Op {
    fn metric(self) -> &'static str {
        match self {
            Op::Dispatch => "dispatch",
            Op::StreamOpen => "stream_open",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Op::Dispatch => "dispatch (STREAM_DATA+ACK -> STREAM_ACK)",
            Op::StreamOpen => "stream open (STREAM_OPEN -> STREAM_ACK)",
        }
    }
}

/// A STREAM_OPEN of `kind` with the connection's default window.
fn open(kind: &str) -> StreamOpen {
    StreamOpen {
        kind: kind.into(),
        window: None,
        metadata: Default::default(),
    }
}

/// Wait for the acknowledgement of `correlation_id` (dispatch) or of stream `stream_id`.
fn acked(c: &mut Client, stream_id: u32, correlation_id: u32) {
    loop {
        match c.next_event(Duration::from_secs(10)).expect("client") {
            Some(Event::Acked {
                stream_id: s,
                correlation_id: k,
            }) if s == stream_id && (correlation_id == 0 || k == correlation_id) => return,
            Some(_) => {}
            None => panic!("no STREAM_ACK within 10 s"),
        }
    }
}

/// `samples` round trips of `op` (after a tenth as warm-up) on a fresh connection.
fn measure(addr: std::net::SocketAddr, busy: bool, op: Op, samples: usize) -> Histogram<u64> {
    let cfg = ClientConfig {
        busy_poll: busy,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&format!("tcp://{addr}"), cfg).expect("connect");
    let payload = Bytes::from(vec![0xA5u8; 64]);
    let data_stream = c
        .open_stream(StreamClass::Data, Some(open("data")))
        .expect("open the data stream");
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).expect("histogram");
    for i in 0..samples + samples / 10 {
        let elapsed = match op {
            Op::Dispatch => {
                let corr = i as u32 + 1;
                let t0 = Instant::now();
                c.send(
                    data_stream,
                    MessageType::StreamData,
                    payload.clone(),
                    SendOptions {
                        flags: Flags::ACK,
                        correlation_id: corr,
                        ..SendOptions::default()
                    },
                )
                .expect("send");
                acked(&mut c, data_stream, corr);
                t0.elapsed()
            }
            Op::StreamOpen => {
                let t0 = Instant::now();
                let id = c
                    .open_stream(StreamClass::Job, Some(open("job")))
                    .expect("open");
                let d = t0.elapsed();
                // Untimed: give the stream back so that the stream limit is never reached.
                c.connection()
                    .reset_stream(id, ErrorCode::STREAM_CANCELLED.0, "bench")
                    .expect("reset");
                c.flush_now().expect("flush");
                d
            }
        };
        if i >= samples / 10 {
            h.saturating_record(elapsed.as_nanos() as u64);
        }
    }
    let _ = c.close();
    h
}

/// Both round trips in both modes, `rounds` fresh nodes each, medians printed and reported.
pub(crate) fn stream_round_trips(
    report: &mut Report,
    rounds: usize,
    samples: usize,
    spin: BusyPoll,
) {
    let ops = [Op::Dispatch, Op::StreamOpen];
    println!(
        "\nstream round trips: valkyrie through its blocking Client, 64-byte payloads, server on core 0, client on core 1, {samples} round trips x {rounds} rounds, medians"
    );
    println!(
        "  {:<10} {:<42} {:>9} {:>9} {:>9}",
        "mode", "round trip", "p50 us", "p99 us", "p999 us"
    );
    let bar = progress((2 * rounds * ops.len()) as u64, "stream round trips");
    let mut lines = Vec::new();
    for (mode, busy) in [("busy-poll", true), ("blocking", false)] {
        for op in ops {
            let mut q: [Vec<f64>; 3] = Default::default();
            for _ in 0..rounds {
                let server = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(0);
                        start("valkyrie", 0, 1, busy, spin)
                    })
                    .join()
                    .expect("server start")
                });
                let addr = server.addr();
                let h = std::thread::scope(|s| {
                    s.spawn(|| {
                        pin(1);
                        measure(addr, busy, op, samples)
                    })
                    .join()
                    .expect("client")
                });
                drop(server);
                for (i, quantile) in [0.5, 0.99, 0.999].into_iter().enumerate() {
                    q[i].push(h.value_at_quantile(quantile) as f64 / 1000.0);
                }
                bar.inc(1);
            }
            let [p50, p99, p999] = q.map(median);
            lines.push(format!(
                "  {mode:<10} {:<42} {p50:>9.1} {p99:>9.1} {p999:>9.1}",
                op.describe()
            ));
            let params = json!({"mode": mode, "transport": "tcp", "size": 64, "shards": 1,
                "spin": if busy { format!("{spin:?}") } else { "off".into() }});
            for (suffix, value) in [("p50", p50), ("p99", p99), ("p999", p999)] {
                report.add(
                    "latency",
                    "valkyrie",
                    &format!("{}_{suffix}", op.metric()),
                    "us",
                    value,
                    params.clone(),
                );
            }
        }
    }
    bar.finish_and_clear();
    for line in lines {
        println!("{line}");
    }
}
