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
//!
//! Where things live: this file holds the struct, its [`Phase`] and the routing of
//! `handle_*` / `poll_*`; `handshake.rs` HELLO and the security slot, `receive.rs` the frames
//! of an established connection, `send.rs` the application's sends, `streams.rs` stream
//! frames and credit, `heartbeat.rs` PING/PONG and liveness, `timer.rs` the table of named
//! timers, `close.rs` CLOSE, fatal errors and the final frame, `transmit.rs` the outbound
//! path, `stats.rs` the counters, `event.rs` what the driver is told.

mod close;
mod config;
mod event;
mod handshake;
mod heartbeat;
mod negotiate;
mod pong;
mod receive;
mod send;
mod stats;
mod streams;
mod timer;
#[cfg(feature = "mtls")]
mod tls;
mod transmit;
mod upgrade;

pub use config::{Config, ConfigError, MIN_MAX_FRAME};
pub use event::{CloseReason, Event, PeerInfo};
pub use send::{SendError, SendOptions};
pub use stats::ConnectionStats;
pub use transmit::Transmit;
pub use upgrade::{UpgradeKind, is_upgrade_fence};

/// Kept here for the paths that named it before it moved to the crate root.
pub use crate::Side;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Tick;
use crate::codec::Decoder;
use crate::message::{Hello, Payload};
use crate::security::RecordProtector;
use crate::streams::{Scheduler, Streams};
use crate::{MAX_FRAME_LIMIT, MessageType};
use close::{Closed, Closing};
use handshake::{Opening, Step};
use heartbeat::PingRecord;
use stats::Counters;

/// Undecoded input a connection whose decoding is held back (see
/// [`Connection::wants_input`]) accepts before it asks the transport to stop reading.
pub const HELD_INPUT_BYTES: usize = 64 * 1024;

/// Where the connection stands (a view of its [`Phase`] for callers).
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

/// The phase of a connection, each with the data only it needs (boxed: an established
/// connection pays for none of it).
enum Phase {
    /// HELLO, HELLO_ACK and the security handshake: the pending handshake and its deadline.
    Opening(Box<Opening>),
    /// Application frames flow.
    Established,
    /// A graceful close drains: its deadline, our CLOSE and what follows it.
    Closing(Box<Closing>),
    /// Ended: at most the final frame (a fatal ERROR) is left to transmit.
    Closed(Closed),
}

/// What a connection holds only while it has traffic in hand.
#[derive(Debug)]
struct Busy {
    decoder: Decoder,
    sched: Scheduler,
    events: VecDeque<Event>,
    pings: VecDeque<PingRecord>,
    /// Decoding stopped at the scheduler's high-water mark, until it is back at its low one.
    input_held: bool,
    /// PONGs answered in place, written ahead of the queues.
    answers: pong::Answers,
}

impl Busy {
    /// Nothing buffered, queued, pending or outstanding (and no decode error to report).
    fn is_idle(&self) -> bool {
        self.decoder.buffered() == 0
            && !self.decoder.is_failed()
            && self.sched.is_empty()
            && self.answers.frames == 0
            && self.events.is_empty()
            && self.pings.is_empty()
    }
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
    phase: Phase,
    /// Receive buffer, outbound queues, events and outstanding PINGs: allocated while the
    /// connection has traffic in hand and released by [`Connection::shrink_buffers`] once all
    /// of it is empty (an idle connection pays 8 bytes for them).
    busy: Option<Box<Busy>>,
    /// Frames and bytes shed by the scheduler in earlier busy periods.
    shed: (u64, u64),
    streams: Streams,
    /// The ticks below count from this instant.
    base_instant: Instant,
    base_unix: u32,
    /// The latest time passed in.
    now: Tick,
    peer: Option<PeerInfo>,
    last_rx: Tick,
    last_tx: Tick,
    last_ping: Tick,
    missed: u32,
    /// Smoothed round-trip time in microseconds (0: not measured yet).
    srtt_us: u32,
    next_correlation: u32,
    protector: Option<Box<dyn RecordProtector>>,
    stats: Counters,
    /// The capabilities agreed in NEGOTIATE, and whether it happened (`negotiate.rs`); and
    /// [`EARLY_DATA`]: input arrives as early data (QUIC 0-RTT) that could be replayed, so
    /// only HELLO, PING and HEALTH_CHECK are taken (in this word: the struct's size is
    /// what an idle connection costs).
    features: u32,
}

/// The bit of `Connection::features` that says input is early data (`receive.rs`).
pub(super) const EARLY_DATA: u32 = 1 << 30;

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("side", &self.side)
            .field("state", &self.state())
            .field("peer", &self.peer)
            .field("streams", &self.streams.len())
            .field("queued", &self.sched_len())
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// A new connection. `now` and `unix_secs` (the wall clock at `now`, Unix seconds) anchor
    /// the header timestamps; no clock is read afterwards. A client queues its HELLO at once.
    ///
    /// A client offers the modes of `config.security` as they are: check the configuration
    /// with [`Config::validate`] first (the runtime's builders do), so that it does not offer
    /// a mode it has no provider for.
    pub fn new(side: Side, config: Arc<Config>, now: Instant, unix_secs: u64) -> Self {
        let streams = Streams::new(side, config.max_streams, config.window);
        let step = match side {
            Side::Client => Step::AwaitingHelloAck,
            Side::Server => Step::AwaitingHello,
        };
        let mut conn = Connection {
            side,
            phase: Phase::Opening(Box::new(Opening::new(
                step,
                Tick::ZERO + config.handshake_timeout,
            ))),
            busy: None,
            shed: (0, 0),
            streams,
            base_instant: now,
            now: Tick::ZERO,
            base_unix: unix_secs.min(u64::from(u32::MAX)) as u32,
            peer: None,
            last_rx: Tick::ZERO,
            last_tx: Tick::ZERO,
            last_ping: Tick::ZERO,
            missed: 0,
            srtt_us: 0,
            next_correlation: 1,
            protector: None,
            stats: Counters::default(),
            features: 0,
            config,
        };
        if side == Side::Client {
            let hello = Hello {
                stream_window: Some(conn.config.window.initial()),
                max_streams: Some(conn.config.max_streams),
                host: conn.config.host.clone(),
                quic_streams: conn.config.quic_streams,
                ..Hello::new(
                    conn.config.node_id.clone(),
                    conn.config.security.clone(),
                    conn.config.max_frame.min(MAX_FRAME_LIMIT),
                    duration_ms(conn.config.heartbeat),
                )
            }
            .to_bytes();
            if let Some(o) = conn.opening_mut() {
                o.hello_transcript = Some(hello.to_vec());
            }
            conn.queue_control(MessageType::Hello, 0, hello, crate::Flags::empty(), 0);
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
        match &self.phase {
            Phase::Opening(o) => match o.step {
                Step::AwaitingHello => State::AwaitingHello,
                Step::AwaitingHelloAck => State::AwaitingHelloAck,
                Step::Handshaking => State::Handshaking,
            },
            Phase::Established => State::Established,
            Phase::Closing(_) => State::Closing,
            Phase::Closed(_) => State::Closed,
        }
    }

    /// When the connection was created (the `now` given to [`Connection::new`]).
    pub fn created_at(&self) -> Instant {
        self.base_instant
    }

    /// True once application frames may flow.
    pub fn is_established(&self) -> bool {
        matches!(self.phase, Phase::Established)
    }

    /// True once the connection has ended (frames may still wait in [`Connection::poll_transmit`]).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed(_))
    }

    /// True when the connection has ended and everything has been transmitted: close the
    /// transport now.
    pub fn is_drained(&self) -> bool {
        matches!(&self.phase, Phase::Closed(c) if c.final_frame.is_none()) && self.sched_len() == 0
    }

    /// The largest payload the peer accepts: what it said in HELLO / HELLO_ACK, the
    /// smallest any peer may say until then.
    fn peer_max_frame(&self) -> u32 {
        self.peer.as_ref().map_or(MIN_MAX_FRAME, |p| p.max_frame)
    }

    /// What was agreed with the peer, once connected.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.peer.as_ref()
    }

    /// Bytes fed but not yet decoded. A transport should stop reading while this is above
    /// its budget (at most one `max_frame` plus one read is ever needed).
    pub fn buffered_input(&self) -> usize {
        self.busy.as_ref().map_or(0, |b| b.decoder.buffered())
    }

    /// Whether the transport should keep reading. False while the outbound queues are past
    /// their high-water mark (decoding has stopped: the peer provokes answers faster than it
    /// reads them) and at least [`HELD_INPUT_BYTES`] wait undecoded: stop reading, leave the
    /// bytes in the kernel so that flow control slows the peer, and read again once this turns
    /// true after [`Connection::poll_transmit`] has drained the queues. A peer that never reads
    /// is then left to the transport's slow-consumer timeout. Nothing is dropped or closed.
    pub fn wants_input(&self) -> bool {
        !(self.is_input_held() && self.buffered_input() >= HELD_INPUT_BYTES)
    }

    /// Whether decoding is held back by a full outbound queue (see
    /// [`Connection::wants_input`]); false again as soon as the queue is drained to its
    /// low-water mark.
    pub fn is_input_held(&self) -> bool {
        self.busy
            .as_ref()
            .is_some_and(|b| b.input_held && !b.is_low())
    }

    /// Bytes (headers included) waiting to be transmitted: queued frames and PONGs answered
    /// in place. A transport may stop reading while many wait behind a send in flight.
    pub fn queued_bytes(&self) -> usize {
        self.busy
            .as_ref()
            .map_or(0, |b| b.sched.total_bytes() + b.answers.bytes.len())
    }

    /// Frames waiting to be transmitted.
    pub fn queued_frames(&self) -> usize {
        self.sched_len() + usize::from(self.has_final_frame())
    }

    /// Header timestamp (Unix seconds) at the last time passed in.
    pub fn unix_time(&self) -> u32 {
        let elapsed = self.now.as_nanos() / 1_000_000_000;
        (u64::from(self.base_unix).saturating_add(elapsed)).min(u64::from(u32::MAX)) as u32
    }

    // ----- buffers -----------------------------------------------------------------------

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
        b.answers.shrink();
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
                input_held: false,
                answers: pong::Answers::default(),
            })
        })
    }

    fn push_event(&mut self, event: Event) {
        self.busy().events.push_back(event);
    }

    fn sched_len(&self) -> usize {
        self.busy
            .as_ref()
            .map_or(0, |b| b.sched.len() + b.answers.frames as usize)
    }

    // ----- input -----------------------------------------------------------------------

    /// Feed bytes received from the transport. Nothing is decoded until
    /// [`Connection::poll_event`] is called, except plain PINGs at the front of `data` while
    /// nothing earlier waits: those are answered from `data` at once (see
    /// [`Connection::write_answers`]), without being copied into the receive buffer.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        self.advance(now);
        if data.is_empty() || self.is_closed() {
            return;
        }
        self.stats.bytes_rx += data.len() as u64;
        self.last_rx = self.tick(now);
        self.missed = 0;
        self.busy();
        let rest = self.answer_input(data);
        if !rest.is_empty() {
            self.busy().decoder.feed(rest);
        }
    }

    /// The transport reached end of file or failed.
    pub fn handle_eof(&mut self, now: Instant) {
        self.advance(now);
        if self.is_closed() {
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
            if matches!(self.phase, Phase::Closed(_)) {
                return None;
            }
            // Back-pressure: no new frame is decoded (and so answered) while the outbound
            // queues are past their high-water mark; decoding resumes at the low-water mark.
            if b.input_held {
                if !b.is_low() {
                    return None;
                }
                b.input_held = false;
            } else if b.is_high() {
                b.input_held = true;
                return None;
            }
            if self.answer_buffered_pings() {
                continue;
            }
            let b = self.busy.as_mut()?;
            match b.decoder.decode() {
                Ok(Some(frame)) => self.on_frame(frame),
                Ok(None) => return None,
                Err(e) => self.fatal(e.code(), e.to_string(), None),
            }
        }
    }

    // ----- time --------------------------------------------------------------------------

    fn advance(&mut self, now: Instant) {
        self.now = self.now.max(self.tick(now));
    }

    /// `t` as a tick of this connection.
    fn tick(&self, t: Instant) -> Tick {
        Tick::since(self.base_instant, t)
    }

    /// The instant of a tick of this connection.
    fn at(&self, tick: Tick) -> Instant {
        tick.at(self.base_instant)
    }

    /// The latest time passed in.
    fn now(&self) -> Instant {
        self.at(self.now)
    }
}

fn duration_ms(d: Duration) -> u32 {
    d.as_millis().min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_connection_stays_small() {
        // The runtime holds one per connection: an idle one is its fixed state only.
        let size = std::mem::size_of::<Connection>();
        assert!(size <= 328, "Connection grew to {size} bytes");
    }
}
