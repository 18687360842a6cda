//! The echo service (`valkyrie node --echo`): every request comes back as its answer, for
//! smoke tests, examples and benchmarks.

use valkyrie_protocol::{Flags, Frame, SendOptions};

use super::{ConnRef, Ctx, Service};

/// Answers every request (a frame with a correlation id, RESPONSE not set) with a frame of
/// the same type and payload, RESPONSE set (and TRACE when the request had it: the same
/// trace context comes back); drops the rest.
#[derive(Debug, Default, Clone, Copy)]
pub struct Echo;

impl Service for Echo {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        let h = frame.header;
        if h.correlation_id != 0 && !h.flags.contains(Flags::RESPONSE) {
            let opts = SendOptions {
                flags: Flags::RESPONSE | (h.flags & Flags::TRACE),
                correlation_id: h.correlation_id,
                priority: h.priority,
                ..SendOptions::default()
            };
            let _ = ctx.send(conn, h.stream_id, h.msg_type, frame.payload, opts);
        }
    }
}
