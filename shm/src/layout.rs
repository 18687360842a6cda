//! The segment's layout: a header page, two ring control blocks and two data areas.
//!
//! ```text
//! offset 0      header: magic, version, ring capacity, max frame, one state word per side
//! offset 512    control block of ring 0 (listener -> connector)
//! offset 1024   control block of ring 1 (connector -> listener)
//! offset 4096   data of ring 0 (capacity bytes)
//! 4096 + cap    data of ring 1 (capacity bytes)
//! ```
//!
//! A control block keeps each counter on its own 128-byte line (two cache lines, so the
//! adjacent-line prefetcher does not make the producer and consumer share one):
//! `tail` (bytes ever committed, written by the producer), `head` (bytes ever released, written
//! by the consumer), `data_waiter` (the consumer sleeps on it) and `space_waiter` (the producer
//! sleeps on it when the ring is full).
//!
//! A record in a data area is an 8-byte header — `len: u32`, `kind: u32` — then `len` bytes,
//! padded to 8. A record never wraps: when it does not fit before the end, a padding record
//! fills the rest and the record starts at offset 0.

/// `b"VLKSHM01"` as a little-endian u64.
pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"VLKSHM01");
/// Layout version.
pub(crate) const VERSION: u32 = 1;
/// Offset of the first data area.
pub(crate) const DATA_OFFSET: usize = 4096;
/// Offsets of the two control blocks.
pub(crate) const CTRL_OFFSET: [usize; 2] = [512, 1024];
/// Offsets of the two state words (listener, connector).
pub(crate) const STATE_OFFSET: [usize; 2] = [128, 256];
/// Field offsets inside a control block.
pub(crate) const TAIL: usize = 0;
pub(crate) const HEAD: usize = 128;
pub(crate) const DATA_WAITER: usize = 256;
pub(crate) const SPACE_WAITER: usize = 384;

/// Header field offsets.
pub(crate) const H_MAGIC: usize = 0;
pub(crate) const H_VERSION: usize = 8;
pub(crate) const H_CAPACITY: usize = 12;
pub(crate) const H_MAX_FRAME: usize = 16;

/// Record header size and kinds.
pub(crate) const RECORD_HEADER: usize = 8;
pub(crate) const KIND_DATA: u32 = 0x4441_5441; // "DATA"
pub(crate) const KIND_PAD: u32 = 0x5041_4444; // "PADD"

/// State word values.
pub(crate) const STATE_OPEN: u32 = 1;
pub(crate) const STATE_CLOSED: u32 = 2;

/// Smallest and largest ring capacity.
pub const MIN_CAPACITY: usize = 4096;
/// Largest ring capacity (1 GiB).
pub const MAX_CAPACITY: usize = 1 << 30;

/// Bytes a record of `len` payload bytes takes in the ring.
#[inline]
pub(crate) const fn record_size(len: usize) -> usize {
    (RECORD_HEADER + len + 7) & !7
}

/// The largest payload a ring of `capacity` bytes accepts: a record may need the padding
/// before it as well, so one record is at most half the ring.
pub const fn max_frame_for(capacity: usize) -> usize {
    capacity / 2 - RECORD_HEADER
}

/// Total size of a segment with two rings of `capacity` bytes.
pub(crate) const fn segment_size(capacity: usize) -> usize {
    DATA_OFFSET + 2 * capacity
}

/// Whether `capacity` and `max_frame` describe a layout this version accepts.
pub(crate) fn valid_geometry(capacity: usize, max_frame: usize) -> bool {
    capacity.is_power_of_two()
        && (MIN_CAPACITY..=MAX_CAPACITY).contains(&capacity)
        && max_frame > 0
        && max_frame <= max_frame_for(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_aligned_and_bounded() {
        assert_eq!(record_size(0), 8);
        assert_eq!(record_size(1), 16);
        assert_eq!(record_size(8), 16);
        assert_eq!(record_size(64), 72);
        let cap = 4096;
        assert_eq!(record_size(max_frame_for(cap)), cap / 2);
        assert!(valid_geometry(cap, max_frame_for(cap)));
        assert!(!valid_geometry(cap, max_frame_for(cap) + 1));
        assert!(!valid_geometry(3000, 100));
        assert!(!valid_geometry(2048, 100));
    }
}
