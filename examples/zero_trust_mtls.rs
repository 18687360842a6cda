//! A control plane that only talks to agents holding a certificate from its CA, and lets each
//! agent send only what the policy grants its certificate name: `zero_trust` over `mtls`.
//!
//! Run `cargo run --release -p valkyrie-examples --example zero_trust_mtls`. It makes a
//! throw-away CA with a node certificate and two agent certificates, starts the node, and
//! connects both agents: `agent-build` may send jobs, `agent-metrics` only metrics; each tries
//! both. Production: make the files with `valkyrie keygen ca|cert` (or your own CA) and load
//! them with `valkyrie_runtime::keys::tls_server` / `tls_client`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::message::{MetricsReport, Payload};
use valkyrie_protocol::security::mtls::{DevPki, Mtls};
use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
use valkyrie_protocol::{Config, Frame, MessageType, SecurityMode, SendOptions};
use valkyrie_runtime::{Client, ClientConfig, ClientError, ConnRef, Ctx, Node, Service};

/// Accepts a job with JOB_ACCEPT and says whose certificate sent it.
struct ControlPlane;

impl Service for ControlPlane {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        let who = ctx.peer(conn).and_then(|p| p.identity).unwrap_or_default();
        println!("  node: {} from {who}", frame.msg_type());
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(
                conn,
                &frame.header,
                MessageType::JobAccept,
                Bytes::from(format!("accepted for {who}")),
            );
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let pki = DevPki::generate(&["127.0.0.1"], &["agent-build", "agent-metrics"])?;
    let policy = Policy::parse(
        "x509:agent-build    JOB_*,LOG_ENTRY\n\
         x509:agent-metrics  METRICS_REPORT,HEALTH_CHECK\n",
    )?;
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")?
        .protocol(Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
            policy: Some(Arc::new(policy)),
            ..Config::new("control-plane")
        })
        .tls(pki.server_config(0)?)
        .shards(1)
        .service(|_| ControlPlane)
        .start()?;

    for (i, name) in ["agent-build", "agent-metrics"].into_iter().enumerate() {
        let base = ClientConfig::default();
        let cfg = ClientConfig {
            protocol: Config {
                security: vec![SecurityMode::ZeroTrust],
                handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
                ..Config::new(name)
            },
            tls: Some(pki.client_config(i)?),
            ..base
        };
        let mut agent = Client::connect_with(&node.url(), cfg)?;
        println!(
            "{name}: connected to {} over TLS 1.3",
            agent
                .peer()
                .and_then(|p| p.identity.clone())
                .unwrap_or_default()
        );
        let job = agent.request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"build main"),
            Duration::from_secs(5),
        );
        match job {
            Ok(f) => println!("{name}: job -> {}", String::from_utf8_lossy(&f.payload)),
            Err(ClientError::Peer { code, message }) => {
                println!("{name}: job refused -> {code}: {message}")
            }
            Err(e) => return Err(e.into()),
        }
        let report = MetricsReport {
            node_id: name.to_owned(),
            timestamp_ms: 0,
            metrics: Vec::new(),
        };
        agent.send(
            3,
            MessageType::MetricsReport,
            report.to_bytes(),
            SendOptions::default(),
        )?;
        // A denial is not fatal: the connection stays up. Give the node's answer (ERROR 701 for
        // agent-build, nothing for agent-metrics) a moment, then report what came back.
        if let Ok(Some(ev)) = agent.next_event(Duration::from_millis(200)) {
            println!("{name}: metrics -> {ev:?}");
        }
        agent.ping(b"still connected")?;
        agent.close()?;
    }
    node.shutdown();
    node.join();
    Ok(())
}
