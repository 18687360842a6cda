//! Streaming frame decoder: feed it arbitrary chunks, take whole frames out.
//!
//! The decoder validates each header the moment its 24 bytes are in, so an oversized length
//! is refused (error 102) before any of its payload arrives. It buffers only bytes that have
//! actually been fed: a header's claimed length never causes an allocation.

use bytes::{Buf, BytesMut};

use crate::frame::{
    Frame, HEADER_LEN, Header, HeaderError, MAGIC, MAX_FRAME_LIMIT, MessageType, VERSION,
};

/// Default per-connection payload limit before HELLO agrees on one: 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1024 * 1024;

/// Capacity above which an emptied receive buffer is released rather than kept for reuse.
const IDLE_CAPACITY: usize = 16 * 1024;

/// A fatal decode failure: the stream of bytes can no longer be framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The header failed validation.
    #[error(transparent)]
    Header(#[from] HeaderError),
}

impl DecodeError {
    /// The SPEC error code to send before closing.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            DecodeError::Header(h) => h.code(),
        }
    }
}

/// The length (header and payload) of the plain PING that `bytes` starts with, when it holds
/// a whole one: magic and version right, type PING, no flags, reserved byte zero, stream 0,
/// a payload of at most `max_payload` bytes. `None` for anything else, including a PING
/// that fails these checks: [`Decoder::decode`] then reports what is wrong with it.
///
/// This is the pipelined PING's fast path: it reads nine header bytes and never allocates.
///
/// ```
/// use valkyrie_protocol::{codec::plain_ping_len, Flags, Frame, MessageType};
///
/// let mut wire = Vec::new();
/// Frame::new(MessageType::Ping, 0, &b"abc"[..]).encode(&mut wire);
/// assert_eq!(plain_ping_len(&wire, 1024), Some(27));
/// assert_eq!(plain_ping_len(&wire[..26], 1024), None, "not whole yet");
/// assert_eq!(plain_ping_len(&wire, 2), None, "payload over the limit");
///
/// let mut acked = Vec::new();
/// Frame::new(MessageType::Ping, 0, &b"abc"[..]).with_flags(Flags::ACK).encode(&mut acked);
/// assert_eq!(plain_ping_len(&acked, 1024), None, "flags take the ordinary path");
/// ```
#[inline]
pub fn plain_ping_len(bytes: &[u8], max_payload: usize) -> Option<usize> {
    let head: &[u8; HEADER_LEN] = bytes.get(..HEADER_LEN)?.try_into().ok()?;
    let plain = head[0] == MAGIC[0]
        && head[1] == MAGIC[1]
        && head[2] == VERSION
        && head[3] == MessageType::Ping.to_u8()
        && head[4] == 0
        && head[7] == 0
        && head[8..12] == [0; 4];
    if !plain {
        return None;
    }
    let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize;
    let end = HEADER_LEN + len;
    (len <= max_payload && bytes.len() >= end).then_some(end)
}

/// A streaming decoder with a per-connection payload limit.
///
/// ```
/// use valkyrie_protocol::{codec::Decoder, Frame, MessageType};
///
/// let mut wire = Vec::new();
/// Frame::new(MessageType::Ping, 0, &b"abc"[..]).encode(&mut wire);
/// Frame::new(MessageType::Ping, 0, &b"def"[..]).encode(&mut wire);
///
/// let mut dec = Decoder::new(1024);
/// let mut frames = Vec::new();
/// for byte in &wire {
///     dec.feed(std::slice::from_ref(byte)); // one byte at a time
///     while let Some(f) = dec.decode().unwrap() {
///         frames.push(f);
///     }
/// }
/// assert_eq!(frames.len(), 2);
/// assert_eq!(&frames[1].payload[..], b"def");
/// ```
#[derive(Debug)]
pub struct Decoder {
    buf: BytesMut,
    max_frame: u32,
    /// Header of the frame whose payload is still arriving, already validated.
    pending: Option<Header>,
    /// Set after a fatal error; every later call returns it again.
    failed: Option<DecodeError>,
}

impl Decoder {
    /// A decoder that refuses payloads over `max_frame` bytes (capped at 64 MiB).
    pub fn new(max_frame: u32) -> Self {
        Decoder {
            buf: BytesMut::new(),
            max_frame: max_frame.min(MAX_FRAME_LIMIT),
            pending: None,
            failed: None,
        }
    }

    /// The payload limit in force.
    pub fn max_frame(&self) -> u32 {
        self.max_frame
    }

    /// Change the payload limit (after HELLO negotiation). Applies to headers not yet decoded.
    pub fn set_max_frame(&mut self, max_frame: u32) {
        self.max_frame = max_frame.min(MAX_FRAME_LIMIT);
    }

    /// Append received bytes. Memory grows only by what is fed.
    #[inline]
    pub fn feed(&mut self, data: &[u8]) {
        if self.failed.is_none() {
            self.buf.extend_from_slice(data);
        }
    }

    /// Bytes fed but not yet returned as frames.
    #[inline]
    pub fn buffered(&self) -> usize {
        self.buf.len()
            + if self.pending.is_some() {
                HEADER_LEN
            } else {
                0
            }
    }

    /// Release the receive buffer's memory when nothing is buffered (an idle connection then
    /// holds none).
    pub fn shrink(&mut self) {
        if self.buf.is_empty() && self.pending.is_none() {
            self.buf = BytesMut::new();
        }
    }

    /// Bytes still to arrive before the first buffered frame is whole: 0 when nothing is
    /// buffered, when a whole frame is, or when the buffered header fails validation (then
    /// [`Decoder::decode`] reports why). Feeding exactly this many bytes completes the header
    /// first, then the payload.
    pub fn missing(&self) -> usize {
        if self.failed.is_some() {
            return 0;
        }
        if let Some(h) = self.pending {
            return (h.length as usize).saturating_sub(self.buf.len());
        }
        match Header::decode_prefix(&self.buf, self.max_frame) {
            None if self.buf.is_empty() => 0,
            None => HEADER_LEN - self.buf.len(),
            Some(Ok(h)) => (HEADER_LEN + h.length as usize).saturating_sub(self.buf.len()),
            Some(Err(_)) => 0,
        }
    }

    /// The bytes buffered ahead of decoding (whole frames and the start of the next), for a
    /// caller that handles some frames itself (see [`Decoder::consume`]); empty while a
    /// header waits for its payload or after a fatal error.
    pub fn unread(&self) -> &[u8] {
        if self.pending.is_some() || self.failed.is_some() {
            &[]
        } else {
            &self.buf
        }
    }

    /// Drop the first `n` bytes of [`Decoder::unread`]: whole frames the caller handled
    /// itself.
    ///
    /// # Panics
    /// When `n` is more than [`Decoder::unread`] holds (a caller's bug, never peer input).
    pub fn consume(&mut self, n: usize) {
        assert!(n <= self.unread().len(), "consumed more than was unread");
        // The allocation is kept for the input that follows (released by `shrink` when the
        // connection goes quiet): no frame shares it, and dropping it here made a busy
        // connection regrow it by doubling copies at every read.
        self.buf.advance(n);
    }

    /// True after a fatal error.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// If the next whole frame is a plain PING (see [`plain_ping_len`]) of at most
    /// `max_payload` bytes, take it without handing it out as a [`Frame`]: its wire bytes
    /// (header and payload) go to `answer`, they are released, and `true` is returned.
    /// Anything else (another frame, a partial one, a header that fails validation) is left
    /// for [`Decoder::decode`]. No allocation, no reference count: the pipelined PING's path.
    /// A PING whose header [`Decoder::decode`] already took (its payload was still arriving)
    /// is taken here too, once its payload is in.
    #[inline]
    pub fn take_ping(&mut self, max_payload: usize, answer: impl FnOnce(&[u8])) -> bool {
        if self.failed.is_some() {
            return false;
        }
        let max_payload = max_payload.min(self.max_frame as usize);
        if let Some(h) = self.pending {
            let len = h.length as usize;
            if h.msg_type != MessageType::Ping
                || h.stream_id != 0
                || !h.flags.is_empty()
                || len > max_payload
                || self.buf.len() < len
            {
                return false;
            }
            let mut frame = [0u8; HEADER_LEN + crate::message::MAX_PING_PAYLOAD];
            frame[..HEADER_LEN].copy_from_slice(&h.to_bytes());
            frame[HEADER_LEN..HEADER_LEN + len].copy_from_slice(&self.buf[..len]);
            answer(&frame[..HEADER_LEN + len]);
            self.pending = None;
            self.buf.advance(len);
        } else {
            let Some(n) = plain_ping_len(&self.buf, max_payload) else {
                return false;
            };
            answer(&self.buf[..n]);
            self.buf.advance(n);
        }
        // As in `consume`, the allocation is kept until `shrink`.
        true
    }

    /// The next whole frame, `Ok(None)` when more bytes are needed, or a fatal error (returned
    /// again on every later call; buffered bytes are discarded).
    #[inline]
    pub fn decode(&mut self) -> Result<Option<Frame>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let header = match self.pending.take() {
            Some(h) => h,
            None => {
                let Some(head) = self.buf.get(..HEADER_LEN) else {
                    return Ok(None);
                };
                let head: &[u8; HEADER_LEN] = head.try_into().expect("slice of HEADER_LEN");
                match Header::decode(head, self.max_frame) {
                    Ok(h) => {
                        self.buf.advance(HEADER_LEN);
                        h
                    }
                    Err(e) => {
                        let e = DecodeError::Header(e);
                        self.failed = Some(e);
                        self.buf = BytesMut::new();
                        return Err(e);
                    }
                }
            }
        };
        let len = header.length as usize;
        if self.buf.len() < len {
            self.pending = Some(header);
            return Ok(None);
        }
        let payload = self.buf.split_to(len).freeze();
        if self.buf.is_empty() && self.buf.capacity() > IDLE_CAPACITY {
            // Everything buffered has been handed out: let an idle connection hold no large
            // buffer (the allocation stays alive only as long as the frames that share it).
            self.buf = BytesMut::new();
        }
        Ok(Some(Frame { header, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, MessageType};

    fn wire(frames: &[Frame]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in frames {
            f.encode(&mut v);
        }
        v
    }

    #[test]
    fn oversized_length_is_refused_before_the_payload_arrives() {
        let mut dec = Decoder::new(100);
        let mut h = Header::new(MessageType::StreamData, 1, 101)
            .to_bytes()
            .to_vec();
        h.truncate(HEADER_LEN);
        dec.feed(&h);
        let err = dec.decode().unwrap_err();
        assert_eq!(err.code(), ErrorCode::FRAME_TOO_LARGE);
        // Poisoned from now on, and nothing more is buffered.
        dec.feed(&[0; 1000]);
        assert_eq!(dec.buffered(), 0);
        assert_eq!(dec.decode().unwrap_err(), err);
    }

    #[test]
    fn a_huge_claimed_length_allocates_nothing_up_front() {
        let mut dec = Decoder::new(MAX_FRAME_LIMIT);
        dec.feed(&Header::new(MessageType::StreamData, 1, MAX_FRAME_LIMIT).to_bytes());
        assert_eq!(dec.decode().unwrap(), None);
        assert!(dec.buf.capacity() < 4096, "capacity {}", dec.buf.capacity());
    }

    #[test]
    fn an_emptied_large_buffer_is_released() {
        let mut dec = Decoder::new(1 << 20);
        dec.feed(&wire(&[Frame::new(
            MessageType::StreamData,
            1,
            vec![0u8; 100_000],
        )]));
        assert!(dec.decode().unwrap().is_some());
        assert_eq!(dec.buf.capacity(), 0);
    }

    #[test]
    fn missing_counts_what_completes_the_first_frame() {
        let wire = wire(&[Frame::new(MessageType::StreamData, 1, vec![9u8; 40])]);
        let mut dec = Decoder::new(1024);
        assert_eq!(dec.missing(), 0, "nothing buffered");
        dec.feed(&wire[..10]);
        assert_eq!(dec.missing(), HEADER_LEN - 10, "the header first");
        dec.feed(&wire[10..HEADER_LEN]);
        assert_eq!(dec.missing(), 40, "then the payload");
        assert_eq!(dec.decode().unwrap(), None);
        dec.feed(&wire[HEADER_LEN..HEADER_LEN + 15]);
        assert_eq!(dec.missing(), 25, "the header already taken");
        dec.feed(&wire[HEADER_LEN + 15..]);
        assert_eq!(dec.missing(), 0, "whole");
        assert!(dec.decode().unwrap().is_some());
        // A header that fails validation leaves the verdict to decode().
        let mut bad = Decoder::new(8);
        bad.feed(&wire[..HEADER_LEN]);
        assert_eq!(bad.missing(), 0);
        assert_eq!(bad.decode().unwrap_err().code(), ErrorCode::FRAME_TOO_LARGE);
    }

    #[test]
    fn many_frames_in_one_chunk() {
        let frames: Vec<Frame> = (0..50u32)
            .map(|i| Frame::new(MessageType::StreamData, 1, vec![i as u8; i as usize]))
            .collect();
        let mut dec = Decoder::new(1024);
        dec.feed(&wire(&frames));
        let mut out = Vec::new();
        while let Some(f) = dec.decode().unwrap() {
            out.push(f);
        }
        assert_eq!(out, frames);
        assert_eq!(dec.buffered(), 0);
    }
}
