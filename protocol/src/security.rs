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

use crate::Side;
use crate::error::ErrorCode;
use crate::frame::{HEADER_LEN, MessageType};
use crate::message::SecurityMode;

#[cfg(feature = "mtls")]
pub mod mtls;
#[cfg(feature = "noise_xk")]
pub mod noise_xk;
#[cfg(feature = "post_quantum")]
pub mod post_quantum;
#[cfg(feature = "noise_xk")]
pub mod record;
#[cfg(feature = "token")]
pub mod token;
#[cfg(feature = "noise_xk")]
mod x25519;
pub mod zero_trust;

/// What went wrong in a handshake, a record layer or a TLS session: typed once here, and the
/// wire code ([`ErrorCode`]) and the blame ([`FaultClass`]) derived from it in one place each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SecurityFault {
    /// A proof, MAC, signature or key did not verify (201).
    BadCredentials,
    /// A certificate was missing, invalid, expired, revoked or from an unknown CA, as found
    /// here or as the peer's alert said (201).
    BadCertificate,
    /// A token or credential has expired (202).
    Expired,
    /// A nonce or token was used twice (203).
    Replayed,
    /// The two sides share no protocol version or parameters (109).
    Incompatible,
    /// A handshake message arrived where none is allowed (106).
    UnexpectedMessage,
    /// A sealed record failed authentication (703).
    Integrity,
    /// The peer's byte stream broke the security protocol in some other way (700).
    Violation,
    /// The record layer ran out of nonces without a key update (705).
    NonceExhausted,
    /// A local key, certificate, name or setting is unusable (700).
    Configuration,
    /// A bounded buffer is full (503).
    ResourceExhausted,
    /// A local failure: the random source, a missing key (500).
    Internal,
}

/// Who a [`SecurityFault`] is blamed on: what an audit log records and an intrusion detector
/// counts against the peer's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultClass {
    /// The peer presented credentials that do not hold.
    Credentials,
    /// The peer sent bytes that break the protocol.
    Malformed,
    /// This side's own failure or configuration; not the peer's doing.
    Local,
}

impl SecurityFault {
    /// Who the fault is blamed on.
    pub const fn class(self) -> FaultClass {
        use SecurityFault as F;
        match self {
            F::BadCredentials | F::BadCertificate | F::Expired | F::Replayed => {
                FaultClass::Credentials
            }
            F::Incompatible | F::UnexpectedMessage | F::Integrity | F::Violation => {
                FaultClass::Malformed
            }
            F::NonceExhausted | F::Configuration | F::ResourceExhausted | F::Internal => {
                FaultClass::Local
            }
        }
    }
}

impl From<SecurityFault> for ErrorCode {
    fn from(fault: SecurityFault) -> ErrorCode {
        use SecurityFault as F;
        match fault {
            F::BadCredentials | F::BadCertificate => ErrorCode::AUTH_FAILED,
            F::Expired => ErrorCode::TOKEN_EXPIRED,
            F::Replayed => ErrorCode::TOKEN_REPLAYED,
            F::Incompatible => ErrorCode::NEGOTIATION_FAILED,
            F::UnexpectedMessage => ErrorCode::UNEXPECTED_MESSAGE,
            F::Integrity => ErrorCode::INTEGRITY_FAILURE,
            F::Violation | F::Configuration => ErrorCode::SECURITY_VIOLATION,
            F::NonceExhausted => ErrorCode::NONCE_EXHAUSTED,
            F::ResourceExhausted => ErrorCode::RESOURCE_EXHAUSTED,
            F::Internal => ErrorCode::INTERNAL,
        }
    }
}

/// A handshake, record-layer or TLS failure: its [`SecurityFault`] and a detail for the
/// ERROR frame and the audit log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", self.code())]
pub struct SecurityError {
    /// What went wrong.
    pub fault: SecurityFault,
    /// Detail for the ERROR frame and the audit log.
    pub message: String,
}

impl SecurityError {
    /// An error of `fault` with `message`.
    pub fn new(fault: SecurityFault, message: impl Into<String>) -> Self {
        SecurityError {
            fault,
            message: message.into(),
        }
    }

    /// The code sent to the peer.
    pub fn code(&self) -> ErrorCode {
        self.fault.into()
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
