//! The application's sends: options, refusals ([`SendError`]), and the checks every send
//! passes before a frame is queued.

use bytes::Bytes;

use super::{Connection, Phase};
use crate::error::ErrorCode;
use crate::frame::{DEFAULT_PRIORITY, Flags, HEADER_LEN, Header, MessageType, TRACE_CONTEXT_LEN};
use crate::message::MAX_PING_PAYLOAD;
use crate::streams::{Enqueued, Qos, Scheduler, StreamClass, StreamError};

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
#[non_exhaustive]
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

impl Connection {
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

    /// Whether a frame of `qos` and `size` bytes would be queued now.
    pub(super) fn has_room(&self, qos: Qos, size: usize) -> bool {
        match &self.busy {
            Some(b) => b.sched.has_room(qos, size),
            None => Scheduler::new(self.config.scheduler).has_room(qos, size),
        }
    }

    /// Drop every queued frame.
    pub(super) fn clear_queue(&mut self) {
        if let Some(b) = self.busy.as_mut() {
            b.sched.clear();
            b.answers.clear();
        }
    }

    pub(super) fn check_sendable(&self) -> Result<(), SendError> {
        match self.phase {
            Phase::Established => Ok(()),
            Phase::Closing(_) | Phase::Closed(_) => Err(SendError::Closing),
            Phase::Opening(_) => Err(SendError::NotEstablished),
        }
    }

    fn check_size(&self, len: usize) -> Result<(), SendError> {
        let overhead = self.protector.as_ref().map_or(0, |p| p.overhead());
        if len + overhead > self.peer_max_frame() as usize {
            return Err(SendError::TooLarge {
                len,
                max: self.peer_max_frame(),
            });
        }
        Ok(())
    }

    pub(super) fn next_correlation_id(&mut self) -> u32 {
        let id = self.next_correlation;
        self.next_correlation = self.next_correlation.checked_add(1).unwrap_or(1);
        id
    }
}

/// Types the connection sends itself; the application may not.
pub(super) fn app_may_send(t: MessageType) -> bool {
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
pub(super) fn is_stream_management(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::StreamOpen
            | MessageType::StreamData
            | MessageType::StreamClose
            | MessageType::StreamReset
    )
}
