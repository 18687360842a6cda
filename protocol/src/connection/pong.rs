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
use crate::frame::{Flags, HEADER_LEN, Header, MessageType};
use crate::message::MAX_PING_PAYLOAD;

/// PONGs encoded and waiting to be written, ahead of the scheduler's queues.
#[derive(Debug, Default)]
pub(super) struct Answers {
    pub(super) bytes: BytesMut,
    pub(super) frames: u32,
}

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

impl Connection {
    /// Answer the PING at the front of the input in place; `false` when the next frame must
    /// take the ordinary path.
    #[inline]
    pub(super) fn answer_ping_in_place(&mut self) -> bool {
        if self.protector.is_some() || !matches!(self.phase, Phase::Established) {
            return false;
        }
        let timestamp = self.unix_time();
        let Some(b) = self.busy.as_mut() else {
            return false;
        };
        if !b.sched.is_critical_empty() {
            return false;
        }
        let answers = &mut b.answers;
        let took = b.decoder.take_ping(MAX_PING_PAYLOAD, |corr, payload| {
            let h = Header {
                msg_type: MessageType::Pong,
                flags: Flags::RESPONSE,
                priority: u8::MAX,
                trace_flags: 0,
                stream_id: 0,
                length: payload.len() as u32,
                correlation_id: corr,
                timestamp,
            };
            answers.bytes.extend_from_slice(&h.to_bytes());
            answers.bytes.extend_from_slice(payload);
            answers.frames += 1;
        });
        if took {
            self.stats.frames_rx += 1;
        }
        took
    }

    /// Append the PONGs answered in place to `buf`, ahead of anything queued (call it before
    /// [`Connection::poll_transmit`]; that also hands them out, one frame at a time).
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
        buf.extend_from_slice(&b.answers.bytes);
        self.stats.frames_tx += u64::from(n);
        self.stats.bytes_tx += b.answers.bytes.len() as u64;
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
