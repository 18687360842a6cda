//! Times as nanoseconds since a base instant: 8 bytes where an `Instant` takes 16, and an
//! `Option<Tick>` still 8. The connection state machine keeps its deadlines this way (base: the
//! connection's creation), and the runtime's shard its timers (base: the shard's start).

use std::num::NonZeroU64;
use std::ops::Add;
use std::time::{Duration, Instant};

/// Nanoseconds since a base instant chosen by the owner (stored plus one, so that
/// `Option<Tick>` needs no extra word). About 584 years fit; later times saturate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Tick(NonZeroU64);

impl Tick {
    /// The base instant itself.
    pub const ZERO: Tick = Tick(NonZeroU64::MIN);

    /// `t` measured from `base` (`ZERO` for instants before it).
    pub fn since(base: Instant, t: Instant) -> Tick {
        let ns = t.saturating_duration_since(base).as_nanos();
        Tick::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    /// `ns` nanoseconds after the base.
    pub const fn from_nanos(ns: u64) -> Tick {
        Tick(NonZeroU64::MIN.saturating_add(if ns == u64::MAX { ns - 1 } else { ns }))
    }

    /// Nanoseconds since the base.
    pub const fn as_nanos(self) -> u64 {
        self.0.get() - 1
    }

    /// The instant this tick stands for.
    pub fn at(self, base: Instant) -> Instant {
        base + Duration::from_nanos(self.as_nanos())
    }
}

impl Add<Duration> for Tick {
    type Output = Tick;

    /// Later by `d` (saturating).
    fn add(self, d: Duration) -> Tick {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        Tick::from_nanos(self.as_nanos().saturating_add(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_saturates() {
        let base = Instant::now();
        let t = base + Duration::from_micros(1500);
        assert_eq!(Tick::since(base, t).at(base), t);
        assert_eq!(Tick::since(t, base), Tick::ZERO);
        assert_eq!(Tick::ZERO.as_nanos(), 0);
        assert_eq!(
            (Tick::ZERO + Duration::from_secs(2)).as_nanos(),
            2_000_000_000
        );
        let far = Tick::from_nanos(u64::MAX) + Duration::from_secs(1);
        assert_eq!(far.as_nanos(), u64::MAX - 1);
        assert_eq!(std::mem::size_of::<Option<Tick>>(), 8);
    }
}
