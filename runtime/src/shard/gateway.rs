//! The REST gateway on the shard: `POST /api/v1/messages/{type}` becomes a request frame
//! handed to the service exactly as a binary client's would be (the gateway gives it a
//! correlation id; the frame is counted like any received one), and the service's answer
//! (`Ctx::respond`, or `Ctx::send_error`) becomes the HTTP answer (`conn::http`). No answer
//! within the gateway's time is 504.

use valkyrie_bridge::http::{Request, Response};
use valkyrie_bridge::rest;
use valkyrie_protocol::frame::TRACE_CONTEXT_LEN;
use valkyrie_protocol::{ErrorCode, Flags, Frame, MessageType};

use super::Shard;
use crate::ConnRef;
use crate::conn::http::{Answering, GatewayRequest};

/// The stream a gateway request travels on unless the query names one (`?stream=N`).
const DEFAULT_STREAM: u32 = 1;

impl Shard {
    /// Hand a gateway request to the service. Returns the answer when there is one at once
    /// (a refusal, or a PING's PONG); `None` while the service answers.
    pub(super) fn gateway(
        &mut self,
        slot: u32,
        req: &Request,
        keep_alive: bool,
        head: bool,
        identity: Option<String>,
    ) -> Option<Response> {
        let (msg_type, payload) = match rest::request(req.path(), &req.body) {
            Ok(r) => r,
            Err(refusal) => return Some(refusal.response()),
        };
        if msg_type == MessageType::Ping {
            // Answered by the protocol layer, as on a binary connection.
            return Some(rest::answer(MessageType::Pong, 0, &payload));
        }
        // The zero_trust policy decides for the client's identity as for a binary client's.
        if let Some(policy) = &self.cfg.protocol.policy
            && !policy.allows(identity.as_deref(), msg_type)
        {
            self.audit(
                serde_json::json!({"event": crate::audit::AuditEvent::Denied.as_str(),
                "identity": identity, "type": msg_type.name(), "via": "http",
                "code": ErrorCode::UNAUTHORISED.0}),
            );
            return Some(rest::error_answer(
                ErrorCode::UNAUTHORISED,
                &format!(
                    "{} is not allowed to send {}",
                    identity.as_deref().unwrap_or("this client"),
                    rest::type_name(msg_type)
                ),
            ));
        }
        let stream = req
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("stream=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_STREAM);
        let now = self.timers.tick(self.now);
        let deadline = now + self.cfg.http.gateway_timeout;
        let c = self.conns.get_mut(slot)?;
        let generation = c.generation;
        let h = c.http()?;
        h.last_corr = h.last_corr.wrapping_add(1).max(1);
        let corr = h.last_corr;
        h.gateway = Some(GatewayRequest { corr, deadline });
        h.answering = Answering::Later { keep_alive, head };
        // A W3C traceparent becomes the frame's TRACE context (the payload's first 24 bytes).
        let traceparent = req
            .header("traceparent")
            .and_then(rest::parse_traceparent_with_flags);
        let mut frame = match traceparent {
            Some((ctx, trace_flags)) => {
                let mut traced = Vec::with_capacity(TRACE_CONTEXT_LEN + payload.len());
                traced.extend_from_slice(&ctx.to_bytes());
                traced.extend_from_slice(&payload);
                let mut f = Frame::new(msg_type, stream, traced).with_flags(Flags::TRACE);
                f.header.trace_flags = trace_flags;
                f
            }
            None => Frame::new(msg_type, stream, payload),
        };
        frame.header.correlation_id = corr;
        self.metrics.frame_in(&frame.header, frame.payload.len());
        let conn = ConnRef {
            shard: self.id as u16,
            slot,
            generation,
        };
        // Its answer becomes an HTTP answer, not a frame: the span covers the handler.
        let span = self
            .spans
            .begin(self.id, slot, generation, &frame, "http", false);
        let _entered = span.as_ref().map(tracing::Span::enter);
        let (service, mut ctx) = self.ctx();
        service.on_frame(&mut ctx, conn, frame);
        None
    }
}
