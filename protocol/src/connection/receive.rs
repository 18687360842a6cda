//! Decoded frames in: opening the record layer, the checks every frame passes, routing by
//! phase, and the control frames of an established connection (PING, ERROR, CLOSE); stream
//! frames go on to `streams.rs`, application frames to the driver.

use super::{Connection, Phase};
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, MessageType, TRACE_CONTEXT_LEN};
use crate::message::{ErrorPayload, MAX_PING_PAYLOAD, Payload, SecurityMode, StreamAck};
use crate::{CloseReason, Event, Side};

/// The types a replay of early data (QUIC 0-RTT) cannot turn into a second effect: the
/// greeting and liveness probes.
fn is_early_safe(t: MessageType) -> bool {
    matches!(
        t,
        MessageType::Hello | MessageType::Ping | MessageType::HealthCheck
    )
}

impl Connection {
    /// Whether the input handed in from now on is early data (QUIC 0-RTT, which an attacker
    /// may replay): while it is, frames other than HELLO, PING and HEALTH_CHECK are answered
    /// with ERROR 706 (too early, non-fatal) and dropped; the peer sends them again once the
    /// handshake is confirmed, and the transport says so by calling this with `false`.
    pub fn set_early_data(&mut self, early: bool) {
        if early {
            self.features |= super::EARLY_DATA;
        } else {
            self.features &= !super::EARLY_DATA;
        }
    }

    pub(super) fn on_frame(&mut self, mut frame: Frame) {
        self.stats.frames_rx += 1;
        if let Some(p) = &mut self.protector {
            let head = frame.header.to_bytes();
            match p.open(&head, frame.payload) {
                Ok(plain) => {
                    frame.header.length = plain.len() as u32;
                    frame.payload = plain;
                }
                Err(e) => {
                    self.fatal(e.code(), e.message, None);
                    return;
                }
            }
        }
        let h = frame.header;
        if !h.msg_type.is_known() {
            self.nonfatal(
                ErrorCode::UNKNOWN_MESSAGE_TYPE,
                format!("unknown message type 0x{:02X}", h.msg_type.to_u8()),
                &h,
            );
            return;
        }
        if self.features & super::EARLY_DATA != 0 && !is_early_safe(h.msg_type) {
            self.nonfatal(
                ErrorCode::TOO_EARLY,
                format!(
                    "{} in 0-RTT early data: send it again once the handshake is confirmed",
                    h.msg_type
                ),
                &h,
            );
            return;
        }
        if h.flags.contains(Flags::CMP) {
            self.nonfatal(
                ErrorCode::MALFORMED_PAYLOAD,
                "CMP set but no compression was agreed".into(),
                &h,
            );
            return;
        }
        if h.flags.contains(Flags::TRACE) && frame.payload.len() < TRACE_CONTEXT_LEN {
            self.nonfatal(
                ErrorCode::MALFORMED_PAYLOAD,
                "TRACE set but payload shorter than the trace context".into(),
                &h,
            );
            return;
        }
        match &self.phase {
            Phase::Opening(o) => {
                let step = o.step;
                self.on_opening_frame(step, frame);
            }
            // Closed before it was established: only the peer's CLOSE or ERROR still matter
            // (its HELLO or handshake frames get no answer after our CLOSE).
            Phase::Closing(_)
                if self.peer.is_none()
                    && !matches!(h.msg_type, MessageType::Close | MessageType::Error) => {}
            Phase::Established | Phase::Closing(_) => self.on_established_frame(frame),
            Phase::Closed(_) => {}
        }
    }

    fn on_established_frame(&mut self, frame: Frame) {
        let h = frame.header;
        if h.msg_type == MessageType::Error {
            // ERROR travels on the stream of the frame it is about.
            self.on_peer_error(&frame);
            return;
        }
        if h.stream_id != 0 {
            self.on_stream_frame(frame);
            return;
        }
        match h.msg_type {
            MessageType::Ping => {
                if frame.payload.len() > MAX_PING_PAYLOAD {
                    self.nonfatal(
                        ErrorCode::MALFORMED_PAYLOAD,
                        format!(
                            "PING of {} bytes, at most {MAX_PING_PAYLOAD}",
                            frame.payload.len()
                        ),
                        &h,
                    );
                } else {
                    self.queue_control(
                        MessageType::Pong,
                        0,
                        frame.payload,
                        Flags::RESPONSE,
                        h.correlation_id,
                    );
                }
            }
            MessageType::Pong => self.on_pong(frame),
            MessageType::Close => self.on_peer_close(&frame),
            MessageType::Negotiate => self.on_negotiate(&frame),
            MessageType::Upgrade => self.on_upgrade(frame),
            MessageType::StreamAck => {
                if h.flags.contains(Flags::RESPONSE) && h.correlation_id != 0 {
                    self.push_event(Event::Acked {
                        stream_id: 0,
                        correlation_id: h.correlation_id,
                    });
                }
            }
            t if super::send::is_stream_management(t) => {
                self.nonfatal(ErrorCode::INVALID_STREAM_ID, format!("{t} on stream 0"), &h)
            }
            t if t == MessageType::Hello || t == MessageType::HelloAck || t.is_handshake() => {
                self.nonfatal(
                    ErrorCode::UNEXPECTED_MESSAGE,
                    format!("{t} after the connection was established"),
                    &h,
                );
            }
            _ => self.deliver(frame),
        }
    }

    /// Hand an application frame over, acknowledging it first when the sender asked. On a
    /// zero_trust server, the policy decides first.
    pub(super) fn deliver(&mut self, frame: Frame) {
        let h = frame.header;
        if self.side == Side::Server
            && let Some(peer) = &self.peer
            && peer.security == SecurityMode::ZeroTrust
        {
            let identity = peer.identity.clone();
            let allowed = self
                .config
                .policy
                .as_ref()
                .is_some_and(|p| p.allows(identity.as_deref(), h.msg_type));
            if !allowed {
                self.nonfatal(
                    ErrorCode::UNAUTHORISED,
                    format!(
                        "{} may not send {}",
                        identity.as_deref().unwrap_or("an unauthenticated peer"),
                        h.msg_type
                    ),
                    &h,
                );
                self.push_event(Event::Denied {
                    identity,
                    msg_type: h.msg_type,
                    stream_id: h.stream_id,
                });
                return;
            }
        }
        if h.flags.contains(Flags::ACK) {
            let ack = StreamAck {
                max_data: None,
                received: self.streams.received(h.stream_id),
            };
            self.queue_control(
                MessageType::StreamAck,
                h.stream_id,
                ack.to_bytes(),
                Flags::RESPONSE,
                h.correlation_id,
            );
        }
        self.push_event(Event::Frame(frame));
    }

    pub(super) fn on_peer_error(&mut self, frame: &Frame) {
        self.stats.errors_rx = self.stats.errors_rx.saturating_add(1);
        let h = frame.header;
        let (code, message) = match ErrorPayload::from_bytes(&frame.payload) {
            Ok(p) => (ErrorCode(p.code), p.message),
            Err(e) => (
                ErrorCode::MALFORMED_PAYLOAD,
                format!("unreadable ERROR: {e}"),
            ),
        };
        if code.is_fatal() {
            self.discard_output();
            self.enter_closed(CloseReason::PeerError { code, message });
        } else {
            self.push_event(Event::PeerError {
                code,
                message,
                stream_id: h.stream_id,
                correlation_id: h.correlation_id,
            });
        }
    }
}
