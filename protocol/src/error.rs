//! Error codes (1xx–7xx), their classes, recovery actions, and which are fatal.

use std::fmt;

/// A wire error code as carried in an ERROR frame's `code` field.
///
/// Any `u16` is representable so that codes from newer peers are kept; the named constants
/// are the ones this version defines. The hundreds digit is the class ([`ErrorClass`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ErrorCode(pub u16);

macro_rules! codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $desc:literal; )*) => {
        impl ErrorCode {
            $( $(#[$doc])* pub const $name: ErrorCode = ErrorCode($value); )*

            /// Every code this version names, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$name),*];

            /// A short description for a named code, or `None` for a code this version
            /// does not name.
            pub const fn description(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some($desc), )*
                    _ => None,
                }
            }

        }
    };
}

codes! {
    /// 100: the frame did not start with `"RC"`. Fatal.
    BAD_MAGIC = 100, "bad magic";
    /// 101: the version byte is not one this side speaks. Fatal.
    UNSUPPORTED_VERSION = 101, "unsupported protocol version";
    /// 102: the length field exceeds the agreed limit. Fatal.
    FRAME_TOO_LARGE = 102, "frame too large";
    /// 103: the message type is unknown. The frame is skipped; the connection stays usable.
    UNKNOWN_MESSAGE_TYPE = 103, "unknown message type";
    /// 104: the payload does not parse as its type's schema.
    MALFORMED_PAYLOAD = 104, "malformed payload";
    /// 105: reserved flag bits or the reserved byte are set. Fatal.
    RESERVED_BITS = 105, "reserved bits set";
    /// 106: a known message arrived in a state where it is not allowed.
    UNEXPECTED_MESSAGE = 106, "unexpected message";
    /// 107: HELLO (and the security handshake) did not finish in time.
    HANDSHAKE_TIMEOUT = 107, "handshake timeout";
    /// 108: too many heartbeats were missed.
    HEARTBEAT_TIMEOUT = 108, "heartbeat timeout";
    /// 109: no common protocol version, security mode or parameter could be negotiated.
    NEGOTIATION_FAILED = 109, "negotiation failed";
    /// 200: a frame other than a handshake frame arrived before the security handshake finished.
    AUTH_REQUIRED = 200, "authentication required";
    /// 201: credentials were wrong.
    AUTH_FAILED = 201, "authentication failed";
    /// 202: the token or credential has expired.
    TOKEN_EXPIRED = 202, "token expired";
    /// 203: a nonce or token was replayed.
    TOKEN_REPLAYED = 203, "token replayed";
    /// 204: the requested security mode is not offered.
    UNSUPPORTED_SECURITY_MODE = 204, "unsupported security mode";
    /// 300: the stream is not open.
    UNKNOWN_STREAM = 300, "unknown stream";
    /// 301: the stream id is outside its range or has the wrong parity for its opener.
    INVALID_STREAM_ID = 301, "invalid stream id";
    /// 302: the peer sent more than its flow-control credit.
    FLOW_CONTROL_VIOLATION = 302, "flow control violation";
    /// 303: too many concurrent streams.
    STREAM_LIMIT = 303, "stream limit reached";
    /// 304: the stream's sending half is already closed.
    STREAM_CLOSED = 304, "stream closed";
    /// 305: the stream is already open.
    STREAM_ALREADY_OPEN = 305, "stream already open";
    /// 306: the stream was reset by the application.
    STREAM_CANCELLED = 306, "stream cancelled";
    /// 400: no such job.
    JOB_NOT_FOUND = 400, "job not found";
    /// 401: the job was rejected.
    JOB_REJECTED = 401, "job rejected";
    /// 402: the job exceeded its time limit.
    JOB_TIMEOUT = 402, "job timeout";
    /// 403: the job failed.
    JOB_FAILED = 403, "job failed";
    /// 404: the job was cancelled.
    JOB_CANCELLED = 404, "job cancelled";
    /// 405: the job specification is invalid.
    JOB_INVALID = 405, "invalid job";
    /// 500: internal error.
    INTERNAL = 500, "internal error";
    /// 501: the node is overloaded or at its connection limit.
    OVERLOADED = 501, "overloaded";
    /// 502: the node is shutting down.
    SHUTTING_DOWN = 502, "shutting down";
    /// 503: a resource (memory, descriptors, queue space) is exhausted.
    RESOURCE_EXHAUSTED = 503, "resource exhausted";
    /// 504: the addressed service is not available.
    SERVICE_UNAVAILABLE = 504, "service unavailable";
    /// 505: the receiver is too slow; its outbound queue overflowed.
    SLOW_CONSUMER = 505, "slow consumer";
    /// 600: generic network failure.
    NETWORK = 600, "network error";
    /// 601: a network operation timed out.
    NETWORK_TIMEOUT = 601, "network timeout";
    /// 602: the peer is unreachable.
    UNREACHABLE = 602, "unreachable";
    /// 603: the transport failed and no alternative is available.
    TRANSPORT_FAILED = 603, "transport failed";
    /// 700: generic security violation.
    SECURITY_VIOLATION = 700, "security violation";
    /// 701: the identity is not authorised for this message type or service.
    UNAUTHORISED = 701, "unauthorised";
    /// 702: the source address is banned for a while.
    BANNED = 702, "banned";
    /// 703: a sealed frame failed authentication.
    INTEGRITY_FAILURE = 703, "integrity failure";
    /// 704: a downgrade of the security mode was attempted.
    DOWNGRADE = 704, "downgrade attempt";
    /// 705: the record layer's nonce space is exhausted without a key update.
    NONCE_EXHAUSTED = 705, "nonce exhausted";
    /// 706: a frame that could be replayed arrived in QUIC 0-RTT early data; it is dropped
    /// and may be sent again once the handshake is confirmed (non-fatal).
    TOO_EARLY = 706, "too early";
}

impl ErrorCode {
    /// The class given by the hundreds digit.
    pub const fn class(self) -> ErrorClass {
        match self.0 / 100 {
            1 => ErrorClass::Protocol,
            2 => ErrorClass::Authentication,
            3 => ErrorClass::Stream,
            4 => ErrorClass::Job,
            5 => ErrorClass::System,
            6 => ErrorClass::Network,
            7 => ErrorClass::Security,
            _ => ErrorClass::Unknown,
        }
    }

    /// Whether the sender of this code closes the connection after the ERROR frame.
    ///
    /// The SPEC fixes 100, 101, 102 and 105. This version adds the codes after which the
    /// connection cannot continue safely: handshake and heartbeat timeouts, failed
    /// negotiation, authentication failures (2xx), overload refusal at accept time (501),
    /// shutdown (502), slow consumers (505) and every security code (7xx) except 701, which
    /// denies one message and leaves the connection usable, and 706, which refuses one frame
    /// sent too early.
    pub const fn is_fatal(self) -> bool {
        matches!(
            self.0,
            100 | 101 | 102 | 105 | 107 | 108 | 109 | 200..=299 | 501 | 502 | 505 | 700 | 702..=705 | 707..=799
        )
    }

    /// The recovery action the receiver of this code should take.
    pub const fn recovery(self) -> RecoveryAction {
        self.class().recovery()
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.description() {
            Some(d) => write!(f, "{} ({d})", self.0),
            None => write!(f, "{}", self.0),
        }
    }
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        ErrorCode(v)
    }
}

/// The class of an error code: its hundreds digit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// 1xx: framing, version, message-level faults.
    Protocol,
    /// 2xx: authentication.
    Authentication,
    /// 3xx: stream management.
    Stream,
    /// 4xx: job execution.
    Job,
    /// 5xx: resources and internal faults.
    System,
    /// 6xx: network connectivity.
    Network,
    /// 7xx: security violations.
    Security,
    /// Outside 100–799.
    Unknown,
}

impl ErrorClass {
    /// The seed's automatic recovery for this class.
    pub const fn recovery(self) -> RecoveryAction {
        match self {
            ErrorClass::Protocol => RecoveryAction::Reconnect,
            ErrorClass::Authentication => RecoveryAction::RefreshCredentials,
            ErrorClass::Stream => RecoveryAction::ResetStream,
            ErrorClass::Job => RecoveryAction::RetryOrReschedule,
            ErrorClass::System => RecoveryAction::CircuitBreaker,
            ErrorClass::Network => RecoveryAction::TransportFailover,
            ErrorClass::Security => RecoveryAction::SecurityResponse,
            ErrorClass::Unknown => RecoveryAction::Reconnect,
        }
    }

    /// Lower-case name used as the `type` label of `valkyrie_errors_total`.
    pub const fn label(self) -> &'static str {
        match self {
            ErrorClass::Protocol => "protocol",
            ErrorClass::Authentication => "authentication",
            ErrorClass::Stream => "stream",
            ErrorClass::Job => "job",
            ErrorClass::System => "system",
            ErrorClass::Network => "network",
            ErrorClass::Security => "security",
            ErrorClass::Unknown => "unknown",
        }
    }
}

/// What the receiver of an error does about it (seed, "Error Categories with Recovery").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecoveryAction {
    /// Drop the connection and connect again (with backoff).
    Reconnect,
    /// Obtain fresh credentials or a new token, then reconnect.
    RefreshCredentials,
    /// Reset the affected stream; the connection continues.
    ResetStream,
    /// Retry the job, here or on another node.
    RetryOrReschedule,
    /// Count the failure in a circuit breaker and back off from the peer.
    CircuitBreaker,
    /// Switch to another transport to the same peer.
    TransportFailover,
    /// Log and audit; do not retry automatically.
    SecurityResponse,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_fatal_codes() {
        for c in [100, 101, 102, 105] {
            assert!(ErrorCode(c).is_fatal(), "{c}");
        }
        assert!(!ErrorCode::UNKNOWN_MESSAGE_TYPE.is_fatal());
        assert!(!ErrorCode::MALFORMED_PAYLOAD.is_fatal());
        assert!(!ErrorCode::UNAUTHORISED.is_fatal());
        assert!(ErrorCode::BANNED.is_fatal());
    }

    #[test]
    fn classes_and_recovery() {
        assert_eq!(ErrorCode(104).class(), ErrorClass::Protocol);
        assert_eq!(ErrorCode(302).recovery(), RecoveryAction::ResetStream);
        assert_eq!(ErrorCode(501).recovery(), RecoveryAction::CircuitBreaker);
        assert_eq!(ErrorCode(650).recovery(), RecoveryAction::TransportFailover);
        assert_eq!(ErrorCode(900).class(), ErrorClass::Unknown);
        let mut prev = 0;
        for c in ErrorCode::ALL {
            assert!(c.0 > prev, "codes sorted and unique");
            prev = c.0;
            assert!(c.description().is_some());
            assert_ne!(c.class(), ErrorClass::Unknown);
        }
    }
}
