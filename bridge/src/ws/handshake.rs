//! The opening handshake: a client's `GET` with `Upgrade: websocket` answered with `101
//! Switching Protocols` and the key's proof, or refused with the status that says why.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::{Digest, Sha1};

use super::SUBPROTOCOL;
use crate::http::{Method, Request, Response};

/// The GUID RFC 6455 appends to a client's key.
const GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
///
/// ```
/// // RFC 6455 section 1.3's example.
/// assert_eq!(
///     valkyrie_bridge::ws::accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
///     "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
/// );
/// ```
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.trim().as_bytes());
    h.update(GUID.as_bytes());
    STANDARD.encode(h.finalize())
}

/// Whether `req` asks to become a WebSocket (`Upgrade: websocket`).
pub fn is_upgrade(req: &Request) -> bool {
    req.lists("upgrade", "websocket")
}

/// Answer a client's opening handshake: `Ok` with the `101` to send (the connection speaks
/// WebSocket after it), or `Err` with the refusal to send instead (400 for a malformed
/// handshake, 403 for an origin not in `allowed_origins` — when that list is not empty —,
/// 405 for a method other than GET, 426 for a version other than 13).
pub fn upgrade(req: &Request, allowed_origins: &[String]) -> Result<Response, Response> {
    if req.method != Method::Get {
        return Err(Response::error(405, "a WebSocket opens with GET").header("allow", "GET"));
    }
    if req.version < 1 || !is_upgrade(req) || !req.lists("connection", "upgrade") {
        return Err(Response::error(
            400,
            "a WebSocket handshake needs HTTP/1.1 with Upgrade: websocket and Connection: Upgrade",
        ));
    }
    if req.header("sec-websocket-version").map(str::trim) != Some("13") {
        return Err(
            Response::error(426, "WebSocket version 13 only").header("sec-websocket-version", "13")
        );
    }
    let key = req.header("sec-websocket-key").map(str::trim).unwrap_or("");
    if STANDARD.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(Response::error(
            400,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        ));
    }
    if let Some(origin) = req.header("origin")
        && !allowed_origins.is_empty()
        && !allowed_origins.iter().any(|o| o == origin.trim())
    {
        return Err(Response::error(403, "origin not allowed"));
    }
    let mut resp = Response::new(101)
        .header("upgrade", "websocket")
        .header("connection", "Upgrade")
        .header("sec-websocket-accept", accept_key(key));
    if req.lists("sec-websocket-protocol", SUBPROTOCOL) {
        resp = resp.header("sec-websocket-protocol", SUBPROTOCOL);
    }
    Ok(resp)
}

/// A client's opening handshake for `path` on `host` with `key` (16 bytes, sent in base64;
/// the answer's `Sec-WebSocket-Accept` must equal [`accept_key`] of it).
pub fn client_request(host: &str, path: &str, key: [u8; 16]) -> (String, String) {
    let key = STANDARD.encode(key);
    let text = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    );
    let expect = accept_key(&key);
    (text, expect)
}
