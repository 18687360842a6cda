//! hyper (tokio) answering the REST gateway's request the way the gateway does: the JSON
//! body of `POST /api/v1/messages/job_request` parsed into the message's MessagePack payload
//! and back (the same conversions, from the protocol crate, written the same way), answered as
//! `{"type", "correlation_id", "payload"}` — what `valkyrie node --echo` answers, without the
//! node in between.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::message::Message;

/// Start hyper on an ephemeral loopback port with `workers` tokio workers.
pub fn start(core: usize, workers: usize) -> std::io::Result<super::TokioServer> {
    super::TokioServer::serve_each(core, workers, |s| async move {
        let _ = http1::Builder::new()
            .serve_connection(TokioIo::new(s), service_fn(answer))
            .await;
    })
}

static CORR: AtomicU32 = AtomicU32::new(0);

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(status(StatusCode::BAD_REQUEST, "{}")),
    };
    let t = MessageType::JobRequest;
    let Ok(payload) = Message::from_json_slice(t, &body).map(|m| m.to_payload()) else {
        return Ok(status(StatusCode::BAD_REQUEST, r#"{"code":104}"#));
    };
    let Ok(back) = Message::decode(t, &payload) else {
        return Ok(status(StatusCode::BAD_GATEWAY, "{}"));
    };
    let corr = CORR.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
    let mut text = Vec::with_capacity(64 + 2 * payload.len());
    text.extend_from_slice(b"{\"type\":\"job_request\",\"correlation_id\":");
    text.extend_from_slice(corr.to_string().as_bytes());
    text.extend_from_slice(b",\"payload\":");
    back.write_json(&mut text);
    text.push(b'}');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    Ok(r)
}

fn status(code: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = code;
    r
}
