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
    SendOptions, Tick,
};

pub use crate::ConnRef;
pub use echo::Echo;
pub(crate) use http::count;
pub use http::{HttpAnswer, MAX_ROUTES, Route};
pub use nudger::Nudger;

mod echo;
mod http;
mod nudger;
use crate::conn::Conn;
use crate::conn::table::ConnTable;
use crate::link::{ConnectOptions, LinkId, LinkState};
use crate::mesh::{MeshMsg, MeshTx};
use crate::metrics::ShardMetrics;
use crate::shard::links::Links;

/// Most requests one connection may have in flight through [`Ctx::request`].
pub const MAX_REQUESTS_IN_FLIGHT: usize = 65_536;

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
    /// The connection already has [`MAX_REQUESTS_IN_FLIGHT`] requests waiting for answers.
    #[error("{0} requests already in flight on this connection")]
    TooManyRequests(usize),
    /// The service already has [`MAX_SERVICE_TIMERS`] timers pending on this shard.
    #[error("{0} timers already pending")]
    TooManyTimers(usize),
    /// The connection does not speak HTTP, or no answer of the kind asked for is due on it
    /// (an answer with none awaited, a chunk outside a streamed answer).
    #[error("no HTTP answer of that kind is due on this connection")]
    NotAnswering,
    /// The connection's answer bytes waiting for the client reached their bound: wait for
    /// [`Service::on_http_writable`] (back-pressure).
    #[error("{0} answer bytes already wait for the client")]
    HttpBackpressure(usize),
    /// The shard already has [`MAX_ROUTES`] routes.
    #[error("{0} routes already registered")]
    TooManyRoutes(usize),
}

/// What became of a request made with [`Ctx::request`], handed to [`Service::on_reply`]
/// exactly once.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Reply {
    /// The answer: a frame with RESPONSE set and the request's correlation id.
    Answer(Frame),
    /// The peer answered with a (non-fatal) ERROR.
    Error {
        /// Its code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
    /// The deadline passed first. An answer that still comes is dropped and counted
    /// (`valkyrie_requests_total{outcome="late"}`).
    TimedOut,
    /// The connection ended before an answer came.
    Lost(CloseReason),
}
/// Access to the shard for a service: send, respond, route, close.
///
/// A shard builds one from its parts (a split borrow: the service itself stays in place)
/// for each call into the service.
pub struct Ctx<'a> {
    shard: usize,
    now: Instant,
    /// The instant the shard's ticks count from.
    epoch: Instant,
    conns: &'a mut ConnTable,
    links: &'a mut Links,
    timers: &'a mut ServiceTimers,
    mesh: &'a mut MeshTx,
    metrics: &'a ShardMetrics,
    routes: &'a mut Vec<Route>,
}

/// The shard's parts a [`Ctx`] borrows for one call into the service.
pub(crate) struct CtxParts<'a> {
    pub(crate) shard: usize,
    pub(crate) now: Instant,
    pub(crate) epoch: Instant,
    pub(crate) conns: &'a mut ConnTable,
    pub(crate) links: &'a mut Links,
    pub(crate) timers: &'a mut ServiceTimers,
    pub(crate) mesh: &'a mut MeshTx,
    pub(crate) metrics: &'a ShardMetrics,
    pub(crate) routes: &'a mut Vec<Route>,
}

/// Most timers a service may have pending on one shard ([`Ctx::set_timer`]).
pub const MAX_SERVICE_TIMERS: usize = 65_536;

/// The timers a shard's service set: (when, token), earliest first.
#[derive(Debug, Default)]
pub(crate) struct ServiceTimers {
    heap: std::collections::BinaryHeap<std::cmp::Reverse<(Tick, u64)>>,
}

impl ServiceTimers {
    /// Timers pending.
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The earliest timer.
    pub(crate) fn next(&self) -> Option<Tick> {
        self.heap.peek().map(|std::cmp::Reverse((t, _))| *t)
    }

    /// The token of the earliest timer due at `now`, taken.
    pub(crate) fn pop_due(&mut self, now: Tick) -> Option<u64> {
        let std::cmp::Reverse((t, token)) = *self.heap.peek()?;
        if t > now {
            return None;
        }
        self.heap.pop();
        Some(token)
    }
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(p: CtxParts<'a>) -> Ctx<'a> {
        Ctx {
            shard: p.shard,
            now: p.now,
            epoch: p.epoch,
            conns: p.conns,
            links: p.links,
            timers: p.timers,
            mesh: p.mesh,
            metrics: p.metrics,
            routes: p.routes,
        }
    }

    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// A handle any thread can keep to call this shard's [`Service::on_nudge`] (a store's
    /// thread handing results back through a queue the service drains there).
    pub fn nudger(&self) -> Nudger {
        Nudger::new(self.mesh.wakers(), self.shard)
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

    /// The capabilities both sides of a connection of this shard have, once NEGOTIATE was
    /// exchanged (`None` before, and with a peer that does not negotiate).
    pub fn negotiated(&mut self, conn: ConnRef) -> Option<valkyrie_protocol::features::FeatureSet> {
        self.local(conn).ok().and_then(|c| c.proto.negotiated())
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
            return self.via_mesh(
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
        let (epoch, now) = (self.epoch, self.now);
        let c = self.local(conn)?;
        if let Some(h) = c.http() {
            // An HTTP connection takes only the answer to its gateway request.
            let status = h
                .gateway_answer(msg_type, &payload, &opts, Tick::since(epoch, now))
                .ok_or(RouteError::NotAnswering)?;
            count(self.metrics, status);
            self.mark(conn.slot);
            return Ok(());
        }
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
        let (epoch, now) = (self.epoch, self.now);
        let c = self.local(conn)?;
        if let Some(h) = c.http() {
            let status = h
                .gateway_error(code, message, correlation_id, Tick::since(epoch, now))
                .ok_or(RouteError::NotAnswering)?;
            count(self.metrics, status);
            self.mark(conn.slot);
            return Ok(());
        }
        c.proto
            .send_error(code, message, stream_id, correlation_id)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Stop (`true`) or resume (`false`) reading a connection of this shard: the service's
    /// own back-pressure (its consumer is behind). Bytes stay in the kernel and the peer is
    /// slowed, as when the connection's queues are full; frames already received are still
    /// delivered.
    pub fn hold_input(&mut self, conn: ConnRef, hold: bool) -> Result<(), RouteError> {
        let c = self.local(conn)?;
        if c.held != hold {
            c.held = hold;
            self.mark(conn.slot);
        }
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

    /// Finish this side of a stream of a connection of this shard (STREAM_CLOSE after what
    /// is queued on it); once the peer finishes its side too, the stream is gone.
    pub fn finish_stream(&mut self, conn: ConnRef, stream_id: u32) -> Result<(), RouteError> {
        let c = self.local(conn)?;
        c.proto.finish_stream(stream_id)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Close `conn` gracefully (CLOSE after what is queued), wherever it lives.
    pub fn close(&mut self, conn: ConnRef, code: u16, reason: &str) -> Result<(), RouteError> {
        if conn.shard as usize != self.shard {
            return self.via_mesh(
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

    /// Make an outbound connection from this shard, kept up across failures: the URLs in
    /// order, then backoff with jitter, behind a circuit breaker ([`ConnectOptions`]). Each
    /// connection it makes reaches this service like an accepted one (`on_connect`,
    /// `on_frame`, `on_close`); where the link stands comes to [`Service::on_link`]. The
    /// attempt starts once this call into the service returns.
    pub fn connect(&mut self, opts: ConnectOptions) -> LinkId {
        self.links.add(self.shard, opts)
    }

    /// Stop a link of this shard: its connection is closed (CLOSE after what is queued) or
    /// its attempt cancelled, and it makes no more.
    pub fn disconnect(&mut self, link: LinkId) -> Result<(), RouteError> {
        if link.shard as usize != self.shard {
            return Err(RouteError::NotLocal(link.shard as usize));
        }
        if self.links.stop(link) {
            Ok(())
        } else {
            Err(RouteError::Gone)
        }
    }

    /// Where a link of this shard stands (`None` once it has stopped and been let go).
    pub fn link_state(&self, link: LinkId) -> Option<LinkState> {
        if link.shard as usize != self.shard {
            return None;
        }
        self.links.state(link)
    }

    /// The connection a link of this shard has up now.
    pub fn link_conn(&self, link: LinkId) -> Option<ConnRef> {
        match self.link_state(link)? {
            LinkState::Up { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// Send a request on a connection of this shard (inbound or outbound) and have its
    /// outcome handed to [`Service::on_reply`] once: the answer (a frame with RESPONSE and
    /// its correlation id, which is returned here), an ERROR answering it, the deadline
    /// passing, or the connection's end. Any number may be in flight up to
    /// [`MAX_REQUESTS_IN_FLIGHT`]; the connection's queues bound them further
    /// ([`SendError::QueueFull`]: back-pressure, retry later).
    pub fn request(
        &mut self,
        conn: ConnRef,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<u32, RouteError> {
        let epoch = self.epoch;
        let c = self.local(conn)?;
        let in_flight = c.extra.as_ref().map_or(0, |e| e.requests.len());
        if in_flight >= MAX_REQUESTS_IN_FLIGHT {
            return Err(RouteError::TooManyRequests(in_flight));
        }
        let corr = c
            .proto
            .request(stream_id, msg_type, payload, SendOptions::default())?;
        c.extra().requests.add(corr, Tick::since(epoch, deadline));
        ShardMetrics::add(&self.metrics.requests_sent, 1);
        self.mark(conn.slot);
        Ok(corr)
    }

    /// Have [`Service::on_timer`] called with `token` at `at` (or at once, when it has
    /// passed). Timers are not cancelled: a service ignores a token it no longer wants.
    /// At most [`MAX_SERVICE_TIMERS`] wait at a time.
    pub fn set_timer(&mut self, at: Instant, token: u64) -> Result<(), RouteError> {
        if self.timers.heap.len() >= MAX_SERVICE_TIMERS {
            return Err(RouteError::TooManyTimers(MAX_SERVICE_TIMERS));
        }
        self.timers
            .heap
            .push(std::cmp::Reverse((Tick::since(self.epoch, at), token)));
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
        self.via_mesh(shard, MeshMsg::User { from, msg })
    }

    fn via_mesh(&mut self, shard: usize, msg: MeshMsg) -> Result<(), RouteError> {
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
    /// The shard starts (called once, on the shard's thread, before any connection): where
    /// a service makes its outbound links ([`Ctx::connect`]).
    fn on_start(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A link of this shard changed state ([`Ctx::connect`]): connecting, up (with its
    /// connection), waiting before another attempt, or stopped.
    fn on_link(&mut self, _ctx: &mut Ctx<'_>, _link: LinkId, _state: &LinkState) {}

    /// The outcome of a request made with [`Ctx::request`] on `conn`: `request` is the
    /// correlation id it returned. Called exactly once per request.
    fn on_reply(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _request: u32, _reply: Reply) {}

    /// A connection finished its HELLO (and security handshake).
    fn on_connect(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _peer: &PeerInfo) {}

    /// An application frame arrived (jobs, stream data, logs, metrics, NEGOTIATE...).
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame);

    /// Any other event of a connection: streams opened, finished or reset, credit, peer
    /// errors, missed heartbeats.
    fn on_event(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _event: &Event) {}

    /// A connection ended.
    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _reason: &CloseReason) {}

    /// A timer set with [`Ctx::set_timer`] is due.
    fn on_timer(&mut self, _ctx: &mut Ctx<'_>, _token: u64) {}

    /// Something outside the node called [`Node::nudge`](crate::Node::nudge) for this shard
    /// (once per nudge at most; nudges that come while one waits are one): the way a program
    /// hands its service work through a queue of its own.
    fn on_nudge(&mut self, _ctx: &mut Ctx<'_>) {}

    /// A message from the service instance on another shard ([`Ctx::send_to_shard`]).
    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _from_shard: usize, _msg: Box<dyn Any + Send>) {}

    /// An HTTP request on a path this shard's service routed ([`Ctx::route`]): answer it
    /// now, start a chunked answer, or answer later. Requests on one connection come one at
    /// a time: the next waits until this one is answered. The default answers 404.
    fn on_http(
        &mut self,
        _ctx: &mut Ctx<'_>,
        _conn: ConnRef,
        _request: &valkyrie_bridge::http::Request,
    ) -> HttpAnswer {
        HttpAnswer::Respond(valkyrie_bridge::http::Response::error(404, "no such route"))
    }

    /// A streamed HTTP answer that met back-pressure ([`RouteError::HttpBackpressure`]) may
    /// take chunks again: its client has read half of what waited.
    fn on_http_writable(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef) {}

    /// An HTTP connection whose answer was due (later or streamed) went away before it was
    /// finished.
    fn on_http_gone(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef) {}
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
