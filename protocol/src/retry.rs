//! Retry policies: exponential backoff with jitter, linear backoff, and a circuit breaker.
//!
//! Nothing here reads a clock or an entropy source: the time is passed in as an [`Instant`]
//! and randomness comes from the caller's [`rand::Rng`], so every policy is deterministic
//! under test.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use rand::SeedableRng;
//! use valkyrie_protocol::retry::{Backoff, CircuitBreaker, ExponentialBackoff, Jitter};
//!
//! let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
//! let mut backoff = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(1))
//!     .with_jitter(Jitter::Full)
//!     .with_max_attempts(5);
//! let mut delays = Vec::new();
//! while let Some(d) = backoff.next_delay(&mut rng) {
//!     delays.push(d);
//! }
//! assert_eq!(delays.len(), 5);
//!
//! let now = Instant::now();
//! let mut breaker = CircuitBreaker::new(3, Duration::from_secs(5), 1);
//! for _ in 0..3 { breaker.on_failure(now); }
//! assert!(!breaker.try_acquire(now)); // open: calls fail fast
//! assert!(breaker.try_acquire(now + Duration::from_secs(5))); // half-open probe
//! ```

use std::time::{Duration, Instant};

use rand::Rng;

/// A sequence of delays between attempts.
pub trait Backoff {
    /// The delay before the next attempt, or `None` when attempts are exhausted.
    fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<Duration>;
    /// Start over after a success.
    fn reset(&mut self);
    /// Attempts handed out since the last reset.
    fn attempts(&self) -> u32;
}

/// How random spread is applied to each delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Jitter {
    /// Exactly the computed delay.
    None,
    /// Uniform in `[0, delay]` ("full jitter").
    #[default]
    Full,
    /// Uniform in `[delay/2, delay]` ("equal jitter").
    Equal,
}

fn apply_jitter<R: Rng + ?Sized>(jitter: Jitter, delay: Duration, rng: &mut R) -> Duration {
    let nanos = delay.as_nanos().min(u64::MAX as u128) as u64;
    let nanos = match jitter {
        Jitter::None => nanos,
        Jitter::Full => rng.random_range(0..=nanos),
        Jitter::Equal => nanos / 2 + rng.random_range(0..=nanos - nanos / 2),
    };
    Duration::from_nanos(nanos)
}

/// Exponential backoff: `initial * multiplier^n`, capped at `max_delay`, with jitter.
#[derive(Debug, Clone)]
pub struct ExponentialBackoff {
    /// First delay.
    pub initial: Duration,
    /// Ceiling for any delay.
    pub max_delay: Duration,
    /// Growth per attempt (at least 1.0).
    pub multiplier: f64,
    /// Spread applied to each delay.
    pub jitter: Jitter,
    /// Attempts allowed before giving up (`None`: unbounded; the delay stays capped).
    pub max_attempts: Option<u32>,
    attempt: u32,
}

impl ExponentialBackoff {
    /// Doubling backoff from `initial` up to `max_delay`, full jitter, 10 attempts.
    pub fn new(initial: Duration, max_delay: Duration) -> Self {
        ExponentialBackoff {
            initial,
            max_delay,
            multiplier: 2.0,
            jitter: Jitter::Full,
            max_attempts: Some(10),
            attempt: 0,
        }
    }

    /// Set the growth factor (values below 1.0 are treated as 1.0).
    pub fn with_multiplier(mut self, multiplier: f64) -> Self {
        self.multiplier = if multiplier.is_finite() {
            multiplier.max(1.0)
        } else {
            1.0
        };
        self
    }

    /// Set the jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }

    /// Set the attempt bound.
    pub fn with_max_attempts(mut self, max: u32) -> Self {
        self.max_attempts = Some(max);
        self
    }

    /// The delay for attempt `n` (0-based) before jitter.
    pub fn base_delay(&self, n: u32) -> Duration {
        let factor = self.multiplier.powi(n.min(1024) as i32);
        let secs = self.initial.as_secs_f64() * factor;
        if !secs.is_finite() || secs >= self.max_delay.as_secs_f64() {
            self.max_delay
        } else {
            Duration::from_secs_f64(secs)
        }
    }
}

impl Backoff for ExponentialBackoff {
    fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<Duration> {
        if self.max_attempts.is_some_and(|m| self.attempt >= m) {
            return None;
        }
        let d = self.base_delay(self.attempt);
        self.attempt = self.attempt.saturating_add(1);
        Some(apply_jitter(self.jitter, d, rng))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Linear backoff: `initial + n * step`, capped at `max_delay`, at most `max_attempts`.
#[derive(Debug, Clone)]
pub struct LinearBackoff {
    /// First delay.
    pub initial: Duration,
    /// Added per attempt.
    pub step: Duration,
    /// Ceiling for any delay.
    pub max_delay: Duration,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Spread applied to each delay.
    pub jitter: Jitter,
    attempt: u32,
}

impl LinearBackoff {
    /// A constant `delay` for up to `max_attempts` attempts, no jitter.
    pub fn constant(delay: Duration, max_attempts: u32) -> Self {
        LinearBackoff {
            initial: delay,
            step: Duration::ZERO,
            max_delay: delay,
            max_attempts,
            jitter: Jitter::None,
            attempt: 0,
        }
    }

    /// `initial + n * step` up to `max_delay`, for up to `max_attempts` attempts, no jitter.
    pub fn new(initial: Duration, step: Duration, max_delay: Duration, max_attempts: u32) -> Self {
        LinearBackoff {
            initial,
            step,
            max_delay,
            max_attempts,
            jitter: Jitter::None,
            attempt: 0,
        }
    }

    /// Set the jitter.
    pub fn with_jitter(mut self, jitter: Jitter) -> Self {
        self.jitter = jitter;
        self
    }
}

impl Backoff for LinearBackoff {
    fn next_delay<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<Duration> {
        if self.attempt >= self.max_attempts {
            return None;
        }
        let d = self
            .initial
            .saturating_add(self.step.saturating_mul(self.attempt))
            .min(self.max_delay.max(self.initial));
        self.attempt += 1;
        Some(apply_jitter(self.jitter, d, rng))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }

    fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// The state of a [`CircuitBreaker`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls fail fast until the recovery timeout passes.
    Open,
    /// A bounded number of probe calls are let through.
    HalfOpen,
}

/// A circuit breaker: `failure_threshold` consecutive failures open it; after
/// `recovery_timeout` it lets `half_open_max_calls` probes through; a probe's success closes
/// it, a probe's failure opens it again.
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    failure_threshold: u32,
    recovery_timeout: Duration,
    half_open_max_calls: u32,
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probes_in_flight: u32,
    /// How many times the breaker has opened (for metrics).
    pub times_opened: u64,
}

impl CircuitBreaker {
    /// A closed breaker. `failure_threshold` and `half_open_max_calls` are at least 1.
    pub fn new(
        failure_threshold: u32,
        recovery_timeout: Duration,
        half_open_max_calls: u32,
    ) -> Self {
        CircuitBreaker {
            failure_threshold: failure_threshold.max(1),
            recovery_timeout,
            half_open_max_calls: half_open_max_calls.max(1),
            state: BreakerState::Closed,
            failures: 0,
            opened_at: None,
            probes_in_flight: 0,
            times_opened: 0,
        }
    }

    /// The state at `now` (an open breaker whose timeout passed reports half-open).
    pub fn state(&self, now: Instant) -> BreakerState {
        match (self.state, self.opened_at) {
            (BreakerState::Open, Some(t))
                if now.saturating_duration_since(t) >= self.recovery_timeout =>
            {
                BreakerState::HalfOpen
            }
            (s, _) => s,
        }
    }

    /// Ask to make a call at `now`. `false` means fail fast without calling.
    pub fn try_acquire(&mut self, now: Instant) -> bool {
        if self.state(now) == BreakerState::HalfOpen && self.state == BreakerState::Open {
            self.state = BreakerState::HalfOpen;
            self.probes_in_flight = 0;
        }
        match self.state {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => {
                if self.probes_in_flight < self.half_open_max_calls {
                    self.probes_in_flight += 1;
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Report a successful call.
    pub fn on_success(&mut self, _now: Instant) {
        self.failures = 0;
        self.probes_in_flight = 0;
        self.opened_at = None;
        self.state = BreakerState::Closed;
    }

    /// Report a failed call.
    pub fn on_failure(&mut self, now: Instant) {
        match self.state {
            BreakerState::HalfOpen => self.open(now),
            BreakerState::Closed => {
                self.failures = self.failures.saturating_add(1);
                if self.failures >= self.failure_threshold {
                    self.open(now);
                }
            }
            BreakerState::Open => {}
        }
    }

    /// When an open breaker will let a probe through.
    pub fn retry_at(&self) -> Option<Instant> {
        match self.state {
            BreakerState::Open => self.opened_at.map(|t| t + self.recovery_timeout),
            _ => None,
        }
    }

    fn open(&mut self, now: Instant) {
        self.state = BreakerState::Open;
        self.opened_at = Some(now);
        self.failures = 0;
        self.probes_in_flight = 0;
        self.times_opened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn exponential_doubles_and_caps() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = ExponentialBackoff::new(Duration::from_millis(100), Duration::from_millis(500))
            .with_jitter(Jitter::None)
            .with_max_attempts(5);
        let d: Vec<_> = std::iter::from_fn(|| b.next_delay(&mut rng)).collect();
        let ms: Vec<u128> = d.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay(&mut rng), Some(Duration::from_millis(100)));
    }

    #[test]
    fn jitter_stays_in_range() {
        let mut rng = SmallRng::seed_from_u64(2);
        for jitter in [Jitter::Full, Jitter::Equal] {
            let mut b = ExponentialBackoff::new(Duration::from_millis(10), Duration::from_secs(10))
                .with_jitter(jitter)
                .with_max_attempts(12);
            for n in 0..12 {
                let base = b.base_delay(n);
                let d = b.next_delay(&mut rng).unwrap();
                assert!(d <= base);
                if jitter == Jitter::Equal {
                    assert!(d >= base / 2);
                }
            }
        }
    }

    #[test]
    fn huge_attempt_counts_do_not_overflow() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut b = ExponentialBackoff::new(Duration::from_secs(1), Duration::from_secs(60))
            .with_jitter(Jitter::None);
        b.max_attempts = None;
        for _ in 0..5000 {
            assert!(b.next_delay(&mut rng).unwrap() <= Duration::from_secs(60));
        }
    }

    #[test]
    fn linear_steps_and_stops() {
        let mut rng = SmallRng::seed_from_u64(4);
        let mut b = LinearBackoff::new(
            Duration::from_millis(10),
            Duration::from_millis(5),
            Duration::from_millis(20),
            4,
        );
        let ms: Vec<u128> = std::iter::from_fn(|| b.next_delay(&mut rng))
            .map(|d| d.as_millis())
            .collect();
        assert_eq!(ms, [10, 15, 20, 20]);
        assert_eq!(b.attempts(), 4);
    }

    #[test]
    fn breaker_cycles_closed_open_half_open() {
        let t0 = Instant::now();
        let mut cb = CircuitBreaker::new(2, Duration::from_secs(10), 2);
        assert!(cb.try_acquire(t0));
        cb.on_failure(t0);
        assert_eq!(cb.state(t0), BreakerState::Closed);
        cb.on_failure(t0);
        assert_eq!(cb.state(t0), BreakerState::Open);
        assert!(!cb.try_acquire(t0 + Duration::from_secs(9)));
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(cb.state(t1), BreakerState::HalfOpen);
        assert!(cb.try_acquire(t1));
        assert!(cb.try_acquire(t1));
        assert!(!cb.try_acquire(t1), "only two probes");
        cb.on_failure(t1);
        assert_eq!(cb.state(t1), BreakerState::Open);
        let t2 = t1 + Duration::from_secs(10);
        assert!(cb.try_acquire(t2));
        cb.on_success(t2);
        assert_eq!(cb.state(t2), BreakerState::Closed);
        assert_eq!(cb.times_opened, 2);
    }
}
