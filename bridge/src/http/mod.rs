//! HTTP/1.1, sans-IO: a [`RequestReader`] takes the bytes a connection receives and yields
//! whole [`Request`]s (pipelined ones in order, `Content-Length` and chunked bodies), within
//! [`Limits`] that bound everything a client can make the server hold; a [`Response`] writes
//! itself, whole or as a chunked stream ([`write_chunk`], [`write_last_chunk`]). Bad input
//! ends in an [`HttpError`] whose [`status`](HttpError::status) is the answer to send
//! before closing the connection.

mod error;
mod reader;
mod request;
mod response;

pub use error::HttpError;
pub use reader::RequestReader;
pub use request::{Method, Request};
pub use response::{Response, reason, write_chunk, write_last_chunk};

/// What one HTTP connection may make the server hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Header fields in one request (past it: 431).
    pub max_headers: usize,
    /// Bytes of the request line and header fields together (past it: 431).
    pub max_head_bytes: usize,
    /// Bytes of one request's body, declared or chunked (past it: 413).
    pub max_body: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_headers: 64,
            max_head_bytes: 16 * 1024,
            max_body: 4 * 1024 * 1024,
        }
    }
}

/// The most header fields [`Limits::max_headers`] may allow (httparse parses into an array
/// of this size on the stack).
pub const MAX_HEADERS: usize = 128;
