//! The seed's metrics move with the traffic that makes them: request latency by type,
//! messages received by type and status, open streams and the windows granted by stream
//! class, connection lifetimes by transport, link retries by operation — read from
//! `/metrics` as a scraper reads them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::message::StreamOpen;
use valkyrie_protocol::retry::ExponentialBackoff;
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{Client, ConnRef, ConnectOptions, Ctx, Node, Service};

/// Echoes requests, and keeps a link to a port nothing listens on (so it retries).
struct Svc {
    dead: String,
}

impl Service for Svc {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        if ctx.shard() == 0 {
            let opts = ConnectOptions::new([self.dead.as_str()]).unwrap().backoff(
                ExponentialBackoff::new(Duration::from_millis(5), Duration::from_millis(20)),
            );
            ctx.connect(opts);
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

/// The value of the sample `name{labels}` (labels as written, in order), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

fn eventually(node: &Node, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = node.metrics_text();
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what}:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_seed_metrics_move_with_the_traffic() {
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("tcp://{}", l.local_addr().unwrap())
    };
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .service(move |_| Svc { dead: dead.clone() })
        .start()
        .unwrap();
    let mut c = Client::connect(&node.url()).unwrap();
    for _ in 0..20 {
        let r = c
            .request(
                1,
                MessageType::JobRequest,
                Bytes::from_static(b"job"),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(r.msg_type(), MessageType::JobAccept);
    }
    let job = c
        .open_stream(
            StreamClass::Job,
            Some(StreamOpen {
                kind: "job".into(),
                window: None,
                metadata: Default::default(),
            }),
        )
        .unwrap();
    // Opened implicitly: the node learns of it with its first frame.
    let data = c.open_stream(StreamClass::Data, None).unwrap();
    c.send(
        data,
        MessageType::StreamData,
        Bytes::from_static(b"bytes"),
        Default::default(),
    )
    .unwrap();
    c.send(
        job,
        MessageType::JobProgress,
        Bytes::from_static(b"\x80"),
        Default::default(),
    )
    .unwrap();
    let text = eventually(&node, "two streams open", |t| {
        sample(t, "valkyrie_streams_active{type=\"job\"}") == 1.0
            && sample(t, "valkyrie_streams_active{type=\"data\"}") == 1.0
    });
    // Every request was answered through the node and timed.
    let answered = sample(
        &text,
        "valkyrie_message_latency_seconds_count{type=\"job_request\"}",
    );
    assert!(answered >= 18.0, "latency samples: {answered}");
    let total = sample(
        &text,
        "valkyrie_message_latency_seconds_sum{type=\"job_request\"}",
    );
    assert!(
        total > 0.0 && total / answered < 0.1,
        "a mean under 100 ms: {total} / {answered}"
    );
    assert!(
        sample(
            &text,
            "valkyrie_message_latency_seconds_bucket{le=\"+Inf\",type=\"job_request\"}"
        ) == answered
    );
    assert_eq!(
        sample(
            &text,
            "valkyrie_messages_received_total{status=\"ok\",type=\"job_request\"}"
        ),
        20.0
    );
    // The node granted windows on the streams the client opened.
    for class in ["job", "data"] {
        let series = format!("valkyrie_flow_control_window_size_count{{stream_type=\"{class}\"}}");
        assert!(sample(&text, &series) >= 1.0, "{series}\n{text}");
    }
    // The link to the dead port has retried.
    let text = eventually(&node, "link retries", |t| {
        sample(t, "valkyrie_retries_total{operation=\"connect\"}") >= 2.0
    });
    assert_eq!(
        sample(&text, "valkyrie_retries_total{operation=\"reconnect\"}"),
        0.0
    );
    // The client leaves: its streams are no longer open, its lifetime is recorded.
    c.close().unwrap();
    let text = eventually(&node, "streams closed with their connection", |t| {
        sample(t, "valkyrie_streams_active{type=\"job\"}") == 0.0
            && sample(
                t,
                "valkyrie_connection_duration_seconds_count{transport=\"tcp\"}",
            ) >= 1.0
    });
    assert_eq!(sample(&text, "valkyrie_streams_active{type=\"data\"}"), 0.0);
    let lived = sample(
        &text,
        "valkyrie_connection_duration_seconds_sum{transport=\"tcp\"}",
    );
    assert!(lived > 0.0 && lived < 60.0, "{lived}");
    node.shutdown();
    node.join();
}
