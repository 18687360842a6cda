//! A stream's settings: ring geometry ([`ShmConfig`]) and how blocking calls wait
//! ([`WaitMode`]).

use std::time::Duration;

use crate::layout::max_frame_for;

/// How a blocking call waits for data or space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitMode {
    /// Spin on the ring for up to this long, then sleep on a futex. An idle pair costs about
    /// nothing; a wake-up from sleep costs a system call on each side.
    Adaptive {
        /// How long to spin before sleeping.
        spin: Duration,
    },
    /// Never sleep: spin until the condition holds (the lowest latency, one core per waiter).
    BusyPoll,
}

impl Default for WaitMode {
    fn default() -> Self {
        WaitMode::Adaptive {
            spin: Duration::from_micros(50),
        }
    }
}

/// Settings of a listener (ring geometry) and of each stream (waiting).
#[derive(Debug, Clone, Copy)]
pub struct ShmConfig {
    /// Bytes per direction; a power of two between 4 KiB and 1 GiB. Default 1 MiB.
    pub ring_capacity: usize,
    /// Largest frame; at most half the ring less 8 bytes. Default: that maximum.
    pub max_frame: Option<usize>,
    /// How blocking calls wait.
    pub wait: WaitMode,
    /// How often a waiting side checks that its peer still lives (a crash is reported within
    /// about this long). Default 100 ms.
    pub liveness_interval: Duration,
}

impl Default for ShmConfig {
    fn default() -> Self {
        ShmConfig {
            ring_capacity: 1 << 20,
            max_frame: None,
            wait: WaitMode::default(),
            liveness_interval: Duration::from_millis(100),
        }
    }
}

impl ShmConfig {
    /// The largest frame the rings of this config carry.
    pub fn max_frame(&self) -> usize {
        self.max_frame
            .unwrap_or_else(|| max_frame_for(self.ring_capacity))
    }
}
