//! Histograms written by one shard and summed at scrape time, like the counters: bucket
//! counts in relaxed atomics (an observation is one add to its bucket and one to the sum),
//! turned into Prometheus histogram families (cumulative buckets) only when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

/// Upper bounds of `valkyrie_message_size_bytes` (bytes, header included): from an empty
/// frame to the 16 MiB limit (the last is +Inf).
pub(crate) const SIZE_BOUNDS: [u64; 14] = [
    32,
    64,
    128,
    256,
    512,
    1024,
    4096,
    16_384,
    65_536,
    262_144,
    1 << 20,
    4 << 20,
    16 << 20,
    u64::MAX,
];

/// Upper bounds of duration histograms, in microseconds (exposed in seconds): from 1 µs to
/// an hour (the last is +Inf).
pub(crate) const DURATION_BOUNDS_US: [u64; 22] = [
    1,
    2,
    5,
    10,
    20,
    50,
    100,
    200,
    500,
    1_000,
    2_000,
    5_000,
    10_000,
    50_000,
    100_000,
    500_000,
    1_000_000,
    5_000_000,
    30_000_000,
    300_000_000,
    3_600_000_000,
    u64::MAX,
];

/// The security modes `valkyrie_handshake_duration_seconds{security}` tells apart.
pub(crate) const SECURITY_LABELS: [&str; 7] = [
    "plaintext",
    "token",
    "noise_xk",
    "mtls",
    "post_quantum",
    "zero_trust",
    "other",
];

/// A histogram with `L` label values and `B` buckets (the last is +Inf): per label, the
/// observations that fell in each bucket (not cumulative) and their sum.
#[derive(Debug)]
pub(crate) struct Hist<const L: usize, const B: usize> {
    bounds: &'static [u64; B],
    buckets: Box<[[AtomicU64; B]; L]>,
    sums: Box<[AtomicU64; L]>,
}

/// Frame sizes by message type.
pub(crate) type SizeHistogram = Hist<256, 14>;
/// Handshake durations by security mode.
pub(crate) type HandshakeHistogram = Hist<7, 22>;
/// Connection lifetimes by transport.
pub(crate) type DurationHistogram = Hist<4, 22>;
/// Request-to-answer latency by the request's message type.
pub(crate) type LatencyHistogram = Hist<256, 22>;
/// Receive windows by stream class.
pub(crate) type WindowHistogram = Hist<5, 14>;

impl<const L: usize, const B: usize> Hist<L, B> {
    pub(crate) fn new(bounds: &'static [u64; B]) -> Self {
        Hist {
            bounds,
            buckets: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
            sums: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// One observation of `v` for label value `label` (out of range: dropped).
    #[inline]
    pub(crate) fn observe(&self, label: usize, v: u64) {
        let (Some(row), Some(sum)) = (self.buckets.get(label), self.sums.get(label)) else {
            return;
        };
        let i = self.bounds.partition_point(|&b| b < v).min(B - 1);
        row[i].fetch_add(1, Relaxed);
        sum.fetch_add(v, Relaxed);
    }
}

/// A family computed at scrape time, handed to a registry as a collector.
pub(crate) struct Computed {
    desc: Desc,
    family: MetricFamily,
}

impl Collector for Computed {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        vec![self.family.clone()]
    }
}

/// What a histogram family is called and how its values are shown.
pub(crate) struct Shape<'a> {
    pub(crate) name: &'a str,
    pub(crate) help: &'a str,
    pub(crate) label: &'a str,
    /// Divides bounds and sums on the way out (µs → s: 1e6; a division keeps `0.0002` from
    /// becoming `0.00019999999999999998`).
    pub(crate) per_unit: f64,
}

/// The family of histograms `shards` hold, summed: one metric per label value observed
/// (`value` names a label index).
pub(crate) fn family<'a, const L: usize, const B: usize>(
    shards: impl Iterator<Item = &'a Hist<L, B>> + Clone,
    shape: Shape<'_>,
    value: impl Fn(usize) -> String,
) -> prometheus::Result<Computed> {
    let desc = Desc::new(
        shape.name.into(),
        shape.help.into(),
        vec![shape.label.into()],
        Default::default(),
    )?;
    let mut family = MetricFamily::default();
    family.set_name(shape.name.into());
    family.set_help(shape.help.into());
    family.set_field_type(MetricType::HISTOGRAM);
    let Some(first) = shards.clone().next() else {
        return Ok(Computed { desc, family });
    };
    for l in 0..L {
        let mut counts = [0u64; B];
        let mut sum = 0u64;
        for s in shards.clone() {
            for (c, b) in counts.iter_mut().zip(s.buckets[l].iter()) {
                *c += b.load(Relaxed);
            }
            sum = sum.saturating_add(s.sums[l].load(Relaxed));
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(B - 1);
        // The +Inf bucket is the count itself.
        for (bound, c) in first.bounds[..B - 1].iter().zip(counts) {
            cumulative += c;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound as f64 / shape.per_unit);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let mut h = Histogram::default();
        h.set_sample_count(total);
        h.set_sample_sum(sum as f64 / shape.per_unit);
        h.set_bucket(buckets);
        let mut label = LabelPair::default();
        label.set_name(shape.label.into());
        label.set_value(value(l));
        let mut m = Metric::default();
        m.set_label(vec![label]);
        m.set_histogram(h);
        family.mut_metric().push(m);
    }
    Ok(Computed { desc, family })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_their_bucket_and_sum_across_shards() {
        let (a, b) = (
            SizeHistogram::new(&SIZE_BOUNDS),
            SizeHistogram::new(&SIZE_BOUNDS),
        );
        a.observe(0x20, 24);
        a.observe(0x20, 100);
        b.observe(0x20, 5000);
        b.observe(0x20, u64::MAX);
        let shape = Shape {
            name: "sizes",
            help: "h",
            label: "type",
            per_unit: 1.0,
        };
        let c = family([&a, &b].into_iter(), shape, |t| format!("t{t}")).unwrap();
        let fam = &c.collect()[0];
        assert_eq!(fam.get_metric().len(), 1);
        let h = fam.get_metric()[0].get_histogram();
        assert_eq!(h.get_sample_count(), 4);
        let cum: Vec<u64> = h
            .get_bucket()
            .iter()
            .map(|b| b.cumulative_count())
            .collect();
        assert_eq!(cum[0], 1, "24 <= 32");
        assert_eq!(cum[2], 2, "100 <= 128");
        assert_eq!(cum[6], 2, "5000 > 4096");
        assert_eq!(cum[7], 3, "5000 <= 16384");
        assert_eq!(*cum.last().unwrap(), 3, "the last is in +Inf only");
    }
}
