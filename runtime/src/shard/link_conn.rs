//! A link's connection in the shard's table: client side of the protocol, with the link's
//! configuration (or the node's), TLS under it on TCP when the link asks for it — over a
//! socket in the direct-descriptor table (`links.rs`) or a QUIC stream (`quic_link.rs`).

use std::sync::atomic::Ordering;

use valkyrie_protocol::security::mtls::TlsSession;
use valkyrie_protocol::{Connection, Side};

use super::Shard;
use crate::conn::recv::Recv;
use crate::conn::send::SendState;
use crate::conn::{Conn, Extra, Io, Life, Socket};
use crate::link::ConnectOptions;
use crate::url::Endpoint;

impl Shard {
    /// Register the connection of a link, client side, and start its handshake.
    pub(super) fn add_outbound_conn(
        &mut self,
        fixed: u32,
        url: &Endpoint,
        opts: &ConnectOptions,
        link: (u32, u32),
    ) -> u32 {
        let transport = match url {
            Endpoint::Tcp(_) => 0,
            _ => 1,
        };
        let config = opts
            .protocol
            .clone()
            .unwrap_or_else(|| self.cfg.protocol.clone());
        let proto = Connection::new(Side::Client, config, self.now, self.unix_now());
        let tls = match (&opts.tls, url) {
            (Some(cfg), Endpoint::Tcp(addr)) => {
                let name = opts
                    .tls_server_name
                    .clone()
                    .unwrap_or_else(|| addr.ip().to_string());
                match TlsSession::client(cfg.clone(), &name) {
                    Ok(t) => Some(Box::new(t)),
                    Err(e) => {
                        tracing::warn!(shard = self.id, error = %e, "tls client session not created");
                        None
                    }
                }
            }
            _ => None,
        };
        let io = Io::Socket(Socket {
            fixed,
            recv: Recv::Armed,
            send: SendState::Idle,
            tls,
        });
        let slot = self.insert_outbound_conn(transport, proto, io, link);
        if opts.tls.is_some() && matches!(url, Endpoint::Tcp(_)) {
            let failed = self
                .conns
                .get(slot)
                .is_some_and(|c| matches!(&c.io, Io::Socket(s) if s.tls.is_none()));
            if failed && let Some(c) = self.conns.get_mut(slot) {
                // Never talk in the clear where TLS was asked for.
                c.proto.handle_eof(self.now);
            }
        }
        self.arm_recv(slot);
        self.mark(slot);
        slot
    }

    /// Put a link's connection (client side, transport index `transport`) in the table.
    pub(super) fn insert_outbound_conn(
        &mut self,
        transport: u8,
        proto: Connection,
        io: Io,
        link: (u32, u32),
    ) -> u32 {
        let opened_us = self.now_us();
        let slot = self.conns.insert(|generation| Conn {
            generation,
            origin: crate::conn::origin(transport, crate::conn::NO_ENDPOINT),
            life: Life::Open,
            proto,
            io,
            connected: false,
            fresh: false,
            sniffing: false,
            opened_us,
            dirty: false,
            held: false,
            timer: None,
            extra: Some(Box::new(Extra {
                link: Some(link),
                ..Extra::default()
            })),
        });
        self.metrics.connections_active[transport as usize].fetch_add(1, Ordering::Relaxed);
        slot
    }
}
