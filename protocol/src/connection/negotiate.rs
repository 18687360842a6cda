//! NEGOTIATE: the capability exchange after establishment (see [`crate::features`]). The
//! connecting side sends its list once established; a side that receives a NEGOTIATE
//! without RESPONSE answers with its own list; each side keeps what both lists name.

use super::Connection;
use crate::error::ErrorCode;
use crate::features::FeatureSet;
use crate::frame::{Flags, Frame, MessageType};
use crate::message::{Negotiate, Payload};
use crate::{Event, Side};

/// The set's bit that says the exchange is done (an agreed set may be empty).
const NEGOTIATED: u32 = 1 << 31;

impl Connection {
    /// The capabilities both sides have, once NEGOTIATE has been exchanged; `None` before
    /// (and for good with a peer that never negotiates: hold it to the base protocol).
    pub fn negotiated(&self) -> Option<FeatureSet> {
        (self.features & NEGOTIATED != 0).then(|| FeatureSet::from_bits(self.features))
    }

    fn our_features(&self) -> Negotiate {
        Negotiate {
            features: self.config.features.clone(),
            params: Default::default(),
        }
    }

    /// The connection is established: the connecting side offers its capabilities.
    pub(super) fn start_negotiation(&mut self) {
        if self.side == Side::Client && !self.config.features.is_empty() {
            let corr = self.next_correlation_id();
            let payload = self.our_features().to_bytes();
            self.queue_control(MessageType::Negotiate, 0, payload, Flags::empty(), corr);
        }
    }

    /// A NEGOTIATE on stream 0: answer one that asks, and keep what both sides have.
    pub(super) fn on_negotiate(&mut self, frame: &Frame) {
        let h = frame.header;
        let theirs = match Negotiate::from_bytes(&frame.payload) {
            Ok(n) => n,
            Err(e) => {
                self.nonfatal(ErrorCode::MALFORMED_PAYLOAD, e.to_string(), &h);
                return;
            }
        };
        if !h.flags.contains(Flags::RESPONSE) {
            let payload = self.our_features().to_bytes();
            self.queue_control(
                MessageType::Negotiate,
                0,
                payload,
                Flags::RESPONSE,
                h.correlation_id,
            );
        }
        let agreed = FeatureSet::from_names(&self.config.features)
            .intersect(&FeatureSet::from_names(&theirs.features));
        self.features = agreed.bits() | NEGOTIATED | (self.features & super::EARLY_DATA);
        self.push_event(Event::Negotiated { features: agreed });
    }
}
