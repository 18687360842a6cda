//! io_uring set-up with feature fallback, the submission path ([`Ring::push`], bounded),
//! `user_data` encoding, and the receive's byte limit; the provided-buffer ring is in
//! `buf_ring.rs`. With `sys.rs`, this module is where the runtime's `unsafe` lives.

mod buf_ring;

pub(crate) use buf_ring::BufRing;

use std::collections::VecDeque;
use std::io;

use io_uring::{IoUring, cqueue, squeue};

/// The ring features a shard ended up with, logged at start-up.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingFeatures {
    /// `IORING_SETUP_SINGLE_ISSUER`.
    pub single_issuer: bool,
    /// `IORING_SETUP_DEFER_TASKRUN` (with `TASKRUN_FLAG`, so busy-polling can see pending work).
    pub defer_taskrun: bool,
    /// `IORING_SETUP_COOP_TASKRUN` (the fallback when deferred task running is unavailable).
    pub coop_taskrun: bool,
    /// Direct-descriptor table slots registered.
    pub direct_descriptors: u32,
}

/// Build a ring with the best flags this kernel accepts, falling back step by step.
pub(crate) fn build_ring(entries: u32) -> io::Result<(IoUring, RingFeatures)> {
    let cq = entries.saturating_mul(4);
    let attempts: [(bool, bool, bool); 3] = [
        (true, true, false),
        (true, false, true),
        (false, false, false),
    ];
    let mut last = None;
    for (single, defer, coop) in attempts {
        let mut b = IoUring::builder();
        b.setup_cqsize(cq).setup_clamp();
        if single {
            b.setup_single_issuer();
        }
        if defer {
            b.setup_defer_taskrun().setup_taskrun_flag();
        }
        if coop {
            b.setup_coop_taskrun().setup_taskrun_flag();
        }
        match b.build(entries) {
            Ok(ring) => {
                return Ok((
                    ring,
                    RingFeatures {
                        single_issuer: single,
                        defer_taskrun: defer,
                        coop_taskrun: coop,
                        direct_descriptors: 0,
                    },
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("io_uring unavailable")))
}

/// A multishot receive (`RecvMulti`) that ends once it has taken `limit` bytes (checked after
/// each receive, so it may take up to one buffer more; 0: no limit), so that
/// the shard arms it again at its next turn: the per-invocation byte limit of kernel 6.17
/// (`IORING_RECV_MSHOT_LIM`, set through the SQE's `optlen`). Earlier kernels refuse the entry
/// with `EINVAL` (the field was reserved).
pub(crate) fn limit_multishot(entry: squeue::Entry, limit: u32) -> squeue::Entry {
    // SAFETY: `squeue::Entry` is `#[repr(C)]` around the kernel's 64-byte `io_uring_sqe`, in
    // which `optlen` is the `u32` at byte 44 (the io-uring crate has no setter for it).
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[44..48].copy_from_slice(&limit.to_ne_bytes());
    // SAFETY: the same bytes with one field changed.
    unsafe { std::mem::transmute::<[u8; 64], squeue::Entry>(raw) }
}

/// What a completion belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Op {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Close = 4,
    Wake = 5,
    Cancel = 6,
    Poll = 7,
    /// Readiness of a shared-memory rendezvous socket (multishot poll).
    ShmAccept = 8,
    /// Futex wait: the peer committed frames to a shared-memory connection's receive ring.
    ShmRx = 9,
    /// Futex wait: the peer released space in a shared-memory connection's send ring.
    ShmTx = 10,
    /// Hang-up of a shared-memory connection's rendezvous socket (the peer's process is gone).
    ShmHup = 11,
    /// An outbound connection's connect (the slot is the link's index).
    Connect = 12,
    /// An outbound socket moved into the direct-descriptor table (the slot is the link's).
    Install = 13,
    /// The sending side of a lingering connection shut down.
    Shutdown = 14,
    /// A QUIC listener's multishot UDP receive (the slot is the listener's index).
    UdpRecv = 15,
    /// A UDP send (the slot is the send buffer's index).
    UdpSend = 16,
    /// An UPGRADE's rendezvous: the client's connect, then its challenge.
    Upgrade = 17,
    /// A shared-memory link's rendezvous socket: the listener's offer is readable (the slot
    /// is the link's index).
    ShmOffer = 18,
    /// A link's probe of its first URL connected (or not) (the slot is the link's index).
    Probe = 19,
}

impl TryFrom<u8> for Op {
    type Error = u8;

    fn try_from(v: u8) -> Result<Op, u8> {
        Ok(match v {
            1 => Op::Accept,
            2 => Op::Recv,
            3 => Op::Send,
            4 => Op::Close,
            5 => Op::Wake,
            6 => Op::Cancel,
            7 => Op::Poll,
            8 => Op::ShmAccept,
            9 => Op::ShmRx,
            10 => Op::ShmTx,
            11 => Op::ShmHup,
            12 => Op::Connect,
            13 => Op::Install,
            14 => Op::Shutdown,
            15 => Op::UdpRecv,
            16 => Op::UdpSend,
            17 => Op::Upgrade,
            18 => Op::ShmOffer,
            19 => Op::Probe,
            other => return Err(other),
        })
    }
}

/// `user_data` = op (8 bits) | generation (24 bits) | slot (32 bits).
#[inline]
pub(crate) fn ud(op: Op, slot: u32, generation: u32) -> u64 {
    debug_assert!(generation <= 0xFF_FFFF, "generations have 24 bits");
    ((op as u64) << 56) | (((generation & 0xFF_FFFF) as u64) << 32) | slot as u64
}

/// The parts of a `user_data`: the op (or the unknown byte), the generation and the slot.
#[inline]
pub(crate) fn ud_parts(ud: u64) -> (Result<Op, u8>, u32, u32) {
    (
        Op::try_from((ud >> 56) as u8),
        ((ud >> 32) & 0xFF_FFFF) as u32,
        ud as u32,
    )
}

/// Tries to push an entry (submitting in between) before it waits in the backlog.
const PUSH_ATTEMPTS: usize = 4;

/// A shard's ring: submissions go through [`Ring::push`], whose retry is bounded.
pub(crate) struct Ring {
    ring: IoUring,
    /// Entries the kernel would not take (its completion queue overflowing): pushed first at
    /// the next turn, after completions are reaped. At most one entry per operation a
    /// connection can have armed, so bounded by the connection table.
    backlog: VecDeque<squeue::Entry>,
}

impl Ring {
    pub(crate) fn new(ring: IoUring) -> Ring {
        Ring {
            ring,
            backlog: VecDeque::new(),
        }
    }

    /// The ring itself, for registration and waiting.
    pub(crate) fn inner(&self) -> &IoUring {
        &self.ring
    }

    /// Queue `entry` for submission.
    ///
    /// Every buffer an entry points to (send buffers, the wake buffer, address buffers,
    /// shared-memory futex words) is owned by the shard and stays in place until the
    /// entry's completion is reaped: that is the invariant the `unsafe` push relies on, and
    /// what `conn::send::SendState` and the shard's close path keep.
    pub(crate) fn push(&mut self, entry: squeue::Entry) {
        if self.backlog.is_empty() {
            for _ in 0..PUSH_ATTEMPTS {
                // SAFETY: see the invariant above.
                if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                    return;
                }
                if let Err(e) = self.ring.submit() {
                    tracing::warn!(error = %e, "submit while the SQ was full");
                }
            }
        }
        self.backlog.push_back(entry);
    }

    /// Move waiting entries into the submission queue (once completions were reaped).
    /// Returns whether any is left.
    pub(crate) fn push_backlog(&mut self) -> bool {
        while let Some(entry) = self.backlog.front() {
            // SAFETY: see the invariant of `push`.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return true;
            }
            self.backlog.pop_front();
        }
        false
    }

    /// Entries queued and not yet submitted.
    pub(crate) fn has_pending(&mut self) -> bool {
        !self.ring.submission().is_empty() || !self.backlog.is_empty()
    }

    /// The kernel flags deferred completions to run (they are posted only inside
    /// `io_uring_enter`).
    pub(crate) fn taskrun(&mut self) -> bool {
        self.ring.submission().taskrun()
    }

    /// Submit without waiting.
    pub(crate) fn submit(&self) -> io::Result<usize> {
        self.ring.submit()
    }

    /// Submit and wait for one completion, at most `timeout` when given.
    pub(crate) fn submit_and_wait(
        &self,
        timeout: Option<std::time::Duration>,
    ) -> io::Result<usize> {
        match timeout {
            Some(d) => {
                let ts = io_uring::types::Timespec::new()
                    .sec(d.as_secs())
                    .nsec(d.subsec_nanos().max(1000));
                let args = io_uring::types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            None => self.ring.submitter().submit_and_wait(1),
        }
    }

    /// Move up to `max` completions into `out`.
    pub(crate) fn completions(&mut self, out: &mut Vec<cqueue::Entry>, max: usize) {
        out.extend(self.ring.completion().take(max));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use io_uring::{opcode, types};

    use super::*;

    #[test]
    fn a_limited_multishot_receive_ends_after_its_bytes() {
        let mut ring = IoUring::new(8).unwrap();
        let mut br = BufRing::new(&ring, 0, 4 * 4096, 4096).unwrap();
        let (mut tx, rx) = UnixStream::pair().unwrap();
        tx.write_all(&[5u8; 10_000]).unwrap();
        let e = limit_multishot(
            opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), br.bgid)
                .build()
                .user_data(9),
            1000,
        );
        // SAFETY: the entry points to no memory of ours.
        unsafe { ring.submission().push(&e).unwrap() };
        ring.submit_and_wait(1).unwrap();
        let mut got = 0;
        loop {
            let Some(cqe) = ring.completion().next() else {
                ring.submit_and_wait(1).unwrap();
                continue;
            };
            if cqe.result() == -libc::EINVAL {
                // A kernel before 6.17: the shard then goes without a limit.
                assert_eq!(got, 0);
                break;
            }
            assert!(cqe.result() > 0, "receive failed: {}", cqe.result());
            let bid = cqueue::buffer_select(cqe.flags()).unwrap();
            got += cqe.result() as usize;
            br.release(bid, cqe.result() as usize, cqe.flags());
            if !cqueue::more(cqe.flags()) {
                // A receive fills its buffer, and the limit is checked after each.
                assert!(
                    (1000..10_000).contains(&got),
                    "ended after {got} of the 10,000 bytes waiting"
                );
                break;
            }
            assert!(got < 1000, "went on past its limit: {got}");
            assert!(cqueue::more(cqe.flags()));
        }
        br.unregister(&ring);
    }
}
