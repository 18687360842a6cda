//! The connection state machine, for both sides, in the style of `quinn-proto`.
//!
//! Drive it from outside:
//! 1. [`Connection::handle_input`] with received bytes and the current time;
//! 2. [`Connection::poll_event`] until `None` (frames are decoded and answered lazily here, so
//!    the event queue stays small however much input was fed);
//! 3. [`Connection::poll_transmit`] until `None`, writing each [`Transmit`] to the transport;
//! 4. arm a timer for [`Connection::poll_timeout`] and call [`Connection::handle_timeout`]
//!    when it fires.
//!
//! When [`Connection::is_drained`] is true the transport can be closed.

mod config;

pub use config::{Config, MIN_MAX_FRAME};

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::Decoder;
use crate::error::ErrorCode;
use crate::frame::{
    DEFAULT_PRIORITY, Flags, Frame, HEADER_LEN, Header, MAX_FRAME_LIMIT, MessageType,
    TRACE_CONTEXT_LEN, VERSION,
};
use crate::message::{
    Close, ErrorPayload, Hello, HelloAck, MAX_PING_PAYLOAD, Payload, SecurityMode, StreamAck,
    StreamClose, StreamOpen, StreamReset,
};
use crate::security::{
    HandshakeContext, HandshakeMessage, HandshakeStatus, RecordProtector, SecurityHandshake,
};
use crate::streams::{Enqueued, Qos, ReceiveError, Scheduler, StreamClass, StreamError, Streams};

/// Which end of the connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The connecting side: sends HELLO, numbers its streams odd.
    Client,
    /// The accepting side: answers HELLO_ACK, numbers its streams even.
    Server,
}

/// Where the connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Server: waiting for HELLO.
    AwaitingHello,
    /// Client: HELLO sent, waiting for HELLO_ACK.
    AwaitingHelloAck,
    /// The security handshake is running.
    Handshaking,
    /// Application frames flow.
    Established,
    /// A graceful close is draining.
    Closing,
    /// Finished; only already-queued bytes remain to transmit.
    Closed,
}

/// What was agreed with the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node id (as claimed in HELLO / HELLO_ACK).
    pub node_id: String,
    /// Protocol version.
    pub version: u8,
    /// Security mode in force.
    pub security: SecurityMode,
    /// The identity the security handshake authenticated, if any.
    pub identity: Option<String>,
    /// Largest payload the peer accepts.
    pub max_frame: u32,
    /// Heartbeat interval in force (`None`: no heartbeats).
    pub heartbeat: Option<Duration>,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We closed it with CLOSE (and the peer answered, or the transport ended).
    Local {
        /// Our close code.
        code: u16,
        /// Our reason.
        reason: String,
    },
    /// The peer closed it with CLOSE.
    Peer {
        /// The peer's close code.
        code: u16,
        /// The peer's reason.
        reason: String,
    },
    /// We found a fatal fault, sent ERROR and closed.
    ProtocolError {
        /// The code we sent.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
    /// The peer sent a fatal ERROR.
    PeerError {
        /// The peer's code.
        code: ErrorCode,
        /// The peer's message.
        message: String,
    },
    /// HELLO or the security handshake did not finish in time (107 sent).
    HandshakeTimeout,
    /// Too many heartbeats were missed (108 sent).
    HeartbeatTimeout,
    /// Our CLOSE was not answered within the close timeout.
    CloseTimeout,
    /// The transport ended without a CLOSE.
    TransportClosed,
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// HELLO (and the security handshake) finished.
    Connected(PeerInfo),
    /// An application frame: jobs, stream data, observability, NEGOTIATE, UPGRADE...
    Frame(Frame),
    /// A zero_trust connection refused an application frame its peer is not allowed to send
    /// (answered with ERROR 701, not delivered).
    Denied {
        /// The peer's authenticated identity.
        identity: Option<String>,
        /// The refused type.
        msg_type: MessageType,
        /// Its stream.
        stream_id: u32,
    },
    /// An answer to [`Connection::ping`].
    Pong {
        /// The PING's correlation id.
        correlation_id: u32,
        /// The echoed payload.
        payload: Bytes,
        /// Round-trip time measured with the times passed in.
        rtt: Duration,
    },
    /// The peer acknowledged a frame sent with [`Flags::ACK`], or a STREAM_OPEN.
    Acked {
        /// The stream of the acknowledged frame.
        stream_id: u32,
        /// Its correlation id.
        correlation_id: u32,
    },
    /// The peer opened a stream (explicitly with STREAM_OPEN, or by its first frame).
    StreamOpened {
        /// The stream.
        id: u32,
        /// The STREAM_OPEN payload, when it was opened explicitly.
        open: Option<StreamOpen>,
    },
    /// The peer finished its half of a stream (EOS or STREAM_CLOSE).
    StreamFinished {
        /// The stream.
        id: u32,
    },
    /// A stream was reset.
    StreamReset {
        /// The stream.
        id: u32,
        /// The reset code.
        code: u16,
        /// The reason.
        reason: String,
        /// True when the peer reset it; false when this side did (e.g. flow-control violation).
        remote: bool,
    },
    /// Credit arrived for a stream whose send was refused with [`StreamError::Blocked`].
    StreamWritable {
        /// The stream.
        id: u32,
    },
    /// A heartbeat interval passed with nothing received.
    HeartbeatMissed {
        /// Consecutive intervals missed.
        missed: u32,
    },
    /// The peer reported a non-fatal error.
    PeerError {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
        /// The stream the error frame came on.
        stream_id: u32,
        /// The correlation id of the request it answers (0: none).
        correlation_id: u32,
    },
    /// The peer asked to close; we stop sending new frames, drain, and answer CLOSE.
    CloseRequested {
        /// The peer's code.
        code: u16,
        /// The peer's reason.
        reason: String,
    },
    /// The connection ended.
    Closed(CloseReason),
}

/// Options for an application send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendOptions {
    /// Flags (ACK, EOS, TRACE, RESPONSE, MORE). CMP is refused (no compression agreed).
    pub flags: Flags,
    /// Priority, higher is more urgent.
    pub priority: u8,
    /// Correlation id (0: none).
    pub correlation_id: u32,
    /// W3C trace-flags byte.
    pub trace_flags: u8,
}

impl Default for SendOptions {
    fn default() -> Self {
        SendOptions {
            flags: Flags::empty(),
            priority: DEFAULT_PRIORITY,
            correlation_id: 0,
            trace_flags: 0,
        }
    }
}

/// Why an application send was refused. Nothing was queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The handshake has not finished.
    #[error("connection not established")]
    NotEstablished,
    /// The connection is closing or closed.
    #[error("connection closing")]
    Closing,
    /// The payload is over the peer's `max_frame`.
    #[error("payload of {len} bytes exceeds the peer's limit of {max}")]
    TooLarge {
        /// Encoded payload length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// This type is sent by the connection itself (HELLO, PONG, CLOSE, handshake frames...),
    /// or is unknown.
    #[error("{0} cannot be sent by the application")]
    ReservedType(MessageType),
    /// A flag the application may not set.
    #[error("flag {0:?} not allowed")]
    InvalidFlags(Flags),
    /// A stream rule refused it (unknown, closed, limit, no credit).
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// The outbound queue for this class is full: back-pressure, retry after transmitting.
    #[error("outbound queue full ({0:?})")]
    QueueFull(Qos),
}

impl SendError {
    /// True when the send may succeed later without any change by the caller: the outbound
    /// queue is full or the stream has no credit. Retry after transmitting, or on
    /// [`Event::StreamWritable`].
    pub fn is_backpressure(&self) -> bool {
        matches!(
            self,
            SendError::QueueFull(_) | SendError::Stream(StreamError::Blocked { .. })
        )
    }
}

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Frames received.
    pub frames_rx: u64,
    /// Frames handed to the transport.
    pub frames_tx: u64,
    /// Bytes received.
    pub bytes_rx: u64,
    /// Bytes handed to the transport.
    pub bytes_tx: u64,
    /// ERROR frames sent, by code.
    pub errors_sent: BTreeMap<u16, u64>,
    /// ERROR frames received.
    pub errors_rx: u64,
    /// Heartbeat PINGs sent.
    pub heartbeats_sent: u64,
    /// Heartbeat intervals missed (cumulative).
    pub heartbeats_missed: u64,
    /// Frames dropped on arrival because their stream was just reset.
    pub dropped_rx: u64,
}

/// The counters behind [`ConnectionStats`], kept compact: the rare ones in 32 bits
/// (saturating), the per-code ERROR counts allocated with the first ERROR sent.
#[derive(Debug, Default)]
struct Counters {
    frames_rx: u64,
    frames_tx: u64,
    bytes_rx: u64,
    bytes_tx: u64,
    errors_rx: u32,
    heartbeats_sent: u32,
    heartbeats_missed: u32,
    dropped_rx: u32,
    // Boxed on purpose: 8 bytes inline instead of the map's 24 on every connection.
    #[allow(clippy::box_collection)]
    errors_sent: Option<Box<BTreeMap<u16, u64>>>,
}

impl Counters {
    fn count_error_sent(&mut self, code: u16) {
        *self
            .errors_sent
            .get_or_insert_with(Box::default)
            .entry(code)
            .or_default() += 1;
    }
}

/// One frame ready for the transport: header bytes and payload (sealed if a record layer is
/// active). Write `header` then `payload`, or gather them in one `writev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The 24 header bytes.
    pub header: [u8; HEADER_LEN],
    /// The payload.
    pub payload: Bytes,
}

impl Transmit {
    /// Total bytes.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Never empty: a header is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Append header and payload to `buf`.
    pub fn write_to<B: BufMut + ?Sized>(&self, buf: &mut B) {
        buf.put_slice(&self.header);
        buf.put_slice(&self.payload);
    }
}

/// What a connection holds only while it has traffic in hand.
#[derive(Debug)]
struct Busy {
    decoder: Decoder,
    sched: Scheduler,
    events: VecDeque<Event>,
    pings: VecDeque<PingRecord>,
}

impl Busy {
    /// Nothing buffered, queued, pending or outstanding (and no decode error to report).
    fn is_idle(&self) -> bool {
        self.decoder.buffered() == 0
            && !self.decoder.is_failed()
            && self.sched.is_empty()
            && self.events.is_empty()
            && self.pings.is_empty()
    }
}

#[derive(Debug)]
struct PingRecord {
    correlation_id: u32,
    sent: Instant,
    app: bool,
}

/// The frame sent last: CLOSE on a graceful close, ERROR on a fatal one.
#[derive(Debug)]
struct FinalFrame {
    header: Header,
    payload: Bytes,
    seal: bool,
    /// The state to enter once it has been handed to the transport.
    then: AfterFinal,
}

#[derive(Debug)]
enum AfterFinal {
    /// Our CLOSE is out; wait for the peer's.
    AwaitPeerClose,
    /// Both sides are done.
    Closed(CloseReason),
    /// Already closed (fatal ERROR).
    Nothing,
}

/// What a closing connection keeps.
#[derive(Default)]
struct Closing {
    /// The peer must answer our CLOSE (or finish the exchange) by then.
    deadline: Option<Instant>,
    /// Our CLOSE is out.
    sent: bool,
    /// Our CLOSE code and reason, once [`Connection::close`] was called.
    local: Option<(u16, String)>,
    /// The frame to send last, once decided.
    final_frame: Option<FinalFrame>,
}

/// What a connection keeps only until it is established.
#[derive(Default)]
struct Pending {
    /// Our HELLO as sent (client side), the start of the hello transcript.
    hello_transcript: Option<Vec<u8>>,
    /// The identity a secure transport (TLS) verified, handed to the handshake.
    transport_identity: Option<String>,
    /// The security handshake in progress.
    handshake: Option<Box<dyn SecurityHandshake>>,
    /// HELLO and the handshake must be done by then.
    deadline: Option<Instant>,
}

/// One side of one Valkyrie connection.
///
/// ```
/// use std::{sync::Arc, time::Instant};
/// use valkyrie_protocol::{Config, Connection, Event, Side};
///
/// let now = Instant::now();
/// let mut client = Connection::new(Side::Client, Arc::new(Config::new("agent-1")), now, 1_700_000_000);
/// let mut server = Connection::new(Side::Server, Arc::new(Config::new("control")), now, 1_700_000_000);
///
/// // Shuttle bytes both ways until both report Connected.
/// let mut connected = 0;
/// for _ in 0..4 {
///     while let Some(t) = client.poll_transmit() {
///         let mut wire = Vec::new();
///         t.write_to(&mut wire);
///         server.handle_input(&wire, now);
///     }
///     while let Some(e) = server.poll_event() {
///         if matches!(e, Event::Connected(_)) { connected += 1 }
///     }
///     while let Some(t) = server.poll_transmit() {
///         let mut wire = Vec::new();
///         t.write_to(&mut wire);
///         client.handle_input(&wire, now);
///     }
///     while let Some(e) = client.poll_event() {
///         if matches!(e, Event::Connected(_)) { connected += 1 }
///     }
/// }
/// assert_eq!(connected, 2);
/// assert!(client.is_established() && server.is_established());
/// ```
pub struct Connection {
    side: Side,
    config: Arc<Config>,
    state: State,
    /// Receive buffer, outbound queues, events and outstanding PINGs: allocated while the
    /// connection has traffic in hand and released by [`Connection::shrink_buffers`] once all
    /// of it is empty (an idle connection pays 8 bytes for them).
    busy: Option<Box<Busy>>,
    /// Frames and bytes shed by the scheduler in earlier busy periods.
    shed: (u64, u64),
    streams: Streams,
    /// The times below are nanoseconds since `base_instant` (8 bytes each, not 16).
    base_instant: Instant,
    base_unix: u32,
    /// The latest time passed in.
    now: u64,
    peer: Option<PeerInfo>,
    peer_max_frame: u32,
    last_rx: u64,
    last_tx: u64,
    last_ping: u64,
    missed: u32,
    /// Smoothed round-trip time in microseconds (0: not measured yet).
    srtt_us: u32,
    next_correlation: u32,
    protector: Option<Box<dyn RecordProtector>>,
    /// Handshake-time state, dropped once established (boxed: an idle connection pays 8 bytes).
    pending: Option<Box<Pending>>,
    /// Close-time state (boxed: only closing connections pay for it).
    closing: Option<Box<Closing>>,
    stats: Counters,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("state", &self.state)
            .field("peer", &self.peer)
            .field("streams", &self.streams.len())
            .field("queued", &self.sched_len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A new connection. `now` and `unix_secs` (the wall clock at `now`, Unix seconds) anchor
    /// the header timestamps; no clock is read afterwards. A client queues its HELLO at once.
    pub fn new(side: Side, config: Arc<Config>, now: Instant, unix_secs: u64) -> Self {
        let streams = Streams::new(side, config.max_streams, config.window);
        let mut conn = Connection {
            side,
            state: match side {
                Side::Client => State::AwaitingHelloAck,
                Side::Server => State::AwaitingHello,
            },
            busy: None,
            shed: (0, 0),
            streams,
            base_instant: now,
            now: 0,
            base_unix: unix_secs.min(u64::from(u32::MAX)) as u32,
            peer: None,
            peer_max_frame: MIN_MAX_FRAME,
            last_rx: 0,
            last_tx: 0,
            last_ping: 0,
            missed: 0,
            srtt_us: 0,
            next_correlation: 1,
            protector: None,
            pending: Some(Box::new(Pending {
                deadline: Some(now + config.handshake_timeout),
                ..Pending::default()
            })),
            closing: None,
            stats: Counters::default(),
            config,
        };
        if side == Side::Client {
            let hello = Hello {
                stream_window: Some(conn.config.window.initial()),
                max_streams: Some(conn.config.max_streams),
                ..Hello::new(
                    conn.config.node_id.clone(),
                    conn.config.security.clone(),
                    conn.config.max_frame.min(MAX_FRAME_LIMIT),
                    duration_ms(conn.config.heartbeat),
                )
            }
            .to_bytes();
            conn.pending_mut().hello_transcript = Some(hello.to_vec());
            conn.queue_control(MessageType::Hello, 0, hello, Flags::empty(), 0);
        }
        conn
    }

    // ----- accessors -------------------------------------------------------------------

    /// Our side.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// True once application frames may flow.
    pub fn is_established(&self) -> bool {
        self.state == State::Established
    }

    /// True once the connection has ended (frames may still wait in [`Connection::poll_transmit`]).
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True when the connection has ended and everything has been transmitted: close the
    /// transport now.
    pub fn is_drained(&self) -> bool {
        self.state == State::Closed && !self.has_final_frame() && self.sched_len() == 0
    }

    /// What was agreed with the peer, once connected.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Release the memory of empty buffers and queues (receive buffer, outbound queues,
    /// event queue, stream tables). Call it when the connection has gone quiet: an idle
    /// connection then holds only its fixed state. Nothing queued or buffered is touched.
    pub fn shrink_buffers(&mut self) {
        self.streams.shrink();
        let Some(b) = self.busy.as_mut() else {
            return;
        };
        if b.is_idle() {
            self.shed.0 += b.sched.shed_frames();
            self.shed.1 += b.sched.shed_bytes();
            self.busy = None;
            return;
        }
        b.decoder.shrink();
        b.sched.shrink();
        if b.events.is_empty() {
            b.events = VecDeque::new();
        }
        if b.pings.is_empty() {
            b.pings = VecDeque::new();
        }
    }

    /// The busy-time state, allocated on first use.
    fn busy(&mut self) -> &mut Busy {
        let config = &self.config;
        self.busy.get_or_insert_with(|| {
            Box::new(Busy {
                decoder: Decoder::new(config.max_frame),
                sched: Scheduler::new(config.scheduler),
                events: VecDeque::new(),
                pings: VecDeque::new(),
            })
        })
    }

    fn push_event(&mut self, event: Event) {
        self.busy().events.push_back(event);
    }

    fn sched_len(&self) -> usize {
        self.busy.as_ref().map_or(0, |b| b.sched.len())
    }

    /// Whether a frame of `qos` and `size` bytes would be queued now.
    fn has_room(&self, qos: Qos, size: usize) -> bool {
        match &self.busy {
            Some(b) => b.sched.has_room(qos, size),
            None => Scheduler::new(self.config.scheduler).has_room(qos, size),
        }
    }

    /// Drop every queued frame.
    fn clear_queue(&mut self) {
        if let Some(b) = self.busy.as_mut() {
            b.sched.clear();
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.stats;
        ConnectionStats {
            frames_rx: c.frames_rx,
            frames_tx: c.frames_tx,
            bytes_rx: c.bytes_rx,
            bytes_tx: c.bytes_tx,
            errors_sent: c.errors_sent.as_deref().cloned().unwrap_or_default(),
            errors_rx: c.errors_rx.into(),
            heartbeats_sent: c.heartbeats_sent.into(),
            heartbeats_missed: c.heartbeats_missed.into(),
            dropped_rx: c.dropped_rx.into(),
        }
    }

    /// Best-effort frames shed by the scheduler.
    pub fn shed_frames(&self) -> u64 {
        self.shed.0 + self.busy.as_ref().map_or(0, |b| b.sched.shed_frames())
    }

    /// Bytes fed but not yet decoded. A transport should stop reading while this is above
    /// its budget (at most one `max_frame` plus one read is ever needed).
    pub fn buffered_input(&self) -> usize {
        self.busy.as_ref().map_or(0, |b| b.decoder.buffered())
    }

    /// Frames waiting to be transmitted.
    pub fn queued_frames(&self) -> usize {
        self.sched_len() + usize::from(self.has_final_frame())
    }

    /// The smoothed round-trip time from PING/PONG, if measured.
    pub fn rtt(&self) -> Option<Duration> {
        (self.srtt_us > 0).then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }

    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// The state of stream `id`.
    pub fn stream_info(&self, id: u32) -> Option<crate::streams::StreamInfo> {
        self.streams.info(id)
    }

    /// Header timestamp (Unix seconds) at the last time passed in.
    pub fn unix_time(&self) -> u32 {
        let elapsed = self.now / 1_000_000_000;
        (u64::from(self.base_unix).saturating_add(elapsed)).min(u64::from(u32::MAX)) as u32
    }

    // ----- input -----------------------------------------------------------------------

    /// Record the peer identity a secure transport under this connection verified (the
    /// certificate subject TLS checked, for `mtls`). Call it before feeding the first bytes
    /// decrypted by that transport; the `mtls` handshake completes with this identity.
    pub fn set_transport_identity(&mut self, identity: impl Into<String>) {
        if matches!(
            self.state,
            State::Established | State::Closing | State::Closed
        ) {
            // Too late to matter: the handshake is over.
            return;
        }
        self.pending_mut().transport_identity = Some(identity.into());
    }

    fn pending_mut(&mut self) -> &mut Pending {
        self.pending.get_or_insert_with(Box::default)
    }

    /// Feed bytes received from the transport. Nothing is decoded until
    /// [`Connection::poll_event`] is called.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.advance(now);
        if data.is_empty() || self.state == State::Closed {
            return;
        }
        self.stats.bytes_rx += data.len() as u64;
        self.last_rx = self.tick(now);
        self.missed = 0;
        self.busy().decoder.feed(data);
    }

    /// The transport reached end of file or failed.
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        if self.state == State::Closed {
            return;
        }
        let reason = if self.close_sent() {
            self.local_close_reason()
        } else {
            CloseReason::TransportClosed
        };
        self.discard_output();
        self.enter_closed(reason);
    }

    /// The next event, decoding buffered input as needed.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            let b = self.busy.as_mut()?;
            if let Some(e) = b.events.pop_front() {
                return Some(e);
            }
            if self.state == State::Closed {
                return None;
            }
            match b.decoder.decode() {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return None,
                Err(e) => self.fatal(e.code(), e.to_string(), None),
            }
        }
    }

    // ----- output ----------------------------------------------------------------------

    /// The next frame to hand to the transport.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(q) = self.busy.as_mut().and_then(|b| b.sched.pop()) {
            return match self.finish_transmit(q.header, q.payload, q.seal) {
                Some(t) => Some(t),
                None => self.poll_transmit(),
            };
        }
        let f = self.closing.as_mut()?.final_frame.take()?;
        let t = self.finish_transmit(f.header, f.payload, f.seal);
        match f.then {
            AfterFinal::AwaitPeerClose => self.closing_mut().sent = true,
            AfterFinal::Closed(reason) => {
                self.closing_mut().sent = true;
                self.enter_closed(reason);
            }
            AfterFinal::Nothing => {}
        }
        t
    }

    /// Write as many whole frames as fit in `max_bytes` into `buf` (at least one if any is
    /// queued). Returns the bytes written.
    pub fn write_transmits(&mut self, buf: &mut BytesMut, max_bytes: usize) -> usize {
        let start = buf.len();
        while let Some(t) = self.poll_transmit() {
            t.write_to(buf);
            if buf.len() - start >= max_bytes {
                break;
            }
        }
        buf.len() - start
    }

    fn finish_transmit(
        &mut self,
        mut header: Header,
        payload: Bytes,
        seal: bool,
    ) -> Option<Transmit> {
        let payload = match (&mut self.protector, seal) {
            (Some(p), true) => {
                header.length = (payload.len() + p.overhead()) as u32;
                let head = header.to_bytes();
                let mut out = BytesMut::with_capacity(header.length as usize);
                if let Err(e) = p.seal(&head, &payload, &mut out) {
                    // Fatal: the record layer cannot continue. Send an unsealed ERROR.
                    self.protector = None;
                    self.fatal(e.code, e.message, None);
                    return None;
                }
                out.freeze()
            }
            _ => {
                header.length = payload.len() as u32;
                payload
            }
        };
        self.stats.frames_tx += 1;
        self.stats.bytes_tx += (HEADER_LEN + payload.len()) as u64;
        self.last_tx = self.now;
        Some(Transmit {
            header: header.to_bytes(),
            payload,
        })
    }

    // ----- timers ----------------------------------------------------------------------

    /// The next instant at which [`Connection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::Closing => self.closing.as_ref().and_then(|c| c.deadline),
            State::Established => {
                let hb = self.heartbeat()?;
                let miss = self.miss_deadline(hb);
                Some(match self.side {
                    Side::Client => miss.min(self.ping_due(hb)),
                    Side::Server => miss,
                })
            }
            _ => self.pending.as_ref().and_then(|p| p.deadline),
        }
    }

    fn miss_deadline(&self, hb: Duration) -> Instant {
        let hb = hb.as_nanos() as u64;
        self.at(self.last_rx + hb * u64::from(self.missed + 1) + hb / 2)
    }

    fn ping_due(&self, hb: Duration) -> Instant {
        let hb = hb.as_nanos() as u64;
        self.at(self.last_tx.min(self.last_rx.max(self.last_ping)) + hb)
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        match self.state {
            State::Closed => {}
            State::Closing => {
                if self
                    .closing
                    .as_ref()
                    .and_then(|c| c.deadline)
                    .is_some_and(|d| now >= d)
                {
                    self.discard_output();
                    self.enter_closed(CloseReason::CloseTimeout);
                }
            }
            State::Established => {
                let Some(hb) = self.heartbeat() else { return };
                while now >= self.miss_deadline(hb) {
                    self.missed += 1;
                    self.stats.heartbeats_missed = self.stats.heartbeats_missed.saturating_add(1);
                    self.push_event(Event::HeartbeatMissed {
                        missed: self.missed,
                    });
                    if self.missed >= self.config.max_missed_heartbeats.max(1) {
                        let msg = format!("{} heartbeats missed", self.missed);
                        self.fatal(
                            ErrorCode::HEARTBEAT_TIMEOUT,
                            msg,
                            Some(CloseReason::HeartbeatTimeout),
                        );
                        return;
                    }
                }
                if self.side == Side::Client && now >= self.ping_due(hb) {
                    self.stats.heartbeats_sent = self.stats.heartbeats_sent.saturating_add(1);
                    let _ = self.send_ping(Bytes::new(), false);
                }
            }
            _ => {
                if self
                    .pending
                    .as_ref()
                    .and_then(|p| p.deadline)
                    .is_some_and(|d| now >= d)
                {
                    self.fatal(
                        ErrorCode::HANDSHAKE_TIMEOUT,
                        "handshake did not finish in time".into(),
                        Some(CloseReason::HandshakeTimeout),
                    );
                }
            }
        }
    }

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(self.tick(now));
    }

    /// `t` as nanoseconds since the connection's base instant (0 before it).
    fn tick(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base_instant).as_nanos() as u64
    }

    /// The instant of a `tick`.
    fn at(&self, tick: u64) -> Instant {
        self.base_instant + Duration::from_nanos(tick)
    }

    /// The latest time passed in.
    fn now(&self) -> Instant {
        self.at(self.now)
    }

    /// The heartbeat interval agreed with the peer.
    fn heartbeat(&self) -> Option<Duration> {
        self.peer.as_ref().and_then(|p| p.heartbeat)
    }

    // ----- application API -------------------------------------------------------------

    /// Send a frame of `msg_type` on `stream_id`. Windowed streams take flow-control credit
    /// for the payload; an unknown stream id of our parity opens that stream. Returns
    /// [`Enqueued::Shed`] when a best-effort (log-stream) frame was dropped under pressure.
    pub fn send(
        &mut self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    ) -> Result<Enqueued, SendError> {
        self.check_sendable()?;
        if !app_may_send(msg_type) || (stream_id == 0 && is_stream_management(msg_type)) {
            return Err(SendError::ReservedType(msg_type));
        }
        if opts.flags.contains(Flags::CMP) {
            return Err(SendError::InvalidFlags(Flags::CMP));
        }
        if opts.flags.contains(Flags::TRACE) && payload.len() < TRACE_CONTEXT_LEN {
            return Err(SendError::InvalidFlags(Flags::TRACE));
        }
        self.check_size(payload.len())?;
        let class = StreamClass::of(stream_id);
        let qos = class.qos();
        if !self.has_room(qos, HEADER_LEN + payload.len()) {
            return Err(SendError::QueueFull(qos));
        }
        if stream_id != 0 {
            if self.streams.info(stream_id).is_none() {
                if self.streams.is_remote_id(stream_id) {
                    return Err(StreamError::Unknown(stream_id).into());
                }
                self.streams.open_id(stream_id)?;
            }
            self.streams
                .on_send(stream_id, payload.len(), opts.flags.contains(Flags::EOS))?;
        }
        let header = Header {
            msg_type,
            flags: opts.flags,
            priority: opts.priority,
            trace_flags: opts.trace_flags,
            stream_id,
            length: 0,
            correlation_id: opts.correlation_id,
            timestamp: self.unix_time(),
        };
        let seal = self.protector.is_some();
        self.busy()
            .sched
            .push(qos, header, payload, seal)
            .map_err(|e| SendError::QueueFull(e.0))
    }

    /// Send a typed message.
    pub fn send_message(
        &mut self,
        stream_id: u32,
        message: &crate::message::Message,
        opts: SendOptions,
    ) -> Result<Enqueued, SendError> {
        self.send(stream_id, message.msg_type(), message.to_payload(), opts)
    }

    /// Send a request with a fresh correlation id, which is returned; the answer arrives as an
    /// [`Event::Frame`] with [`Flags::RESPONSE`] and the same id.
    pub fn request(
        &mut self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        mut opts: SendOptions,
    ) -> Result<u32, SendError> {
        let id = self.next_correlation_id();
        opts.correlation_id = id;
        self.send(stream_id, msg_type, payload, opts)?;
        Ok(id)
    }

    /// Answer `request` (same stream, same correlation id, RESPONSE set).
    pub fn respond(
        &mut self,
        request: &Header,
        msg_type: MessageType,
        payload: Bytes,
        mut opts: SendOptions,
    ) -> Result<Enqueued, SendError> {
        opts.flags |= Flags::RESPONSE;
        opts.correlation_id = request.correlation_id;
        self.send(request.stream_id, msg_type, payload, opts)
    }

    /// Send a PING (payload at most 1024 bytes); its PONG arrives as [`Event::Pong`].
    /// Returns the correlation id.
    pub fn ping(&mut self, payload: Bytes) -> Result<u32, SendError> {
        self.check_sendable()?;
        if payload.len() > MAX_PING_PAYLOAD {
            return Err(SendError::TooLarge {
                len: payload.len(),
                max: MAX_PING_PAYLOAD as u32,
            });
        }
        self.send_ping(payload, true)
    }

    fn send_ping(&mut self, payload: Bytes, app: bool) -> Result<u32, SendError> {
        if !self.has_room(Qos::Critical, 0) {
            return Err(SendError::QueueFull(Qos::Critical));
        }
        let id = self.next_correlation_id();
        let (max, sent) = (self.config.max_pings_in_flight.max(1), self.now());
        let pings = &mut self.busy().pings;
        if pings.len() >= max {
            pings.pop_front();
        }
        pings.push_back(PingRecord {
            correlation_id: id,
            sent,
            app,
        });
        self.last_ping = self.now;
        self.queue_control(MessageType::Ping, 0, payload, Flags::empty(), id);
        Ok(id)
    }

    /// Open a stream of `class`, picking its id. With `open`, a STREAM_OPEN carrying it is
    /// sent (its `window` defaults to ours) and the peer's answer arrives as [`Event::Acked`]
    /// for this stream; without, the stream opens implicitly with its first frame.
    pub fn open_stream(
        &mut self,
        class: StreamClass,
        open: Option<StreamOpen>,
    ) -> Result<u32, SendError> {
        self.check_sendable()?;
        if open.is_some() && !self.has_room(Qos::Critical, 0) {
            return Err(SendError::QueueFull(Qos::Critical));
        }
        let id = self.streams.open(class)?;
        if let Some(mut open) = open {
            open.window.get_or_insert(self.streams.local_window());
            let corr = self.next_correlation_id();
            self.queue_control(
                MessageType::StreamOpen,
                id,
                open.to_bytes(),
                Flags::empty(),
                corr,
            );
        }
        Ok(id)
    }

    /// Close our sending half of `stream_id` with STREAM_CLOSE, after the frames already
    /// queued on it.
    pub fn finish_stream(&mut self, stream_id: u32) -> Result<(), SendError> {
        self.check_sendable()?;
        let qos = StreamClass::of(stream_id).qos();
        if !self.has_room(qos, HEADER_LEN) {
            return Err(SendError::QueueFull(qos));
        }
        self.streams.on_send(stream_id, 0, true)?;
        let header = Header {
            priority: 0,
            timestamp: self.unix_time(),
            ..Header::new(MessageType::StreamClose, stream_id, 0)
        };
        let seal = self.protector.is_some();
        self.busy()
            .sched
            .push(qos, header, StreamClose::default().to_bytes(), seal)
            .map_err(|e| SendError::QueueFull(e.0))?;
        Ok(())
    }

    /// Abort `stream_id` in both directions with `code`; frames still queued on it are dropped.
    pub fn reset_stream(
        &mut self,
        stream_id: u32,
        code: u16,
        reason: &str,
    ) -> Result<(), SendError> {
        if self.state == State::Closed {
            return Err(SendError::Closing);
        }
        if self.streams.info(stream_id).is_none() {
            return Err(StreamError::Unknown(stream_id).into());
        }
        self.send_reset(stream_id, code, reason.to_owned());
        Ok(())
    }

    /// Release `bytes` of received data on `stream_id` (only with
    /// [`Config::manual_flow_control`]); sends a credit update when one is due.
    pub fn release(&mut self, stream_id: u32, bytes: u64) {
        let rtt = self.rtt().unwrap_or(Duration::from_millis(1));
        if let Some(max) = self.streams.release(stream_id, bytes, self.now(), rtt) {
            self.send_credit(stream_id, max);
        }
    }

    /// Report a non-fatal error to the peer (e.g. a 4xx for a job request).
    pub fn send_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        stream_id: u32,
        correlation_id: u32,
    ) -> Result<(), SendError> {
        self.check_sendable()?;
        if code.is_fatal() {
            self.fatal(code, message.to_owned(), None);
            return Ok(());
        }
        if !self.has_room(Qos::Critical, 0) {
            return Err(SendError::QueueFull(Qos::Critical));
        }
        self.queue_error(code, message.to_owned(), stream_id, correlation_id);
        Ok(())
    }

    /// Close gracefully: stop accepting sends, transmit what is queued, then CLOSE; the
    /// connection ends when the peer answers CLOSE (or after the close timeout).
    pub fn close(&mut self, code: u16, reason: &str) {
        match self.state {
            State::Closed | State::Closing => return,
            State::Established => {}
            _ => {
                // Nothing established yet: close without draining.
                self.clear_queue();
            }
        }
        self.state = State::Closing;
        self.closing_mut().deadline = Some(self.now() + self.config.close_timeout);
        let payload = Close {
            code,
            reason: reason.to_owned(),
        }
        .to_bytes();
        self.closing_mut().final_frame = Some(FinalFrame {
            header: self.control_header(MessageType::Close, 0, Flags::empty(), 0),
            payload,
            seal: self.protector.is_some(),
            then: AfterFinal::AwaitPeerClose,
        });
        self.closing_mut().local = Some((code, reason.to_owned()));
    }

    fn closing_mut(&mut self) -> &mut Closing {
        self.closing.get_or_insert_with(Box::default)
    }

    fn has_final_frame(&self) -> bool {
        self.closing
            .as_ref()
            .is_some_and(|c| c.final_frame.is_some())
    }

    /// Drop every queued frame and the final frame: nothing more will be transmitted.
    fn discard_output(&mut self) {
        self.clear_queue();
        if let Some(c) = self.closing.as_mut() {
            c.final_frame = None;
        }
    }

    fn close_sent(&self) -> bool {
        self.closing.as_ref().is_some_and(|c| c.sent)
    }

    fn local_close_reason(&self) -> CloseReason {
        let (code, reason) = self
            .closing
            .as_ref()
            .and_then(|c| c.local.clone())
            .unwrap_or_default();
        CloseReason::Local { code, reason }
    }

    fn check_sendable(&self) -> Result<(), SendError> {
        match self.state {
            State::Established => Ok(()),
            State::Closing | State::Closed => Err(SendError::Closing),
            _ => Err(SendError::NotEstablished),
        }
    }

    fn check_size(&self, len: usize) -> Result<(), SendError> {
        let overhead = self.protector.as_ref().map_or(0, |p| p.overhead());
        if len + overhead > self.peer_max_frame as usize {
            return Err(SendError::TooLarge {
                len,
                max: self.peer_max_frame,
            });
        }
        Ok(())
    }

    fn next_correlation_id(&mut self) -> u32 {
        let id = self.next_correlation;
        self.next_correlation = self.next_correlation.checked_add(1).unwrap_or(1);
        id
    }

    // ----- frame handling --------------------------------------------------------------

    fn on_frame(&mut self, mut frame: Frame) {
        self.stats.frames_rx += 1;
        if let Some(p) = &mut self.protector {
            let head = frame.header.to_bytes();
            match p.open(&head, frame.payload) {
                Ok(plain) => {
                    frame.header.length = plain.len() as u32;
                    frame.payload = plain;
                }
                Err(e) => {
                    self.fatal(e.code, e.message, None);
                    return;
                }
            }
        }
        let h = frame.header;
        if !h.msg_type.is_known() {
            self.nonfatal(
                ErrorCode::UNKNOWN_MESSAGE_TYPE,
                format!("unknown message type 0x{:02X}", h.msg_type.to_u8()),
                &h,
            );
            return;
        }
        if h.flags.contains(Flags::CMP) {
            self.nonfatal(
                ErrorCode::MALFORMED_PAYLOAD,
                "CMP set but no compression was agreed".into(),
                &h,
            );
            return;
        }
        if h.flags.contains(Flags::TRACE) && frame.payload.len() < TRACE_CONTEXT_LEN {
            self.nonfatal(
                ErrorCode::MALFORMED_PAYLOAD,
                "TRACE set but payload shorter than the trace context".into(),
                &h,
            );
            return;
        }
        match self.state {
            State::AwaitingHello => self.on_hello(frame),
            State::AwaitingHelloAck => self.on_hello_ack(frame),
            State::Handshaking => self.on_handshake_frame(frame),
            State::Established | State::Closing => self.on_established_frame(frame),
            State::Closed => {}
        }
    }

    fn on_hello(&mut self, frame: Frame) {
        let h = frame.header;
        if h.msg_type != MessageType::Hello || h.stream_id != 0 {
            self.fatal(
                ErrorCode::UNEXPECTED_MESSAGE,
                format!("expected HELLO, got {}", h.msg_type),
                None,
            );
            return;
        }
        let hello = match Hello::from_bytes(&frame.payload) {
            Ok(hello) => hello,
            Err(e) => {
                self.fatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), None);
                return;
            }
        };
        if !hello.versions.contains(&VERSION) {
            self.fatal(
                ErrorCode::UNSUPPORTED_VERSION,
                format!(
                    "versions {:?} offered, this node speaks {VERSION}",
                    hello.versions
                ),
                None,
            );
            return;
        }
        let Some(mode) = hello
            .security
            .iter()
            .find(|m| self.config.supports(m))
            .cloned()
        else {
            let offered: Vec<&str> = hello.security.iter().map(SecurityMode::as_str).collect();
            self.fatal(
                ErrorCode::UNSUPPORTED_SECURITY_MODE,
                format!("none of the offered security modes {offered:?} is accepted"),
                None,
            );
            return;
        };
        if hello.max_frame < MIN_MAX_FRAME {
            self.fatal(
                ErrorCode::NEGOTIATION_FAILED,
                format!(
                    "max_frame {} below the minimum {MIN_MAX_FRAME}",
                    hello.max_frame
                ),
                None,
            );
            return;
        }
        let heartbeat_ms = hello.heartbeat_ms.max(duration_ms(self.config.heartbeat));
        let ack = HelloAck {
            version: VERSION,
            node_id: self.config.node_id.clone(),
            security: mode.clone(),
            max_frame: self.config.max_frame.min(MAX_FRAME_LIMIT),
            heartbeat_ms,
            stream_window: Some(self.config.window.initial()),
            max_streams: Some(self.config.max_streams),
            compression: None,
        }
        .to_bytes();
        let mut transcript = frame.payload.to_vec();
        transcript.extend_from_slice(&ack);
        self.queue_control(
            MessageType::HelloAck,
            0,
            ack,
            Flags::RESPONSE,
            h.correlation_id,
        );
        self.apply_peer_params(
            hello.node_id,
            mode,
            hello.max_frame,
            heartbeat_ms,
            hello.stream_window,
            hello.max_streams,
        );
        self.start_security(transcript);
    }

    fn on_hello_ack(&mut self, frame: Frame) {
        let h = frame.header;
        match h.msg_type {
            MessageType::HelloAck if h.stream_id == 0 => {}
            MessageType::Error => {
                self.on_peer_error(&frame);
                if self.state != State::Closed {
                    // Anything the server says before HELLO_ACK ends the attempt.
                    self.enter_closed(CloseReason::PeerError {
                        code: ErrorCode::NEGOTIATION_FAILED,
                        message: "peer answered HELLO with ERROR".into(),
                    });
                }
                return;
            }
            other => {
                self.fatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("expected HELLO_ACK, got {other}"),
                    None,
                );
                return;
            }
        }
        let ack = match HelloAck::from_bytes(&frame.payload) {
            Ok(ack) => ack,
            Err(e) => {
                self.fatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), None);
                return;
            }
        };
        if ack.version != VERSION {
            self.fatal(
                ErrorCode::UNSUPPORTED_VERSION,
                format!("peer chose version {}", ack.version),
                None,
            );
            return;
        }
        if !self.config.supports(&ack.security) {
            self.fatal(
                ErrorCode::DOWNGRADE,
                format!(
                    "peer chose security mode {}, which was not offered",
                    ack.security
                ),
                None,
            );
            return;
        }
        if ack.max_frame < MIN_MAX_FRAME {
            self.fatal(
                ErrorCode::NEGOTIATION_FAILED,
                format!(
                    "max_frame {} below the minimum {MIN_MAX_FRAME}",
                    ack.max_frame
                ),
                None,
            );
            return;
        }
        let mut transcript = self
            .pending
            .as_mut()
            .and_then(|p| p.hello_transcript.take())
            .unwrap_or_default();
        transcript.extend_from_slice(&frame.payload);
        self.apply_peer_params(
            ack.node_id,
            ack.security,
            ack.max_frame,
            ack.heartbeat_ms,
            ack.stream_window,
            ack.max_streams,
        );
        self.start_security(transcript);
    }

    fn apply_peer_params(
        &mut self,
        node_id: String,
        security: SecurityMode,
        max_frame: u32,
        heartbeat_ms: u32,
        stream_window: Option<u32>,
        max_streams: Option<u32>,
    ) {
        self.peer_max_frame = max_frame.min(MAX_FRAME_LIMIT);
        self.streams.set_peer_limits(
            stream_window.unwrap_or(self.config.window.initial()),
            max_streams.unwrap_or(self.config.max_streams),
        );
        self.peer = Some(PeerInfo {
            node_id,
            version: VERSION,
            security,
            identity: None,
            max_frame: self.peer_max_frame,
            heartbeat: (heartbeat_ms > 0).then(|| Duration::from_millis(u64::from(heartbeat_ms))),
        });
    }

    fn start_security(&mut self, hello_transcript: Vec<u8>) {
        let peer = self
            .peer
            .as_ref()
            .expect("peer params applied before security");
        let mode = peer.security.clone();
        if mode == SecurityMode::Plaintext {
            self.establish(None, None);
            return;
        }
        let Some(provider) = self.config.provider(&mode).cloned() else {
            self.fatal(
                ErrorCode::UNSUPPORTED_SECURITY_MODE,
                format!("no handshake configured for {mode}"),
                None,
            );
            return;
        };
        let ctx = HandshakeContext {
            side: self.side,
            mode,
            local_node_id: self.config.node_id.clone(),
            peer_node_id: peer.node_id.clone(),
            hello_transcript,
            now: self.now(),
            unix_secs: u64::from(self.unix_time()),
            transport_identity: self
                .pending
                .as_ref()
                .and_then(|p| p.transport_identity.clone()),
        };
        let mut hs = provider.new_handshake(self.side);
        self.state = State::Handshaking;
        let mut out = Vec::new();
        let status = hs.start(&ctx, &mut out);
        self.pending_mut().handshake = Some(hs);
        self.after_handshake_step(status, out);
    }

    fn on_handshake_frame(&mut self, frame: Frame) {
        let h = frame.header;
        match h.msg_type {
            MessageType::Error => self.on_peer_error(&frame),
            MessageType::Close => self.on_peer_close(&frame),
            t if t.is_handshake() && h.stream_id == 0 => {
                let now = self.now();
                let Some(hs) = self.pending.as_mut().and_then(|p| p.handshake.as_mut()) else {
                    return;
                };
                let mut out = Vec::new();
                let status = hs.handle(t, &frame.payload, now, &mut out);
                self.after_handshake_step(status, out);
            }
            other => self.fatal(
                ErrorCode::AUTH_REQUIRED,
                format!("{other} before the security handshake finished"),
                None,
            ),
        }
    }

    fn after_handshake_step(
        &mut self,
        status: Result<HandshakeStatus, crate::security::SecurityError>,
        out: Vec<HandshakeMessage>,
    ) {
        for m in out {
            if !m.msg_type.is_handshake() {
                self.fatal(
                    ErrorCode::INTERNAL,
                    format!("handshake produced a {} frame", m.msg_type),
                    None,
                );
                return;
            }
            self.queue_control(m.msg_type, 0, m.payload, Flags::empty(), 0);
        }
        match status {
            Ok(HandshakeStatus::InProgress) => {}
            Ok(HandshakeStatus::Complete {
                peer_identity,
                protector,
            }) => {
                self.establish(peer_identity, protector);
            }
            Err(e) => {
                if let Some(p) = self.pending.as_mut() {
                    p.handshake = None;
                }
                self.fatal(e.code, e.message, None);
            }
        }
    }

    fn establish(&mut self, identity: Option<String>, protector: Option<Box<dyn RecordProtector>>) {
        self.protector = protector;
        self.pending = None;
        self.state = State::Established;
        self.last_rx = self.now;
        self.last_ping = self.now;
        self.missed = 0;
        let peer = self.peer.as_mut().expect("peer params applied");
        peer.identity = identity;
        let connected = Event::Connected(peer.clone());
        self.push_event(connected);
    }

    fn on_established_frame(&mut self, frame: Frame) {
        let h = frame.header;
        if h.msg_type == MessageType::Error {
            // ERROR travels on the stream of the frame it is about.
            self.on_peer_error(&frame);
            return;
        }
        if h.stream_id != 0 {
            self.on_stream_frame(frame);
            return;
        }
        match h.msg_type {
            MessageType::Ping => {
                if frame.payload.len() > MAX_PING_PAYLOAD {
                    self.nonfatal(
                        ErrorCode::MALFORMED_PAYLOAD,
                        format!(
                            "PING of {} bytes, at most {MAX_PING_PAYLOAD}",
                            frame.payload.len()
                        ),
                        &h,
                    );
                } else {
                    self.queue_control(
                        MessageType::Pong,
                        0,
                        frame.payload,
                        Flags::RESPONSE,
                        h.correlation_id,
                    );
                }
            }
            MessageType::Pong => self.on_pong(frame),
            MessageType::Error => self.on_peer_error(&frame),
            MessageType::Close => self.on_peer_close(&frame),
            MessageType::StreamAck => {
                if h.flags.contains(Flags::RESPONSE) && h.correlation_id != 0 {
                    self.push_event(Event::Acked {
                        stream_id: 0,
                        correlation_id: h.correlation_id,
                    });
                }
            }
            t if is_stream_management(t) => {
                self.nonfatal(ErrorCode::INVALID_STREAM_ID, format!("{t} on stream 0"), &h)
            }
            t if t == MessageType::Hello || t == MessageType::HelloAck || t.is_handshake() => {
                self.nonfatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("{t} after the connection was established"),
                    &h,
                );
            }
            _ => self.deliver(frame),
        }
    }

    fn on_stream_frame(&mut self, frame: Frame) {
        let h = frame.header;
        let id = h.stream_id;
        let t = h.msg_type;
        if self.streams.is_reset_pending(id) {
            if t == MessageType::StreamReset && h.flags.contains(Flags::RESPONSE) {
                self.streams.confirm_reset(id);
            } else if t == MessageType::StreamReset {
                // Both sides reset at once: confirm theirs; ours is confirmed by their reply.
                self.queue_reset_confirm(id, &frame);
            } else {
                self.stats.dropped_rx = self.stats.dropped_rx.saturating_add(1);
            }
            return;
        }
        if self.streams.info(id).is_none() {
            if matches!(t, MessageType::StreamAck | MessageType::StreamClose) {
                self.stats.dropped_rx = self.stats.dropped_rx.saturating_add(1);
                return;
            }
            if t == MessageType::StreamReset {
                if !h.flags.contains(Flags::RESPONSE) {
                    self.queue_reset_confirm(id, &frame);
                }
                return;
            }
            if !self.streams.is_remote_id(id) {
                self.nonfatal(
                    ErrorCode::UNKNOWN_STREAM,
                    format!("stream {id} is not open"),
                    &h,
                );
                return;
            }
            let open = if t == MessageType::StreamOpen {
                match StreamOpen::from_bytes(&frame.payload) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        self.nonfatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), &h);
                        return;
                    }
                }
            } else {
                None
            };
            let window = open.as_ref().and_then(|o| o.window);
            if let Err(e) = self.streams.accept(id, window) {
                self.send_reset(id, e.code().0, e.to_string());
                return;
            }
            self.push_event(Event::StreamOpened { id, open });
            if t == MessageType::StreamOpen {
                let ack = StreamAck {
                    max_data: Some(u64::from(self.streams.local_window())),
                    received: None,
                };
                self.queue_control(
                    MessageType::StreamAck,
                    id,
                    ack.to_bytes(),
                    Flags::RESPONSE,
                    h.correlation_id,
                );
                if h.flags.contains(Flags::EOS) {
                    self.finish_remote(id);
                }
                return;
            }
        } else if t == MessageType::StreamOpen {
            self.nonfatal(
                ErrorCode::STREAM_ALREADY_OPEN,
                format!("stream {id} is already open"),
                &h,
            );
            return;
        }
        match t {
            MessageType::StreamAck => match StreamAck::from_bytes(&frame.payload) {
                Ok(ack) => {
                    if let Some(max) = ack.max_data
                        && self.streams.on_credit(id, max)
                    {
                        self.push_event(Event::StreamWritable { id });
                    }
                    if h.flags.contains(Flags::RESPONSE) && h.correlation_id != 0 {
                        self.push_event(Event::Acked {
                            stream_id: id,
                            correlation_id: h.correlation_id,
                        });
                    }
                }
                Err(e) => self.nonfatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), &h),
            },
            MessageType::StreamReset => {
                let reset = StreamReset::from_bytes(&frame.payload).unwrap_or(StreamReset {
                    code: ErrorCode::MALFORMED_PAYLOAD.0,
                    reason: "malformed STREAM_RESET".into(),
                });
                self.streams.remove(id);
                if !h.flags.contains(Flags::RESPONSE) {
                    self.queue_reset_confirm(id, &frame);
                }
                self.push_event(Event::StreamReset {
                    id,
                    code: reset.code,
                    reason: reset.reason,
                    remote: true,
                });
            }
            MessageType::StreamClose => self.finish_remote(id),
            _ => match self.streams.on_receive(id, frame.payload.len()) {
                Ok(()) => {
                    let len = frame.payload.len() as u64;
                    let eos = h.flags.contains(Flags::EOS);
                    self.deliver(frame);
                    if !self.config.manual_flow_control {
                        self.release(id, len);
                    }
                    if eos {
                        self.finish_remote(id);
                    }
                }
                Err(ReceiveError::FlowControl) => {
                    let reason = format!("stream {id}: peer exceeded its flow-control credit");
                    self.send_reset(id, ErrorCode::FLOW_CONTROL_VIOLATION.0, reason.clone());
                    self.push_event(Event::StreamReset {
                        id,
                        code: ErrorCode::FLOW_CONTROL_VIOLATION.0,
                        reason,
                        remote: false,
                    });
                }
                Err(ReceiveError::Closed) => self.nonfatal(
                    ErrorCode::STREAM_CLOSED,
                    format!("stream {id} was finished by its sender"),
                    &h,
                ),
                Err(ReceiveError::Unknown) => self.nonfatal(
                    ErrorCode::UNKNOWN_STREAM,
                    format!("stream {id} is not open"),
                    &h,
                ),
            },
        }
    }

    fn finish_remote(&mut self, id: u32) {
        if self.streams.finish_remote(id) {
            self.push_event(Event::StreamFinished { id });
        }
    }

    /// Hand an application frame over, acknowledging it first when the sender asked. On a
    /// zero_trust server, the policy decides first.
    fn deliver(&mut self, frame: Frame) {
        let h = frame.header;
        if self.side == Side::Server
            && let Some(peer) = &self.peer
            && peer.security == SecurityMode::ZeroTrust
        {
            let identity = peer.identity.clone();
            let allowed = self
                .config
                .policy
                .as_ref()
                .is_some_and(|p| p.allows(identity.as_deref(), h.msg_type));
            if !allowed {
                self.nonfatal(
                    ErrorCode::UNAUTHORISED,
                    format!(
                        "{} may not send {}",
                        identity.as_deref().unwrap_or("an unauthenticated peer"),
                        h.msg_type
                    ),
                    &h,
                );
                self.push_event(Event::Denied {
                    identity,
                    msg_type: h.msg_type,
                    stream_id: h.stream_id,
                });
                return;
            }
        }
        if h.flags.contains(Flags::ACK) {
            let ack = StreamAck {
                max_data: None,
                received: self.streams.received(h.stream_id),
            };
            self.queue_control(
                MessageType::StreamAck,
                h.stream_id,
                ack.to_bytes(),
                Flags::RESPONSE,
                h.correlation_id,
            );
        }
        self.push_event(Event::Frame(frame));
    }

    fn on_pong(&mut self, frame: Frame) {
        let corr = frame.header.correlation_id;
        let Some(pings) = self.busy.as_mut().map(|b| &mut b.pings) else {
            return; // unsolicited: liveness already counted
        };
        let Some(pos) = pings.iter().position(|p| p.correlation_id == corr) else {
            return; // late or unsolicited: liveness already counted
        };
        let rec = pings.remove(pos).expect("position is in range");
        let rtt = self.now().saturating_duration_since(rec.sent);
        let srtt = match self.rtt() {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        };
        self.srtt_us = srtt.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        if rec.app {
            self.push_event(Event::Pong {
                correlation_id: corr,
                payload: frame.payload,
                rtt,
            });
        }
    }

    fn on_peer_error(&mut self, frame: &Frame) {
        self.stats.errors_rx = self.stats.errors_rx.saturating_add(1);
        let h = frame.header;
        let (code, message) = match ErrorPayload::from_bytes(&frame.payload) {
            Ok(p) => (ErrorCode(p.code), p.message),
            Err(e) => (
                ErrorCode::MALFORMED_PAYLOAD,
                format!("unreadable ERROR: {e}"),
            ),
        };
        if code.is_fatal() {
            self.discard_output();
            self.enter_closed(CloseReason::PeerError { code, message });
        } else {
            self.push_event(Event::PeerError {
                code,
                message,
                stream_id: h.stream_id,
                correlation_id: h.correlation_id,
            });
        }
    }

    fn on_peer_close(&mut self, frame: &Frame) {
        let close = Close::from_bytes(&frame.payload).unwrap_or(Close {
            code: 0,
            reason: String::new(),
        });
        if self.close_sent() {
            // Our CLOSE is out and this is the answer.
            let reason = self.local_close_reason();
            self.enter_closed(reason);
            return;
        }
        let peer_reason = CloseReason::Peer {
            code: close.code,
            reason: close.reason.clone(),
        };
        if let Some(f) = self.closing.as_mut().and_then(|c| c.final_frame.as_mut()) {
            // Both closed at once: ours is still queued; once sent, we are done.
            f.then = AfterFinal::Closed(peer_reason);
            return;
        }
        self.push_event(Event::CloseRequested {
            code: close.code,
            reason: close.reason,
        });
        if self.state != State::Established {
            self.enter_closed(peer_reason);
            return;
        }
        self.state = State::Closing;
        self.closing_mut().deadline = Some(self.now() + self.config.close_timeout);
        self.closing_mut().final_frame = Some(FinalFrame {
            header: self.control_header(MessageType::Close, 0, Flags::RESPONSE, 0),
            payload: Close {
                code: 0,
                reason: "closing".into(),
            }
            .to_bytes(),
            seal: self.protector.is_some(),
            then: AfterFinal::Closed(peer_reason),
        });
    }

    // ----- queuing helpers -------------------------------------------------------------

    fn control_header(
        &self,
        msg_type: MessageType,
        stream_id: u32,
        flags: Flags,
        corr: u32,
    ) -> Header {
        Header {
            msg_type,
            flags,
            priority: u8::MAX,
            trace_flags: 0,
            stream_id,
            length: 0,
            correlation_id: corr,
            timestamp: self.unix_time(),
        }
    }

    /// Queue a connection-generated frame in the critical queue. A full critical queue means
    /// the peer is not reading what it provokes: close it as a slow consumer.
    fn queue_control(
        &mut self,
        msg_type: MessageType,
        stream_id: u32,
        payload: Bytes,
        flags: Flags,
        corr: u32,
    ) {
        if self.state == State::Closed {
            return;
        }
        let header = self.control_header(msg_type, stream_id, flags, corr);
        let seal = self.protector.is_some();
        if self
            .busy()
            .sched
            .push(Qos::Critical, header, payload, seal)
            .is_err()
        {
            self.fatal(
                ErrorCode::SLOW_CONSUMER,
                "peer does not read the answers it provokes".into(),
                None,
            );
        }
    }

    fn queue_error(&mut self, code: ErrorCode, message: String, stream_id: u32, corr: u32) {
        self.stats.count_error_sent(code.0);
        let payload = ErrorPayload {
            code: code.0,
            message,
        }
        .to_bytes();
        self.queue_control(
            MessageType::Error,
            stream_id,
            payload,
            Flags::RESPONSE,
            corr,
        );
    }

    fn nonfatal(&mut self, code: ErrorCode, message: String, about: &Header) {
        self.queue_error(code, message, about.stream_id, about.correlation_id);
    }

    fn send_credit(&mut self, id: u32, max_data: u64) {
        let ack = StreamAck {
            max_data: Some(max_data),
            received: None,
        };
        self.queue_control(
            MessageType::StreamAck,
            id,
            ack.to_bytes(),
            Flags::empty(),
            0,
        );
    }

    fn send_reset(&mut self, id: u32, code: u16, reason: String) {
        if let Some(b) = self.busy.as_mut() {
            b.sched.purge_stream(id);
        }
        if !self.streams.reset_local(id) {
            self.fatal(
                ErrorCode::STREAM_LIMIT,
                "peer does not confirm stream resets".into(),
                None,
            );
            return;
        }
        let payload = StreamReset { code, reason }.to_bytes();
        self.queue_control(MessageType::StreamReset, id, payload, Flags::empty(), 0);
    }

    fn queue_reset_confirm(&mut self, id: u32, frame: &Frame) {
        self.queue_control(
            MessageType::StreamReset,
            id,
            frame.payload.clone(),
            Flags::RESPONSE,
            frame.header.correlation_id,
        );
    }

    /// Send ERROR with `code`, drop everything else queued, and close.
    fn fatal(&mut self, code: ErrorCode, message: String, reason: Option<CloseReason>) {
        if self.state == State::Closed {
            return;
        }
        self.stats.count_error_sent(code.0);
        self.clear_queue();
        let payload = ErrorPayload {
            code: code.0,
            message: message.clone(),
        }
        .to_bytes();
        self.closing_mut().final_frame = Some(FinalFrame {
            header: self.control_header(MessageType::Error, 0, Flags::empty(), 0),
            payload,
            seal: self.protector.is_some(),
            then: AfterFinal::Nothing,
        });
        self.enter_closed(reason.unwrap_or(CloseReason::ProtocolError { code, message }));
    }

    fn enter_closed(&mut self, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        self.state = State::Closed;
        self.pending = None;
        if let Some(c) = self.closing.as_mut() {
            c.deadline = None;
        }
        self.push_event(Event::Closed(reason));
    }
}

/// Types the connection sends itself; the application may not.
fn app_may_send(t: MessageType) -> bool {
    use MessageType::*;
    !matches!(
        t,
        Hello
            | HelloAck
            | Ping
            | Pong
            | Error
            | Close
            | StreamOpen
            | StreamAck
            | StreamReset
            | StreamClose
            | Unknown(_)
    ) && !t.is_handshake()
}

/// STREAM_OPEN, STREAM_DATA, STREAM_CLOSE, STREAM_RESET (and STREAM_ACK with credit) only
/// make sense on a stream other than 0.
fn is_stream_management(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::StreamOpen
            | MessageType::StreamData
            | MessageType::StreamClose
            | MessageType::StreamReset
    )
}

fn duration_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}
