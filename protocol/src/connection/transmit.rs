//! The outbound path: frames the connection generates itself (control frames, ERRORs) into
//! the critical queue, and [`Connection::poll_transmit`], which takes the next frame from the
//! scheduler (then the final frame), seals it when a record layer is active, and hands it over.

use bytes::{BufMut, Bytes, BytesMut};

use super::Connection;
use crate::error::ErrorCode;
use crate::frame::{Flags, HEADER_LEN, Header, MessageType};
use crate::message::{ErrorPayload, Payload};
use crate::streams::Qos;

/// One frame ready for the transport: header bytes and payload (sealed if a record layer is
/// active). Write `header` then `payload`, or gather them in one `writev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The 24 header bytes.
    pub header: [u8; HEADER_LEN],
    /// The payload.
    pub payload: Bytes,
}

impl Transmit {
    /// Total bytes.
    pub fn len(&self) -> usize {
        HEADER_LEN + self.payload.len()
    }

    /// Never empty: a header is always there.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Append header and payload to `buf`.
    pub fn write_to<B: BufMut + ?Sized>(&self, buf: &mut B) {
        buf.put_slice(&self.header);
        buf.put_slice(&self.payload);
    }
}

impl Connection {
    /// The next frame to hand to the transport.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.pop_answer() {
            return Some(t);
        }
        // A frame whose seal fails turns into one unsealed ERROR (`fatal` drops the record
        // layer and the queue), so the second attempt cannot fail: two turns suffice.
        for _ in 0..2 {
            if let Some(q) = self.busy.as_mut().and_then(|b| b.sched.pop()) {
                match self.finish_transmit(q.header, q.payload, q.seal) {
                    Some(t) => return Some(t),
                    None => continue,
                }
            }
            let f = self.take_final_frame()?;
            let t = self.finish_transmit(f.header, f.payload, f.seal);
            // Our CLOSE is out (a no-op once closed: the final frame was the fatal ERROR).
            self.close_transmitted();
            if t.is_some() {
                return t;
            }
        }
        None
    }

    /// Write the PINGs answered in place (all of them), then as many whole frames as fit in
    /// `max_bytes` into `buf` (at least one if any is
    /// queued). Returns the bytes written.
    pub fn write_transmits(&mut self, buf: &mut BytesMut, max_bytes: usize) -> usize {
        let start = buf.len();
        self.write_answers(buf);
        while let Some(t) = self.poll_transmit() {
            t.write_to(buf);
            if buf.len() - start >= max_bytes {
                break;
            }
        }
        buf.len() - start
    }

    fn finish_transmit(
        &mut self,
        mut header: Header,
        payload: Bytes,
        seal: bool,
    ) -> Option<Transmit> {
        let payload = match (&mut self.protector, seal) {
            (Some(p), true) => {
                header.length = (payload.len() + p.overhead()) as u32;
                let head = header.to_bytes();
                let mut out = BytesMut::with_capacity(header.length as usize);
                if let Err(e) = p.seal(&head, &payload, &mut out) {
                    // Fatal: the record layer cannot continue. Send an unsealed ERROR.
                    self.protector = None;
                    self.fatal(e.code(), e.message, None);
                    return None;
                }
                out.freeze()
            }
            _ => {
                header.length = payload.len() as u32;
                payload
            }
        };
        self.stats.frames_tx += 1;
        self.stats.bytes_tx += (HEADER_LEN + payload.len()) as u64;
        self.last_tx = self.now;
        Some(Transmit {
            header: header.to_bytes(),
            payload,
        })
    }

    pub(super) fn control_header(
        &self,
        msg_type: MessageType,
        stream_id: u32,
        flags: Flags,
        corr: u32,
    ) -> Header {
        Header {
            msg_type,
            flags,
            priority: u8::MAX,
            trace_flags: 0,
            stream_id,
            length: 0,
            correlation_id: corr,
            timestamp: self.unix_time(),
        }
    }

    /// Queue a connection-generated frame in the critical queue. A full critical queue means
    /// the peer is not reading what it provokes: close it as a slow consumer.
    pub(super) fn queue_control(
        &mut self,
        msg_type: MessageType,
        stream_id: u32,
        payload: Bytes,
        flags: Flags,
        corr: u32,
    ) {
        if self.is_closed() {
            return;
        }
        let header = self.control_header(msg_type, stream_id, flags, corr);
        let seal = self.protector.is_some();
        if self
            .busy()
            .sched
            .push(Qos::Critical, header, payload, seal)
            .is_err()
        {
            self.fatal(
                ErrorCode::SLOW_CONSUMER,
                "peer does not read the answers it provokes".into(),
                None,
            );
        }
    }

    pub(super) fn queue_error(
        &mut self,
        code: ErrorCode,
        message: String,
        stream_id: u32,
        corr: u32,
    ) {
        self.stats.count_error_sent(code.0);
        let payload = ErrorPayload {
            code: code.0,
            message,
        }
        .to_bytes();
        self.queue_control(
            MessageType::Error,
            stream_id,
            payload,
            Flags::RESPONSE,
            corr,
        );
    }

    pub(super) fn nonfatal(&mut self, code: ErrorCode, message: String, about: &Header) {
        self.queue_error(code, message, about.stream_id, about.correlation_id);
    }
}
