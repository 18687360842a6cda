//! io_uring set-up with feature fallback, the submission path ([`Ring::push`], bounded), the
//! provided-buffer ring, and `user_data` encoding. With `sys.rs`, this is where the runtime's
//! `unsafe` lives.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use std::collections::VecDeque;

use io_uring::{IoUring, cqueue, squeue, types::BufRingEntry};

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

/// A ring of provided receive buffers (`IORING_REGISTER_PBUF_RING`). A multishot receive takes
/// a buffer only when data arrives, so an idle connection owns none.
pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    entries: u16,
    buf_size: u32,
    tail: u16,
    pub(crate) bgid: u16,
}

impl BufRing {
    /// Allocate `entries` (a power of two) buffers of `buf_size` bytes and register them.
    pub(crate) fn new(
        ring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        assert!(entries.is_power_of_two());
        let ring_layout =
            Layout::from_size_align(entries as usize * std::mem::size_of::<BufRingEntry>(), 4096)
                .map_err(io::Error::other)?;
        let bufs_layout = Layout::from_size_align(entries as usize * buf_size as usize, 4096)
            .map_err(io::Error::other)?;
        // SAFETY: both layouts have non-zero size; the memory is freed in Drop.
        let (ring_mem, bufs) = unsafe {
            (
                alloc_zeroed(ring_layout).cast::<BufRingEntry>(),
                alloc_zeroed(bufs_layout),
            )
        };
        if ring_mem.is_null() || bufs.is_null() {
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // Fault every buffer page in now, at start-up, so that the node's resident memory
        // does not grow with the first connections that receive data.
        for off in (0..bufs_layout.size()).step_by(4096) {
            // SAFETY: off < size of the allocation.
            unsafe { bufs.add(off).write_volatile(0) };
        }
        let mut br = BufRing {
            ring: ring_mem,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: 0,
            bgid,
        };
        // SAFETY: the ring memory is page aligned, zeroed, of `entries` entries, and lives until
        // unregistered in Drop... which the shard does before the ring itself is dropped.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_mem as u64, entries, bgid, 0)?
        };
        for bid in 0..entries {
            br.push(bid);
        }
        br.publish();
        Ok(br)
    }

    fn push(&mut self, bid: u16) {
        let idx = (self.tail & (self.entries - 1)) as usize;
        // SAFETY: idx < entries; bufs holds entries * buf_size bytes.
        unsafe {
            let e = &mut *self.ring.add(idx);
            e.set_addr(self.bufs.add(bid as usize * self.buf_size as usize) as u64);
            e.set_len(self.buf_size);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
    }

    fn publish(&self) {
        // SAFETY: the tail field lives in the first entry of our ring; the kernel reads it with
        // acquire semantics, so a release store publishes the entries written before it.
        unsafe {
            let tail = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*tail).store(self.tail, Ordering::Release);
        }
    }

    /// The bytes the kernel wrote into buffer `bid`.
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        assert!(bid < self.entries && len <= self.buf_size as usize);
        // SAFETY: bounds checked above; the kernel has finished writing this buffer (its CQE
        // was reaped) and it is not handed back until `recycle`.
        unsafe {
            std::slice::from_raw_parts(self.bufs.add(bid as usize * self.buf_size as usize), len)
        }
    }

    /// Hand buffer `bid` back to the kernel.
    pub(crate) fn recycle(&mut self, bid: u16) {
        if bid < self.entries {
            self.push(bid);
            self.publish();
        }
    }

    /// Bytes of buffer memory.
    pub(crate) fn memory(&self) -> usize {
        self.entries as usize * self.buf_size as usize
    }

    /// Unregister from `ring` (before dropping it).
    pub(crate) fn unregister(&self, ring: &IoUring) {
        let _ = ring.submitter().unregister_buf_ring(self.bgid);
    }
}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with these layouts.
        unsafe {
            dealloc(self.ring.cast(), self.ring_layout);
            dealloc(self.bufs, self.bufs_layout);
        }
    }
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
