//! The 24-byte frame header, message types, flags and the frame itself.
//!
//! ```text
//! offset size field
//!  0     2    magic          0x52 0x43 ("RC")
//!  2     1    version        2
//!  3     1    type           MessageType
//!  4     1    flags          Flags (bits 6-7 reserved, must be 0)
//!  5     1    priority       0-255, higher is more urgent, default 128
//!  6     1    trace flags    W3C trace-flags byte
//!  7     1    reserved       must be 0
//!  8     4    stream id
//! 12     4    length         payload bytes
//! 16     4    correlation id
//! 20     4    timestamp      sender's clock, Unix epoch seconds
//! ```
//!
//! All integers are big-endian.

use bytes::{BufMut, Bytes};

use crate::error::ErrorCode;

/// The two magic bytes every frame starts with: `"RC"`.
pub const MAGIC: [u8; 2] = [0x52, 0x43];
/// The protocol version this crate speaks.
pub const VERSION: u8 = 2;
/// Size of the fixed frame header in bytes.
pub const HEADER_LEN: usize = 24;
/// The absolute ceiling on a frame's payload length (64 MiB); HELLO may agree on less.
pub const MAX_FRAME_LIMIT: u32 = 64 * 1024 * 1024;
/// The priority a frame carries when the sender does not choose one.
pub const DEFAULT_PRIORITY: u8 = 128;
/// Size of the trace context that starts the payload when [`Flags::TRACE`] is set.
pub const TRACE_CONTEXT_LEN: usize = 24;

bitflags::bitflags! {
    /// The flags byte (offset 4) of the header.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    pub struct Flags: u8 {
        /// The sender asks for an acknowledgement (answered with STREAM_ACK).
        const ACK = 1 << 0;
        /// End of stream: the last frame the sender sends on this stream.
        const EOS = 1 << 1;
        /// The payload is compressed with the algorithm agreed in HELLO.
        const CMP = 1 << 2;
        /// The payload starts with a 24-byte trace context (16-byte trace id, 8-byte span id).
        const TRACE = 1 << 3;
        /// This frame answers the frame with the same correlation id.
        const RESPONSE = 1 << 4;
        /// A fragment: more fragments of the same message follow.
        const MORE = 1 << 5;
    }
}

impl Flags {
    /// Bits 6 and 7, which must be zero on the wire.
    pub const RESERVED_MASK: u8 = 0b1100_0000;
}

macro_rules! message_types {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $wire:literal; )*) => {
        /// The message type (header offset 3).
        ///
        /// Values outside the table are kept as [`MessageType::Unknown`] so that a receiver can
        /// answer them with error 103 and carry on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum MessageType {
            $( $(#[$doc])* $name, )*
            /// A value this implementation does not know.
            Unknown(u8),
        }

        impl MessageType {
            /// Every known message type, in wire order.
            pub const ALL: &'static [MessageType] = &[$(MessageType::$name),*];

            /// The type for a wire byte; unknown values are kept.
            #[inline]
            pub const fn from_u8(value: u8) -> Self {
                match value {
                    $( $value => MessageType::$name, )*
                    other => MessageType::Unknown(other),
                }
            }

            /// The wire byte of this type.
            #[inline]
            pub const fn to_u8(self) -> u8 {
                match self {
                    $( MessageType::$name => $value, )*
                    MessageType::Unknown(other) => other,
                }
            }

            /// The SPEC's upper-case name (`"HELLO_ACK"`), or `"UNKNOWN"`.
            pub const fn name(self) -> &'static str {
                match self {
                    $( MessageType::$name => $wire, )*
                    MessageType::Unknown(_) => "UNKNOWN",
                }
            }

            /// The type with this SPEC name (`"JOB_REQUEST"`), case-sensitive.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $wire => Some(MessageType::$name), )*
                    _ => None,
                }
            }
        }
    };
}

message_types! {
    /// Connection opening, sent first by the connecting side.
    Hello = 0x00, "HELLO";
    /// The accepting side's answer to HELLO.
    HelloAck = 0x01, "HELLO_ACK";
    /// Liveness probe; answered by PONG with the same payload.
    Ping = 0x02, "PING";
    /// Answer to PING.
    Pong = 0x03, "PONG";
    /// An error report.
    Error = 0x04, "ERROR";
    /// Graceful close.
    Close = 0x05, "CLOSE";
    /// Request to move the connection to another transport or protocol.
    Upgrade = 0x06, "UPGRADE";
    /// Capability negotiation after establishment.
    Negotiate = 0x07, "NEGOTIATE";
    /// Security handshake: challenge.
    AuthChallenge = 0x10, "AUTH_CHALLENGE";
    /// Security handshake: response to a challenge.
    AuthResponse = 0x11, "AUTH_RESPONSE";
    /// Security handshake: success.
    AuthSuccess = 0x12, "AUTH_SUCCESS";
    /// Security handshake: failure.
    AuthFailure = 0x13, "AUTH_FAILURE";
    /// Security handshake: key-exchange message.
    KeyExchange = 0x14, "KEY_EXCHANGE";
    /// Security handshake: certificate request.
    CertRequest = 0x15, "CERT_REQUEST";
    /// A job offered to an agent.
    JobRequest = 0x20, "JOB_REQUEST";
    /// The agent accepts a job.
    JobAccept = 0x21, "JOB_ACCEPT";
    /// The agent rejects a job.
    JobReject = 0x22, "JOB_REJECT";
    /// A job started running.
    JobStart = 0x23, "JOB_START";
    /// Progress of a running job.
    JobProgress = 0x24, "JOB_PROGRESS";
    /// A job finished.
    JobComplete = 0x25, "JOB_COMPLETE";
    /// A job failed.
    JobFailed = 0x26, "JOB_FAILED";
    /// Cancel a job.
    JobCancel = 0x27, "JOB_CANCEL";
    /// Move a job to another node.
    JobMigrate = 0x28, "JOB_MIGRATE";
    /// Pause a job.
    JobPause = 0x29, "JOB_PAUSE";
    /// Resume a paused job.
    JobResume = 0x2A, "JOB_RESUME";
    /// Open a stream explicitly, with metadata and a receive window.
    StreamOpen = 0x30, "STREAM_OPEN";
    /// Raw stream data.
    StreamData = 0x31, "STREAM_DATA";
    /// Close the sender's half of a stream.
    StreamClose = 0x32, "STREAM_CLOSE";
    /// Acknowledgement and flow-control credit.
    StreamAck = 0x33, "STREAM_ACK";
    /// Abort a stream in both directions.
    StreamReset = 0x34, "STREAM_RESET";
    /// A file transfer begins.
    FileTransferStart = 0x35, "FILE_TRANSFER_START";
    /// A chunk of a file.
    FileTransferChunk = 0x36, "FILE_TRANSFER_CHUNK";
    /// A file transfer ended.
    FileTransferComplete = 0x37, "FILE_TRANSFER_COMPLETE";
    /// A batch of metrics.
    MetricsReport = 0x40, "METRICS_REPORT";
    /// A log line.
    LogEntry = 0x41, "LOG_ENTRY";
    /// A finished trace span.
    TraceSpan = 0x42, "TRACE_SPAN";
    /// A health probe or its answer.
    HealthCheck = 0x43, "HEALTH_CHECK";
    /// A node's status.
    StatusUpdate = 0x44, "STATUS_UPDATE";
    /// An alert.
    AlertNotification = 0x45, "ALERT_NOTIFICATION";
}

impl MessageType {
    /// True for a type from the SPEC's table.
    #[inline]
    pub const fn is_known(self) -> bool {
        !matches!(self, MessageType::Unknown(_))
    }

    /// True for the frames a security handshake is made of (`0x10`–`0x15`).
    #[inline]
    pub const fn is_handshake(self) -> bool {
        matches!(self.to_u8(), 0x10..=0x15) && self.is_known()
    }
}

impl std::fmt::Display for MessageType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MessageType::Unknown(v) => write!(f, "UNKNOWN(0x{v:02X})"),
            known => f.write_str(known.name()),
        }
    }
}

/// A header that failed validation. Every variant is fatal: the receiver answers with ERROR
/// carrying [`HeaderError::code`] and closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// The first two bytes are not `"RC"` (100).
    #[error("bad magic {0:02X?}, expected 52 43")]
    BadMagic([u8; 2]),
    /// The version byte is not 2 (101).
    #[error("unsupported protocol version {0}")]
    UnsupportedVersion(u8),
    /// Flag bits 6-7 or the reserved byte are not zero (105).
    #[error("reserved bits set (flags 0x{flags:02X}, reserved byte 0x{reserved:02X})")]
    ReservedBits {
        /// The flags byte as received.
        flags: u8,
        /// The reserved byte as received.
        reserved: u8,
    },
    /// The length field is over the agreed limit (102).
    #[error("frame of {length} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The payload length the header claims.
        length: u32,
        /// The limit in force.
        max: u32,
    },
}

impl HeaderError {
    /// The SPEC error code that answers this fault.
    pub const fn code(&self) -> ErrorCode {
        match self {
            HeaderError::BadMagic(_) => ErrorCode::BAD_MAGIC,
            HeaderError::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            HeaderError::ReservedBits { .. } => ErrorCode::RESERVED_BITS,
            HeaderError::FrameTooLarge { .. } => ErrorCode::FRAME_TOO_LARGE,
        }
    }
}

/// The decoded 24-byte header. Magic, version and the reserved byte are implicit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Header {
    /// Message type.
    pub msg_type: MessageType,
    /// Flags.
    pub flags: Flags,
    /// Priority, higher is more urgent.
    pub priority: u8,
    /// W3C trace-flags byte (bit 0 = sampled).
    pub trace_flags: u8,
    /// Stream id; 0 is connection control.
    pub stream_id: u32,
    /// Payload length in bytes.
    pub length: u32,
    /// Correlation id; 0 means none.
    pub correlation_id: u32,
    /// Sender's clock in Unix epoch seconds.
    pub timestamp: u32,
}

impl Header {
    /// A header with default priority and no flags, correlation or timestamp.
    pub const fn new(msg_type: MessageType, stream_id: u32, length: u32) -> Self {
        Header {
            msg_type,
            flags: Flags::empty(),
            priority: DEFAULT_PRIORITY,
            trace_flags: 0,
            stream_id,
            length,
            correlation_id: 0,
            timestamp: 0,
        }
    }

    /// The header as its 24 wire bytes.
    #[inline]
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0] = MAGIC[0];
        b[1] = MAGIC[1];
        b[2] = VERSION;
        b[3] = self.msg_type.to_u8();
        b[4] = self.flags.bits();
        b[5] = self.priority;
        b[6] = self.trace_flags;
        b[7] = 0;
        b[8..12].copy_from_slice(&self.stream_id.to_be_bytes());
        b[12..16].copy_from_slice(&self.length.to_be_bytes());
        b[16..20].copy_from_slice(&self.correlation_id.to_be_bytes());
        b[20..24].copy_from_slice(&self.timestamp.to_be_bytes());
        b
    }

    /// Append the 24 header bytes to `buf`.
    #[inline]
    pub fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        buf.put_slice(&self.to_bytes());
    }

    /// Decode and validate a header against `max_frame` (the agreed payload limit, itself
    /// capped at [`MAX_FRAME_LIMIT`]). Checks run in wire order: magic, version, reserved
    /// bits, length. An unknown message type is not an error here: see [`MessageType::Unknown`].
    #[inline]
    pub fn decode(bytes: &[u8; HEADER_LEN], max_frame: u32) -> Result<Header, HeaderError> {
        if bytes[0] != MAGIC[0] || bytes[1] != MAGIC[1] {
            return Err(HeaderError::BadMagic([bytes[0], bytes[1]]));
        }
        if bytes[2] != VERSION {
            return Err(HeaderError::UnsupportedVersion(bytes[2]));
        }
        if bytes[4] & Flags::RESERVED_MASK != 0 || bytes[7] != 0 {
            return Err(HeaderError::ReservedBits {
                flags: bytes[4],
                reserved: bytes[7],
            });
        }
        let length = u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
        let max = max_frame.min(MAX_FRAME_LIMIT);
        if length > max {
            return Err(HeaderError::FrameTooLarge { length, max });
        }
        Ok(Header {
            msg_type: MessageType::from_u8(bytes[3]),
            flags: Flags::from_bits_retain(bytes[4]),
            priority: bytes[5],
            trace_flags: bytes[6],
            stream_id: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            length,
            correlation_id: u32::from_be_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]),
            timestamp: u32::from_be_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]),
        })
    }

    /// Decode a header from the start of `bytes`; `None` when fewer than 24 bytes are given.
    pub fn decode_prefix(bytes: &[u8], max_frame: u32) -> Option<Result<Header, HeaderError>> {
        let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Header::decode(head, max_frame))
    }
}

/// W3C-style trace context carried at the start of a payload when [`Flags::TRACE`] is set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TraceContext {
    /// 16-byte trace id.
    pub trace_id: [u8; 16],
    /// 8-byte span id of the sending span.
    pub span_id: [u8; 8],
}

impl TraceContext {
    /// The context as its 24 wire bytes.
    pub fn to_bytes(&self) -> [u8; TRACE_CONTEXT_LEN] {
        let mut b = [0u8; TRACE_CONTEXT_LEN];
        b[..16].copy_from_slice(&self.trace_id);
        b[16..].copy_from_slice(&self.span_id);
        b
    }

    /// Parse the first 24 bytes of `bytes`; `None` when too short.
    pub fn from_prefix(bytes: &[u8]) -> Option<Self> {
        let b = bytes.get(..TRACE_CONTEXT_LEN)?;
        let mut ctx = TraceContext::default();
        ctx.trace_id.copy_from_slice(&b[..16]);
        ctx.span_id.copy_from_slice(&b[16..]);
        Some(ctx)
    }
}

/// A whole frame: header plus payload. The payload shares the receive buffer (no copy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The header; `header.length` equals `payload.len()` for frames built by this crate.
    pub header: Header,
    /// The payload bytes (including the trace context when [`Flags::TRACE`] is set).
    pub payload: Bytes,
}

impl Frame {
    /// A frame of `msg_type` on `stream_id` with `payload`; the length field is set from it.
    ///
    /// # Panics
    /// When `payload` is longer than `u32::MAX` bytes (a local programming error, never peer input).
    pub fn new(msg_type: MessageType, stream_id: u32, payload: impl Into<Bytes>) -> Self {
        let payload = payload.into();
        let length = u32::try_from(payload.len()).expect("payload longer than u32::MAX");
        Frame {
            header: Header::new(msg_type, stream_id, length),
            payload,
        }
    }

    /// Builder-style: set the flags.
    pub fn with_flags(mut self, flags: Flags) -> Self {
        self.header.flags = flags;
        self
    }

    /// Builder-style: set the correlation id.
    pub fn with_correlation(mut self, correlation_id: u32) -> Self {
        self.header.correlation_id = correlation_id;
        self
    }

    /// Builder-style: set the priority.
    pub fn with_priority(mut self, priority: u8) -> Self {
        self.header.priority = priority;
        self
    }

    /// Builder-style: set the timestamp (Unix epoch seconds).
    pub fn with_timestamp(mut self, timestamp: u32) -> Self {
        self.header.timestamp = timestamp;
        self
    }

    /// The message type.
    #[inline]
    pub fn msg_type(&self) -> MessageType {
        self.header.msg_type
    }

    /// The stream id.
    #[inline]
    pub fn stream_id(&self) -> u32 {
        self.header.stream_id
    }

    /// Encoded size: header plus payload.
    #[inline]
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Append header and payload to `buf`. The length field written is `payload.len()`.
    #[inline]
    pub fn encode<B: BufMut + ?Sized>(&self, buf: &mut B) {
        let mut header = self.header;
        header.length = self.payload.len() as u32;
        header.encode(buf);
        buf.put_slice(&self.payload);
    }

    /// Take one whole frame off the front of `buf` without copying: the payload is a slice
    /// of `buf`'s allocation. `Ok(None)` (and `buf` untouched) when `buf` does not yet hold a
    /// whole frame. For byte streams that arrive in arbitrary pieces use the streaming
    /// decoder of the `codec` module instead.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use valkyrie_protocol::{Frame, MessageType};
    ///
    /// let mut wire = Vec::new();
    /// Frame::new(MessageType::StreamData, 1001, &b"abc"[..]).encode(&mut wire);
    /// let mut buf = Bytes::from(wire);
    /// let f = Frame::decode(&mut buf, 1024).unwrap().unwrap();
    /// assert_eq!(&f.payload[..], b"abc");
    /// assert!(buf.is_empty());
    /// ```
    pub fn decode(buf: &mut Bytes, max_frame: u32) -> Result<Option<Frame>, HeaderError> {
        let Some(header) = Header::decode_prefix(buf, max_frame) else {
            return Ok(None);
        };
        let header = header?;
        let end = HEADER_LEN + header.length as usize;
        if buf.len() < end {
            return Ok(None);
        }
        let mut frame = buf.split_to(end);
        let payload = frame.split_off(HEADER_LEN);
        Ok(Some(Frame { header, payload }))
    }

    /// The trace context when [`Flags::TRACE`] is set and the payload is long enough.
    pub fn trace_context(&self) -> Option<TraceContext> {
        if self.header.flags.contains(Flags::TRACE) {
            TraceContext::from_prefix(&self.payload)
        } else {
            None
        }
    }

    /// The payload after the trace context (the whole payload when [`Flags::TRACE`] is clear).
    /// `None` when TRACE is set but the payload is shorter than 24 bytes (error 104).
    pub fn body(&self) -> Option<Bytes> {
        if self.header.flags.contains(Flags::TRACE) {
            (self.payload.len() >= TRACE_CONTEXT_LEN)
                .then(|| self.payload.slice(TRACE_CONTEXT_LEN..))
        } else {
            Some(self.payload.clone())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_type_round_trips_through_its_byte_and_name() {
        assert_eq!(MessageType::ALL.len(), 39);
        for &t in MessageType::ALL {
            assert_eq!(MessageType::from_u8(t.to_u8()), t);
            assert_eq!(MessageType::from_name(t.name()), Some(t));
        }
        for v in 0..=255u8 {
            assert_eq!(MessageType::from_u8(v).to_u8(), v);
        }
        assert_eq!(MessageType::from_u8(0x08), MessageType::Unknown(0x08));
    }

    #[test]
    fn header_layout_is_the_specs() {
        let h = Header {
            msg_type: MessageType::JobRequest,
            flags: Flags::ACK | Flags::RESPONSE,
            priority: 200,
            trace_flags: 1,
            stream_id: 0x0102_0304,
            length: 0x10,
            correlation_id: 0xAABB_CCDD,
            timestamp: 0x6000_0000,
        };
        let b = h.to_bytes();
        assert_eq!(
            b,
            [
                0x52, 0x43, 2, 0x20, 0x11, 200, 1, 0, 1, 2, 3, 4, 0, 0, 0, 0x10, 0xAA, 0xBB, 0xCC,
                0xDD, 0x60, 0, 0, 0
            ]
        );
        assert_eq!(Header::decode(&b, MAX_FRAME_LIMIT), Ok(h));
    }

    #[test]
    fn header_faults_map_to_their_codes() {
        let good = Header::new(MessageType::Ping, 0, 4).to_bytes();
        let mut b = good;
        b[0] = 0x00;
        assert_eq!(
            Header::decode(&b, 1024).unwrap_err().code(),
            ErrorCode::BAD_MAGIC
        );
        let mut b = good;
        b[2] = 3;
        assert_eq!(
            Header::decode(&b, 1024).unwrap_err().code(),
            ErrorCode::UNSUPPORTED_VERSION
        );
        let mut b = good;
        b[4] = 0x40;
        assert_eq!(
            Header::decode(&b, 1024).unwrap_err().code(),
            ErrorCode::RESERVED_BITS
        );
        let mut b = good;
        b[7] = 1;
        assert_eq!(
            Header::decode(&b, 1024).unwrap_err().code(),
            ErrorCode::RESERVED_BITS
        );
        assert_eq!(
            Header::decode(&good, 3).unwrap_err(),
            HeaderError::FrameTooLarge { length: 4, max: 3 }
        );
        // The agreed limit can never exceed the absolute one.
        let mut b = good;
        b[12..16].copy_from_slice(&(MAX_FRAME_LIMIT + 1).to_be_bytes());
        assert_eq!(
            Header::decode(&b, u32::MAX).unwrap_err().code(),
            ErrorCode::FRAME_TOO_LARGE
        );
    }

    #[test]
    fn decode_from_bytes_shares_the_buffer() {
        let mut wire = Vec::new();
        Frame::new(MessageType::Ping, 0, &b"one"[..]).encode(&mut wire);
        Frame::new(MessageType::Ping, 0, &b"two"[..]).encode(&mut wire);
        let mut buf = Bytes::from(wire);
        let base = buf.as_ptr() as usize;
        let a = Frame::decode(&mut buf, 16).unwrap().unwrap();
        assert_eq!(a.payload.as_ptr() as usize, base + HEADER_LEN, "no copy");
        let mut partial = buf.slice(..buf.len() - 1);
        assert_eq!(Frame::decode(&mut partial, 16), Ok(None));
        assert_eq!(partial.len(), buf.len() - 1, "untouched when incomplete");
        let b = Frame::decode(&mut buf, 16).unwrap().unwrap();
        assert_eq!(&b.payload[..], b"two");
        let mut big = Bytes::from(Header::new(MessageType::Ping, 0, 17).to_bytes().to_vec());
        assert!(matches!(
            Frame::decode(&mut big, 16),
            Err(HeaderError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn trace_context_is_split_from_the_body() {
        let ctx = TraceContext {
            trace_id: [7; 16],
            span_id: [9; 8],
        };
        let mut payload = ctx.to_bytes().to_vec();
        payload.extend_from_slice(b"hello");
        let f = Frame::new(MessageType::LogEntry, 10_001, payload).with_flags(Flags::TRACE);
        assert_eq!(f.trace_context(), Some(ctx));
        assert_eq!(f.body().unwrap(), Bytes::from_static(b"hello"));
        let short = Frame::new(MessageType::LogEntry, 10_001, vec![1, 2]).with_flags(Flags::TRACE);
        assert!(short.body().is_none());
    }
}
