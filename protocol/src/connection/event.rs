//! What a connection tells its driver: [`Event`]s, why it ended ([`CloseReason`]) and what was
//! agreed with the peer ([`PeerInfo`]).

use std::time::Duration;

use bytes::Bytes;

use crate::error::ErrorCode;
use crate::frame::{Frame, MessageType};
use crate::message::{SecurityMode, StreamOpen};

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
    /// Both sides said where they run (HELLO / HELLO_ACK `host`) and it is the same host
    /// and network namespace: the connection may move to shared memory (UPGRADE).
    pub same_host: bool,
    /// Both sides agreed (HELLO / HELLO_ACK `quic_streams`) to carry Valkyrie streams on QUIC
    /// streams of their own.
    pub quic_streams: bool,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
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

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseReason::Local { code, reason } => write!(f, "closed here ({code}: {reason})"),
            CloseReason::Peer { code, reason } => {
                write!(f, "closed by the peer ({code}: {reason})")
            }
            CloseReason::ProtocolError { code, message } => {
                write!(f, "protocol error {}: {message}", code.0)
            }
            CloseReason::PeerError { code, message } => {
                write!(f, "the peer's error {}: {message}", code.0)
            }
            CloseReason::HandshakeTimeout => f.write_str("the handshake did not finish in time"),
            CloseReason::HeartbeatTimeout => f.write_str("too many heartbeats missed"),
            CloseReason::CloseTimeout => f.write_str("the CLOSE was not answered in time"),
            CloseReason::TransportClosed => f.write_str("the transport ended"),
        }
    }
}

/// Something the application should know about.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// HELLO (and the security handshake) finished.
    Connected(PeerInfo),
    /// An application frame: jobs, stream data, observability...
    Frame(Frame),
    /// An UPGRADE frame on stream 0 (see [`Connection::request_upgrade`](crate::Connection::request_upgrade)).
    Upgrade {
        /// Request, answer, or the peer's fence.
        kind: crate::connection::UpgradeKind,
        /// The target transport (`"shm"`).
        to: String,
        /// Its parameters.
        params: crate::message::Object,
        /// The request's correlation id (the answer carries it too).
        correlation_id: u32,
    },
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
    /// An answer to [`Connection::ping`](super::Connection::ping).
    Pong {
        /// The PING's correlation id.
        correlation_id: u32,
        /// The echoed payload.
        payload: Bytes,
        /// Round-trip time measured with the times passed in.
        rtt: Duration,
    },
    /// The peer acknowledged a frame sent with [`Flags::ACK`](crate::Flags::ACK), or a STREAM_OPEN.
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
    /// Credit arrived for a stream whose send was refused with [`StreamError::Blocked`](crate::streams::StreamError::Blocked).
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
    /// NEGOTIATE was exchanged: the capabilities both sides have
    /// ([`Connection::negotiated`](super::Connection::negotiated)).
    Negotiated {
        /// What both sides named.
        features: crate::features::FeatureSet,
    },
    /// The connection ended.
    Closed(CloseReason),
}
