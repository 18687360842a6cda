//! HTTP/1.1 on the node's own port: the node's endpoints, a service's routes (whole, later
//! and streamed answers), bad input refused with its status and nothing else disturbed,
//! binary and HTTP clients side by side, credentials on a node that requires them. Driven
//! with raw sockets (exact bytes) and with curl (a real client).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_bridge::http::{Method, Request, Response};
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{Client, ConnRef, Ctx, HttpAnswer, Node, Service};

/// Connections whose owed answer the service was told it need not give.
static GONE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Routes `/hello` (now), `/never` (an answer never given), `/later` (answered from a timer), `/stream` (NDJSON, 5 lines) and
/// answers JOB_REQUEST frames.
#[derive(Default)]
struct Web {
    waiting: Vec<ConnRef>,
}

impl Service for Web {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.route(Some(Method::Get), "/hello").unwrap();
        ctx.route(Some(Method::Get), "/later").unwrap();
        ctx.route(Some(Method::Get), "/stream").unwrap();
        ctx.route(Some(Method::Post), "/echo").unwrap();
        ctx.route(Some(Method::Get), "/never").unwrap();
    }

    fn on_http_gone(&mut self, _ctx: &mut Ctx<'_>, conn: ConnRef) {
        self.waiting.retain(|c| *c != conn);
        GONE.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        } else if frame.msg_type() == MessageType::AlertNotification {
            // A service that blocks its shard: what /healthz is for. Longer than the test
            // asks for: an answer from the stuck shard once it is free again would say healthy.
            std::thread::sleep(Duration::from_millis(5000));
        }
    }

    fn on_http(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, req: &Request) -> HttpAnswer {
        match req.path() {
            "/hello" => HttpAnswer::Respond(Response::with_body(200, "text/plain", "hello\n")),
            "/echo" => HttpAnswer::Respond(Response::with_body(
                200,
                "application/octet-stream",
                req.body.clone(),
            )),
            "/never" => HttpAnswer::Later,
            "/later" => {
                self.waiting.push(conn);
                ctx.set_timer(ctx.now() + Duration::from_millis(50), 1)
                    .unwrap();
                HttpAnswer::Later
            }
            _ => {
                // The head now; the lines from the timer.
                self.waiting.push(conn);
                ctx.set_timer(ctx.now() + Duration::from_millis(20), 2)
                    .unwrap();
                HttpAnswer::Stream(Response::streamed(200, "application/x-ndjson"))
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        for conn in self.waiting.drain(..) {
            if token == 1 {
                let _ = ctx.http_respond(conn, Response::json(200, "{\"later\":true}"));
            } else {
                for i in 0..5 {
                    ctx.http_chunk(conn, format!("{{\"line\":{i}}}\n").as_bytes())
                        .unwrap();
                }
                ctx.http_finish(conn).unwrap();
            }
        }
    }
}

fn node() -> Node {
    Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .configure(|c| c.http.request_timeout = Duration::from_millis(300))
        .service(|_| Web::default())
        .start()
        .unwrap()
}

fn addr(node: &Node) -> String {
    node.url().trim_start_matches("tcp://").to_owned()
}

/// Send `raw` and read until the node closes the connection (or 5 s pass).
fn exchange(node: &Node, raw: &[u8]) -> String {
    let mut s = TcpStream::connect(addr(node)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl runs (apt-get install -y curl)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[test]
fn the_nodes_own_endpoints_answer_curl() {
    let n = node();
    let base = format!("http://{}", addr(&n));
    let (code, body) = curl(&[&format!("{base}/healthz")]);
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["healthy"], true);
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
    let (code, body) = curl(&[&format!("{base}/readyz")]);
    assert_eq!(
        (code, body.contains("\"ready\":true")),
        (200, true),
        "{body}"
    );
    let (code, body) = curl(&[&format!("{base}/metrics")]);
    assert_eq!(code, 200);
    assert!(body.contains("valkyrie_connections_active"), "{body}");
    assert!(body.contains("valkyrie_http_responses_total{class=\"2xx\"}"));
    let (code, _) = curl(&["-X", "POST", &format!("{base}/healthz")]);
    assert_eq!(code, 405);
    let (code, _) = curl(&[&format!("{base}/no/such/path")]);
    assert_eq!(code, 404);
    let (code, body) = curl(&["-I", &format!("{base}/healthz")]);
    assert_eq!(code, 200);
    assert!(
        body.contains("content-length:"),
        "HEAD gives the length: {body}"
    );
    assert!(!body.contains("healthy"), "HEAD has no body");
    n.shutdown();
    n.join();
}

#[test]
fn a_services_routes_answer_now_later_and_streamed() {
    let n = node();
    let base = format!("http://{}", addr(&n));
    assert_eq!(curl(&[&format!("{base}/hello")]), (200, "hello\n".into()));
    assert_eq!(
        curl(&[&format!("{base}/later")]),
        (200, "{\"later\":true}".into())
    );
    let (code, body) = curl(&[&format!("{base}/stream")]);
    assert_eq!(code, 200);
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 5, "{body}");
    assert_eq!(lines[4], "{\"line\":4}");
    // A body posted with 100-continue (curl asks for it past 1 KiB) comes back whole.
    let big = "x".repeat(200_000);
    let file = std::env::temp_dir().join(format!("valkyrie-http-body-{}", std::process::id()));
    std::fs::write(&file, &big).unwrap();
    let (code, body) = curl(&[
        "-H",
        "content-type: application/octet-stream",
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/echo"),
    ]);
    let _ = std::fs::remove_file(&file);
    assert_eq!((code, body.len()), (200, big.len()));
    n.shutdown();
    n.join();
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let n = node();
    let mut raw = Vec::new();
    for path in ["/hello", "/later", "/healthz", "/stream", "/hello"] {
        raw.extend_from_slice(format!("GET {path} HTTP/1.1\r\nHost: n\r\n\r\n").as_bytes());
    }
    raw.extend_from_slice(b"GET /hello HTTP/1.1\r\nConnection: close\r\n\r\n");
    let answer = exchange(&n, &raw);
    let statuses: Vec<_> = answer.match_indices("HTTP/1.1 ").collect();
    assert_eq!(statuses.len(), 6, "{answer}");
    let later = answer.find("{\"later\":true}").unwrap();
    let healthy = answer.find("\"healthy\"").unwrap();
    let streamed = answer.find("{\"line\":4}").unwrap();
    assert!(later < healthy && healthy < streamed, "in order: {answer}");
    assert!(answer.ends_with("hello\n"));
    n.shutdown();
    n.join();
}

#[test]
fn bad_requests_get_their_status_and_nothing_else_is_disturbed() {
    let n = node();
    // A binary client stays connected and answered throughout.
    let mut binary = Client::connect(&n.url()).unwrap();
    let mut flood = b"GET / HTTP/1.1\r\n".to_vec();
    for i in 0..200 {
        flood.extend_from_slice(format!("x-h{i}: v\r\n").as_bytes());
    }
    flood.extend_from_slice(b"\r\n");
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (flood, 431),
        (
            format!("GET /x HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(20_000)).into_bytes(),
            431,
        ),
        (
            b"POST /echo HTTP/1.1\r\nContent-Length: 10000000000\r\n\r\n".to_vec(),
            413,
        ),
        (b"GET / HTTP/2.0\r\n\r\n".to_vec(), 505),
        (b"GET /hello HTTP/1.1\r\nBad\r\n\r\n".to_vec(), 400),
        (
            b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(),
            501,
        ),
        // Headers that stop coming: 408 after the request timeout (300 ms here).
        (b"GET /hello HTTP/1.1\r\nHost: n\r\n".to_vec(), 408),
    ];
    for (raw, status) in cases {
        let t0 = Instant::now();
        let answer = exchange(&n, &raw);
        assert_eq!(status_of(&answer), status, "{answer}");
        assert!(
            answer.contains("connection: close"),
            "refusals close: {answer}"
        );
        assert!(t0.elapsed() < Duration::from_secs(3));
        let reply = binary
            .request(
                101,
                MessageType::JobRequest,
                Bytes::from_static(b"still here"),
                Duration::from_secs(5),
            )
            .unwrap();
        assert_eq!(&reply.payload[..], b"still here");
    }
    let _ = binary.close();
    n.shutdown();
    n.join();
}

/// A client still sending a body the node refused reads the refusal and then the end of the
/// stream, not a reset: the node lingers (shuts its side, drops what still comes) before it
/// closes. Closing with the body unread would make the kernel reset the connection, and the
/// reset can overtake the 413.
#[test]
fn a_refused_body_still_arriving_gets_its_413_not_a_reset() {
    let n = node();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr(&n)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            // The head and the first 256 KB of body in one write (unread by the node when it
            // refuses the request by its head), then two megabytes more.
            let mut first =
                b"POST /echo HTTP/1.1\r\nHost: n\r\nContent-Length: 10000000\r\n\r\n".to_vec();
            first.resize(first.len() + 256 * 1024, b'x');
            let _ = w.write_all(&first);
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..32 {
                if w.write_all(&chunk).is_err() {
                    break;
                }
            }
        });
        let mut out = Vec::new();
        let ended = s.read_to_end(&mut out);
        let answer = String::from_utf8_lossy(&out);
        assert_eq!(status_of(&answer), 413, "{answer}");
        assert!(ended.is_ok(), "a clean end of stream, not {ended:?}");
        writer.join().unwrap();
    }
    n.shutdown();
    n.join();
}

#[test]
fn binary_and_http_clients_share_the_port_at_once() {
    let n = node();
    let base = format!("http://{}", addr(&n));
    let url = n.url();
    let binaries: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&url).unwrap();
                for i in 0..200u32 {
                    let reply = c
                        .request(
                            101,
                            MessageType::JobRequest,
                            Bytes::from(i.to_be_bytes().to_vec()),
                            Duration::from_secs(5),
                        )
                        .unwrap();
                    assert_eq!(&reply.payload[..], &i.to_be_bytes());
                }
                let _ = c.close();
            })
        })
        .collect();
    let webs: Vec<_> = (0..4)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                for _ in 0..10 {
                    assert_eq!(curl(&[&format!("{base}/hello")]).0, 200);
                }
            })
        })
        .collect();
    for t in binaries.into_iter().chain(webs) {
        t.join().unwrap();
    }
    n.shutdown();
    n.join();
}

#[test]
fn a_node_that_requires_credentials_asks_http_clients_for_them() {
    use valkyrie_protocol::security::token::TokenServer;
    use valkyrie_protocol::{Config, SecurityMode};
    let cfg = Config {
        security: vec![SecurityMode::Token],
        handshakes: vec![std::sync::Arc::new(TokenServer::new([(
            "agents".to_owned(),
            b"right".to_vec(),
        )]))],
        ..Config::new("secure")
    };
    let closed = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(cfg.clone())
        .service(|_| Web::default())
        .start()
        .unwrap();
    let base = format!("http://{}", addr(&closed));
    assert_eq!(curl(&[&format!("{base}/healthz")]).0, 401);
    assert_eq!(curl(&[&format!("{base}/hello")]).0, 401);
    closed.shutdown();
    closed.join();
    let open = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .protocol(cfg)
        .configure(|c| c.http.open_probes = true)
        .service(|_| Web::default())
        .start()
        .unwrap();
    let base = format!("http://{}", addr(&open));
    assert_eq!(curl(&[&format!("{base}/healthz")]).0, 200);
    assert_eq!(curl(&[&format!("{base}/metrics")]).0, 200);
    assert_eq!(curl(&[&format!("{base}/hello")]).0, 401, "only the probes");
    open.shutdown();
    open.join();
}

#[test]
fn readyz_turns_false_when_the_node_drains() {
    let n = node();
    let mut s = TcpStream::connect(addr(&n)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /readyz HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let k = s.read(&mut buf).unwrap();
    assert_eq!(status_of(&String::from_utf8_lossy(&buf[..k])), 200);
    // A request under way when the node drains is answered: not ready, and told to close.
    s.write_all(b"GET /readyz HTTP/1.1\r\n").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    n.drain();
    std::thread::sleep(Duration::from_millis(100));
    s.write_all(b"\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let answer = String::from_utf8_lossy(&out);
    assert_eq!(status_of(&answer), 503, "{answer}");
    assert!(answer.contains("\"draining\":true"), "{answer}");
    assert!(answer.contains("connection: close"), "{answer}");
    n.join();
}

#[test]
fn an_idle_kept_alive_connection_is_closed_when_the_node_drains() {
    let n = node();
    let mut s = TcpStream::connect(addr(&n)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /hello HTTP/1.1\r\n\r\n").unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).unwrap();
    let t0 = Instant::now();
    n.drain();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty() && t0.elapsed() < Duration::from_secs(2));
    n.join();
}

#[test]
fn a_client_that_leaves_before_its_answer_is_let_go_and_the_service_told() {
    let n = node();
    let before = GONE.load(std::sync::atomic::Ordering::SeqCst);
    {
        let mut s = TcpStream::connect(addr(&n)).unwrap();
        s.write_all(b"GET /never HTTP/1.1\r\n\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    let t0 = Instant::now();
    while GONE.load(std::sync::atomic::Ordering::SeqCst) == before {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the service was not told"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let t0 = Instant::now();
    while n.connections() > 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the connection stayed"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    n.shutdown();
    n.join();
}

#[test]
fn healthz_tells_a_stuck_shard_from_a_sleeping_one() {
    let n = node();
    let base = format!("http://{}", addr(&n));
    // Idle for longer than a second: both shards asleep, both alive.
    std::thread::sleep(Duration::from_millis(1200));
    let (code, body) = curl(&[&format!("{base}/healthz")]);
    assert_eq!(code, 200, "{body}");
    // One shard's service blocks it for 5 s.
    let mut c = Client::connect(&n.url()).unwrap();
    c.send(
        3,
        MessageType::AlertNotification,
        Bytes::from_static(b"\x80"),
        Default::default(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(1300));
    // Asked of the other shard: a connection that lands on the stuck one waits (0), and one
    // asked before the stuck shard's last turn is a second old (a loaded machine may start the
    // block late) still hears 200 — try again, for up to 3 s, well before the block ends.
    let t0 = Instant::now();
    let body = loop {
        let (code, body) = curl(&["--max-time", "0.25", &format!("{base}/healthz")]);
        if code == 503 {
            break body;
        }
        assert!(code == 0 || code == 200, "{code}: {body}");
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "no shard seen stuck (last answer {code}: {body})"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["healthy"], false);
    let stuck: Vec<_> = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["alive"] == false)
        .collect();
    assert_eq!(stuck.len(), 1, "{body}");
    let _ = c.close();
    n.shutdown();
    n.join();
}

#[test]
fn openapi_json_is_served_and_valid() {
    let n = node();
    let (code, body) = curl(&[&format!("http://{}/openapi.json", addr(&n))]);
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["openapi"], "3.1.0");
    assert!(v["paths"]["/api/v1/messages/{type}"]["post"].is_object());
    let file = std::env::temp_dir().join(format!("valkyrie-openapi-{}.json", std::process::id()));
    std::fs::write(&file, &body).unwrap();
    match Command::new("openapi-spec-validator").arg(&file).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => eprintln!(
            "SKIPPED: openapi-spec-validator is not installed (pip install openapi-spec-validator)"
        ),
    }
    let _ = std::fs::remove_file(&file);
    n.shutdown();
    n.join();
}

#[test]
fn the_status_feed_streams_a_line_a_second_while_the_client_reads() {
    let n = node();
    let out = Command::new("curl")
        .args(["-sS", "-N", "--max-time", "2.5"])
        .arg(format!("http://{}/api/v1/status?follow=1", addr(&n)))
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!((2..=4).contains(&lines.len()), "{text}");
    assert!(lines.iter().all(|l| l["connections"]["active"].is_number()));
    let at: Vec<u64> = lines.iter().map(|l| l["at_ms"].as_u64().unwrap()).collect();
    assert!(
        at.windows(2).all(|w| w[1] >= w[0] + 900),
        "a line a second: {at:?}"
    );
    // curl gave up; the follower is let go.
    let t0 = Instant::now();
    while n.connections() > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the follower stayed");
        std::thread::sleep(Duration::from_millis(10));
    }
    n.shutdown();
    n.join();
}
