//! Starting each system the latency and throughput scenarios compare (a Valkyrie node, the
//! tokio, glommio, gRPC and floor peers) on a chosen core.

use std::net::SocketAddr;
use std::time::Duration;

use valkyrie_runtime::{BusyPoll, Node, RecvMode};

use crate::peers::{self, floor::Floor, pin, tokio_echo::TokioEcho};

pub(crate) enum Server {
    Valkyrie(Node),
    Tokio(peers::TokioServer),
    Floor(Floor),
    Grpc(peers::TokioServer),
    Glommio(peers::glommio_echo::GlommioEcho),
}

impl Server {
    pub(crate) fn addr(&self) -> SocketAddr {
        match self {
            Server::Valkyrie(n) => match &n.endpoints()[0] {
                valkyrie_runtime::Endpoint::Tcp(a) => *a,
                _ => unreachable!("bench listens on tcp"),
            },
            Server::Tokio(t) => t.addr,
            Server::Floor(f) => f.addr,
            Server::Grpc(g) => g.addr,
            Server::Glommio(g) => g.addr,
        }
    }
}

pub(crate) fn start(
    system: &str,
    core: usize,
    shards: usize,
    busy: bool,
    spin: BusyPoll,
) -> Server {
    match system {
        "valkyrie" | "valkyrie-poll" => {
            let recv = if system == "valkyrie" {
                RecvMode::Multishot
            } else {
                RecvMode::PollThenRecv
            };
            let mut b = Node::builder()
                .configure(|c| c.recv_mode = recv)
                .listen("tcp://127.0.0.1:0")
                .expect("endpoint")
                .shards(shards)
                .heartbeat(Duration::from_secs(60))
                .busy_poll(if busy { spin } else { BusyPoll::Off });
            if shards == 1 {
                // Pin the single shard to the server core.
                b = b.pin(false);
                pin_next_thread_hint(core);
            }
            let node = b.start().expect("valkyrie node");
            Server::Valkyrie(node)
        }
        "tokio" => Server::Tokio(
            TokioEcho::start(core, if shards > 1 { shards } else { 1 }).expect("tokio"),
        ),
        "floor" => Server::Floor(Floor::start(core).expect("floor")),
        "floor-batch" => Server::Floor(peers::floor_batch::start(core).expect("floor-batch")),
        "glommio" => {
            Server::Glommio(peers::glommio_echo::GlommioEcho::start(core).expect("glommio"))
        }
        "grpc" => Server::Grpc(peers::grpc::GrpcEcho::start(core, shards.max(1)).expect("grpc")),
        other => panic!("unknown system {other}"),
    }
}

/// Shard threads pin themselves to core `id % cores` when pinning is on; with one shard and
/// pinning off, the shard inherits the affinity of the thread that starts it, so pin that.
pub(crate) fn pin_next_thread_hint(core: usize) {
    pin(core);
}
