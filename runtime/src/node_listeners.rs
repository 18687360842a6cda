//! Closing and opening one of a running node's listeners ([`Node::close_listener`],
//! [`Node::open_listener`]): take one transport out of service (its connections are sent
//! away and reconnect through the others), bring it back, or listen somewhere new, while
//! every other listener and connection goes on.

use std::io;

use crate::mesh::ListenerCommand;
use crate::node::{Node, bind_stream_listener};
use crate::url::Endpoint;

impl Node {
    /// Stop listening on `url` (as given to the builder, or as bound: a TCP port 0 made
    /// real) and send the connections accepted through it away — CLOSE 502 "going away",
    /// after which a client connects again through another endpoint (the selector of
    /// [`Client::connect_any`](crate::Client::connect_any) moves to the next transport and
    /// sends again what was not answered). The node's other listeners and their connections
    /// are untouched; [`Node::open_listener`] brings it back. A `quic://` listener's UDP
    /// socket stays bound (its connections' datagrams come through it until they have gone):
    /// new QUIC clients are refused with CONNECTION_REFUSED at once.
    pub fn close_listener(&mut self, url: &str) -> io::Result<()> {
        let i = self.endpoint_index(url)?;
        if !self.listening[i] {
            return Ok(());
        }
        for w in self.wakers.iter() {
            w.command(ListenerCommand::Close { endpoint: i as u8 });
        }
        self.listening[i] = false;
        if let Endpoint::Unix(path) = &self.endpoints[i] {
            // New clients find no socket file rather than a listener nobody accepts on.
            let _ = std::fs::remove_file(path);
        }
        Ok(())
    }

    /// Listen on `url` again after [`Node::close_listener`], or on a new endpoint (TCP, Unix,
    /// shared memory, or QUIC with the node's QUIC TLS) while the node runs. Returns the
    /// endpoint as bound.
    pub fn open_listener(&mut self, url: &str) -> io::Result<Endpoint> {
        let ep: Endpoint = url
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let known = self.endpoint_index(url).ok();
        if let Some(i) = known
            && self.listening[i]
        {
            return Ok(self.endpoints[i].clone());
        }
        if let Some(i) = known
            && let Endpoint::Quic(_) = self.endpoints[i]
        {
            for w in self.wakers.iter() {
                w.command(ListenerCommand::Resume { endpoint: i as u8 });
            }
            self.listening[i] = true;
            return Ok(self.endpoints[i].clone());
        }
        let index = known.unwrap_or(self.endpoints.len());
        if index >= crate::conn::NO_ENDPOINT as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a node opens at most 31 endpoints while it runs",
            ));
        }
        if let Endpoint::Quic(_) = ep {
            let bound = self.open_quic_listener(&ep, index as u8)?;
            self.endpoints.push(bound.clone());
            self.listening.push(true);
            return Ok(bound);
        }
        // A closed endpoint binds its old address again (a TCP port chosen at start stays).
        let target = known.map_or(ep, |i| self.endpoints[i].clone());
        let shm = self.cfg.lock().unwrap_or_else(|e| e.into_inner()).shm;
        let (bound, transport, fds) = bind_stream_listener(&target, self.wakers.len(), shm)?;
        for (w, fd) in self.wakers.iter().zip(fds) {
            w.command(ListenerCommand::Open {
                endpoint: index as u8,
                transport,
                fd,
            });
        }
        if index == self.endpoints.len() {
            self.endpoints.push(bound.clone());
            self.listening.push(true);
        } else {
            self.listening[index] = true;
        }
        Ok(bound)
    }

    /// Bind a new `quic://` endpoint on every shard (`SO_REUSEPORT`, one socket each) with
    /// the node's QUIC TLS, and hand each shard its socket.
    fn open_quic_listener(&self, ep: &Endpoint, index: u8) -> io::Result<Endpoint> {
        let cfg = self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (tls, client_auth) = cfg.quic_server_tls().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{ep} needs TLS: a certificate and key (NodeBuilder::quic_tls)"),
            )
        })?;
        let server = crate::quic::server_config(&tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let t = crate::transport::for_endpoint(ep);
        let first = t.listen(ep, true, 0)?;
        let bound = Endpoint::Quic(crate::transport::local_addr(&first)?);
        let mut fds = vec![first];
        for _ in 1..self.wakers.len() {
            fds.push(t.listen(&bound, true, 0)?);
        }
        for (w, fd) in self.wakers.iter().zip(fds) {
            w.command(ListenerCommand::OpenQuic {
                endpoint: index,
                fd,
                server: server.clone(),
                client_auth,
            });
        }
        Ok(bound)
    }

    /// Whether the node accepts on `endpoint` now.
    pub fn is_listening(&self, endpoint: &Endpoint) -> bool {
        self.endpoints
            .iter()
            .position(|e| e == endpoint)
            .is_some_and(|i| self.listening[i])
    }

    /// The index of `url` among the node's endpoints (as given or as bound).
    fn endpoint_index(&self, url: &str) -> io::Result<usize> {
        let ep: Endpoint = url
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        self.endpoints
            .iter()
            .position(|e| *e == ep)
            .or_else(|| self.requested.iter().position(|e| *e == ep))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{url}: the node has no such endpoint"),
                )
            })
    }
}
