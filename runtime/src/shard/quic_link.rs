//! Links over QUIC (`Ctx::connect` to a `quic://` URL): the shard's client endpoint — one
//! UDP socket per address family on an ephemeral port, made on first use and read like a
//! listener's (its connection ids carry the shard too) — the QUIC handshake, bounded by the
//! link's timer, and then the Valkyrie connection, client side, on the first bidirectional
//! stream it opens. `links.rs` keeps the link's state; this file does the QUIC part.

use std::net::SocketAddr;

use bytes::Bytes;
use quinn_proto::{Dir, VarInt};
use valkyrie_protocol::{Connection, Side};

use super::Shard;
use super::quic::{CLOSED, QConn, QuicListener, QuicSetup};
use crate::conn::{Io, NO_ENDPOINT, QuicIo};
use crate::link::ConnectOptions;

impl Shard {
    /// The client endpoint for `v4` or IPv6 addresses, made on first use: its index among
    /// the QUIC listeners (it accepts nothing: no server configuration).
    fn quic_client(&mut self, v4: bool) -> std::io::Result<u8> {
        let family = usize::from(!v4);
        if let Some(li) = self.quic.clients[family] {
            return Ok(li);
        }
        if self.quic.listeners.len() >= usize::from(u8::MAX) {
            return Err(std::io::Error::other(
                "too many QUIC endpoints on this shard",
            ));
        }
        self.quic_bufs()?;
        let any: SocketAddr = if v4 {
            "0.0.0.0:0".parse().expect("an address")
        } else {
            "[::]:0".parse().expect("an address")
        };
        let fd = crate::quic::udp::bind(&any, false)?;
        let li = self.quic.listeners.len() as u8;
        let setup = QuicSetup {
            fd,
            server: None,
            client_auth: false,
            endpoint: NO_ENDPOINT,
        };
        let l = QuicListener::new(self.id, &self.quic.key, setup);
        self.quic.listeners.push(l);
        self.quic.clients[family] = Some(li);
        self.arm_udp_recv(li);
        Ok(li)
    }

    /// Begin link `link`'s QUIC handshake with `addr`: the connection's (listener, handle),
    /// or why it could not begin.
    pub(super) fn quic_link_start(
        &mut self,
        link: (u32, u32),
        addr: SocketAddr,
        opts: &ConnectOptions,
    ) -> Result<(u8, u32), String> {
        let tls = opts
            .tls
            .as_ref()
            .ok_or("a quic:// link needs TLS (ConnectOptions::tls)")?;
        let config = crate::quic::client_config(tls).map_err(|e| e.to_string())?;
        let name = opts
            .tls_server_name
            .clone()
            .unwrap_or_else(|| addr.ip().to_string());
        let li = self
            .quic_client(addr.is_ipv4())
            .map_err(|e| format!("the shard's QUIC client endpoint: {e}"))?;
        let now = self.now;
        let l = &mut self.quic.listeners[li as usize];
        let (h, conn) = l
            .endpoint
            .connect(now, config, addr, &name)
            .map_err(|e| e.to_string())?;
        if l.conns.len() <= h.0 {
            l.conns.resize_with(h.0 + 1, || None);
        }
        l.conns[h.0] = Some(QConn::new(conn, false, Some(link)));
        self.quic.mark(li, h.0 as u32);
        Ok((li, h.0 as u32))
    }

    /// The handshake of a link's QUIC connection ended: the Valkyrie connection, client
    /// side, on the first bidirectional stream. Its slot, or `None` when the stream could not
    /// be opened (the QUIC connection is closed then).
    pub(super) fn quic_link_open(
        &mut self,
        li: u8,
        h: u32,
        link: (u32, u32),
        opts: &ConnectOptions,
    ) -> Option<u32> {
        let q = self.quic.conn(li, h)?;
        q.link = None;
        let Some(id) = q.conn.streams().open(Dir::Bi) else {
            q.conn
                .close(self.now, VarInt::from_u32(CLOSED), Bytes::new());
            self.quic.mark(li, h);
            return None;
        };
        q.stream = Some(id);
        // The node's certificate, verified by the handshake: what `mtls` authenticates.
        let identity = super::quic_life::peer_identity(&q.conn);
        let config = opts
            .protocol
            .clone()
            .unwrap_or_else(|| self.cfg.protocol.clone());
        let mut proto = Connection::new(Side::Client, config, self.now, self.unix_now());
        if let Some(id) = identity {
            proto.set_transport_identity(id);
        }
        let io = Io::Quic(Box::new(QuicIo::new(li, h, false, false)));
        let slot = self.insert_outbound_conn(super::quic::QUIC, proto, io, link);
        let generation = self.conns.get(slot).map_or(0, |c| c.generation);
        if let Some(q) = self.quic.conn(li, h) {
            q.slot = Some((slot, generation));
        }
        self.mark(slot);
        self.quic.mark(li, h);
        Some(slot)
    }

    /// Give up a link's QUIC handshake (its time ran out, the service disconnected it).
    pub(super) fn quic_link_abandon(&mut self, li: u8, h: u32) {
        let now = self.now;
        if let Some(q) = self.quic.conn(li, h) {
            q.link = None;
            q.conn.close(now, VarInt::from_u32(CLOSED), Bytes::new());
            self.quic.mark(li, h);
        }
    }
}
