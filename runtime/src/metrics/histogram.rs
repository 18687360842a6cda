//! Histograms written by one shard and summed at scrape time, like the counters: bucket
//! counts in relaxed atomics (an observation is one add to its bucket and one to the sum),
//! turned into Prometheus histogram families (cumulative buckets) only when scraped.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use prometheus::core::{Collector, Desc};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};

/// Upper bounds of `valkyrie_message_size_bytes` (bytes, header included): from an empty
/// frame to the 16 MiB limit.
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

/// One histogram's buckets (the last is +Inf) and sum, per label value.
#[derive(Debug)]
pub(crate) struct SizeHistogram {
    /// `[label][bucket]`: observations that fell in the bucket (not cumulative).
    buckets: Box<[[AtomicU64; SIZE_BOUNDS.len()]; 256]>,
    sums: Box<[AtomicU64; 256]>,
}

impl SizeHistogram {
    pub(crate) fn new() -> SizeHistogram {
        SizeHistogram {
            buckets: Box::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| AtomicU64::new(0))
            })),
            sums: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
        }
    }

    /// A frame of type `t` of `bytes`.
    #[inline]
    pub(crate) fn observe(&self, t: u8, bytes: u64) {
        let i = SIZE_BOUNDS.partition_point(|&b| b < bytes);
        self.buckets[t as usize][i.min(SIZE_BOUNDS.len() - 1)].fetch_add(1, Relaxed);
        self.sums[t as usize].fetch_add(bytes, Relaxed);
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

/// `valkyrie_message_size_bytes{type}` summed over `shards`: one histogram per message type
/// seen (`name` gives a type's label from its wire byte).
pub(crate) fn size_family<'a>(
    shards: impl Iterator<Item = &'a SizeHistogram> + Clone,
    name: impl Fn(u8) -> String,
) -> prometheus::Result<Computed> {
    let (metric, help) = (
        "valkyrie_message_size_bytes",
        "Size of frames delivered to services, header included, by type",
    );
    let desc = Desc::new(
        metric.into(),
        help.into(),
        vec!["type".into()],
        Default::default(),
    )?;
    let mut family = MetricFamily::default();
    family.set_name(metric.into());
    family.set_help(help.into());
    family.set_field_type(MetricType::HISTOGRAM);
    for t in 0..=255u8 {
        let mut counts = [0u64; SIZE_BOUNDS.len()];
        let mut sum = 0u64;
        for s in shards.clone() {
            for (c, b) in counts.iter_mut().zip(s.buckets[t as usize].iter()) {
                *c += b.load(Relaxed);
            }
            sum += s.sums[t as usize].load(Relaxed);
        }
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(SIZE_BOUNDS.len() - 1);
        // The +Inf bucket is the count itself.
        for (bound, c) in SIZE_BOUNDS[..SIZE_BOUNDS.len() - 1].iter().zip(counts) {
            cumulative += c;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let mut h = Histogram::default();
        h.set_sample_count(total);
        h.set_sample_sum(sum as f64);
        h.set_bucket(buckets);
        let mut label = LabelPair::default();
        label.set_name("type".into());
        label.set_value(name(t));
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
        let (a, b) = (SizeHistogram::new(), SizeHistogram::new());
        a.observe(0x20, 24);
        a.observe(0x20, 100);
        b.observe(0x20, 5000);
        b.observe(0x20, u64::MAX);
        let c = size_family([&a, &b].into_iter(), |t| format!("t{t}")).unwrap();
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
