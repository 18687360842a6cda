//! HTTP/1.1 on the node's own port: a connection whose first byte starts a request method
//! becomes an HTTP connection (`conn::http`), and the shard serves it on its loop like any
//! other — requests read by the bridge's sans-IO reader, answered one at a time in order by
//! the node's own endpoints (`/healthz`, `/readyz`, `/metrics`) or the service's routes,
//! answers written through the same send path, refusals (400, 408, 413, 431, 501, 505)
//! answered and the connection closed with nothing else disturbed.

use valkyrie_bridge::http::{Method, Request, Response};
use valkyrie_bridge::{Sniffed, rest, sniff, ws};
use valkyrie_protocol::{ErrorCode, SecurityMode};

use super::Shard;
use crate::ConnRef;
use crate::conn::Io;
use crate::conn::http::{Answering, HttpConn, OUT_HIGH};
use crate::service::{HttpAnswer, count};

/// Requests one connection may have answered in one turn of the loop (a pipelining client
/// cannot hold the shard; the rest wait for the next turn).
const REQUESTS_PER_TURN: usize = 64;

/// The live status page (`GET /`): one HTML file with its script, nothing from outside; it
/// reads `/api/v1/status` twice a second.
const STATUS_PAGE: &str = include_str!("status.html");

/// What a connection's received bytes are, for [`take_input`].
pub(super) enum Taken {
    /// HTTP: the request reader has them.
    Http,
    /// A Valkyrie frame in the clear on a TLS listener: refuse it.
    PlaintextOnTls,
    /// Frames (or TLS records): the protocol's.
    Frames,
}

/// Received `data` on a connection that is sniffing or speaks HTTP: a first byte that starts a
/// request makes it an HTTP connection (when `settings` has HTTP on and no TLS is under it),
/// and an HTTP connection's reader takes the bytes.
pub(super) fn take_input(
    c: &mut crate::conn::Conn,
    data: &[u8],
    settings: &crate::config::HttpSettings,
    now: valkyrie_protocol::Tick,
) -> Taken {
    if c.sniffing {
        c.sniffing = false;
        let tls = matches!(&c.io, Io::Socket(s) if s.tls.is_some());
        match data.first() {
            Some(&b'R') if tls => return Taken::PlaintextOnTls,
            Some(&b) if !tls && settings.enabled && sniff(b) == Sniffed::Http => {
                c.extra.get_or_insert_with(Box::default).http =
                    Some(Box::new(HttpConn::new(settings.limits, now)));
            }
            _ => {}
        }
    }
    if matches!(&c.io, Io::Socket(s) if s.tls.is_some()) {
        // TLS first: the receive path decrypts, then hands HTTP's bytes to the reader.
        return Taken::Frames;
    }
    match c.http() {
        Some(h) => {
            h.reader.push(data);
            Taken::Http
        }
        None => Taken::Frames,
    }
}

impl Shard {
    /// Answer what an HTTP connection has received, send it, and close the connection once
    /// it is done (instead of the protocol's processing).
    pub(super) fn serve_http(&mut self, slot: u32) {
        let now = self.timers.tick(self.now);
        let mut more = false;
        for turn in 0..=REQUESTS_PER_TURN {
            let Some(c) = self.conns.get_mut(slot) else {
                return;
            };
            if !c.is_open() {
                return;
            }
            // The protocol under it saw the client's end of stream (or the node's drain).
            let ended = c.proto.is_closed();
            let Some(h) = c.http() else {
                return;
            };
            h.eof |= ended;
            if h.eof && h.answering != Answering::Idle {
                // The client went away while the service prepares its answer (a client that
                // only half-closes gets none): the service is told, the connection closes.
                self.start_close(slot);
                return;
            }
            if h.answering != Answering::Idle || h.close_after || h.out.len() >= OUT_HIGH {
                break;
            }
            if turn == REQUESTS_PER_TURN {
                more = true;
                break;
            }
            match h.reader.poll() {
                Ok(Some(req)) => {
                    h.since = None;
                    self.answer_http(slot, req);
                }
                Ok(None) => {
                    if h.reader.take_continue() {
                        h.out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                    }
                    if h.reader.in_request() {
                        h.since.get_or_insert(now);
                    }
                    if h.eof {
                        // Nothing more will come: close once what was asked is answered.
                        h.close_after = true;
                    }
                    break;
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "http request refused");
                    h.answer(
                        &Response::error(e.status(), &e.to_string()),
                        false,
                        false,
                        now,
                    );
                    count(&self.metrics, e.status());
                    break;
                }
            }
        }
        self.flush(slot);
        self.http_writable(slot);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let in_kernel = matches!(&c.io, Io::Socket(s) if s.send.in_kernel());
        if c.http().is_some_and(|h| h.done()) && !in_kernel {
            self.start_close(slot);
            return;
        }
        if more {
            self.mark(slot);
        }
        self.steer_input(slot);
        self.arm_timer(slot);
    }

    /// Tell the service a streamed answer that met back-pressure may go on.
    fn http_writable(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some(h) = c.http() else {
            return;
        };
        if !h.stalled || h.out.len() >= OUT_HIGH / 2 {
            return;
        }
        h.stalled = false;
        let conn = ConnRef {
            shard: self.id as u16,
            slot,
            generation,
        };
        let (service, mut ctx) = self.ctx();
        service.on_http_writable(&mut ctx, conn);
    }

    /// Answer one request: the node's own endpoints, a route of the service, or 404.
    fn answer_http(&mut self, slot: u32, req: Request) {
        let now = self.timers.tick(self.now);
        let draining = self.shutdown_deadline.is_some();
        let keep_alive = req.keep_alive && !draining;
        let head = req.method == Method::Head;
        if req.path() == ws::PATH {
            // A Valkyrie connection over WebSocket: its own HELLO authenticates it.
            let Some(refusal) = self.upgrade_ws(slot, &req) else {
                return;
            };
            if let Some(h) = self.conns.get_mut(slot).and_then(|c| c.http()) {
                h.answer(&refusal, keep_alive, head, now);
                count(&self.metrics, refusal.status);
            }
            return;
        }
        let identity = match self.http_identity(slot, &req) {
            Ok(identity) => identity,
            Err(refusal) => {
                if let Some(h) = self.conns.get_mut(slot).and_then(|c| c.http()) {
                    h.answer(&refusal, keep_alive, head, now);
                    count(&self.metrics, refusal.status);
                }
                return;
            }
        };
        let identified = identity.is_some();
        let answer = match self.own_endpoint(slot, &req, identified) {
            Some(resp) => Some(resp),
            None if self.requires_auth() && !identified => Some(
                Response::error(401, "this node requires credentials")
                    .header("www-authenticate", "Bearer realm=\"valkyrie\""),
            ),
            None if req.method == Method::Post && req.path().starts_with(rest::MESSAGES_PREFIX) => {
                self.gateway(slot, &req, keep_alive, head, identity)
            }
            None if self.routes.iter().any(|r| r.matches(&req)) => {
                let Some(c) = self.conns.get_mut(slot) else {
                    return;
                };
                let generation = c.generation;
                if let Some(h) = c.http() {
                    h.answering = Answering::Later { keep_alive, head };
                }
                let conn = ConnRef {
                    shard: self.id as u16,
                    slot,
                    generation,
                };
                let (service, mut ctx) = self.ctx();
                match service.on_http(&mut ctx, conn, &req) {
                    HttpAnswer::Respond(resp) | HttpAnswer::Stream(resp) => Some(resp),
                    HttpAnswer::Later => None,
                }
            }
            None => Some(Response::error(404, "no such route")),
        };
        let Some(resp) = answer else {
            return;
        };
        let Some(h) = self.conns.get_mut(slot).and_then(|c| c.http()) else {
            return;
        };
        // A service that answered through its `Ctx` inside `on_http` has answered already.
        if matches!(h.answering, Answering::Idle | Answering::Later { .. }) {
            h.answer(&resp, keep_alive, head, now);
            count(&self.metrics, resp.status);
        }
    }

    /// The node's own endpoints: `/healthz`, `/readyz`, `/metrics`.
    fn own_endpoint(&mut self, slot: u32, req: &Request, identified: bool) -> Option<Response> {
        let path = req.path();
        if !matches!(
            path,
            "/healthz" | "/readyz" | "/metrics" | "/openapi.json" | "/" | "/api/v1/status"
        ) {
            return None;
        }
        if !matches!(req.method, Method::Get | Method::Head) {
            return Some(Response::error(405, "GET or HEAD only").header("allow", "GET, HEAD"));
        }
        if self.requires_auth() && !self.cfg.http.open_probes && !identified {
            return Some(
                Response::error(401, "this node requires credentials")
                    .header("www-authenticate", "Bearer realm=\"valkyrie\""),
            );
        }
        let (ok, body) = match path {
            "/healthz" => self.node.health(self.now),
            "/readyz" => self.node.readiness(),
            "/openapi.json" => (true, valkyrie_bridge::openapi::document()),
            "/api/v1/status"
                if req
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv == "follow=1")) =>
            {
                return Some(self.follow_status(slot).unwrap_or_else(|| {
                    Response::error(503, "this shard serves as many status followers as it may")
                }));
            }
            "/api/v1/status" => (true, self.node.status(self.now)),
            "/" => {
                return Some(
                    Response::with_body(200, "text/html; charset=utf-8", STATUS_PAGE)
                        .header("cache-control", "no-store"),
                );
            }
            _ => {
                use crate::metrics::openmetrics;
                let om = self.node.metrics().openmetrics_text();
                // A scraper that asks for OpenMetrics (Prometheus does, first) gets it.
                return Some(if req.accepts("application/openmetrics-text") {
                    Response::with_body(200, openmetrics::OPENMETRICS_TYPE, om)
                } else {
                    let text = openmetrics::to_prometheus_text(&om);
                    Response::with_body(200, openmetrics::PROMETHEUS_TYPE, text)
                });
            }
        };
        Some(Response::json(if ok { 200 } else { 503 }, body).header("cache-control", "no-store"))
    }

    /// Who sends `req` on `slot`: the identity of its client certificate (under TLS), or of
    /// its bearer token (`Authorization: Bearer`, checked against the node's bearer keys);
    /// `None` without credentials. A bearer token that does not verify is answered 401,
    /// audited and counted against the address.
    fn http_identity(&mut self, slot: u32, req: &Request) -> Result<Option<String>, Response> {
        let unix = self.unix_now();
        let keys = self.cfg.http.bearer_keys.0.clone();
        let Some(c) = self.conns.get_mut(slot) else {
            return Ok(None);
        };
        let ip = c.peer_ip();
        let cert = c.http().and_then(|h| h.identity.clone());
        let token = req
            .header("authorization")
            .and_then(valkyrie_bridge::bearer::from_authorization);
        let (Some(token), false) = (token, keys.is_empty()) else {
            return Ok(cert);
        };
        match valkyrie_bridge::bearer::verify(token, &keys, unix) {
            Ok(identity) => Ok(Some(identity)),
            Err(e) => {
                let mut record = serde_json::json!({"event": crate::audit::AuditEvent::AuthFailure.as_str(),
                    "mode": "bearer", "code": ErrorCode::AUTH_FAILED.0, "reason": e.to_string(), "via": "http"});
                self.security_failure(&mut record, ip);
                Err(Response::error(401, &e.to_string()).header(
                    "www-authenticate",
                    "Bearer realm=\"valkyrie\", error=\"invalid_token\"",
                ))
            }
        }
    }

    /// Whether every security mode the node offers authenticates its peer (then HTTP needs
    /// credentials too).
    fn requires_auth(&self) -> bool {
        !self
            .cfg
            .protocol
            .security
            .contains(&SecurityMode::Plaintext)
    }

    /// An HTTP connection's timer: a request that has not arrived whole in time gets 408
    /// and the connection closes; a kept-alive connection idle too long closes.
    pub(super) fn http_timeout(&mut self, slot: u32) {
        let now = self.timers.tick(self.now);
        let (request_timeout, idle_timeout) =
            (self.cfg.http.request_timeout, self.cfg.http.idle_timeout);
        let Some(h) = self.conns.get_mut(slot).and_then(|c| c.http()) else {
            return;
        };
        if let Some(status) = h.gateway_expired(now) {
            count(&self.metrics, status);
        } else if h.since.is_some_and(|s| now >= s + request_timeout)
            && h.answering == Answering::Idle
        {
            h.since = None;
            h.answer(
                &Response::error(408, "the request did not arrive in time"),
                false,
                false,
                now,
            );
            count(&self.metrics, 408);
        } else if h.answering == Answering::Idle
            && !h.reader.in_request()
            && h.out.is_empty()
            && now >= h.idle_since + idle_timeout
        {
            h.close_after = true;
        }
        self.mark(slot);
    }
}
