//! Services: per-shard values that receive typed messages and reply, stream or route.
//!
//! A node runs one instance of a service on every shard, made by the factory given to
//! [`NodeBuilder::service`](crate::NodeBuilder::service) inside that shard's thread. An instance
//! only ever sees the connections of its own shard directly; it reaches a connection on another
//! shard through [`Ctx::send`], which crosses the mesh once. There is no `Arc<Mutex<_>>`
//! anywhere on this path.
//!
//! [`Ctx`] is what a service may do on its shard: it borrows the shard's connection table and
//! its side of the mesh for the length of one call.

use std::any::Any;
use std::time::Instant;

use bytes::Bytes;
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{
    CloseReason, ErrorCode, Event, Flags, Frame, Header, MessageType, PeerInfo, SendError,
    SendOptions,
};

pub use crate::ConnRef;
use crate::conn::Conn;
use crate::conn::table::ConnTable;
use crate::mesh::{MeshMsg, MeshTx};
use crate::metrics::ShardMetrics;

/// Why a [`Ctx`] operation on a connection failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// The connection has closed (the reference is stale).
    #[error("connection is gone")]
    Gone,
    /// The protocol refused the send (not established, closing, stream rules, back-pressure).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The mesh ring to the owning shard is full: back-pressure, retry later.
    #[error("mesh ring to shard {0} is full")]
    MeshFull(usize),
    /// The operation needs the connection's own shard.
    #[error("connection belongs to shard {0}")]
    NotLocal(usize),
}
/// Access to the shard for a service: send, respond, route, close.
///
/// A shard builds one from its parts (a split borrow: the service itself stays in place)
/// for each call into the service.
pub struct Ctx<'a> {
    shard: usize,
    now: Instant,
    conns: &'a mut ConnTable,
    mesh: &'a mut MeshTx,
    metrics: &'a ShardMetrics,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(
        shard: usize,
        now: Instant,
        conns: &'a mut ConnTable,
        mesh: &'a mut MeshTx,
        metrics: &'a ShardMetrics,
    ) -> Ctx<'a> {
        Ctx {
            shard,
            now,
            conns,
            mesh,
            metrics,
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// How many shards the node runs.
    pub fn shards(&self) -> usize {
        self.mesh.shards()
    }

    /// The time this batch of work started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Connections open on this shard.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Every established connection of this shard.
    pub fn local_connections(&self) -> Vec<ConnRef> {
        let shard = self.shard as u16;
        self.conns
            .iter()
            .filter(|(_, c)| c.connected && c.is_open())
            .map(|(slot, c)| ConnRef {
                shard,
                slot,
                generation: c.generation,
            })
            .collect()
    }

    fn local(&mut self, conn: ConnRef) -> Result<&mut Conn, RouteError> {
        if conn.shard as usize != self.shard {
            return Err(RouteError::NotLocal(conn.shard as usize));
        }
        match self.conns.live(conn.slot, conn.generation) {
            Some(c) if c.life != crate::conn::Life::Refused => Ok(c),
            _ => Err(RouteError::Gone),
        }
    }

    fn mark(&mut self, slot: u32) {
        self.conns.mark(slot);
    }

    /// The agreed parameters of a connection of this shard.
    pub fn peer(&mut self, conn: ConnRef) -> Option<PeerInfo> {
        self.local(conn).ok().and_then(|c| c.proto.peer().cloned())
    }

    /// Send a frame on `conn`, on this shard or another (crossing the mesh once).
    pub fn send(
        &mut self,
        conn: ConnRef,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    ) -> Result<(), RouteError> {
        if conn.shard as usize != self.shard {
            return self.route(
                conn.shard as usize,
                MeshMsg::Send {
                    to: conn,
                    stream_id,
                    msg_type,
                    payload,
                    opts,
                },
            );
        }
        let c = self.local(conn)?;
        c.proto.send(stream_id, msg_type, payload, opts)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Answer `request` on `conn` (same stream and correlation id, RESPONSE set).
    pub fn respond(
        &mut self,
        conn: ConnRef,
        request: &Header,
        msg_type: MessageType,
        payload: Bytes,
    ) -> Result<(), RouteError> {
        let opts = SendOptions {
            flags: Flags::RESPONSE,
            correlation_id: request.correlation_id,
            priority: request.priority,
            ..SendOptions::default()
        };
        self.send(conn, request.stream_id, msg_type, payload, opts)
    }

    /// Report a non-fatal error on a connection of this shard.
    pub fn send_error(
        &mut self,
        conn: ConnRef,
        code: ErrorCode,
        message: &str,
        stream_id: u32,
        correlation_id: u32,
    ) -> Result<(), RouteError> {
        let c = self.local(conn)?;
        c.proto
            .send_error(code, message, stream_id, correlation_id)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Open a stream on a connection of this shard.
    pub fn open_stream(
        &mut self,
        conn: ConnRef,
        class: StreamClass,
        open: Option<valkyrie_protocol::message::StreamOpen>,
    ) -> Result<u32, RouteError> {
        let c = self.local(conn)?;
        let id = c.proto.open_stream(class, open)?;
        self.mark(conn.slot);
        Ok(id)
    }

    /// Close `conn` gracefully (CLOSE after what is queued), wherever it lives.
    pub fn close(&mut self, conn: ConnRef, code: u16, reason: &str) -> Result<(), RouteError> {
        if conn.shard as usize != self.shard {
            return self.route(
                conn.shard as usize,
                MeshMsg::Close {
                    to: conn,
                    code,
                    reason: reason.to_owned(),
                },
            );
        }
        let c = self.local(conn)?;
        c.proto.close(code, reason);
        self.mark(conn.slot);
        Ok(())
    }

    /// Hand `msg` to the service instance on `shard` ([`Service::on_message`]).
    pub fn send_to_shard(
        &mut self,
        shard: usize,
        msg: Box<dyn Any + Send>,
    ) -> Result<(), RouteError> {
        if shard == self.shard || !self.mesh.reaches(shard) {
            return Err(RouteError::NotLocal(shard));
        }
        let from = self.shard;
        self.route(shard, MeshMsg::User { from, msg })
    }

    fn route(&mut self, shard: usize, msg: MeshMsg) -> Result<(), RouteError> {
        if !self.mesh.reaches(shard) {
            return Err(RouteError::NotLocal(shard));
        }
        self.mesh.push(shard, msg).map_err(|_| {
            ShardMetrics::add(&self.metrics.mesh_full, 1);
            RouteError::MeshFull(shard)
        })
    }
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
