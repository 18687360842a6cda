//! A shard's QUIC: one UDP socket and one `quinn-proto` endpoint per `quic://` listener,
//! driven by the shard's own ring — a multishot `recvmsg` into provided 64 KiB buffers (GRO
//! coalesces a burst into one), `sendmsg` with `UDP_SEGMENT` for a batch (GSO, off for good
//! after the kernel refuses it with `EIO`), ECN both ways.
//!
//! A datagram whose connection id another shard issued (`quic::cid`) is forwarded to that
//! shard over the mesh before any endpoint sees it. New handshakes are admitted like
//! accepted sockets (refused at the connection limit and while draining); while many are
//! half-open, a client whose address is not yet validated is sent a Retry first.
//!
//! A QUIC connection becomes a Valkyrie connection when its first bidirectional stream
//! opens; that stream's bytes go through `quic_stream.rs` (the datagrams themselves through
//! `quic_udp.rs`). The Valkyrie connection's end
//! finishes the stream; the QUIC connection closes once the peer has it all (or after
//! [`FINISH_GRACE`]) and leaves the endpoint once drained.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use quinn_proto::{
    ConnectionHandle, DatagramEvent, EcnCodepoint, Endpoint, EndpointConfig, StreamId, VarInt,
};

use super::Shard;
use crate::mesh::MeshMsg;
use crate::metrics::ShardMetrics;
use crate::quic::cid::{self, CidKey, ShardCids};
use crate::quic::udp::{RecvHeader, UdpSend};
use crate::uring::BufRing;

/// The transport index of QUIC connections (see `metrics::TRANSPORTS`).
pub(super) const QUIC: u8 = 4;
/// The provided-buffer group of the UDP receives (group 0 is the stream sockets').
pub(super) const UDP_BGID: u16 = 1;
/// Each receive buffer: a GRO burst of up to 64 KiB, with the header, address and control
/// messages in front.
pub(super) const UDP_BUF: u32 = 65_536 + 512;
/// Receive buffers per shard.
pub(super) const UDP_BUFS: u16 = 32;
/// Sends a shard has in the kernel at once; a connection with more to send waits for one.
pub(super) const MAX_SENDS: usize = 128;
/// Half-open handshakes on a listener above which new clients are asked to prove their
/// address (Retry) before the node spends a handshake on them.
const RETRY_ABOVE: usize = 256;
/// How long a finished stream waits for the peer's acknowledgement before the QUIC
/// connection closes anyway.
pub(super) const FINISH_GRACE: Duration = Duration::from_secs(2);
/// The application close code when the Valkyrie connection ended (QUIC's "no error").
pub(super) const CLOSED: u32 = 0;
/// Unidirectional streams a peer may have open at once (Valkyrie streams of their own).
pub(super) const MAX_UNI_STREAMS: usize = crate::quic::MAX_UNI_STREAMS as usize;

/// One QUIC connection in a listener's endpoint.
pub(super) struct QConn {
    pub(super) conn: quinn_proto::Connection,
    /// The Valkyrie connection on its first stream (slot, generation), once it opened.
    pub(super) slot: Option<(u32, u32)>,
    pub(super) stream: Option<StreamId>,
    /// In the shard's list of connections to drive this turn.
    pub(super) dirty: bool,
    /// Its timer as last scheduled.
    pub(super) timer: Option<Instant>,
    /// Counted among the listener's half-open handshakes.
    pub(super) half_open: bool,
    /// The Valkyrie connection ended and its stream was finished at this time.
    pub(super) finished: Option<Instant>,
    /// Valkyrie streams on QUIC streams of their own (once both sides agreed).
    pub(super) uni: Option<Box<UniStreams>>,
    /// The link (index, generation) whose attempt this is, until its handshake ends
    /// (connections of the shard's client endpoint, `quic_link.rs`).
    pub(super) link: Option<(u32, u32)>,
}

/// A connection's Valkyrie streams on unidirectional QUIC streams (docs/PROTOCOL.md §6.7):
/// each side sends a Valkyrie stream's frames on a QUIC stream it opens for it, so a lost
/// packet of one stream holds back no other.
#[derive(Default)]
pub(super) struct UniStreams {
    /// Our QUIC stream for each Valkyrie stream we send on (`None`: on the first stream, as
    /// no other could be opened when it began).
    pub(super) out: std::collections::HashMap<u32, Option<StreamId>>,
    /// Frames a QUIC stream's flow control holds back (written from their offset), in order.
    pub(super) pending: std::collections::HashMap<
        StreamId,
        std::collections::VecDeque<(valkyrie_protocol::Transmit, usize)>,
    >,
    /// How many frames wait there (bounded: past it, nothing more is taken from the protocol).
    pub(super) pending_frames: usize,
    /// The peer's QUIC streams: each one's frame in progress.
    pub(super) inbound:
        std::collections::HashMap<StreamId, valkyrie_protocol::splitter::FrameSplitter>,
    /// The peer's streams with bytes to read.
    pub(super) readable: Vec<StreamId>,
}

impl QConn {
    /// A connection the endpoint just made: `half_open` for an accepted one (counted until
    /// its handshake ends), `link` for a link's attempt.
    pub(super) fn new(
        conn: quinn_proto::Connection,
        half_open: bool,
        link: Option<(u32, u32)>,
    ) -> Box<QConn> {
        Box::new(QConn {
            conn,
            slot: None,
            stream: None,
            dirty: false,
            timer: None,
            half_open,
            finished: None,
            uni: None,
            link,
        })
    }
}

/// One `quic://` listener of a shard.
pub(super) struct QuicListener {
    pub(super) fd: OwnedFd,
    pub(super) endpoint: Endpoint,
    pub(super) hdr: RecvHeader,
    pub(super) armed: bool,
    /// Connections by handle (the endpoint's own index).
    pub(super) conns: Vec<Option<Box<QConn>>>,
    pub(super) half_open: usize,
    /// Whether the listener asks clients for certificates (its TLS has a client CA): their
    /// early data then waits for the handshake, which proves the identity.
    pub(super) client_auth: bool,
    /// The node endpoint it serves (its index in `Node::endpoints`).
    pub(super) node_endpoint: u8,
    /// Whether new connections are admitted (`Node::close_listener` refuses them, with
    /// CONNECTION_REFUSED, while the socket stays for the connections being sent away).
    pub(super) accepting: bool,
}

impl QuicListener {
    /// Shard `shard`'s endpoint on `s.fd`: connection ids that name the shard (keyed by
    /// `key`), `s.server` to accept with (`None`: a client endpoint, which accepts nothing).
    pub(super) fn new(shard: usize, key: &CidKey, s: QuicSetup) -> QuicListener {
        let k = key.clone();
        let mut ec = EndpointConfig::default();
        ec.cid_generator(move || Box::new(ShardCids::new(shard, k.clone())));
        let accepting = s.server.is_some();
        QuicListener {
            fd: s.fd,
            endpoint: Endpoint::new(Arc::new(ec), s.server, true, None),
            hdr: RecvHeader::new(),
            armed: false,
            conns: Vec::new(),
            half_open: 0,
            client_auth: s.client_auth,
            node_endpoint: s.endpoint,
            accepting,
        }
    }
}

/// A shard's QUIC state.
pub(super) struct Quic {
    pub(super) listeners: Vec<QuicListener>,
    pub(super) bufs: Option<BufRing>,
    pub(super) key: CidKey,
    /// Connections to drive at the end of the turn (listener, handle).
    pub(super) dirty: Vec<(u8, u32)>,
    pub(super) timers: BinaryHeap<Reverse<(Instant, u8, u32)>>,
    /// Boxed: the kernel reads a send's header and bytes in place while the vector grows.
    #[allow(clippy::vec_box)]
    pub(super) sends: Vec<Box<UdpSend>>,
    pub(super) free_sends: Vec<u32>,
    /// Connections that had datagrams to send when every send was in the kernel.
    pub(super) starved: Vec<(u8, u32)>,
    pub(super) gso: bool,
    /// What a send holds while in flight: its index's segment size (for the EIO fallback).
    pub(super) send_segmented: Vec<bool>,
    pub(super) scratch: Vec<u8>,
    /// The client endpoints of the shard's QUIC links (IPv4, IPv6): their index among the
    /// listeners, made on first use.
    pub(super) clients: [Option<u8>; 2],
    /// The protocol configuration QUIC connections use (the node's, offering
    /// `quic_streams`), and the node's it was made from.
    pub(super) protocol: Option<(
        Arc<valkyrie_protocol::Config>,
        Arc<valkyrie_protocol::Config>,
    )>,
}

/// A listener for a shard: its socket and the configuration of its handshakes.
pub(crate) struct QuicSetup {
    pub(crate) fd: OwnedFd,
    /// `None`: a client endpoint (the shard's QUIC links).
    pub(crate) server: Option<Arc<quinn_proto::ServerConfig>>,
    pub(crate) client_auth: bool,
    /// The node endpoint (its index in `Node::endpoints`).
    pub(crate) endpoint: u8,
}

impl Quic {
    pub(super) fn new(shard: usize, setups: Vec<QuicSetup>, key: CidKey) -> Quic {
        let listeners = setups
            .into_iter()
            .map(|s| QuicListener::new(shard, &key, s))
            .collect();
        Quic {
            listeners,
            bufs: None,
            key,
            dirty: Vec::new(),
            timers: BinaryHeap::new(),
            sends: Vec::new(),
            free_sends: Vec::new(),
            starved: Vec::new(),
            gso: true,
            send_segmented: Vec::new(),
            scratch: Vec::new(),
            clients: [None, None],
            protocol: None,
        }
    }

    /// The earliest QUIC timer.
    pub(super) fn next_timer(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Whether the kernel still holds anything of QUIC's (a receive armed, a send).
    pub(super) fn in_kernel(&self) -> bool {
        self.listeners.iter().any(|l| l.armed) || self.free_sends.len() < self.sends.len()
    }

    pub(super) fn conn(&mut self, li: u8, h: u32) -> Option<&mut QConn> {
        qconn(&mut self.listeners, li, h)
    }

    pub(super) fn mark(&mut self, li: u8, h: u32) {
        if let Some(q) = self.conn(li, h)
            && !q.dirty
        {
            q.dirty = true;
            self.dirty.push((li, h));
        }
    }
}

impl Shard {
    /// One datagram: forwarded to the shard that issued its connection id, or handled here.
    pub(super) fn quic_datagram(
        &mut self,
        li: u8,
        from: SocketAddr,
        ecn: Option<EcnCodepoint>,
        data: BytesMut,
        may_forward: bool,
    ) {
        if may_forward
            && let Some(owner) = cid::route(&self.quic.key, &data)
            && owner != self.id
        {
            if self.mesh.reaches(owner) {
                let endpoint = self
                    .quic
                    .listeners
                    .get(li as usize)
                    .map_or(crate::conn::NO_ENDPOINT, |l| l.node_endpoint);
                let msg = MeshMsg::Datagram(Box::new(crate::mesh::Forwarded {
                    endpoint,
                    from,
                    ecn: ecn.map(|e| e as u8),
                    data,
                }));
                match self.mesh.push(owner, msg) {
                    Ok(()) => ShardMetrics::add(&self.metrics.quic_forwarded, 1),
                    // A full ring drops the datagram, as a full socket buffer would: QUIC
                    // sends it again.
                    Err(_) => ShardMetrics::add(&self.metrics.quic_dropped, 1),
                }
            }
            return;
        }
        let now = self.now;
        let mut buf = std::mem::take(&mut self.quic.scratch);
        buf.clear();
        let Some(l) = self.quic.listeners.get_mut(li as usize) else {
            return;
        };
        let ev = l.endpoint.handle(now, from, None, ecn, data, &mut buf);
        match ev {
            Some(DatagramEvent::ConnectionEvent(h, e)) => {
                if let Some(Some(q)) = l.conns.get_mut(h.0) {
                    q.conn.handle_event(e);
                    self.quic.mark(li, h.0 as u32);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.quic_incoming(li, incoming, buf),
            Some(DatagramEvent::Response(t)) => {
                self.udp_send(li, t, &buf);
            }
            None => {}
        }
        if self.quic.scratch.capacity() == 0 {
            self.quic.scratch = Vec::with_capacity(1500);
        }
    }

    /// A client's first packet: admitted, asked to prove its address, or refused.
    fn quic_incoming(&mut self, li: u8, incoming: quinn_proto::Incoming, mut buf: Vec<u8>) {
        let full = self.conns.len() >= self.cfg.max_connections_per_shard;
        let draining = self.shutdown_deadline.is_some();
        let Some(l) = self.quic.listeners.get_mut(li as usize) else {
            return;
        };
        buf.clear();
        if full || draining || !l.accepting {
            ShardMetrics::add(&self.metrics.connections_refused, 1);
            let t = l.endpoint.refuse(incoming, &mut buf);
            self.udp_send(li, t, &buf);
            return;
        }
        if l.half_open >= RETRY_ABOVE && !incoming.remote_address_validated() {
            if incoming.may_retry() {
                match l.endpoint.retry(incoming, &mut buf) {
                    Ok(t) => {
                        ShardMetrics::add(&self.metrics.quic_retries, 1);
                        self.udp_send(li, t, &buf);
                    }
                    Err(e) => l.endpoint.ignore(e.into_incoming()),
                }
            } else {
                l.endpoint.ignore(incoming);
            }
            return;
        }
        match l.endpoint.accept(incoming, self.now, &mut buf, None) {
            Ok((h, conn)) => {
                ShardMetrics::add(&self.metrics.connections_accepted, 1);
                if l.conns.len() <= h.0 {
                    l.conns.resize_with(h.0 + 1, || None);
                }
                l.conns[h.0] = Some(QConn::new(conn, true, None));
                l.half_open += 1;
                self.quic.mark(li, h.0 as u32);
            }
            Err(e) => {
                if let Some(t) = e.response {
                    self.udp_send(li, t, &buf);
                }
            }
        }
    }

    /// Fire the QUIC timers that are due.
    pub(super) fn run_quic_timers(&mut self) -> bool {
        let mut any = false;
        while let Some(Reverse((t, li, h))) = self.quic.timers.peek().copied() {
            if t > self.now {
                break;
            }
            self.quic.timers.pop();
            if self.quic.conn(li, h).is_some_and(|q| q.timer == Some(t)) {
                if let Some(q) = self.quic.conn(li, h) {
                    q.timer = None;
                    q.conn.handle_timeout(self.now);
                }
                self.quic.mark(li, h);
                any = true;
            }
        }
        any
    }

    /// Drive every QUIC connection that something happened to. Returns whether any was.
    pub(super) fn drive_quic(&mut self) -> bool {
        if self.quic.dirty.is_empty() {
            return false;
        }
        // Driving marks Valkyrie connections, never QUIC ones: one pass takes them all.
        let dirty = std::mem::take(&mut self.quic.dirty);
        for &(li, h) in &dirty {
            if let Some(q) = self.quic.conn(li, h) {
                q.dirty = false;
            }
            self.drive_qconn(li, h);
        }
        let mut dirty = dirty;
        dirty.clear();
        if self.quic.dirty.is_empty() {
            self.quic.dirty = dirty;
        }
        true
    }

    fn drive_qconn(&mut self, li: u8, h: u32) {
        let now = self.now;
        let Some(l) = self.quic.listeners.get_mut(li as usize) else {
            return;
        };
        let Some(Some(q)) = l.conns.get_mut(h as usize) else {
            return;
        };
        while let Some(ev) = q.conn.poll_endpoint_events() {
            if let Some(back) = l.endpoint.handle_event(ConnectionHandle(h as usize), ev) {
                q.conn.handle_event(back);
            }
        }
        if let Some(at) = q.finished
            && now.saturating_duration_since(at) >= FINISH_GRACE
            && !q.conn.is_closed()
        {
            q.conn.close(now, VarInt::from_u32(CLOSED), Bytes::new());
        }
        let mut events = Vec::new();
        while let Some(ev) = q.conn.poll() {
            events.push(ev);
        }
        for ev in events {
            self.quic_event(li, h, ev);
        }
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        if q.half_open && !q.conn.is_handshaking() {
            q.half_open = false;
            if let Some(l) = self.quic.listeners.get_mut(li as usize) {
                l.half_open -= 1;
            }
            self.quic_confirmed(li, h);
        }
        self.quic_transmit(li, h);
        let Some(q) = qconn(&mut self.quic.listeners, li, h) else {
            return;
        };
        let next = q.conn.poll_timeout();
        if next != q.timer {
            q.timer = next;
            if let Some(t) = next {
                self.quic.timers.push(Reverse((t, li, h)));
            }
        }
        if q.conn.is_drained() {
            let slot = q.slot.take();
            let half_open = q.half_open;
            // The endpoint forgot it when it drained (its `Drained` event above).
            if let Some(l) = self.quic.listeners.get_mut(li as usize) {
                l.conns[h as usize] = None;
                if half_open {
                    l.half_open -= 1;
                }
            }
            if let Some((slot, generation)) = slot {
                self.quic_gone(slot, generation);
            }
        }
    }
}

/// Connection `h` of listener `li` (a function of the list alone, for code that holds other
/// parts of the shard's QUIC state borrowed).
pub(super) fn qconn(listeners: &mut [QuicListener], li: u8, h: u32) -> Option<&mut QConn> {
    listeners
        .get_mut(li as usize)?
        .conns
        .get_mut(h as usize)?
        .as_deref_mut()
}
