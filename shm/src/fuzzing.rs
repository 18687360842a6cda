//! Entry point for the fuzz target (`shm/fuzz`): a hostile peer scribbling over a ring's
//! counters and records while this side produces and consumes. Not part of the API.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::layout::{HEAD, KIND_DATA, KIND_PAD, TAIL, max_frame_for};
use crate::ring::{Consumer, Producer, RingPtrs};

const CAP: usize = 4096;

/// Run the operations encoded in `data` against one ring. Panics only if the ring lets a
/// hostile write lead to an out-of-bounds access or a broken invariant.
pub fn run(data: &[u8]) {
    let mut mem = vec![0u128; (512 + CAP) / 16 + 8];
    let base = mem.as_mut_ptr() as *mut u8;
    let base = base.wrapping_add(base.align_offset(128));
    // SAFETY: 512 + CAP bytes from base lie inside `mem`, which outlives the rings below.
    let ring = unsafe { RingPtrs::new(base, base.add(512), CAP) };
    let max = max_frame_for(CAP);
    let mut tx = Producer::new(ring, max);
    let mut rx = Consumer::new(ring, max);
    let u64_at = |off: usize| {
        // SAFETY: control-block field inside `mem`.
        unsafe { &*(base.add(off) as *const AtomicU64) }
    };
    let u32_at = |off: usize| {
        // SAFETY: 4-aligned offset inside the data area of `mem`.
        unsafe { &*(base.add(512 + off) as *const AtomicU32) }
    };
    let mut it = data.iter().copied();
    let mut next = |n: usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..n {
            v |= u64::from(it.next()?) << (8 * i);
        }
        Some(v)
    };
    let mut dead_rx = false;
    let mut dead_tx = false;
    while let Some(op) = next(1) {
        match op % 6 {
            // The peer moves the tail anywhere.
            0 => {
                let Some(v) = next(8) else { return };
                u64_at(TAIL).store(v, Ordering::Relaxed);
            }
            // The peer writes a record header anywhere (8-aligned).
            1 => {
                let (Some(off), Some(len), Some(k)) = (next(2), next(4), next(1)) else {
                    return;
                };
                let off = (off as usize * 8) % CAP;
                let kind = match k % 3 {
                    0 => KIND_DATA,
                    1 => KIND_PAD,
                    _ => k as u32,
                };
                u32_at(off).store(len as u32, Ordering::Relaxed);
                u32_at(off + 4).store(kind, Ordering::Relaxed);
            }
            // The peer moves the head anywhere.
            2 => {
                let Some(v) = next(8) else { return };
                u64_at(HEAD).store(v, Ordering::Relaxed);
            }
            // This side consumes: every frame it accepts must lie inside the data area.
            3 if !dead_rx => match rx.peek() {
                Ok(Some(f)) => {
                    assert!(f.off + f.len <= CAP, "frame outside the ring");
                    let p = rx.payload(f);
                    assert_eq!(p.len(), f.len);
                    std::hint::black_box(p.iter().fold(0u8, |a, b| a ^ b));
                    rx.release(f);
                    rx.flush();
                }
                Ok(None) => {}
                Err(_) => dead_rx = true,
            },
            // This side produces.
            4 if !dead_tx => {
                let Some(len) = next(2) else { return };
                let len = len as usize % (max + 16);
                match tx.try_claim(len) {
                    Ok(Some(off)) => {
                        tx.claimed(off, len).fill(0xAB);
                        tx.commit(len);
                        tx.flush();
                    }
                    Ok(None) => {}
                    Err(_) => dead_tx = true,
                }
            }
            _ => {}
        }
    }
}
