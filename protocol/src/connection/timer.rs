//! The connection's timers: a fixed table of named deadlines, each derived from the state it
//! guards (so none can disagree with it). [`Connection::poll_timeout`] reads the earliest;
//! [`Connection::handle_timeout`] walks the table in order and fires what is due.

use std::time::Instant;

use super::{Connection, Phase, Side};
use crate::{CloseReason, Tick};

/// A named timer of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Timer {
    /// HELLO and the security handshake must finish (107 after it).
    Handshake,
    /// A graceful close must finish draining (then the transport is closed anyway).
    Close,
    /// The next heartbeat interval with nothing received counts as missed (108 past the limit).
    HeartbeatMiss,
    /// The client's next heartbeat PING.
    Ping,
}

impl Timer {
    /// Every timer, in the order they fire when due at once: a timeout that ends the
    /// connection goes before a PING it would make pointless.
    const ALL: [Timer; 4] = [
        Timer::Handshake,
        Timer::Close,
        Timer::HeartbeatMiss,
        Timer::Ping,
    ];
}

impl Connection {
    /// The deadline of `timer`, if it is armed.
    fn deadline(&self, timer: Timer) -> Option<Tick> {
        match (timer, &self.phase) {
            (Timer::Handshake, Phase::Opening(o)) => Some(o.deadline),
            (Timer::Close, Phase::Closing(c)) => Some(c.deadline),
            (Timer::HeartbeatMiss, Phase::Established) => {
                self.heartbeat().map(|hb| self.miss_deadline(hb))
            }
            (Timer::Ping, Phase::Established) if self.side == Side::Client => {
                self.heartbeat().map(|hb| self.ping_due(hb))
            }
            _ => None,
        }
    }

    /// The next instant at which [`Connection::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        Timer::ALL
            .iter()
            .filter_map(|&t| self.deadline(t))
            .min()
            .map(|t| self.at(t))
    }

    /// Run the timers due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.advance(now);
        for timer in Timer::ALL {
            // Read again for each: a timer that fired may have disarmed the ones after it.
            if self.deadline(timer).is_some_and(|d| now >= self.at(d)) {
                self.fire(timer, now);
            }
        }
    }

    fn fire(&mut self, timer: Timer, now: Instant) {
        match timer {
            Timer::Handshake => self.fatal(
                crate::ErrorCode::HANDSHAKE_TIMEOUT,
                "handshake did not finish in time".into(),
                Some(CloseReason::HandshakeTimeout),
            ),
            Timer::Close => {
                self.discard_output();
                self.enter_closed(CloseReason::CloseTimeout);
            }
            Timer::HeartbeatMiss => self.on_heartbeat_missed(now),
            Timer::Ping => self.on_ping_due(),
        }
    }
}
