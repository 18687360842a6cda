//! The two halves of a single-producer single-consumer frame ring in shared memory.
//!
//! Each side keeps its own counter in private memory and only *publishes* it to the segment;
//! the peer's counter is read from the segment and validated before it is used, so a corrupt
//! or hostile peer can at worst make this side report [`ShmError::Corrupt`].

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};

use crate::error::{Result, ShmError};
use crate::layout::{
    DATA_WAITER, HEAD, KIND_DATA, KIND_PAD, RECORD_HEADER, SPACE_WAITER, TAIL, record_size,
};

/// A ring's location inside a mapped segment. The pointers stay valid while the mapping lives:
/// the stream that owns the mapping owns the rings too.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingPtrs {
    ctrl: *mut u8,
    data: *mut u8,
    capacity: u64,
}

// SAFETY: the pointers address a shared mapping owned by the same stream; they are only used
// through atomics (counters) or bounds-checked copies (data).
unsafe impl Send for RingPtrs {}

impl RingPtrs {
    /// # Safety
    /// `ctrl` must address 512 bytes and `data` `capacity` bytes of one live mapping, both
    /// 128-byte aligned, for as long as the rings made from this value are used.
    pub(crate) unsafe fn new(ctrl: *mut u8, data: *mut u8, capacity: usize) -> RingPtrs {
        RingPtrs {
            ctrl,
            data,
            capacity: capacity as u64,
        }
    }

    fn u64_at(&self, off: usize) -> &AtomicU64 {
        // SAFETY: off is one of the control block's aligned fields, inside the mapping.
        unsafe { &*(self.ctrl.add(off) as *const AtomicU64) }
    }

    pub(crate) fn word(&self, off: usize) -> &AtomicU32 {
        // SAFETY: as above.
        unsafe { &*(self.ctrl.add(off) as *const AtomicU32) }
    }

    pub(crate) fn data_waiter(&self) -> &AtomicU32 {
        self.word(DATA_WAITER)
    }

    pub(crate) fn space_waiter(&self) -> &AtomicU32 {
        self.word(SPACE_WAITER)
    }

    /// Read a record header at `off` (validated by the caller to leave 8 bytes).
    fn read_header(&self, off: u64) -> (u32, u32) {
        // SAFETY: off + 8 <= capacity (checked by the caller); the data area is 8-aligned and
        // the reads are atomic so a concurrent hostile write is a value, not a data race.
        unsafe {
            let p = self.data.add(off as usize);
            let len = (*(p as *const AtomicU32)).load(Ordering::Relaxed);
            let kind = (*(p.add(4) as *const AtomicU32)).load(Ordering::Relaxed);
            (len, kind)
        }
    }

    fn write_header(&self, off: u64, len: u32, kind: u32) {
        // SAFETY: as read_header; the producer owns [tail, head + capacity).
        unsafe {
            let p = self.data.add(off as usize);
            (*(p as *const AtomicU32)).store(len, Ordering::Relaxed);
            (*(p.add(4) as *const AtomicU32)).store(kind, Ordering::Relaxed);
        }
    }
}

/// Outcome of announcing that this side is about to sleep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Arm {
    /// The condition is already met (data to read, space to write): do not sleep.
    Ready,
    /// Sleep on the word while it holds 1.
    Wait,
}

/// Wake whoever sleeps on `word`, if anybody announced it. Called after a publishing store;
/// the fence orders that store before the load of the flag (the sleeper orders its flag store
/// before its re-check of the counter the same way).
#[inline]
fn wake_if_waiting(word: &AtomicU32) -> bool {
    fence(Ordering::SeqCst);
    if word.load(Ordering::Relaxed) != 0 {
        word.store(0, Ordering::Relaxed);
        crate::futex::wake(word);
        return true;
    }
    false
}

/// The writing half.
#[derive(Debug)]
pub(crate) struct Producer {
    ring: RingPtrs,
    max_frame: usize,
    /// Bytes ever committed (private copy; the segment's `tail` is only written).
    tail: u64,
    /// Last validated value of the consumer's `head`.
    head_cache: u64,
    /// Committed but the consumer was not yet checked for sleep.
    unflushed: bool,
}

impl Producer {
    pub(crate) fn new(ring: RingPtrs, max_frame: usize) -> Producer {
        Producer {
            ring,
            max_frame,
            tail: 0,
            head_cache: 0,
            unflushed: false,
        }
    }

    pub(crate) fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Reload the consumer's head and check it: it only moves forward, never past our tail.
    fn refresh_head(&mut self) -> Result<()> {
        let h = self.ring.u64_at(HEAD).load(Ordering::Acquire);
        let advanced = h.wrapping_sub(self.head_cache);
        if advanced > self.tail.wrapping_sub(self.head_cache) {
            return Err(ShmError::Corrupt("consumer head outside the written range"));
        }
        self.head_cache = h;
        Ok(())
    }

    /// Bytes a `len`-byte frame needs at the current tail (its record, plus the padding to
    /// the end of the ring when it does not fit before it), its record size, and the
    /// contiguous bytes before the end.
    fn need(&self, len: usize) -> (u64, u64, u64) {
        let cap = self.ring.capacity;
        let rec = record_size(len) as u64;
        let contiguous = cap - (self.tail & (cap - 1));
        let need = if rec <= contiguous {
            rec
        } else {
            contiguous + rec
        };
        (need, rec, contiguous)
    }

    /// Reserve room for a `len`-byte frame. Returns the data offset of the payload, or `None`
    /// when the ring is full. A padding record is written when the frame must wrap.
    pub(crate) fn try_claim(&mut self, len: usize) -> Result<Option<usize>> {
        if len > self.max_frame {
            return Err(ShmError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let cap = self.ring.capacity;
        let (need, rec, contiguous) = self.need(len);
        let off = self.tail & (cap - 1);
        if self.tail.wrapping_sub(self.head_cache) + need > cap {
            self.refresh_head()?;
            if self.tail.wrapping_sub(self.head_cache) + need > cap {
                return Ok(None);
            }
        }
        if rec > contiguous {
            self.ring
                .write_header(off, (contiguous as usize - RECORD_HEADER) as u32, KIND_PAD);
            self.tail = self.tail.wrapping_add(contiguous);
        }
        Ok(Some((self.tail & (cap - 1)) as usize + RECORD_HEADER))
    }

    /// The claimed payload area at `data_off`, `len` bytes.
    pub(crate) fn claimed(&mut self, data_off: usize, len: usize) -> &mut [u8] {
        debug_assert!(data_off + len <= self.ring.capacity as usize);
        // SAFETY: try_claim returned data_off for a record of at least len bytes inside the
        // data area, in the part of the ring the consumer does not read until we commit.
        unsafe { std::slice::from_raw_parts_mut(self.ring.data.add(data_off), len) }
    }

    /// A shared view of the claimed payload area.
    pub(crate) fn claimed_ref(&self, data_off: usize, len: usize) -> &[u8] {
        debug_assert!(data_off + len <= self.ring.capacity as usize);
        // SAFETY: as `claimed`.
        unsafe { std::slice::from_raw_parts(self.ring.data.add(data_off), len) }
    }

    /// Complete the claimed frame of `len` bytes (the payload is already written). It is not
    /// visible to the consumer until [`Producer::flush`] publishes the tail.
    pub(crate) fn commit(&mut self, len: usize) {
        let off = self.tail & (self.ring.capacity - 1);
        self.ring.write_header(off, len as u32, KIND_DATA);
        self.tail = self.tail.wrapping_add(record_size(len) as u64);
        self.unflushed = true;
    }

    /// Publish every committed frame (one store for a whole batch) and wake the consumer if
    /// it sleeps. Returns whether a wake-up was sent.
    pub(crate) fn flush(&mut self) -> bool {
        if !self.unflushed {
            return false;
        }
        self.unflushed = false;
        self.ring.u64_at(TAIL).store(self.tail, Ordering::Release);
        wake_if_waiting(self.ring.data_waiter())
    }

    /// Announce that the producer sleeps until `len` bytes fit.
    pub(crate) fn arm_space_wait(&mut self, len: usize) -> Result<Arm> {
        let ring = self.ring;
        let w = ring.space_waiter();
        w.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        match self.fits(len)? {
            true => {
                w.store(0, Ordering::Relaxed);
                Ok(Arm::Ready)
            }
            false => Ok(Arm::Wait),
        }
    }

    /// Whether a `len`-byte frame fits now (validating the consumer's head).
    pub(crate) fn fits(&mut self, len: usize) -> Result<bool> {
        if len > self.max_frame {
            return Err(ShmError::TooLarge {
                len,
                max: self.max_frame,
            });
        }
        let (need, _, _) = self.need(len);
        let cap = self.ring.capacity;
        // The cached head is enough when it already leaves room (no shared-line read).
        if self.tail.wrapping_sub(self.head_cache) + need <= cap {
            return Ok(true);
        }
        self.refresh_head()?;
        Ok(self.tail.wrapping_sub(self.head_cache) + need <= cap)
    }

    /// Whether everything committed has been released by the consumer.
    pub(crate) fn is_drained(&mut self) -> Result<bool> {
        self.refresh_head()?;
        Ok(self.head_cache == self.tail)
    }

    pub(crate) fn ring(&self) -> &RingPtrs {
        &self.ring
    }
}

/// A frame found by the consumer: where its payload is and how long it is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Found {
    pub(crate) off: usize,
    pub(crate) len: usize,
}

/// The reading half.
#[derive(Debug)]
pub(crate) struct Consumer {
    ring: RingPtrs,
    max_frame: usize,
    /// Bytes ever released (private copy).
    head: u64,
    /// Last validated value of the producer's tail.
    tail_cache: u64,
    /// Released but the producer was not yet checked for sleep.
    unflushed: bool,
}

impl Consumer {
    pub(crate) fn new(ring: RingPtrs, max_frame: usize) -> Consumer {
        Consumer {
            ring,
            max_frame,
            head: 0,
            tail_cache: 0,
            unflushed: false,
        }
    }

    fn refresh_tail(&mut self) -> Result<()> {
        let t = self.ring.u64_at(TAIL).load(Ordering::Acquire);
        let avail = t.wrapping_sub(self.head);
        if avail > self.ring.capacity
            || avail < self.tail_cache.wrapping_sub(self.head)
            || !avail.is_multiple_of(8)
        {
            return Err(ShmError::Corrupt("producer tail outside the ring"));
        }
        self.tail_cache = t;
        Ok(())
    }

    /// The next frame, validated, or `None` when the ring is empty. Padding is skipped.
    pub(crate) fn peek(&mut self) -> Result<Option<Found>> {
        let cap = self.ring.capacity;
        loop {
            if self.head == self.tail_cache {
                self.refresh_tail()?;
                if self.head == self.tail_cache {
                    return Ok(None);
                }
            }
            let avail = self.tail_cache.wrapping_sub(self.head);
            let off = self.head & (cap - 1);
            let contiguous = cap - off;
            // head and tail are multiples of 8 and avail >= 8, so the header is readable.
            let (len, kind) = self.ring.read_header(off);
            let len = len as u64;
            match kind {
                KIND_PAD => {
                    if len + RECORD_HEADER as u64 != contiguous || contiguous > avail {
                        return Err(ShmError::Corrupt("padding record of the wrong length"));
                    }
                    self.head = self.head.wrapping_add(contiguous);
                }
                KIND_DATA => {
                    let rec = record_size(len as usize) as u64;
                    if len > self.max_frame as u64 || rec > avail || rec > contiguous {
                        return Err(ShmError::Corrupt("record length beyond the committed data"));
                    }
                    return Ok(Some(Found {
                        off: off as usize + RECORD_HEADER,
                        len: len as usize,
                    }));
                }
                _ => return Err(ShmError::Corrupt("unknown record kind")),
            }
        }
    }

    /// The payload of a frame returned by [`Consumer::peek`].
    pub(crate) fn payload(&self, f: Found) -> &[u8] {
        // SAFETY: peek checked off + len lies inside the data area and before the tail. The
        // bytes are the producer's to have written; a hostile producer may change them while
        // they are read, which can change the values seen but not the bounds.
        unsafe { std::slice::from_raw_parts(self.ring.data.add(f.off), f.len) }
    }

    /// Release the frame returned by the last `peek`; the space goes back to the producer at
    /// the next [`Consumer::flush`].
    pub(crate) fn release(&mut self, f: Found) {
        self.head = self.head.wrapping_add(record_size(f.len) as u64);
        self.unflushed = true;
    }

    /// Publish the head (one store for a whole batch) and wake the producer if it waits for
    /// space.
    pub(crate) fn flush(&mut self) -> bool {
        if !self.unflushed {
            return false;
        }
        self.unflushed = false;
        self.ring.u64_at(HEAD).store(self.head, Ordering::Release);
        wake_if_waiting(self.ring.space_waiter())
    }

    /// Announce that the consumer sleeps until a frame arrives.
    pub(crate) fn arm_data_wait(&mut self) -> Result<Arm> {
        let ring = self.ring;
        let w = ring.data_waiter();
        w.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.head != self.tail_cache {
            w.store(0, Ordering::Relaxed);
            return Ok(Arm::Ready);
        }
        self.refresh_tail()?;
        if self.head != self.tail_cache {
            w.store(0, Ordering::Relaxed);
            return Ok(Arm::Ready);
        }
        Ok(Arm::Wait)
    }

    /// Whether committed frames are waiting (without validating them).
    pub(crate) fn has_data(&mut self) -> Result<bool> {
        if self.head != self.tail_cache {
            return Ok(true);
        }
        self.refresh_tail()?;
        Ok(self.head != self.tail_cache)
    }

    pub(crate) fn ring(&self) -> &RingPtrs {
        &self.ring
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::max_frame_for;

    /// A control block and a data area on the heap, 128-byte aligned.
    struct Mem {
        buf: Vec<u128>,
        cap: usize,
    }

    impl Mem {
        fn new(cap: usize) -> Mem {
            Mem {
                buf: vec![0u128; (512 + cap) / 16 + 8],
                cap,
            }
        }
        fn ptrs(&mut self) -> RingPtrs {
            let base = self.buf.as_mut_ptr() as *mut u8;
            let base = base.wrapping_add(base.align_offset(128));
            // SAFETY: 512 + cap bytes from base lie inside buf, which outlives the rings.
            unsafe { RingPtrs::new(base, base.add(512), self.cap) }
        }
    }

    fn pair(mem: &mut Mem) -> (Producer, Consumer) {
        let r = mem.ptrs();
        let max = max_frame_for(mem.cap);
        (Producer::new(r, max), Consumer::new(r, max))
    }

    fn send(p: &mut Producer, data: &[u8]) -> bool {
        match p.try_claim(data.len()).unwrap() {
            Some(off) => {
                p.claimed(off, data.len()).copy_from_slice(data);
                p.commit(data.len());
                p.flush();
                true
            }
            None => false,
        }
    }

    fn recv(c: &mut Consumer) -> Option<Vec<u8>> {
        let f = c.peek().unwrap()?;
        let v = c.payload(f).to_vec();
        c.release(f);
        c.flush();
        Some(v)
    }

    #[test]
    fn wraps_around_many_times_in_order() {
        let mut mem = Mem::new(4096);
        let (mut p, mut c) = pair(&mut mem);
        let mut seed = 7u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut sent, mut got) = (0u32, 0u32);
        let mut pending = std::collections::VecDeque::new();
        while got < 20_000 {
            // Send a few, receive a few: the ring's fill level wanders and wraps.
            for _ in 0..(next() % 4) {
                let len = (next() % 1500) as usize + 4;
                let mut v = vec![(sent & 0xff) as u8; len];
                v[..4].copy_from_slice(&sent.to_le_bytes());
                if send(&mut p, &v) {
                    pending.push_back(v);
                    sent += 1;
                }
            }
            for _ in 0..(next() % 4) {
                if let Some(v) = recv(&mut c) {
                    assert_eq!(Some(v), pending.pop_front());
                    got += 1;
                }
            }
        }
        assert!(p.tail > 4096 * 100, "wrapped many times");
    }

    #[test]
    fn full_ring_refuses_until_released() {
        let mut mem = Mem::new(4096);
        let (mut p, mut c) = pair(&mut mem);
        let frame = [1u8; 504]; // 512-byte records
        for _ in 0..8 {
            assert!(send(&mut p, &frame));
        }
        assert!(!send(&mut p, &frame), "full");
        assert!(!send(&mut p, &[]), "not even an empty frame");
        assert!(recv(&mut c).is_some());
        assert!(send(&mut p, &frame));
        assert!(matches!(
            p.try_claim(max_frame_for(4096) + 1),
            Err(ShmError::TooLarge { .. })
        ));
    }

    fn corrupt_consumer(setup: impl FnOnce(&RingPtrs)) -> ShmError {
        let mut mem = Mem::new(4096);
        let (mut p, mut c) = pair(&mut mem);
        assert!(send(&mut p, b"hello"));
        setup(&mem.ptrs());
        c.peek().unwrap_err()
    }

    #[test]
    fn consumer_rejects_corrupt_tails_and_records() {
        // Tail beyond one capacity of the head.
        let e = corrupt_consumer(|r| r.u64_at(TAIL).store(4096 + 16, Ordering::Relaxed));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Tail not a multiple of 8.
        let e = corrupt_consumer(|r| r.u64_at(TAIL).store(13, Ordering::Relaxed));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Tail before the head (huge wrapping distance).
        let e = corrupt_consumer(|r| r.u64_at(TAIL).store(u64::MAX - 7, Ordering::Relaxed));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Record longer than what was committed.
        let e = corrupt_consumer(|r| r.write_header(0, 100, KIND_DATA));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Record longer than the max frame (and than the ring).
        let e = corrupt_consumer(|r| r.write_header(0, u32::MAX, KIND_DATA));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Unknown kind.
        let e = corrupt_consumer(|r| r.write_header(0, 5, 0xdead));
        assert!(matches!(e, ShmError::Corrupt(_)));
        // Padding that does not reach the end of the ring.
        let e = corrupt_consumer(|r| r.write_header(0, 0, KIND_PAD));
        assert!(matches!(e, ShmError::Corrupt(_)));
    }

    #[test]
    fn consumer_rejects_a_tail_that_moves_back() {
        let mut mem = Mem::new(4096);
        let (mut p, mut c) = pair(&mut mem);
        assert!(send(&mut p, b"one"));
        assert!(send(&mut p, b"two"));
        assert!(c.has_data().unwrap());
        mem.ptrs().u64_at(TAIL).store(16, Ordering::Relaxed);
        // The cached tail is still used for what was already validated...
        assert_eq!(recv(&mut c).as_deref(), Some(&b"one"[..]));
        assert_eq!(recv(&mut c).as_deref(), Some(&b"two"[..]));
        // ...and a tail behind the head is refused.
        assert!(matches!(c.peek(), Err(ShmError::Corrupt(_))));
    }

    #[test]
    fn producer_rejects_a_head_beyond_its_tail() {
        let mut mem = Mem::new(4096);
        let (mut p, _c) = pair(&mut mem);
        let frame = [0u8; 1000];
        for _ in 0..4 {
            assert!(send(&mut p, &frame));
        }
        mem.ptrs().u64_at(HEAD).store(1 << 40, Ordering::Relaxed);
        assert!(matches!(p.try_claim(1000), Err(ShmError::Corrupt(_))));
        mem.ptrs().u64_at(HEAD).store(8, Ordering::Relaxed);
        assert!(p.try_claim(1000).is_ok());
        // Going back is refused too.
        mem.ptrs().u64_at(HEAD).store(0, Ordering::Relaxed);
        assert!(matches!(p.is_drained(), Err(ShmError::Corrupt(_))));
    }
}
