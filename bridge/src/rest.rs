//! The REST gateway's mapping: `POST /api/v1/messages/{type}` with a JSON body becomes a
//! request frame of that type (its payload the MessagePack of the JSON), and the frame or
//! ERROR that answers it becomes the HTTP answer.
//!
//! - `{type}` is the snake_case message type (`job_request`, `health_check`, ...), one a
//!   client may send as a request; others are 404 (unknown) or 400 with code 106.
//! - Types whose payload is raw bytes (PING, STREAM_DATA, FILE_TRANSFER_CHUNK) take and give
//!   `application/octet-stream`.
//! - An answer is `200 {"type": "...", "correlation_id": N, "payload": {...}}`; an ERROR is
//!   the HTTP status of its class with `{"code": N, "message": "..."}`; no answer in time is
//!   `504` with the network-timeout code (601).

use bytes::Bytes;
use valkyrie_protocol::frame::{TRACE_CONTEXT_LEN, TraceContext};
use valkyrie_protocol::message::{self, Message};
use valkyrie_protocol::{ErrorCode, MessageType};

use crate::http::Response;

/// Where the gateway's paths start.
pub const MESSAGES_PREFIX: &str = "/api/v1/messages/";

/// The media type of raw payloads.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// A gateway request that cannot become a frame: the answer to send instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// The protocol's code for the fault.
    pub code: ErrorCode,
    /// What was wrong.
    pub message: String,
}

impl Refusal {
    fn new(status: u16, code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            status,
            code,
            message: message.into(),
        }
    }

    /// The HTTP answer.
    pub fn response(&self) -> Response {
        error_body(self.status, self.code, &self.message)
    }
}

/// The snake_case name of a message type (`job_request`).
pub fn type_name(t: MessageType) -> String {
    t.name().to_ascii_lowercase()
}

/// Whether the payload of `t` is raw bytes (taken and given as `application/octet-stream`).
pub fn is_raw(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::Ping
            | MessageType::Pong
            | MessageType::StreamData
            | MessageType::FileTransferChunk
    )
}

/// Whether a client may send `t` through the gateway: application messages, not the
/// connection's own (HELLO, CLOSE, authentication, flow control...).
pub fn is_request_type(t: MessageType) -> bool {
    use MessageType as T;
    matches!(
        t,
        T::Ping
            | T::JobRequest
            | T::JobAccept
            | T::JobReject
            | T::JobStart
            | T::JobProgress
            | T::JobComplete
            | T::JobFailed
            | T::JobCancel
            | T::JobMigrate
            | T::JobPause
            | T::JobResume
            | T::StreamData
            | T::FileTransferStart
            | T::FileTransferChunk
            | T::FileTransferComplete
            | T::MetricsReport
            | T::LogEntry
            | T::TraceSpan
            | T::HealthCheck
            | T::StatusUpdate
            | T::AlertNotification
    )
}

/// The message type and wire payload of a gateway request to `path` (which starts with
/// [`MESSAGES_PREFIX`]) with `body`.
///
/// ```
/// use valkyrie_bridge::rest;
/// use valkyrie_protocol::MessageType;
/// let (t, payload) = rest::request(
///     "/api/v1/messages/health_check",
///     br#"{"service": "db"}"#,
/// ).unwrap();
/// assert_eq!(t, MessageType::HealthCheck);
/// assert!(!payload.is_empty());
/// let bad = rest::request("/api/v1/messages/health_check", b"{not json").unwrap_err();
/// assert_eq!((bad.status, bad.code.0), (400, 104));
/// ```
pub fn request(path: &str, body: &[u8]) -> Result<(MessageType, Bytes), Refusal> {
    let name = path.strip_prefix(MESSAGES_PREFIX).unwrap_or(path);
    let t = (!name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
        .then(|| MessageType::from_name(&name.to_ascii_uppercase()))
        .flatten()
        .ok_or_else(|| {
            Refusal::new(
                404,
                ErrorCode::UNKNOWN_MESSAGE_TYPE,
                format!("no message type {name:?}"),
            )
        })?;
    if !is_request_type(t) {
        return Err(Refusal::new(
            400,
            ErrorCode::UNEXPECTED_MESSAGE,
            format!("{name} is not a message a client sends"),
        ));
    }
    if is_raw(t) {
        if t == MessageType::Ping && body.len() > message::MAX_PING_PAYLOAD {
            return Err(Refusal::new(
                400,
                ErrorCode::MALFORMED_PAYLOAD,
                "a PING carries at most 1024 bytes",
            ));
        }
        if t == MessageType::FileTransferChunk && body.len() < 8 {
            return Err(Refusal::new(
                400,
                ErrorCode::MALFORMED_PAYLOAD,
                "a FILE_TRANSFER_CHUNK starts with its 8-byte offset",
            ));
        }
        return Ok((t, Bytes::copy_from_slice(body)));
    }
    let payload = Message::from_json_slice(t, body)
        .map_err(|e| Refusal::new(400, ErrorCode::MALFORMED_PAYLOAD, e.to_string()))?
        .to_payload();
    Ok((t, payload))
}

/// The HTTP answer for the frame that answered a gateway request.
pub fn answer(t: MessageType, correlation_id: u32, payload: &Bytes) -> Response {
    if is_raw(t) {
        return Response::with_body(200, OCTET_STREAM, payload.clone())
            .header("valkyrie-type", type_name(t))
            .header("valkyrie-correlation-id", correlation_id.to_string());
    }
    match Message::decode(t, payload) {
        Ok(m) => {
            // {"type":"...","correlation_id":N,"payload":{...}}, written straight from the
            // typed payload.
            let mut out = Vec::with_capacity(64 + 2 * payload.len());
            out.extend_from_slice(b"{\"type\":\"");
            out.extend_from_slice(type_name(t).as_bytes());
            out.extend_from_slice(b"\",\"correlation_id\":");
            out.extend_from_slice(correlation_id.to_string().as_bytes());
            out.extend_from_slice(b",\"payload\":");
            m.write_json(&mut out);
            out.push(b'}');
            Response::json(200, out)
        }
        // The service answered with a payload its type cannot carry.
        Err(e) => error_body(502, ErrorCode::MALFORMED_PAYLOAD, &e.to_string()),
    }
}

/// The trace context of a W3C `traceparent` value (`00-<32 hex trace id>-<16 hex parent
/// id>-<2 hex flags>`); `None` when it is not one (or names the all-zero ids).
///
/// ```
/// use valkyrie_bridge::rest;
/// let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// let ctx = rest::parse_traceparent(t).unwrap();
/// assert_eq!(rest::traceparent(&ctx), t);
/// assert!(rest::parse_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
/// ```
pub fn parse_traceparent(value: &str) -> Option<TraceContext> {
    parse_traceparent_with_flags(value).map(|(ctx, _)| ctx)
}

/// [`parse_traceparent`] with the header's trace-flags byte (bit 0: sampled), which the
/// frame carries in its header's trace-flags field.
pub fn parse_traceparent_with_flags(value: &str) -> Option<(TraceContext, u8)> {
    let mut parts = value.trim().split('-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    if !hex(version, 2) || version.eq_ignore_ascii_case("ff") || !hex(flags, 2) {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !hex(trace, 32) || !hex(parent, 16) {
        return None;
    }
    let mut ctx = TraceContext::default();
    for (i, b) in ctx.trace_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&trace[2 * i..2 * i + 2], 16).ok()?;
    }
    for (i, b) in ctx.span_id.iter_mut().enumerate() {
        *b = u8::from_str_radix(&parent[2 * i..2 * i + 2], 16).ok()?;
    }
    if ctx.trace_id == [0; 16] || ctx.span_id == [0; 8] {
        return None;
    }
    Some((ctx, u8::from_str_radix(flags, 16).ok()?))
}

/// The `traceparent` value for a trace context (version 00, sampled).
pub fn traceparent(ctx: &TraceContext) -> String {
    let mut s = String::with_capacity(55);
    s.push_str("00-");
    for b in ctx.trace_id {
        s.push_str(&format!("{b:02x}"));
    }
    s.push('-');
    for b in ctx.span_id {
        s.push_str(&format!("{b:02x}"));
    }
    s.push_str("-01");
    s
}

/// The HTTP answer for the frame that answered a gateway request, its TRACE context (when
/// the frame carried one) given back as `traceparent`.
pub fn traced_answer(
    t: MessageType,
    correlation_id: u32,
    payload: &Bytes,
    traced: bool,
) -> Response {
    match traced.then(|| TraceContext::from_prefix(payload)).flatten() {
        Some(ctx) => answer(t, correlation_id, &payload.slice(TRACE_CONTEXT_LEN..))
            .header("traceparent", traceparent(&ctx)),
        None => answer(t, correlation_id, payload),
    }
}

/// The HTTP answer for an ERROR that answered a gateway request: the status of its class.
pub fn error_answer(code: ErrorCode, message: &str) -> Response {
    error_body(status_of(code), code, message)
}

/// No answer within the gateway's time: 504 with the network-timeout code.
pub fn timeout_answer() -> Response {
    error_body(
        504,
        ErrorCode::NETWORK_TIMEOUT,
        "no answer within the request timeout",
    )
}

/// The HTTP status that carries an ERROR of `code`.
pub fn status_of(code: ErrorCode) -> u16 {
    if code == ErrorCode::SERVICE_UNAVAILABLE {
        return 503;
    }
    match code.0 / 100 {
        1 => 400,
        2 => 401,
        3 => 409,
        4 => 422,
        5 => 503,
        6 => 502,
        7 => 403,
        _ => 500,
    }
}

fn error_body(status: u16, code: ErrorCode, message: &str) -> Response {
    Response::json(
        status,
        serde_json::json!({"code": code.0, "message": message}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_in_messagepack_out_and_back() {
        let (t, payload) = request(
            "/api/v1/messages/job_request",
            br#"{"job_id": "j1", "spec": {"command": ["true"]}, "priority": 5, "timeout_ms": 1000}"#,
        )
        .unwrap();
        assert_eq!(t, MessageType::JobRequest);
        let resp = answer(MessageType::JobRequest, 7, &payload);
        assert_eq!(resp.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
        assert_eq!(v["type"], "job_request");
        assert_eq!(v["correlation_id"], 7);
        assert_eq!(v["payload"]["job_id"], "j1");
    }

    #[test]
    fn refusals() {
        let r = |p: &str, b: &[u8]| request(p, b).unwrap_err();
        assert_eq!(r("/api/v1/messages/no_such", b"{}").status, 404);
        assert_eq!(r("/api/v1/messages/JOB_REQUEST", b"{}").status, 404);
        assert_eq!(
            r("/api/v1/messages/hello", b"{}").code,
            ErrorCode::UNEXPECTED_MESSAGE
        );
        let bad = r("/api/v1/messages/job_request", b"[1, 2");
        assert_eq!((bad.status, bad.code), (400, ErrorCode::MALFORMED_PAYLOAD));
        let wrong = r("/api/v1/messages/job_request", br#"{"job_id": 5}"#);
        assert_eq!(
            (wrong.status, wrong.code),
            (400, ErrorCode::MALFORMED_PAYLOAD)
        );
        assert_eq!(r("/api/v1/messages/ping", &[0u8; 1025]).status, 400);
    }

    #[test]
    fn raw_types_pass_bytes_and_errors_map_by_class() {
        let (t, p) = request("/api/v1/messages/stream_data", b"\x00\x01raw").unwrap();
        assert_eq!((t, &p[..]), (MessageType::StreamData, &b"\x00\x01raw"[..]));
        let resp = answer(t, 3, &p);
        assert_eq!(&resp.body[..], b"\x00\x01raw");
        for (code, status) in [
            (104, 400),
            (201, 401),
            (300, 409),
            (401, 422),
            (501, 503),
            (504, 503),
            (601, 502),
            (701, 403),
        ] {
            assert_eq!(status_of(ErrorCode(code)), status, "{code}");
        }
        assert_eq!(timeout_answer().status, 504);
    }
}
