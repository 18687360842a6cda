//! Connection configuration, shared by every connection of a node (wrap it in an `Arc`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::DEFAULT_MAX_FRAME;
use crate::message::SecurityMode;
use crate::security::HandshakeProvider;
use crate::streams::{SchedulerLimits, WindowStrategy};

/// Smallest `max_frame` a peer may announce: a PONG must always fit.
pub const MIN_MAX_FRAME: u32 = 1024;

/// Settings for one side of a connection.
#[derive(Clone)]
pub struct Config {
    /// Our node id, sent in HELLO / HELLO_ACK.
    pub node_id: String,
    /// Client: modes offered, most preferred first. Server: modes accepted, most preferred
    /// first (the client's order decides among those both accept).
    pub security: Vec<SecurityMode>,
    /// Handshake implementations for the non-plaintext modes in `security`.
    pub handshakes: Vec<Arc<dyn HandshakeProvider>>,
    /// Largest payload we accept (announced in HELLO / HELLO_ACK), at most 64 MiB.
    pub max_frame: u32,
    /// Heartbeat interval we propose; the larger of both proposals is used (zero disables
    /// heartbeats only when both sides propose zero).
    pub heartbeat: Duration,
    /// Missed heartbeat intervals after which the connection is closed with error 108.
    pub max_missed_heartbeats: u32,
    /// Time allowed for HELLO and the security handshake (error 107 after it).
    pub handshake_timeout: Duration,
    /// Time allowed for a graceful close to drain.
    pub close_timeout: Duration,
    /// Receive window sizing for windowed streams.
    pub window: WindowStrategy,
    /// Concurrent streams the peer may open.
    pub max_streams: u32,
    /// When true, received stream bytes return credit only through
    /// [`Connection::release`](crate::Connection::release); otherwise on delivery.
    pub manual_flow_control: bool,
    /// Bounds of the outbound queues.
    pub scheduler: SchedulerLimits,
    /// Most payload bytes of PING/PONG the connection tracks in flight (pings outstanding).
    pub max_pings_in_flight: usize,
    /// Server side of `zero_trust`: who may send which message types. A zero_trust connection
    /// without a policy allows nothing (deny by default).
    pub policy: Option<Arc<crate::security::zero_trust::Policy>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::from("valkyrie"),
            security: vec![SecurityMode::Plaintext],
            handshakes: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat: Duration::from_secs(5),
            max_missed_heartbeats: 3,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            window: WindowStrategy::Adaptive {
                initial: 256 * 1024,
                min: 64 * 1024,
                max: 16 * 1024 * 1024,
            },
            max_streams: 256,
            manual_flow_control: false,
            scheduler: SchedulerLimits::default(),
            max_pings_in_flight: 16,
            policy: None,
        }
    }
}

impl Config {
    /// Defaults with this node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        Config {
            node_id: node_id.into(),
            ..Config::default()
        }
    }

    /// The provider for `mode`, if configured.
    pub fn provider(&self, mode: &SecurityMode) -> Option<&Arc<dyn HandshakeProvider>> {
        self.handshakes.iter().find(|p| &p.mode() == mode)
    }

    /// Whether this side can run `mode` (plaintext needs no provider).
    pub fn supports(&self, mode: &SecurityMode) -> bool {
        self.security.contains(mode)
            && (*mode == SecurityMode::Plaintext || self.provider(mode).is_some())
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("security", &self.security)
            .field(
                "handshakes",
                &self.handshakes.iter().map(|h| h.mode()).collect::<Vec<_>>(),
            )
            .field("max_frame", &self.max_frame)
            .field("heartbeat", &self.heartbeat)
            .field("max_missed_heartbeats", &self.max_missed_heartbeats)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("window", &self.window)
            .field("max_streams", &self.max_streams)
            .field("manual_flow_control", &self.manual_flow_control)
            .field("scheduler", &self.scheduler)
            .finish()
    }
}
