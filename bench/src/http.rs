//! The http scenario: `POST /api/v1/messages/job_request` (an 87-byte JSON job) through the
//! REST gateway of a 2-shard node running the echo service, against hyper on 2 tokio workers
//! doing the same JSON ⇄ MessagePack conversions, from the harness's own keep-alive load
//! client (32 connections, one request in flight on each, 2 client threads).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use valkyrie_runtime::{Echo, Node};

use crate::report::{Report, median, progress};

/// Connections, each with one request in flight.
const CONNS: usize = 32;
/// Client threads (each a current-thread tokio runtime driving its share of connections).
const CLIENT_THREADS: usize = 2;

const JOB: &str =
    r#"{"job_id":"build-42","spec":{"command":["make","-j8"]},"priority":5,"timeout_ms":60000}"#;

/// One run: requests per second, p50 and p99 in microseconds.
struct Run {
    rate: f64,
    p50: f64,
    p99: f64,
}

enum Server {
    Valkyrie(Node),
    Hyper(crate::peers::TokioServer),
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, secs: f64) {
    let systems = ["valkyrie", "hyper"];
    println!(
        "\nhttp: POST /api/v1/messages/job_request ({} B of JSON), {CONNS} keep-alive connections with one request in flight each, {CLIENT_THREADS} client threads; valkyrie: 2 shards, echo service, the REST gateway; hyper: 2 tokio workers doing the same JSON <-> MessagePack conversions; {secs} s x {rounds} rounds, medians",
        JOB.len()
    );
    let bar = progress((rounds * systems.len()) as u64, "http");
    let mut runs: Vec<Vec<Run>> = systems.iter().map(|_| Vec::new()).collect();
    for _ in 0..rounds {
        for (i, system) in systems.iter().enumerate() {
            runs[i].push(run(system, secs));
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    let summary: Vec<(f64, f64, f64)> = runs
        .iter()
        .map(|r| {
            (
                median(r.iter().map(|x| x.rate).collect()),
                median(r.iter().map(|x| x.p50).collect()),
                median(r.iter().map(|x| x.p99).collect()),
            )
        })
        .collect();
    let (hyper_rate, _, hyper_p99) = summary[1];
    for (i, system) in systems.iter().enumerate() {
        let (rate, p50, p99) = summary[i];
        println!(
            "  {system:<9} {rate:>9.0} requests/s  p50 {p50:>7.1} us  p99 {p99:>7.1} us   {:.2}x hyper's rate, {:.2}x its p99",
            rate / hyper_rate,
            p99 / hyper_p99
        );
        let params =
            json!({"path": "/api/v1/messages/job_request", "connections": CONNS, "shards": 2});
        report.add(
            "http",
            system,
            "requests_per_sec",
            "req/s",
            rate,
            params.clone(),
        );
        report.add("http", system, "latency_p50", "us", p50, params.clone());
        report.add("http", system, "latency_p99", "us", p99, params);
    }
}

fn run(system: &str, secs: f64) -> Run {
    let server = match system {
        "valkyrie" => Server::Valkyrie(
            Node::builder()
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .shards(2)
                .service(|_| Echo)
                .start()
                .expect("valkyrie node"),
        ),
        _ => Server::Hyper(crate::peers::hyper_json::start(0, 2).expect("hyper")),
    };
    let addr = match &server {
        Server::Valkyrie(n) => n.url().trim_start_matches("tcp://").to_owned(),
        Server::Hyper(h) => h.addr.to_string(),
    };
    let request = format!(
        "POST /api/v1/messages/job_request HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{JOB}",
        JOB.len()
    );
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let hist = Arc::new(Mutex::new(
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
    ));
    let threads: Vec<_> = (0..CLIENT_THREADS)
        .map(|_| {
            let (stop, measuring, count, hist) =
                (stop.clone(), measuring.clone(), count.clone(), hist.clone());
            let (addr, request) = (addr.clone(), request.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("client runtime");
                rt.block_on(async move {
                    let tasks: Vec<_> = (0..CONNS / CLIENT_THREADS)
                        .map(|_| {
                            tokio::spawn(client(
                                addr.clone(),
                                request.clone(),
                                stop.clone(),
                                measuring.clone(),
                                count.clone(),
                                hist.clone(),
                            ))
                        })
                        .collect();
                    for t in tasks {
                        let _ = t.await;
                    }
                });
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    measuring.store(true, Ordering::Relaxed);
    let c0 = count.load(Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(secs));
    let n = count.load(Ordering::Relaxed) - c0;
    let elapsed = t0.elapsed().as_secs_f64();
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    match server {
        Server::Valkyrie(n) => {
            n.shutdown();
            n.join();
        }
        Server::Hyper(h) => drop(h),
    }
    let h = hist.lock().expect("histogram");
    Run {
        rate: n as f64 / elapsed,
        p50: h.value_at_quantile(0.5) as f64 / 1000.0,
        p99: h.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

/// One keep-alive connection: a request, its whole answer, again, until `stop`.
async fn client(
    addr: String,
    request: String,
    stop: Arc<AtomicBool>,
    measuring: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    hist: Arc<Mutex<Histogram<u64>>>,
) {
    let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else {
        return;
    };
    let _ = s.set_nodelay(true);
    let mut mine = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut buf = vec![0u8; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let t = Instant::now();
        if s.write_all(request.as_bytes()).await.is_err() {
            break;
        }
        let mut have = 0;
        // Read until the head and the whole body (Content-Length) are in.
        let whole = loop {
            let Ok(n) = s.read(&mut buf[have..]).await else {
                break false;
            };
            if n == 0 {
                break false;
            }
            have += n;
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = resp.parse(&buf[..have]) {
                assert_eq!(
                    resp.code,
                    Some(200),
                    "{}",
                    String::from_utf8_lossy(&buf[..have])
                );
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok())
                    .and_then(|v| v.parse::<usize>().ok())
                    .unwrap_or(0);
                if have >= head + len {
                    break true;
                }
            }
            if have == buf.len() {
                buf.resize(buf.len() * 2, 0);
            }
        };
        if !whole {
            break;
        }
        if measuring.load(Ordering::Relaxed) {
            let _ = mine.record(t.elapsed().as_nanos() as u64);
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
    let _ = hist.lock().expect("histogram").add(&mine);
}
