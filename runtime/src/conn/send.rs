//! The send path of one socket connection as a small pure state machine, in the manner of
//! monoio's operation lifecycle: a send buffer is owned by the state, handed to the kernel
//! while a send is in flight, and kept (orphaned) when the connection gives up on it, until
//! the kernel's completion says it no longer reads it. Nothing here touches io_uring: the
//! shard submits the bytes [`SendState::pending`] shows and reports each completion.

use bytes::BytesMut;
use valkyrie_protocol::Tick;

/// A send buffer and how much of it the kernel has taken.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) buf: BytesMut,
    sent: usize,
    /// When the kernel last took bytes of it (or when it was submitted): the slow-consumer
    /// timer runs from here.
    started: Tick,
}

/// Send buffers a shard keeps for reuse: enough for the sends one loop iteration usually has
/// in flight; a burst beyond it allocates, and what it allocated is freed afterwards (so many
/// connections answering at once do not leave megabytes parked in the pool).
pub(crate) const SEND_POOL: usize = 64;

/// A new send buffer's capacity (it grows up to the node's `send_batch` when more is queued).
/// Measured against 4 KiB: 4 KiB buffers left the idle-memory scenario at 828 B of RSS per
/// connection, 16 KiB ones at 436 B (how glibc places a burst of small chunks; not traced
/// further).
pub(crate) const SEND_BUF: usize = 16 * 1024;

/// The shard's pool of send buffers (boxes, so that a connection holds one in 8 bytes and
/// the pool hands the same allocation back).
#[derive(Debug, Default)]
pub(crate) struct SendPool {
    #[allow(clippy::vec_box)] // the pool holds the boxes connections hold
    free: Vec<Box<Outgoing>>,
}

impl SendPool {
    /// An empty buffer from the pool, or a new one when the pool is empty.
    pub(crate) fn take(&mut self) -> Box<Outgoing> {
        self.free.pop().unwrap_or_else(|| {
            Box::new(Outgoing {
                buf: BytesMut::with_capacity(SEND_BUF),
                sent: 0,
                started: Tick::ZERO,
            })
        })
    }

    /// Keep `b` for reuse unless the pool is full or `b` grew past `max_capacity`.
    pub(crate) fn give(&mut self, mut b: Box<Outgoing>, max_capacity: usize) {
        if self.free.len() < SEND_POOL && b.buf.capacity() <= max_capacity {
            b.buf.clear();
            b.sent = 0;
            self.free.push(b);
        }
    }

    /// Buffers waiting for reuse.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.free.len()
    }
}

/// Where the send of one connection stands.
#[derive(Debug, Default)]
pub(crate) enum SendState {
    /// No send in flight; nothing is owed to the kernel.
    #[default]
    Idle,
    /// The kernel is sending from this buffer (from its `sent` offset).
    InFlight(Box<Outgoing>),
    /// The connection gave up while a send was in flight (it is closing): the kernel may still
    /// read the buffer, which is kept until that send's completion arrives.
    Orphaned(Box<Outgoing>),
}

/// What a send completion means for the connection.
#[derive(Debug)]
pub(crate) enum Completion {
    /// Part of the buffer went: submit [`SendState::pending`] again.
    Partial,
    /// All of it went: the buffer is free again.
    Done(Box<Outgoing>),
    /// The send failed (the errno): the buffer is free; the transport is broken.
    Failed(Box<Outgoing>, i32),
    /// The send of a connection that gave up ended (sent, failed or cancelled): the buffer is
    /// free, and the kernel holds nothing of this connection's any more.
    Released(Box<Outgoing>),
    /// No send was in flight: a completion for an earlier life of the slot. Ignore it.
    Stray,
}

impl SendState {
    /// Whether the kernel may be reading a buffer of this connection.
    pub(crate) fn in_kernel(&self) -> bool {
        !matches!(self, SendState::Idle)
    }

    /// When the in-flight send last made progress (the slow-consumer timer runs from it).
    pub(crate) fn started(&self) -> Option<Tick> {
        match self {
            SendState::InFlight(out) => Some(out.started),
            _ => None,
        }
    }

    /// Hand `out` to the kernel at `now`. Only from `Idle`, with something to send.
    pub(crate) fn submit(&mut self, mut out: Box<Outgoing>, now: Tick) {
        debug_assert!(
            matches!(self, SendState::Idle),
            "a send is already in flight"
        );
        debug_assert!(!out.buf.is_empty(), "an empty send");
        out.sent = 0;
        out.started = now;
        *self = SendState::InFlight(out);
    }

    /// The bytes the kernel is (to be) sending: what the shard submits.
    pub(crate) fn pending(&self) -> Option<&[u8]> {
        match self {
            SendState::InFlight(out) => Some(&out.buf[out.sent..]),
            _ => None,
        }
    }

    /// The connection gives up on its send: returns true when one is in flight (the shard
    /// cancels it; its buffer stays here until the completion).
    pub(crate) fn orphan(&mut self) -> bool {
        match std::mem::take(self) {
            SendState::InFlight(out) => {
                *self = SendState::Orphaned(out);
                true
            }
            other => {
                *self = other;
                false
            }
        }
    }

    /// A send completion with the kernel's result `res` (bytes sent, or `-errno`) at `now`.
    pub(crate) fn complete(&mut self, res: i32, now: Tick) -> Completion {
        match std::mem::take(self) {
            SendState::Idle => Completion::Stray,
            SendState::Orphaned(out) => Completion::Released(out),
            SendState::InFlight(out) if res < 0 => Completion::Failed(out, -res),
            SendState::InFlight(mut out) => {
                let rest = out.buf.len() - out.sent;
                debug_assert!(res as usize <= rest, "the kernel sent more than submitted");
                let n = (res as usize).min(rest);
                if n == rest {
                    return Completion::Done(out);
                }
                // The peer took bytes: the slow-consumer timer starts over.
                out.sent += n;
                if n > 0 {
                    out.started = now;
                }
                *self = SendState::InFlight(out);
                Completion::Partial
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(pool: &mut SendPool, n: usize) -> Box<Outgoing> {
        let mut out = pool.take();
        out.buf.extend_from_slice(&vec![7u8; n]);
        out
    }

    #[test]
    fn a_send_completes_in_parts_and_returns_its_buffer() {
        let mut pool = SendPool::default();
        let mut s = SendState::default();
        assert!(!s.in_kernel() && s.pending().is_none());
        s.submit(filled(&mut pool, 100), Tick::from_nanos(5));
        assert_eq!(s.pending().map(<[u8]>::len), Some(100));
        assert_eq!(s.started(), Some(Tick::from_nanos(5)));
        assert!(matches!(
            s.complete(60, Tick::from_nanos(9)),
            Completion::Partial
        ));
        assert_eq!(
            s.pending().map(<[u8]>::len),
            Some(40),
            "the rest is resubmitted"
        );
        assert_eq!(
            s.started(),
            Some(Tick::from_nanos(9)),
            "progress restarts the timer"
        );
        let Completion::Done(out) = s.complete(40, Tick::from_nanos(10)) else {
            panic!("expected the send to be done");
        };
        assert!(!s.in_kernel());
        pool.give(out, 1 << 20);
        assert_eq!(pool.len(), 1);
        assert!(matches!(s.complete(1, Tick::ZERO), Completion::Stray));
    }

    #[test]
    fn an_orphaned_buffer_is_kept_until_its_completion() {
        let mut pool = SendPool::default();
        let mut s = SendState::default();
        assert!(!s.orphan(), "nothing in flight: nothing to cancel");
        s.submit(filled(&mut pool, 10), Tick::ZERO);
        assert!(s.orphan(), "in flight: the shard cancels it");
        assert!(s.in_kernel(), "the kernel may still read the buffer");
        assert!(s.pending().is_none() && s.started().is_none());
        // Cancelled, completed or failed: the buffer comes back only now.
        assert!(matches!(
            s.complete(-libc::ECANCELED, Tick::ZERO),
            Completion::Released(_)
        ));
        assert!(!s.in_kernel());
    }

    #[test]
    fn a_failed_send_hands_back_its_buffer_and_errno() {
        let mut pool = SendPool::default();
        let mut s = SendState::default();
        s.submit(filled(&mut pool, 10), Tick::ZERO);
        match s.complete(-libc::EPIPE, Tick::ZERO) {
            Completion::Failed(_, errno) => assert_eq!(errno, libc::EPIPE),
            other => panic!("expected a failure, got {other:?}"),
        }
        assert!(!s.in_kernel());
    }

    #[test]
    fn the_pool_is_bounded_and_drops_grown_buffers() {
        let mut pool = SendPool::default();
        let bufs: Vec<_> = (0..SEND_POOL + 5).map(|_| pool.take()).collect();
        for b in bufs {
            pool.give(b, SEND_BUF);
        }
        assert_eq!(pool.len(), SEND_POOL);
        let mut big = pool.take();
        big.buf.reserve(4 * SEND_BUF);
        pool.give(big, SEND_BUF);
        assert_eq!(
            pool.len(),
            SEND_POOL - 1,
            "a grown buffer is freed, not pooled"
        );
    }
}
