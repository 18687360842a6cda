//! A blocking client: connect, handshake, ping, request/response, streams.
//!
//! The client drives the same sans-IO [`Connection`] as the node, over an ordinary blocking
//! (or, with busy-poll, non-blocking and spinning) socket in the caller's thread. Protocol
//! timers (heartbeats) run whenever the client is waiting on the socket.
//!
//! Made from a link's [`ConnectOptions`](crate::ConnectOptions)
//! ([`Client::connect_options`], [`ClientBuilder::blocking`](crate::ClientBuilder::blocking)),
//! it walks the same failover, backoff and circuit breaker as a shard's link and as the
//! [`ClientHandle`](crate::ClientHandle), and treats a node going away the same way
//! (`failover.rs`).

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use valkyrie_protocol::message::StreamOpen;
use valkyrie_protocol::streams::StreamClass;
use valkyrie_protocol::{
    CloseReason, Config, Connection, ErrorCode, Event, Flags, Frame, MessageType, PeerInfo,
    SendError, SendOptions, Side,
};

use crate::transport::{self, ClientSocket, TlsConnectError, TlsSocket};
use crate::url::{Endpoint, EndpointError};
use failover::Failover;
use valkyrie_protocol::security::mtls::TlsSession;

mod failover;
mod pump;
mod selector;
mod upgrade;

pub use selector::transport_rank;

/// Bytes taken from the connection's queues into one write.
pub(super) const WRITE_CHUNK: usize = 256 * 1024;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Protocol settings (node id, security modes offered, limits, heartbeat).
    pub protocol: Config,
    /// Spin on a non-blocking socket instead of sleeping in `read` (lowest latency, one core).
    pub busy_poll: bool,
    /// Time allowed for connect and handshake.
    pub connect_timeout: Duration,
    /// Events kept for [`Client::next_event`] before the client stops reading (back-pressure).
    pub max_pending_events: usize,
    /// Bytes read from the socket at a time.
    pub read_buffer: usize,
    /// How long a send may wait on a node that takes none of its bytes (and sends none
    /// back) before it fails with [`ClientError::Timeout`].
    pub write_timeout: Duration,
    /// TLS 1.3 over TCP endpoints (`mtls`, or token inside TLS), e.g. from
    /// `valkyrie_protocol::security::mtls::client_config`.
    pub tls: Option<Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>>,
    /// The name the server's certificate must carry (default: the endpoint's IP address).
    pub tls_server_name: Option<String>,
    /// Move the connection to shared memory right after the handshake when the node runs
    /// on this host and network namespace (UPGRADE; see [`Client::upgrade_to_shm`]).
    pub upgrade: bool,
    /// Over QUIC: offer to carry Valkyrie streams on QUIC streams of their own, so a lost
    /// packet of one stream holds back no other (default on; used when the node agrees).
    pub quic_streams: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            protocol: Config::new("valkyrie-client"),
            busy_poll: false,
            connect_timeout: Duration::from_secs(10),
            max_pending_events: 65_536,
            read_buffer: 64 * 1024,
            write_timeout: Duration::from_secs(30),
            tls: None,
            tls_server_name: None,
            upgrade: false,
            quic_streams: true,
        }
    }
}

/// What went wrong in a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The protocol configuration's parts disagree (a mode offered without its provider...).
    #[error(transparent)]
    Config(#[from] valkyrie_protocol::connection::ConfigError),
    /// The URL is not an endpoint.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// Socket I/O failed.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// The protocol refused the send.
    #[error(transparent)]
    Send(#[from] SendError),
    /// The connection ended.
    #[error("connection closed: {0:?}")]
    Closed(CloseReason),
    /// The peer answered with an ERROR.
    #[error("peer error {code}: {message}")]
    Peer {
        /// The code.
        code: ErrorCode,
        /// The message.
        message: String,
    },
    /// No answer in time.
    #[error("timed out")]
    Timeout,
    /// The TLS handshake under the connection failed (certificate, alert).
    #[error(transparent)]
    Tls(#[from] valkyrie_protocol::security::SecurityError),
    /// Too many unread events: call [`Client::next_event`].
    #[error("{0} events are waiting to be read")]
    Backlog(usize),
    /// The [`ClientHandle`](crate::ClientHandle)'s link is not up (its state says why).
    #[error("not connected: {0:?}")]
    NotConnected(crate::LinkState),
    /// The [`ClientHandle`](crate::ClientHandle)'s queue to its runtime is full: its
    /// runtime is behind (back-pressure; retry when replies have come).
    #[error("the client's queue of {0} commands is full")]
    QueueFull(usize),
}

/// A connection to a node.
pub struct Client {
    sock: ClientSocket,
    conn: Connection,
    rbuf: Box<[u8]>,
    wbuf: BytesMut,
    events: VecDeque<Event>,
    cfg: ClientConfig,
    closed: Option<CloseReason>,
    /// The link's options and policy, when made from them: reconnects and resends.
    failover: Option<Box<Failover>>,
    /// The connection moved (or is moving) to shared memory (UPGRADE).
    upgrade: Option<Box<upgrade::ClientUpgrade>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// The non-blocking, pipelining client: a [`ClientBuilder`](crate::ClientBuilder) whose
    /// `connect` returns a [`ClientHandle`](crate::ClientHandle) (requests from any thread,
    /// any number in flight, answered through futures or callbacks).
    pub fn builder() -> crate::ClientBuilder {
        crate::ClientBuilder::default()
    }

    /// Connect to `url` with default settings and complete the handshake.
    pub fn connect(url: &str) -> Result<Client, ClientError> {
        Self::connect_with(url, ClientConfig::default())
    }

    /// Connect with `cfg` and complete the handshake. A protocol configuration that offers a
    /// mode without its handshake provider (or has a provider for a mode it does not offer)
    /// is refused with [`ClientError::Config`] before anything is sent.
    pub fn connect_with(url: &str, cfg: ClientConfig) -> Result<Client, ClientError> {
        cfg.protocol.validate()?;
        Self::connect_to(&url.parse()?, cfg)
    }

    /// Connect to `endpoint` (the TCP connect bounded by `cfg.connect_timeout`) and complete
    /// the handshake.
    pub(crate) fn connect_to(
        endpoint: &Endpoint,
        cfg: ClientConfig,
    ) -> Result<Client, ClientError> {
        if let Endpoint::Quic(addr) = endpoint {
            let Some(tls) = &cfg.tls else {
                return Err(ClientError::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidInput,
                    "quic:// needs TLS: set ClientConfig::tls (the node's CA, and a client certificate for mtls)",
                )));
            };
            let quic = crate::quic::client_config(tls).map_err(|e| {
                ClientError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
            })?;
            let name = cfg
                .tls_server_name
                .clone()
                .unwrap_or_else(|| addr.ip().to_string());
            let sock = crate::quic::QuicSocket::connect(*addr, &name, quic, cfg.connect_timeout)?;
            let mut cfg = cfg;
            cfg.protocol.quic_streams = cfg.quic_streams;
            return Self::over(ClientSocket::Quic(Box::new(sock)), cfg);
        }
        let sock = match (
            transport::for_endpoint(endpoint).connect(endpoint, cfg.connect_timeout)?,
            &cfg.tls,
        ) {
            (ClientSocket::Tcp(tcp), Some(tls)) => {
                let name = match &cfg.tls_server_name {
                    Some(n) => n.clone(),
                    None => tcp.peer_addr()?.ip().to_string(),
                };
                let session = TlsSession::client(tls.clone(), &name)?;
                match TlsSocket::handshake(tcp, session, cfg.connect_timeout) {
                    Ok(t) => ClientSocket::Tls(Box::new(t)),
                    Err(TlsConnectError::Io(e)) => return Err(e.into()),
                    Err(TlsConnectError::Tls(e)) => return Err(e.into()),
                    Err(TlsConnectError::Refused { code, message }) => {
                        return Err(ClientError::Peer { code, message });
                    }
                }
            }
            (sock, _) => sock,
        };
        Self::over(sock, cfg)
    }

    /// Run the client over an already connected socket.
    pub fn over(mut sock: ClientSocket, cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.busy_poll {
            sock.set_nonblocking(true)?;
        }
        let now = Instant::now();
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut protocol = cfg.protocol.clone();
        if protocol.host.is_none() && matches!(sock, ClientSocket::Tcp(_) | ClientSocket::Unix(_)) {
            // Said in HELLO: a node on this host may then move the connection to shared
            // memory (UPGRADE).
            protocol.host = crate::sys::host_id();
        }
        let mut conn = Connection::new(Side::Client, Arc::new(protocol), now, unix);
        if let ClientSocket::Tls(t) = &sock
            && let Some(id) = t.peer_identity()
        {
            conn.set_transport_identity(id);
        }
        if let ClientSocket::Quic(q) = &sock
            && let Some(id) = q.peer_identity()
        {
            conn.set_transport_identity(id);
        }
        let mut c = Client {
            sock,
            conn,
            rbuf: vec![0u8; cfg.read_buffer.max(64)].into_boxed_slice(),
            wbuf: BytesMut::new(),
            events: VecDeque::new(),
            cfg,
            closed: None,
            failover: None,
            upgrade: None,
        };
        let deadline = now + c.cfg.connect_timeout;
        while !c.conn.is_established() {
            c.pump(deadline)?;
            if let Some(r) = c.closed.clone() {
                return Err(match r {
                    CloseReason::PeerError { code, message } => ClientError::Peer { code, message },
                    other => ClientError::Closed(other),
                });
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
        }
        c.events.retain(|e| !matches!(e, Event::Connected(_)));
        // What establishment queued (the capability offer, NEGOTIATE) leaves now.
        c.flush()?;
        // Nothing is half written now: frames may go on QUIC streams of their own.
        if let ClientSocket::Quic(q) = &mut c.sock
            && c.conn.peer().is_some_and(|p| p.quic_streams)
        {
            q.use_quic_streams();
        }
        if c.cfg.upgrade {
            c.upgrade_to_shm(c.cfg.connect_timeout)?;
        }
        Ok(c)
    }

    /// The socket underneath (a QUIC client moves to a new port through it:
    /// [`QuicSocket::rebind`](crate::quic::QuicSocket::rebind)).
    pub fn socket_mut(&mut self) -> &mut ClientSocket {
        &mut self.sock
    }

    /// What was agreed with the node.
    pub fn peer(&self) -> Option<&PeerInfo> {
        self.conn.peer()
    }

    /// The protocol connection, for anything this API does not cover.
    pub fn connection(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// PING with `payload` (at most 1024 bytes); returns the round-trip time.
    pub fn ping(&mut self, payload: &[u8]) -> Result<Duration, ClientError> {
        self.revive(Instant::now() + self.cfg.connect_timeout)?;
        let id = self.conn.ping(Bytes::copy_from_slice(payload))?;
        self.wait_for(Duration::from_secs(30), |e| match e {
            Event::Pong {
                correlation_id,
                rtt,
                ..
            } if *correlation_id == id => Some(Ok(*rtt)),
            _ => None,
        })
    }

    /// One request on this connection, its answer awaited until `deadline`.
    fn request_once(
        &mut self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        deadline: Instant,
    ) -> Result<Frame, ClientError> {
        let id = self
            .conn
            .request(stream_id, msg_type, payload, SendOptions::default())?;
        self.wait_until(deadline, |e| match e {
            Event::Frame(f)
                if f.header.correlation_id == id && f.header.flags.contains(Flags::RESPONSE) =>
            {
                Some(Ok(f.clone()))
            }
            Event::PeerError {
                code,
                message,
                correlation_id,
                ..
            } if *correlation_id == id => Some(Err(ClientError::Peer {
                code: *code,
                message: message.clone(),
            })),
            _ => None,
        })
    }

    /// Queue a frame and send it now.
    pub fn send(
        &mut self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    ) -> Result<(), ClientError> {
        self.revive(Instant::now() + self.cfg.connect_timeout)?;
        self.conn.send(stream_id, msg_type, payload, opts)?;
        self.flush()?;
        Ok(())
    }

    /// Open a stream. With `open`, a STREAM_OPEN is sent and this waits for the node's answer.
    pub fn open_stream(
        &mut self,
        class: StreamClass,
        open: Option<StreamOpen>,
    ) -> Result<u32, ClientError> {
        self.revive(Instant::now() + self.cfg.connect_timeout)?;
        let explicit = open.is_some();
        let id = self.conn.open_stream(class, open)?;
        if explicit {
            self.wait_for(Duration::from_secs(30), |e| match e {
                Event::Acked { stream_id, .. } if *stream_id == id => Some(Ok(())),
                _ => None,
            })?;
        }
        Ok(id)
    }

    /// The next event (frames the node pushed, stream events, heartbeats), waiting up to
    /// `timeout`. `Ok(None)` on timeout.
    pub fn next_event(&mut self, timeout: Duration) -> Result<Option<Event>, ClientError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            if self.closed.is_some() || Instant::now() >= deadline {
                return Ok(None);
            }
            self.pump(deadline)?;
        }
    }

    /// Send everything queued and wait for nothing.
    pub fn flush_now(&mut self) -> Result<(), ClientError> {
        self.flush()
    }

    /// Close gracefully: CLOSE, then wait (up to 5 s) for the node's answer.
    pub fn close(mut self) -> Result<CloseReason, ClientError> {
        self.conn.close(0, "client closing");
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.closed.is_none() && Instant::now() < deadline {
            self.pump(deadline)?;
        }
        self.closed.ok_or(ClientError::Timeout)
    }
}
