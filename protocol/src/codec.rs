//! Streaming frame decoder: feed it arbitrary chunks, take whole frames out.
//!
//! The decoder validates each header the moment its 24 bytes are in, so an oversized length
//! is refused (error 102) before any of its payload arrives. It buffers only bytes that have
//! actually been fed: a header's claimed length never causes an allocation.

use bytes::{Buf, BytesMut};

use crate::frame::{Frame, HEADER_LEN, Header, HeaderError, MAX_FRAME_LIMIT, MessageType};

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

    /// True after a fatal error.
    pub fn is_failed(&self) -> bool {
        self.failed.is_some()
    }

    /// If the next whole frame is a plain PING (stream 0, no flags) of at most
    /// `max_payload` bytes, take it without handing it out as a [`Frame`]: its correlation id
    /// and payload go to `answer`, its bytes are released, and `true` is returned. Anything
    /// else (another frame, a partial one, a header that fails validation) is left for
    /// [`Decoder::decode`]. No allocation, no reference count: the pipelined PING's path.
    #[inline]
    pub fn take_ping(&mut self, max_payload: usize, answer: impl FnOnce(u32, &[u8])) -> bool {
        if self.failed.is_some() || self.pending.is_some() {
            return false;
        }
        let Some(head) = self.buf.get(..HEADER_LEN) else {
            return false;
        };
        if head[3] != MessageType::Ping.to_u8() {
            return false;
        }
        let head: &[u8; HEADER_LEN] = head.try_into().expect("slice of HEADER_LEN");
        let Ok(h) = Header::decode(head, self.max_frame) else {
            return false;
        };
        let len = h.length as usize;
        if h.stream_id != 0
            || !h.flags.is_empty()
            || len > max_payload
            || self.buf.len() < HEADER_LEN + len
        {
            return false;
        }
        answer(h.correlation_id, &self.buf[HEADER_LEN..HEADER_LEN + len]);
        self.buf.advance(HEADER_LEN + len);
        if self.buf.is_empty() && self.buf.capacity() > IDLE_CAPACITY {
            self.buf = BytesMut::new();
        }
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
