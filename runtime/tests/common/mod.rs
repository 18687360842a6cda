//! What several test binaries share: a service that accepts jobs, a node on a chosen port,
//! a free port. (Each binary uses part of it.)
#![allow(dead_code, unreachable_pub)]

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
