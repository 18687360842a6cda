//! A `tracing` span for each request that arrives with a trace context (the TRACE flag, or
//! an HTTP `traceparent` through the REST gateway): opened when the request reaches its
//! shard, entered while the service handles it, closed when its answer leaves the node (or
//! at once for a frame that expects none). Its fields carry the caller's trace and span ids,
//! so the node's spans join the caller's trace; a [`TraceHook`] (the CLI's `--otlp` sets
//! one) can hand them to an exporter as the span's remote parent.
//!
//! Spans wait for their answers in a table of at most [`MAX_OPEN`] per shard; past it a
//! request's span closes when its handler returns. Requests without a trace context cost
//! one flag test.

use std::collections::HashMap;
use std::sync::Arc;

use valkyrie_protocol::frame::TraceContext;
use valkyrie_protocol::{Flags, Frame};

/// Spans a shard keeps open waiting for their answers.
pub const MAX_OPEN: usize = 1024;

/// Called with each request span as it opens, the caller's trace context and its W3C trace
/// flags byte: an exporter sets the span's remote parent here.
pub type TraceHook = Arc<dyn Fn(&tracing::Span, &TraceContext, u8) + Send + Sync>;

/// Lower-case hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The open request spans of one shard.
#[derive(Default)]
pub(crate) struct RequestSpans {
    open: HashMap<(u32, u32, u32), tracing::Span>,
    hook: Option<TraceHook>,
}

impl RequestSpans {
    pub(crate) fn new(hook: Option<TraceHook>) -> RequestSpans {
        RequestSpans {
            open: HashMap::new(),
            hook,
        }
    }

    /// The span of `frame`, which arrived on the connection at `slot` of `generation` of
    /// shard `shard` (via `transport`), when it carries a trace context. With `keep`, a
    /// request (a correlation id, RESPONSE not set) keeps its span open until its answer
    /// leaves as a frame ([`RequestSpans::answered`]).
    pub(crate) fn begin(
        &mut self,
        shard: usize,
        slot: u32,
        generation: u32,
        frame: &Frame,
        via: &'static str,
        keep: bool,
    ) -> Option<tracing::Span> {
        let ctx = frame.trace_context()?;
        let h = &frame.header;
        let name = h.msg_type.name().to_ascii_lowercase();
        let span = tracing::info_span!(
            target: "valkyrie::request",
            "request",
            otel.name = %name,
            otel.kind = "server",
            trace_id = %hex(&ctx.trace_id),
            parent_span_id = %hex(&ctx.span_id),
            msg_type = %name,
            correlation_id = h.correlation_id,
            stream_id = h.stream_id,
            shard,
            via,
            status = tracing::field::Empty,
        );
        if let Some(hook) = &self.hook {
            hook(&span, &ctx, h.trace_flags);
        }
        let request = h.correlation_id != 0 && !h.flags.contains(Flags::RESPONSE);
        if keep && request && self.open.len() < MAX_OPEN {
            self.open
                .insert((slot, generation, h.correlation_id), span.clone());
        }
        Some(span)
    }

    /// The answer to `correlation_id` leaves the connection at `slot` of `generation`: its
    /// request's span (if open) records the outcome and closes.
    #[inline]
    pub(crate) fn answered(
        &mut self,
        slot: u32,
        generation: u32,
        correlation_id: u32,
        error: bool,
    ) {
        if self.open.is_empty() {
            return;
        }
        if let Some(span) = self.open.remove(&(slot, generation, correlation_id)) {
            span.record("status", if error { "error" } else { "ok" });
        }
    }

    /// The connection at `slot` is gone: its requests' spans close unanswered.
    pub(crate) fn forget(&mut self, slot: u32) {
        if !self.open.is_empty() {
            self.open.retain(|k, span| {
                let keep = k.0 != slot;
                if !keep {
                    span.record("status", "unanswered");
                }
                keep
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkyrie_protocol::MessageType;

    fn traced(corr: u32) -> Frame {
        let ctx = TraceContext {
            trace_id: [0xab; 16],
            span_id: [0xcd; 8],
        };
        let mut payload = ctx.to_bytes().to_vec();
        payload.extend_from_slice(b"body");
        let mut f = Frame::new(MessageType::JobRequest, 1, payload).with_flags(Flags::TRACE);
        f.header.correlation_id = corr;
        f
    }

    #[test]
    fn a_traced_request_keeps_its_span_until_answered_and_the_hook_sees_its_parent() {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let hook: TraceHook = Arc::new(move |_span, ctx, flags| {
            s2.lock().unwrap().push((ctx.trace_id, ctx.span_id, flags));
        });
        let mut spans = RequestSpans::new(Some(hook));
        assert!(
            spans
                .begin(
                    0,
                    1,
                    1,
                    &Frame::new(MessageType::JobRequest, 1, &b"x"[..]),
                    "tcp",
                    true
                )
                .is_none()
        );
        assert!(spans.begin(0, 1, 1, &traced(7), "tcp", true).is_some());
        assert_eq!(spans.open.len(), 1);
        assert_eq!(seen.lock().unwrap()[0], ([0xab; 16], [0xcd; 8], 0));
        spans.answered(1, 2, 7, false);
        assert_eq!(spans.open.len(), 1, "another generation's answer");
        spans.answered(1, 1, 7, false);
        assert!(spans.open.is_empty());
        spans.begin(0, 4, 1, &traced(8), "tcp", true);
        spans.begin(0, 5, 1, &traced(9), "tcp", true);
        spans.forget(4);
        assert_eq!(spans.open.len(), 1);
    }
}
