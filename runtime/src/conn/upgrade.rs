//! Where a socket connection is in its move to shared memory (UPGRADE, docs/PROTOCOL.md §6.8;
//! the shard's side is `shard/upgrade.rs`). The socket stays the connection's control and
//! liveness channel throughout.

use std::os::unix::net::{UnixListener, UnixStream};

use super::ShmIo;

/// The challenge a client proves it read on this connection.
pub(crate) const CHALLENGE_LEN: usize = 32;

/// A socket connection's UPGRADE to shared memory.
pub(crate) enum Upgrade {
    /// The offer is answered: the one-use rendezvous waits for the client.
    Offered {
        listener: UnixListener,
        challenge: [u8; CHALLENGE_LEN],
        /// A poll for the client's connect is armed on it.
        armed: bool,
    },
    /// The client connected to the rendezvous: its challenge is awaited on the socket.
    Checking {
        sock: UnixStream,
        challenge: [u8; CHALLENGE_LEN],
        armed: bool,
    },
    /// The segment is served; the client's fence has not come.
    Ready(Box<ShmIo>),
    /// The client's fence came: input comes from shared memory; this side's fence is queued
    /// and frames still go to the socket until it is written.
    Fencing(Box<ShmIo>),
    /// Both ways on shared memory.
    Switched(Box<ShmIo>),
    /// The segment broke: both ways on the socket again; the mapping is let go once no wait
    /// is left on it.
    Broken(Box<ShmIo>),
}

impl std::fmt::Debug for Upgrade {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Upgrade::Offered { .. } => "Offered",
            Upgrade::Checking { .. } => "Checking",
            Upgrade::Ready(_) => "Ready",
            Upgrade::Fencing(_) => "Fencing",
            Upgrade::Switched(_) => "Switched",
            Upgrade::Broken(_) => "Broken",
        })
    }
}

impl Upgrade {
    /// The shared-memory I/O once input comes from it.
    pub(crate) fn shm(&mut self) -> Option<&mut ShmIo> {
        match self {
            Upgrade::Fencing(s) | Upgrade::Switched(s) => Some(s),
            _ => None,
        }
    }

    /// The shared-memory I/O in any state that holds one (its waits' flags are kept there).
    pub(crate) fn held(&mut self) -> Option<&mut ShmIo> {
        match self {
            Upgrade::Ready(s) | Upgrade::Fencing(s) | Upgrade::Switched(s) | Upgrade::Broken(s) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// Whether output goes to shared memory.
    pub(crate) fn output_switched(&self) -> bool {
        matches!(self, Upgrade::Switched(_))
    }

    /// Whether the ring still holds an operation on it (a poll, a wait on the mapping).
    pub(crate) fn in_flight(&self) -> bool {
        match self {
            Upgrade::Offered { armed, .. } | Upgrade::Checking { armed, .. } => *armed,
            Upgrade::Ready(s) | Upgrade::Fencing(s) | Upgrade::Switched(s) | Upgrade::Broken(s) => {
                s.in_flight()
            }
        }
    }
}
