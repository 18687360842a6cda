//! Per-shard counters, written only by their shard, summed on demand into the node's
//! exposition ([`NodeMetrics`], a `prometheus-client` collector).
//!
//! Each counter is an atomic that one shard increments with relaxed ordering and that the
//! gatherer only reads: no lock and no contended cache line on the hot path.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

mod exposition;
mod histogram;
mod latency;
pub mod openmetrics;

pub use exposition::NodeMetrics;

pub(crate) use histogram::{
    DurationHistogram, HandshakeHistogram, LatencyHistogram, SECURITY_LABELS, SizeHistogram,
    WindowHistogram,
};
pub(crate) use latency::LatencyTable;
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::{Flags, MessageType, Transmit};

/// Events each shard keeps for the status page.
pub(crate) const RECENT_EVENTS: usize = 32;

/// Transports counted separately.
pub(crate) const TRANSPORTS: [&str; 5] = ["tcp", "unix", "shm", "ws", "quic"];
/// The transport index of a WebSocket connection (one that was TCP or Unix until its
/// upgrade).
pub(crate) const WS: u8 = 3;
/// Priority bands of `valkyrie_messages_sent_total{priority}`.
const PRIORITIES: [&str; 4] = ["low", "normal", "high", "critical"];

fn priority_band(p: u8) -> usize {
    match p {
        0..=95 => 0,
        96..=159 => 1,
        160..=223 => 2,
        _ => 3,
    }
}

/// Counters of one shard.
#[derive(Debug)]
pub struct ShardMetrics {
    pub(crate) connections_active: [AtomicI64; 5],
    pub(crate) connections_accepted: AtomicU64,
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshake_timeouts: AtomicU64,
    pub(crate) heartbeat_timeouts: AtomicU64,
    pub(crate) slow_consumers: AtomicU64,
    pub(crate) accept_paused: AtomicU64,
    pub(crate) frames_in: [AtomicU64; 256],
    pub(crate) frames_out: [[AtomicU64; 4]; 256],
    pub(crate) bytes_in: AtomicU64,
    pub(crate) bytes_out: AtomicU64,
    /// Bytes (header + payload) of frames delivered to the service, by type.
    pub(crate) bytes_in_by_type: [AtomicU64; 256],
    /// Bytes (header + payload) of frames sent, by type.
    pub(crate) bytes_out_by_type: [AtomicU64; 256],
    pub(crate) errors_sent: [AtomicU64; 1000],
    pub(crate) mesh_full: AtomicU64,
    pub(crate) shed_frames: AtomicU64,
    /// Back-pressure: times a connection's input was held (its receive cancelled, or its
    /// shared-memory ring left unread) because its outbound queues were full, and resumed.
    pub(crate) input_holds: AtomicU64,
    pub(crate) input_resumes: AtomicU64,
    /// Receives that ended by their per-turn limit and were left unarmed while output waited
    /// behind a send in flight (the light stop of `conn::recv`).
    pub(crate) input_rests: AtomicU64,
    /// Outbound connection attempts started, and those that failed.
    pub(crate) link_attempts: AtomicU64,
    pub(crate) link_failures: AtomicU64,
    /// Requests made with `Ctx::request`, and their outcomes.
    pub(crate) requests_sent: AtomicU64,
    pub(crate) requests_answered: AtomicU64,
    pub(crate) requests_errored: AtomicU64,
    pub(crate) requests_timed_out: AtomicU64,
    pub(crate) requests_lost: AtomicU64,
    /// Answers that came after their request had timed out (dropped).
    pub(crate) requests_late: AtomicU64,
    /// Receives that found every provided receive buffer in use (`ENOBUFS`; re-armed).
    pub(crate) recv_buffer_shortages: AtomicU64,
    /// Intrusion detection: addresses throttled, addresses banned, connections refused while
    /// throttled, connections refused while banned.
    pub(crate) guard_throttles: AtomicU64,
    pub(crate) guard_bans: AtomicU64,
    pub(crate) guard_refused_throttled: AtomicU64,
    pub(crate) guard_refused_banned: AtomicU64,
    /// HTTP answers sent, by the status's hundreds digit (index 1 to 5).
    pub(crate) http_responses: [AtomicU64; 6],
    /// When the shard's loop last turned, in milliseconds since the node started
    /// (`/healthz`: a shard stuck in one turn stops moving it).
    pub(crate) last_turn_ms: AtomicU64,
    /// The shard's last few notable events (connections closed with a fault, refusals) for
    /// the status page: written only when the lock is free at once (never waited for).
    pub(crate) recent: std::sync::Mutex<std::collections::VecDeque<(u64, String)>>,
    /// Sizes of frames delivered to the service, by type.
    pub(crate) sizes: SizeHistogram,
    /// Handshake durations (accept to established), by security mode, in microseconds.
    pub(crate) handshakes: HandshakeHistogram,
    /// Connection lifetimes, by transport, in microseconds.
    pub(crate) durations: DurationHistogram,
    /// Frames received that the node refused (a zero_trust denial), by type.
    pub(crate) frames_refused: [AtomicU64; 256],
    /// Request in → answer out through the node, by the request's type, in microseconds.
    pub(crate) latency: LatencyHistogram,
    /// Open streams, by class.
    pub(crate) streams_active: [AtomicI64; 5],
    /// Receive windows granted (at a stream's open and at each credit update), by class.
    pub(crate) windows: WindowHistogram,
    /// Retries of outbound links: a connect after a failed attempt, a reconnect after an
    /// established connection was lost.
    pub(crate) retries: [AtomicU64; 2],
    /// QUIC datagrams forwarded to the shard that issued their connection id, those dropped
    /// because that shard's mesh ring was full, and Retry packets sent to unvalidated clients.
    pub(crate) quic_forwarded: AtomicU64,
    pub(crate) quic_dropped: AtomicU64,
    pub(crate) quic_retries: AtomicU64,
    /// Connections moved to shared memory (UPGRADE: segments served).
    pub(crate) upgrades: AtomicU64,
}

/// Where an answer's latency is looked up while a connection's frames are written: the
/// shard's table of arrivals, which connection, and the clock (read once, at the first answer).
pub(crate) struct Answers<'a> {
    pub(crate) table: &'a mut LatencyTable,
    /// Spans of traced requests, closed as their answers leave.
    pub(crate) spans: &'a mut crate::request_span::RequestSpans,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
    pub(crate) epoch: std::time::Instant,
    pub(crate) now_us: Option<u32>,
}

impl ShardMetrics {
    pub(crate) fn new() -> Self {
        ShardMetrics {
            connections_active: Default::default(),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            handshake_timeouts: AtomicU64::new(0),
            heartbeat_timeouts: AtomicU64::new(0),
            slow_consumers: AtomicU64::new(0),
            accept_paused: AtomicU64::new(0),
            frames_in: std::array::from_fn(|_| AtomicU64::new(0)),
            frames_out: std::array::from_fn(|_| Default::default()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            bytes_in_by_type: std::array::from_fn(|_| AtomicU64::new(0)),
            bytes_out_by_type: std::array::from_fn(|_| AtomicU64::new(0)),
            errors_sent: std::array::from_fn(|_| AtomicU64::new(0)),
            mesh_full: AtomicU64::new(0),
            shed_frames: AtomicU64::new(0),
            input_holds: AtomicU64::new(0),
            input_resumes: AtomicU64::new(0),
            input_rests: AtomicU64::new(0),
            quic_forwarded: AtomicU64::new(0),
            quic_dropped: AtomicU64::new(0),
            quic_retries: AtomicU64::new(0),
            upgrades: AtomicU64::new(0),
            recv_buffer_shortages: AtomicU64::new(0),
            link_attempts: AtomicU64::new(0),
            link_failures: AtomicU64::new(0),
            requests_sent: AtomicU64::new(0),
            requests_answered: AtomicU64::new(0),
            requests_errored: AtomicU64::new(0),
            requests_timed_out: AtomicU64::new(0),
            requests_lost: AtomicU64::new(0),
            requests_late: AtomicU64::new(0),
            guard_throttles: AtomicU64::new(0),
            guard_bans: AtomicU64::new(0),
            guard_refused_throttled: AtomicU64::new(0),
            guard_refused_banned: AtomicU64::new(0),
            http_responses: Default::default(),
            last_turn_ms: AtomicU64::new(0),
            recent: std::sync::Mutex::new(std::collections::VecDeque::new()),
            sizes: SizeHistogram::new(&histogram::SIZE_BOUNDS),
            handshakes: HandshakeHistogram::new(&histogram::DURATION_BOUNDS_US),
            durations: DurationHistogram::new(&histogram::DURATION_BOUNDS_US),
            frames_refused: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: LatencyHistogram::new(&histogram::DURATION_BOUNDS_US),
            streams_active: Default::default(),
            windows: WindowHistogram::new(&histogram::SIZE_BOUNDS),
            retries: Default::default(),
        }
    }

    /// Note an event for the status page (at `ms` since the node started); dropped when a
    /// reader holds the list at that moment. At most [`RECENT_EVENTS`] are kept.
    pub(crate) fn note(&self, ms: u64, what: String) {
        if let Ok(mut r) = self.recent.try_lock() {
            if r.len() >= RECENT_EVENTS {
                r.pop_front();
            }
            r.push_back((ms, what));
        }
    }

    /// A frame delivered to the service: counted by type, its bytes, its size.
    #[inline]
    pub(crate) fn frame_in(&self, header: &valkyrie_protocol::Header, payload: usize) {
        let t = header.msg_type.to_u8();
        let bytes = 24 + payload as u64;
        Self::add(&self.frames_in[t as usize], 1);
        Self::add(&self.bytes_in_by_type[t as usize], bytes);
        self.sizes.observe(t as usize, bytes);
    }

    #[inline]
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    #[inline]
    pub(crate) fn frame_out(&self, header: &[u8; 24]) {
        Self::add(
            &self.frames_out[header[3] as usize][priority_band(header[5])],
            1,
        );
        let len = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
        Self::add(
            &self.bytes_out_by_type[header[3] as usize],
            24 + u64::from(len),
        );
    }

    /// A frame taken from a connection's queue to be sent: counted by type and priority
    /// (and by code for an ERROR); an answer (RESPONSE set, or an ERROR, with a correlation
    /// id) is timed against its request's arrival.
    #[inline]
    pub(crate) fn transmitted(&self, t: &Transmit, answers: &mut Answers<'_>) {
        self.frame_out(&t.header);
        let is_error = t.header[3] == MessageType::Error.to_u8();
        if is_error && let Ok(e) = ErrorPayload::from_bytes(&t.payload) {
            self.error_sent(e.code, 1);
        }
        if t.header[4] & Flags::RESPONSE.bits() == 0 && !is_error {
            return;
        }
        let corr = u32::from_be_bytes([t.header[16], t.header[17], t.header[18], t.header[19]]);
        if corr == 0 {
            return;
        }
        let (slot, generation) = (answers.slot, answers.generation);
        answers.spans.answered(slot, generation, corr, is_error);
        if let Some((msg_type, at_us)) = answers.table.answer_out(slot, generation, corr) {
            let epoch = answers.epoch;
            let now = *answers.now_us.get_or_insert_with(|| {
                std::time::Instant::now()
                    .saturating_duration_since(epoch)
                    .as_micros() as u32
            });
            self.latency
                .observe(msg_type as usize, u64::from(now.wrapping_sub(at_us)));
        }
    }

    /// `n` PONGs of `bytes` in all, answered in place (stream 0, priority 255).
    pub(crate) fn pongs_out(&self, n: u64, bytes: u64) {
        let t = MessageType::Pong.to_u8() as usize;
        Self::add(&self.frames_out[t][priority_band(u8::MAX)], n);
        Self::add(&self.bytes_out_by_type[t], bytes);
    }

    pub(crate) fn error_sent(&self, code: u16, n: u64) {
        if let Some(c) = self.errors_sent.get(code as usize) {
            Self::add(c, n);
        }
    }

    /// Connections open on this shard now.
    pub fn connections(&self) -> i64 {
        self.connections_active
            .iter()
            .map(|a| a.load(Relaxed))
            .sum()
    }

    /// Connections refused at the limit (ERROR 501) so far.
    pub fn refused(&self) -> u64 {
        self.connections_refused.load(Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.connections_accepted.load(Relaxed)
    }

    /// Connections closed because HELLO or the handshake did not finish in time.
    pub fn handshake_timeouts(&self) -> u64 {
        self.handshake_timeouts.load(Relaxed)
    }

    /// Connections closed for missed heartbeats.
    pub fn heartbeat_timeouts(&self) -> u64 {
        self.heartbeat_timeouts.load(Relaxed)
    }

    /// Connections closed as slow consumers.
    pub fn slow_consumers(&self) -> u64 {
        self.slow_consumers.load(Relaxed)
    }

    /// Times a connection's input was held back because its outbound queues were full
    /// (back-pressure: the peer provokes answers faster than it reads them).
    pub fn input_holds(&self) -> u64 {
        self.input_holds.load(Relaxed)
    }

    /// Times a connection's receive, having ended by its per-turn limit, was left unarmed
    /// until its send in flight was done (output waited: the light form of back-pressure).
    pub fn input_rests(&self) -> u64 {
        self.input_rests.load(Relaxed)
    }

    /// QUIC datagrams this shard received for a connection of another shard and forwarded
    /// to it (a client whose address changed, which the kernel hashed elsewhere).
    pub fn quic_forwarded(&self) -> u64 {
        self.quic_forwarded.load(Relaxed)
    }

    /// Retry packets sent to clients whose address was not validated (many handshakes
    /// half-open).
    pub fn quic_retries(&self) -> u64 {
        self.quic_retries.load(Relaxed)
    }

    /// Connections this shard moved to shared memory (UPGRADE).
    pub fn upgrades(&self) -> u64 {
        self.upgrades.load(Relaxed)
    }

    /// Times a held connection's input was resumed.
    pub fn input_resumes(&self) -> u64 {
        self.input_resumes.load(Relaxed)
    }

    /// Receives that found every provided receive buffer of the shard in use: the receive
    /// was armed again. If this grows, raise `NodeConfig::recv_buffers`.
    pub fn recv_buffer_shortages(&self) -> u64 {
        self.recv_buffer_shortages.load(Relaxed)
    }

    /// Outbound connection attempts started by links.
    pub fn link_attempts(&self) -> u64 {
        self.link_attempts.load(Relaxed)
    }

    /// Outbound connection attempts that failed (connect, handshake or time).
    pub fn link_failures(&self) -> u64 {
        self.link_failures.load(Relaxed)
    }

    /// Requests made with `Ctx::request`.
    pub fn requests_sent(&self) -> u64 {
        self.requests_sent.load(Relaxed)
    }

    /// Requests answered, answered with an ERROR, timed out, and lost with their connection.
    pub fn request_outcomes(&self) -> [u64; 4] {
        [
            self.requests_answered.load(Relaxed),
            self.requests_errored.load(Relaxed),
            self.requests_timed_out.load(Relaxed),
            self.requests_lost.load(Relaxed),
        ]
    }

    /// Answers that came after their request had timed out (dropped).
    pub fn late_answers(&self) -> u64 {
        self.requests_late.load(Relaxed)
    }

    /// Times the shard paused accepting because its direct-descriptor table was nearly full.
    pub fn accept_pauses(&self) -> u64 {
        self.accept_paused.load(Relaxed)
    }

    /// Frames received of type `t`.
    pub fn frames_in(&self, t: MessageType) -> u64 {
        self.frames_in[t.to_u8() as usize].load(Relaxed)
    }

    /// ERROR frames sent with `code`.
    pub fn errors_sent(&self, code: u16) -> u64 {
        self.errors_sent
            .get(code as usize)
            .map_or(0, |c| c.load(Relaxed))
    }
}
