//! How a connection ends: a graceful CLOSE exchange that drains what is queued, a fatal
//! ERROR that drops it, or the transport going away; and the final frame sent last.

use bytes::Bytes;

use super::{Connection, Phase};
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, Header, MessageType};
use crate::message::{Close, ErrorPayload, Payload};
use crate::{CloseReason, Event, Tick};

/// The frame sent last: CLOSE on a graceful close, ERROR on a fatal one.
#[derive(Debug)]
pub(super) struct FinalFrame {
    pub(super) header: Header,
    pub(super) payload: Bytes,
    pub(super) seal: bool,
}

/// What follows our CLOSE once it has been handed to the transport.
#[derive(Debug)]
pub(super) enum AfterClose {
    /// Wait for the peer's CLOSE.
    AwaitPeerClose,
    /// Both sides are done.
    Closed(CloseReason),
}

/// What a closing connection keeps.
pub(super) struct Closing {
    /// The peer must answer our CLOSE (or finish the exchange) by then.
    pub(super) deadline: Tick,
    /// Our CLOSE is out.
    sent: bool,
    /// Our CLOSE code and reason, when this side started the close.
    local: Option<(u16, String)>,
    /// Our CLOSE, until it is handed to the transport.
    final_frame: Option<FinalFrame>,
    then: AfterClose,
}

/// What a closed connection keeps: the fatal ERROR, until it is handed to the transport
/// (boxed: a closed connection without one pays 8 bytes).
pub(super) struct Closed {
    pub(super) final_frame: Option<Box<FinalFrame>>,
}

impl Connection {
    /// Close gracefully: stop accepting sends, transmit what is queued, then CLOSE; the
    /// connection ends when the peer answers CLOSE (or after the close timeout).
    pub fn close(&mut self, code: u16, reason: &str) {
        match self.phase {
            Phase::Closed(_) | Phase::Closing(_) => return,
            Phase::Established => {}
            // Nothing established yet: close without draining.
            Phase::Opening(_) => self.clear_queue(),
        }
        let payload = Close {
            code,
            reason: reason.to_owned(),
        }
        .to_bytes();
        let header = self.control_header(MessageType::Close, 0, Flags::empty(), 0);
        self.enter_closing(
            Some((code, reason.to_owned())),
            header,
            payload,
            AfterClose::AwaitPeerClose,
        );
    }

    fn enter_closing(
        &mut self,
        local: Option<(u16, String)>,
        header: Header,
        payload: Bytes,
        then: AfterClose,
    ) {
        self.phase = Phase::Closing(Box::new(Closing {
            deadline: self.now + self.config.close_timeout,
            sent: false,
            local,
            final_frame: Some(FinalFrame {
                header,
                payload,
                seal: self.protector.is_some(),
            }),
            then,
        }));
    }

    pub(super) fn on_peer_close(&mut self, frame: &Frame) {
        let close = Close::from_bytes(&frame.payload).unwrap_or(Close {
            code: 0,
            reason: String::new(),
        });
        if self.close_sent() {
            // Our CLOSE is out and this is the answer.
            let reason = self.local_close_reason();
            self.enter_closed(reason);
            return;
        }
        let peer_reason = CloseReason::Peer {
            code: close.code,
            reason: close.reason.clone(),
        };
        if let Phase::Closing(c) = &mut self.phase
            && c.final_frame.is_some()
        {
            // Both closed at once: ours is still queued; once sent, we are done.
            c.then = AfterClose::Closed(peer_reason);
            return;
        }
        self.push_event(Event::CloseRequested {
            code: close.code,
            reason: close.reason,
        });
        if !self.is_established() {
            self.enter_closed(peer_reason);
            return;
        }
        let header = self.control_header(MessageType::Close, 0, Flags::RESPONSE, 0);
        let payload = Close {
            code: 0,
            reason: "closing".into(),
        }
        .to_bytes();
        self.enter_closing(None, header, payload, AfterClose::Closed(peer_reason));
    }

    /// The final frame to transmit, if one waits (after every queued frame).
    pub(super) fn take_final_frame(&mut self) -> Option<FinalFrame> {
        match &mut self.phase {
            Phase::Closing(c) => c.final_frame.take(),
            Phase::Closed(c) => c.final_frame.take().map(|f| *f),
            _ => None,
        }
    }

    /// Our CLOSE was handed to the transport: what follows it.
    pub(super) fn close_transmitted(&mut self) {
        let Phase::Closing(c) = &mut self.phase else {
            return;
        };
        c.sent = true;
        if let AfterClose::Closed(reason) =
            std::mem::replace(&mut c.then, AfterClose::AwaitPeerClose)
        {
            self.enter_closed(reason);
        }
    }

    pub(super) fn has_final_frame(&self) -> bool {
        match &self.phase {
            Phase::Closing(c) => c.final_frame.is_some(),
            Phase::Closed(c) => c.final_frame.is_some(),
            _ => false,
        }
    }

    /// Drop every queued frame and the final frame: nothing more will be transmitted.
    pub(super) fn discard_output(&mut self) {
        self.clear_queue();
        self.take_final_frame();
    }

    pub(super) fn close_sent(&self) -> bool {
        matches!(&self.phase, Phase::Closing(c) if c.sent)
    }

    pub(super) fn local_close_reason(&self) -> CloseReason {
        let (code, reason) = match &self.phase {
            Phase::Closing(c) => c.local.clone().unwrap_or_default(),
            _ => Default::default(),
        };
        CloseReason::Local { code, reason }
    }

    /// Send ERROR with `code`, drop everything else queued, and close.
    pub(super) fn fatal(&mut self, code: ErrorCode, message: String, reason: Option<CloseReason>) {
        if self.is_closed() {
            return;
        }
        self.stats.count_error_sent(code.0);
        self.clear_queue();
        let payload = ErrorPayload {
            code: code.0,
            message: message.clone(),
        }
        .to_bytes();
        let error = FinalFrame {
            header: self.control_header(MessageType::Error, 0, Flags::empty(), 0),
            payload,
            seal: self.protector.is_some(),
        };
        self.phase = Phase::Closed(Closed {
            final_frame: Some(Box::new(error)),
        });
        self.push_event(Event::Closed(
            reason.unwrap_or(CloseReason::ProtocolError { code, message }),
        ));
    }

    /// End the connection (keeping a CLOSE not yet transmitted) and tell the driver.
    pub(super) fn enter_closed(&mut self, reason: CloseReason) {
        let final_frame = match &mut self.phase {
            Phase::Closed(_) => return,
            Phase::Closing(c) => c.final_frame.take().map(Box::new),
            _ => None,
        };
        self.phase = Phase::Closed(Closed { final_frame });
        self.push_event(Event::Closed(reason));
    }
}
