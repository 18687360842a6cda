//! WebSocket on the node's own port: `GET /ws` with `Upgrade: websocket` turns an HTTP
//! connection (in the clear, or inside the node's TLS through ALPN `http/1.1`) into a
//! Valkyrie connection whose bytes travel in binary messages (`conn::ws`). From the `101`
//! on it is served like a TCP connection — a fresh protocol state (HELLO within its
//! deadline from the upgrade, every byte-stream security mode, the certificate's identity
//! when TLS carried one), the same metrics under transport `ws`, the same limits and
//! back-pressure — with the WebSocket's framing between the socket and the protocol.

use std::sync::atomic::Ordering;

use bytes::BytesMut;
use valkyrie_bridge::http::{Request, Response};
use valkyrie_bridge::ws;
use valkyrie_protocol::{Connection, HEADER_LEN, Side};

use super::Shard;
use crate::conn::Conn;
use crate::conn::ws::WsConn;
use crate::metrics::{Answers, ShardMetrics, WS};

/// Hand `data`, received on `c`, to its protocol: through the WebSocket's decoder when it is
/// one (`plain` is scratch space for the decoded bytes). A close from the peer, or a frame
/// the decoder refuses (answered with its close code), ends the protocol's input.
#[inline]
pub(super) fn deliver(c: &mut Conn, data: &[u8], plain: &mut Vec<u8>, now: std::time::Instant) {
    let Some(w) = c.extra.as_mut().and_then(|e| e.ws.as_deref_mut()) else {
        c.proto.handle_input(data, now);
        return;
    };
    plain.clear();
    let ended = match w.receive(data, plain) {
        Ok(closed) => closed,
        Err(e) => {
            tracing::debug!(error = %e, "websocket input refused");
            true
        }
    };
    if !plain.is_empty() {
        c.proto.handle_input(plain, now);
    }
    if ended {
        c.proto.handle_eof(now);
    }
}

impl Shard {
    /// Answer a request for `/ws`: upgrade the connection (`None`: the `101` is on its way
    /// and the connection speaks WebSocket now), or the refusal to send.
    pub(super) fn upgrade_ws(&mut self, slot: u32, req: &Request) -> Option<Response> {
        if self.shutdown_deadline.is_some() {
            return Some(Response::error(503, "the node is draining"));
        }
        let answer = match ws::upgrade(req, &self.cfg.http.allow_origins) {
            Ok(answer) => answer,
            Err(refusal) => return Some(refusal),
        };
        let max_message = self.cfg.protocol.max_frame as usize + HEADER_LEN;
        let proto = Connection::new(
            Side::Server,
            self.cfg.protocol.clone(),
            self.now,
            self.unix_now(),
        );
        let opened_us = self.now_us();
        let now = self.now;
        let c = self.conns.get_mut(slot)?;
        let h = c.extra.as_mut().and_then(|e| e.http.take())?;
        let mut h = *h;
        // Answers to earlier requests not yet sent go first, then the 101.
        let mut out = std::mem::take(&mut h.out);
        answer.write(true, false, &mut out);
        let w = WsConn::new(out, max_message);
        let early = h.reader.take_buffered();
        c.proto = proto;
        if let Some(identity) = h.identity {
            c.proto.set_transport_identity(identity);
        }
        c.opened_us = opened_us;
        self.metrics.connections_active[c.transport() as usize].fetch_sub(1, Ordering::Relaxed);
        c.set_transport(WS);
        self.metrics.connections_active[WS as usize].fetch_add(1, Ordering::Relaxed);
        c.extra.get_or_insert_with(Box::default).ws = Some(Box::new(w));
        // Frames a client sent right behind its handshake.
        if !early.is_empty() {
            deliver(c, &early, &mut self.ws_plain, now);
        }
        crate::service::count(&self.metrics, 101);
        self.mark(slot);
        None
    }
}

/// The WebSocket part of a flush of `c`: replies and the `101` first; then, when they have
/// all gone, the protocol's frames (at most `batch` bytes, gathered in `frames`) as binary
/// messages, and our close once the protocol has ended (1001 while the node drains).
pub(super) fn flush_ws(
    c: &mut Conn,
    metrics: &ShardMetrics,
    answers: &mut Answers<'_>,
    frames: &mut BytesMut,
    buf: &mut BytesMut,
    batch: usize,
    draining: bool,
) {
    let Some(w) = c.extra.as_mut().and_then(|e| e.ws.as_deref_mut()) else {
        return;
    };
    w.take_output(buf, batch);
    if !w.out.is_empty() || w.close_sent {
        return;
    }
    frames.clear();
    super::output::protocol_output(&mut c.proto, metrics, answers, frames, batch);
    w.frame(frames, buf);
    if c.proto.is_closed() && c.proto.queued_frames() == 0 {
        w.protocol_ended(draining);
        w.take_output(buf, usize::MAX);
    }
}
