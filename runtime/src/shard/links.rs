//! Outbound connections: the shard's side of a [`Link`]. An attempt is a non-blocking socket
//! (`TCP_NODELAY` for TCP), an io_uring `CONNECT`, a `FILES_UPDATE` that moves the connected
//! socket into the ring's direct-descriptor table, and then a connection like an accepted
//! one (client side of the protocol, TLS when the link has it; `link_conn.rs`) whose
//! handshake ends the attempt; to a `quic://` URL, a QUIC handshake instead (`quic_link.rs`);
//! to a `shm://` URL, the listener's offer of a segment after the connect (`shm_link.rs`).
//! The link's timer bounds the whole attempt and the waits between attempts.
//!
//! At most one operation is in flight per link; its socket and address stay in the link
//! until the operation's completion, whatever happened to the link meanwhile.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Instant;

use io_uring::{opcode, types};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use slab::Slab;
use valkyrie_protocol::{CloseReason, ErrorCode, Tick};

use super::Shard;
use crate::link::{ConnectOptions, Link, LinkId, LinkState, Next};
use crate::metrics::ShardMetrics;
use crate::sys::ConnectAddr;
use crate::uring::{Op, ud};
use crate::url::Endpoint;
use crate::{ConnRef, conn::table::GENERATION_MASK};

/// What a link has in the kernel or in the connection table.
pub(super) enum LinkIo {
    /// Nothing: it waits, or it has stopped.
    Idle,
    /// The connect is in flight on `fd`; the kernel reads `_addr` until its completion.
    Connecting {
        fd: OwnedFd,
        _addr: Box<ConnectAddr>,
    },
    /// The connected socket is being moved into the direct-descriptor table; the kernel
    /// writes the slot it took into `slot`.
    Installing { fd: OwnedFd, slot: Box<i32> },
    /// A shared-memory listener's rendezvous socket, connected: a poll waits for its offer of
    /// a segment (`shm_link.rs`).
    ShmOffer { fd: OwnedFd },
    /// A QUIC handshake on the shard's client endpoint (`quic_link.rs`).
    Quic { listener: u8, handle: u32 },
    /// A connection of the table, in its handshake or established.
    Conn { slot: u32, generation: u32 },
}

/// One link and its I/O.
pub(super) struct Entry {
    pub(super) generation: u32,
    pub(super) link: Link,
    pub(super) io: LinkIo,
    /// Its live entry in the timer heap (others are stale).
    pub(super) timer: Option<Tick>,
    /// `Ctx::disconnect` asked for it to stop.
    pub(super) stopping: bool,
    /// A probe of the link's first URL while it is up on another (`link_probe.rs`).
    pub(super) probe: Option<Probe>,
}

/// A probe's socket and address, kept until its connect completes (`link_probe.rs`).
pub(super) struct Probe {
    pub(super) _fd: OwnedFd,
    pub(super) _addr: Box<ConnectAddr>,
}

/// A shard's links, their timers, and those to act on at the end of the turn.
pub(crate) struct Links {
    pub(super) slab: Slab<Entry>,
    next_generation: u32,
    timers: BinaryHeap<Reverse<(Tick, u32, u32)>>,
    /// Links made or stopped by the service this turn.
    todo: Vec<u32>,
    rng: SmallRng,
}

impl Links {
    pub(crate) fn new(seed: u64) -> Links {
        Links {
            slab: Slab::new(),
            next_generation: 1,
            timers: BinaryHeap::new(),
            todo: Vec::new(),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// A new link; the shard starts it at the end of the turn.
    pub(crate) fn add(&mut self, shard: usize, opts: ConnectOptions) -> LinkId {
        let generation = self.next_generation;
        self.next_generation = (self.next_generation + 1) & GENERATION_MASK;
        let index = self.slab.insert(Entry {
            generation,
            link: Link::new(opts),
            io: LinkIo::Idle,
            timer: None,
            stopping: false,
            probe: None,
        }) as u32;
        self.todo.push(index);
        LinkId {
            shard: shard as u16,
            index,
            generation,
        }
    }

    pub(super) fn live(&mut self, index: u32, generation: u32) -> Option<&mut Entry> {
        self.slab
            .get_mut(index as usize)
            .filter(|e| e.generation == generation)
    }

    /// The options of live link `(index, generation)`.
    pub(super) fn options(&self, (index, generation): (u32, u32)) -> Option<ConnectOptions> {
        self.slab
            .get(index as usize)
            .filter(|e| e.generation == generation)
            .map(|e| e.link.opts.clone())
    }

    /// Ask `link` to stop (the shard closes its connection or cancels its attempt).
    pub(crate) fn stop(&mut self, link: LinkId) -> bool {
        match self.live(link.index, link.generation) {
            Some(e) => {
                e.stopping = true;
                self.todo.push(link.index);
                true
            }
            None => false,
        }
    }

    /// Ask every link to stop (the shard shuts down).
    pub(crate) fn stop_all(&mut self) {
        for (index, e) in self.slab.iter_mut() {
            e.stopping = true;
            self.todo.push(index as u32);
        }
    }

    /// Where `link` stands (`None` once it has stopped and been let go).
    pub(crate) fn state(&self, link: LinkId) -> Option<LinkState> {
        self.slab
            .get(link.index as usize)
            .filter(|e| e.generation == link.generation)
            .map(|e| e.link.state().clone())
    }

    /// The earliest link timer.
    pub(crate) fn next_timer(&self) -> Option<Tick> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    pub(super) fn set_timer(&mut self, index: u32, at: Tick) {
        if let Some(e) = self.slab.get_mut(index as usize) {
            e.timer = Some(at);
            let generation = e.generation;
            self.timers.push(Reverse((at, index, generation)));
        }
    }
}

impl Shard {
    fn link_id(&self, index: u32, generation: u32) -> LinkId {
        LinkId {
            shard: self.id as u16,
            index,
            generation,
        }
    }

    /// Tell the service where link `index` stands now.
    pub(super) fn report_link(&mut self, index: u32) {
        let Some(e) = self.links.slab.get(index as usize) else {
            return;
        };
        let (id, state) = (self.link_id(index, e.generation), e.link.state().clone());
        let (service, mut ctx) = self.ctx();
        service.on_link(&mut ctx, id, &state);
    }

    /// Start the links made this turn and stop those the service let go.
    pub(super) fn run_links(&mut self) -> bool {
        if self.links.todo.is_empty() {
            return false;
        }
        let todo = std::mem::take(&mut self.links.todo);
        for &index in &todo {
            let Some(e) = self.links.slab.get_mut(index as usize) else {
                continue;
            };
            if e.stopping {
                self.stop_link(index);
            } else if matches!(e.io, LinkIo::Idle)
                && matches!(e.link.state(), LinkState::Connecting { .. })
            {
                let next = e.link.begin(self.now);
                self.link_next(index, next);
            }
        }
        // Keep the allocation for the next turn.
        self.links.todo = todo;
        self.links.todo.clear();
        true
    }

    /// Stop `index`: close its connection, or cancel its attempt; it is let go once nothing
    /// of it is in flight.
    fn stop_link(&mut self, index: u32) {
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        if matches!(e.link.state(), LinkState::Stopped { .. }) {
            return;
        }
        e.link.stop("disconnected by the service".into());
        let generation = e.generation;
        if e.probe.is_some() {
            self.cancel_probe(index, generation);
        }
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        match e.io {
            LinkIo::Conn {
                slot,
                generation: g,
            } => {
                if let Some(c) = self.conns.live(slot, g) {
                    c.proto.close(0, "link disconnected");
                    self.mark(slot);
                }
            }
            LinkIo::Connecting { .. } => {
                let e = opcode::AsyncCancel::new(ud(Op::Connect, index, generation))
                    .build()
                    .user_data(ud(Op::Cancel, index, generation));
                self.ring.push(e);
            }
            LinkIo::ShmOffer { .. } => {
                let e = opcode::AsyncCancel::new(ud(Op::ShmOffer, index, generation))
                    .build()
                    .user_data(ud(Op::Cancel, index, generation));
                self.ring.push(e);
            }
            LinkIo::Quic { listener, handle } => {
                e.io = LinkIo::Idle;
                self.quic_link_abandon(listener, handle);
            }
            LinkIo::Installing { .. } | LinkIo::Idle => {}
        }
        self.report_link(index);
        self.release_link(index);
    }

    /// Let go of a stopped link with nothing in flight.
    pub(super) fn release_link(&mut self, index: u32) {
        if self.links.slab.get(index as usize).is_some_and(|e| {
            matches!(e.io, LinkIo::Idle)
                && e.probe.is_none()
                && matches!(e.link.state(), LinkState::Stopped { .. })
        }) {
            self.links.slab.remove(index as usize);
        }
    }

    /// Carry out what the link decided.
    fn link_next(&mut self, index: u32, next: Next) {
        match next {
            Next::Connect(_) => self.link_connect(index),
            Next::Wait(until) => {
                let at = self.timers.tick(until);
                self.links.set_timer(index, at);
                self.report_link(index);
            }
            Next::Stop => {
                self.report_link(index);
                self.release_link(index);
            }
        }
    }

    /// Open a socket to the link's current URL and submit its connect.
    fn link_connect(&mut self, index: u32) {
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        let generation = e.generation;
        let url = e.link.url().clone();
        let deadline = self.now + e.link.opts.connect_timeout;
        if let Endpoint::Quic(addr) = url {
            let opts = e.link.opts.clone();
            ShardMetrics::add(&self.metrics.link_attempts, 1);
            match self.quic_link_start((index, generation), addr, &opts) {
                Ok((listener, handle)) => {
                    if let Some(e) = self.links.slab.get_mut(index as usize) {
                        e.io = LinkIo::Quic { listener, handle };
                    }
                    let at = self.timers.tick(deadline);
                    self.links.set_timer(index, at);
                    self.report_link(index);
                }
                Err(err) => {
                    self.report_link(index);
                    self.link_failed(index, format!("{url}: {err}"));
                }
            }
            return;
        }
        match crate::sys::outbound_socket(&url) {
            Ok((fd, addr)) => {
                let sqe = addr.connect_entry(&fd, ud(Op::Connect, index, generation));
                e.io = LinkIo::Connecting { fd, _addr: addr };
                // The socket and the address stay in the link until the completion.
                self.ring.push(sqe);
                let at = self.timers.tick(deadline);
                self.links.set_timer(index, at);
                ShardMetrics::add(&self.metrics.link_attempts, 1);
                self.report_link(index);
            }
            Err(err) => {
                self.report_link(index);
                self.link_failed(index, format!("{url}: {err}"));
            }
        }
    }

    /// The attempt of link `index` failed.
    pub(super) fn link_failed(&mut self, index: u32, error: String) {
        ShardMetrics::add(&self.metrics.link_failures, 1);
        let now = self.now;
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        e.io = LinkIo::Idle;
        tracing::debug!(shard = self.id, link = index, %error, "outbound attempt failed");
        let next = e.link.failed(now, error, &mut self.links.rng);
        if !matches!(next, Next::Stop) {
            ShardMetrics::add(&self.metrics.retries[0], 1);
        }
        self.link_next(index, next);
    }

    /// The connect of link `index` completed.
    pub(super) fn on_link_connect(&mut self, index: u32, generation: u32, res: i32) {
        let Some(e) = self.links.live(index, generation) else {
            return;
        };
        let stopped = matches!(e.link.state(), LinkState::Stopped { .. });
        let LinkIo::Connecting { fd, .. } = std::mem::replace(&mut e.io, LinkIo::Idle) else {
            return;
        };
        if stopped {
            self.release_link(index);
            return;
        }
        if res < 0 {
            let url = e.link.url().clone();
            let err = if res == -libc::ECANCELED {
                "connect timed out".to_owned()
            } else {
                std::io::Error::from_raw_os_error(-res).to_string()
            };
            self.link_failed(index, format!("{url}: {err}"));
            return;
        }
        if matches!(e.link.url(), Endpoint::Shm(_)) {
            // The listener offers a segment on the socket at once: wait for it to be readable.
            let sqe = opcode::PollAdd::new(types::Fd(fd.as_raw_fd()), libc::POLLIN as u32)
                .build()
                .user_data(ud(Op::ShmOffer, index, generation));
            e.io = LinkIo::ShmOffer { fd };
            self.ring.push(sqe);
            return;
        }
        // Move the socket into the direct-descriptor table; the kernel picks the slot.
        let slot = Box::new(fd.as_raw_fd());
        let sqe = opcode::FilesUpdate::new(&*slot as *const i32, 1)
            .offset(-1)
            .build()
            .user_data(ud(Op::Install, index, generation));
        e.io = LinkIo::Installing { fd, slot };
        self.ring.push(sqe);
    }

    /// The connected socket of link `index` is in the direct-descriptor table (or not).
    pub(super) fn on_link_install(&mut self, index: u32, generation: u32, res: i32) {
        let Some(e) = self.links.live(index, generation) else {
            return;
        };
        let LinkIo::Installing { fd, slot } = std::mem::replace(&mut e.io, LinkIo::Idle) else {
            return;
        };
        let fixed = *slot;
        // The table holds its own reference to the socket.
        drop(fd);
        if res < 1 || fixed < 0 {
            let err = if res < 0 {
                std::io::Error::from_raw_os_error(-res).to_string()
            } else {
                "no direct descriptor slot".into()
            };
            self.link_failed(index, format!("installing the socket: {err}"));
            return;
        }
        let stopped = matches!(e.link.state(), LinkState::Stopped { .. });
        let opts = e.link.opts.clone();
        let url = e.link.url().clone();
        if self.listeners.slot_taken() {
            self.pause_accepts();
        }
        let slot = self.add_outbound_conn(fixed as u32, &url, &opts, (index, generation));
        if let Some(e) = self.links.live(index, generation) {
            let conn_generation = self.conns.get(slot).map_or(0, |c| c.generation);
            e.io = LinkIo::Conn {
                slot,
                generation: conn_generation,
            };
        }
        if stopped && let Some(c) = self.conns.get_mut(slot) {
            c.proto.close(0, "link disconnected");
        }
    }

    /// A link's connection finished its handshake.
    pub(super) fn link_up(&mut self, link: (u32, u32), conn: ConnRef) {
        let now = self.now;
        let Some(e) = self.links.live(link.0, link.1) else {
            return;
        };
        e.link.up(now, conn);
        e.timer = None;
        self.report_link(link.0);
        self.schedule_probe(link.0);
    }

    /// A link's connection ended (before or after its handshake).
    pub(super) fn link_down(&mut self, link: (u32, u32), reason: &CloseReason) {
        let now = self.now;
        let Some(e) = self
            .links
            .slab
            .get_mut(link.0 as usize)
            .filter(|e| e.generation == link.1)
        else {
            return;
        };
        e.io = LinkIo::Idle;
        let (next, retry) = match e.link.state() {
            LinkState::Stopped { .. } => (Next::Stop, 0),
            LinkState::Up { .. } => match reason {
                CloseReason::Peer { code, .. } if *code == ErrorCode::SHUTTING_DOWN.0 => {
                    (e.link.sent_away(now, &reason.to_string()), 1)
                }
                _ => (e.link.lost(now, &reason.to_string()), 1),
            },
            _ => {
                let error = format!("{}: {reason}", e.link.url());
                ShardMetrics::add(&self.metrics.link_failures, 1);
                (e.link.failed(now, error, &mut self.links.rng), 0)
            }
        };
        if !matches!(next, Next::Stop) {
            ShardMetrics::add(&self.metrics.retries[retry], 1);
        }
        self.link_next(link.0, next);
    }

    /// Run the link timers due at `now`: an attempt that took too long fails, a wait ends.
    pub(super) fn run_link_timers(&mut self, now: Instant) -> bool {
        let mut any = false;
        let now_tick = self.timers.tick(now);
        // Each turn pops one entry: bounded by the heap's size.
        while let Some(&Reverse((t, index, generation))) = self.links.timers.peek() {
            if t > now_tick {
                break;
            }
            self.links.timers.pop();
            let Some(e) = self.links.live(index, generation) else {
                continue;
            };
            if e.timer != Some(t) {
                continue;
            }
            e.timer = None;
            any = true;
            match e.io {
                LinkIo::Idle => {
                    let next = e.link.begin(now);
                    self.link_next(index, next);
                }
                LinkIo::Connecting { .. } => {
                    // Its completion (cancelled) fails the attempt.
                    let sqe = opcode::AsyncCancel::new(ud(Op::Connect, index, generation))
                        .build()
                        .user_data(ud(Op::Cancel, index, generation));
                    self.ring.push(sqe);
                }
                LinkIo::Installing { .. } => {}
                LinkIo::ShmOffer { .. } => {
                    // Its completion (cancelled) fails the attempt.
                    let sqe = opcode::AsyncCancel::new(ud(Op::ShmOffer, index, generation))
                        .build()
                        .user_data(ud(Op::Cancel, index, generation));
                    self.ring.push(sqe);
                }
                LinkIo::Quic { listener, handle } => {
                    e.io = LinkIo::Idle;
                    let url = e.link.url().clone();
                    self.quic_link_abandon(listener, handle);
                    self.link_failed(index, format!("{url}: QUIC handshake timed out"));
                }
                LinkIo::Conn {
                    slot,
                    generation: g,
                } => {
                    // The handshake did not finish in time; once connected, the timer is the
                    // next probe of a better URL.
                    match self.conns.live(slot, g) {
                        Some(c) if !c.connected => {
                            c.proto.handle_eof(now);
                            self.mark(slot);
                        }
                        Some(_) => self.probe_timer(index),
                        None => {}
                    }
                }
            }
        }
        any
    }
}
