//! `quic` under loss: what carrying Valkyrie streams on QUIC streams of their own
//! (`quic_streams`) buys when packets are lost. One connection to a one-shard node over QUIC;
//! stream 1 carries bulk data (64 KiB of STREAM_DATA before each request), stream 3 small
//! requests, each timed to its answer. Without `quic_streams` both share the connection's
//! first QUIC stream, so a lost packet of the bulk holds back the request queued behind it
//! (head-of-line blocking); with it, each has its own. Loss is made by the kernel: the node and
//! client run in a network namespace of their own (`ip netns`), where `iptables -m statistic`
//! drops a share of the UDP packets — so this part needs root, `ip` and `iptables`, and is
//! skipped without them.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use valkyrie_protocol::{MessageType, SendOptions};
use valkyrie_runtime::{Client, ClientConfig, ClientError, Node};

use crate::report::{Report, median};

/// Requests timed per configuration and round.
const REQUESTS: usize = 400;
/// Bulk bytes sent on stream 1 before each request.
const BULK: usize = 64 * 1024;

fn run(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The loss configurations measured, each in a fresh namespace: (loss share, quic_streams).
const CASES: [(f64, bool); 4] = [(0.0, false), (0.0, true), (0.02, false), (0.02, true)];

pub(crate) fn scenario(report: &mut Report, rounds: usize) {
    println!(
        "\nquic under loss: stream 3's requests (timed) behind 64 KiB of bulk on stream 1 before each, one connection; {REQUESTS} requests x {rounds} rounds per case, medians"
    );
    let ns = format!("vk-quic-loss-{}", std::process::id());
    if !run(Command::new("ip").args(["netns", "add", &ns])) {
        println!(
            "  skipped: needs root with ip and iptables (a network namespace is made for the loss)"
        );
        return;
    }
    let _ = run(Command::new("ip").args(["-n", &ns, "link", "set", "lo", "up"]));
    let mut rows = Vec::new();
    for (loss, streams) in CASES {
        let _ = run(Command::new("ip").args(["netns", "exec", &ns, "iptables", "-F", "INPUT"]));
        if loss > 0.0
            && !run(Command::new("ip").args([
                "netns",
                "exec",
                &ns,
                "iptables",
                "-A",
                "INPUT",
                "-p",
                "udp",
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &loss.to_string(),
                "-j",
                "DROP",
            ]))
        {
            println!("  skipped: iptables -m statistic refused in the namespace");
            break;
        }
        let (mut p50s, mut p90s, mut p99s, mut means) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..rounds {
            let out = Command::new("ip")
                .args(["netns", "exec", &ns])
                .arg(std::env::current_exe().expect("own path"))
                .args(["quic-loss", if streams { "1" } else { "0" }])
                .stderr(Stdio::null())
                .output()
                .expect("run the quic-loss child");
            let line = String::from_utf8_lossy(&out.stdout);
            let Ok(v) = serde_json::from_str::<Value>(line.trim()) else {
                println!("  a round failed: {line}");
                continue;
            };
            p50s.push(v["p50"].as_f64().unwrap_or(f64::NAN));
            p90s.push(v["p90"].as_f64().unwrap_or(f64::NAN));
            p99s.push(v["p99"].as_f64().unwrap_or(f64::NAN));
            means.push(v["mean"].as_f64().unwrap_or(f64::NAN));
        }
        let (p50, p90, p99, mean) = (median(p50s), median(p90s), median(p99s), median(means));
        let params = json!({"transport": "quic", "loss": loss, "quic_streams": streams,
            "bulk_before_each": BULK, "size": 64});
        for (metric, v) in [
            ("request_p50", p50),
            ("request_p90", p90),
            ("request_p99", p99),
            ("request_mean", mean),
        ] {
            report.add("quic", "valkyrie", metric, "us", v, params.clone());
        }
        rows.push((loss, streams, p50, p90, p99, mean));
    }
    let _ = run(Command::new("ip").args(["netns", "del", &ns]));
    for (loss, streams, p50, p90, p99, mean) in &rows {
        let shared = rows
            .iter()
            .find(|r| r.0 == *loss && !r.1)
            .map_or(f64::NAN, |r| r.5);
        println!(
            "  loss {:>4.1}%  {:<24} request p50 {p50:>7.0} us  p90 {p90:>7.0}  p99 {p99:>7.0}  mean {mean:>7.0} us ({:.2}x one shared stream)",
            loss * 100.0,
            if *streams {
                "streams on their own"
            } else {
                "one shared QUIC stream"
            },
            mean / shared
        );
    }
}

/// Answers each JOB_REQUEST with a JOB_ACCEPT of its payload; the bulk is taken and dropped.
struct Answer;

impl valkyrie_runtime::Service for Answer {
    fn on_frame(
        &mut self,
        ctx: &mut valkyrie_runtime::Ctx<'_>,
        conn: valkyrie_runtime::ConnRef,
        frame: valkyrie_protocol::Frame,
    ) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

/// (The child, inside the namespace.) One node, one client; prints `{"p50", "p99"}` in us.
pub(crate) fn child(streams: bool) {
    let pki = crate::quic::pki();
    let node = Node::builder()
        .listen("quic://127.0.0.1:0")
        .expect("endpoint")
        .quic_tls(crate::quic::server_tls(&pki), false)
        .shards(1)
        .heartbeat(Duration::from_secs(60))
        .service(|_| Answer)
        .start()
        .expect("node");
    let cfg = ClientConfig {
        tls: Some(crate::quic::client_tls(&pki)),
        tls_server_name: Some(crate::quic::SERVER_NAME.into()),
        quic_streams: streams,
        ..ClientConfig::default()
    };
    let mut c = Client::connect_with(&node.endpoints()[0].to_string(), cfg).expect("connect");
    let chunk = Bytes::from(vec![0x5Au8; 16 * 1024]);
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
    let until = Instant::now() + Duration::from_secs(60);
    for i in 0..REQUESTS + REQUESTS / 10 {
        // The bulk: what the stream's credit takes now, up to 64 KiB.
        let mut sent = 0;
        while sent < BULK {
            match c.send(
                1,
                MessageType::StreamData,
                chunk.clone(),
                SendOptions::default(),
            ) {
                Ok(()) => sent += chunk.len(),
                Err(ClientError::Send(_)) => break,
                Err(e) => panic!("bulk: {e}"),
            }
        }
        let t = Instant::now();
        let r = c.request(
            3,
            MessageType::JobRequest,
            Bytes::from_static(&[7u8; 64]),
            Duration::from_secs(10),
        );
        if r.is_err() || Instant::now() > until {
            break;
        }
        if i >= REQUESTS / 10 {
            h.saturating_record(t.elapsed().as_nanos() as u64);
        }
    }
    println!(
        "{}",
        json!({"p50": h.value_at_quantile(0.5) as f64 / 1000.0,
               "p90": h.value_at_quantile(0.9) as f64 / 1000.0,
               "p99": h.value_at_quantile(0.99) as f64 / 1000.0,
               "mean": h.mean() / 1000.0})
    );
    let _ = std::io::stdout().flush();
}
