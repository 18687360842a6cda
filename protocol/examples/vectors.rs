//! Prints the test vectors of docs/PROTOCOL.md (`cargo run -p valkyrie-protocol --example vectors`).
//!
//! Each vector is a fenced block with the info string `vector`; `tests/vectors.rs` reads them
//! back out of the document and checks them against the code.

use bytes::Bytes;
use valkyrie_protocol::frame::TraceContext;
use valkyrie_protocol::message::*;
use valkyrie_protocol::{Flags, Frame, Header, MessageType, SecurityMode};

const TS: u32 = 1_750_000_000;

fn hex_lines(bytes: &[u8]) -> String {
    bytes
        .chunks(24)
        .map(|c| {
            let h: Vec<String> = c.iter().map(|b| format!("{b:02x}")).collect();
            format!("hex: {}", h.join(" "))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn emit(name: &str, note: &str, frame: &Frame) {
    let h = frame.header;
    println!("**{name}** — {note}\n");
    println!("```vector");
    println!("name: {name}");
    println!("type: {}", h.msg_type.name());
    println!("flags: 0x{:02x}", h.flags.bits());
    println!("priority: {}", h.priority);
    println!("trace_flags: {}", h.trace_flags);
    println!("stream: {}", h.stream_id);
    println!("correlation: {}", h.correlation_id);
    println!("timestamp: {}", h.timestamp);
    println!("length: {}", frame.payload.len());
    let body = frame.body().unwrap_or_default();
    if let Some(ctx) = frame.trace_context() {
        println!("trace_id: {}", hexs(&ctx.trace_id));
        println!("span_id: {}", hexs(&ctx.span_id));
    }
    if let Ok(m) = Message::decode(h.msg_type, &body)
        && !matches!(
            m,
            Message::Ping(_)
                | Message::Pong(_)
                | Message::StreamData(_)
                | Message::FileTransferChunk(_)
        )
    {
        println!("json: {}", m.to_json());
    }
    let mut wire = Vec::new();
    frame.encode(&mut wire);
    println!("{}", hex_lines(&wire));
    println!("```\n");
}

fn emit_bad(name: &str, note: &str, code: u16, bytes: &[u8]) {
    println!("**{name}** — {note}\n");
    println!("```vector");
    println!("name: {name}");
    println!("error: {code}");
    println!("{}", hex_lines(bytes));
    println!("```\n");
}

fn hexs(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn f(t: MessageType, stream: u32, payload: impl Into<Bytes>) -> Frame {
    Frame::new(t, stream, payload).with_timestamp(TS)
}

fn main() {
    let hello = Hello {
        versions: vec![2],
        node_id: "agent-7".into(),
        security: vec![SecurityMode::NoiseXk, SecurityMode::Plaintext],
        max_frame: 1_048_576,
        heartbeat_ms: 5000,
        stream_window: None,
        max_streams: None,
        compression: vec![],
        host: None,
        quic_streams: false,
    };
    emit(
        "hello",
        "the connecting side's HELLO.",
        &f(MessageType::Hello, 0, hello.to_bytes()),
    );
    let ack = HelloAck {
        version: 2,
        node_id: "control-1".into(),
        security: SecurityMode::Plaintext,
        max_frame: 1_048_576,
        heartbeat_ms: 5000,
        stream_window: Some(262_144),
        max_streams: Some(256),
        compression: None,
        host: None,
        quic_streams: false,
    };
    emit(
        "hello-ack",
        "the answer, with RESPONSE set and the optional `stream_window` and `max_streams` keys.",
        &f(MessageType::HelloAck, 0, ack.to_bytes())
            .with_flags(Flags::RESPONSE)
            .with_priority(255),
    );
    emit(
        "negotiate",
        "a connecting side's NEGOTIATE offering two capability names, as a request on stream 0.",
        &f(
            MessageType::Negotiate,
            0,
            Negotiate {
                features: vec!["going_away".into(), "stream_open_ack".into()],
                params: Default::default(),
            }
            .to_bytes(),
        )
        .with_priority(255)
        .with_correlation(1),
    );
    emit(
        "ping",
        "PING with an 8-byte payload and correlation id 7.",
        &f(MessageType::Ping, 0, &b"valkyrie"[..])
            .with_correlation(7)
            .with_priority(255),
    );
    emit(
        "pong",
        "its PONG: same payload, same correlation id, RESPONSE set.",
        &f(MessageType::Pong, 0, &b"valkyrie"[..])
            .with_correlation(7)
            .with_flags(Flags::RESPONSE)
            .with_priority(255),
    );
    emit(
        "error-103",
        "ERROR 103 answering a frame of unknown type that carried correlation id 77.",
        &f(
            MessageType::Error,
            0,
            ErrorPayload {
                code: 103,
                message: "unknown message type 0x7E".into(),
            }
            .to_bytes(),
        )
        .with_correlation(77)
        .with_flags(Flags::RESPONSE)
        .with_priority(255),
    );
    emit(
        "close",
        "CLOSE with code 0 (normal).",
        &f(
            MessageType::Close,
            0,
            Close {
                code: 0,
                reason: "shutdown".into(),
            }
            .to_bytes(),
        )
        .with_priority(255),
    );
    let job = JobRequest {
        attempt: 0,
        log_from: 0,
        epoch: 0,
        job_id: "build-42".into(),
        spec: serde_json::json!({"pipeline": "build-test-deploy", "branch": "main"}),
        resources: Resources {
            cpu_millis: Some(2000),
            memory_bytes: Some(4_294_967_296),
            ..Default::default()
        },
        priority: 200,
        timeout_ms: 3_600_000,
    };
    emit(
        "job-request",
        "JOB_REQUEST on job stream 100 (even: opened by the accepting side), asking for an acknowledgement (ACK).",
        &f(MessageType::JobRequest, 100, job.to_bytes())
            .with_flags(Flags::ACK)
            .with_correlation(1)
            .with_priority(200),
    );
    emit(
        "job-accept",
        "the agent's JOB_ACCEPT answering it.",
        &f(
            MessageType::JobAccept,
            100,
            JobAccept {
                epoch: 0,
                job_id: "build-42".into(),
                agent_id: "agent-7".into(),
            }
            .to_bytes(),
        )
        .with_flags(Flags::RESPONSE)
        .with_correlation(1),
    );
    emit(
        "job-request-retry",
        "the same job's second attempt, epoch 7: every answer about it carries the epoch back, and one with another epoch is refused by the control plane.",
        &f(
            MessageType::JobRequest,
            100,
            JobRequest {
                attempt: 2,
                log_from: 0,
                epoch: 7,
                job_id: "build-42".into(),
                spec: serde_json::json!({"command": ["make"]}),
                resources: Resources::default(),
                priority: 128,
                timeout_ms: 0,
            }
            .to_bytes(),
        )
        .with_flags(Flags::ACK)
        .with_correlation(2),
    );
    emit(
        "job-complete",
        "the agent's JOB_COMPLETE for attempt 2 (epoch 7): exit code 0 after 1.5 s.",
        &f(
            MessageType::JobComplete,
            100,
            JobComplete {
                epoch: 7,
                job_id: "build-42".into(),
                exit_code: 0,
                duration_ms: 1500,
                outputs: Default::default(),
            }
            .to_bytes(),
        ),
    );
    emit(
        "job-status",
        "an agent announces itself on job stream 101 (odd: opened by the connecting side), as a request: its id, slots (capacity) and labels (keys) — its lease, sent again every heartbeat interval.",
        &f(
            MessageType::StatusUpdate,
            101,
            StatusUpdate {
                node_id: "agent-7".into(),
                state: "ready".into(),
                load: Some(0.25),
                running_jobs: Some(1),
                capacity: Some(4),
                labels: [
                    ("linux".to_owned(), String::new()),
                    ("gpu".to_owned(), String::new()),
                ]
                .into_iter()
                .collect(),
            }
            .to_bytes(),
        )
        .with_correlation(1),
    );
    let batch = serde_json::json!({
        "epoch": 7,
        "seq": 41,
        "lines": [
            {"stream": "stdout", "line": "compiling valkyrie v0.1.0"},
            {"stream": "stderr", "line": "warning: unused variable"}
        ]
    });
    emit(
        "job-log-batch",
        "two lines of job build-42's output (attempt of epoch 7), numbered 41 and 42 in the job's log, as a request on job stream 101.",
        &f(
            MessageType::LogEntry,
            101,
            LogEntry {
                timestamp_ms: 1_750_000_000_000,
                level: "info".into(),
                message: String::new(),
                job_id: Some("build-42".into()),
                source: Some("job".into()),
                fields: batch.as_object().expect("an object").clone(),
            }
            .to_bytes(),
        )
        .with_correlation(3),
    );
    emit(
        "job-log-ack",
        "the control plane's answer once the batch is on disk: the highest line of the job it holds.",
        &f(
            MessageType::LogEntry,
            101,
            LogEntry {
                timestamp_ms: 1_750_000_000_000,
                level: "info".into(),
                message: String::new(),
                job_id: Some("build-42".into()),
                source: Some("job".into()),
                fields: serde_json::json!({"acked": 42})
                    .as_object()
                    .expect("an object")
                    .clone(),
            }
            .to_bytes(),
        )
        .with_flags(Flags::RESPONSE)
        .with_correlation(3),
    );
    emit(
        "artifact-start",
        "an artifact's upload begins on data stream 1001: transfer id JOB:EPOCH:NAME, its size and BLAKE3 hash; answered with FILE_TRANSFER_COMPLETE whose size is the bytes already held.",
        &f(
            MessageType::FileTransferStart,
            1001,
            FileTransferStart {
                transfer_id: "build-42:7:report.xml".into(),
                name: "report.xml".into(),
                size: 18_204,
                chunk_size: 65_536,
                blake3: Some(
                    "f2c5c8e3b1a0d4e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0".into(),
                ),
            }
            .to_bytes(),
        )
        .with_correlation(5),
    );
    emit(
        "stream-open",
        "STREAM_OPEN of data stream 1001 granting 65536 bytes of credit.",
        &f(
            MessageType::StreamOpen,
            1001,
            StreamOpen {
                kind: "data".into(),
                window: Some(65536),
                metadata: Default::default(),
            }
            .to_bytes(),
        )
        .with_correlation(2)
        .with_priority(255),
    );
    emit(
        "stream-data-eos",
        "the last STREAM_DATA of stream 1001 (EOS).",
        &f(MessageType::StreamData, 1001, &b"hello, stream"[..]).with_flags(Flags::EOS),
    );
    emit(
        "stream-ack-credit",
        "STREAM_ACK raising the credit of stream 1001 to offset 131072.",
        &f(
            MessageType::StreamAck,
            1001,
            StreamAck {
                max_data: Some(131_072),
                received: None,
            }
            .to_bytes(),
        )
        .with_priority(255),
    );
    emit(
        "stream-reset",
        "STREAM_RESET of stream 1001 for a flow-control violation.",
        &f(
            MessageType::StreamReset,
            1001,
            StreamReset {
                code: 302,
                reason: "credit exceeded".into(),
            }
            .to_bytes(),
        )
        .with_priority(255),
    );
    emit(
        "file-chunk",
        "FILE_TRANSFER_CHUNK: 8-byte offset 65536, then 4 data bytes.",
        &f(
            MessageType::FileTransferChunk,
            1003,
            FileChunk {
                offset: 65536,
                data: Bytes::from_static(b"\x00\x01\x02\x03"),
            }
            .to_bytes(),
        ),
    );
    let ctx = TraceContext {
        trace_id: *b"0123456789abcdef",
        span_id: *b"spanid01",
    };
    let mut payload = ctx.to_bytes().to_vec();
    payload.extend_from_slice(
        &LogEntry {
            timestamp_ms: 1_750_000_000_123,
            level: "info".into(),
            message: "compiling valkyrie".into(),
            job_id: Some("build-42".into()),
            source: None,
            fields: Default::default(),
        }
        .to_bytes(),
    );
    let mut log = f(MessageType::LogEntry, 10_001, payload)
        .with_flags(Flags::TRACE)
        .with_priority(64);
    log.header.trace_flags = 1;
    emit(
        "log-entry-traced",
        "LOG_ENTRY on log stream 10001 with a trace context (TRACE set, sampled).",
        &log,
    );

    let good = |t: MessageType| {
        let mut v = Vec::new();
        f(t, 0, &b"x"[..]).encode(&mut v);
        v
    };
    let mut b = good(MessageType::Ping);
    b[0] = 0x48;
    b[1] = 0x54;
    emit_bad("bad-magic", "fatal 100.", 100, &b);
    let mut b = good(MessageType::Ping);
    b[2] = 1;
    emit_bad("bad-version", "fatal 101.", 101, &b);
    let b = Header {
        timestamp: TS,
        ..Header::new(MessageType::StreamData, 1001, 67_108_865)
    }
    .to_bytes();
    emit_bad(
        "too-large",
        "a header claiming 64 MiB + 1: fatal 102 as soon as the header is in.",
        102,
        &b,
    );
    let b = good(MessageType::Unknown(0x7E));
    emit_bad("unknown-type", "type 0x7E: 103, not fatal.", 103, &b);
    let mut b = Vec::new();
    f(MessageType::StreamOpen, 1001, &b"\xc1"[..]).encode(&mut b);
    emit_bad(
        "malformed-payload",
        "STREAM_OPEN whose payload is not a MessagePack map: 104, not fatal.",
        104,
        &b,
    );
    let mut b = good(MessageType::Ping);
    b[4] = 0x40;
    emit_bad("reserved-flag", "flag bit 6 set: fatal 105.", 105, &b);
    let mut b = good(MessageType::Ping);
    b[7] = 0x01;
    emit_bad(
        "reserved-byte",
        "reserved byte not zero: fatal 105.",
        105,
        &b,
    );
}
