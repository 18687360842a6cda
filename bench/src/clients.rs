//! The clients scenario: requests per second from one thread through each of Valkyrie's
//! clients against the same node (JOB_REQUEST → JOB_ACCEPT, 64-byte payloads, 2 shards): the
//! blocking `Client` one request at a time, the blocking `Client` pipelined by hand, and the
//! non-blocking `ClientHandle` with futures and with callbacks (1,000 in flight); and the
//! request round trip through `Ctx::request` from one node's service to another node.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::{Event, Flags, Frame, MessageType, SendOptions};
use valkyrie_runtime::{
    BusyPoll, Client, ClientError, ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Node, Reply,
    Service,
};

use crate::peers::pin;
use crate::report::{Report, median, progress};

/// Requests kept in flight by the pipelining clients.
const DEPTH: usize = 1_000;

/// Answers a JOB_REQUEST with a JOB_ACCEPT carrying its payload.
struct Accept;
impl Service for Accept {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

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
    // Node to node, sleeping shards and busy-polling ones: [mode][p50, p99] over rounds.
    let mut rtts: [[Vec<f64>; 2]; 2] = Default::default();
    for _ in 0..rounds {
        let node = accept_node();
        for (i, runs) in per.iter_mut().enumerate() {
            runs.push(drive(i, &node.url(), &payload, secs));
            bar.inc(1);
        }
        node.shutdown();
        node.join();
        for (m, busy) in [BusyPoll::Off, BusyPoll::Always].into_iter().enumerate() {
            let h = node_to_node(busy, 20_000);
            rtts[m][0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
            rtts[m][1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
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
    for (m, mode) in ["blocking", "busy-poll"].into_iter().enumerate() {
        let (p50, p99) = (median(rtts[m][0].clone()), median(rtts[m][1].clone()));
        println!(
            "  node to node, Ctx::request one in flight, {mode:<9} (A's shard on core 0, B's on core 1): p50 {p50:.1} us, p99 {p99:.1} us"
        );
        for (metric, v) in [("request_rtt_p50", p50), ("request_rtt_p99", p99)] {
            report.add(
                "clients",
                "valkyrie",
                metric,
                "us",
                v,
                json!({"path": "node to node", "mode": mode, "size": 64}),
            );
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

/// Node A's service: one request at a time to node B through its link, each round trip
/// recorded, until `samples` (after a tenth as warm-up); the histogram goes to `tx`.
struct Prober {
    url: String,
    samples: usize,
    sent_at: Instant,
    seen: usize,
    hist: Option<Histogram<u64>>,
    tx: mpsc::Sender<Histogram<u64>>,
}

impl Prober {
    fn ask(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef) {
        self.sent_at = Instant::now();
        ctx.request(
            conn,
            101,
            MessageType::JobRequest,
            Bytes::from(vec![0x5Au8; 64]),
            ctx.now() + Duration::from_secs(5),
        )
        .expect("request");
    }
}

impl Service for Prober {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.connect(ConnectOptions::new([self.url.as_str()]).expect("url"));
    }
    fn on_link(&mut self, ctx: &mut Ctx<'_>, _: LinkId, state: &LinkState) {
        if let LinkState::Up { conn, .. } = state {
            self.ask(ctx, *conn);
        }
    }
    fn on_reply(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, _: u32, reply: Reply) {
        let rtt = self.sent_at.elapsed();
        assert!(matches!(reply, Reply::Answer(_)), "{reply:?}");
        self.seen += 1;
        if self.seen > self.samples / 10
            && let Some(h) = self.hist.as_mut()
        {
            h.saturating_record(rtt.as_nanos() as u64);
        }
        if self.seen == self.samples + self.samples / 10 {
            if let Some(h) = self.hist.take() {
                let _ = self.tx.send(h);
            }
        } else {
            self.ask(ctx, conn);
        }
    }
    fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: Frame) {}
}

/// Round trips of `samples` requests from node A's service (one shard on core 0) to node B
/// (one shard on core 1), both shards sleeping or both busy-polling.
fn node_to_node(busy: BusyPoll, samples: usize) -> Histogram<u64> {
    // A one-shard node started without pinning inherits the core of the thread that starts
    // it: start each from a thread pinned where it belongs.
    let b = std::thread::scope(|s| {
        s.spawn(|| {
            pin(1);
            Node::builder()
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .shards(1)
                .pin(false)
                .busy_poll(busy)
                .service(|_| Accept)
                .start()
                .expect("node B")
        })
        .join()
        .expect("node B starts")
    });
    let (tx, rx) = mpsc::channel();
    let url = b.url();
    let a = std::thread::scope(|s| {
        s.spawn(|| {
            pin(0);
            Node::builder()
                .without_listeners()
                .shards(1)
                .pin(false)
                .busy_poll(busy)
                .service(move |_| Prober {
                    url: url.clone(),
                    samples,
                    sent_at: Instant::now(),
                    seen: 0,
                    hist: Some(
                        Histogram::new_with_bounds(1, 10_000_000_000, 3).expect("histogram"),
                    ),
                    tx: tx.clone(),
                })
                .start()
                .expect("node A")
        })
        .join()
        .expect("node A starts")
    });
    let h = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("node A's round trips");
    a.shutdown();
    a.join();
    b.shutdown();
    b.join();
    h
}
