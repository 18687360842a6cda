//! `valkyrie node --otlp URL` exports a span for each traced request to an OTLP/HTTP
//! collector: here a small one in the test that decodes what arrives (OTLP JSON). A binary
//! request with the TRACE flag and an HTTP request with `traceparent` each show up as a span
//! of the caller's trace, with the caller's span as its parent.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::frame::TraceContext;
use valkyrie_protocol::{Event, Flags, MessageType, SendOptions};
use valkyrie_runtime::Client;

mod common;

/// The spans every export delivered, as JSON values.
type Spans = Arc<Mutex<Vec<serde_json::Value>>>;

/// Serve OTLP/HTTP on `listener`: each `POST /v1/traces` body is decoded and its spans kept.
fn collector(listener: TcpListener, spans: Spans) {
    for stream in listener.incoming() {
        let Ok(stream) = stream else { return };
        let spans = spans.clone();
        std::thread::spawn(move || serve(stream, spans));
    }
}

fn serve(stream: TcpStream, spans: Spans) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        assert!(line.starts_with("POST /v1/traces "), "{line}");
        let mut len = 0;
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end().to_ascii_lowercase();
            if h.is_empty() {
                break;
            }
            if let Some(v) = h.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            if let Some(v) = h.strip_prefix("content-type:") {
                assert_eq!(v.trim(), "application/json");
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
        for rs in doc["resourceSpans"].as_array().unwrap() {
            for ss in rs["scopeSpans"].as_array().unwrap() {
                for s in ss["spans"].as_array().unwrap() {
                    let mut s = s.clone();
                    s["resource"] = rs["resource"].clone();
                    spans.lock().unwrap().push(s);
                }
            }
        }
        w.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}",
        )
        .unwrap();
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first span with `trace_id`, waiting up to 10 s for it to be exported.
fn span_of(spans: &Spans, trace_id: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(s) = spans
            .lock()
            .unwrap()
            .iter()
            .find(|s| s["traceId"].as_str() == Some(trace_id))
        {
            return s.clone();
        }
        assert!(Instant::now() < deadline, "no span of trace {trace_id}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn attribute<'a>(span: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    span["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| &a["value"])
        .unwrap_or_else(|| panic!("no attribute {key} in {span}"))
}

#[test]
fn traced_requests_are_exported_as_spans_of_the_callers_trace() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let otlp = format!("http://{}", listener.local_addr().unwrap());
    let spans: Spans = Arc::default();
    let s2 = spans.clone();
    std::thread::spawn(move || collector(listener, s2));
    let port = common::free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let mut node = common::valkyrie_listening(
        [
            "node",
            "--listen",
            &url,
            "--echo",
            "--node-id",
            "traced-node",
            "--otlp",
            &otlp,
        ],
        port,
    );

    // A binary request with the TRACE flag.
    let ctx = TraceContext {
        trace_id: *b"valkyrie-trace-1",
        span_id: *b"caller-1",
    };
    let mut payload = ctx.to_bytes().to_vec();
    payload.extend_from_slice(b"\x81\xa3cmd\xa4make");
    let mut c = Client::connect(&url).unwrap();
    let opts = SendOptions {
        flags: Flags::TRACE,
        correlation_id: 4242,
        trace_flags: 1,
        ..SendOptions::default()
    };
    c.send(1, MessageType::JobRequest, Bytes::from(payload), opts)
        .unwrap();
    loop {
        match c.next_event(Duration::from_secs(10)).unwrap() {
            Some(Event::Frame(f)) if f.header.correlation_id == 4242 => break,
            Some(_) => {}
            None => panic!("no answer"),
        }
    }
    let span = span_of(&spans, &hex(&ctx.trace_id));
    assert_eq!(span["parentSpanId"], hex(&ctx.span_id));
    assert_eq!(span["name"], "job_request");
    assert_eq!(span["kind"], 2, "server");
    // Unsigned fields arrive as strings or as OTLP JSON's string-encoded integers.
    let corr = attribute(&span, "correlation_id");
    assert!(
        corr["stringValue"] == "4242" || corr["intValue"] == "4242",
        "{corr}"
    );
    assert_eq!(attribute(&span, "via")["stringValue"], "tcp");
    assert_eq!(attribute(&span, "status")["stringValue"], "ok");
    let service = span["resource"]["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["key"] == "service.name")
        .unwrap()["value"]["stringValue"]
        .clone();
    assert_eq!(service, "valkyrie");
    let (start, end): (u64, u64) = (
        span["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
        span["endTimeUnixNano"].as_str().unwrap().parse().unwrap(),
    );
    assert!(
        end >= start && end - start < 5_000_000_000,
        "{start}..{end}"
    );

    // An HTTP request through the REST gateway with a W3C traceparent joins its trace too.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent = "00f067aa0ba902b7";
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-X", "POST"])
        .args(["-H", &format!("traceparent: 00-{trace}-{parent}-01")])
        .args(["-H", "content-type: application/json"])
        .args([
            "-d",
            r#"{"job_id": "b-1", "spec": {"command": ["make"]}, "priority": 5, "timeout_ms": 1000}"#,
        ])
        .arg(format!("http://127.0.0.1:{port}/api/v1/messages/job_request"))
        .output()
        .expect("curl runs");
    let answer = String::from_utf8_lossy(&out.stdout);
    assert!(answer.contains(r#""job_id":"b-1""#), "{answer}");
    let span = span_of(&spans, trace);
    assert_eq!(span["parentSpanId"], parent);
    assert_eq!(attribute(&span, "via")["stringValue"], "http");

    let _ = c.close();
    let _ = Command::new("kill")
        .args(["-TERM", &node.id().to_string()])
        .status();
    let status = node.wait().unwrap();
    assert!(status.success(), "{status}");
}
