//! Errors of the shared-memory transport.

use std::io;

/// What can go wrong on a shared-memory connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ShmError {
    /// A system call failed (socket, memfd, mapping, futex).
    #[error("shm i/o: {0}")]
    Io(#[from] io::Error),
    /// Non-blocking use: the ring is full (send) or nothing arrived in time.
    #[error("operation would block")]
    WouldBlock,
    /// A frame longer than the segment's limit.
    #[error("frame of {len} bytes exceeds the segment's maximum of {max}")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The largest frame the segment carries.
        max: usize,
    },
    /// The peer wrote an index, length or header that breaks the ring's rules. The connection
    /// is closed: nothing past the violation is read.
    #[error("corrupt shared memory: {0}")]
    Corrupt(&'static str),
    /// The rendezvous failed: the peer is not a valkyrie-shm endpoint or offered a segment this
    /// side refuses (wrong size, not sealed, bad header).
    #[error("shm handshake: {0}")]
    Handshake(&'static str),
    /// The peer closed its end; every frame it sent before has been delivered.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer's process went away without closing (crash, kill -9).
    #[error("peer process died")]
    PeerDied,
    /// This connection was closed earlier after an error.
    #[error("connection is closed")]
    Closed,
}

impl ShmError {
    /// True for [`ShmError::WouldBlock`].
    pub fn is_would_block(&self) -> bool {
        matches!(self, ShmError::WouldBlock)
    }
}

/// Result alias of this crate.
pub type Result<T, E = ShmError> = std::result::Result<T, E>;
