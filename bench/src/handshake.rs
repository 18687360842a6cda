//! The handshake scenario: connect plus the full handshake, per security mode.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_protocol::SecurityMode;
use valkyrie_runtime::Node;

use crate::report::{Report, median, progress};

/// A node and a client configuration for one security mode (fresh keys per call), and TLS
/// for mtls.
/// TLS configurations for a node and its client (mtls).
type TlsPair = (
    Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
    Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>,
);

pub(crate) fn secured(
    mode: &str,
) -> (
    valkyrie_protocol::Config,
    valkyrie_protocol::Config,
    Option<TlsPair>,
) {
    use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
    use valkyrie_protocol::security::token::{TokenClient, TokenServer};
    let (mut server, mut client) = (
        valkyrie_protocol::Config::new("bench-node"),
        valkyrie_protocol::Config::new("bench-client"),
    );
    let mut tls = None;
    match mode {
        "mtls" => {
            use valkyrie_protocol::security::mtls::{DevPki, Mtls};
            let pki = DevPki::generate(&["127.0.0.1"], &["bench-client"]).expect("dev pki");
            let s = pki.server_config(0).expect("tls server");
            let c = pki.client_config(0).expect("tls client");
            tls = Some((s, c));
            server.security = vec![SecurityMode::Mtls];
            server.handshakes = vec![Arc::new(Mtls)];
            client.security = vec![SecurityMode::Mtls];
            client.handshakes = vec![Arc::new(Mtls)];
        }
        "token" => {
            server.security = vec![SecurityMode::Token];
            server.handshakes = vec![Arc::new(TokenServer::new([(
                "bench".to_owned(),
                b"bench secret".to_vec(),
            )]))];
            client.security = vec![SecurityMode::Token];
            client.handshakes = vec![Arc::new(TokenClient::new(
                "bench",
                b"bench secret".to_vec(),
            ))];
        }
        "post_quantum" => {
            use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
            let (si, ci) = (PqIdentity::generate(), PqIdentity::generate());
            let sfp = si.fingerprint();
            server.security = vec![SecurityMode::PostQuantum];
            server.handshakes = vec![Arc::new(PostQuantum::server(si))];
            client.security = vec![SecurityMode::PostQuantum];
            client.handshakes = vec![Arc::new(PostQuantum::client(ci, sfp))];
        }
        "noise_xk" => {
            let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
            server.security = vec![SecurityMode::NoiseXk];
            server.handshakes = vec![Arc::new(NoiseXk::server(sk.clone()))];
            client.security = vec![SecurityMode::NoiseXk];
            client.handshakes = vec![Arc::new(NoiseXk::client(ck, sk.public))];
        }
        _ => {}
    }
    (server, client, tls)
}

/// Connect + full handshake per security mode, one connection at a time, against a 2-shard
/// node; then the round-trip cost of sealing: 64-byte PINGs over plaintext, noise_xk and mtls.
pub(crate) fn handshake(report: &mut Report, rounds: usize, n: usize) {
    const MODES: [&str; 5] = ["plaintext", "token", "noise_xk", "mtls", "post_quantum"];
    println!(
        "\nhandshake: TCP connect + HELLO/HELLO_ACK + the mode's handshake over loopback (blocking client), {n} connections x {rounds} rounds per mode, modes alternating, medians"
    );
    let bar = progress((rounds * MODES.len() * 2) as u64, "handshake");
    let mut per: BTreeMap<&str, [Vec<f64>; 4]> = BTreeMap::new();
    let pings = n * 5;
    for _ in 0..rounds {
        for mode in MODES {
            let (server, client, tls) = secured(mode);
            let mut b = Node::builder()
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .protocol(server)
                .shards(2);
            if let Some((s, _)) = &tls {
                b = b.tls(s.clone());
            }
            let node = b.start().expect("node");
            let url = node.url();
            let cfg = valkyrie_runtime::ClientConfig {
                protocol: client,
                tls: tls.map(|(_, c)| c),
                ..valkyrie_runtime::ClientConfig::default()
            };
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
            for _ in 0..n {
                let t = Instant::now();
                let c =
                    valkyrie_runtime::Client::connect_with(&url, cfg.clone()).expect("handshake");
                h.saturating_record(t.elapsed().as_nanos() as u64);
                drop(c);
            }
            bar.inc(1);
            let e = per.entry(mode).or_default();
            e[0].push(h.value_at_quantile(0.5) as f64 / 1000.0);
            e[1].push(h.value_at_quantile(0.99) as f64 / 1000.0);
            if matches!(mode, "plaintext" | "noise_xk" | "mtls") {
                // Sealed against plaintext round trips on one connection.
                let mut c = valkyrie_runtime::Client::connect_with(&url, cfg).expect("connect");
                let payload = [0xA5u8; 64];
                for _ in 0..pings / 10 {
                    c.ping(&payload).expect("ping");
                }
                let mut r =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("histogram");
                for _ in 0..pings {
                    r.saturating_record(c.ping(&payload).expect("ping").as_nanos() as u64);
                }
                e[2].push(r.value_at_quantile(0.5) as f64 / 1000.0);
                e[3].push(r.value_at_quantile(0.99) as f64 / 1000.0);
            }
            bar.inc(1);
            drop(node);
        }
    }
    bar.finish_and_clear();
    let plain_rtt99 = per
        .get("plaintext")
        .map_or(f64::NAN, |v| median(v[3].clone()));
    for mode in MODES {
        let v = &per[mode];
        let (p50, p99) = (median(v[0].clone()), median(v[1].clone()));
        let target = if mode == "post_quantum" {
            2000.0
        } else {
            1000.0
        };
        println!(
            "  valkyrie   {mode:<10}  p50 {p50:>7.1} us  p99 {p99:>7.1} us   (target < {target:.0} us)"
        );
        let params = json!({"transport": "tcp", "security": mode, "shards": 2, "connections": n});
        report.add(
            "handshake",
            "valkyrie",
            "handshake_p50",
            "us",
            p50,
            params.clone(),
        );
        report.add("handshake", "valkyrie", "handshake_p99", "us", p99, params);
    }
    for mode in ["plaintext", "noise_xk", "mtls"] {
        let v = &per[mode];
        let (p50, p99) = (median(v[2].clone()), median(v[3].clone()));
        println!(
            "  64 B PING  {mode:<10}  p50 {p50:>7.1} us  p99 {p99:>7.1} us   p99 {:+.1} us vs plaintext (target <= +5 us)",
            p99 - plain_rtt99
        );
        let params = json!({"transport": "tcp", "security": mode, "size": 64, "mode": "blocking", "shards": 2});
        report.add("latency", "valkyrie", "rtt_p50", "us", p50, params.clone());
        report.add("latency", "valkyrie", "rtt_p99", "us", p99, params);
    }
}
