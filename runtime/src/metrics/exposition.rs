//! The node's exposition with the seed's names: every shard's counters and histograms summed
//! at scrape time and written straight into `prometheus-client`'s encoder (a
//! [`Collector`]: nothing is registered or allocated per series beyond its label values).
//! Chosen over the `prometheus` crate by measurement (`runtime/benches/exposition.rs`: the
//! same 48 KB scrape in 60 µs against 231 µs, medians of three runs — a scrape runs on a
//! shard's loop). Label names are written in alphabetical order, as Prometheus shows them.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::streams::StreamClass;

use super::histogram::{self, Shape};
use super::{PRIORITIES, SECURITY_LABELS, ShardMetrics, TRANSPORTS};

/// Every shard's metrics, summed when encoded: register it in a `prometheus-client`
/// [`Registry`](prometheus_client::registry::Registry) (`Node::metrics`), or take the text
/// ([`NodeMetrics::openmetrics_text`], which has the collectors given to
/// `NodeBuilder::collector` too; a registry of a program's own registers those itself).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    shards: Vec<Arc<ShardMetrics>>,
    security: String,
    extra: Vec<Arc<dyn Collector>>,
}

/// Write a counter family `name` (without `_total`) of `rows`: label values in the order
/// of `labels`, and the count.
fn counters<'r, const N: usize>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    labels: [&str; N],
    rows: impl IntoIterator<Item = ([&'r str; N], u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (values, n) in rows {
        let set: [(&str, &str); N] = std::array::from_fn(|i| (labels[i], values[i]));
        ConstCounter::new(n).encode(family.encode_family(&set)?)?;
    }
    Ok(())
}

impl NodeMetrics {
    pub(crate) fn new(
        shards: Vec<Arc<ShardMetrics>>,
        security: String,
        extra: Vec<Arc<dyn Collector>>,
    ) -> NodeMetrics {
        NodeMetrics {
            shards,
            security,
            extra,
        }
    }

    /// The sum over shards of what `f` reads.
    fn sum(&self, f: impl Fn(&ShardMetrics) -> u64) -> u64 {
        self.shards.iter().map(|s| f(s)).sum()
    }

    /// The metrics in the OpenMetrics text format (what `prometheus-client` writes).
    pub fn openmetrics_text(&self) -> String {
        let mut r = prometheus_client::registry::Registry::default();
        r.register_collector(Box::new(self.clone()));
        for c in &self.extra {
            r.register_collector(Box::new(Shared(c.clone())));
        }
        let mut out = String::with_capacity(32 * 1024);
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &r) {
            out = format!("# metrics could not be encoded: {e}\n");
        }
        out
    }

    fn connections(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut active = enc.encode_descriptor(
            "valkyrie_connections_active",
            "Open connections",
            None,
            MetricType::Gauge,
        )?;
        for (i, t) in TRANSPORTS.iter().enumerate() {
            let n: i64 = self
                .shards
                .iter()
                .map(|s| s.connections_active[i].load(Relaxed))
                .sum();
            let set = [("security", self.security.as_str()), ("transport", t)];
            ConstGauge::new(n).encode(active.encode_family(&set)?)?;
        }
        counters(
            enc,
            "valkyrie_connections_accepted",
            "Connections accepted",
            ["outcome"],
            [
                (
                    ["accepted"],
                    self.sum(|s| s.connections_accepted.load(Relaxed)),
                ),
                (
                    ["refused"],
                    self.sum(|s| s.connections_refused.load(Relaxed)),
                ),
            ],
        )?;
        counters(
            enc,
            "valkyrie_disconnections",
            "Connections closed by the node, by reason",
            ["reason"],
            [
                (
                    ["handshake_timeout"],
                    self.sum(|s| s.handshake_timeouts.load(Relaxed)),
                ),
                (
                    ["heartbeat_timeout"],
                    self.sum(|s| s.heartbeat_timeouts.load(Relaxed)),
                ),
                (
                    ["slow_consumer"],
                    self.sum(|s| s.slow_consumers.load(Relaxed)),
                ),
            ],
        )
    }

    /// The families by message type: sent, received, bytes.
    fn messages(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let names: Vec<String> = (0..=255u8)
            .map(|t| MessageType::from_u8(t).name().to_ascii_lowercase())
            .collect();
        let mut sent = Vec::new();
        let mut received = Vec::new();
        let mut bytes = Vec::new();
        for (t, name) in names.iter().enumerate() {
            let name = name.as_str();
            for (b, band) in PRIORITIES.iter().enumerate() {
                let n = self.sum(|s| s.frames_out[t][b].load(Relaxed));
                if n > 0 {
                    sent.push(([*band, name], n));
                }
            }
            for (status, n) in [
                ("ok", self.sum(|s| s.frames_in[t].load(Relaxed))),
                ("error", self.sum(|s| s.frames_refused[t].load(Relaxed))),
            ] {
                if n > 0 {
                    received.push(([status, name], n));
                }
            }
            for (direction, n) in [
                ("in", self.sum(|s| s.bytes_in_by_type[t].load(Relaxed))),
                ("out", self.sum(|s| s.bytes_out_by_type[t].load(Relaxed))),
            ] {
                if n > 0 {
                    bytes.push(([direction, name], n));
                }
            }
        }
        counters(
            enc,
            "valkyrie_messages_sent",
            "Frames sent",
            ["priority", "type"],
            sent,
        )?;
        counters(
            enc,
            "valkyrie_messages_received",
            "Frames received: delivered to the service (ok) or refused by the node (error)",
            ["status", "type"],
            received,
        )?;
        counters(
            enc,
            "valkyrie_message_bytes",
            "Bytes of frames (header + payload) sent, and delivered to services, by type",
            ["direction", "type"],
            bytes,
        )?;
        counters(
            enc,
            "valkyrie_bytes",
            "Bytes through the transport",
            ["direction"],
            [
                (["in"], self.sum(|s| s.bytes_in.load(Relaxed))),
                (["out"], self.sum(|s| s.bytes_out.load(Relaxed))),
            ],
        )?;
        let codes: Vec<(String, &str, u64)> = (0..1000u16)
            .filter_map(|code| {
                let n = self.sum(|s| s.errors_sent[code as usize].load(Relaxed));
                let class = valkyrie_protocol::ErrorCode(code).class().label();
                (n > 0).then(|| (code.to_string(), class, n))
            })
            .collect();
        counters(
            enc,
            "valkyrie_errors",
            "ERROR frames sent",
            ["code", "type"],
            codes
                .iter()
                .map(|(code, class, n)| ([code.as_str(), *class], *n)),
        )
    }

    /// Back-pressure, links, requests, buffers, intrusion detection, HTTP.
    fn runtime(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        counters(
            enc,
            "valkyrie_frames_shed",
            "Best-effort frames dropped under pressure",
            [],
            [([], self.sum(|s| s.shed_frames.load(Relaxed)))],
        )?;
        counters(
            enc,
            "valkyrie_backpressure_events",
            "Connections whose input was held back because their outbound queues were full (hold), resumed (resume), or not read again until their send in flight was done (rest)",
            ["event"],
            [
                (["hold"], self.sum(|s| s.input_holds.load(Relaxed))),
                (["resume"], self.sum(|s| s.input_resumes.load(Relaxed))),
                (["rest"], self.sum(|s| s.input_rests.load(Relaxed))),
            ],
        )?;
        counters(
            enc,
            "valkyrie_quic_datagrams",
            "QUIC datagrams forwarded to the shard owning their connection (forwarded), dropped on a full mesh ring (dropped), and Retry packets sent to unvalidated clients (retry)",
            ["event"],
            [
                (["forwarded"], self.sum(|s| s.quic_forwarded.load(Relaxed))),
                (["dropped"], self.sum(|s| s.quic_dropped.load(Relaxed))),
                (["retry"], self.sum(|s| s.quic_retries.load(Relaxed))),
            ],
        )?;
        counters(
            enc,
            "valkyrie_upgrades",
            "Same-host connections moved to shared memory in band (UPGRADE)",
            [],
            [([], self.sum(|s| s.upgrades.load(Relaxed)))],
        )?;
        counters(
            enc,
            "valkyrie_recv_buffer_shortages",
            "Receives that found every provided receive buffer in use (re-armed; raise recv_buffers if this grows)",
            [],
            [([], self.sum(|s| s.recv_buffer_shortages.load(Relaxed)))],
        )?;
        counters(
            enc,
            "valkyrie_link_attempts",
            "Outbound connection attempts of links, started and failed",
            ["outcome"],
            [
                (["started"], self.sum(|s| s.link_attempts.load(Relaxed))),
                (["failed"], self.sum(|s| s.link_failures.load(Relaxed))),
            ],
        )?;
        counters(
            enc,
            "valkyrie_retries",
            "Retries of outbound links: connect (after a failed attempt), reconnect (after an established connection was lost)",
            ["operation"],
            [
                (["connect"], self.sum(|s| s.retries[0].load(Relaxed))),
                (["reconnect"], self.sum(|s| s.retries[1].load(Relaxed))),
            ],
        )?;
        counters(
            enc,
            "valkyrie_requests",
            "Requests made through Ctx::request: sent, and by outcome (answered, error, timed_out, lost; late: an answer after the deadline, dropped)",
            ["outcome"],
            [
                (["sent"], self.sum(|s| s.requests_sent.load(Relaxed))),
                (
                    ["answered"],
                    self.sum(|s| s.requests_answered.load(Relaxed)),
                ),
                (["error"], self.sum(|s| s.requests_errored.load(Relaxed))),
                (
                    ["timed_out"],
                    self.sum(|s| s.requests_timed_out.load(Relaxed)),
                ),
                (["lost"], self.sum(|s| s.requests_lost.load(Relaxed))),
                (["late"], self.sum(|s| s.requests_late.load(Relaxed))),
            ],
        )?;
        counters(
            enc,
            "valkyrie_intrusion_events",
            "Intrusion detection: addresses throttled and banned, connections refused while throttled or banned",
            ["event"],
            [
                (["throttle"], self.sum(|s| s.guard_throttles.load(Relaxed))),
                (["ban"], self.sum(|s| s.guard_bans.load(Relaxed))),
                (
                    ["refused_throttled"],
                    self.sum(|s| s.guard_refused_throttled.load(Relaxed)),
                ),
                (
                    ["refused_banned"],
                    self.sum(|s| s.guard_refused_banned.load(Relaxed)),
                ),
            ],
        )?;
        counters(
            enc,
            "valkyrie_http_responses",
            "HTTP answers sent on the node's port, by status class",
            ["class"],
            ["1xx", "2xx", "3xx", "4xx", "5xx"]
                .into_iter()
                .enumerate()
                .map(|(i, class)| ([class], self.sum(|s| s.http_responses[i + 1].load(Relaxed)))),
        )
    }

    /// Streams by class, and the histograms.
    fn distributions(&self, enc: &mut DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut streams = enc.encode_descriptor(
            "valkyrie_streams_active",
            "Open streams, by stream class",
            None,
            MetricType::Gauge,
        )?;
        for (i, class) in StreamClass::ALL.iter().enumerate() {
            let n: i64 = self
                .shards
                .iter()
                .map(|s| s.streams_active[i].load(Relaxed))
                .sum();
            ConstGauge::new(n).encode(streams.encode_family(&[("type", class.label())])?)?;
        }
        let type_name = |t: usize| MessageType::from_u8(t as u8).name().to_ascii_lowercase();
        histogram::encode(
            enc,
            self.shards.iter().map(|s| &s.sizes),
            Shape {
                name: "valkyrie_message_size_bytes",
                help: "Size of frames delivered to services, header included, by type",
                label: "type",
                per_unit: 1.0,
            },
            type_name,
        )?;
        histogram::encode(
            enc,
            self.shards.iter().map(|s| &s.handshakes),
            Shape {
                name: "valkyrie_handshake_duration_seconds",
                help: "Time from accepting a connection (or starting an outbound one) to its handshake's end, by security mode",
                label: "security",
                per_unit: 1e6,
            },
            |i| SECURITY_LABELS[i].to_owned(),
        )?;
        histogram::encode(
            enc,
            self.shards.iter().map(|s| &s.durations),
            Shape {
                name: "valkyrie_connection_duration_seconds",
                help: "Lifetime of connections served (accept, or the WebSocket upgrade, to close), by transport",
                label: "transport",
                per_unit: 1e6,
            },
            |i| TRANSPORTS[i].to_owned(),
        )?;
        histogram::encode(
            enc,
            self.shards.iter().map(|s| &s.latency),
            Shape {
                name: "valkyrie_message_latency_seconds",
                help: "A request's arrival at its shard to its answer leaving the node, by the request's type (a sample: see the runtime's docs)",
                label: "type",
                per_unit: 1e6,
            },
            type_name,
        )?;
        histogram::encode(
            enc,
            self.shards.iter().map(|s| &s.windows),
            Shape {
                name: "valkyrie_flow_control_window_size",
                help: "Receive windows granted to peers, at a stream's open and at each credit update, by stream class (bytes)",
                label: "stream_type",
                per_unit: 1.0,
            },
            |i| StreamClass::ALL[i].label().to_owned(),
        )
    }
}

/// A collector the node shares with whoever made it.
#[derive(Debug)]
struct Shared(Arc<dyn Collector>);

impl Collector for Shared {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(enc)
    }
}

impl Collector for NodeMetrics {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.connections(&mut enc)?;
        self.messages(&mut enc)?;
        self.runtime(&mut enc)?;
        self.distributions(&mut enc)
    }
}
