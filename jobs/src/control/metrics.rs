//! The control plane's metrics, written with the node's own at `/metrics`
//! ([`ControlPlane::collector`](super::ControlPlane::collector)):
//! `valkyrie_jobs_total{state}` (jobs entering the queue — submitted or retried — and jobs
//! ending, by state), `valkyrie_jobs_queued` (jobs the dispatcher holds queued),
//! `valkyrie_job_assignment_seconds` (submission to the agent's JOB_ACCEPT),
//! `valkyrie_agents_connected` and `valkyrie_log_lines_total` (lines of jobs' output committed).
//! Counters are relaxed atomics written where things happen (the store's thread, the
//! dispatcher) and read when scraped.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::model::JobState;

/// Upper bounds of the assignment histogram, microseconds (the last is +Inf).
const BOUNDS_US: [u64; 14] = [
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    20_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    10_000_000,
    u64::MAX,
];

/// Assignment times kept for [`JobsMetrics::samples`], the latest this many.
pub(crate) const SAMPLES: usize = 65_536;

/// The counters.
#[derive(Debug)]
pub(crate) struct JobsMetrics {
    states: [AtomicU64; 8],
    pub(crate) queued: AtomicI64,
    pub(crate) agents: AtomicI64,
    pub(crate) log_lines: AtomicU64,
    buckets: [AtomicU64; 14],
    sum_us: AtomicU64,
    /// The latest assignment times, µs (a ring: `taken` counts every one ever written).
    recent: Box<[AtomicU64]>,
    taken: AtomicU64,
}

impl Default for JobsMetrics {
    fn default() -> JobsMetrics {
        JobsMetrics {
            states: Default::default(),
            queued: AtomicI64::new(0),
            agents: AtomicI64::new(0),
            log_lines: AtomicU64::new(0),
            buckets: Default::default(),
            sum_us: AtomicU64::new(0),
            recent: (0..SAMPLES).map(|_| AtomicU64::new(0)).collect(),
            taken: AtomicU64::new(0),
        }
    }
}

impl JobsMetrics {
    /// A job entered `state` (queued, or a final one).
    pub(crate) fn entered(&self, state: JobState) {
        if let Some(i) = JobState::ALL.iter().position(|s| *s == state) {
            self.states[i].fetch_add(1, Relaxed);
        }
    }

    /// An assignment took `us` from submission to JOB_ACCEPT.
    pub(crate) fn assigned(&self, us: u64) {
        let i = BOUNDS_US
            .partition_point(|&b| b < us)
            .min(BOUNDS_US.len() - 1);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        let n = self.taken.fetch_add(1, Relaxed) as usize;
        self.recent[n % SAMPLES].store(us, Relaxed);
    }

    /// Jobs that entered `state`.
    pub(crate) fn count(&self, state: JobState) -> u64 {
        JobState::ALL
            .iter()
            .position(|s| *s == state)
            .map_or(0, |i| self.states[i].load(Relaxed))
    }

    /// The latest assignment times, µs (up to [`SAMPLES`]).
    pub(crate) fn samples(&self) -> Vec<u64> {
        let n = (self.taken.load(Relaxed) as usize).min(SAMPLES);
        self.recent[..n].iter().map(|a| a.load(Relaxed)).collect()
    }
}

/// What writes them.
#[derive(Debug, Clone)]
pub(crate) struct JobsCollector(pub(crate) Arc<JobsMetrics>);

impl Collector for JobsCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.0;
        let mut jobs = enc.encode_descriptor(
            "valkyrie_jobs",
            "Jobs entering the queue (submitted or retried) and ending, by state",
            None,
            MetricType::Counter,
        )?;
        for (i, s) in JobState::ALL.iter().enumerate() {
            let n = m.states[i].load(Relaxed);
            if n > 0 || s.is_final() || *s == JobState::Queued {
                ConstCounter::new(n).encode(jobs.encode_family(&[("state", s.as_str())])?)?;
            }
        }
        let gauges = [
            (
                "valkyrie_jobs_queued",
                "Jobs the dispatcher holds queued",
                &m.queued,
            ),
            ("valkyrie_agents_connected", "Agents connected", &m.agents),
        ];
        for (name, help, v) in gauges {
            let g = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v.load(Relaxed)).encode(g)?;
        }
        let lines = enc.encode_descriptor(
            "valkyrie_log_lines",
            "Lines of jobs' output committed to the store",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(m.log_lines.load(Relaxed)).encode(lines)?;
        let mut counts = Vec::with_capacity(BOUNDS_US.len());
        let mut total = 0;
        // Each bucket's own count: the encoder writes them cumulative.
        for (b, n) in BOUNDS_US.iter().zip(&m.buckets) {
            let n = n.load(Relaxed);
            total += n;
            let bound = if *b == u64::MAX {
                f64::INFINITY
            } else {
                *b as f64 / 1e6
            };
            counts.push((bound, n));
        }
        let mut h = enc.encode_descriptor(
            "valkyrie_job_assignment_seconds",
            "From a job's submission to its agent's JOB_ACCEPT",
            None,
            MetricType::Histogram,
        )?;
        h.encode_histogram::<NoLabelSet>(m.sum_us.load(Relaxed) as f64 / 1e6, total, &counts, None)
    }
}
