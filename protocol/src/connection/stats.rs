//! The counters of one connection: kept compact inside ([`Counters`]), handed out as a
//! [`ConnectionStats`] snapshot.

use std::collections::BTreeMap;

use super::Connection;

/// Counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Frames received.
    pub frames_rx: u64,
    /// Frames handed to the transport.
    pub frames_tx: u64,
    /// Bytes received.
    pub bytes_rx: u64,
    /// Bytes handed to the transport.
    pub bytes_tx: u64,
    /// ERROR frames sent, by code.
    pub errors_sent: BTreeMap<u16, u64>,
    /// ERROR frames received.
    pub errors_rx: u64,
    /// Heartbeat PINGs sent.
    pub heartbeats_sent: u64,
    /// Heartbeat intervals missed (cumulative).
    pub heartbeats_missed: u64,
    /// Frames dropped on arrival because their stream was just reset.
    pub dropped_rx: u64,
}

/// The counters behind [`ConnectionStats`], kept compact: the rare ones in 32 bits
/// (saturating), the per-code ERROR counts allocated with the first ERROR sent.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) frames_rx: u64,
    pub(super) frames_tx: u64,
    pub(super) bytes_rx: u64,
    pub(super) bytes_tx: u64,
    pub(super) errors_rx: u32,
    pub(super) heartbeats_sent: u32,
    pub(super) heartbeats_missed: u32,
    pub(super) dropped_rx: u32,
    // Boxed on purpose: 8 bytes inline instead of the map's 24 on every connection.
    #[allow(clippy::box_collection)]
    errors_sent: Option<Box<BTreeMap<u16, u64>>>,
}

impl Counters {
    pub(super) fn count_error_sent(&mut self, code: u16) {
        *self
            .errors_sent
            .get_or_insert_with(Box::default)
            .entry(code)
            .or_default() += 1;
    }
}

impl Connection {
    /// A snapshot of the counters.
    pub fn stats(&self) -> ConnectionStats {
        let c = &self.stats;
        ConnectionStats {
            frames_rx: c.frames_rx,
            frames_tx: c.frames_tx,
            bytes_rx: c.bytes_rx,
            bytes_tx: c.bytes_tx,
            errors_sent: c.errors_sent.as_deref().cloned().unwrap_or_default(),
            errors_rx: c.errors_rx.into(),
            heartbeats_sent: c.heartbeats_sent.into(),
            heartbeats_missed: c.heartbeats_missed.into(),
            dropped_rx: c.dropped_rx.into(),
        }
    }

    /// Best-effort frames shed by the scheduler.
    pub fn shed_frames(&self) -> u64 {
        self.shed.0 + self.busy.as_ref().map_or(0, |b| b.sched.shed_frames())
    }
}
