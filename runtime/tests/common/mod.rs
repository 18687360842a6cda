//! What several test binaries share: a service that accepts jobs, a node on a chosen port,
//! a free port. (Each binary uses part of it.)
#![allow(dead_code, unreachable_pub)]

pub mod link_caller;

use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{ConnRef, Ctx, Node, Service};

/// Answers a JOB_REQUEST with a JOB_ACCEPT carrying its payload.
pub struct Accept;

impl Service for Accept {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

/// Answers a JOB_REQUEST with a JOB_ACCEPT of its payload, ` from `, and the identity the
/// connection's handshake authenticated.
pub struct Identify;

impl Service for Identify {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let who = ctx.peer(conn).and_then(|p| p.identity).unwrap_or_default();
            let mut v = frame.payload.to_vec();
            v.extend_from_slice(b" from ");
            v.extend_from_slice(who.as_bytes());
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, v.into());
        }
    }
}

/// A node of `shards` shards running [`Accept`] on loopback `port`.
pub fn accept_node(port: u16, shards: usize) -> Node {
    Node::builder()
        .listen(&format!("tcp://127.0.0.1:{port}"))
        .unwrap()
        .shards(shards)
        .service(|_| Accept)
        .start()
        .unwrap()
}

/// A loopback port nothing listens on (bound, then let go).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// `base` made an mtls client: certificate 0 of `pki`, trusting the CA `ca_pem`; with
/// `zero_trust`, the zero_trust mode over mtls.
pub fn mtls_client(
    base: valkyrie_runtime::ClientConfig,
    pki: &valkyrie_protocol::security::mtls::DevPki,
    ca_pem: &[u8],
    zero_trust: bool,
) -> valkyrie_runtime::ClientConfig {
    use std::sync::Arc;
    use valkyrie_protocol::security::HandshakeProvider;
    use valkyrie_protocol::security::mtls::{self, Mtls};
    use valkyrie_protocol::security::zero_trust::ZeroTrust;
    use valkyrie_protocol::{Config, SecurityMode};
    let (mode, handshake): (SecurityMode, Arc<dyn HandshakeProvider>) = if zero_trust {
        (SecurityMode::ZeroTrust, Arc::new(ZeroTrust::over(Mtls)))
    } else {
        (SecurityMode::Mtls, Arc::new(Mtls))
    };
    valkyrie_runtime::ClientConfig {
        protocol: Config {
            security: vec![mode],
            handshakes: vec![handshake],
            ..base.protocol.clone()
        },
        tls: Some(
            mtls::client_config(&pki.client_chain_pem(0), &pki.client_key_pem(0), ca_pem)
                .expect("a client configuration from the test PKI"),
        ),
        ..base
    }
}
