//! What the node's probes report, shared by the node and its shards: readiness (set by the
//! node: false until every shard runs, and from the start of a drain), liveness (each
//! shard's loop stamps the time of its last turn; a shard asleep in the kernel waiting for
//! work is alive, one awake that has not turned for a second is stuck), and the counters
//! `/metrics` sums at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::metrics::{self, ShardMetrics};

/// A shard whose loop has not turned for this long is reported stuck by `/healthz`.
pub(crate) const STUCK_AFTER: Duration = Duration::from_secs(1);

/// The node's state as its probes see it.
#[derive(Debug)]
pub(crate) struct NodeState {
    /// Serving and not draining.
    pub(crate) ready: AtomicBool,
    /// Every shard's counters.
    pub(crate) shards: Vec<Arc<ShardMetrics>>,
    /// The security mode named in `valkyrie_connections_active{security}`.
    pub(crate) security: String,
    /// What `last_turn_ms` counts from.
    pub(crate) epoch: Instant,
    /// Connections the node takes in all (every shard's limit).
    pub(crate) max_connections: i64,
    /// Each shard's waker: its `sleeping` flag says it waits in the kernel.
    pub(crate) wakers: Arc<Vec<crate::mesh::Waker>>,
    /// More metrics written with the node's.
    pub(crate) collectors: Vec<Arc<dyn prometheus_client::collector::Collector>>,
    /// Conditions of the node's services that readiness also requires.
    pub(crate) ready_when: Vec<crate::config::ReadyCheck>,
}

impl NodeState {
    /// Milliseconds from the node's start to `t`.
    pub(crate) fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.epoch).as_millis() as u64
    }

    /// Open connections across all shards.
    pub(crate) fn connections(&self) -> i64 {
        self.shards.iter().map(|m| m.connections()).sum()
    }

    /// Whether every shard is alive — asleep waiting for work, or its loop turned within
    /// [`STUCK_AFTER`] of `now` — and the JSON body that says so shard by shard.
    pub(crate) fn health(&self, now: Instant) -> (bool, String) {
        let now_ms = self.ms(now);
        let mut healthy = true;
        let shards: Vec<_> = self
            .shards
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let age = now_ms.saturating_sub(m.last_turn_ms.load(Ordering::Relaxed));
                let asleep = self
                    .wakers
                    .get(i)
                    .is_some_and(|w| w.sleeping.load(Ordering::SeqCst));
                let alive = asleep || age < STUCK_AFTER.as_millis() as u64;
                healthy &= alive;
                serde_json::json!({"shard": i, "alive": alive, "asleep": asleep,
                    "last_turn_ms_ago": age})
            })
            .collect();
        let body = serde_json::json!({"healthy": healthy, "shards": shards});
        (healthy, body.to_string())
    }

    /// Whether the node takes new connections (started, not draining, under its connection
    /// limit), and the JSON body that says so.
    pub(crate) fn readiness(&self) -> (bool, String) {
        let serving = self.ready.load(Ordering::SeqCst);
        let connections = self.connections();
        let services = self.ready_when.iter().all(|f| (f.0)());
        let ready = serving && services && connections < self.max_connections;
        let body = serde_json::json!({"ready": ready, "draining": !serving,
            "services_ready": services,
            "connections": connections, "max_connections": self.max_connections});
        (ready, body.to_string())
    }

    /// The status feed (`GET /api/v1/status`, read by the status page): totals a reader
    /// turns into rates between two reads, each shard's liveness, recent events.
    pub(crate) fn status(&self, now: Instant) -> String {
        let sum = |f: &dyn Fn(&ShardMetrics) -> u64| self.shards.iter().map(|m| f(m)).sum::<u64>();
        let received = sum(&|m| m.frames_in.iter().map(|c| c.load(Ordering::Relaxed)).sum());
        let sent = sum(&|m| {
            m.frames_out
                .iter()
                .flat_map(|p| p.iter())
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        });
        let pongs = sum(&|m| {
            m.frames_out[valkyrie_protocol::MessageType::Pong.to_u8() as usize]
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum()
        });
        let classes = [
            "protocol",
            "authentication",
            "stream",
            "job",
            "system",
            "network",
            "security",
        ];
        let mut errors = serde_json::Map::new();
        for (i, class) in classes.iter().enumerate() {
            let lo = (i + 1) * 100;
            let n = sum(&|m| {
                m.errors_sent[lo..lo + 100]
                    .iter()
                    .map(|c| c.load(Ordering::Relaxed))
                    .sum()
            });
            errors.insert((*class).into(), n.into());
        }
        let mut events: Vec<(u64, String)> = self
            .shards
            .iter()
            .flat_map(|m| {
                m.recent
                    .lock()
                    .map(|r| r.iter().cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            })
            .collect();
        events.sort_by_key(|(ms, _)| std::cmp::Reverse(*ms));
        events.truncate(20);
        let (healthy, _) = self.health(now);
        let (ready, _) = self.readiness();
        serde_json::json!({
            "at_ms": self.ms(now),
            "healthy": healthy,
            "ready": ready,
            "shards": self.shards.len(),
            "connections": {
                "active": self.connections(),
                "accepted": sum(&|m| m.connections_accepted.load(Ordering::Relaxed)),
                "refused": sum(&|m| m.connections_refused.load(Ordering::Relaxed)),
            },
            "messages": {"received": received, "sent": sent, "pongs": pongs},
            "bytes": {
                "received": sum(&|m| m.bytes_in.load(Ordering::Relaxed)),
                "sent": sum(&|m| m.bytes_out.load(Ordering::Relaxed)),
            },
            "errors": errors,
            "events": events.iter().map(|(ms, what)| serde_json::json!({"at_ms": ms, "what": what})).collect::<Vec<_>>(),
        })
        .to_string()
    }

    /// Every shard's metrics, summed when encoded.
    pub(crate) fn metrics(&self) -> metrics::NodeMetrics {
        metrics::NodeMetrics::new(
            self.shards.clone(),
            self.security.clone(),
            self.collectors.clone(),
        )
    }

    /// Every shard's metrics in the Prometheus text format.
    pub(crate) fn metrics_text(&self) -> String {
        metrics::openmetrics::to_prometheus_text(&self.metrics().openmetrics_text())
    }
}
