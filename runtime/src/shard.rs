//! One shard: a thread pinned to a core that owns an io_uring ring, its listening sockets, its
//! connections, timers, receive buffers and metrics. Nothing here is shared with other shards
//! except the mesh rings and the per-shard counters (written only by this shard).

use std::any::Any;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{
    CloseReason, Connection, ErrorCode, Event, Frame, HEADER_LEN, Header, MessageType, PeerInfo,
    SendError, SendOptions, Side,
};

use valkyrie_protocol::Transmit;
use valkyrie_protocol::security::mtls::TlsSession;
use valkyrie_shm::{ShmError, ShmStream};

use crate::mesh::{MeshMsg, Waker};
use crate::metrics::ShardMetrics;
use crate::node::{BusyPoll, NodeConfig, RecvMode};
use crate::service::{ConnRef, Service};
use crate::uring::{BufRing, Op, RingFeatures, build_ring, ud, ud_parts};

/// Why a [`Ctx`] operation on a connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The connection has closed (the reference is stale).
    #[error("connection is gone")]
    Gone,
    /// The protocol refused the send (not established, closing, stream rules, back-pressure).
    #[error(transparent)]
    Send(#[from] SendError),
    /// The mesh ring to the owning shard is full: back-pressure, retry later.
    #[error("mesh ring to shard {0} is full")]
    MeshFull(usize),
    /// The operation needs the connection's own shard.
    #[error("connection belongs to shard {0}")]
    NotLocal(usize),
}

/// One accepted connection.
pub(crate) struct Conn {
    fixed: u32,
    generation: u32,
    transport: u8,
    proto: Connection,
    /// Bytes being sent and how many went; the buffer does not move while a send is in
    /// flight (boxed and pooled by the shard: an idle connection pays 8 bytes for it).
    out: Option<Box<Outgoing>>,
    sending: bool,
    send_started: Option<Tick>,
    /// Refused at the connection limit: only the ERROR 501 frame is sent.
    refused: bool,
    closing: bool,
    connected: bool,
    timer: Option<Tick>,
    dirty: bool,
    /// Just finished its handshake: release the handshake's buffers once flushed.
    fresh: bool,
    /// The direct descriptor is closed but a send is still in flight: the slot (and the send
    /// buffer the kernel may still read) is released when that send completes.
    fd_closed: bool,
    /// A shared-memory connection: its stream and wait state (None for sockets).
    shm: Option<Box<ShmConn>>,
    /// The peer's address (TCP, when intrusion detection is on; boxed, as most nodes run
    /// without it and each connection then pays 8 bytes, not 24).
    ip: Option<Box<IpAddr>>,
    /// TLS under the frames (TCP listeners of a node configured with `tls`).
    tls: Option<Box<TlsSession>>,
}

/// A shard time: nanoseconds since the shard's epoch, plus one (8 bytes where an `Instant` takes
/// 16, and `Option<Tick>` still 8).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tick(std::num::NonZeroU64);

impl Tick {
    fn of(epoch: Instant, t: Instant) -> Tick {
        let ns = t.saturating_duration_since(epoch).as_nanos();
        Tick(std::num::NonZeroU64::MIN.saturating_add(ns.min(u128::from(u64::MAX - 1)) as u64))
    }

    fn at(self, epoch: Instant) -> Instant {
        epoch + Duration::from_nanos(self.0.get() - 1)
    }
}

/// A send buffer and how much of it the kernel has taken.
struct Outgoing {
    buf: BytesMut,
    sent: usize,
}

impl Outgoing {
    /// A buffer from the shard's pool, or a new one when the pool is empty.
    #[allow(clippy::vec_box)] // the pool holds the boxes connections hold
    fn take(pool: &mut Vec<Box<Outgoing>>) -> Box<Outgoing> {
        pool.pop().unwrap_or_else(|| {
            Box::new(Outgoing {
                buf: BytesMut::with_capacity(SEND_BUF),
                sent: 0,
            })
        })
    }
}

/// The transport index of shared-memory listeners and connections (see `metrics::TRANSPORTS`).
const SHM: u8 = 2;
/// `FUTEX2_SIZE_U32` without `FUTEX2_PRIVATE`: the words are shared with another process.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// Bytes of input a shared-memory connection hands to the protocol per turn: the rest waits
/// for the next loop iteration, so one busy peer cannot starve the others.
const SHM_INPUT_BUDGET: usize = 256 * 1024;

/// The shard-side state of a shared-memory connection.
struct ShmConn {
    stream: ShmStream,
    /// A frame taken from the protocol that did not fit the send ring yet, and how much of it
    /// was written (at most one frame per connection waits here).
    pending: Option<(Transmit, usize)>,
    /// Operations armed in the ring for this connection (futex waits, hang-up poll); the
    /// mapping is only released once none is left.
    rx_armed: bool,
    tx_armed: bool,
    hup_armed: bool,
}

impl ShmConn {
    fn in_flight(&self) -> bool {
        self.rx_armed || self.tx_armed || self.hup_armed
    }
}

struct Listener {
    fd: OwnedFd,
    transport: u8,
    armed: bool,
    /// Peer address of the single-shot accept used when intrusion detection is on (the
    /// kernel writes it; it does not move while the accept is armed).
    addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

/// What a shard needs to start.
pub(crate) struct ShardInit {
    pub(crate) id: usize,
    pub(crate) cfg: Arc<NodeConfig>,
    pub(crate) listeners: Vec<(OwnedFd, u8)>,
    pub(crate) mesh_rx: Vec<rtrb::Consumer<MeshMsg>>,
    pub(crate) mesh_tx: Vec<Option<rtrb::Producer<MeshMsg>>>,
    pub(crate) wakers: Arc<Vec<Waker>>,
    pub(crate) metrics: Arc<ShardMetrics>,
    pub(crate) shutdown: Arc<AtomicBool>,
    pub(crate) table_size: u32,
}

/// An io_uring FUTEX_WAIT on a shared-memory ring's word (process-shared, 32-bit), completing
/// when the peer wakes it.
fn futex_wait(word: valkyrie_shm::FutexWord, user_data: u64) -> squeue::Entry {
    opcode::FutexWait::new(
        word.as_ptr(),
        u64::from(valkyrie_shm::FutexWord::EXPECTED),
        u64::from(u32::MAX),
        FUTEX2_SIZE_U32,
    )
    .build()
    .user_data(user_data)
}

/// The IP address in a sockaddr written by accept.
fn peer_ip(sa: &libc::sockaddr_storage) -> Option<IpAddr> {
    match sa.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the kernel wrote a sockaddr_in for AF_INET.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((sa as *const libc::sockaddr_storage).cast()) };
            Some(IpAddr::from(a.sin_addr.s_addr.to_ne_bytes()))
        }
        libc::AF_INET6 => {
            // SAFETY: the kernel wrote a sockaddr_in6 for AF_INET6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((sa as *const libc::sockaddr_storage).cast()) };
            Some(IpAddr::from(a.sin6_addr.s6_addr))
        }
        _ => None,
    }
}

/// Queue `slot` for processing once (its events, sends and timer) at the end of this round.
fn mark_dirty(conns: &mut Slab<Conn>, dirty: &mut Vec<u32>, slot: u32) {
    if let Some(c) = conns.get_mut(slot as usize)
        && !c.dirty
    {
        c.dirty = true;
        dirty.push(slot);
    }
}

/// Access to the shard for a service: send, respond, route, close.
pub struct Ctx<'a> {
    shard: usize,
    nshards: usize,
    now: Instant,
    conns: &'a mut Slab<Conn>,
    dirty: &'a mut Vec<u32>,
    mesh_tx: &'a mut [Option<rtrb::Producer<MeshMsg>>],
    wakers: &'a [Waker],
    metrics: &'a ShardMetrics,
}

impl Ctx<'_> {
    /// This shard's index.
    pub fn shard(&self) -> usize {
        self.shard
    }

    /// How many shards the node runs.
    pub fn shards(&self) -> usize {
        self.nshards
    }

    /// The time this batch of work started.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// Connections open on this shard.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Every established connection of this shard.
    pub fn local_connections(&self) -> Vec<ConnRef> {
        let shard = self.shard as u16;
        self.conns
            .iter()
            .filter(|(_, c)| c.connected && !c.closing)
            .map(|(slot, c)| ConnRef {
                shard,
                slot: slot as u32,
                generation: c.generation,
            })
            .collect()
    }

    fn local(&mut self, conn: ConnRef) -> Result<&mut Conn, RouteError> {
        if conn.shard as usize != self.shard {
            return Err(RouteError::NotLocal(conn.shard as usize));
        }
        match self.conns.get_mut(conn.slot as usize) {
            Some(c) if c.generation == conn.generation && !c.refused => Ok(c),
            _ => Err(RouteError::Gone),
        }
    }

    fn mark(&mut self, slot: u32) {
        mark_dirty(self.conns, self.dirty, slot);
    }

    /// The agreed parameters of a connection of this shard.
    pub fn peer(&mut self, conn: ConnRef) -> Option<PeerInfo> {
        self.local(conn).ok().and_then(|c| c.proto.peer().cloned())
    }

    /// Send a frame on `conn`, on this shard or another (crossing the mesh once).
    pub fn send(
        &mut self,
        conn: ConnRef,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    ) -> Result<(), RouteError> {
        if conn.shard as usize != self.shard {
            return self.route(
                conn.shard as usize,
                MeshMsg::Send {
                    to: conn,
                    stream_id,
                    msg_type,
                    payload,
                    opts,
                },
            );
        }
        let c = self.local(conn)?;
        c.proto.send(stream_id, msg_type, payload, opts)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Answer `request` on `conn` (same stream and correlation id, RESPONSE set).
    pub fn respond(
        &mut self,
        conn: ConnRef,
        request: &Header,
        msg_type: MessageType,
        payload: Bytes,
    ) -> Result<(), RouteError> {
        let opts = SendOptions {
            flags: valkyrie_protocol::Flags::RESPONSE,
            correlation_id: request.correlation_id,
            priority: request.priority,
            ..SendOptions::default()
        };
        self.send(conn, request.stream_id, msg_type, payload, opts)
    }

    /// Report a non-fatal error on a connection of this shard.
    pub fn send_error(
        &mut self,
        conn: ConnRef,
        code: ErrorCode,
        message: &str,
        stream_id: u32,
        correlation_id: u32,
    ) -> Result<(), RouteError> {
        let c = self.local(conn)?;
        c.proto
            .send_error(code, message, stream_id, correlation_id)?;
        self.mark(conn.slot);
        Ok(())
    }

    /// Open a stream on a connection of this shard.
    pub fn open_stream(
        &mut self,
        conn: ConnRef,
        class: StreamClass,
        open: Option<valkyrie_protocol::message::StreamOpen>,
    ) -> Result<u32, RouteError> {
        let c = self.local(conn)?;
        let id = c.proto.open_stream(class, open)?;
        self.mark(conn.slot);
        Ok(id)
    }

    /// Close `conn` gracefully (CLOSE after what is queued), wherever it lives.
    pub fn close(&mut self, conn: ConnRef, code: u16, reason: &str) -> Result<(), RouteError> {
        if conn.shard as usize != self.shard {
            return self.route(
                conn.shard as usize,
                MeshMsg::Close {
                    to: conn,
                    code,
                    reason: reason.to_owned(),
                },
            );
        }
        let c = self.local(conn)?;
        c.proto.close(code, reason);
        self.mark(conn.slot);
        Ok(())
    }

    /// Hand `msg` to the service instance on `shard` ([`Service::on_message`]).
    pub fn send_to_shard(
        &mut self,
        shard: usize,
        msg: Box<dyn Any + Send>,
    ) -> Result<(), RouteError> {
        if shard == self.shard || shard >= self.nshards {
            return Err(RouteError::NotLocal(shard));
        }
        let from = self.shard;
        self.route(shard, MeshMsg::User { from, msg })
    }

    fn route(&mut self, shard: usize, msg: MeshMsg) -> Result<(), RouteError> {
        let Some(Some(p)) = self.mesh_tx.get_mut(shard) else {
            return Err(RouteError::NotLocal(shard));
        };
        if p.push(msg).is_err() {
            ShardMetrics::add(&self.metrics.mesh_full, 1);
            return Err(RouteError::MeshFull(shard));
        }
        self.wakers[shard].wake(false);
        Ok(())
    }
}

pub(crate) struct Shard {
    id: usize,
    cfg: Arc<NodeConfig>,
    ring: IoUring,
    features: RingFeatures,
    bufs: BufRing,
    listeners: Vec<Listener>,
    conns: Slab<Conn>,
    next_generation: u32,
    dirty: Vec<u32>,
    timers: BinaryHeap<Reverse<(Tick, u32, u32)>>,
    /// The instant shard times count from.
    epoch: Instant,
    mesh_rx: Vec<rtrb::Consumer<MeshMsg>>,
    mesh_tx: Vec<Option<rtrb::Producer<MeshMsg>>>,
    wakers: Arc<Vec<Waker>>,
    service: Box<dyn Service>,
    metrics: Arc<ShardMetrics>,
    shutdown: Arc<AtomicBool>,
    shutdown_deadline: Option<Instant>,
    wake_buf: Box<u64>,
    wake_armed: bool,
    /// Set while the shard winds down: nothing is re-armed.
    stopping: bool,
    table_size: u32,
    table_used: u32,
    accept_paused: bool,
    // Boxes on purpose: a connection holds its buffer as `Box<Outgoing>` (8 bytes), and the
    // pool hands the same boxes back without reallocating them.
    #[allow(clippy::vec_box)]
    send_pool: Vec<Box<Outgoing>>,
    /// Completions being handled (reused: no allocation per batch).
    cqe_buf: Vec<cqueue::Entry>,
    unix_base: (Instant, u64),
    refused_frame: Bytes,
    /// Reused buffer for plaintext decrypted by TLS sessions.
    tls_plain: Vec<u8>,
    now: Instant,
    /// Shared-memory connections that stopped at their input budget with more waiting.
    shm_more: Vec<(u32, u32)>,
    /// Intrusion detection (when configured).
    guard: Option<crate::guard::Guard>,
}

/// Send buffers a shard keeps for reuse: enough for the sends one loop iteration usually has
/// in flight; a burst beyond it allocates, and what it allocated is freed afterwards (so many
/// connections answering at once do not leave megabytes parked in the pool).
const SEND_POOL: usize = 64;
/// A new send buffer's capacity (it grows up to `send_batch` when more is queued). Measured
/// against 4 KiB: 4 KiB buffers left the idle-memory scenario at 828 B of RSS per connection,
/// 16 KiB ones at 436 B (how glibc places a burst of small chunks; not traced further).
const SEND_BUF: usize = 16 * 1024;

impl Shard {
    pub(crate) fn new(init: ShardInit, service: Box<dyn Service>) -> std::io::Result<Shard> {
        let (ring, mut features) = build_ring(init.cfg.ring_entries)?;
        ring.submitter().register_files_sparse(init.table_size)?;
        features.direct_descriptors = init.table_size;
        let bufs = BufRing::new(&ring, 0, init.cfg.recv_buffers, init.cfg.recv_buffer_size)?;
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
            busy_poll = ?init.cfg.busy_poll,
            "shard ring ready (multishot accept into direct descriptors, multishot recv with a provided buffer ring)"
        );
        Ok(Shard {
            id: init.id,
            ring,
            features,
            bufs,
            listeners: init
                .listeners
                .into_iter()
                .map(|(fd, transport)| Listener {
                    fd,
                    transport,
                    armed: false,
                    // SAFETY: sockaddr_storage is plain old data; all-zero is valid.
                    addr: Box::new((unsafe { std::mem::zeroed() }, 0)),
                })
                .collect(),
            // The whole table is reserved at start (one slot per direct descriptor): the pages
            // become resident only as slots are used, and the table never grows by copying
            // every connection on the shard's thread while it accepts.
            conns: Slab::with_capacity(init.table_size as usize),
            next_generation: 1,
            dirty: Vec::new(),
            // At most about one live timer per connection (stale ones are dropped as they
            // come up): reserved with the connection table.
            timers: BinaryHeap::with_capacity(init.table_size as usize),
            epoch: now,
            mesh_rx: init.mesh_rx,
            mesh_tx: init.mesh_tx,
            wakers: init.wakers,
            service,
            metrics: init.metrics,
            shutdown: init.shutdown,
            shutdown_deadline: None,
            wake_buf: Box::new(0),
            wake_armed: false,
            stopping: false,
            table_size: init.table_size,
            table_used: 0,
            accept_paused: false,
            send_pool: Vec::new(),
            cqe_buf: Vec::with_capacity(256),
            unix_base: (now, unix),
            refused_frame: Bytes::from(refused),
            tls_plain: Vec::new(),
            now,
            shm_more: Vec::new(),
            guard: init.cfg.guard.map(crate::guard::Guard::new),
            cfg: init.cfg,
        })
    }

    /// The ring features in use.
    pub(crate) fn features(&self) -> RingFeatures {
        self.features
    }

    fn push(&mut self, entry: squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to (send buffers, the wake buffer) is owned by
            // the shard and stays in place until its completion is reaped.
            if unsafe { self.ring.submission().push(&entry) }.is_ok() {
                return;
            }
            if let Err(e) = self.ring.submit() {
                tracing::warn!(shard = self.id, error = %e, "submit while the SQ was full");
            }
        }
    }

    fn arm_accepts(&mut self) {
        for i in 0..self.listeners.len() {
            if !self.listeners[i].armed {
                let fd = self.listeners[i].fd.as_raw_fd();
                let e = if self.listeners[i].transport == SHM {
                    // A shared-memory connection needs its segment sent over the accepted
                    // socket: wait for readiness and accept in the loop.
                    opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                        .multi(true)
                        .build()
                        .user_data(ud(Op::ShmAccept, i as u32, 0))
                } else if self.guard.is_some() && self.listeners[i].transport == 0 {
                    // Intrusion detection needs each peer's address: one accept at a time,
                    // with an address buffer, still into the direct-descriptor table.
                    let l = &mut self.listeners[i];
                    l.addr.1 = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                    let (sa, len) = (
                        &mut l.addr.0 as *mut libc::sockaddr_storage,
                        &mut l.addr.1 as *mut libc::socklen_t,
                    );
                    opcode::Accept::new(types::Fd(fd), sa.cast(), len)
                        .file_index(Some(types::DestinationSlot::auto_target()))
                        .build()
                        .user_data(ud(Op::Accept, i as u32, 0))
                } else {
                    opcode::AcceptMulti::new(types::Fd(fd))
                        .allocate_file_index(true)
                        .build()
                        .user_data(ud(Op::Accept, i as u32, 0))
                };
                self.push(e);
                self.listeners[i].armed = true;
            }
        }
    }

    fn pause_accepts(&mut self) {
        if self.accept_paused {
            return;
        }
        self.accept_paused = true;
        ShardMetrics::add(&self.metrics.accept_paused, 1);
        for i in 0..self.listeners.len() {
            if self.listeners[i].armed {
                let op = if self.listeners[i].transport == SHM {
                    Op::ShmAccept
                } else {
                    Op::Accept
                };
                let e = opcode::AsyncCancel::new(ud(op, i as u32, 0))
                    .build()
                    .user_data(ud(Op::Cancel, 0, 0));
                self.push(e);
            }
        }
    }

    fn arm_wake(&mut self) {
        if self.wake_armed {
            return;
        }
        let fd = self.wakers[self.id].eventfd.as_raw_fd();
        let buf: *mut u64 = &mut *self.wake_buf;
        let e = opcode::Read::new(types::Fd(fd), buf.cast(), 8)
            .build()
            .user_data(ud(Op::Wake, 0, 0));
        self.push(e);
        self.wake_armed = true;
    }

    /// Start waiting for data: a multishot receive, or a multishot poll.
    fn arm_recv(&mut self, slot: u32) {
        let Some(c) = self.conns.get(slot as usize) else {
            return;
        };
        let e = match self.cfg.recv_mode {
            RecvMode::Multishot => opcode::RecvMulti::new(types::Fixed(c.fixed), self.bufs.bgid)
                .build()
                .user_data(ud(Op::Recv, slot, c.generation)),
            RecvMode::PollThenRecv => {
                opcode::PollAdd::new(types::Fixed(c.fixed), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(ud(Op::Poll, slot, c.generation))
            }
        };
        self.push(e);
    }

    /// One receive into a provided buffer (poll-then-receive mode).
    fn recv_once(&mut self, slot: u32) {
        let Some(c) = self.conns.get(slot as usize) else {
            return;
        };
        let e = opcode::Recv::new(
            types::Fixed(c.fixed),
            std::ptr::null_mut(),
            self.cfg.recv_buffer_size,
        )
        .buf_group(self.bufs.bgid)
        .flags(libc::MSG_DONTWAIT)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(ud(Op::Recv, slot, c.generation));
        self.push(e);
    }

    fn on_poll(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let live = matches!(self.conns.get(slot as usize), Some(c) if c.generation == generation && !c.closing);
        if !live {
            return;
        }
        if res < 0 {
            if res != -libc::ECANCELED {
                self.conns[slot as usize].proto.handle_eof(self.now);
                self.mark(slot);
            }
            return;
        }
        self.recv_once(slot);
        if !cqueue::more(flags) {
            self.arm_recv(slot);
        }
    }

    pub(crate) fn run(mut self) {
        self.arm_accepts();
        self.arm_wake();
        let mut last_work = Instant::now();
        loop {
            self.now = Instant::now();
            let mut work = self.drain_mesh();
            work |= self.run_timers();
            work |= self.drain_shm_more();
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
            let sq_pending = !self.ring.submission().is_empty();
            if spin {
                // Busy-poll: enter the kernel only when there is something to submit or the
                // kernel flags deferred completions to run; otherwise just look at the CQ.
                if (sq_pending || self.ring.submission().taskrun())
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
        }
        self.finish_shutdown();
    }

    /// Continue the shared-memory connections that had more input than one turn's budget.
    fn drain_shm_more(&mut self) -> bool {
        if self.shm_more.is_empty() {
            return false;
        }
        let more = std::mem::take(&mut self.shm_more);
        for &(slot, generation) in &more {
            if self
                .conns
                .get(slot as usize)
                .is_some_and(|c| c.generation == generation)
            {
                self.shm_recv(slot);
            }
        }
        true
    }

    fn sleep(&mut self) {
        let waker = &self.wakers[self.id];
        waker.sleeping.store(true, Ordering::SeqCst);
        // Look once more after announcing sleep: a producer that pushed before seeing the flag
        // must not be missed.
        let pending = self.mesh_rx.iter().any(|c| !c.is_empty())
            || (self.shutdown.load(Ordering::SeqCst) && self.shutdown_deadline.is_none());
        if pending {
            // Still enter the kernel (without waiting): with DEFER_TASKRUN, completions are
            // only posted inside io_uring_enter.
            if let Err(e) = self.ring.submit() {
                tracing::warn!(shard = self.id, error = %e, "submit");
            }
        } else {
            let next = self
                .timers
                .peek()
                .map(|Reverse((t, _, _))| t.at(self.epoch));
            let wait = next.map(|t| t.saturating_duration_since(Instant::now()));
            let res = match wait {
                Some(d) => {
                    let ts = types::Timespec::new()
                        .sec(d.as_secs())
                        .nsec(d.subsec_nanos().max(1000));
                    let args = types::SubmitArgs::new().timespec(&ts);
                    self.ring.submitter().submit_with_args(1, &args)
                }
                None => self.ring.submitter().submit_and_wait(1),
            };
            if let Err(e) = res
                && e.raw_os_error() != Some(libc::ETIME)
                && e.raw_os_error() != Some(libc::EINTR)
            {
                tracing::warn!(shard = self.id, error = %e, "wait");
            }
        }
        waker.sleeping.store(false, Ordering::SeqCst);
    }

    fn reap(&mut self) -> usize {
        let mut n = 0;
        let mut batch = std::mem::take(&mut self.cqe_buf);
        loop {
            batch.clear();
            batch.extend(self.ring.completion().take(256));
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
            x if x == Op::Accept as u8 => self.on_accept(slot as usize, res, flags),
            x if x == Op::Recv as u8 => self.on_recv(slot, generation, res, flags),
            x if x == Op::Poll as u8 => self.on_poll(slot, generation, res, flags),
            x if x == Op::Send as u8 => self.on_send(slot, generation, res),
            x if x == Op::Close as u8 => self.on_closed(slot, generation),
            x if x == Op::ShmAccept as u8 => self.on_shm_accept(slot as usize, res, flags),
            x if x == Op::ShmRx as u8 => self.on_shm_wait(slot, generation, Op::ShmRx),
            x if x == Op::ShmTx as u8 => self.on_shm_wait(slot, generation, Op::ShmTx),
            x if x == Op::ShmHup as u8 => self.on_shm_wait(slot, generation, Op::ShmHup),
            x if x == Op::Wake as u8 => {
                self.wake_armed = false;
                if !self.stopping {
                    self.arm_wake();
                }
            }
            _ => {}
        }
    }

    fn on_accept(&mut self, li: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more && let Some(l) = self.listeners.get_mut(li) {
            l.armed = false;
        }
        if res < 0 {
            match -res {
                libc::ECANCELED => {}
                libc::ENFILE | libc::EMFILE => {
                    tracing::warn!(
                        shard = self.id,
                        "direct descriptor table full: pausing accept"
                    );
                    self.pause_accepts();
                }
                e => tracing::debug!(shard = self.id, errno = e, "accept error"),
            }
            if !more && !self.accept_paused && self.shutdown_deadline.is_none() {
                self.arm_accepts();
            }
            return;
        }
        let fixed = res as u32;
        let transport = self.listeners.get(li).map_or(0, |l| l.transport);
        self.table_used += 1;
        let ip = match (&self.guard, self.listeners.get(li)) {
            (Some(_), Some(l)) if transport == 0 => peer_ip(&l.addr.0),
            _ => None,
        };
        if ip.is_some() {
            // A ban another shard decided is in our mesh ring before its ERROR left that
            // shard: apply it before judging this connection.
            self.drain_mesh();
        }
        let refuse = match (ip, self.guard.as_mut()) {
            (Some(ip), Some(g)) => match g.check(ip, self.now) {
                crate::guard::Verdict::Allow => None,
                crate::guard::Verdict::Throttled(d) => Some(format!(
                    "too many failures from {ip}: throttled, retry in {} ms",
                    d.as_millis()
                )),
                crate::guard::Verdict::Banned(d) => {
                    Some(format!("{ip} is banned for {} s more", d.as_secs().max(1)))
                }
            },
            _ => None,
        };
        if let (Some(reason), Some(ip)) = (&refuse, ip) {
            self.audit(
                serde_json::json!({"event": "refused", "peer": ip.to_string(),
                "code": ErrorCode::BANNED.0, "reason": reason}),
            );
        }
        self.add_conn(fixed, transport, None, ip, refuse);
        if self.table_used + 1 >= self.table_size {
            self.pause_accepts();
        }
        if !more && !self.accept_paused && self.shutdown_deadline.is_none() {
            self.arm_accepts();
        }
    }

    /// Register an accepted connection: refused with ERROR 501 at the limit or while shutting
    /// down, otherwise armed for input.
    fn add_conn(
        &mut self,
        fixed: u32,
        transport: u8,
        shm: Option<ShmStream>,
        ip: Option<IpAddr>,
        banned: Option<String>,
    ) {
        ShardMetrics::add(&self.metrics.connections_accepted, 1);
        let mut refused = self.conns.len() >= self.cfg.max_connections_per_shard
            || self.shutdown_deadline.is_some()
            || banned.is_some();
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & 0xFF_FFFF;
        let proto = Connection::new(
            Side::Server,
            self.cfg.protocol.clone(),
            self.now,
            self.unix_now(),
        );
        let shm = shm.map(|stream| {
            Box::new(ShmConn {
                stream,
                pending: None,
                rx_armed: false,
                tx_armed: false,
                hup_armed: false,
            })
        });
        let tls = match &self.cfg.tls {
            Some(cfg) if transport == 0 && !refused => match TlsSession::server(cfg.clone()) {
                Ok(t) => Some(Box::new(t)),
                Err(e) => {
                    // Never serve a TLS listener's connection in plaintext: refuse it.
                    tracing::warn!(shard = self.id, error = %e, "tls session not created");
                    refused = true;
                    None
                }
            },
            _ => None,
        };
        let slot = self.conns.insert(Conn {
            fixed,
            generation,
            transport,
            proto,
            out: None,
            sending: false,
            send_started: None,
            refused,
            closing: false,
            connected: false,
            timer: None,
            dirty: false,
            fresh: false,
            fd_closed: false,
            shm,
            ip: ip.map(Box::new),
            tls,
        }) as u32;
        if refused {
            ShardMetrics::add(&self.metrics.connections_refused, 1);
            let frame = match &banned {
                Some(reason) => {
                    self.metrics.error_sent(ErrorCode::BANNED.0, 1);
                    let mut v = Vec::new();
                    Frame::new(
                        MessageType::Error,
                        0,
                        ErrorPayload {
                            code: ErrorCode::BANNED.0,
                            message: reason.clone(),
                        }
                        .to_bytes(),
                    )
                    .encode(&mut v);
                    Bytes::from(v)
                }
                None => {
                    self.metrics.error_sent(ErrorCode::OVERLOADED.0, 1);
                    self.refused_frame.clone()
                }
            };
            let c = &mut self.conns[slot as usize];
            if let Some(shm) = c.shm.as_mut() {
                // The frame is in the ring before the close: the peer reads it, then the close.
                let _ = shm.stream.try_send(&frame);
                self.start_close(slot);
                return;
            }
            c.sending = true;
            let out = c.out.insert(Box::new(Outgoing {
                buf: BytesMut::from(&frame[..]),
                sent: 0,
            }));
            let e = opcode::Send::new(types::Fixed(fixed), out.buf.as_ptr(), out.buf.len() as u32)
                .build()
                .user_data(ud(Op::Send, slot, generation));
            self.push(e);
        } else {
            self.metrics.connections_active[transport as usize].fetch_add(1, Ordering::Relaxed);
            if self.conns[slot as usize].shm.is_some() {
                self.arm_shm_hup(slot);
                self.shm_recv(slot);
            } else {
                self.arm_recv(slot);
            }
            self.mark(slot);
        }
    }

    /// The shared-memory rendezvous socket is readable: accept what is waiting (bounded per
    /// event) and hand each connector its segment.
    fn on_shm_accept(&mut self, li: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if !more && let Some(l) = self.listeners.get_mut(li) {
            l.armed = false;
        }
        if res >= 0
            && let Some(l) = self.listeners.get(li)
        {
            let fd = l.fd.as_raw_fd();
            for _ in 0..64 {
                // SAFETY: accept4 on a listening socket we own; the new descriptor is owned
                // by the UnixStream made from it.
                let s = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_CLOEXEC,
                    )
                };
                if s < 0 {
                    break;
                }
                // SAFETY: s is a fresh descriptor returned by accept4.
                let sock = unsafe { std::os::unix::net::UnixStream::from_raw_fd(s) };
                match ShmStream::serve(sock, &self.cfg.shm) {
                    Ok(stream) => self.add_conn(u32::MAX, SHM, Some(stream), None, None),
                    Err(e) => tracing::debug!(shard = self.id, error = %e, "shm rendezvous failed"),
                }
            }
        }
        if !more && !self.accept_paused && self.shutdown_deadline.is_none() {
            self.arm_accepts();
        }
    }

    /// Watch a shared-memory connection's socket for the peer's death.
    fn arm_shm_hup(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        let Some(shm) = c.shm.as_mut() else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&shm.stream.socket());
        shm.hup_armed = true;
        let e = opcode::PollAdd::new(types::Fd(fd), (libc::POLLRDHUP | libc::POLLHUP) as u32)
            .build()
            .user_data(ud(Op::ShmHup, slot, c.generation));
        self.push(e);
    }

    /// A futex wait or the hang-up poll of a shared-memory connection completed.
    fn on_shm_wait(&mut self, slot: u32, generation: u32, op: Op) {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        let closing = c.closing;
        let Some(shm) = c.shm.as_mut() else {
            return;
        };
        match op {
            Op::ShmRx => shm.rx_armed = false,
            Op::ShmTx => shm.tx_armed = false,
            _ => shm.hup_armed = false,
        }
        if closing {
            if !shm.in_flight() {
                self.remove_conn(slot);
            }
            return;
        }
        match op {
            Op::ShmRx => self.shm_recv(slot),
            Op::ShmTx => self.mark(slot),
            _ => {
                // Hang-up: deliver what the peer committed, then the end of the stream.
                self.shm_recv(slot);
                let c = &mut self.conns[slot as usize];
                if let Some(shm) = c.shm.as_mut()
                    && shm.stream.check_peer().is_err()
                {
                    c.proto.handle_eof(self.now);
                    self.mark(slot);
                }
            }
        }
    }

    /// Feed what the peer committed to the protocol (up to a budget), then wait on the
    /// receive ring's futex word once it is empty.
    fn shm_recv(&mut self, slot: u32) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.closing {
            return;
        }
        let Some(shm) = c.shm.as_mut() else {
            return;
        };
        let mut taken = 0usize;
        let mut eof = false;
        let mut arm = None;
        loop {
            if taken >= SHM_INPUT_BUDGET {
                // More is waiting: come back on the next turn of the loop.
                self.shm_more.push((slot, c.generation));
                break;
            }
            let empty = match shm.stream.try_recv() {
                Ok(Some(frame)) => {
                    taken += frame.len();
                    c.proto.handle_input(&frame, now);
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm receive");
                    eof = true;
                    break;
                }
            };
            if !empty {
                continue;
            }
            if shm.rx_armed {
                break;
            }
            match shm.stream.recv_wakeup() {
                Ok(None) => continue,
                Ok(Some(word)) => {
                    shm.rx_armed = true;
                    arm = Some(futex_wait(word, ud(Op::ShmRx, slot, c.generation)));
                    break;
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm receive");
                    eof = true;
                    break;
                }
            }
        }
        // The word lives in the connection's mapping, kept until this wait completes or is
        // cancelled (see start_close).
        if let Some(e) = arm {
            self.push(e);
        }
        let c = &mut self.conns[slot as usize];
        if taken > 0 {
            ShardMetrics::add(&self.metrics.bytes_in, taken as u64);
        }
        if eof {
            c.proto.handle_eof(now);
        }
        if taken > 0 || eof {
            self.mark(slot);
        }
    }

    /// Write the protocol's queued frames into the send ring; when it is full keep the frame
    /// and wait on the ring's space word (the slow-consumer timer runs meanwhile).
    fn shm_flush(&mut self, slot: u32) {
        let (now, epoch) = (self.now, self.epoch);
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.closing {
            return;
        }
        let Some(shm) = c.shm.as_mut() else {
            return;
        };
        let mut written = 0u64;
        let mut failed = false;
        let mut arm = None;
        loop {
            if shm.pending.is_none() {
                match c.proto.poll_transmit() {
                    Some(t) => {
                        self.metrics.frame_out(&t.header);
                        if t.header[3] == MessageType::Error.to_u8()
                            && let Ok(e) = ErrorPayload::from_bytes(&t.payload)
                        {
                            self.metrics.error_sent(e.code, 1);
                        }
                        shm.pending = Some((t, 0));
                    }
                    None => break,
                }
            }
            let (t, off) = shm.pending.as_mut().expect("set above");
            let total = t.len();
            let chunk = (total - *off).min(shm.stream.max_frame());
            match shm.stream.try_claim(chunk) {
                Ok(mut claim) => {
                    // Header and payload as one byte string, from `off`.
                    let mut at = 0;
                    let mut pos = *off;
                    while at < chunk {
                        let n = if pos < HEADER_LEN {
                            let n = (HEADER_LEN - pos).min(chunk - at);
                            claim[at..at + n].copy_from_slice(&t.header[pos..pos + n]);
                            n
                        } else {
                            let p = pos - HEADER_LEN;
                            let n = chunk - at;
                            claim[at..at + n].copy_from_slice(&t.payload[p..p + n]);
                            n
                        };
                        at += n;
                        pos += n;
                    }
                    claim.commit_deferred();
                    *off += chunk;
                    written += chunk as u64;
                    if *off == total {
                        shm.pending = None;
                    }
                }
                Err(ShmError::WouldBlock) => {
                    if shm.tx_armed {
                        break;
                    }
                    match shm.stream.send_wakeup(chunk) {
                        Ok(None) => continue,
                        Ok(Some(word)) => {
                            shm.tx_armed = true;
                            arm = Some(futex_wait(word, ud(Op::ShmTx, slot, c.generation)));
                            break;
                        }
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm send");
                    failed = true;
                    break;
                }
            }
        }
        shm.stream.flush();
        let blocked = shm.pending.is_some();
        c.sending = blocked && !failed;
        if written > 0 {
            ShardMetrics::add(&self.metrics.bytes_out, written);
            c.send_started = None;
        }
        if blocked && c.send_started.is_none() {
            c.send_started = Some(Tick::of(epoch, now));
        }
        if !blocked {
            c.send_started = None;
        }
        if failed {
            c.proto.handle_eof(now);
            self.mark(slot);
        }
        if let Some(e) = arm {
            self.push(e);
        }
    }

    /// Send a record to the audit log, with this shard's id.
    fn audit(&self, mut v: serde_json::Value) {
        if let Some(log) = &self.cfg.audit {
            v["shard"] = serde_json::Value::from(self.id);
            log.record(v);
        }
    }

    /// Audit a failure (`record` gets the peer's address) and count it against the address.
    fn security_failure(&mut self, record: &mut serde_json::Value, ip: Option<IpAddr>) {
        record["peer"] = ip.map(|i| i.to_string()).into();
        self.audit(record.take());
        if let Some(ip) = ip {
            self.count_failure(ip);
        }
    }

    /// Count a security failure against the connection's address; ban it when over the limit
    /// and tell the other shards.
    fn count_failure(&mut self, ip: IpAddr) {
        if self.guard.is_none() {
            return;
        }
        // Each address is counted by one shard (its home, by hash), so that failures spread
        // over shards by the kernel still add up; the home shard broadcasts the ban.
        let n = self.mesh_tx.len().max(1);
        let home = {
            use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
            BuildHasherDefault::<DefaultHasher>::default().hash_one(ip) as usize % n
        };
        if home != self.id {
            if let Some(Some(p)) = self.mesh_tx.get_mut(home) {
                if p.push(MeshMsg::Failure { ip }).is_ok() {
                    self.wakers[home].wake(false);
                } else {
                    ShardMetrics::add(&self.metrics.mesh_full, 1);
                }
            }
            return;
        }
        let Some(g) = self.guard.as_mut() else {
            return;
        };
        let Some(until) = g.failure(ip, self.now) else {
            return;
        };
        let secs = until.saturating_duration_since(self.now).as_secs();
        tracing::warn!(shard = self.id, %ip, secs, "address banned");
        self.audit(serde_json::json!({"event": "ban", "peer": ip.to_string(), "seconds": secs}));
        for to in 0..self.mesh_tx.len() {
            if to == self.id {
                continue;
            }
            if let Some(Some(p)) = self.mesh_tx.get_mut(to) {
                if p.push(MeshMsg::Ban { ip, until }).is_ok() {
                    self.wakers[to].wake(false);
                } else {
                    ShardMetrics::add(&self.metrics.mesh_full, 1);
                }
            }
        }
    }

    fn unix_now(&self) -> u64 {
        self.unix_base.1
            + self
                .now
                .saturating_duration_since(self.unix_base.0)
                .as_secs()
    }

    fn mark(&mut self, slot: u32) {
        mark_dirty(&mut self.conns, &mut self.dirty, slot);
    }

    fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        let live = matches!(self.conns.get(slot as usize), Some(c) if c.generation == generation && !c.closing);
        if res > 0 {
            if let Some(bid) = bid {
                let mut tls_failure = None;
                if live {
                    let data = self.bufs.data(bid, res as usize);
                    ShardMetrics::add(&self.metrics.bytes_in, res as u64);
                    let c = &mut self.conns[slot as usize];
                    match c.tls.as_mut() {
                        None => c.proto.handle_input(data, self.now),
                        Some(tls) => {
                            if let Err(e) =
                                c.proto
                                    .handle_tls_input(tls, data, self.now, &mut self.tls_plain)
                            {
                                c.proto.handle_eof(self.now);
                                tls_failure = Some((e, c.ip.as_deref().copied()));
                            }
                        }
                    }
                }
                self.bufs.recycle(bid);
                if let Some((e, ip)) = tls_failure {
                    // The session is dead: its alert goes out with the next flush, then the
                    // connection closes.
                    let kind = if e.code().0 == 201 {
                        "auth_failure"
                    } else {
                        "malformed"
                    };
                    let mut record = serde_json::json!({"event": kind, "mode": "tls",
                        "code": e.code().0, "reason": e.message});
                    self.security_failure(&mut record, ip);
                }
            }
            if live {
                self.mark(slot);
                match self.cfg.recv_mode {
                    RecvMode::Multishot if !more => self.arm_recv(slot),
                    RecvMode::PollThenRecv
                        if cqueue::sock_nonempty(flags)
                            || res as u32 == self.cfg.recv_buffer_size =>
                    {
                        self.recv_once(slot)
                    }
                    _ => {}
                }
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufs.recycle(bid);
        }
        if !live {
            return;
        }
        if res == -libc::ENOBUFS {
            // Every receive buffer was in use for a moment: they are recycled as soon as each
            // completion is handled, so simply ask again.
            match self.cfg.recv_mode {
                RecvMode::Multishot if !more => self.arm_recv(slot),
                RecvMode::PollThenRecv => self.recv_once(slot),
                _ => {}
            }
            return;
        }
        if res == -libc::EAGAIN && self.cfg.recv_mode == RecvMode::PollThenRecv {
            // The poll fired but another receive already took the data.
            return;
        }
        // End of file or a transport error.
        let c = &mut self.conns[slot as usize];
        c.proto.handle_eof(self.now);
        self.mark(slot);
    }

    fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.generation != generation {
            return;
        }
        if c.closing {
            // The send of a connection being closed ended (completed or cancelled): its buffer
            // is no longer read by the kernel and may be reused.
            c.sending = false;
            c.send_started = None;
            if let Some(b) = c.out.take() {
                self.recycle_send_buf(b);
            }
            if self.conns[slot as usize].fd_closed {
                self.remove_conn(slot);
            }
            return;
        }
        if res < 0 {
            c.sending = false;
            c.send_started = None;
            if let Some(b) = c.out.take() {
                self.recycle_send_buf(b);
            }
            let c = &mut self.conns[slot as usize];
            c.proto.handle_eof(self.now);
            if c.refused {
                self.start_close(slot);
            } else {
                self.mark(slot);
            }
            return;
        }
        ShardMetrics::add(&self.metrics.bytes_out, res as u64);
        if let Some(out) = c.out.as_mut()
            && out.sent + (res as usize) < out.buf.len()
        {
            // Partial send: submit the rest from where it stopped.
            out.sent += res as usize;
            let ptr = out.buf[out.sent..].as_ptr();
            let rest = (out.buf.len() - out.sent) as u32;
            let e = opcode::Send::new(types::Fixed(c.fixed), ptr, rest)
                .build()
                .user_data(ud(Op::Send, slot, generation));
            self.push(e);
            return;
        }
        c.sending = false;
        c.send_started = None;
        let refused = c.refused;
        if let Some(b) = c.out.take() {
            self.recycle_send_buf(b);
        }
        if refused {
            self.start_close(slot);
        } else {
            self.mark(slot);
        }
    }

    fn recycle_send_buf(&mut self, mut b: Box<Outgoing>) {
        if self.send_pool.len() < SEND_POOL && b.buf.capacity() <= 4 * self.cfg.send_batch {
            b.buf.clear();
            b.sent = 0;
            self.send_pool.push(b);
        }
    }

    fn start_close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.closing {
            return;
        }
        c.closing = true;
        if let Some(shm) = c.shm.as_ref() {
            // Cancel the waits armed on the mapping; it is released (and the peer told) once
            // none is left.
            let generation = c.generation;
            let ops = [
                (shm.rx_armed, Op::ShmRx),
                (shm.tx_armed, Op::ShmTx),
                (shm.hup_armed, Op::ShmHup),
            ];
            let in_flight = shm.in_flight();
            for (armed, op) in ops {
                if armed {
                    let cancel = opcode::AsyncCancel::new(ud(op, slot, generation))
                        .build()
                        .user_data(ud(Op::Cancel, slot, generation));
                    self.push(cancel);
                }
            }
            if !in_flight {
                self.remove_conn(slot);
            }
            return;
        }
        let (fixed, generation, sending) = (c.fixed, c.generation, c.sending);
        if sending {
            let cancel = opcode::AsyncCancel::new(ud(Op::Send, slot, generation))
                .build()
                .user_data(ud(Op::Cancel, slot, generation));
            self.push(cancel);
        }
        let cancel = opcode::AsyncCancel::new(ud(Op::Recv, slot, generation))
            .build()
            .user_data(ud(Op::Cancel, slot, generation));
        self.push(cancel);
        if self.cfg.recv_mode == RecvMode::PollThenRecv {
            let cancel = opcode::AsyncCancel::new(ud(Op::Poll, slot, generation))
                .build()
                .user_data(ud(Op::Cancel, slot, generation));
            self.push(cancel);
        }
        let close = opcode::Close::new(types::Fixed(fixed))
            .build()
            .user_data(ud(Op::Close, slot, generation));
        self.push(close);
    }

    fn on_closed(&mut self, slot: u32, generation: u32) {
        match self.conns.get_mut(slot as usize) {
            Some(c) if c.generation == generation => {
                if c.sending {
                    // The kernel may still read the send buffer: keep it until that send ends.
                    c.fd_closed = true;
                    return;
                }
            }
            _ => return,
        }
        self.remove_conn(slot);
    }

    /// Release a closed connection's slot, its direct-descriptor count and its buffers.
    fn remove_conn(&mut self, slot: u32) {
        let c = self.conns.remove(slot as usize);
        if c.shm.is_none() {
            self.table_used = self.table_used.saturating_sub(1);
        }
        if !c.refused {
            self.metrics.connections_active[c.transport as usize].fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(b) = c.out {
            self.recycle_send_buf(b);
        }
        // Resume once a tenth of the table is free again.
        if self.accept_paused
            && u64::from(self.table_used) * 10 < u64::from(self.table_size) * 9
            && self.shutdown_deadline.is_none()
        {
            self.accept_paused = false;
            self.arm_accepts();
        }
    }

    fn process_dirty(&mut self) {
        while let Some(slot) = self.dirty.pop() {
            if let Some(c) = self.conns.get_mut(slot as usize) {
                c.dirty = false;
                self.process(slot);
            }
        }
    }

    /// Drain a connection's events into the service, send what it queued, re-arm its timer,
    /// and close it once it is drained.
    fn process(&mut self, slot: u32) {
        loop {
            loop {
                let Some(c) = self.conns.get_mut(slot as usize) else {
                    return;
                };
                if c.refused || c.closing {
                    return;
                }
                let Some(ev) = c.proto.poll_event() else {
                    break;
                };
                self.dispatch(slot, ev);
            }
            self.flush(slot);
            let Some(c) = self.conns.get_mut(slot as usize) else {
                return;
            };
            match c.proto.poll_event() {
                Some(ev) => self.dispatch(slot, ev),
                None => break,
            }
        }
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.proto.is_drained() && !c.sending {
            self.start_close(slot);
            return;
        }
        if c.fresh || self.cfg.shrink_when_drained {
            // Nothing is buffered or queued now (the send buffer holds what is in flight):
            // release the connection's buffers so that a quiet connection holds none.
            c.fresh = false;
            c.proto.shrink_buffers();
        }
        let mut deadline = c.proto.poll_timeout();
        if let Some(started) = c.send_started {
            let slow = started.at(self.epoch) + self.cfg.slow_consumer_timeout;
            deadline = Some(deadline.map_or(slow, |d| d.min(slow)));
        }
        if let Some(t) = deadline.map(|d| Tick::of(self.epoch, d))
            && c.timer.is_none_or(|cur| t < cur)
        {
            c.timer = Some(t);
            self.timers.push(Reverse((t, slot, c.generation)));
        }
    }

    fn dispatch(&mut self, slot: u32, ev: Event) {
        let generation = self.conns[slot as usize].generation;
        let conn = ConnRef {
            shard: self.id as u16,
            slot,
            generation,
        };
        match &ev {
            Event::Connected(peer) => {
                let c = &mut self.conns[slot as usize];
                c.connected = true;
                c.fresh = true;
                let ip = c.ip.as_deref().copied();
                if self.cfg.audit.is_some() {
                    self.audit(serde_json::json!({"event": "handshake_ok",
                        "peer": ip.map(|i| i.to_string()), "node_id": peer.node_id,
                        "mode": peer.security.as_str(), "identity": peer.identity}));
                }
            }
            Event::Denied {
                identity,
                msg_type,
                stream_id,
            } => {
                let ip = self.conns[slot as usize].ip.as_deref().copied();
                self.audit(serde_json::json!({"event": "denied",
                    "peer": ip.map(|i| i.to_string()), "identity": identity,
                    "type": msg_type.name(), "stream": stream_id,
                    "code": ErrorCode::UNAUTHORISED.0}));
            }
            Event::Frame(f) => {
                let t = f.header.msg_type.to_u8() as usize;
                ShardMetrics::add(&self.metrics.frames_in[t], 1);
                ShardMetrics::add(
                    &self.metrics.bytes_in_by_type[t],
                    24 + f.payload.len() as u64,
                );
            }
            Event::Closed(reason) => {
                match reason {
                    CloseReason::HandshakeTimeout => {
                        ShardMetrics::add(&self.metrics.handshake_timeouts, 1)
                    }
                    CloseReason::HeartbeatTimeout => {
                        ShardMetrics::add(&self.metrics.heartbeat_timeouts, 1)
                    }
                    CloseReason::ProtocolError { code, .. }
                        if *code == ErrorCode::SLOW_CONSUMER =>
                    {
                        ShardMetrics::add(&self.metrics.slow_consumers, 1)
                    }
                    _ => {}
                }
                let c = &self.conns[slot as usize];
                ShardMetrics::add(&self.metrics.shed_frames, c.proto.shed_frames());
                let (ip, connected) = (c.ip.as_deref().copied(), c.connected);
                let failure = match reason {
                    CloseReason::ProtocolError { code, message } => match code.0 {
                        100..=105 => Some(("malformed", *code, message.clone())),
                        200..=204 | 700..=705 => Some(("auth_failure", *code, message.clone())),
                        _ => None,
                    },
                    CloseReason::HandshakeTimeout if !connected => Some((
                        "handshake_timeout",
                        ErrorCode::HANDSHAKE_TIMEOUT,
                        "handshake did not finish in time".to_owned(),
                    )),
                    _ => None,
                };
                if let Some((kind, code, message)) = failure {
                    let mut record =
                        serde_json::json!({"event": kind, "code": code.0, "reason": message});
                    self.security_failure(&mut record, ip);
                }
            }
            _ => {}
        }
        let mut service = std::mem::replace(&mut self.service, Box::new(crate::service::NoService));
        {
            let mut ctx = self.ctx();
            match ev {
                Event::Connected(peer) => service.on_connect(&mut ctx, conn, &peer),
                Event::Frame(f) => service.on_frame(&mut ctx, conn, f),
                Event::Closed(reason) => service.on_close(&mut ctx, conn, &reason),
                other => service.on_event(&mut ctx, conn, &other),
            }
        }
        self.service = service;
    }

    fn ctx(&mut self) -> Ctx<'_> {
        Ctx {
            shard: self.id,
            nshards: self.wakers.len(),
            now: self.now,
            conns: &mut self.conns,
            dirty: &mut self.dirty,
            mesh_tx: &mut self.mesh_tx,
            wakers: &self.wakers,
            metrics: &self.metrics,
        }
    }

    fn flush(&mut self, slot: u32) {
        let batch = self.cfg.send_batch;
        let Some(c) = self.conns.get_mut(slot as usize) else {
            return;
        };
        if c.shm.is_some() {
            self.shm_flush(slot);
            return;
        }
        if c.sending || c.closing {
            return;
        }
        let mut out = Outgoing::take(&mut self.send_pool);
        let c = &mut self.conns[slot as usize];
        while let Some(t) = c.proto.poll_transmit() {
            self.metrics.frame_out(&t.header);
            if t.header[3] == MessageType::Error.to_u8()
                && let Ok(e) = ErrorPayload::from_bytes(&t.payload)
            {
                self.metrics.error_sent(e.code, 1);
            }
            t.write_to(&mut out.buf);
            if out.buf.len() >= batch {
                break;
            }
        }
        if let Some(tls) = c.tls.as_mut() {
            // Frames leave as TLS records; handshake messages and alerts leave even when no
            // frame is queued.
            let mut sealed = Outgoing::take(&mut self.send_pool);
            if out.buf.is_empty() || tls.has_failed() {
                tls.transmit(&mut sealed.buf);
            } else if let Err(e) = tls.seal(&out.buf, &mut sealed.buf) {
                tracing::debug!(shard = self.id, error = %e, "tls seal failed");
                c.proto.handle_eof(self.now);
            }
            self.recycle_send_buf(std::mem::replace(&mut out, sealed));
        }
        if out.buf.is_empty() {
            self.recycle_send_buf(out);
            return;
        }
        let c = &mut self.conns[slot as usize];
        let (ptr, len) = (out.buf.as_ptr(), out.buf.len() as u32);
        c.out = Some(out);
        c.sending = true;
        c.send_started = Some(Tick::of(self.epoch, self.now));
        let e = opcode::Send::new(types::Fixed(c.fixed), ptr, len)
            .build()
            .user_data(ud(Op::Send, slot, c.generation));
        self.push(e);
    }

    fn run_timers(&mut self) -> bool {
        let mut any = false;
        while let Some(Reverse((t, slot, generation))) = self.timers.peek().copied() {
            if t.at(self.epoch) > self.now {
                break;
            }
            self.timers.pop();
            let slow = self.cfg.slow_consumer_timeout;
            let (now, epoch) = (self.now, self.epoch);
            let Some(c) = self.conns.get_mut(slot as usize) else {
                continue;
            };
            if c.generation != generation || c.timer != Some(t) {
                continue;
            }
            c.timer = None;
            any = true;
            let stalled = c
                .send_started
                .is_some_and(|s| now.saturating_duration_since(s.at(epoch)) >= slow);
            if stalled {
                // The peer has not taken a single byte for the whole timeout: a reader that
                // stays too slow is closed.
                ShardMetrics::add(&self.metrics.slow_consumers, 1);
                tracing::debug!(shard = self.id, slot, "closing a slow consumer");
                let conn = ConnRef {
                    shard: self.id as u16,
                    slot,
                    generation,
                };
                let reason = CloseReason::ProtocolError {
                    code: ErrorCode::SLOW_CONSUMER,
                    message: "peer did not read for the slow-consumer timeout".into(),
                };
                let mut service =
                    std::mem::replace(&mut self.service, Box::new(crate::service::NoService));
                service.on_close(&mut self.ctx(), conn, &reason);
                self.service = service;
                self.start_close(slot);
                continue;
            }
            // A connection whose timer fires has been quiet: release its idle buffers first.
            let c = &mut self.conns[slot as usize];
            c.proto.shrink_buffers();
            c.proto.handle_timeout(now);
            self.mark(slot);
        }
        any
    }

    fn drain_mesh(&mut self) -> bool {
        let mut any = false;
        for i in 0..self.mesh_rx.len() {
            let n = self.mesh_rx[i].slots();
            if n == 0 {
                continue;
            }
            any = true;
            for _ in 0..n {
                let Ok(msg) = self.mesh_rx[i].pop() else {
                    break;
                };
                self.on_mesh(msg);
            }
        }
        any
    }

    fn on_mesh(&mut self, msg: MeshMsg) {
        match msg {
            MeshMsg::Send {
                to,
                stream_id,
                msg_type,
                payload,
                opts,
            } => {
                if let Some(c) = self.conns.get_mut(to.slot as usize)
                    && c.generation == to.generation
                    && !c.refused
                {
                    if let Err(e) = c.proto.send(stream_id, msg_type, payload, opts) {
                        tracing::debug!(shard = self.id, error = %e, "routed frame refused");
                    }
                    self.mark(to.slot);
                }
            }
            MeshMsg::Close { to, code, reason } => {
                if let Some(c) = self.conns.get_mut(to.slot as usize)
                    && c.generation == to.generation
                {
                    c.proto.close(code, &reason);
                    self.mark(to.slot);
                }
            }
            MeshMsg::Failure { ip } => self.count_failure(ip),
            MeshMsg::Ban { ip, until } => {
                if let Some(g) = self.guard.as_mut() {
                    g.ban(ip, until, self.now);
                }
            }
            MeshMsg::User { from, msg } => {
                let mut service =
                    std::mem::replace(&mut self.service, Box::new(crate::service::NoService));
                service.on_message(&mut self.ctx(), from, msg);
                self.service = service;
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now + self.cfg.shutdown_timeout);
        tracing::info!(
            shard = self.id,
            connections = self.conns.len(),
            "shutting down: closing listeners, draining connections"
        );
        self.pause_accepts();
        let slots: Vec<u32> = self.conns.iter().map(|(s, _)| s as u32).collect();
        for slot in slots {
            let c = &mut self.conns[slot as usize];
            if !c.refused {
                c.proto
                    .close(ErrorCode::SHUTTING_DOWN.0, "node shutting down");
                self.mark(slot);
            }
        }
    }

    fn finish_shutdown(&mut self) {
        // Whatever has not drained by the deadline is closed now.
        let slots: Vec<u32> = self.conns.iter().map(|(s, _)| s as u32).collect();
        for slot in slots {
            self.start_close(slot);
        }
        // The pending eventfd read writes into `wake_buf`: cancel it too.
        self.stopping = true;
        if self.wake_armed {
            let cancel = opcode::AsyncCancel::new(ud(Op::Wake, 0, 0))
                .build()
                .user_data(ud(Op::Cancel, 0, 0));
            self.push(cancel);
        }
        // Wait (briefly) for the closes and cancelled operations to complete, so that no buffer
        // is freed while the kernel might still use it.
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while (!self.conns.is_empty() || self.wake_armed) && Instant::now() < deadline {
            let ts = types::Timespec::new().nsec(10_000_000);
            let args = types::SubmitArgs::new().timespec(&ts);
            let _ = self.ring.submitter().submit_with_args(1, &args);
            self.reap();
        }
        self.bufs.unregister(&self.ring);
        tracing::info!(shard = self.id, "shard stopped");
    }
}
