//! Histograms written by one shard and summed at scrape time, like the counters: bucket
//! counts in relaxed atomics (an observation is one add to its bucket and one to the sum),
//! written as histogram families (cumulative buckets) only when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

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

/// What a histogram family is called and how its values are shown.
pub(crate) struct Shape<'a> {
    pub(crate) name: &'a str,
    pub(crate) help: &'a str,
    pub(crate) label: &'a str,
    /// Divides bounds and sums on the way out (µs → s: 1e6; a division keeps `0.0002` from
    /// becoming `0.00019999999999999998`).
    pub(crate) per_unit: f64,
}

/// The histograms `shards` hold, summed: one series per label value observed (`value` names
/// a label index), written into `enc`.
pub(crate) fn encode<'a, const L: usize, const B: usize>(
    enc: &mut DescriptorEncoder<'_>,
    shards: impl Iterator<Item = &'a Hist<L, B>> + Clone,
    shape: Shape<'_>,
    value: impl Fn(usize) -> String,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(shape.name, shape.help, None, MetricType::Histogram)?;
    let Some(first) = shards.clone().next() else {
        return Ok(());
    };
    let mut buckets = Vec::with_capacity(B);
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
        // Each bucket's own count: the encoder writes them cumulative.
        buckets.clear();
        for (i, c) in counts.into_iter().enumerate() {
            // The last bucket is +Inf.
            let bound = match first.bounds.get(i) {
                Some(&b) if i + 1 < B => b as f64 / shape.per_unit,
                _ => f64::INFINITY,
            };
            buckets.push((bound, c));
        }
        let label = [(shape.label, value(l))];
        family
            .encode_family(&label)?
            .encode_histogram::<NoLabelSet>(sum as f64 / shape.per_unit, total, &buckets, None)?;
    }
    Ok(())
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
        #[derive(Debug)]
        struct Two(SizeHistogram, SizeHistogram);
        impl prometheus_client::collector::Collector for Two {
            fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
                let shape = Shape {
                    name: "sizes",
                    help: "h",
                    label: "type",
                    per_unit: 1.0,
                };
                encode(&mut enc, [&self.0, &self.1].into_iter(), shape, |t| {
                    format!("t{t}")
                })
            }
        }
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(Two(a, b)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &r).unwrap();
        let line = |le: &str| {
            let key = format!("sizes_bucket{{le=\"{le}\",type=\"t32\"}} ");
            let l = text
                .lines()
                .find(|l| l.starts_with(&key))
                .unwrap_or_else(|| panic!("{key}: {text}"));
            l[key.len()..].parse::<u64>().unwrap()
        };
        assert_eq!(line("32.0"), 1, "24 <= 32");
        assert_eq!(line("128.0"), 2, "100 <= 128");
        assert_eq!(line("4096.0"), 2, "5000 > 4096");
        assert_eq!(line("16384.0"), 3, "5000 <= 16384");
        assert_eq!(line("+Inf"), 4, "the last is in +Inf only");
        assert!(text.contains("sizes_count{type=\"t32\"} 4"), "{text}");
    }
}
