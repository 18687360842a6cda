//! Credit-based flow control for windowed streams.
//!
//! Credit is an absolute byte offset (`max_data`), like QUIC's MAX_STREAM_DATA: the sender may
//! send payload bytes up to it. Credit updates travel in STREAM_ACK `{"max_data": N}`; a stale
//! or duplicated update can never shrink the limit.

use std::time::{Duration, Instant};

/// How a receive window is sized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowStrategy {
    /// A constant window of this many bytes.
    Fixed(u32),
    /// Starts at `initial`; doubles (up to `max`) when the peer uses a whole window within
    /// two round trips (the window limits throughput), halves (down to `min`) when an update
    /// takes more than 64 round trips (the consumer is slow: hold less).
    Adaptive {
        /// Starting size.
        initial: u32,
        /// Floor.
        min: u32,
        /// Ceiling.
        max: u32,
    },
}

impl WindowStrategy {
    /// The window the strategy starts with.
    pub const fn initial(self) -> u32 {
        match self {
            WindowStrategy::Fixed(w) => w,
            WindowStrategy::Adaptive { initial, .. } => initial,
        }
    }
}

/// The peer sent more than its credit on a stream (error 302).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("peer sent up to offset {attempted}, credit was {max_data}")]
pub struct FlowError {
    /// Offset the peer's data reached.
    pub attempted: u64,
    /// The credit it had.
    pub max_data: u64,
}

/// Our credit for sending on one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendCredit {
    max_data: u64,
    sent: u64,
    /// Set when a send was refused for want of credit; cleared when credit arrives.
    blocked: bool,
}

impl SendCredit {
    /// Credit of `initial` bytes.
    pub const fn new(initial: u32) -> Self {
        SendCredit {
            max_data: initial as u64,
            sent: 0,
            blocked: false,
        }
    }

    /// Bytes that may be sent now.
    #[inline]
    pub const fn available(&self) -> u64 {
        self.max_data.saturating_sub(self.sent)
    }

    /// Bytes sent so far.
    pub const fn sent(&self) -> u64 {
        self.sent
    }

    /// Take `n` bytes of credit; `false` (and the stream marked blocked) when there is not
    /// enough.
    #[inline]
    pub fn consume(&mut self, n: u64) -> bool {
        if n > self.available() {
            self.blocked = true;
            false
        } else {
            self.sent += n;
            true
        }
    }

    /// Apply a credit update. Returns `true` when a previously blocked sender may retry.
    pub fn update(&mut self, max_data: u64) -> bool {
        if max_data > self.max_data {
            self.max_data = max_data;
            if self.blocked {
                self.blocked = false;
                return true;
            }
        }
        false
    }
}

/// The receive side of one stream's flow control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    strategy: WindowStrategy,
    window: u32,
    /// Credit advertised to the peer (absolute offset).
    max_data: u64,
    /// Payload bytes received.
    received: u64,
    /// Payload bytes the application has released.
    consumed: u64,
    last_update: Option<Instant>,
}

impl RecvWindow {
    /// A window whose first credit is `initial_credit` (what the peer was told at HELLO or
    /// STREAM_OPEN).
    pub fn new(strategy: WindowStrategy, initial_credit: u32) -> Self {
        RecvWindow {
            strategy,
            window: initial_credit,
            max_data: initial_credit as u64,
            received: 0,
            consumed: 0,
            last_update: None,
        }
    }

    /// The current window size.
    pub const fn window(&self) -> u32 {
        self.window
    }

    /// Payload bytes received so far.
    pub const fn received(&self) -> u64 {
        self.received
    }

    /// Account for `n` received bytes; an error when they exceed the advertised credit.
    #[inline]
    pub fn on_receive(&mut self, n: u64) -> Result<(), FlowError> {
        let attempted = self.received.saturating_add(n);
        if attempted > self.max_data {
            return Err(FlowError {
                attempted,
                max_data: self.max_data,
            });
        }
        self.received = attempted;
        Ok(())
    }

    /// The application released `n` bytes. Returns the new credit limit to advertise when an
    /// update is due (less than half a window of credit left), else `None`.
    pub fn on_consume(&mut self, n: u64, now: Instant, rtt: Duration) -> Option<u64> {
        self.consumed = self.consumed.saturating_add(n).min(self.received);
        let outstanding = self.max_data - self.consumed;
        if outstanding >= u64::from(self.window / 2) && outstanding > 0 {
            return None;
        }
        if let WindowStrategy::Adaptive { min, max, .. } = self.strategy
            && let Some(last) = self.last_update
        {
            let since = now.saturating_duration_since(last);
            let rtt = rtt.max(Duration::from_micros(10));
            if since < rtt * 2 {
                self.window = self.window.saturating_mul(2).min(max).max(min);
            } else if since > rtt * 64 {
                self.window = (self.window / 2).max(min).min(max);
            }
        }
        self.last_update = Some(now);
        let new_max = self.consumed + u64::from(self.window);
        if new_max > self.max_data {
            self.max_data = new_max;
            Some(new_max)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_blocks_then_unblocks() {
        let mut c = SendCredit::new(100);
        assert!(c.consume(60));
        assert!(!c.consume(50));
        assert_eq!(c.available(), 40);
        assert!(!c.update(90), "a stale update never shrinks or unblocks");
        assert!(c.update(200));
        assert!(c.consume(50));
        assert_eq!(c.sent(), 110);
    }

    #[test]
    fn receiver_refuses_overrun_and_grants_credit_at_half() {
        let t = Instant::now();
        let rtt = Duration::from_millis(1);
        let mut w = RecvWindow::new(WindowStrategy::Fixed(100), 100);
        w.on_receive(100).unwrap();
        assert_eq!(
            w.on_receive(1),
            Err(FlowError {
                attempted: 101,
                max_data: 100
            })
        );
        assert_eq!(w.on_consume(40, t, rtt), None, "60 outstanding >= 50");
        assert_eq!(w.on_consume(20, t, rtt), Some(160));
        w.on_receive(60).unwrap();
    }

    #[test]
    fn adaptive_window_grows_when_used_fast_and_shrinks_when_slow() {
        let t0 = Instant::now();
        let rtt = Duration::from_millis(1);
        let strat = WindowStrategy::Adaptive {
            initial: 1000,
            min: 500,
            max: 4000,
        };
        let mut w = RecvWindow::new(strat, 1000);
        w.on_receive(1000).unwrap();
        assert_eq!(w.on_consume(1000, t0, rtt), Some(2000));
        w.on_receive(1000).unwrap();
        // The whole window was used within one RTT: double.
        assert_eq!(w.on_consume(1000, t0 + rtt, rtt), Some(4000));
        assert_eq!(w.window(), 2000);
        w.on_receive(2000).unwrap();
        assert_eq!(w.on_consume(2000, t0 + rtt * 2, rtt), Some(8000));
        assert_eq!(w.window(), 4000, "capped at max");
        w.on_receive(4000).unwrap();
        // A slow consumer: the window halves.
        assert_eq!(w.on_consume(4000, t0 + rtt * 500, rtt), Some(10_000));
        assert_eq!(w.window(), 2000);
    }
}
