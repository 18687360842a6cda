//! # valkyrie-protocol
//!
//! The Valkyrie Protocol v2 as a set of state machines with no I/O: bytes in, bytes and events
//! out. No sockets, threads, clock reads or io_uring live here; time is passed in as
//! [`std::time::Instant`] values, so every rule is deterministic, unit-tested and fuzzed
//! without a network. The runtime crate drives it over TCP, Unix sockets and shared memory.
//!
//! - [`frame`]: the 24-byte header, the 39 message types, flags; encode and decode.
//! - [`codec`]: a streaming decoder fed arbitrary chunks, with a per-connection size limit.
//! - [`message`]: typed payloads (MessagePack maps, convertible to and from JSON).
//! - [`error`]: the 1xx–7xx code table, recovery classes and fatality.
//! - [`connection`]: HELLO negotiation, the security handshake slot, PING/PONG and
//!   heartbeats, errors, graceful close.
//! - [`streams`]: id ranges, QoS classes, credit-based flow control, the priority scheduler.
//! - [`security`]: the interface each security mode's handshake implements.
//! - [`retry`]: exponential and linear backoff with jitter, circuit breaker.
//!
//! ## A client and a server over an in-memory pipe
//!
//! ```
//! use std::{sync::Arc, time::Instant};
//! use bytes::Bytes;
//! use valkyrie_protocol::{
//!     Config, Connection, Event, MessageType, SendOptions, Side,
//!     message::{JobAccept, JobRequest, Message, Payload},
//! };
//!
//! /// Move every queued frame from `from` to `to`.
//! fn pump(from: &mut Connection, to: &mut Connection, now: Instant) {
//!     let mut wire = Vec::new();
//!     while let Some(t) = from.poll_transmit() {
//!         t.write_to(&mut wire);
//!     }
//!     to.handle_input(&wire, now);
//! }
//!
//! let now = Instant::now();
//! let mut agent = Connection::new(Side::Client, Arc::new(Config::new("agent-7")), now, 1_750_000_000);
//! let mut control = Connection::new(Side::Server, Arc::new(Config::new("control")), now, 1_750_000_000);
//!
//! pump(&mut agent, &mut control, now);         // HELLO
//! while control.poll_event().is_some() {}      // -> Connected
//! pump(&mut control, &mut agent, now);         // HELLO_ACK
//! while agent.poll_event().is_some() {}        // -> Connected
//!
//! // The control plane offers a job on job stream 100 (even: the accepting side's id).
//! let job = JobRequest {
//!     attempt: 0,
//!     log_from: 0,
//!     epoch: 0,
//!     job_id: "build-42".into(),
//!     spec: serde_json::json!({"pipeline": "build-test-deploy", "branch": "main"}),
//!     resources: Default::default(),
//!     priority: 200,
//!     timeout_ms: 3_600_000,
//! };
//! let corr = control.request(100, MessageType::JobRequest, job.to_bytes(), SendOptions::default()).unwrap();
//! pump(&mut control, &mut agent, now);
//!
//! // The agent sees the stream open and the request, and accepts.
//! let mut request = None;
//! while let Some(ev) = agent.poll_event() {
//!     if let Event::Frame(f) = ev {
//!         let Message::JobRequest(job) = Message::decode(f.msg_type(), &f.payload).unwrap() else { panic!() };
//!         assert_eq!(job.job_id, "build-42");
//!         request = Some(f.header);
//!     }
//! }
//! let accept = JobAccept { job_id: "build-42".into(), agent_id: "agent-7".into(), epoch: 0 };
//! agent.respond(&request.unwrap(), MessageType::JobAccept, accept.to_bytes(), SendOptions::default()).unwrap();
//! pump(&mut agent, &mut control, now);
//!
//! let answer = std::iter::from_fn(|| control.poll_event())
//!     .find_map(|e| match e { Event::Frame(f) => Some(f), _ => None })
//!     .unwrap();
//! assert_eq!(answer.header.correlation_id, corr);
//! assert_eq!(JobAccept::from_bytes(&answer.payload).unwrap().agent_id, "agent-7");
//! ```

#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod codec;
pub mod connection;
pub mod error;
pub mod features;
pub mod frame;
pub mod message;
pub mod retry;
pub mod security;
pub mod splitter;
pub mod streams;
mod time;

pub use connection::{
    CloseReason, Config, Connection, ConnectionStats, Event, HELD_INPUT_BYTES, PeerInfo, SendError,
    SendOptions, State, Transmit, UpgradeKind, is_upgrade_fence,
};
pub use error::{ErrorClass, ErrorCode, RecoveryAction};
pub use frame::{Flags, Frame, HEADER_LEN, Header, HeaderError, MAX_FRAME_LIMIT, MessageType};
pub use message::{Message, SecurityMode};
pub use time::Tick;

/// Which end of a connection this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    /// The connecting side: sends HELLO, numbers its streams odd.
    Client,
    /// The accepting side: answers HELLO_ACK, numbers its streams even.
    Server,
}
