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

/// Buffer size the provided-buffer ring falls back to on kernels that cannot consume a
/// buffer incrementally (before 6.12): there every receive takes a whole buffer, however
/// little it holds.
pub(crate) const FALLBACK_RECV_BUFFER: u32 = 4096;

/// `IOU_PBUF_RING_INC` from the kernel's uapi `io_uring.h` (the io-uring crate keeps its
/// `sys` module private): register a buffer ring whose buffers are consumed incrementally.
const IOU_PBUF_RING_INC: u16 = 2;

/// A ring of provided receive buffers (`IORING_REGISTER_PBUF_RING`). A multishot receive takes
/// a buffer only when data arrives, so an idle connection owns none.
///
/// Where the kernel allows it (6.12 and later) the buffers are consumed incrementally
/// (`IOU_PBUF_RING_INC`): each receive takes only the bytes it fills from the current
/// buffer, at the offset where the previous one stopped, so large buffers cost small receives
/// nothing and a deep pipeline arrives in a few large completions. A completion flagged
/// `BUF_MORE` leaves its buffer with the kernel; the last one of a buffer hands it back.
pub(crate) struct BufRing {
    ring: *mut BufRingEntry,
    ring_layout: Layout,
    bufs: *mut u8,
    bufs_layout: Layout,
    entries: u16,
    buf_size: u32,
    tail: u16,
    /// Incremental consumption: bytes of each buffer already handed out (empty otherwise).
    used: Vec<u32>,
    pub(crate) bgid: u16,
}

impl BufRing {
    /// Register `memory` bytes of receive buffers: `buf_size`-byte buffers consumed
    /// incrementally where the kernel allows it, else the same memory as
    /// [`FALLBACK_RECV_BUFFER`]-byte buffers. Buffer counts are powers of two (at most 32,768).
    pub(crate) fn new(
        ring: &IoUring,
        bgid: u16,
        memory: usize,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        let count = |size: u32| -> u16 {
            let n = (memory / size.max(1) as usize).clamp(1, 1 << 15);
            // The largest power of two that fits (the ring's index mask needs one).
            (1usize << n.ilog2()) as u16
        };
        match BufRing::register(ring, bgid, count(buf_size), buf_size, true) {
            Ok(br) => Ok(br),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => BufRing::register(
                ring,
                bgid,
                count(FALLBACK_RECV_BUFFER),
                FALLBACK_RECV_BUFFER,
                false,
            ),
            Err(e) => Err(e),
        }
    }

    /// Whether buffers are consumed incrementally.
    pub(crate) fn incremental(&self) -> bool {
        !self.used.is_empty()
    }

    /// The size of each buffer.
    pub(crate) fn buf_size(&self) -> u32 {
        self.buf_size
    }

    /// Allocate `entries` (a power of two) buffers of `buf_size` bytes and register them.
    fn register(
        ring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_size: u32,
        incremental: bool,
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
            // SAFETY: whichever was allocated, with its layout.
            unsafe {
                if !ring_mem.is_null() {
                    dealloc(ring_mem.cast(), ring_layout);
                }
                if !bufs.is_null() {
                    dealloc(bufs, bufs_layout);
                }
            }
            return Err(io::Error::from(io::ErrorKind::OutOfMemory));
        }
        // From here on, Drop frees both.
        let mut br = BufRing {
            ring: ring_mem,
            ring_layout,
            bufs,
            bufs_layout,
            entries,
            buf_size,
            tail: 0,
            used: if incremental {
                vec![0; entries as usize]
            } else {
                Vec::new()
            },
            bgid,
        };
        let flags = if incremental { IOU_PBUF_RING_INC } else { 0 };
        // SAFETY: the ring memory is page aligned, zeroed, of `entries` entries, and lives until
        // unregistered... which the shard does before the ring itself is dropped.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(ring_mem as u64, entries, bgid, flags)?
        };
        // Fault every buffer page in now, at start-up, so that the node's resident memory
        // does not grow with the first connections that receive data.
        for off in (0..br.bufs_layout.size()).step_by(4096) {
            // SAFETY: off < size of the allocation.
            unsafe { br.bufs.add(off).write_volatile(0) };
        }
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

    /// The `len` bytes the completion at hand wrote into buffer `bid` (after what earlier
    /// completions took from it, when buffers are consumed incrementally).
    pub(crate) fn data(&self, bid: u16, len: usize) -> &[u8] {
        let used = self.used.get(bid as usize).copied().unwrap_or(0) as usize;
        assert!(bid < self.entries && used + len <= self.buf_size as usize);
        // SAFETY: bounds checked above; the kernel has finished writing these bytes (their
        // CQE was reaped) and does not write them again before the buffer is handed back.
        unsafe {
            std::slice::from_raw_parts(
                self.bufs.add(bid as usize * self.buf_size as usize + used),
                len,
            )
        }
    }

    /// The completion at hand (its CQE `flags`) is done with the `len` bytes it got in buffer
    /// `bid`: the buffer goes back to the kernel, unless the kernel keeps filling it
    /// (incremental consumption, `BUF_MORE`).
    pub(crate) fn release(&mut self, bid: u16, len: usize, flags: u32) {
        if bid >= self.entries {
            return;
        }
        if let Some(used) = self.used.get_mut(bid as usize) {
            if cqueue::buffer_more(flags) {
                *used += len as u32;
                debug_assert!(*used <= self.buf_size, "a buffer filled past its end");
                return;
            }
            *used = 0;
        }
        self.push(bid);
        self.publish();
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

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    use io_uring::{opcode, types};

    use super::*;

    /// Receive `chunks` (written one at a time, each reaped whole before the next) through a
    /// multishot receive from `br`; returns what arrived for each chunk.
    fn receive(ring: &mut IoUring, br: &mut BufRing, chunks: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let (mut tx, rx) = UnixStream::pair().unwrap();
        let e = opcode::RecvMulti::new(types::Fd(rx.as_raw_fd()), br.bgid)
            .build()
            .user_data(7);
        // SAFETY: the entry points to no memory of ours.
        unsafe { ring.submission().push(&e).unwrap() };
        ring.submit().unwrap();
        let mut got = Vec::new();
        for chunk in chunks {
            tx.write_all(chunk).unwrap();
            let mut arrived = Vec::new();
            // A chunk that runs past the current buffer's end arrives in two completions.
            while arrived.len() < chunk.len() {
                ring.submit_and_wait(1).unwrap();
                let cqe = ring.completion().next().unwrap();
                assert!(cqe.result() > 0, "receive failed: {}", cqe.result());
                assert!(
                    cqueue::more(cqe.flags()),
                    "the multishot receive stays armed"
                );
                let bid = cqueue::buffer_select(cqe.flags()).unwrap();
                let len = cqe.result() as usize;
                arrived.extend_from_slice(br.data(bid, len));
                br.release(bid, len, cqe.flags());
            }
            got.push(arrived);
        }
        got
    }

    #[test]
    fn buffers_are_consumed_incrementally_or_whole_and_every_byte_arrives() {
        // Small and large chunks through two 4 KiB buffers: chunks cross buffer ends, and
        // each buffer comes back and is filled again several times.
        let chunks: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![i; [5, 12, 3000, 2000, 1][i as usize % 5]])
            .collect();
        for incremental in [true, false] {
            let mut ring = IoUring::new(8).unwrap();
            let mut br = match BufRing::register(&ring, 0, 2, 4096, incremental) {
                Ok(br) => br,
                // A kernel before 6.12 cannot consume incrementally: nothing to check there.
                Err(e) if incremental && e.raw_os_error() == Some(libc::EINVAL) => continue,
                Err(e) => panic!("register: {e}"),
            };
            assert_eq!(br.incremental(), incremental);
            let got = receive(&mut ring, &mut br, &chunks);
            assert_eq!(got, chunks, "incremental {incremental}");
            br.unregister(&ring);
        }
    }

    #[test]
    fn a_limited_multishot_receive_ends_after_its_bytes() {
        let mut ring = IoUring::new(8).unwrap();
        let mut br = BufRing::register(&ring, 0, 4, 4096, false).unwrap();
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

    #[test]
    fn a_buffer_ring_is_sized_from_its_memory_in_powers_of_two() {
        let ring = IoUring::new(8).unwrap();
        let br = BufRing::new(&ring, 0, 3 * 64 * 1024, 64 * 1024).unwrap();
        if br.incremental() {
            assert_eq!((br.entries, br.buf_size()), (2, 64 * 1024));
        } else {
            assert_eq!((br.entries, br.buf_size()), (32, FALLBACK_RECV_BUFFER));
        }
        br.unregister(&ring);
    }
}
