//! Whole frames out of one of several byte streams that make up a connection: over QUIC a
//! connection's frames may come on several QUIC streams (Valkyrie streams on QUIC streams of
//! their own, docs/PROTOCOL.md §6.7), each cut into whole frames before the connection sees
//! them, so frames of different streams never interleave mid-frame. A frame in progress is
//! held (at most its header and the largest payload allowed); a header claiming more is
//! refused before its payload arrives. Only the length is read here: the connection checks
//! the rest of each header as usual.
//!
//! ```
//! use valkyrie_protocol::splitter::FrameSplitter;
//! use valkyrie_protocol::{Frame, MessageType};
//!
//! let mut wire = Vec::new();
//! Frame::new(MessageType::Ping, 0, vec![1, 2, 3]).encode(&mut wire);
//! Frame::new(MessageType::Ping, 0, vec![4]).encode(&mut wire);
//! let mut split = FrameSplitter::default();
//! let mut whole = Vec::new();
//! for piece in wire.chunks(5) {
//!     split.feed(piece, 1 << 20, |frames| whole.extend_from_slice(frames)).unwrap();
//! }
//! assert_eq!(whole, wire);
//! ```

/// The 24-byte frame header's length field: bytes 12..16, big-endian.
const HEADER: usize = crate::HEADER_LEN;

/// A frame whose header claims more than the connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge(pub u32);

/// One stream's frame in progress.
#[derive(Debug, Default)]
pub struct FrameSplitter {
    partial: Vec<u8>,
}

fn frame_len(header: &[u8]) -> u32 {
    u32::from_be_bytes([header[12], header[13], header[14], header[15]])
}

impl FrameSplitter {
    /// Bytes of a frame in progress.
    pub fn held(&self) -> usize {
        self.partial.len()
    }

    /// How many more bytes complete the frame in progress (0: none in progress).
    pub fn wanted(&self) -> usize {
        let n = self.partial.len();
        if n == 0 {
            0
        } else if n < HEADER {
            HEADER - n
        } else {
            HEADER + frame_len(&self.partial) as usize - n
        }
    }

    /// Take `data`: `out` gets runs of whole frames (from `data` itself where they lie
    /// whole in it); a frame cut at the end is kept for the next call. A header claiming a
    /// payload over `max` is refused.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        max: u32,
        mut out: impl FnMut(&[u8]),
    ) -> Result<(), TooLarge> {
        // Finish the frame in progress first.
        while !self.partial.is_empty() && !data.is_empty() {
            let want = self.wanted();
            let take = want.min(data.len());
            self.partial.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.partial.len() == HEADER && frame_len(&self.partial) > max {
                return Err(TooLarge(frame_len(&self.partial)));
            }
            if self.partial.len() >= HEADER && self.wanted() == 0 {
                out(&self.partial);
                self.partial.clear();
            }
        }
        // Whole frames straight from `data`.
        let mut off = 0;
        while data.len() - off >= HEADER {
            let len = frame_len(&data[off..]);
            if len > max {
                return Err(TooLarge(len));
            }
            let end = off + HEADER + len as usize;
            if end > data.len() {
                break;
            }
            off = end;
        }
        if off > 0 {
            out(&data[..off]);
        }
        self.partial.extend_from_slice(&data[off..]);
        if self.partial.len() >= HEADER && frame_len(&self.partial) > max {
            return Err(TooLarge(frame_len(&self.partial)));
        }
        Ok(())
    }
}

/// The Valkyrie stream a frame's header names (bytes 8..12).
pub fn stream_of(header: &[u8]) -> u32 {
    u32::from_be_bytes([header[8], header[9], header[10], header[11]])
}

/// Whether a frame ends its sender's side of its stream (EOS flag, STREAM_CLOSE,
/// STREAM_RESET): the QUIC stream carrying it can be finished after it.
pub fn ends_stream(header: &[u8]) -> bool {
    use crate::{Flags, MessageType};
    let flags = Flags::from_bits_truncate(header[4]);
    flags.contains(Flags::EOS)
        || header[3] == MessageType::StreamClose.to_u8()
        || header[3] == MessageType::StreamReset.to_u8()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Frame, MessageType};

    fn frames(n: usize) -> Vec<u8> {
        let mut v = Vec::new();
        for i in 0..n {
            Frame::new(MessageType::StreamData, 3, vec![i as u8; i * 7 % 50]).encode(&mut v);
        }
        v
    }

    #[test]
    fn frames_cut_anywhere_come_out_whole_and_in_order() {
        let wire = frames(40);
        for cut in [1usize, 2, 5, 23, 24, 25, 64, 1000] {
            let mut s = FrameSplitter::default();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                s.feed(chunk, 1 << 20, |f| {
                    // Every run handed out is whole frames.
                    let mut off = 0;
                    while off < f.len() {
                        off += HEADER + frame_len(&f[off..]) as usize;
                    }
                    assert_eq!(off, f.len(), "a run cut mid-frame (cut {cut})");
                    got.extend_from_slice(f);
                })
                .unwrap();
            }
            assert_eq!(got, wire, "cut {cut}");
            assert_eq!(s.held(), 0);
        }
    }

    #[test]
    fn a_header_claiming_too_much_is_refused_before_its_payload() {
        let mut v = Vec::new();
        Frame::new(MessageType::StreamData, 3, vec![0u8; 100]).encode(&mut v);
        let mut s = FrameSplitter::default();
        assert_eq!(s.feed(&v[..30], 50, |_| {}), Err(TooLarge(100)));
        let mut s = FrameSplitter::default();
        s.feed(&v[..10], 50, |_| {}).unwrap();
        assert_eq!(s.feed(&v[10..30], 50, |_| {}), Err(TooLarge(100)));
    }
}
