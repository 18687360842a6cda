//! Listeners and admission: multishot accept into direct descriptors (one accept at a time,
//! with the peer's address, when intrusion detection needs it), the shared-memory rendezvous,
//! pausing accepts when the direct-descriptor table is nearly full and resuming when it
//! drains, and admitting or refusing each new connection (connection limit, shutdown, ban).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use io_uring::{cqueue, opcode, types};
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::security::mtls::TlsSession;
use valkyrie_protocol::{Connection, ErrorCode, Frame, MessageType, Side};
use valkyrie_shm::ShmStream;

use super::Shard;
use crate::audit::AuditEvent;
use crate::conn::recv::Recv;
use crate::conn::send::SendState;
use crate::conn::{Conn, Extra, Io, Life, ShmIo, Socket};
use crate::metrics::ShardMetrics;
use crate::uring::{Op, ud};

/// The CLOSE a draining node sends every connection: reconnect elsewhere at once, and send
/// again what it did not answer.
pub(super) const GOING_AWAY: ErrorCode = ErrorCode::SHUTTING_DOWN;
/// Its reason.
pub(super) const GOING_AWAY_REASON: &str = "going away";

/// Why a new connection gets an ERROR and a close instead of service.
pub(super) enum Refusal<'a> {
    /// The shard holds its connection limit (501).
    Limit,
    /// Intrusion detection bans its address (702, with the reason).
    Banned(&'a str),
    /// The node drains (502 "going away": connect again, elsewhere).
    GoingAway,
    /// A Valkyrie frame in the clear on a listener that requires TLS (200).
    SecurityRequired,
}

/// The transport index of shared-memory listeners and connections (see `metrics::TRANSPORTS`).
pub(super) const SHM: u8 = 2;
/// The transport index of TCP.
const TCP: u8 = 0;
/// Connections a readable rendezvous socket is accepted for per event.
const SHM_ACCEPT_BATCH: usize = 64;

/// One listening socket.
pub(super) struct Listener {
    /// `None` once closed (the node drains: new connections go to the other listeners of
    /// its `SO_REUSEPORT` group, such as a node started to replace this one).
    pub(super) fd: Option<OwnedFd>,
    pub(super) transport: u8,
    /// The node endpoint it serves (its index in `Node::endpoints`).
    pub(super) endpoint: u8,
    pub(super) armed: bool,
    /// Peer address of the single-shot accept used when intrusion detection is on (the
    /// kernel writes it; it does not move while the accept is armed).
    addr: Box<(libc::sockaddr_storage, libc::socklen_t)>,
}

impl Listener {
    pub(super) fn new(fd: OwnedFd, transport: u8, endpoint: u8) -> Listener {
        Listener {
            fd: Some(fd),
            transport,
            endpoint,
            armed: false,
            addr: Box::new((crate::sys::sockaddr_storage(), 0)),
        }
    }

    /// The op its accept is armed as.
    pub(super) fn accept_op(&self) -> Op {
        if self.transport == SHM {
            Op::ShmAccept
        } else {
            Op::Accept
        }
    }
}

/// A shard's listeners and the direct-descriptor table they fill.
pub(super) struct Listeners {
    pub(super) list: Vec<Listener>,
    /// Accepts are cancelled until the table drains.
    pub(super) paused: bool,
    table_size: u32,
    table_used: u32,
}

impl Listeners {
    pub(super) fn new(fds: Vec<(OwnedFd, u8, u8)>, table_size: u32) -> Listeners {
        Listeners {
            list: fds
                .into_iter()
                .map(|(fd, transport, endpoint)| Listener::new(fd, transport, endpoint))
                .collect(),
            paused: false,
            table_size,
            table_used: 0,
        }
    }

    /// The node endpoint listener `li` serves.
    pub(super) fn endpoint(&self, li: usize) -> u8 {
        self.list.get(li).map_or(u8::MAX, |l| l.endpoint)
    }

    /// A direct descriptor was released.
    pub(super) fn slot_freed(&mut self) {
        debug_assert!(self.table_used > 0, "more descriptors freed than taken");
        self.table_used = self.table_used.saturating_sub(1);
    }

    /// A direct descriptor was taken (an outbound connection): whether the table is now so
    /// full that accepting must pause.
    pub(super) fn slot_taken(&mut self) -> bool {
        self.table_used += 1;
        self.table_used + 1 >= self.table_size
    }

    /// Paused, and a tenth of the table is free again.
    fn may_resume(&self) -> bool {
        self.paused && u64::from(self.table_used) * 10 < u64::from(self.table_size) * 9
    }
}

impl Shard {
    pub(super) fn arm_accepts(&mut self) {
        let guarded = self.guard.is_some();
        for i in 0..self.listeners.list.len() {
            let l = &mut self.listeners.list[i];
            if l.armed {
                continue;
            }
            let Some(fd) = l.fd.as_ref().map(|f| f.as_raw_fd()) else {
                continue;
            };
            let e = if l.transport == SHM {
                // A shared-memory connection needs its segment sent over the accepted
                // socket: wait for readiness and accept in the loop.
                opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(ud(Op::ShmAccept, i as u32, 0))
            } else if guarded && l.transport == TCP {
                // Intrusion detection needs each peer's address: one accept at a time,
                // with an address buffer, still into the direct-descriptor table.
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
            l.armed = true;
            self.ring.push(e);
        }
    }

    /// Stop accepting (the table is nearly full, or the shard shuts down): connections wait
    /// in the listen backlog.
    pub(super) fn pause_accepts(&mut self) {
        if self.listeners.paused {
            return;
        }
        self.listeners.paused = true;
        ShardMetrics::add(&self.metrics.accept_paused, 1);
        for i in 0..self.listeners.list.len() {
            let l = &self.listeners.list[i];
            if l.armed {
                let e = opcode::AsyncCancel::new(ud(l.accept_op(), i as u32, 0))
                    .build()
                    .user_data(ud(Op::Cancel, 0, 0));
                self.ring.push(e);
            }
        }
    }

    /// Close every listening socket (the node drains): the kernel sends new connections to
    /// the other sockets of each `SO_REUSEPORT` group, and, with
    /// `net.ipv4.tcp_migrate_req = 1`, moves those already queued here to them too (without
    /// it, the kernel resets them). A socket closes once its cancelled accept has ended.
    pub(super) fn close_listeners(&mut self) {
        self.pause_accepts();
        for l in &mut self.listeners.list {
            l.fd = None;
        }
        if !crate::sys::tcp_migrate_req() {
            tracing::warn!(
                shard = self.id,
                "net.ipv4.tcp_migrate_req is 0: connections queued on this node's listeners when it drains are reset, not moved to the node that replaces it"
            );
        }
    }

    /// Accept again once the table has drained (not while shutting down).
    pub(super) fn maybe_resume_accepts(&mut self) {
        if self.listeners.may_resume() && self.shutdown_deadline.is_none() {
            self.listeners.paused = false;
            self.arm_accepts();
        }
    }

    /// Re-arm a listener whose accept ended, unless accepting is paused or the shard stops.
    fn rearm_accept(&mut self, li: usize, more: bool) {
        if !more {
            if let Some(l) = self.listeners.list.get_mut(li) {
                l.armed = false;
            }
            if !self.listeners.paused && self.shutdown_deadline.is_none() {
                self.arm_accepts();
            }
        }
    }

    pub(super) fn on_accept(&mut self, li: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
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
            self.rearm_accept(li, more);
            return;
        }
        let fixed = res as u32;
        let transport = self.listeners.list.get(li).map_or(TCP, |l| l.transport);
        let full = self.listeners.slot_taken();
        let ip = match (&self.guard, self.listeners.list.get(li)) {
            (Some(_), Some(l)) if transport == TCP => crate::sys::peer_ip(&l.addr.0),
            _ => None,
        };
        let banned = ip.and_then(|ip| self.admission_verdict(ip));
        let endpoint = self.listeners.endpoint(li);
        self.add_conn(fixed, (transport, endpoint), None, ip, banned);
        if full {
            self.pause_accepts();
        }
        self.rearm_accept(li, more);
    }

    /// Whether intrusion detection refuses `ip` now: the reason, audited, when it does.
    fn admission_verdict(&mut self, ip: IpAddr) -> Option<String> {
        // A ban another shard decided is in our mesh ring before its ERROR left that shard:
        // apply it before judging this connection.
        self.drain_mesh();
        let reason = match self.guard.as_mut()?.check(ip, self.now) {
            crate::guard::Verdict::Allow => return None,
            crate::guard::Verdict::Throttled(d) => {
                ShardMetrics::add(&self.metrics.guard_refused_throttled, 1);
                format!(
                    "too many failures from {ip}: throttled, retry in {} ms",
                    d.as_millis()
                )
            }
            crate::guard::Verdict::Banned(d) => {
                ShardMetrics::add(&self.metrics.guard_refused_banned, 1);
                format!("{ip} is banned for {} s more", d.as_secs().max(1))
            }
        };
        self.audit(
            serde_json::json!({"event": AuditEvent::Refused.as_str(), "peer": ip.to_string(),
            "code": ErrorCode::BANNED.0, "reason": reason}),
        );
        Some(reason)
    }

    /// The shared-memory rendezvous socket is readable: accept what is waiting (bounded per
    /// event) and hand each connector its segment.
    pub(super) fn on_shm_accept(&mut self, li: usize, res: i32, flags: u32) {
        let more = cqueue::more(flags);
        if res >= 0 {
            for _ in 0..SHM_ACCEPT_BATCH {
                let Some(sock) = self
                    .listeners
                    .list
                    .get(li)
                    .and_then(|l| l.fd.as_ref())
                    .and_then(crate::sys::accept_unix)
                else {
                    break;
                };
                match ShmStream::serve(sock, &self.cfg.shm) {
                    Ok(stream) => {
                        let io = Io::Shm(Box::new(ShmIo::new(stream)));
                        let endpoint = self.listeners.endpoint(li);
                        self.add_conn(u32::MAX, (SHM, endpoint), Some(io), None, None);
                    }
                    Err(e) => tracing::debug!(shard = self.id, error = %e, "shm rendezvous failed"),
                }
            }
        }
        self.rearm_accept(li, more);
    }

    /// A Valkyrie connection on a QUIC connection's first stream (`io`), its client's
    /// certificate identity when it presented one. Returns its slot (the caller reads the
    /// stream).
    pub(super) fn add_quic_conn(&mut self, io: Io, endpoint: u8, identity: Option<String>) -> u32 {
        let slot = self.add_conn(
            u32::MAX,
            (super::quic::QUIC, endpoint),
            Some(io),
            None,
            None,
        );
        if let Some(id) = identity
            && let Some(c) = self.conns.get_mut(slot)
        {
            c.proto.set_transport_identity(id);
        }
        if let Some(c) = self.conns.get_mut(slot)
            && let Io::Quic(q) = &c.io
            && q.early
        {
            c.proto.set_early_data(true);
        }
        slot
    }

    /// Register an accepted connection (a socket in direct-descriptor slot `fixed`, or the
    /// given shared-memory or QUIC `io`), with its transport and the node endpoint it came
    /// through: refused with ERROR 501 at the limit or while shutting down (702 when banned),
    /// otherwise armed for input. Returns its slot.
    fn add_conn(
        &mut self,
        fixed: u32,
        (transport, endpoint): (u8, u8),
        io: Option<Io>,
        ip: Option<IpAddr>,
        banned: Option<String>,
    ) -> u32 {
        ShardMetrics::add(&self.metrics.connections_accepted, 1);
        // Accepted while the node drains (it was queued before the listeners closed): told to
        // go away (ERROR 502) before its handshake, so that its client connects again, to the
        // node that replaces this one.
        let going_away = self.shutdown_deadline.is_some();
        let mut refused = self.conns.len() >= self.cfg.max_connections_per_shard
            || banned.is_some()
            || going_away;
        let protocol = if transport == super::quic::QUIC {
            self.quic_protocol()
        } else {
            self.cfg.protocol.clone()
        };
        let proto = Connection::new(Side::Server, protocol, self.now, self.unix_now());
        let io = match io {
            Some(io) => io,
            None => {
                let tls = match &self.cfg.tls {
                    Some(cfg) if transport == TCP && !refused => {
                        match TlsSession::server(cfg.clone()) {
                            Ok(t) => Some(Box::new(t)),
                            Err(e) => {
                                // Never serve a TLS listener's connection in plaintext.
                                tracing::warn!(shard = self.id, error = %e, "tls session not created");
                                refused = true;
                                None
                            }
                        }
                    }
                    _ => None,
                };
                Io::Socket(Socket {
                    fixed,
                    recv: Recv::Armed,
                    send: SendState::Idle,
                    tls,
                })
            }
        };
        let life = if refused { Life::Refused } else { Life::Open };
        // A stream socket of a node that serves HTTP learns what it speaks from its first
        // byte (TCP without TLS, and Unix).
        // Under TLS the first byte tells a handshake from a frame sent in the clear.
        let sniffing = !refused
            && transport != SHM
            && transport != super::quic::QUIC
            && matches!(&io, Io::Socket(s) if s.tls.is_some() || self.cfg.http.enabled);
        let opened_us = self.now_us();
        let slot = self.conns.insert(|generation| Conn {
            generation,
            origin: crate::conn::origin(transport, endpoint),
            life,
            proto,
            io,
            connected: false,
            fresh: false,
            sniffing,
            opened_us,
            dirty: false,
            held: false,
            timer: None,
            extra: ip.map(|ip| {
                Box::new(Extra {
                    ip: Some(ip),
                    ..Extra::default()
                })
            }),
        });
        if refused {
            let refusal = match (&banned, going_away) {
                (Some(reason), _) => Refusal::Banned(reason),
                (None, true) => Refusal::GoingAway,
                (None, false) => Refusal::Limit,
            };
            self.refuse(slot, refusal);
            return slot;
        }
        self.metrics.connections_active[transport as usize].fetch_add(1, Ordering::Relaxed);
        match transport {
            SHM => {
                self.arm_shm_hup(slot);
                self.shm_recv(slot);
            }
            // The caller reads the stream once it knows the slot.
            super::quic::QUIC => {}
            _ => self.arm_recv(slot),
        }
        self.mark(slot);
        slot
    }

    /// Send a refused connection its ERROR (702 with the reason when banned, 502 when the
    /// node drains, else 501), then close it.
    pub(super) fn refuse(&mut self, slot: u32, refusal: Refusal<'_>) {
        let error = |code: ErrorCode, message: &str| {
            let mut v = Vec::new();
            Frame::new(
                MessageType::Error,
                0,
                ErrorPayload {
                    code: code.0,
                    message: message.to_owned(),
                }
                .to_bytes(),
            )
            .encode(&mut v);
            Bytes::from(v)
        };
        let ms = self.node.ms(self.now);
        let why = match &refusal {
            Refusal::Banned(r) => format!("banned: {r}"),
            Refusal::Limit => "at the connection limit".to_owned(),
            Refusal::GoingAway => "going away (draining)".to_owned(),
            Refusal::SecurityRequired => "a frame in the clear on a TLS listener".to_owned(),
        };
        self.metrics
            .note(ms, format!("shard {}: connection refused: {why}", self.id));
        let frame = match refusal {
            Refusal::Banned(reason) => {
                ShardMetrics::add(&self.metrics.connections_refused, 1);
                self.metrics.error_sent(ErrorCode::BANNED.0, 1);
                error(ErrorCode::BANNED, reason)
            }
            Refusal::Limit => {
                ShardMetrics::add(&self.metrics.connections_refused, 1);
                self.metrics.error_sent(ErrorCode::OVERLOADED.0, 1);
                self.refused_frame.clone()
            }
            Refusal::GoingAway => {
                self.metrics.error_sent(GOING_AWAY.0, 1);
                error(GOING_AWAY, GOING_AWAY_REASON)
            }
            Refusal::SecurityRequired => {
                self.metrics.error_sent(ErrorCode::AUTH_REQUIRED.0, 1);
                error(
                    ErrorCode::AUTH_REQUIRED,
                    "security required: this listener speaks TLS",
                )
            }
        };
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        match &mut c.io {
            Io::Shm(shm) => {
                // The frame is in the ring before the close: the peer reads it, then the close.
                let _ = shm.stream.try_send(&frame);
                self.start_close(slot);
            }
            Io::Quic(qi) => {
                // Written into the stream before it is finished: the peer reads it, then the
                // end of the stream.
                let (li, h) = (qi.listener, qi.handle);
                if let Some(q) = self.quic.conn(li, h)
                    && let Some(id) = q.stream
                {
                    let _ = q.conn.send_stream(id).write(&frame);
                }
                self.start_close(slot);
            }
            Io::Socket(_) => {
                let mut out = self.send_pool.take();
                out.buf.extend_from_slice(&frame);
                self.submit_send(slot, out);
            }
        }
    }
}
