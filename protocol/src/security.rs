//! The slot where each security mode's handshake plugs into a [`Connection`](crate::Connection).
//!
//! After HELLO / HELLO_ACK agree on a mode other than `plaintext`, the connection asks the
//! configured [`HandshakeProvider`] for that mode for a [`SecurityHandshake`] and feeds it every
//! handshake frame (AUTH_*, KEY_EXCHANGE, CERT_REQUEST on stream 0). Any other frame before the
//! handshake completes is refused with error 200. A completed handshake may hand over a
//! [`RecordProtector`]; from then on every frame's payload is sealed, and the 24-byte header
//! (with the sealed length) is authenticated as associated data.
//!
//! The modes live in their own modules: [`token`], [`noise_xk`], [`post_quantum`], [`mtls`] and
//! [`zero_trust`], with the shared [`record`] layer. [`mtls`] is the exception: TLS runs under
//! the frames as the transport, and its handshake slot only takes over the identity TLS verified.

use std::fmt;
use std::time::Instant;

use bytes::{Bytes, BytesMut};

use crate::connection::Side;
use crate::error::ErrorCode;
use crate::frame::{HEADER_LEN, MessageType};
use crate::message::SecurityMode;

pub mod mtls;
pub mod noise_xk;
pub mod post_quantum;
pub mod record;
pub mod token;
mod x25519;
pub mod zero_trust;

/// A handshake or record-layer failure, with the code sent to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct SecurityError {
    /// A 2xx or 7xx code.
    pub code: ErrorCode,
    /// Detail for the ERROR frame and the audit log.
    pub message: String,
}

impl SecurityError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        SecurityError {
            code,
            message: message.into(),
        }
    }
}

/// What a handshake knows about the connection it runs on.
#[derive(Debug, Clone)]
pub struct HandshakeContext {
    /// Our side.
    pub side: Side,
    /// The mode agreed in HELLO_ACK.
    pub mode: SecurityMode,
    /// Our node id.
    pub local_node_id: String,
    /// The peer's node id as it claimed in HELLO / HELLO_ACK (not yet authenticated).
    pub peer_node_id: String,
    /// The HELLO payload followed by the HELLO_ACK payload, exactly as sent on the wire. A
    /// handshake binds this into its transcript so that a downgraded offer is detected.
    pub hello_transcript: Vec<u8>,
    /// The time the handshake starts.
    pub now: Instant,
    /// The wall clock at `now`, in Unix seconds (for expiry checks).
    pub unix_secs: u64,
    /// The peer identity the transport under the connection already verified (the TLS
    /// certificate of [`mtls`]), if any.
    pub transport_identity: Option<String>,
}

/// A handshake message to send: a type from `0x10`–`0x15` and its payload, on stream 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeMessage {
    /// AUTH_*, KEY_EXCHANGE or CERT_REQUEST.
    pub msg_type: MessageType,
    /// The payload.
    pub payload: Bytes,
}

/// Where a handshake stands after a step.
pub enum HandshakeStatus {
    /// More messages are expected.
    InProgress,
    /// Done: the authenticated peer identity and, for encrypting modes, the record protector.
    Complete {
        /// The peer's authenticated identity (node id, certificate subject, key fingerprint).
        peer_identity: Option<String>,
        /// Seals every later frame, when the mode encrypts.
        protector: Option<Box<dyn RecordProtector>>,
    },
}

impl fmt::Debug for HandshakeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandshakeStatus::InProgress => f.write_str("InProgress"),
            HandshakeStatus::Complete {
                peer_identity,
                protector,
            } => f
                .debug_struct("Complete")
                .field("peer_identity", peer_identity)
                .field("protector", &protector.is_some())
                .finish(),
        }
    }
}

/// One side of one security handshake, driven by the connection.
pub trait SecurityHandshake: Send {
    /// Called once when the handshake begins; push any opening messages to `out`.
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError>;

    /// Handle one handshake frame from the peer; push replies to `out`.
    fn handle(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError>;
}

/// Makes handshakes for one security mode.
pub trait HandshakeProvider: Send + Sync {
    /// The mode this provider implements.
    fn mode(&self) -> SecurityMode;
    /// A fresh handshake for `side`.
    fn new_handshake(&self, side: Side) -> Box<dyn SecurityHandshake>;
}

/// Seals and opens frame payloads after an encrypting handshake.
///
/// `header` is the frame's 24 header bytes with the length field already set to the sealed
/// length (`plaintext + overhead()`); implementations authenticate it as associated data.
pub trait RecordProtector: Send {
    /// Bytes a sealed payload is longer than its plaintext.
    fn overhead(&self) -> usize;

    /// Seal `plaintext` into `out` (which the caller has cleared).
    fn seal(
        &mut self,
        header: &[u8; HEADER_LEN],
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SecurityError>;

    /// Open a sealed payload, returning the plaintext. Any failure is fatal (703).
    fn open(&mut self, header: &[u8; HEADER_LEN], sealed: Bytes) -> Result<Bytes, SecurityError>;
}
