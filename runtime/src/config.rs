//! What a node is configured with: [`NodeConfig`] and the modes of its shards' loops
//! ([`BusyPoll`], [`RecvMode`]).

use std::sync::Arc;
use std::time::Duration;

use valkyrie_protocol::Config;
use valkyrie_shm::ShmConfig;

use crate::url::Endpoint;

/// Whether a shard spins on its completion queue before sleeping.
///
/// Waking a sleeping core costs tens of microseconds on a VM; spinning trades CPU for latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyPoll {
    /// Sleep in the kernel as soon as there is nothing to do.
    Off,
    /// Spin for this long after the last completion, then sleep.
    Adaptive(Duration),
    /// Never sleep (one core per shard at 100 %).
    Always,
}

impl std::str::FromStr for BusyPoll {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(BusyPoll::Off),
            "always" => Ok(BusyPoll::Always),
            "adaptive" => Ok(BusyPoll::Adaptive(Duration::from_micros(200))),
            other => match other
                .strip_prefix("adaptive:")
                .and_then(|us| us.parse::<u64>().ok())
            {
                Some(us) => Ok(BusyPoll::Adaptive(Duration::from_micros(us))),
                None => Err(format!(
                    "busy-poll mode {other:?}: expected off, adaptive[:MICROS] or always"
                )),
            },
        }
    }
}

/// How a shard waits for data on a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecvMode {
    /// One multishot receive armed per connection, taking a provided buffer per arrival.
    Multishot,
    /// A multishot poll per connection; a one-shot receive is issued when it reports data.
    /// Costs the kernel less memory per idle connection, and one more operation per arrival.
    PollThenRecv,
}

impl std::str::FromStr for RecvMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "multishot" => Ok(RecvMode::Multishot),
            "poll" => Ok(RecvMode::PollThenRecv),
            other => Err(format!("recv mode {other:?}: expected multishot or poll")),
        }
    }
}

/// Everything a node is configured with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Endpoints to listen on.
    pub listen: Vec<Endpoint>,
    /// Listen nowhere, not even on the default endpoint (a node that only connects out).
    pub no_listeners: bool,
    /// Shards (threads, rings); defaults to the number of cores.
    pub shards: usize,
    /// Pin shard `i` to core `i % cores`.
    pub pin: bool,
    /// Protocol settings for every connection.
    pub protocol: Arc<Config>,
    /// Connections a shard holds; past it a new connection gets ERROR 501 and is closed.
    pub max_connections_per_shard: usize,
    /// Busy-poll mode.
    pub busy_poll: BusyPoll,
    /// Submission queue entries per ring.
    pub ring_entries: u32,
    /// Provided receive buffers per shard (a power of two). The shard's receive memory is
    /// `recv_buffers × recv_buffer_size`, shared by all its connections: a buffer is taken
    /// only while data arrives, and (kernel 6.12 and later) consumed incrementally, each
    /// receive taking only the bytes it fills. Where the kernel cannot consume buffers
    /// incrementally, the same memory is split into 4 KiB buffers instead, since there every
    /// receive takes a whole one. The default, 32 × 64 KiB, stays within a core's L2 cache:
    /// receives walk through the whole ring in turn, and 8 MiB of it measured 5–10 % slower
    /// pipelined (docs/BENCHMARKS.md). Receives that find every buffer in use are re-armed and
    /// counted (`valkyrie_recv_buffer_shortages_total`).
    pub recv_buffers: u16,
    /// Size of each receive buffer: the most one receive completion carries.
    pub recv_buffer_size: u32,
    /// Most bytes one connection's multishot receive takes before it ends and is armed again
    /// at the shard's next loop turn (kernel 6.17 and later; 0 for no limit, and where the
    /// kernel has no such limit). Without it, one receive takes all a deep-pipelining peer
    /// has sent (up to every receive buffer) in one turn, more than the connection may answer
    /// before back-pressure, and the rest waits copied aside. While this much output already
    /// waits behind a send in flight, a receive that ended is armed again only once that send
    /// is done. With the default 64 KiB (one receive buffer) the one-connection pipeline
    /// scenario went from 48–54 to 27 ns of server CPU per PING; with 128 KiB a third of the
    /// connections settled at ~49 ns (docs/BENCHMARKS.md).
    pub recv_budget: u32,
    /// Most bytes gathered into one send.
    pub send_batch: usize,
    /// How long a shutdown drains before closing what is left.
    pub shutdown_timeout: Duration,
    /// A peer that takes no bytes for this long is closed as a slow consumer.
    pub slow_consumer_timeout: Duration,
    /// Capacity of each mesh ring (messages of 64 bytes), at most: the mesh has
    /// shards × (shards − 1) rings, so each is cut to keep the whole under
    /// [`MESH_MEMORY`](crate::MESH_MEMORY) (64 MiB), but not below 256 messages.
    /// With the default 8,192: 2 shards hold 1 MiB of rings, 16 shards 4,369 messages a ring,
    /// 64 shards 260. A full ring is `RouteError::MeshFull` to the service (back-pressure).
    pub mesh_capacity: usize,
    /// Direct-descriptor table slots per ring (default: the connection limit plus headroom,
    /// capped by RLIMIT_NOFILE, which the kernel enforces per table). When the table is nearly
    /// full a shard stops accepting (connections wait in the listen backlog) and resumes when
    /// slots free.
    pub direct_descriptors: Option<u32>,
    /// How connections wait for data.
    pub recv_mode: RecvMode,
    /// Release a connection's receive buffer and queues every time it drains, instead of only
    /// when its timer fires. Measured here: ~400 B less per connection that exchanges a frame now
    /// and then (heartbeats), ~15 % less pipelined throughput (an allocation per burst). Off by
    /// default; for nodes holding very many mostly quiet connections.
    pub shrink_when_drained: bool,
    /// Ring geometry of the shared-memory connections accepted on `shm://` endpoints
    /// (capacity per direction, max frame). Default: 1 MiB rings.
    pub shm: ShmConfig,
    /// Intrusion detection on TCP connections (off by default): per-address failure counts,
    /// throttling and bans (702).
    pub guard: Option<crate::guard::GuardConfig>,
    /// Where handshake results, authentication failures, refusals and bans are recorded.
    pub audit: Option<Arc<crate::audit::AuditLog>>,
    /// TLS 1.3 on every TCP listener (see `valkyrie_protocol::security::mtls`): required for
    /// the `mtls` mode, optional under `token`. Unix and shared-memory endpoints stay local
    /// and unencrypted.
    pub tls: Option<Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>>,
    /// TLS of the `quic://` listeners (QUIC's own TLS 1.3; [`NodeBuilder::quic_tls`](crate::NodeBuilder::quic_tls)):
    /// when unset, [`NodeConfig::tls`]. A `quic://` listener without either is refused.
    pub quic_tls: Option<Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>>,
    /// The QUIC TLS requires client certificates: a resumed client's early data then waits
    /// for the handshake that proves its identity.
    pub quic_client_auth: bool,
    /// Move a same-host client's TCP or Unix connection to shared memory when it asks
    /// (UPGRADE; default on): the node then says where it runs in HELLO_ACK.
    pub upgrade: bool,
    /// HTTP/1.1 on the node's TCP and Unix listeners, told apart from Valkyrie frames by the
    /// first byte.
    pub http: HttpSettings,
    /// Called with the span of each request that carries a trace context (see
    /// `valkyrie_runtime::request_span`): an exporter sets the span's remote parent there.
    pub trace_hook: TraceHookSlot,
    /// More metrics written with the node's own at `/metrics` (a service's, a program's):
    /// [`NodeBuilder::collector`](crate::NodeBuilder::collector).
    pub collectors: Vec<std::sync::Arc<dyn prometheus_client::collector::Collector>>,
    /// Conditions `/readyz` also requires ([`NodeBuilder::ready_when`](crate::NodeBuilder::ready_when)).
    pub ready_when: Vec<ReadyCheck>,
}

/// An optional [`TraceHook`](crate::request_span::TraceHook) (shown as set or not).
#[derive(Clone, Default)]
pub struct TraceHookSlot(pub Option<crate::request_span::TraceHook>);

impl std::fmt::Debug for TraceHookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "TraceHook(set)"
        } else {
            "None"
        })
    }
}

/// HTTP/1.1 served on the node's own port (see `valkyrie_bridge::http`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Serve HTTP at all (default true); off, an HTTP request is answered as bad frame magic.
    pub enabled: bool,
    /// What one request may make the node hold (header fields and bytes, body size).
    pub limits: valkyrie_bridge::http::Limits,
    /// Time for a request to arrive whole once it has begun (past it: 408 and close).
    pub request_timeout: Duration,
    /// Time a kept-alive connection may stay idle between requests.
    pub idle_timeout: Duration,
    /// Time the REST gateway waits for the service's answer (past it: 504).
    pub gateway_timeout: Duration,
    /// On a node whose security modes all authenticate, answer `/healthz`, `/readyz` and
    /// `/metrics` without credentials (default false: they need them like every other path;
    /// turn it on for probes and scrapers that carry none). A plaintext node asks nothing.
    pub open_probes: bool,
    /// The secrets `Authorization: Bearer` tokens are checked with (`valkyrie_bridge::bearer`;
    /// the CLI gives a `token` node's own secrets file). Empty: no bearer credentials.
    pub bearer_keys: BearerKeys,
    /// The `Origin`s a browser's WebSocket may come from (`GET /ws`); empty: any. A client
    /// that sends no `Origin` (not a browser) is not asked.
    pub allow_origins: Vec<String>,
}

/// Key ids and their secrets for bearer tokens (shown redacted).
#[derive(Clone, Default)]
pub struct BearerKeys(pub Arc<Vec<(String, Vec<u8>)>>);

impl std::fmt::Debug for BearerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.0.iter().map(|(id, _)| id.as_str()).collect();
        f.debug_struct("BearerKeys").field("key_ids", &ids).finish()
    }
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            enabled: true,
            limits: valkyrie_bridge::http::Limits::default(),
            request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            gateway_timeout: Duration::from_secs(30),
            open_probes: false,
            bearer_keys: BearerKeys::default(),
            allow_origins: Vec::new(),
        }
    }
}

impl NodeConfig {
    /// The TLS of the `quic://` listeners and whether it asks for client certificates:
    /// [`NodeConfig::quic_tls`], else the TCP listeners' [`NodeConfig::tls`] (which does).
    pub(crate) fn quic_server_tls(
        &self,
    ) -> Option<(
        Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
        bool,
    )> {
        match (&self.quic_tls, &self.tls) {
            (Some(t), _) => Some((t.clone(), self.quic_client_auth)),
            (None, Some(t)) => Some((t.clone(), true)),
            (None, None) => None,
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: Vec::new(),
            no_listeners: false,
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            pin: true,
            protocol: Arc::new(Config::new("valkyrie-node")),
            max_connections_per_shard: 1 << 20,
            busy_poll: BusyPoll::Off,
            ring_entries: 4096,
            recv_buffers: 32,
            recv_buffer_size: 64 * 1024,
            recv_budget: 64 * 1024,
            send_batch: 256 * 1024,
            shutdown_timeout: Duration::from_secs(5),
            slow_consumer_timeout: Duration::from_secs(10),
            mesh_capacity: 8192,
            direct_descriptors: None,
            recv_mode: match std::env::var("VALKYRIE_RECV_MODE").as_deref() {
                Ok("poll") => RecvMode::PollThenRecv,
                _ => RecvMode::Multishot,
            },
            shrink_when_drained: false,
            shm: ShmConfig::default(),
            guard: None,
            audit: None,
            tls: None,
            quic_tls: None,
            quic_client_auth: false,
            upgrade: true,
            http: HttpSettings::default(),
            trace_hook: TraceHookSlot::default(),
            collectors: Vec::new(),
            ready_when: Vec::new(),
        }
    }
}

/// A condition `/readyz` requires besides the node's own ([`NodeBuilder::ready_when`](crate::NodeBuilder::ready_when)).
#[derive(Clone)]
pub struct ReadyCheck(pub std::sync::Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ReadyCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReadyCheck")
    }
}
