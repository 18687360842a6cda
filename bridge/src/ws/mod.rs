//! WebSocket (RFC 6455), sans-IO: the opening handshake ([`upgrade`] answers a client's
//! `GET` with `101 Switching Protocols`), a [`Decoder`] that turns received bytes into
//! message payloads (streamed straight through: a message is never gathered whole) and the
//! replies control frames call for, and the writers of frames ([`write_frame`],
//! [`write_binary`], [`write_close`]).
//!
//! The node carries a Valkyrie connection over it: binary messages hold the same bytes a
//! TCP connection would (a message may hold whole frames or part of one), so the decoder
//! hands out payload bytes as one stream and never needs a message's end. Everything the
//! peer claims is checked before it costs anything: a message longer than the limit is
//! refused by its frame header (close 1009), an unmasked client frame, a fragmented or
//! oversized control frame, a reserved bit or opcode (close 1002), a text message (close
//! 1003), a close reason that is not UTF-8 (close 1007).
//!
//! ```
//! use bytes::BytesMut;
//! use valkyrie_bridge::ws::{Decoder, Opcode, Progress, write_frame};
//!
//! // A client's masked binary message, split anywhere on the way.
//! let mut wire = BytesMut::new();
//! write_frame(Opcode::Binary, true, b"RC frames", Some([1, 2, 3, 4]), &mut wire);
//! let mut server = Decoder::server(1 << 20);
//! let (mut payload, mut reply) = (Vec::new(), BytesMut::new());
//! for piece in wire.chunks(3) {
//!     assert_eq!(server.feed(piece, &mut payload, &mut reply)?, Progress::Open);
//! }
//! assert_eq!(payload, b"RC frames");
//! assert!(reply.is_empty());
//! # Ok::<(), valkyrie_bridge::ws::WsError>(())
//! ```

mod decoder;
mod frame;
mod handshake;

pub use decoder::{Decoder, Progress, WsError};
pub use frame::{Opcode, write_binary, write_close, write_frame};
pub use handshake::{accept_key, client_request, is_upgrade, upgrade};

/// The path the node serves WebSocket connections on.
pub const PATH: &str = "/ws";

/// The subprotocol a client may ask for (`Sec-WebSocket-Protocol`); the node selects it when
/// offered.
pub const SUBPROTOCOL: &str = "valkyrie.v2";

/// Close codes (RFC 6455 section 7.4.1).
pub mod close {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (the node drains).
    pub const GOING_AWAY: u16 = 1001;
    /// A protocol error.
    pub const PROTOCOL: u16 = 1002;
    /// A data type the endpoint does not take (text, here).
    pub const UNSUPPORTED: u16 = 1003;
    /// Data inconsistent with the message's type (a close reason that is not UTF-8).
    pub const INVALID_DATA: u16 = 1007;
    /// A message too big to process.
    pub const TOO_BIG: u16 = 1009;
}

#[cfg(test)]
mod tests;
