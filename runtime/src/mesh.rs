//! The cross-shard mesh: one bounded single-producer single-consumer ring (`rtrb`) for every
//! ordered pair of shards, drained in batches, and a waker per shard.
//!
//! A shard that is about to sleep sets its `sleeping` flag, looks at its inbound rings once
//! more, then blocks in `io_uring_enter`. A producer that pushes into a sleeping shard's ring
//! writes that shard's eventfd, whose pending read completes in the sleeper's ring and wakes
//! it. A busy shard costs its producers no syscall at all.

use std::any::Any;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use valkyrie_protocol::{MessageType, SendOptions};

use crate::service::ConnRef;

/// Messages between shards.
pub(crate) enum MeshMsg {
    /// Send a frame on a connection owned by the receiving shard.
    Send {
        to: ConnRef,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    },
    /// Close a connection owned by the receiving shard.
    Close {
        to: ConnRef,
        code: u16,
        reason: String,
    },
    /// A security failure from an address whose failures the receiving shard counts.
    Failure { ip: std::net::IpAddr },
    /// Another shard banned an address until the given time.
    Ban {
        ip: std::net::IpAddr,
        until: std::time::Instant,
    },
    /// A message for the receiving shard's service.
    User {
        from: usize,
        msg: Box<dyn Any + Send>,
    },
}

/// Wakes one shard.
#[derive(Debug)]
pub(crate) struct Waker {
    pub(crate) eventfd: OwnedFd,
    pub(crate) sleeping: AtomicBool,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: plain syscall; the descriptor is owned by the OwnedFd below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Waker {
            // SAFETY: fd was just created and is owned by nobody else.
            eventfd: unsafe { OwnedFd::from_raw_fd(fd) },
            sleeping: AtomicBool::new(false),
        })
    }

    /// Wake the shard if it sleeps (or unconditionally with `force`).
    pub(crate) fn wake(&self, force: bool) {
        if force || self.sleeping.load(Ordering::SeqCst) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64 to an eventfd we own.
            unsafe {
                libc::write(
                    self.eventfd.as_raw_fd(),
                    (&one as *const u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
        }
    }
}

/// Build the N×N mesh: `producers[i][j]` sends from shard `i` to shard `j`,
/// `consumers[j][i]` receives it (the diagonal is unused).
#[allow(clippy::type_complexity)]
pub(crate) fn build(
    n: usize,
    capacity: usize,
) -> (
    Vec<Vec<Option<rtrb::Producer<MeshMsg>>>>,
    Vec<Vec<Option<rtrb::Consumer<MeshMsg>>>>,
) {
    let mut producers: Vec<Vec<Option<rtrb::Producer<MeshMsg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut consumers: Vec<Vec<Option<rtrb::Consumer<MeshMsg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, row) in producers.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                *slot = Some(p);
                consumers[j][i] = Some(c);
            }
        }
    }
    (producers, consumers)
}
