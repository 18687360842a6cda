//! Node to node: node A's service (one shard on core 0) calls node B (one shard on core 1)
//! through its link, one `Ctx::request` in flight, over TCP, shared memory or QUIC (server
//! authenticated), both shards sleeping when idle or both busy-polling.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{
    BusyPoll, ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Node, Reply, Service,
};

use crate::peers::pin;

/// The transports a link is measured over.
pub(crate) const TRANSPORTS: [&str; 3] = ["tcp", "shm", "quic"];

/// Answers a JOB_REQUEST with a JOB_ACCEPT carrying its payload.
pub(crate) struct Accept;
impl Service for Accept {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

/// Node A's service: one request at a time to node B through its link, each round trip
/// recorded, until `samples` (after a tenth as warm-up); the histogram goes to `tx`.
struct Prober {
    opts: ConnectOptions,
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
        ctx.connect(self.opts.clone());
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
/// (one shard on core 1) over `transport`, both shards sleeping or both busy-polling.
pub(crate) fn round_trips(transport: &str, busy: BusyPoll, samples: usize) -> Histogram<u64> {
    let pki = crate::quic::pki();
    let listen = match transport {
        "shm" => format!("shm://bench-n2n-{}", std::process::id()),
        "quic" => "quic://127.0.0.1:0".to_owned(),
        _ => "tcp://127.0.0.1:0".to_owned(),
    };
    // A one-shard node started without pinning inherits the core of the thread that starts
    // it: start each from a thread pinned where it belongs.
    let b = std::thread::scope(|s| {
        s.spawn(|| {
            pin(1);
            let mut builder = Node::builder().listen(&listen).expect("endpoint");
            if transport == "quic" {
                builder = builder.quic_tls(crate::quic::server_tls(&pki), false);
            }
            builder
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
    let mut opts = ConnectOptions::new([b.endpoints()[0].to_string()]).expect("url");
    if transport == "quic" {
        let tls = crate::quic::client_tls(&pki);
        opts = opts.tls(tls, Some(crate::quic::SERVER_NAME.into()));
    }
    let a = std::thread::scope(|s| {
        s.spawn(|| {
            pin(0);
            Node::builder()
                .without_listeners()
                .shards(1)
                .pin(false)
                .busy_poll(busy)
                .service(move |_| Prober {
                    opts: opts.clone(),
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
