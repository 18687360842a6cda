//! Streams on a connection: opening, finishing and resetting them, the frames that manage
//! them (STREAM_OPEN, STREAM_ACK with credit, STREAM_CLOSE, STREAM_RESET), and the credit
//! returned as received data is released.

use std::time::Duration;

use super::Connection;
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, HEADER_LEN, Header, MessageType};
use crate::message::{Payload, StreamAck, StreamClose, StreamOpen, StreamReset};
use crate::streams::{Qos, ReceiveError, StreamClass, StreamError, StreamInfo};
use crate::{Event, SendError};

impl Connection {
    /// Streams open now.
    pub fn open_streams(&self) -> usize {
        self.streams.len()
    }

    /// What changed in this connection's streams since the last call, for a runtime's
    /// metrics (see [`Streams::take_report`](crate::streams::Streams::take_report)): the change
    /// in open streams per class is added to `open_delta`, each receive window granted since
    /// goes to `window`. Costs one branch on a connection without streams.
    pub fn take_stream_report(
        &mut self,
        open_delta: &mut [i64; 5],
        window: impl FnMut(StreamClass, u32),
    ) {
        self.streams.take_report(open_delta, window);
    }

    /// Whether [`Connection::take_stream_report`] has anything to report.
    #[inline]
    pub fn stream_report_due(&self) -> bool {
        self.streams.report_due()
    }

    /// The connection is gone: take what earlier reports counted as open back out of
    /// `open_delta`.
    pub fn forget_stream_report(&mut self, open_delta: &mut [i64; 5]) {
        self.streams.forget_reported(open_delta);
    }

    /// The state of stream `id`.
    pub fn stream_info(&self, id: u32) -> Option<StreamInfo> {
        self.streams.info(id)
    }

    /// Open a stream of `class`, picking its id. With `open`, a STREAM_OPEN carrying it is
    /// sent (its `window` defaults to ours) and the peer's answer arrives as [`Event::Acked`]
    /// for this stream; without, the stream opens implicitly with its first frame.
    pub fn open_stream(
        &mut self,
        class: StreamClass,
        open: Option<StreamOpen>,
    ) -> Result<u32, SendError> {
        self.check_sendable()?;
        if open.is_some() && !self.has_room(Qos::Critical, 0) {
            return Err(SendError::QueueFull(Qos::Critical));
        }
        let id = self.streams.open(class)?;
        if let Some(mut open) = open {
            open.window.get_or_insert(self.streams.local_window());
            let corr = self.next_correlation_id();
            self.queue_control(
                MessageType::StreamOpen,
                id,
                open.to_bytes(),
                Flags::empty(),
                corr,
            );
        }
        Ok(id)
    }

    /// Close our sending half of `stream_id` with STREAM_CLOSE, after the frames already
    /// queued on it.
    pub fn finish_stream(&mut self, stream_id: u32) -> Result<(), SendError> {
        self.check_sendable()?;
        let qos = StreamClass::of(stream_id).qos();
        if !self.has_room(qos, HEADER_LEN) {
            return Err(SendError::QueueFull(qos));
        }
        self.streams.on_send(stream_id, 0, true)?;
        let header = Header {
            priority: 0,
            timestamp: self.unix_time(),
            ..Header::new(MessageType::StreamClose, stream_id, 0)
        };
        let seal = self.protector.is_some();
        self.busy()
            .sched
            .push(qos, header, StreamClose::default().to_bytes(), seal)
            .map_err(|e| SendError::QueueFull(e.0))?;
        Ok(())
    }

    /// Abort `stream_id` in both directions with `code`; frames still queued on it are dropped.
    pub fn reset_stream(
        &mut self,
        stream_id: u32,
        code: u16,
        reason: &str,
    ) -> Result<(), SendError> {
        if self.is_closed() {
            return Err(SendError::Closing);
        }
        if self.streams.info(stream_id).is_none() {
            return Err(StreamError::Unknown(stream_id).into());
        }
        self.send_reset(stream_id, code, reason.to_owned());
        Ok(())
    }

    /// Release `bytes` of received data on `stream_id` (only with
    /// [`Config::manual_flow_control`]); sends a credit update when one is due.
    pub fn release(&mut self, stream_id: u32, bytes: u64) {
        let rtt = self.rtt().unwrap_or(Duration::from_millis(1));
        if let Some(max) = self.streams.release(stream_id, bytes, self.now(), rtt) {
            self.send_credit(stream_id, max);
        }
    }

    pub(super) fn on_stream_frame(&mut self, frame: Frame) {
        let h = frame.header;
        let id = h.stream_id;
        let t = h.msg_type;
        if self.streams.is_reset_pending(id) {
            if t == MessageType::StreamReset && h.flags.contains(Flags::RESPONSE) {
                self.streams.confirm_reset(id);
            } else if t == MessageType::StreamReset {
                // Both sides reset at once: confirm theirs; ours is confirmed by their reply.
                self.queue_reset_confirm(id, &frame);
            } else {
                self.stats.dropped_rx = self.stats.dropped_rx.saturating_add(1);
            }
            return;
        }
        if self.streams.info(id).is_none() {
            if matches!(t, MessageType::StreamAck | MessageType::StreamClose) {
                self.stats.dropped_rx = self.stats.dropped_rx.saturating_add(1);
                return;
            }
            if t == MessageType::StreamReset {
                if !h.flags.contains(Flags::RESPONSE) {
                    self.queue_reset_confirm(id, &frame);
                }
                return;
            }
            if !self.streams.is_remote_id(id) {
                self.nonfatal(
                    ErrorCode::UNKNOWN_STREAM,
                    format!("stream {id} is not open"),
                    &h,
                );
                return;
            }
            let open = if t == MessageType::StreamOpen {
                match StreamOpen::from_bytes(&frame.payload) {
                    Ok(o) => Some(o),
                    Err(e) => {
                        self.nonfatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), &h);
                        return;
                    }
                }
            } else {
                None
            };
            let window = open.as_ref().and_then(|o| o.window);
            if let Err(e) = self.streams.accept(id, window) {
                self.send_reset(id, e.code().0, e.to_string());
                return;
            }
            self.push_event(Event::StreamOpened { id, open });
            if t == MessageType::StreamOpen {
                let ack = StreamAck {
                    max_data: Some(u64::from(self.streams.local_window())),
                    received: None,
                };
                self.queue_control(
                    MessageType::StreamAck,
                    id,
                    ack.to_bytes(),
                    Flags::RESPONSE,
                    h.correlation_id,
                );
                if h.flags.contains(Flags::EOS) {
                    self.finish_remote(id);
                }
                return;
            }
        } else if t == MessageType::StreamOpen {
            self.nonfatal(
                ErrorCode::STREAM_ALREADY_OPEN,
                format!("stream {id} is already open"),
                &h,
            );
            return;
        }
        match t {
            MessageType::StreamAck => match StreamAck::from_bytes(&frame.payload) {
                Ok(ack) => {
                    if let Some(max) = ack.max_data
                        && self.streams.on_credit(id, max)
                    {
                        self.push_event(Event::StreamWritable { id });
                    }
                    if h.flags.contains(Flags::RESPONSE) && h.correlation_id != 0 {
                        self.push_event(Event::Acked {
                            stream_id: id,
                            correlation_id: h.correlation_id,
                        });
                    }
                }
                Err(e) => self.nonfatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), &h),
            },
            MessageType::StreamReset => {
                let reset = StreamReset::from_bytes(&frame.payload).unwrap_or(StreamReset {
                    code: ErrorCode::MALFORMED_PAYLOAD.0,
                    reason: "malformed STREAM_RESET".into(),
                });
                self.streams.remove(id);
                if !h.flags.contains(Flags::RESPONSE) {
                    self.queue_reset_confirm(id, &frame);
                }
                self.push_event(Event::StreamReset {
                    id,
                    code: reset.code,
                    reason: reset.reason,
                    remote: true,
                });
            }
            MessageType::StreamClose => self.finish_remote(id),
            _ => match self.streams.on_receive(id, frame.payload.len()) {
                Ok(()) => {
                    let len = frame.payload.len() as u64;
                    let eos = h.flags.contains(Flags::EOS);
                    self.deliver(frame);
                    if !self.config.manual_flow_control {
                        self.release(id, len);
                    }
                    if eos {
                        self.finish_remote(id);
                    }
                }
                Err(ReceiveError::FlowControl) => {
                    let reason = format!("stream {id}: peer exceeded its flow-control credit");
                    self.send_reset(id, ErrorCode::FLOW_CONTROL_VIOLATION.0, reason.clone());
                    self.push_event(Event::StreamReset {
                        id,
                        code: ErrorCode::FLOW_CONTROL_VIOLATION.0,
                        reason,
                        remote: false,
                    });
                }
                Err(ReceiveError::Closed) => self.nonfatal(
                    ErrorCode::STREAM_CLOSED,
                    format!("stream {id} was finished by its sender"),
                    &h,
                ),
                Err(ReceiveError::Unknown) => self.nonfatal(
                    ErrorCode::UNKNOWN_STREAM,
                    format!("stream {id} is not open"),
                    &h,
                ),
            },
        }
    }

    fn finish_remote(&mut self, id: u32) {
        if self.streams.finish_remote(id) {
            self.push_event(Event::StreamFinished { id });
        }
    }

    fn send_credit(&mut self, id: u32, max_data: u64) {
        let ack = StreamAck {
            max_data: Some(max_data),
            received: None,
        };
        self.queue_control(
            MessageType::StreamAck,
            id,
            ack.to_bytes(),
            Flags::empty(),
            0,
        );
    }

    fn send_reset(&mut self, id: u32, code: u16, reason: String) {
        if let Some(b) = self.busy.as_mut() {
            b.sched.purge_stream(id);
        }
        if !self.streams.reset_local(id) {
            self.fatal(
                ErrorCode::STREAM_LIMIT,
                "peer does not confirm stream resets".into(),
                None,
            );
            return;
        }
        let payload = StreamReset { code, reason }.to_bytes();
        self.queue_control(MessageType::StreamReset, id, payload, Flags::empty(), 0);
    }

    fn queue_reset_confirm(&mut self, id: u32, frame: &Frame) {
        self.queue_control(
            MessageType::StreamReset,
            id,
            frame.payload.clone(),
            Flags::RESPONSE,
            frame.header.correlation_id,
        );
    }
}
