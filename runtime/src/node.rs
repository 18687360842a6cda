//! The node: its builder, start-up of the shards, shutdown, metrics.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use valkyrie_protocol::Config;

use crate::config::{BusyPoll, NodeConfig};
use crate::health::NodeState;

use crate::mesh::{self, Waker};
use crate::metrics::{self, ShardMetrics};
use crate::reload::Reload;
use crate::service::{NoService, Service};
use crate::shard::{Shard, ShardInit};
use crate::transport;
use crate::url::{Endpoint, EndpointError};
use valkyrie_shm::ShmConfig;

type Factory = Arc<dyn Fn(usize) -> Box<dyn Service> + Send + Sync>;
type Reloader = Arc<dyn Fn() -> Result<Reload, String> + Send + Sync>;

/// Builds a [`Node`].
pub struct NodeBuilder {
    cfg: NodeConfig,
    factory: Factory,
    reloader: Option<Reloader>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl Default for NodeBuilder {
    fn default() -> Self {
        NodeBuilder {
            cfg: NodeConfig::default(),
            factory: Arc::new(|_| Box::new(NoService)),
            reloader: None,
        }
    }
}

impl NodeBuilder {
    /// Listen on `url` (`tcp://host:port`, `unix:///path`); repeatable.
    pub fn listen(mut self, url: &str) -> Result<Self, EndpointError> {
        self.cfg.listen.push(url.parse()?);
        Ok(self)
    }

    /// Write `collector`'s metrics with the node's own at `/metrics` (and in
    /// [`Node::metrics`]): a service's counters, kept in atomics it shares with the collector.
    pub fn collector(mut self, collector: impl prometheus_client::collector::Collector) -> Self {
        self.cfg.collectors.push(Arc::new(collector));
        self
    }

    /// Make `/readyz` also require `ready` (a service that cannot serve for now — a control
    /// plane whose store is away — takes the node out of its load balancer's rotation).
    pub fn ready_when(mut self, ready: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.cfg
            .ready_when
            .push(crate::config::ReadyCheck(Arc::new(ready)));
        self
    }

    /// Listen nowhere (a node that only connects out, such as the embedded runtime of
    /// [`ClientHandle`](crate::ClientHandle)); without it and without [`listen`](Self::listen),
    /// a node listens on `tcp://127.0.0.1:7420`.
    pub fn without_listeners(mut self) -> Self {
        self.cfg.no_listeners = true;
        self.cfg.listen.clear();
        self
    }

    /// Number of shards (default: one per core; more than the cores is allowed).
    pub fn shards(mut self, n: usize) -> Self {
        self.cfg.shards = n.max(1);
        self
    }

    /// Pin shards to cores (default true).
    pub fn pin(mut self, on: bool) -> Self {
        self.cfg.pin = on;
        self
    }

    /// Protocol settings (node id, security, limits, heartbeat, windows).
    pub fn protocol(mut self, config: Config) -> Self {
        self.cfg.protocol = Arc::new(config);
        self
    }

    /// The heartbeat interval proposed to clients.
    pub fn heartbeat(mut self, interval: Duration) -> Self {
        Arc::make_mut(&mut self.cfg.protocol).heartbeat = interval;
        self
    }

    /// Connections per shard before new ones are refused with ERROR 501.
    pub fn max_connections_per_shard(mut self, n: usize) -> Self {
        self.cfg.max_connections_per_shard = n;
        self
    }

    /// Turn on intrusion detection with these limits.
    pub fn guard(mut self, cfg: crate::guard::GuardConfig) -> Self {
        self.cfg.guard = Some(cfg);
        self
    }

    /// Record security decisions to `log`.
    pub fn audit(mut self, log: Arc<crate::audit::AuditLog>) -> Self {
        self.cfg.audit = Some(log);
        self
    }

    /// TLS 1.3 on every TCP listener (mtls; or token inside TLS), e.g. from
    /// `valkyrie_protocol::security::mtls::server_config`.
    pub fn tls(
        mut self,
        config: Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
    ) -> Self {
        self.cfg.tls = Some(config);
        self
    }

    /// TLS for the `quic://` listeners (a certificate is required there; TCP listeners stay
    /// as [`NodeBuilder::tls`] leaves them). `client_auth`: the configuration requires
    /// client certificates (`mtls::server_config`), so HELLO negotiates `mtls` with their
    /// identity; without, only the node is authenticated
    /// (`mtls::server_config_without_client_auth`).
    pub fn quic_tls(
        mut self,
        config: Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
        client_auth: bool,
    ) -> Self {
        self.cfg.quic_tls = Some(config);
        self.cfg.quic_client_auth = client_auth;
        self
    }

    /// Ring geometry of accepted shared-memory connections.
    pub fn shm(mut self, cfg: ShmConfig) -> Self {
        self.cfg.shm = cfg;
        self
    }

    /// Busy-poll mode.
    pub fn busy_poll(mut self, mode: BusyPoll) -> Self {
        self.cfg.busy_poll = mode;
        self
    }

    /// Shutdown drain deadline.
    pub fn shutdown_timeout(mut self, d: Duration) -> Self {
        self.cfg.shutdown_timeout = d;
        self
    }

    /// Slow-consumer timeout.
    pub fn slow_consumer_timeout(mut self, d: Duration) -> Self {
        self.cfg.slow_consumer_timeout = d;
        self
    }

    /// The per-shard service: `factory(shard)` runs inside each shard's thread.
    pub fn service<S: Service, F: Fn(usize) -> S + Send + Sync + 'static>(
        mut self,
        factory: F,
    ) -> Self {
        self.factory = Arc::new(move |shard| Box::new(factory(shard)));
        self
    }

    /// Change any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut NodeConfig)) -> Self {
        f(&mut self.cfg);
        self
    }

    /// Bind the listeners and start the shards. A protocol configuration whose parts
    /// disagree ([`Config::validate`]) is refused with `InvalidInput`, the
    /// [`ConfigError`](valkyrie_protocol::connection::ConfigError) inside.
    pub fn start(self) -> io::Result<Node> {
        let mut node = Node::start(self.cfg, self.factory)?;
        node.reloader = self.reloader;
        Ok(node)
    }

    /// Where [`Node::reload`] (and SIGHUP in [`Node::run_until_signal`]) reads new material
    /// from: typically the same files the node was started with, read again. An `Err` is
    /// refused with a log line, and the old material stays.
    pub fn reload_with<F>(mut self, source: F) -> Self
    where
        F: Fn() -> Result<Reload, String> + Send + Sync + 'static,
    {
        self.reloader = Some(Arc::new(source));
        self
    }
}

/// Bind a stream listener (TCP, Unix, shared memory) for `n` shards: the endpoint as bound
/// (a TCP port 0 made real), its transport index, and one descriptor per shard. TCP binds
/// the address once per shard with `SO_REUSEPORT` (the kernel spreads connections); a Unix
/// or shared-memory rendezvous socket is bound once and shared.
pub(crate) fn bind_stream_listener(
    ep: &Endpoint,
    n: usize,
    shm: ShmConfig,
) -> io::Result<(Endpoint, u8, Vec<OwnedFd>)> {
    let t = transport::for_endpoint(ep);
    match ep {
        Endpoint::Tcp(_) => {
            let first = t.listen(ep, true, 4096)?;
            let bound = Endpoint::Tcp(transport::local_addr(&first)?);
            let mut fds = vec![first];
            for _ in 1..n {
                fds.push(t.listen(&bound, true, 4096)?);
            }
            Ok((bound, 0, fds))
        }
        Endpoint::Unix(path) => {
            let _ = std::fs::remove_file(path);
            let fd = t.listen(ep, false, 4096)?;
            let fds = (0..n)
                .map(|_| crate::sys::dup(&fd))
                .collect::<io::Result<_>>()?;
            Ok((ep.clone(), 1, fds))
        }
        Endpoint::Shm(name) => {
            // One rendezvous socket, polled by every shard; each accepted connection gets
            // its own segment from the shard that accepted it.
            let l = valkyrie_shm::ShmListener::bind_with(name, shm)
                .map_err(crate::transport::shm_io)?
                .into_listener();
            l.set_nonblocking(true)?;
            let fds = (0..n)
                .map(|_| l.try_clone().map(OwnedFd::from))
                .collect::<io::Result<_>>()?;
            Ok((ep.clone(), 2, fds))
        }
        Endpoint::Quic(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a stream listener",
        )),
    }
}

/// A running node. Dropping it shuts it down and waits for the shards.
pub struct Node {
    threads: Vec<JoinHandle<()>>,
    shutdown: Arc<AtomicBool>,
    /// Readiness (false once draining), every shard's counters: what the probes report.
    state: Arc<NodeState>,
    pub(crate) wakers: Arc<Vec<Waker>>,
    pub(crate) endpoints: Vec<Endpoint>,
    /// The endpoints as the builder was given them (a TCP port 0 before binding).
    pub(crate) requested: Vec<Endpoint>,
    /// Whether each endpoint is listened on (`Node::close_listener`).
    pub(crate) listening: Vec<bool>,
    features: Vec<crate::RingFeatures>,
    /// The configuration new connections use (replaced by a reload).
    pub(crate) cfg: std::sync::Mutex<Arc<NodeConfig>>,
    pub(crate) reloader: Option<Reloader>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("endpoints", &self.endpoints)
            .field("shards", &self.state.shards.len())
            .finish()
    }
}

impl Node {
    /// A builder with defaults: one shard per core, plaintext, no service.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::default()
    }

    fn start(mut cfg: NodeConfig, factory: Factory) -> io::Result<Node> {
        // A configuration that would offer a mode it cannot run is refused here, not found
        // by the first peer.
        cfg.protocol
            .validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        if cfg.listen.is_empty() && !cfg.no_listeners {
            cfg.listen
                .push("tcp://127.0.0.1:7420".parse().expect("default endpoint"));
        }
        if cfg.upgrade && cfg.protocol.host.is_none() {
            Arc::make_mut(&mut cfg.protocol).host = crate::sys::host_id();
        }
        let n = cfg.shards.max(1);
        let nofile = crate::sys::raise_nofile();
        let wanted = cfg
            .direct_descriptors
            .map_or(cfg.max_connections_per_shard as u64 + 64, u64::from);
        let table_size = wanted.clamp(2, nofile.min(u32::MAX as u64)) as u32;

        // Bind: the first TCP bind of an address picks the port (port 0); the other shards bind
        // the same port with SO_REUSEPORT. A Unix socket is bound once and shared.
        let mut per_shard: Vec<Vec<(OwnedFd, u8, u8)>> = (0..n).map(|_| Vec::new()).collect();
        let mut quic_per_shard: Vec<Vec<crate::shard::quic::QuicSetup>> =
            (0..n).map(|_| Vec::new()).collect();
        let mut endpoints = Vec::new();
        for ep in &cfg.listen {
            let t = transport::for_endpoint(ep);
            let index = endpoints.len().min(u8::MAX as usize) as u8;
            match ep {
                Endpoint::Quic(_) => {
                    // One UDP socket per shard on the same port (SO_REUSEPORT), each with its
                    // own endpoint; they share the handshake configuration.
                    let (tls, client_auth) = cfg.quic_server_tls().ok_or_else(|| {
                        io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "{ep} needs TLS: a certificate and key (NodeBuilder::quic_tls)"
                            ),
                        )
                    })?;
                    let server = crate::quic::server_config(&tls)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
                    let first = t.listen(ep, true, 0)?;
                    let bound = Endpoint::Quic(transport::local_addr(&first)?);
                    for (i, socks) in quic_per_shard.iter_mut().enumerate() {
                        let fd = if i == 0 {
                            crate::sys::dup(&first)?
                        } else {
                            t.listen(&bound, true, 0)?
                        };
                        socks.push(crate::shard::quic::QuicSetup {
                            fd,
                            server: Some(server.clone()),
                            client_auth,
                            endpoint: index,
                        });
                    }
                    endpoints.push(bound);
                }
                _ => {
                    let (bound, transport, fds) = bind_stream_listener(ep, n, cfg.shm)?;
                    for (shard, fd) in per_shard.iter_mut().zip(fds) {
                        shard.push((fd, transport, index));
                    }
                    endpoints.push(bound);
                }
            }
        }
        let wakers: Arc<Vec<Waker>> =
            Arc::new((0..n).map(|_| Waker::new()).collect::<io::Result<_>>()?);
        let (producers, mut consumers) = mesh::build(n, mesh::ring_capacity(n, cfg.mesh_capacity));
        let shutdown = Arc::new(AtomicBool::new(false));
        let metrics: Vec<Arc<ShardMetrics>> =
            (0..n).map(|_| Arc::new(ShardMetrics::new())).collect();
        let security = cfg
            .protocol
            .security
            .first()
            .map_or("plaintext".into(), |m| m.to_string());
        let state = Arc::new(NodeState {
            ready: AtomicBool::new(false),
            shards: metrics.clone(),
            security,
            epoch: Instant::now(),
            max_connections: (cfg.max_connections_per_shard as i64).saturating_mul(n as i64),
            wakers: wakers.clone(),
            collectors: cfg.collectors.clone(),
            ready_when: cfg.ready_when.clone(),
        });
        // All online cores: `core_affinity::get_core_ids` would give only those the calling
        // thread may run on (a caller pinned to one core would stack every shard there).
        let cores = crate::sys::online_cores();
        let cfg = Arc::new(cfg);
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) =
            std::sync::mpsc::channel::<io::Result<(usize, crate::RingFeatures)>>();
        let cid_key = crate::quic::cid::CidKey::default();
        let mut quic_per_shard = quic_per_shard.into_iter();
        for (id, (listeners, mesh_tx)) in per_shard.into_iter().zip(producers).enumerate() {
            let mesh_rx: Vec<_> = consumers[id].iter_mut().filter_map(Option::take).collect();
            let init = ShardInit {
                id,
                cfg: cfg.clone(),
                listeners,
                mesh_rx,
                mesh_tx,
                wakers: wakers.clone(),
                metrics: metrics[id].clone(),
                node: state.clone(),
                shutdown: shutdown.clone(),
                table_size,
                quic: quic_per_shard.next().unwrap_or_default(),
                cid_key: cid_key.clone(),
            };
            let factory = factory.clone();
            let core = (cfg.pin && !cores.is_empty()).then(|| cores[id % cores.len()]);
            let ready = ready_tx.clone();
            threads.push(
                std::thread::Builder::new()
                    .name(format!("valkyrie-shard-{id}"))
                    .spawn(move || {
                        if let Some(core) = core {
                            core_affinity::set_for_current(core);
                        }
                        let service = factory(id);
                        match Shard::new(init, service) {
                            Ok(shard) => {
                                let _ = ready.send(Ok((id, shard.features())));
                                shard.run();
                            }
                            Err(e) => {
                                let _ = ready.send(Err(e));
                            }
                        }
                    })?,
            );
        }
        drop(ready_tx);
        let mut node = Node {
            threads,
            shutdown,
            state,
            wakers,
            listening: vec![true; endpoints.len()],
            requested: cfg.listen.clone(),
            endpoints,
            features: vec![crate::RingFeatures::default(); n],
            cfg: std::sync::Mutex::new(cfg),
            reloader: None,
        };
        for _ in 0..n {
            match ready_rx.recv() {
                Ok(Ok((id, f))) => node.features[id] = f,
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a shard thread died during start-up")),
            }
        }
        node.state.ready.store(true, Ordering::SeqCst);
        Ok(node)
    }

    /// The io_uring features each shard's ring was set up with (index = shard).
    pub fn ring_features(&self) -> &[crate::RingFeatures] {
        &self.features
    }

    /// The endpoints listened on, with the ports actually bound.
    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// The first endpoint as a URL (for clients in tests and examples).
    pub fn url(&self) -> String {
        self.endpoints[0].to_string()
    }

    /// Per-shard counters.
    pub fn shard_metrics(&self) -> &[Arc<ShardMetrics>] {
        &self.state.shards
    }

    /// Every shard's metrics, summed when encoded: a `prometheus-client` collector to
    /// register in a program's own registry (`Registry::register_collector`).
    pub fn metrics(&self) -> metrics::NodeMetrics {
        self.state.metrics()
    }

    /// All metrics in the Prometheus text format (what `GET /metrics` answers by default).
    pub fn metrics_text(&self) -> String {
        self.state.metrics_text()
    }

    /// Connections open across all shards.
    pub fn connections(&self) -> i64 {
        self.state.connections()
    }

    /// Call the service's [`Service::on_nudge`](crate::Service::on_nudge) on `shard` soon,
    /// waking it if it sleeps: how a program hands work to a service through a queue of its
    /// own (a channel the service drains in `on_nudge`). Cheap when the shard is busy: an
    /// atomic flag, and a wake-up only when it sleeps.
    pub fn nudge(&self, shard: usize) {
        if let Some(w) = self.wakers.get(shard) {
            w.nudge();
        }
    }

    /// Whether the node takes new connections: true once started, false from the moment it
    /// drains (what `/readyz` reports, so that a load balancer stops sending it traffic).
    pub fn is_ready(&self) -> bool {
        self.state.ready.load(Ordering::SeqCst)
    }

    /// Drain, for a rolling restart (what SIGTERM does): readiness turns false first, then
    /// each shard closes its listening sockets (new connections go to the other sockets of
    /// the `SO_REUSEPORT` group, such as a node started on the same port to replace this
    /// one; with `net.ipv4.tcp_migrate_req = 1` so do those already queued), stops its
    /// outbound links, and sends every connection CLOSE 502 "going away" after what is
    /// already queued for it (clients reconnect elsewhere at once and send again what was
    /// not answered); the node serves until its connections have closed or the shutdown
    /// timeout passes, then its shards stop ([`Node::join`]).
    pub fn drain(&self) {
        self.state.ready.store(false, Ordering::SeqCst);
        self.shutdown.store(true, Ordering::SeqCst);
        for w in self.wakers.iter() {
            w.wake(true);
        }
    }

    /// Begin a graceful shutdown: the same as [`Node::drain`].
    pub fn shutdown(&self) {
        self.state.ready.store(false, Ordering::SeqCst);
        self.shutdown.store(true, Ordering::SeqCst);
        for w in self.wakers.iter() {
            w.wake(true);
        }
    }

    /// Wait for every shard to stop (after [`Node::shutdown`]).
    pub fn join(mut self) {
        self.join_threads();
    }

    fn join_threads(&mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        for ep in &self.endpoints {
            if let Endpoint::Unix(p) = ep {
                let _ = std::fs::remove_file(p);
            }
        }
    }

    /// Run until SIGINT or SIGTERM, then drain ([`Node::drain`]) and return once the shards
    /// have stopped; SIGHUP meanwhile reloads ([`Node::reload`]).
    pub fn run_until_signal(self) -> io::Result<()> {
        let mut signals = signal_hook::iterator::Signals::new([
            signal_hook::consts::SIGINT,
            signal_hook::consts::SIGTERM,
            signal_hook::consts::SIGHUP,
        ])?;
        for sig in signals.forever() {
            if sig == signal_hook::consts::SIGHUP {
                tracing::info!("SIGHUP: reloading");
                let _ = self.reload();
                continue;
            }
            tracing::info!(signal = sig, "signal received: draining");
            break;
        }
        self.drain();
        self.join();
        Ok(())
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
            self.join_threads();
        }
    }
}
