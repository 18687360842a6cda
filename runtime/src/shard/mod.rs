//! One shard: a thread pinned to a core that owns an io_uring ring, its listening sockets, its
//! connections, timers, receive buffers and metrics. Nothing here is shared with other shards
//! except the mesh rings and the per-shard counters (written only by this shard).
//!
//! This file holds the loop and the routing of completions; each concern has a file of its
//! own: `accept.rs` (listeners, pause and resume, admission), `socket.rs` (receive modes,
//! flush, send completions), `tls.rs` (TLS under the frames), `shm.rs` (shared-memory
//! connections), `process.rs` (events into the service, security audit), `inbox.rs` (mesh
//! messages from other shards), `timers.rs` (the timer heap), `close.rs` (closing, removal,
//! shutdown). docs/RUNTIME.md has the map and the life of a connection.

mod accept;
mod close;
mod gateway;
mod http;
mod inbox;
mod linger;
mod link_conn;
mod link_probe;
mod link_steps;
pub(crate) mod links;
mod listener_ops;
mod output;
mod process;
pub(crate) mod quic;
mod quic_life;
mod quic_link;
mod quic_stream;
mod quic_udp;
mod shm;
mod shm_link;
mod socket;
mod status_feed;
mod timers;
mod tls;
mod upgrade;
mod websocket;

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use io_uring::{cqueue, opcode, types};
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::{ErrorCode, Frame, MessageType};

use crate::config::{BusyPoll, NodeConfig};
use crate::conn::send::SendPool;
use crate::conn::table::ConnTable;
use crate::mesh::{MeshMsg, MeshTx, Waker};
use crate::metrics::ShardMetrics;
use crate::service::{Ctx, CtxParts, Service, ServiceTimers};
use crate::uring::{BufRing, Op, Ring, RingFeatures, build_ring, ud, ud_parts};
use accept::Listeners;
use links::Links;
use timers::Timers;

/// What a shard needs to start.
pub(crate) struct ShardInit {
    pub(crate) id: usize,
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) listeners: Vec<(OwnedFd, u8, u8)>,
    pub(crate) mesh_rx: Vec<rtrb::Consumer<MeshMsg>>,
    pub(crate) mesh_tx: Vec<Option<rtrb::Producer<MeshMsg>>>,
    pub(crate) wakers: Arc<Vec<Waker>>,
    pub(crate) metrics: Arc<ShardMetrics>,
    /// The node's readiness and every shard's counters (for `/healthz`, `/readyz`,
    /// `/metrics`).
    pub(crate) node: Arc<crate::health::NodeState>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) table_size: u32,
    /// The shard's `quic://` listeners, and the key of the node's connection ids.
    pub(crate) quic: Vec<quic::QuicSetup>,
    pub(crate) cid_key: crate::quic::cid::CidKey,
}

/// Completions handled per batch taken from the ring.
const CQE_BATCH: usize = 256;

/// The eventfd read through which other shards wake this one.
struct Wake {
    /// Where the kernel writes the eventfd's counter (boxed: it must not move while armed).
    buf: Box<u64>,
    armed: bool,
}

pub(crate) struct Shard {
    id: usize,
    cfg: Arc<NodeConfig>,
    ring: Ring,
    features: RingFeatures,
    bufs: BufRing,
    listeners: Listeners,
    conns: ConnTable,
    timers: Timers,
    mesh_rx: Vec<rtrb::Consumer<MeshMsg>>,
    mesh: MeshTx,
    service: Box<dyn Service>,
    metrics: Arc<ShardMetrics>,
    shutdown: Arc<AtomicBool>,
    shutdown_deadline: Option<Instant>,
    wake: Wake,
    /// Set while the shard winds down: nothing is re-armed.
    stopping: bool,
    send_pool: SendPool,
    /// Completions being handled (reused: no allocation per batch).
    cqe_buf: Vec<cqueue::Entry>,
    unix_base: (Instant, u64),
    /// The ERROR 501 a connection refused at the limit gets.
    refused_frame: Bytes,
    /// Reused buffer for plaintext decrypted by TLS sessions.
    tls_plain: Vec<u8>,
    /// Scratch space: a WebSocket's received bytes unframed, and its frames before framing.
    ws_plain: Vec<u8>,
    ws_frames: bytes::BytesMut,
    /// Requests awaiting their answers (`valkyrie_message_latency_seconds`).
    latency: crate::metrics::LatencyTable,
    /// Spans of traced requests awaiting their answers.
    spans: crate::request_span::RequestSpans,
    now: Instant,
    /// Shared-memory connections that stopped at their input budget with more waiting.
    shm_more: Vec<(u32, u32)>,
    /// Most bytes a connection's multishot receive takes in one turn (0: no limit, which is
    /// where it ends up on kernels before 6.17).
    recv_budget: u32,
    /// Intrusion detection (when configured).
    guard: Option<crate::guard::Guard>,
    /// Outbound connections the service keeps up.
    links: Links,
    /// Timers the service set.
    service_timers: ServiceTimers,
    /// The node's readiness and every shard's counters (the probes and `/metrics`).
    node: Arc<crate::health::NodeState>,
    /// The HTTP routes the service took.
    routes: Vec<crate::service::Route>,
    /// Connections following the status feed.
    followers: status_feed::Followers,
    /// When the loop turn is next stamped into the metrics for `/healthz`.
    next_stamp: Instant,
    /// QUIC listeners, their endpoints and connections.
    quic: quic::Quic,
}

impl Shard {
    pub(crate) fn new(init: ShardInit, service: Box<dyn Service>) -> std::io::Result<Shard> {
        let (ring, mut features) = build_ring(init.cfg.ring_entries)?;
        ring.submitter().register_files_sparse(init.table_size)?;
        features.direct_descriptors = init.table_size;
        let bufs = BufRing::new(
            &ring,
            0,
            init.cfg.recv_buffers as usize * init.cfg.recv_buffer_size as usize,
            init.cfg.recv_buffer_size,
        )?;
        let now = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut refused = Vec::new();
        Frame::new(
            MessageType::Error,
            0,
            ErrorPayload {
                code: ErrorCode::OVERLOADED.0,
                message: "connection limit reached".into(),
            }
            .to_bytes(),
        )
        .with_timestamp(unix as u32)
        .encode(&mut refused);
        tracing::info!(
            shard = init.id,
            single_issuer = features.single_issuer,
            defer_taskrun = features.defer_taskrun,
            coop_taskrun = features.coop_taskrun,
            direct_descriptors = features.direct_descriptors,
            recv_buffer_bytes = bufs.memory(),
            recv_buffer_size = bufs.buf_size(),
            recv_buffers_incremental = bufs.incremental(),
            busy_poll = ?init.cfg.busy_poll,
            "shard ring ready (multishot accept into direct descriptors, multishot recv with a provided buffer ring)"
        );
        let mut shard = Shard {
            quic: quic::Quic::new(init.id, init.quic, init.cid_key),
            id: init.id,
            ring: Ring::new(ring),
            features,
            bufs,
            listeners: Listeners::new(init.listeners, init.table_size),
            conns: ConnTable::with_capacity(init.table_size as usize),
            timers: Timers::new(now, init.table_size as usize),
            mesh_rx: init.mesh_rx,
            mesh: MeshTx::new(init.mesh_tx, init.wakers),
            service,
            metrics: init.metrics,
            shutdown: init.shutdown,
            shutdown_deadline: None,
            wake: Wake {
                buf: Box::new(0),
                armed: false,
            },
            stopping: false,
            send_pool: SendPool::default(),
            cqe_buf: Vec::with_capacity(CQE_BATCH),
            unix_base: (now, unix),
            refused_frame: Bytes::from(refused),
            tls_plain: Vec::new(),
            ws_plain: Vec::new(),
            ws_frames: bytes::BytesMut::new(),
            latency: crate::metrics::LatencyTable::new(),
            spans: crate::request_span::RequestSpans::new(init.cfg.trace_hook.0.clone()),
            now,
            shm_more: Vec::new(),
            recv_budget: init.cfg.recv_budget,
            guard: init.cfg.guard.clone().map(crate::guard::Guard::new),
            service_timers: ServiceTimers::default(),
            node: init.node,
            routes: Vec::new(),
            followers: status_feed::Followers::default(),
            next_stamp: now,
            links: Links::new(
                unix ^ (init.id as u64) << 32 ^ u64::from(now.elapsed().subsec_nanos()),
            ),
            cfg: init.cfg,
        };
        shard.start_quic()?;
        Ok(shard)
    }

    /// The ring features in use.
    pub(crate) fn features(&self) -> RingFeatures {
        self.features
    }

    pub(crate) fn run(mut self) {
        self.arm_accepts();
        self.arm_wake();
        {
            let (service, mut ctx) = self.ctx();
            service.on_start(&mut ctx);
        }
        let mut last_work = Instant::now();
        loop {
            self.now = Instant::now();
            self.stamp_turn();
            let mut work = self.drain_mesh();
            work |= self.take_reload();
            work |= self.take_listener_commands();
            work |= self.take_nudge();
            work |= self.run_timers();
            work |= self.run_link_timers(self.now);
            work |= self.run_service_timers();
            work |= self.run_quic_timers();
            // QUIC connections left to drive by the last turn's bounded passes.
            work |= self.drive_quic();
            work |= self.feed_followers();
            work |= self.run_links();
            work |= self.drain_shm_more();
            work |= self.ring.push_backlog();
            if self.shutdown.load(Ordering::Relaxed) && self.shutdown_deadline.is_none() {
                self.begin_shutdown();
                work = true;
            }
            if let Some(d) = self.shutdown_deadline
                && (self.conns.is_empty() || self.now >= d)
            {
                break;
            }
            // Submit what is queued and collect completions.
            let spin = match self.cfg.busy_poll {
                BusyPoll::Off => false,
                BusyPoll::Always => true,
                BusyPoll::Adaptive(window) => self.now.duration_since(last_work) < window,
            };
            if spin {
                // Busy-poll: enter the kernel only when there is something to submit or the
                // kernel flags deferred completions to run; otherwise just look at the CQ.
                if (self.ring.has_pending() || self.ring.taskrun())
                    && let Err(e) = self.ring.submit()
                {
                    tracing::warn!(shard = self.id, error = %e, "submit");
                }
            } else if work {
                if let Err(e) = self.ring.submit() {
                    tracing::warn!(shard = self.id, error = %e, "submit");
                }
            } else {
                self.sleep();
                // Whatever woke us happened now, not when the loop turn began.
                self.now = Instant::now();
            }
            if self.reap() > 0 || work {
                last_work = Instant::now();
            } else if spin {
                std::hint::spin_loop();
            }
            self.process_dirty();
            // QUIC connections that received or were written to, then what their streams
            // gave the Valkyrie connections (bounded: each pass handles what the last left).
            for _ in 0..4 {
                if !self.drive_quic() {
                    break;
                }
                self.process_dirty();
            }
            // Links the service made or let go while it was called this turn.
            self.run_links();
        }
        self.finish_shutdown();
    }

    fn arm_wake(&mut self) {
        if self.wake.armed {
            return;
        }
        let fd = self.mesh.waker(self.id).eventfd.as_raw_fd();
        let buf: *mut u64 = &mut *self.wake.buf;
        let e = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(ud(Op::Wake, 0, 0));
        self.ring.push(e);
        self.wake.armed = true;
    }

    fn sleep(&mut self) {
        let waker = self.mesh.waker(self.id);
        waker.sleeping.store(true, Ordering::SeqCst);
        // Look once more after announcing sleep: a producer that pushed before seeing the flag
        // must not be missed.
        let pending = self.mesh_rx.iter().any(|c| !c.is_empty())
            || waker.nudged.load(Ordering::SeqCst)
            || waker.commanded.load(Ordering::SeqCst)
            || (self.shutdown.load(Ordering::SeqCst) && self.shutdown_deadline.is_none());
        if pending {
            // Still enter the kernel (without waiting): with DEFER_TASKRUN, completions are
            // only posted inside io_uring_enter.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(shard = self.id, error = %e, "submit");
            }
        } else {
            let next = [
                self.timers.next(),
                self.links.next_timer().map(|t| self.timers.at(t)),
                self.service_timers.next().map(|t| self.timers.at(t)),
                self.followers.next(),
                self.quic.next_timer(),
            ]
            .into_iter()
            .flatten()
            .min();
            // No wake-up without a deadline: `/healthz` knows a sleeping shard from a stuck
            // one by its `sleeping` flag (a capped wait here cost every sleep a kernel timer:
            // blocking-mode p99 went from ~97 to ~120 us).
            let wait = next.map(|t| t.saturating_duration_since(Instant::now()));
            if let Err(e) = self.ring.submit_and_wait(wait)
                && e.raw_os_error() != Some(libc::ETIME)
                && e.raw_os_error() != Some(libc::EINTR)
            {
                tracing::warn!(shard = self.id, error = %e, "wait");
            }
        }
        self.mesh
            .waker(self.id)
            .sleeping
            .store(false, Ordering::SeqCst);
    }

    /// Handle every completion in the ring (in batches). Returns how many.
    fn reap(&mut self) -> usize {
        let mut n = 0;
        let mut batch = std::mem::take(&mut self.cqe_buf);
        // Each batch handles what is in the queue; completions posted while handling are
        // taken by the next. The queue holds at most its size, so this ends.
        loop {
            batch.clear();
            self.ring.completions(&mut batch, CQE_BATCH);
            if batch.is_empty() {
                self.cqe_buf = batch;
                return n;
            }
            n += batch.len();
            for cqe in batch.drain(..) {
                self.complete(cqe);
            }
        }
    }

    fn complete(&mut self, cqe: cqueue::Entry) {
        let (op, generation, slot) = ud_parts(cqe.user_data());
        let res = cqe.result();
        let flags = cqe.flags();
        match op {
            Ok(Op::Accept) => self.on_accept(slot as usize, res, flags),
            Ok(Op::Recv) => self.on_recv(slot, generation, res, flags),
            Ok(Op::Poll) => self.on_poll(slot, generation, res, flags),
            Ok(Op::Send) => self.on_send(slot, generation, res),
            Ok(Op::Close) => self.on_closed(slot, generation),
            Ok(Op::ShmAccept) => self.on_shm_accept(slot as usize, res, flags),
            Ok(op @ (Op::ShmRx | Op::ShmTx | Op::ShmHup)) => self.on_shm_wait(slot, generation, op),
            Ok(Op::Wake) => {
                self.wake.armed = false;
                if !self.stopping {
                    self.arm_wake();
                }
            }
            Ok(Op::Connect) => self.on_link_connect(slot, generation, res),
            Ok(Op::Install) => self.on_link_install(slot, generation, res),
            Ok(Op::ShmOffer) => self.on_link_shm_offer(slot, generation, res),
            Ok(Op::Probe) => self.on_probe(slot, generation, res),
            Ok(Op::Shutdown) => self.on_shutdown(slot, generation),
            Ok(Op::UdpRecv) => self.on_udp_recv(slot as u8, res, flags),
            Ok(Op::UdpSend) => self.on_udp_send(slot, res),
            Ok(Op::Upgrade) => self.on_upgrade_poll(slot, generation),
            Ok(Op::Cancel) => {}
            Err(unknown) => {
                debug_assert!(false, "a completion for unknown op {unknown}");
            }
        }
    }

    /// Take new material for new connections (`Node::reload`): the protocol configuration
    /// (keys, token secrets, policy), TLS (certificates) and the trusted list. Established
    /// connections keep what they authenticated with (each holds its own configuration).
    fn take_reload(&mut self) -> bool {
        let Some(cfg) = self.mesh.waker(self.id).take_reload() else {
            return false;
        };
        if let (Some(g), Some(gc)) = (self.guard.as_mut(), cfg.guard.as_ref()) {
            g.set_trusted(gc.trusted.clone());
        }
        self.cfg = cfg;
        tracing::debug!(shard = self.id, "new connections use the reloaded material");
        true
    }

    /// Call the service's `on_timer` for each of its timers due now.
    fn run_service_timers(&mut self) -> bool {
        let now = self.timers.tick(self.now);
        let mut any = false;
        // At most the timers pending when the turn began: one that a timer sets for now
        // runs at the next turn, so a service cannot keep the shard here.
        for _ in 0..self.service_timers.len() {
            let Some(token) = self.service_timers.pop_due(now) else {
                break;
            };
            any = true;
            let (service, mut ctx) = self.ctx();
            service.on_timer(&mut ctx, token);
        }
        any
    }

    /// Call the service's `on_nudge` if something outside the node nudged this shard.
    fn take_nudge(&mut self) -> bool {
        if !self.mesh.waker(self.id).take_nudge() {
            return false;
        }
        let (service, mut ctx) = self.ctx();
        service.on_nudge(&mut ctx);
        true
    }

    /// The header timestamp clock: Unix seconds at this turn.
    fn unix_now(&self) -> u64 {
        self.unix_base.1
            + self
                .now
                .saturating_duration_since(self.unix_base.0)
                .as_secs()
    }

    fn mark(&mut self, slot: u32) {
        self.conns.mark(slot);
    }

    /// The context a service call gets: a split borrow of this shard's parts.
    fn ctx(&mut self) -> (&mut dyn Service, Ctx<'_>) {
        (
            &mut *self.service,
            Ctx::new(CtxParts {
                shard: self.id,
                now: self.now,
                epoch: self.timers.epoch(),
                conns: &mut self.conns,
                links: &mut self.links,
                timers: &mut self.service_timers,
                mesh: &mut self.mesh,
                metrics: &self.metrics,
                routes: &mut self.routes,
            }),
        )
    }

    /// Microseconds from the shard's start to now, wrapping (what a connection's
    /// `opened_us` holds; differences of two are right up to 71 minutes).
    pub(super) fn now_us(&self) -> u32 {
        micros_since(self.timers.epoch(), self.now)
    }

    /// Stamp this loop turn for `/healthz`: one comparison a turn, one relaxed store every
    /// 100 ms at most (`/healthz` asks for a turn within the last second).
    #[inline]
    fn stamp_turn(&mut self) {
        if self.now >= self.next_stamp {
            self.next_stamp = self.now + std::time::Duration::from_millis(100);
            self.metrics
                .last_turn_ms
                .store(self.node.ms(self.now), std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Microseconds from `epoch` to `now`, wrapping (a shard's `now_us`, spelled as a function of
/// its parts for code that holds a connection borrowed from the shard).
pub(super) fn micros_since(epoch: std::time::Instant, now: std::time::Instant) -> u32 {
    now.saturating_duration_since(epoch).as_micros() as u32
}
