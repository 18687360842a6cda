//! # valkyrie-runtime
//!
//! The thread-per-core io_uring runtime that serves the Valkyrie Protocol v2.
//!
//! - One **shard** per core (configurable), each a pinned thread that owns one io_uring ring,
//!   its own `SO_REUSEPORT` listening sockets, its connections, timers, buffers and metrics.
//!   Connections are accepted with multishot accept straight into io_uring direct descriptors
//!   and read with multishot receive from a provided-buffer ring, so an idle connection owns no
//!   receive buffer. Rings use `SINGLE_ISSUER` and `DEFER_TASKRUN` where the kernel has them.
//! - A **mesh** of single-producer single-consumer rings between every pair of shards carries
//!   cross-shard traffic; a service on one shard reaches a connection on another through it.
//! - **Services** are per-shard values ([`Service`]) that receive typed messages and reply,
//!   stream or route. No locks on the hot path.
//! - A blocking [`Client`] for programs, tests and the CLI.
//! - **Transports**: `tcp://`, `unix://`, `ws://`, `shm://` and `quic://` (quinn-proto driven by
//!   the shard's own UDP loop; connection ids name their shard, so a datagram that lands on
//!   another shard is forwarded over the mesh). [`Client::connect_any`] takes a ranked list and
//!   fails over; a TCP or Unix connection between two processes on one host upgrades in band
//!   to shared memory ([`Client::upgrade_to_shm`]).
//!
//! ## A node with an echo service, and a client
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use valkyrie_runtime::{Client, ConnRef, Ctx, Node, Service};
//! use valkyrie_protocol::{Frame, MessageType};
//!
//! /// Answers every JOB_REQUEST with a JOB_ACCEPT carrying the same payload.
//! struct Accept;
//! impl Service for Accept {
//!     fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
//!         if frame.msg_type() == MessageType::JobRequest {
//!             let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
//!         }
//!     }
//! }
//!
//! let node = Node::builder()
//!     .listen("tcp://127.0.0.1:0")?
//!     .shards(2)
//!     .service(|_shard| Accept)
//!     .start()?;
//!
//! let mut client = Client::connect(&node.url())?;
//! println!("rtt {:?}", client.ping(b"hello")?);
//! let answer = client.request(101, MessageType::JobRequest, Bytes::from_static(b"\x80"), Duration::from_secs(1))?;
//! assert_eq!(answer.msg_type(), MessageType::JobAccept);
//! client.close()?;
//! node.shutdown();
//! node.join();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
pub mod audit;
pub mod client;
mod config;
mod conn;
pub mod guard;
mod handle;
mod health;
pub mod keys;
pub mod link;
mod mesh;
pub mod metrics;
mod node;
mod node_listeners;
mod node_reload;
#[allow(unsafe_code)]
// UDP message headers and control messages: every unsafe block carries a SAFETY comment.
pub mod quic;
mod reload;
pub mod request_span;
pub mod service;
mod shard;
#[allow(unsafe_code)] // socket and eventfd syscalls: every unsafe block carries a SAFETY comment.
mod sys;
pub mod transport;
#[allow(unsafe_code)] // io_uring: every unsafe block carries a SAFETY comment.
mod uring;
pub mod url;

pub use client::{Client, ClientConfig, ClientError, transport_rank};
pub use config::{
    BearerKeys, BusyPoll, HttpSettings, NodeConfig, ReadyCheck, RecvMode, TraceHookSlot,
};
pub use handle::{ClientBuilder, ClientHandle, ReplyFuture};
pub use link::{ConnectOptions, LinkId, LinkState};
pub use mesh::MESH_MEMORY;
pub use metrics::ShardMetrics;
pub use node::{Node, NodeBuilder};
pub use reload::{Reload, ReloadError};
pub use service::{
    Ctx, Echo, HttpAnswer, MAX_REQUESTS_IN_FLIGHT, MAX_ROUTES, MAX_SERVICE_TIMERS, NoService,
    Nudger, Reply, Route, RouteError, Service,
};
pub use sys::raise_nofile;
pub use uring::RingFeatures;
pub use url::Endpoint;
/// Bearer tokens for HTTP clients of a `token` node (mint one, verify one).
pub use valkyrie_bridge::bearer;
/// The bridge's HTTP types a service answers with ([`Service::on_http`]).
pub use valkyrie_bridge::http;

/// A connection anywhere in the node: its shard, and its slot on that shard. A stale reference
/// (the connection closed and the slot was reused) is detected by its generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnRef {
    /// The shard that owns the connection.
    pub shard: u16,
    pub(crate) slot: u32,
    pub(crate) generation: u32,
}
