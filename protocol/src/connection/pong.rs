//! PINGs answered in place: the pipelined PING's path through the connection without a
//! per-frame allocation, reference count or queue entry.
//!
//! While the connection is established, unprotected, and nothing waits in its critical
//! queue, a plain PING at the front of the input is taken straight from the decoder's buffer
//! ([`crate::codec::Decoder::take_ping`]) and its PONG is encoded at once into a buffer of
//! answers, byte for byte what the queued path would send. The answers go out before
//! anything queued ([`Connection::write_answers`], and first in
//! [`Connection::poll_transmit`]), so PONGs keep their order among themselves and with the
//! critical queue: the path is taken only while that queue is empty. Their bytes count
//! towards the back-pressure marks like the critical queue's own.

use bytes::BytesMut;

use super::{Busy, Connection, Phase};
use crate::codec::plain_ping_len;
use crate::frame::{Flags, HEADER_LEN, MessageType};
use crate::message::MAX_PING_PAYLOAD;

/// PONGs encoded and waiting to be written, ahead of the scheduler's queues.
#[derive(Debug, Default)]
pub(super) struct Answers {
    pub(super) bytes: BytesMut,
    pub(super) frames: u32,
}

/// Answers of at least this many bytes are handed to an empty output buffer by swapping the
/// two buffers rather than copying (fewer are copied: a quiet connection then keeps no
/// send-sized buffer of answers).
const SWAP_AT: usize = 2048;

/// Capacity above which an emptied answer buffer is released.
const IDLE_CAPACITY: usize = 16 * 1024;

impl Busy {
    /// Back-pressure's high-water mark: the scheduler's, or answers worth half its critical
    /// byte bound.
    pub(super) fn is_high(&self) -> bool {
        self.sched.is_high()
            || self.answers.bytes.len() >= self.sched.limits().max_critical_bytes / 2
    }

    /// Back-pressure's low-water mark.
    pub(super) fn is_low(&self) -> bool {
        self.sched.is_low()
            && self.answers.bytes.len() <= self.sched.limits().max_critical_bytes / 4
    }
}

impl Answers {
    /// Release the buffer's memory when it is empty and large.
    pub(super) fn shrink(&mut self) {
        if self.bytes.is_empty() && self.bytes.capacity() > IDLE_CAPACITY {
            self.bytes = BytesMut::new();
        }
    }

    pub(super) fn clear(&mut self) {
        self.bytes.clear();
        self.frames = 0;
    }
}

impl Answers {
    /// Answer the PING whose whole wire bytes are `ping` (header checked by
    /// [`plain_ping_len`] or the decoder): its bytes with the header turned into the PONG's,
    /// byte for byte what the queued path sends (type PONG, flags RESPONSE, priority 255,
    /// trace flags 0, our `timestamp`; stream, length and correlation id kept).
    #[inline]
    fn push(&mut self, ping: &[u8], timestamp: u32) {
        let at = self.bytes.len();
        self.bytes.extend_from_slice(ping);
        let head = &mut self.bytes[at..at + HEADER_LEN];
        head[3] = MessageType::Pong.to_u8();
        head[4] = Flags::RESPONSE.bits();
        head[5] = u8::MAX;
        head[6] = 0;
        head[20..24].copy_from_slice(&timestamp.to_be_bytes());
        self.frames += 1;
    }

    /// Answer the plain PINGs at the front of `data` until another frame, a partial one, or
    /// `high` bytes of answers (back-pressure's mark); returns the bytes answered and whether
    /// the mark stopped it.
    #[inline]
    fn answer_from(
        &mut self,
        data: &[u8],
        high: usize,
        max_payload: usize,
        timestamp: u32,
    ) -> (usize, bool) {
        let mut rest = data;
        // Each turn consumes a whole frame of `rest`: bounded by its length.
        while let Some(n) = plain_ping_len(rest, max_payload) {
            if self.bytes.len() >= high {
                return (data.len() - rest.len(), true);
            }
            if rest.len() == data.len() {
                self.bytes.reserve(rest.len());
            }
            self.push(&rest[..n], timestamp);
            rest = &rest[n..];
        }
        (data.len() - rest.len(), false)
    }
}

impl Connection {
    /// Whether PINGs may be answered in place now: established, unprotected, nothing in the
    /// critical queue ahead of them.
    #[inline]
    fn answers_in_place(&self) -> bool {
        self.protector.is_none()
            && matches!(self.phase, Phase::Established)
            && self
                .busy
                .as_ref()
                .is_some_and(|b| b.sched.is_critical_empty())
    }

    /// Answer the PINGs at the front of the buffered input in place, as many as there are
    /// up to back-pressure's high-water mark; `false` when the next frame must take the
    /// ordinary path.
    #[inline]
    pub(super) fn answer_buffered_pings(&mut self) -> bool {
        if !self.answers_in_place() {
            return false;
        }
        let timestamp = self.unix_time();
        let Some(b) = self.busy.as_mut() else {
            return false;
        };
        let before = b.answers.frames;
        let answers = &mut b.answers;
        // The first may be a PING whose header was taken while its payload arrived.
        if !b
            .decoder
            .take_ping(MAX_PING_PAYLOAD, |ping| answers.push(ping, timestamp))
        {
            return false;
        }
        if !b.sched.is_high() {
            let high = b.sched.limits().max_critical_bytes / 2;
            let max_payload = MAX_PING_PAYLOAD.min(b.decoder.max_frame() as usize);
            let (n, _) = b
                .answers
                .answer_from(b.decoder.unread(), high, max_payload, timestamp);
            b.decoder.consume(n);
        }
        self.stats.frames_rx += u64::from(b.answers.frames - before);
        true
    }

    /// Answer the plain PINGs of freshly received `data` without copying them into the
    /// receive buffer; returns the bytes left for the decoder. A frame the decoder holds the
    /// start of is completed from `data` first (and answered in place when it is a PING), then
    /// PINGs are answered straight from `data` until another frame, a partial one, or
    /// back-pressure's high-water mark (decoding then waits as in [`Connection::poll_event`]).
    /// Only while nothing else waits to be decoded or handed out, so answers keep the input's
    /// order. Each PING is copied once, into the answers.
    #[inline]
    pub(super) fn answer_input<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let mut rest = data;
        // Each turn feeds bytes of `rest` to the decoder or returns: bounded by its length.
        while !rest.is_empty() && self.answers_in_place() {
            let Some(b) = self.busy.as_mut() else {
                return rest;
            };
            if b.input_held || b.decoder.is_failed() || !b.events.is_empty() {
                return rest;
            }
            let missing = b.decoder.missing();
            if missing == 0 {
                if b.decoder.buffered() != 0 {
                    // Whole frames wait to be decoded first.
                    return rest;
                }
                return self.answer_pings_from(rest);
            }
            // Complete the frame whose start arrived before, and answer it if it is a PING.
            let n = missing.min(rest.len());
            b.decoder.feed(&rest[..n]);
            rest = &rest[n..];
            if b.decoder.missing() == 0 && !self.answer_buffered_pings() {
                return rest;
            }
        }
        rest
    }

    /// Answer the plain PINGs at the front of `data` straight from it (the decoder holds
    /// nothing); returns the bytes from the first frame not answered.
    fn answer_pings_from<'a>(&mut self, data: &'a [u8]) -> &'a [u8] {
        let timestamp = self.unix_time();
        let Some(b) = self.busy.as_mut() else {
            return data;
        };
        if b.sched.is_high() {
            b.input_held = true;
            return data;
        }
        // The same mark as `Busy::is_high` (the scheduler's part cannot change here).
        let high = b.sched.limits().max_critical_bytes / 2;
        let max_payload = MAX_PING_PAYLOAD.min(b.decoder.max_frame() as usize);
        let before = b.answers.frames;
        let (n, held) = b.answers.answer_from(data, high, max_payload, timestamp);
        b.input_held |= held;
        self.stats.frames_rx += u64::from(b.answers.frames - before);
        &data[n..]
    }

    /// Append the PONGs answered in place to `buf`, ahead of anything queued (call it before
    /// [`Connection::poll_transmit`]; that also hands them out, one frame at a time). When
    /// `buf` is empty and the answers are large, the two buffers are swapped instead of
    /// copied: `buf` then holds the answers and the connection keeps `buf`'s allocation.
    /// Returns how many PONGs were written; all are `PONG` frames of stream 0 with
    /// priority 255.
    pub fn write_answers(&mut self, buf: &mut BytesMut) -> u32 {
        let Some(b) = self.busy.as_mut() else {
            return 0;
        };
        let n = b.answers.frames;
        if n == 0 {
            return 0;
        }
        let len = b.answers.bytes.len();
        if buf.is_empty() && len >= SWAP_AT {
            // Hand the answers over whole and keep `buf`'s empty allocation for the next ones.
            std::mem::swap(buf, &mut b.answers.bytes);
        } else {
            buf.extend_from_slice(&b.answers.bytes);
        }
        self.stats.frames_tx += u64::from(n);
        self.stats.bytes_tx += len as u64;
        self.last_tx = self.now;
        b.answers.clear();
        n
    }

    /// The first PONG answered in place, as a transmit (for drivers that take frames one at
    /// a time).
    pub(super) fn pop_answer(&mut self) -> Option<super::Transmit> {
        let b = self.busy.as_mut()?;
        if b.answers.frames == 0 {
            return None;
        }
        let head: [u8; HEADER_LEN] = b.answers.bytes[..HEADER_LEN]
            .try_into()
            .expect("an answer starts with its header");
        let len = u32::from_be_bytes([head[12], head[13], head[14], head[15]]) as usize;
        let mut frame = b.answers.bytes.split_to(HEADER_LEN + len);
        let payload = frame.split_off(HEADER_LEN).freeze();
        b.answers.frames -= 1;
        self.stats.frames_tx += 1;
        self.stats.bytes_tx += (HEADER_LEN + len) as u64;
        self.last_tx = self.now;
        Some(super::Transmit {
            header: head,
            payload,
        })
    }
}
