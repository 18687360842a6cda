//! Which exposition crate the node's `/metrics` is written with, by measurement: the same
//! scrape — counters by type and priority, by type and status, by type and code, and
//! histograms by type, summed over two shards' snapshots at scrape time, as the runtime does
//! — encoded with `prometheus` (a fresh registry of vectors and protobuf families per scrape,
//! then its text encoder: what `metrics::gather` does) and with `prometheus-client` (a
//! collector that writes the snapshot straight into its OpenMetrics encoder). The scrape runs
//! on a shard's loop, so its time is time that shard's connections wait.
//!
//! `cargo bench -p valkyrie-runtime --bench exposition`
#![allow(missing_docs)]

use criterion::{Criterion, criterion_group, criterion_main};
use prometheus::proto::{Bucket, Histogram, LabelPair, Metric, MetricFamily, MetricType};
use prometheus::{IntCounterVec, Opts, Registry};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType as PcType;
use prometheus_client::metrics::counter::ConstCounter;

const TYPES: usize = 256;
const BOUNDS: [f64; 21] = [
    1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5,
    1.0, 5.0, 30.0, 300.0, 3600.0,
];
const BANDS: [&str; 4] = ["low", "normal", "high", "critical"];

/// One shard's counters, as plain numbers (the runtime's are relaxed atomics read the same way).
#[derive(Debug, Clone)]
struct Shard {
    sent: Vec<[u64; 4]>,
    received: Vec<[u64; 2]>,
    errors: Vec<u64>,
    latency: Vec<[u64; 22]>,
    latency_sum: Vec<f64>,
}

/// A busy shard: 24 message types in use, a few error codes, latencies spread over buckets.
fn shard(seed: u64) -> Shard {
    let mut s = Shard {
        sent: vec![[0; 4]; TYPES],
        received: vec![[0; 2]; TYPES],
        errors: vec![0; 1000],
        latency: vec![[0; 22]; TYPES],
        latency_sum: vec![0.0; TYPES],
    };
    for t in (0x01..0x19).chain(0x20..0x28).take(24) {
        s.sent[t] = [seed, 10 * seed, seed + 3, 0];
        s.received[t] = [100 * seed + t as u64, t as u64 % 3];
        for (i, b) in s.latency[t].iter_mut().enumerate() {
            *b = (seed + t as u64 * i as u64) % 97;
        }
        s.latency_sum[t] = 0.25 * seed as f64;
    }
    for code in [104, 301, 504, 505, 701] {
        s.errors[code] = seed + code as u64;
    }
    s
}

fn type_name(t: usize) -> String {
    format!("type_{t:02x}")
}

/// The latency buckets of type `t` summed over `shards`, and their total.
fn latency(shards: &[Shard], t: usize) -> ([u64; 22], u64) {
    let mut counts = [0u64; 22];
    for s in shards {
        for (c, b) in counts.iter_mut().zip(s.latency[t]) {
            *c += b;
        }
    }
    let total = counts.iter().sum();
    (counts, total)
}

/// The `prometheus` crate, the way `metrics::gather` uses it.
fn with_prometheus(shards: &[Shard]) -> String {
    let r = Registry::new();
    let sent = IntCounterVec::new(
        Opts::new("valkyrie_messages_sent_total", "Frames sent"),
        &["type", "priority"],
    )
    .unwrap();
    let received = IntCounterVec::new(
        Opts::new("valkyrie_messages_received_total", "Frames received"),
        &["type", "status"],
    )
    .unwrap();
    let errors = IntCounterVec::new(
        Opts::new("valkyrie_errors_total", "ERROR frames sent"),
        &["type", "code"],
    )
    .unwrap();
    for t in 0..TYPES {
        let name = type_name(t);
        for (b, band) in BANDS.iter().enumerate() {
            let n: u64 = shards.iter().map(|s| s.sent[t][b]).sum();
            if n > 0 {
                sent.with_label_values(&[name.as_str(), band]).inc_by(n);
            }
        }
        for (i, status) in ["ok", "error"].into_iter().enumerate() {
            let n: u64 = shards.iter().map(|s| s.received[t][i]).sum();
            if n > 0 {
                received
                    .with_label_values(&[name.as_str(), status])
                    .inc_by(n);
            }
        }
    }
    for code in 0..1000 {
        let n: u64 = shards.iter().map(|s| s.errors[code]).sum();
        if n > 0 {
            errors
                .with_label_values(&["class", code.to_string().as_str()])
                .inc_by(n);
        }
    }
    let mut family = MetricFamily::default();
    family.set_name("valkyrie_message_latency_seconds".into());
    family.set_help("Request in to answer out".into());
    family.set_field_type(MetricType::HISTOGRAM);
    for t in 0..TYPES {
        let (counts, total) = latency(shards, t);
        if total == 0 {
            continue;
        }
        let mut cumulative = 0;
        let mut buckets = Vec::with_capacity(21);
        for (bound, c) in BOUNDS.iter().zip(counts) {
            cumulative += c;
            let mut b = Bucket::default();
            b.set_upper_bound(*bound);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
        let mut h = Histogram::default();
        h.set_sample_count(total);
        h.set_sample_sum(shards.iter().map(|s| s.latency_sum[t]).sum());
        h.set_bucket(buckets);
        let mut label = LabelPair::default();
        label.set_name("type".into());
        label.set_value(type_name(t));
        let mut m = Metric::default();
        m.set_label(vec![label]);
        m.set_histogram(h);
        family.mut_metric().push(m);
    }
    r.register(Box::new(sent)).unwrap();
    r.register(Box::new(received)).unwrap();
    r.register(Box::new(errors)).unwrap();
    let mut families = r.gather();
    families.push(family);
    let mut out = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut out)
        .unwrap();
    out
}

/// `prometheus-client`: a collector reading the snapshots at scrape time.
#[derive(Debug)]
struct Snapshots(Vec<Shard>);

impl Collector for Snapshots {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let shards = &self.0;
        let mut m = enc.encode_descriptor(
            "valkyrie_messages_sent",
            "Frames sent",
            None,
            PcType::Counter,
        )?;
        for t in 0..TYPES {
            for (b, band) in BANDS.iter().enumerate() {
                let n: u64 = shards.iter().map(|s| s.sent[t][b]).sum();
                if n > 0 {
                    let labels = [("type", type_name(t)), ("priority", (*band).to_owned())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "valkyrie_messages_received",
            "Frames received",
            None,
            PcType::Counter,
        )?;
        for t in 0..TYPES {
            for (i, status) in ["ok", "error"].into_iter().enumerate() {
                let n: u64 = shards.iter().map(|s| s.received[t][i]).sum();
                if n > 0 {
                    let labels = [("type", type_name(t)), ("status", status.to_owned())];
                    ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        let mut m = enc.encode_descriptor(
            "valkyrie_errors",
            "ERROR frames sent",
            None,
            PcType::Counter,
        )?;
        for code in 0..1000 {
            let n: u64 = shards.iter().map(|s| s.errors[code]).sum();
            if n > 0 {
                let labels = [("type", "class".to_owned()), ("code", code.to_string())];
                ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
            }
        }
        let mut m = enc.encode_descriptor(
            "valkyrie_message_latency_seconds",
            "Request in to answer out",
            None,
            PcType::Histogram,
        )?;
        let mut buckets = Vec::with_capacity(22);
        for t in 0..TYPES {
            let (counts, total) = latency(shards, t);
            if total == 0 {
                continue;
            }
            // Each bucket's own count: the encoder writes them cumulative.
            buckets.clear();
            for (bound, c) in BOUNDS.iter().chain([f64::INFINITY].iter()).zip(counts) {
                buckets.push((*bound, c));
            }
            let sum = shards.iter().map(|s| s.latency_sum[t]).sum();
            let labels = [("type", type_name(t))];
            m.encode_family(&labels)?
                .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                    sum, total, &buckets, None,
                )?;
        }
        Ok(())
    }
}

fn exposition(c: &mut Criterion) {
    let shards = vec![shard(7), shard(11)];
    let a = with_prometheus(&shards);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Snapshots(shards.clone())));
    let mut b = String::new();
    prometheus_client::encoding::text::encode(&mut b, &registry).unwrap();
    println!(
        "one scrape: prometheus {} bytes, prometheus-client {} bytes",
        a.len(),
        b.len()
    );
    let mut g = c.benchmark_group("scrape");
    g.bench_function("prometheus", |bench| {
        bench.iter(|| with_prometheus(std::hint::black_box(&shards)))
    });
    g.bench_function("prometheus-client", |bench| {
        bench.iter(|| {
            let mut out = String::with_capacity(b.len());
            prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
            out
        })
    });
    g.finish();
}

criterion_group!(benches, exposition);
criterion_main!(benches);
