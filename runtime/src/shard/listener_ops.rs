//! Closing and opening one listener while the node runs (`Node::close_listener`,
//! `Node::open_listener`): a closed listener stops accepting and the connections accepted
//! through it are sent away (CLOSE 502, going away: a client connects again elsewhere, to
//! the node's other endpoints or another node, and sends again what was not answered); an
//! opened one accepts on a new socket for its endpoint. A QUIC listener's socket also carries
//! its connections' datagrams, so closing one refuses new connections (CONNECTION_REFUSED) and
//! opening it admits them again on the same socket; a reload hands QUIC listeners new TLS.
//! The other listeners and their connections go on as they were.

use io_uring::opcode;

use super::Shard;
use super::accept::{GOING_AWAY, GOING_AWAY_REASON, Listener};
use crate::conn::Life;
use crate::mesh::ListenerCommand;
use crate::uring::{Op, ud};

impl Shard {
    /// Apply the listener changes the node handed this shard. Returns whether there were any.
    pub(super) fn take_listener_commands(&mut self) -> bool {
        let commands = self.mesh.waker(self.id).take_commands();
        if commands.is_empty() {
            return false;
        }
        for cmd in commands {
            match cmd {
                ListenerCommand::Close { endpoint } => self.close_listener(endpoint),
                ListenerCommand::Open {
                    endpoint,
                    transport,
                    fd,
                } => self.open_listener(endpoint, transport, fd),
                ListenerCommand::Resume { endpoint } => self.resume_quic_listener(endpoint),
                ListenerCommand::OpenQuic {
                    endpoint,
                    fd,
                    server,
                    client_auth,
                } => self.open_quic_listener(super::quic::QuicSetup {
                    fd,
                    server: Some(server),
                    client_auth,
                    endpoint,
                }),
                ListenerCommand::QuicTls {
                    server,
                    client_auth,
                } => self.set_quic_tls(server, client_auth),
            }
        }
        true
    }

    fn close_listener(&mut self, endpoint: u8) {
        for i in 0..self.listeners.list.len() {
            let l = &mut self.listeners.list[i];
            if l.endpoint != endpoint || l.fd.is_none() {
                continue;
            }
            if l.armed {
                let e = opcode::AsyncCancel::new(ud(l.accept_op(), i as u32, 0))
                    .build()
                    .user_data(ud(Op::Cancel, 0, 0));
                self.ring.push(e);
            }
            // The ring holds its own reference while the accept is armed.
            l.fd = None;
        }
        // A QUIC listener's socket also carries its connections' datagrams: it stays open and
        // refuses new connections until it is resumed.
        for l in &mut self.quic.listeners {
            if l.node_endpoint == endpoint {
                l.accepting = false;
            }
        }
        tracing::info!(
            shard = self.id,
            endpoint,
            "listener closed: its connections are sent away"
        );
        for slot in self.conns.slots() {
            if let Some(c) = self.conns.get_mut(slot)
                && c.life == Life::Open
                && c.endpoint() == Some(endpoint)
            {
                match c.http() {
                    Some(h) => h.close_when_idle(),
                    None => c.proto.close(GOING_AWAY.0, GOING_AWAY_REASON),
                }
                self.mark(slot);
            }
        }
    }

    fn open_listener(&mut self, endpoint: u8, transport: u8, fd: std::os::fd::OwnedFd) {
        if self.shutdown_deadline.is_some() {
            return;
        }
        let reuse = self
            .listeners
            .list
            .iter_mut()
            .find(|l| l.endpoint == endpoint && l.fd.is_none() && !l.armed);
        match reuse {
            Some(l) => {
                l.fd = Some(fd);
                l.transport = transport;
            }
            None => self
                .listeners
                .list
                .push(Listener::new(fd, transport, endpoint)),
        }
        tracing::info!(shard = self.id, endpoint, "listener opened");
        if !self.listeners.paused {
            self.arm_accepts();
        }
    }

    /// A `quic://` endpoint opened while the node runs: this shard's socket on it.
    fn open_quic_listener(&mut self, setup: super::quic::QuicSetup) {
        if self.shutdown_deadline.is_some() || self.quic.listeners.len() >= usize::from(u8::MAX) {
            return;
        }
        if let Err(e) = self.quic_bufs() {
            tracing::warn!(shard = self.id, error = %e, "QUIC receive buffers");
            return;
        }
        let endpoint = setup.endpoint;
        let li = self.quic.listeners.len() as u8;
        let l = super::quic::QuicListener::new(self.id, &self.quic.key, setup);
        self.quic.listeners.push(l);
        self.arm_udp_recv(li);
        tracing::info!(shard = self.id, endpoint, "QUIC listener opened");
    }

    fn resume_quic_listener(&mut self, endpoint: u8) {
        for l in &mut self.quic.listeners {
            if l.node_endpoint == endpoint {
                l.accepting = true;
            }
        }
        tracing::info!(
            shard = self.id,
            endpoint,
            "QUIC listener admits connections again"
        );
    }

    /// New connections on every QUIC listener handshake with `server`; those established
    /// keep the TLS session they have.
    fn set_quic_tls(
        &mut self,
        server: std::sync::Arc<quinn_proto::ServerConfig>,
        client_auth: bool,
    ) {
        for l in &mut self.quic.listeners {
            if l.node_endpoint == crate::conn::NO_ENDPOINT {
                // A client endpoint (the shard's QUIC links) accepts nothing.
                continue;
            }
            l.endpoint.set_server_config(Some(server.clone()));
            l.client_auth = client_auth;
        }
    }
}
