//! Services: per-shard values that receive typed messages and reply, stream or route.
//!
//! A node runs one instance of a service on every shard, made by the factory given to
//! [`NodeBuilder::service`](crate::NodeBuilder::service) inside that shard's thread. An instance
//! only ever sees the connections of its own shard directly; it reaches a connection on another
//! shard through [`Ctx::send`], which crosses the mesh once. There is no `Arc<Mutex<_>>`
//! anywhere on this path.

use std::any::Any;

use valkyrie_protocol::{CloseReason, ErrorCode, Event, Flags, Frame, PeerInfo};

pub use crate::shard::Ctx;

/// A connection anywhere in the node: its shard, and its slot on that shard. A stale reference
/// (the connection closed and the slot was reused) is detected by its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The shard that owns the connection.
    pub shard: u16,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}

/// What a node does with the frames its connections receive.
///
/// PING/PONG, heartbeats, HELLO, flow control and errors are handled by the protocol layer;
/// a service sees application frames and connection life-cycle events.
pub trait Service: 'static {
    /// A connection finished its HELLO (and security handshake).
    fn on_connect(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _peer: &PeerInfo) {}

    /// An application frame arrived (jobs, stream data, logs, metrics, NEGOTIATE...).
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame);

    /// Any other event of a connection: streams opened, finished or reset, credit, peer
    /// errors, missed heartbeats.
    fn on_event(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _event: &Event) {}

    /// A connection ended.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _reason: &CloseReason) {}

    /// A message from the service instance on another shard ([`Ctx::send_to_shard`]).
    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _from_shard: usize, _msg: Box<dyn Any + Send>) {}
}

/// The service a node runs when none is configured: requests are answered with ERROR 504
/// (service unavailable); everything else is dropped.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoService;

impl Service for NoService {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        let h = frame.header;
        if h.correlation_id != 0 && !h.flags.contains(Flags::RESPONSE) {
            let _ = ctx.send_error(
                conn,
                ErrorCode::SERVICE_UNAVAILABLE,
                &format!("no service handles {}", h.msg_type),
                h.stream_id,
                h.correlation_id,
            );
        }
    }
}
