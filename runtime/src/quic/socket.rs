//! The blocking client's QUIC socket: a UDP socket, a client-only `quinn-proto` endpoint and
//! one connection, driven by the calls made on it (no thread, no other runtime). The
//! Valkyrie frames travel on the connection's first bidirectional stream.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Dir, Endpoint, EndpointConfig,
    Event, StreamEvent, StreamId,
};

/// Largest datagram read (QUIC's are at most the path MTU; loopback's can be larger).
const MAX_DATAGRAM: usize = 65_536;

/// A QUIC connection to a node, read and written as one byte stream.
pub struct QuicSocket {
    udp: UdpSocket,
    endpoint: Endpoint,
    conn: Connection,
    handle: ConnectionHandle,
    server: SocketAddr,
    stream: Option<StreamId>,
    /// The stream ended (the peer finished it) or the connection was lost.
    ended: Option<io::ErrorKind>,
    /// Why the connection was lost, for the error a caller sees.
    lost: Option<quinn_proto::ConnectionError>,
    recv_buf: Vec<u8>,
    send_buf: Vec<u8>,
    nonblocking: bool,
    read_timeout: Option<Duration>,
    early: bool,
    /// The connection's next timer, as of the last drive.
    next_timer: Option<Instant>,
    /// Its QUIC streams: frames in and out.
    mux: super::mux::StreamMux,
}

impl std::fmt::Debug for QuicSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicSocket")
            .field("server", &self.server)
            .field("local", &self.udp.local_addr().ok())
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl QuicSocket {
    /// Start a connection to `server` (certificate checked for `server_name`) and wait up to
    /// `timeout` for the handshake, or only for the first flight when the configuration holds
    /// a session ticket for the server: the stream is then usable at once, its first bytes
    /// sent as 0-RTT early data.
    pub fn connect(
        server: SocketAddr,
        server_name: &str,
        config: ClientConfig,
        timeout: Duration,
    ) -> io::Result<QuicSocket> {
        let bind: SocketAddr = if server.is_ipv4() {
            "0.0.0.0:0".parse().expect("address")
        } else {
            "[::]:0".parse().expect("address")
        };
        let udp = UdpSocket::bind(bind)?;
        udp.set_nonblocking(true)?;
        super::udp::configure(&udp, server.is_ipv4(), false);
        let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, true, None);
        let (handle, conn) = endpoint
            .connect(Instant::now(), config, server, server_name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut s = QuicSocket {
            udp,
            endpoint,
            conn,
            handle,
            server,
            stream: None,
            ended: None,
            lost: None,
            recv_buf: vec![0; MAX_DATAGRAM],
            send_buf: Vec::with_capacity(1500),
            nonblocking: false,
            read_timeout: None,
            early: false,
            next_timer: None,
            mux: Default::default(),
        };
        s.early = s.conn.has_0rtt();
        let deadline = Instant::now() + timeout;
        s.drive()?;
        while s.conn.is_handshaking() && !s.early {
            if let Some(kind) = s.ended {
                return Err(s.handshake_failed(kind));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::ErrorKind::TimedOut.into());
            }
            s.wait(left)?;
            s.drive()?;
        }
        if let Some(kind) = s.ended {
            return Err(s.handshake_failed(kind));
        }
        Ok(s)
    }

    /// The error of a handshake that ended: QUIC's reason (a TLS alert, a refusal) in it.
    fn handshake_failed(&self, kind: io::ErrorKind) -> io::Error {
        match &self.lost {
            Some(reason) => io::Error::new(kind, format!("QUIC handshake failed: {reason}")),
            None => io::Error::new(kind, "QUIC handshake failed"),
        }
    }

    /// Whether this connection resumed with 0-RTT (its first bytes went as early data).
    pub fn sent_early(&self) -> bool {
        self.early
    }

    /// Whether the server took the 0-RTT data (meaningful once the handshake is complete).
    pub fn early_accepted(&self) -> bool {
        self.conn.accepted_0rtt()
    }

    /// Whether the handshake is still going on.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// The verified identity of the server's certificate (`x509:` and its name).
    pub fn peer_identity(&self) -> Option<String> {
        let any = self.conn.crypto_session().peer_identity()?;
        let certs = any
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()?;
        valkyrie_protocol::security::mtls::certificate_identity(certs.first()?)
    }

    /// Move to a new local UDP port (a client whose address changes: NAT rebinding, a new
    /// network): the connection goes on from there, the server validating the new path.
    pub fn rebind(&mut self) -> io::Result<SocketAddr> {
        let ip = self.udp.local_addr()?.ip();
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0))?;
        udp.set_nonblocking(true)?;
        super::udp::configure(&udp, self.server.is_ipv4(), false);
        self.udp = udp;
        self.conn.ping();
        self.drive()?;
        self.udp.local_addr()
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// Process what arrived, what timed out, and send what the connection has to send.
    fn drive(&mut self) -> io::Result<()> {
        let now = Instant::now();
        loop {
            match self.udp.recv_from(&mut self.recv_buf) {
                Ok((n, from)) => {
                    let data = BytesMut::from(&self.recv_buf[..n]);
                    let mut response = Vec::new();
                    match self
                        .endpoint
                        .handle(now, from, None, None, data, &mut response)
                    {
                        Some(DatagramEvent::ConnectionEvent(h, ev)) if h == self.handle => {
                            self.conn.handle_event(ev)
                        }
                        Some(DatagramEvent::Response(t)) => {
                            let _ = self.udp.send_to(&response[..t.size], t.destination);
                        }
                        _ => {}
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    // An ICMP error for an earlier datagram: QUIC's own timers decide.
                    continue;
                }
                Err(e) => return Err(e),
            }
        }
        if self.conn.poll_timeout().is_some_and(|t| t <= now) {
            self.conn.handle_timeout(now);
        }
        while let Some(ev) = self.conn.poll_endpoint_events() {
            if let Some(back) = self.endpoint.handle_event(self.handle, ev) {
                self.conn.handle_event(back);
            }
        }
        while let Some(ev) = self.conn.poll() {
            match ev {
                Event::ConnectionLost { reason } => {
                    tracing::debug!(error = %reason, "quic connection lost");
                    let refused = matches!(
                        &reason,
                        quinn_proto::ConnectionError::ConnectionClosed(c)
                            if c.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED
                    );
                    self.ended.get_or_insert(if refused {
                        io::ErrorKind::ConnectionRefused
                    } else {
                        io::ErrorKind::ConnectionReset
                    });
                    self.lost.get_or_insert(reason);
                }
                Event::Stream(StreamEvent::Finished { .. }) => {}
                _ => {}
            }
        }
        if self.stream.is_none() && (!self.conn.is_handshaking() || self.early) {
            self.stream = self.conn.streams().open(Dir::Bi);
        }
        self.mux.flush(&mut self.conn)?;
        self.transmit(now)
    }

    fn transmit(&mut self, now: Instant) -> io::Result<()> {
        loop {
            self.send_buf.clear();
            let Some(t) = self.conn.poll_transmit(now, 1, &mut self.send_buf) else {
                // Pacing or loss recovery may have set a timer: the next wait must see it.
                self.next_timer = self.conn.poll_timeout();
                return Ok(());
            };
            match self.udp.send_to(&self.send_buf[..t.size], t.destination) {
                Ok(_) => {}
                // A full socket buffer or an unreachable peer: a lost datagram, which QUIC
                // sends again.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::ConnectionRefused
                    ) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait until a datagram arrives or the connection's next timer, at most `max`.
    fn wait(&self, max: Duration) -> io::Result<()> {
        let timer = self
            .next_timer
            .map(|t| t.saturating_duration_since(Instant::now()));
        let d = timer.map_or(max, |t| t.min(max));
        crate::sys::wait_readable(&self.udp, d)
    }

    /// Write what the streams take now: `WouldBlock` when flow control (or the handshake)
    /// holds it back.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.drive()?;
        if let Some(kind) = self.ended {
            return Err(kind.into());
        }
        let Some(id) = self.stream else {
            return Err(io::ErrorKind::WouldBlock.into());
        };
        let n = self.mux.write(&mut self.conn, id, buf)?;
        self.transmit(Instant::now())?;
        Ok(n)
    }

    /// QUIC streams this connection opened for its Valkyrie streams, and the node's it took.
    pub fn quic_streams_used(&self) -> (u64, u64) {
        (self.mux.opened, self.mux.accepted)
    }

    /// Carry Valkyrie streams on QUIC streams of their own from now on (both sides agreed
    /// to `quic_streams` in HELLO / HELLO_ACK).
    pub fn use_quic_streams(&mut self) {
        self.mux.enable();
    }

    /// Read what the streams have now, as whole frames: `WouldBlock` when nothing, `Ok(0)`
    /// at the first stream's end.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.drive()?;
        let Some(id) = self.stream else {
            return match self.ended {
                Some(kind) => Err(kind.into()),
                None => Err(io::ErrorKind::WouldBlock.into()),
            };
        };
        let got = self.mux.read(&mut self.conn, id, buf);
        // Credit for what was read goes out now.
        self.transmit(Instant::now())?;
        match got? {
            super::mux::Read::Bytes(n) => Ok(n),
            super::mux::Read::End => Ok(0),
            super::mux::Read::Nothing => match self.ended {
                Some(kind) => Err(kind.into()),
                None => Err(io::ErrorKind::WouldBlock.into()),
            },
        }
    }

    /// Wait up to `timeout` for a datagram or the connection's next timer (the next read or
    /// write handles it).
    pub fn wait_io(&self, timeout: Duration) -> io::Result<()> {
        self.wait(timeout)
    }

    pub(crate) fn set_nonblocking(&mut self, on: bool) {
        self.nonblocking = on;
    }

    pub(crate) fn set_read_timeout(&mut self, t: Option<Duration>) {
        self.read_timeout = t;
    }

    /// Close the connection (the peer is told at once).
    pub fn close(&mut self) {
        if let Some(id) = self.stream {
            let _ = self.conn.send_stream(id).finish();
        }
        self.conn.close(
            Instant::now(),
            0u32.into(),
            bytes::Bytes::from_static(b"closed"),
        );
        let _ = self.transmit(Instant::now());
    }
}

impl io::Read for QuicSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let deadline = self.read_timeout.map(|t| Instant::now() + t);
        loop {
            match self.try_read(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.nonblocking => {
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    if left.is_some_and(|l| l.is_zero()) {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    self.wait(left.unwrap_or(Duration::from_secs(1)))?;
                }
                other => return other,
            }
        }
    }
}

impl io::Write for QuicSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        loop {
            match self.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.nonblocking => {
                    self.wait(Duration::from_millis(100))?;
                }
                other => return other,
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for QuicSocket {
    fn drop(&mut self) {
        if !self.conn.is_closed() {
            self.close();
        }
    }
}
