//! The REST gateway driven with curl: JSON in, the service's answer out; raw payloads as
//! octet streams; bad JSON, wrong shapes and unknown types refused with their codes; an
//! ERROR mapped to its class's status; no answer in time is 504.

use std::process::Command;
use std::time::Duration;

use valkyrie_protocol::message::{JobAccept, Payload};
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{ConnRef, Ctx, Echo, NoService, Node, Service};

/// Accepts JOB_REQUESTs (JOB_ACCEPT naming the job), ignores HEALTH_CHECKs (never answers).
struct Jobs;

impl Service for Jobs {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let req = valkyrie_protocol::message::JobRequest::from_bytes(&frame.payload).unwrap();
            let accept = JobAccept {
                epoch: 0,
                job_id: req.job_id,
                agent_id: "agent-1".into(),
            };
            ctx.respond(
                conn,
                &frame.header,
                MessageType::JobAccept,
                accept.to_bytes(),
            )
            .unwrap();
        }
    }
}

fn start<S: Service>(service: fn() -> S) -> Node {
    Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(2)
        .configure(|c| c.http.gateway_timeout = Duration::from_millis(300))
        .service(move |_| service())
        .start()
        .unwrap()
}

/// POST `body` to the node's `/api/v1/messages/{kind}`: (status, body).
fn post(node: &Node, kind: &str, content_type: &str, body: &str) -> (u16, String) {
    let url = format!(
        "http://{}/api/v1/messages/{kind}",
        node.url().trim_start_matches("tcp://")
    );
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "-H"])
        .arg(format!("content-type: {content_type}"))
        .args(["--data-binary", body, &url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

const JOB: &str =
    r#"{"job_id": "build-42", "spec": {"command": ["make"]}, "priority": 5, "timeout_ms": 60000}"#;

#[test]
fn a_job_request_in_json_is_answered_by_the_service() {
    let node = start(|| Jobs);
    let (code, body) = post(&node, "job_request", "application/json", JOB);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["type"], "job_accept");
    assert_eq!(v["payload"]["job_id"], "build-42");
    assert!(v["correlation_id"].as_u64().unwrap() > 0);
    node.shutdown();
    node.join();
}

#[test]
fn the_echo_node_returns_json_and_raw_payloads() {
    let node = start(|| Echo);
    let (code, body) = post(&node, "job_request", "application/json", JOB);
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(v["type"], "job_request");
    assert_eq!(v["payload"]["spec"]["command"][0], "make");
    let (code, body) = post(
        &node,
        "stream_data",
        "application/octet-stream",
        "raw bytes",
    );
    assert_eq!((code, body.as_str()), (200, "raw bytes"));
    let (code, body) = post(&node, "ping", "application/octet-stream", "are you there");
    assert_eq!((code, body.as_str()), (200, "are you there"));
    node.shutdown();
    node.join();
}

#[test]
fn bad_input_is_refused_with_its_code() {
    let node = start(|| Echo);
    for (kind, body, status, code) in [
        ("job_request", "{not json", 400, 104),
        ("job_request", r#"{"job_id": 17}"#, 400, 104),
        ("no_such_type", "{}", 404, 103),
        ("hello", "{}", 400, 106),
    ] {
        let (got, answer) = post(&node, kind, "application/json", body);
        assert_eq!(got, status, "{kind}: {answer}");
        assert_eq!(json(&answer)["code"], code, "{kind}: {answer}");
    }
    node.shutdown();
    node.join();
}

#[test]
fn an_error_maps_to_its_class_and_silence_to_504() {
    let none = start(|| NoService);
    let (code, body) = post(&none, "job_request", "application/json", JOB);
    assert_eq!(code, 503, "ERROR 504 (no service) is 503: {body}");
    assert_eq!(json(&body)["code"], 504);
    none.shutdown();
    none.join();
    let jobs = start(|| Jobs);
    let (code, body) = post(
        &jobs,
        "health_check",
        "application/json",
        r#"{"checks": {"db": "ok"}}"#,
    );
    assert_eq!(code, 504, "{body}");
    assert_eq!(json(&body)["code"], 601);
    jobs.shutdown();
    jobs.join();
}

#[test]
fn traceparent_travels_as_the_frames_trace_context_and_back() {
    let node = start(|| Echo);
    let url = format!(
        "http://{}/api/v1/messages/job_request",
        node.url().trim_start_matches("tcp://")
    );
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5", "-D", "-", "-H"])
        .arg(format!("traceparent: {tp}"))
        .args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            JOB,
            &url,
        ])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.lines()
            .any(|l| l.eq_ignore_ascii_case(&format!("traceparent: {tp}"))),
        "the echoed trace context comes back: {head}"
    );
    assert_eq!(json(body)["payload"]["job_id"], "build-42", "{body}");
    node.shutdown();
    node.join();
}
