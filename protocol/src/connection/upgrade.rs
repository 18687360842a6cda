//! UPGRADE: moving a connection to another transport in band (docs/PROTOCOL.md §6.8). The
//! connection only carries the frames and tells the driver what arrived; the driver moves
//! the bytes. The sequence for shared memory: a request (`{to: "shm"}`, correlated), the
//! answer (`{to: "shm", params: {name, challenge}}`, RESPONSE), then each side's fence
//! (`{to: "shm", params: {fence: true}}`): the last frame that side sends on the old
//! transport. A reader takes the old transport up to the peer's fence and the new one after
//! it, so the frames stay in order across the switch whatever is in flight.

use super::Connection;
use super::SendError;
use crate::Event;
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, MessageType};
use crate::message::{Object, Payload, Upgrade};

/// What an UPGRADE frame is.
#[derive(Debug, Clone, PartialEq)]
pub enum UpgradeKind {
    /// The peer asks to move (answer with [`Connection::answer_upgrade`] or an ERROR).
    Request,
    /// The answer to our request.
    Answer,
    /// The peer's fence: after it, its frames come on the new transport.
    Fence,
}

impl Connection {
    /// Ask the peer to move this connection to `to` (`"shm"`): the returned correlation id
    /// is carried by its answer ([`Event::Upgrade`] of kind [`UpgradeKind::Answer`], or a
    /// `PeerError`).
    pub fn request_upgrade(&mut self, to: &str) -> Result<u32, SendError> {
        self.check_sendable()?;
        let id = self.next_correlation_id();
        let payload = Upgrade {
            to: to.to_owned(),
            params: Object::new(),
        }
        .to_bytes();
        self.queue_control(MessageType::Upgrade, 0, payload, Flags::empty(), id);
        Ok(id)
    }

    /// Answer the peer's request `correlation_id` to move to `to`, with what it needs.
    pub fn answer_upgrade(
        &mut self,
        correlation_id: u32,
        to: &str,
        params: Object,
    ) -> Result<(), SendError> {
        self.check_sendable()?;
        let payload = Upgrade {
            to: to.to_owned(),
            params,
        }
        .to_bytes();
        self.queue_control(
            MessageType::Upgrade,
            0,
            payload,
            Flags::RESPONSE,
            correlation_id,
        );
        Ok(())
    }

    /// Queue this side's fence: the driver sends everything taken before it, and it, on the
    /// old transport, and what follows on the new one.
    pub fn send_upgrade_fence(&mut self, to: &str) -> Result<(), SendError> {
        self.check_sendable()?;
        let mut params = Object::new();
        params.insert("fence".into(), true.into());
        let payload = Upgrade {
            to: to.to_owned(),
            params,
        }
        .to_bytes();
        self.queue_control(MessageType::Upgrade, 0, payload, Flags::empty(), 0);
        Ok(())
    }

    pub(super) fn on_upgrade(&mut self, frame: Frame) {
        let h = frame.header;
        let Ok(u) = Upgrade::from_bytes(&frame.payload) else {
            self.nonfatal(
                ErrorCode::MALFORMED_PAYLOAD,
                "UPGRADE payload does not parse".into(),
                &h,
            );
            return;
        };
        let kind = if h.flags.contains(Flags::RESPONSE) {
            UpgradeKind::Answer
        } else if u.params.get("fence").and_then(|v| v.as_bool()) == Some(true) {
            UpgradeKind::Fence
        } else {
            UpgradeKind::Request
        };
        self.push_event(Event::Upgrade {
            kind,
            to: u.to,
            params: u.params,
            correlation_id: h.correlation_id,
        });
    }
}

/// Whether `t` (a frame this side is about to send) is its UPGRADE fence: the driver's cue
/// to send what follows on the new transport. Told by the header alone (a record layer
/// seals the payload): the fence is the one UPGRADE this side sends with neither a
/// correlation id (a request has one) nor RESPONSE (an answer).
pub fn is_upgrade_fence(t: &super::Transmit) -> bool {
    let h = &t.header;
    h[3] == MessageType::Upgrade.to_u8()
        && Flags::from_bits_truncate(h[4]) & Flags::RESPONSE == Flags::empty()
        && h[16..20] == [0, 0, 0, 0]
}
