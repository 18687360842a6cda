//! The JSON report the scenarios add their figures to, the medians they report, the host
//! they ran on, and the progress bars shown while they run.

use serde_json::{Value, json};
use valkyrie_runtime::Node;

pub(crate) struct Report {
    pub(crate) results: Vec<Value>,
}

impl Report {
    pub(crate) fn add(
        &mut self,
        scenario: &str,
        system: &str,
        metric: &str,
        unit: &str,
        value: f64,
        params: Value,
    ) {
        self.results.push(json!({
            "scenario": scenario, "system": system, "metric": metric, "unit": unit,
            "value": (value * 100.0).round() / 100.0, "params": params,
        }));
    }
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub(crate) fn progress(len: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "  {msg:<11} [{bar:30}] {pos}/{len} runs, {elapsed}",
        )
        .expect("static template")
        .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

pub(crate) fn host() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    let mem = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    // The ring features this kernel gives a shard (one throw-away single-shard node).
    let uring = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .ok()
        .and_then(|b| b.shards(1).start().ok())
        .map(|node| {
            let f = node.ring_features()[0];
            json!({"single_issuer": f.single_issuer, "defer_taskrun": f.defer_taskrun,
                   "coop_taskrun": f.coop_taskrun, "direct_descriptors": f.direct_descriptors,
                   // The node registered its provided-buffer ring to start at all.
                   "provided_buffer_ring": true})
        })
        .unwrap_or(Value::Null);
    json!({"cores": cores, "cpu": cpu, "kernel": kernel, "memory_bytes": mem,
           "nofile": valkyrie_runtime::raise_nofile(), "io_uring": uring})
}
