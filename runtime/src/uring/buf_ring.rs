//! The provided-buffer ring a shard's receives draw from (`IORING_REGISTER_PBUF_RING`),
//! consumed incrementally where the kernel allows it.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::io;
use std::sync::atomic::{AtomicU16, Ordering};

use io_uring::{IoUring, cqueue, types::BufRingEntry};

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

    /// Register `entries` (a power of two) buffers of `buf_size` bytes, each taken whole by
    /// one completion (what a multishot `recvmsg` needs: a datagram with its header).
    pub(crate) fn whole(
        ring: &IoUring,
        bgid: u16,
        entries: u16,
        buf_size: u32,
    ) -> io::Result<BufRing> {
        BufRing::register(ring, bgid, entries, buf_size, false)
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
