//! Liveness: PING/PONG with the round-trip estimate, the client's heartbeat PINGs, and the
//! count of heartbeat intervals that passed with nothing received.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::Connection;
use crate::error::ErrorCode;
use crate::frame::{Flags, Frame, MessageType};
use crate::streams::Qos;
use crate::{CloseReason, Event, SendError, Tick};

/// A PING waiting for its PONG.
#[derive(Debug)]
pub(super) struct PingRecord {
    correlation_id: u32,
    sent: Instant,
    /// Sent by the application (its PONG is an event), not by the heartbeat.
    app: bool,
}

impl Connection {
    /// The smoothed round-trip time from PING/PONG, if measured.
    pub fn rtt(&self) -> Option<Duration> {
        (self.srtt_us > 0).then(|| Duration::from_micros(u64::from(self.srtt_us)))
    }

    /// The heartbeat interval agreed with the peer.
    pub(super) fn heartbeat(&self) -> Option<Duration> {
        self.peer.as_ref().and_then(|p| p.heartbeat)
    }

    /// When the next heartbeat interval counts as missed.
    pub(super) fn miss_deadline(&self, hb: Duration) -> Tick {
        self.last_rx + hb.saturating_mul(self.missed.saturating_add(1)) + hb / 2
    }

    /// When the client's next heartbeat PING is due.
    pub(super) fn ping_due(&self, hb: Duration) -> Tick {
        self.last_tx.min(self.last_rx.max(self.last_ping)) + hb
    }

    /// Count the heartbeat intervals missed by `now`; close with 108 past the limit.
    pub(super) fn on_heartbeat_missed(&mut self, now: Instant) {
        let Some(hb) = self.heartbeat() else { return };
        let limit = self.config.max_missed_heartbeats.max(1);
        // Each turn counts one interval; the limit closes the connection, so this is bounded.
        for _ in 0..limit {
            if now < self.at(self.miss_deadline(hb)) {
                return;
            }
            self.missed += 1;
            self.stats.heartbeats_missed = self.stats.heartbeats_missed.saturating_add(1);
            self.push_event(Event::HeartbeatMissed {
                missed: self.missed,
            });
            if self.missed >= limit {
                let msg = format!("{} heartbeats missed", self.missed);
                self.fatal(
                    ErrorCode::HEARTBEAT_TIMEOUT,
                    msg,
                    Some(CloseReason::HeartbeatTimeout),
                );
                return;
            }
        }
    }

    /// The client's heartbeat: a PING when nothing was sent for an interval.
    pub(super) fn on_ping_due(&mut self) {
        self.stats.heartbeats_sent = self.stats.heartbeats_sent.saturating_add(1);
        let _ = self.send_ping(Bytes::new(), false);
    }

    pub(super) fn send_ping(&mut self, payload: Bytes, app: bool) -> Result<u32, SendError> {
        if !self.has_room(Qos::Critical, 0) {
            return Err(SendError::QueueFull(Qos::Critical));
        }
        let id = self.next_correlation_id();
        let (max, sent) = (self.config.max_pings_in_flight.max(1), self.now());
        let pings = &mut self.busy().pings;
        if pings.len() >= max {
            pings.pop_front();
        }
        pings.push_back(PingRecord {
            correlation_id: id,
            sent,
            app,
        });
        self.last_ping = self.now;
        self.queue_control(MessageType::Ping, 0, payload, Flags::empty(), id);
        Ok(id)
    }

    pub(super) fn on_pong(&mut self, frame: Frame) {
        let corr = frame.header.correlation_id;
        let Some(pings) = self.busy.as_mut().map(|b| &mut b.pings) else {
            return; // unsolicited: liveness already counted
        };
        let Some(pos) = pings.iter().position(|p| p.correlation_id == corr) else {
            return; // late or unsolicited: liveness already counted
        };
        let Some(rec) = pings.remove(pos) else {
            return;
        };
        let rtt = self.now().saturating_duration_since(rec.sent);
        let srtt = match self.rtt() {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        };
        self.srtt_us = srtt.as_micros().clamp(1, u128::from(u32::MAX)) as u32;
        if rec.app {
            self.push_event(Event::Pong {
                correlation_id: corr,
                payload: frame.payload,
                rtt,
            });
        }
    }
}
