//! The closing table: each seed target beside our figure and the best peer's, from this run.

use serde_json::Value;

/// One target of the seed (SPEC.md "Targets") that this run has a figure for.
struct Target {
    name: &'static str,
    scenario: &'static str,
    metric: &'static str,
    /// Params a Valkyrie row must have (an empty value: the key must be present). Peer rows
    /// must match the keys they carry.
    params: &'static [(&'static str, &'static str)],
    goal: f64,
    unit: &'static str,
    lower_is_better: bool,
}

const TARGETS: &[Target] = &[
    Target {
        name: "message round trip p99 (busy-poll)",
        scenario: "latency",
        metric: "rtt_p99",
        params: &[("mode", "busy-poll"), ("recv", "multishot")],
        goal: 100.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "message round trip p99 (blocking)",
        scenario: "latency",
        metric: "rtt_p99",
        params: &[("mode", "blocking"), ("recv", "multishot")],
        goal: 100.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "message dispatch p99 (busy-poll)",
        scenario: "latency",
        metric: "dispatch_p99",
        params: &[("mode", "busy-poll")],
        goal: 100.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "message dispatch p99 (blocking)",
        scenario: "latency",
        metric: "dispatch_p99",
        params: &[("mode", "blocking")],
        goal: 100.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "stream open p99 (busy-poll)",
        scenario: "latency",
        metric: "stream_open_p99",
        params: &[("mode", "busy-poll")],
        goal: 500.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "stream open p99 (blocking)",
        scenario: "latency",
        metric: "stream_open_p99",
        params: &[("mode", "blocking")],
        goal: 500.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "handshake p99 (plaintext)",
        scenario: "handshake",
        metric: "handshake_p99",
        params: &[("security", "plaintext")],
        goal: 10_000.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "handshake p99 (token)",
        scenario: "handshake",
        metric: "handshake_p99",
        params: &[("security", "token")],
        goal: 1_000.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "handshake p99 (noise_xk)",
        scenario: "handshake",
        metric: "handshake_p99",
        params: &[("security", "noise_xk")],
        goal: 1_000.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "handshake p99 (mtls)",
        scenario: "handshake",
        metric: "handshake_p99",
        params: &[("security", "mtls")],
        goal: 1_000.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "handshake p99 (post_quantum)",
        scenario: "handshake",
        metric: "handshake_p99",
        params: &[("security", "post_quantum")],
        goal: 2_000.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "messages per second per node",
        scenario: "throughput",
        metric: "msgs_per_sec",
        params: &[],
        goal: 10_000_000.0,
        unit: "msgs/s",
        lower_is_better: false,
    },
    Target {
        name: "concurrent connections per node",
        scenario: "connections",
        metric: "connections_held",
        params: &[("heartbeat_ms", "")],
        goal: 1_000_000.0,
        unit: "count",
        lower_is_better: false,
    },
    Target {
        name: "bytes per live connection (user+kernel)",
        scenario: "connections",
        metric: "bytes_per_connection",
        params: &[("heartbeat_ms", "")],
        goal: 4608.0,
        unit: "B",
        lower_is_better: true,
    },
    Target {
        name: "probe RTT p99 while connections held",
        scenario: "connections",
        metric: "probe_rtt_p99",
        params: &[],
        goal: 100.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "idle user bytes per connection",
        scenario: "connections",
        metric: "bytes_per_connection_user",
        params: &[("recv", "multishot"), ("idle", "")],
        goal: 1024.0,
        unit: "B",
        lower_is_better: true,
    },
    Target {
        name: "1 MB file transfer (BLAKE3-verified)",
        scenario: "transfer",
        metric: "transfer_ms",
        params: &[("transport", "tcp")],
        goal: 100.0,
        unit: "ms",
        lower_is_better: true,
    },
    Target {
        name: "shm round trip p99 (busy-poll)",
        scenario: "shm",
        metric: "rtt_p99",
        params: &[("mode", "busy-poll")],
        goal: 2.0,
        unit: "us",
        lower_is_better: true,
    },
    Target {
        name: "shm one-way 64 B frames per second",
        scenario: "shm",
        metric: "msgs_per_sec",
        params: &[("mode", "busy-poll")],
        goal: 20_000_000.0,
        unit: "msgs/s",
        lower_is_better: false,
    },
];

fn matches(r: &Value, t: &Target, valkyrie: bool) -> bool {
    if r["scenario"] != t.scenario
        || r["metric"] != t.metric
        || (r["system"] == "valkyrie") != valkyrie
    {
        return false;
    }
    t.params.iter().all(|(k, v)| {
        let p = &r["params"][*k];
        if p.is_null() {
            !valkyrie
        } else {
            v.is_empty() || p.as_str() == Some(*v)
        }
    })
}

/// Print the table for the results of this run.
pub(crate) fn print(results: &[Value]) {
    let rows: Vec<&Target> = TARGETS
        .iter()
        .filter(|t| results.iter().any(|r| matches(r, t, true)))
        .collect();
    if rows.is_empty() {
        return;
    }
    println!("\ntargets (seed, per node) — this run:");
    println!(
        "  {:<38} {:>14} {:>14} {:>18} {:>7}  met",
        "target", "seed", "valkyrie", "best peer", "ratio"
    );
    for t in rows {
        let pick = |v: f64, best: f64| {
            if t.lower_is_better {
                v.min(best)
            } else {
                v.max(best)
            }
        };
        let ours = results
            .iter()
            .filter(|r| matches(r, t, true))
            .filter_map(|r| r["value"].as_f64())
            .fold(
                if t.lower_is_better {
                    f64::INFINITY
                } else {
                    0.0
                },
                pick,
            );
        let peer = results
            .iter()
            .filter(|r| matches(r, t, false))
            .filter_map(|r| Some((r["system"].as_str()?.to_owned(), r["value"].as_f64()?)))
            .reduce(|a, b| {
                if (t.lower_is_better && b.1 < a.1) || (!t.lower_is_better && b.1 > a.1) {
                    b
                } else {
                    a
                }
            });
        let met = if t.lower_is_better {
            ours <= t.goal
        } else {
            ours >= t.goal
        };
        let (peer_s, ratio) = match &peer {
            Some((name, v)) => (format!("{} {name}", fmt(*v)), format!("{:.2}", ours / v)),
            None => ("-".into(), "-".into()),
        };
        println!(
            "  {:<38} {:>14} {:>14} {:>18} {:>7}  {}",
            t.name,
            format!(
                "{} {}",
                if t.lower_is_better { "<" } else { ">=" },
                fmt(t.goal)
            ),
            format!("{} {}", fmt(ours), t.unit),
            peer_s,
            ratio,
            if met { "yes" } else { "no" }
        );
    }
}

fn fmt(v: f64) -> String {
    if v >= 1_000_000.0 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 10_000.0 {
        format!("{:.0}k", v / 1e3)
    } else {
        format!("{v:.1}")
    }
}
