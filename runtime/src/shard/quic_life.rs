//! A QUIC connection's life on the shard: its events (the first bidirectional stream opening
//! the Valkyrie connection, the peer's unidirectional streams, the handshake confirmed, the
//! connection lost), its close once the Valkyrie connection ends, and QUIC's part of the
//! shard's stop.

use std::cmp::Reverse;

use bytes::Bytes;
use quinn_proto::{Dir, Event, StreamEvent, VarInt};

use super::Shard;
use super::quic::{CLOSED, FINISH_GRACE, MAX_UNI_STREAMS};
use crate::conn::{Io, QuicIo};
use crate::uring::{Op, ud};

impl Shard {
    pub(super) fn quic_event(&mut self, li: u8, h: u32, ev: Event) {
        match ev {
            Event::Stream(StreamEvent::Opened { dir: Dir::Bi }) => self.quic_streams_opened(li, h),
            Event::Stream(StreamEvent::Opened { dir: Dir::Uni }) => self.quic_uni_opened(li, h),
            Event::Stream(StreamEvent::Readable { id }) => {
                if let Some(q) = self.quic.conn(li, h)
                    && let Some((slot, generation)) = q.slot
                {
                    if q.stream != Some(id)
                        && let Some(u) = q.uni.as_mut()
                        && u.inbound.contains_key(&id)
                        && !u.readable.contains(&id)
                    {
                        u.readable.push(id);
                    }
                    if self.conns.live(slot, generation).is_some() {
                        self.quic_recv(slot);
                    }
                }
            }
            Event::Stream(StreamEvent::Writable { .. }) => {
                // The first stream or one of ours: whichever it is, the flush retries what waits.
                if let Some(q) = self.quic.conn(li, h)
                    && let Some((slot, generation)) = q.slot
                    && self.conns.live(slot, generation).is_some()
                {
                    self.mark(slot);
                }
            }
            Event::Stream(StreamEvent::Finished { id }) => {
                // Everything the Valkyrie connection sent has been acknowledged.
                if let Some(q) = self.quic.conn(li, h)
                    && q.stream == Some(id)
                    && q.finished.is_some()
                {
                    q.conn
                        .close(self.now, VarInt::from_u32(CLOSED), Bytes::new());
                }
            }
            Event::Stream(StreamEvent::Stopped { id, .. }) => {
                if let Some(q) = self.quic.conn(li, h)
                    && q.stream == Some(id)
                    && let Some((slot, generation)) = q.slot
                {
                    self.quic_gone(slot, generation);
                }
            }
            Event::Connected => {
                // A link's handshake (the client endpoint's connections).
                if let Some(link) = self.quic.conn(li, h).and_then(|q| q.link) {
                    self.on_quic_link_connected(link, li, h);
                }
            }
            Event::ConnectionLost { reason } => {
                tracing::debug!(shard = self.id, error = %reason, "quic connection lost");
                if let Some(q) = self.quic.conn(li, h) {
                    if let Some(link) = q.link.take() {
                        self.on_quic_link_failed(link, reason.to_string());
                    } else if let Some((slot, generation)) = q.slot.take() {
                        self.quic_gone(slot, generation);
                    }
                }
            }
            _ => {}
        }
    }

    /// The peer opened bidirectional streams: the first carries the Valkyrie connection;
    /// others are refused (Valkyrie streams do not get QUIC streams of their own here).
    fn quic_streams_opened(&mut self, li: u8, h: u32) {
        loop {
            let Some(q) = self.quic.conn(li, h) else {
                return;
            };
            let Some(id) = q.conn.streams().accept(Dir::Bi) else {
                return;
            };
            if q.stream.is_some() || q.finished.is_some() {
                let _ = q.conn.recv_stream(id).stop(VarInt::from_u32(CLOSED));
                let _ = q.conn.send_stream(id).reset(VarInt::from_u32(CLOSED));
                continue;
            }
            q.stream = Some(id);
            let early = q.conn.is_handshaking();
            let identity = peer_identity(&q.conn);
            let client_auth = self.quic.listeners[li as usize].client_auth;
            let endpoint = self.quic.listeners[li as usize].node_endpoint;
            // A listener that requires certificates reads nothing before the handshake has
            // proved the client's (a resumed session may not carry it).
            let hold_early = early && client_auth && identity.is_none();
            let io = Io::Quic(Box::new(QuicIo::new(li, h, early, hold_early)));
            let slot = self.add_quic_conn(io, endpoint, identity);
            let generation = self.conns.get(slot).map_or(0, |c| c.generation);
            if let Some(q) = self.quic.conn(li, h) {
                q.slot = Some((slot, generation));
            }
            self.quic_recv(slot);
        }
    }

    /// The peer opened unidirectional streams: Valkyrie streams of their own, read frame by
    /// frame (stopped when the connection did not agree to them).
    fn quic_uni_opened(&mut self, li: u8, h: u32) {
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        while let Some(id) = q.conn.streams().accept(Dir::Uni) {
            match q.uni.as_mut() {
                Some(u) if u.inbound.len() < MAX_UNI_STREAMS => {
                    u.inbound.insert(id, Default::default());
                    u.readable.push(id);
                }
                _ => {
                    let _ = q.conn.recv_stream(id).stop(VarInt::from_u32(CLOSED));
                }
            }
        }
        // A new stream may hold data already (quinn says so with `Opened`, not `Readable`).
        if let Some((slot, generation)) = q.slot
            && self.conns.live(slot, generation).is_some()
        {
            self.quic_recv(slot);
        }
    }

    /// The handshake is confirmed: the Valkyrie connection's input is no longer early data.
    pub(super) fn quic_confirmed(&mut self, li: u8, h: u32) {
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        let identity = peer_identity(&q.conn);
        let Some((slot, generation)) = q.slot else {
            return;
        };
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        if let Io::Quic(qi) = &mut c.io
            && qi.early
        {
            qi.early = false;
            c.proto.set_early_data(false);
            if let Some(id) = identity {
                c.proto.set_transport_identity(id);
            }
            self.quic_recv(slot);
        }
    }

    /// The QUIC side of a Valkyrie connection ended (lost, stopped, drained): the Valkyrie
    /// connection sees the end of its stream.
    pub(super) fn quic_gone(&mut self, slot: u32, generation: u32) {
        let now = self.now;
        if let Some(c) = self.conns.live(slot, generation) {
            c.proto.handle_eof(now);
            // Nothing more reaches the peer: a frame the stream held back goes with it.
            if let Io::Quic(qi) = &mut c.io {
                qi.pending = None;
                qi.blocked_since = None;
            }
            self.mark(slot);
        }
    }

    /// The Valkyrie connection on `qi` is closing: finish its stream (what was written is
    /// still delivered), close the QUIC connection once the peer acknowledged it all.
    pub(super) fn quic_close(&mut self, li: u8, h: u32) {
        let now = self.now;
        if let Some(q) = self.quic.conn(li, h) {
            q.slot = None;
            q.finished = Some(now);
            match q.stream {
                Some(id) => {
                    let _ = q.conn.recv_stream(id).stop(VarInt::from_u32(CLOSED));
                    if q.conn.send_stream(id).finish().is_err() {
                        q.conn.close(now, VarInt::from_u32(CLOSED), Bytes::new());
                    }
                }
                None => q.conn.close(now, VarInt::from_u32(CLOSED), Bytes::new()),
            }
            // Wake up for the grace period's end if nothing else happens.
            let at = now + FINISH_GRACE;
            self.quic.timers.push(Reverse((at, li, h)));
            if let Some(q) = self.quic.conn(li, h) {
                q.timer = Some(at).min(q.timer.or(Some(at)));
            }
            self.quic.mark(li, h);
        }
    }

    /// Stop QUIC at shutdown: close every connection (the peers are told now) and cancel
    /// the receives.
    pub(super) fn stop_quic(&mut self) {
        for li in 0..self.quic.listeners.len() {
            let handles: Vec<u32> = self.quic.listeners[li]
                .conns
                .iter()
                .enumerate()
                .filter_map(|(h, c)| c.as_ref().map(|_| h as u32))
                .collect();
            for h in handles {
                if let Some(q) = self.quic.conn(li as u8, h) {
                    q.conn.close(
                        self.now,
                        VarInt::from_u32(CLOSED),
                        Bytes::from_static(b"going away"),
                    );
                }
                self.quic_transmit(li as u8, h);
            }
            if self.quic.listeners[li].armed {
                let e = io_uring::opcode::AsyncCancel::new(ud(Op::UdpRecv, li as u32, 0))
                    .build()
                    .user_data(ud(Op::Cancel, 0, 0));
                self.ring.push(e);
            }
        }
    }
}

/// The verified identity of the peer's certificate (a client's, if it presented one; a
/// server's always).
pub(super) fn peer_identity(conn: &quinn_proto::Connection) -> Option<String> {
    let any = conn.crypto_session().peer_identity()?;
    let certs = any
        .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
        .ok()?;
    valkyrie_protocol::security::mtls::certificate_identity(certs.first()?)
}
