//! Stream multiplexing: id ranges and parity, QoS classes, credit-based flow control, and the
//! priority scheduler for outbound frames.
//!
//! | ids | class | QoS | flow control |
//! |---|---|---|---|
//! | `0` | control | critical | none |
//! | `1–99` | system | high | windowed |
//! | `100–999` | job | normal | windowed |
//! | `1000–9999` | data | normal | windowed |
//! | `10000+` | log | low | best-effort: shed under pressure |
//!
//! The side that opens a stream picks its id: the connecting side odd ids, the accepting side
//! even ids. Ids are reused once a stream is fully closed.

mod flow;
mod scheduler;
mod state;

pub use flow::{FlowError, RecvWindow, SendCredit, WindowStrategy};
pub use scheduler::{Enqueued, QueueFull, Scheduler, SchedulerLimits};
pub use state::{ReceiveError, StreamError, StreamInfo, Streams};

use std::ops::RangeInclusive;

use crate::Side;

/// The class of a stream, given by its id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamClass {
    /// Stream 0: connection control.
    Control,
    /// 1–99: system streams.
    System,
    /// 100–999: job execution.
    Job,
    /// 1000–9999: data transfer.
    Data,
    /// 10000+: logs and metrics.
    Log,
}

/// Quality-of-service level of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Qos {
    /// Never flow-controlled, always sent first, never starved.
    Critical,
    /// Windowed, weighted ahead of normal.
    High,
    /// Windowed.
    Normal,
    /// Best-effort: shed under pressure, never blocks others.
    Low,
}

impl StreamClass {
    /// Every class, in id order.
    pub const ALL: [StreamClass; 5] = [
        StreamClass::Control,
        StreamClass::System,
        StreamClass::Job,
        StreamClass::Data,
        StreamClass::Log,
    ];

    /// The class's position in [`StreamClass::ALL`].
    #[inline]
    pub const fn index(self) -> usize {
        match self {
            StreamClass::Control => 0,
            StreamClass::System => 1,
            StreamClass::Job => 2,
            StreamClass::Data => 3,
            StreamClass::Log => 4,
        }
    }

    /// The class of stream `id`.
    #[inline]
    pub const fn of(id: u32) -> StreamClass {
        match id {
            0 => StreamClass::Control,
            1..=99 => StreamClass::System,
            100..=999 => StreamClass::Job,
            1000..=9999 => StreamClass::Data,
            _ => StreamClass::Log,
        }
    }

    /// The ids of this class.
    pub const fn range(self) -> RangeInclusive<u32> {
        match self {
            StreamClass::Control => 0..=0,
            StreamClass::System => 1..=99,
            StreamClass::Job => 100..=999,
            StreamClass::Data => 1000..=9999,
            StreamClass::Log => 10_000..=u32::MAX,
        }
    }

    /// The QoS level.
    #[inline]
    pub const fn qos(self) -> Qos {
        match self {
            StreamClass::Control => Qos::Critical,
            StreamClass::System => Qos::High,
            StreamClass::Job | StreamClass::Data => Qos::Normal,
            StreamClass::Log => Qos::Low,
        }
    }

    /// Whether frames on this class consume flow-control credit.
    #[inline]
    pub const fn is_windowed(self) -> bool {
        matches!(
            self,
            StreamClass::System | StreamClass::Job | StreamClass::Data
        )
    }

    /// Lower-case name (`"job"`), used in metrics labels.
    pub const fn label(self) -> &'static str {
        match self {
            StreamClass::Control => "control",
            StreamClass::System => "system",
            StreamClass::Job => "job",
            StreamClass::Data => "data",
            StreamClass::Log => "log",
        }
    }
}

/// The side that opened (and so numbered) stream `id`: odd ids are the connecting side's
/// ([`Side::Client`]), even ids the accepting side's. Stream 0 belongs to neither; `None`.
#[inline]
pub const fn initiator(id: u32) -> Option<Side> {
    if id == 0 {
        None
    } else if id % 2 == 1 {
        Some(Side::Client)
    } else {
        Some(Side::Server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_every_id_once() {
        for id in [0u32, 1, 99, 100, 999, 1000, 9999, 10_000, u32::MAX] {
            let c = StreamClass::of(id);
            assert!(c.range().contains(&id), "{id} {c:?}");
        }
        assert_eq!(StreamClass::of(0).qos(), Qos::Critical);
        assert_eq!(StreamClass::of(5).qos(), Qos::High);
        assert_eq!(StreamClass::of(500).qos(), Qos::Normal);
        assert_eq!(StreamClass::of(5000).qos(), Qos::Normal);
        assert_eq!(StreamClass::of(50_000).qos(), Qos::Low);
        assert!(!StreamClass::Log.is_windowed());
        assert!(!StreamClass::Control.is_windowed());
    }

    #[test]
    fn parity_names_the_opener() {
        assert_eq!(initiator(0), None);
        assert_eq!(initiator(101), Some(Side::Client));
        assert_eq!(initiator(100), Some(Side::Server));
    }
}
