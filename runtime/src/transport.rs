//! The transport trait: how a listening socket is made and how a client reaches a node.
//!
//! The shard loop drives every stream transport the same way through io_uring (accept into a
//! direct descriptor, multishot receive, send); a transport only decides how sockets are
//! created. TCP and Unix stream sockets are here, and shared memory (`shm://name`, through
//! `valkyrie-shm`): its rendezvous socket is accepted like the others, then the bytes move
//! through the shared rings and the shard waits on their futex words with io_uring.
//! RDMA has no hardware on the hosts this is built on: it is not supported yet.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use valkyrie_protocol::ErrorCode;
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::security::SecurityError;
use valkyrie_protocol::security::mtls::TlsSession;
use valkyrie_shm::{ShmError, ShmListener, ShmStream};

use crate::url::Endpoint;

/// Socket creation for one kind of endpoint.
pub trait Transport: Send + Sync {
    /// The scheme this transport serves (`"tcp"`, `"unix"`).
    fn scheme(&self) -> &'static str;

    /// A listening socket for `endpoint`, one per shard. With `reuse_port`, several shards
    /// bind the same address and the kernel spreads connections across them.
    fn listen(&self, endpoint: &Endpoint, reuse_port: bool, backlog: i32) -> io::Result<OwnedFd>;

    /// A connected, blocking client socket; a connect that takes longer than `timeout`
    /// fails with `TimedOut` (TCP; a local socket connects or fails at once).
    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> io::Result<ClientSocket>;
}

/// A client's connected socket.
#[derive(Debug)]
pub enum ClientSocket {
    /// TCP.
    Tcp(TcpStream),
    /// Unix stream.
    Unix(UnixStream),
    /// Shared memory.
    Shm(Box<ShmSocket>),
    /// TLS 1.3 over TCP (`mtls`, or token inside TLS).
    Tls(Box<TlsSocket>),
    /// QUIC: the connection's first bidirectional stream.
    Quic(Box<crate::quic::QuicSocket>),
}

impl ClientSocket {
    /// Clone the handle (for a reader and a writer).
    pub fn try_clone(&self) -> io::Result<ClientSocket> {
        Ok(match self {
            ClientSocket::Tcp(s) => ClientSocket::Tcp(s.try_clone()?),
            ClientSocket::Unix(s) => ClientSocket::Unix(s.try_clone()?),
            ClientSocket::Shm(_) | ClientSocket::Tls(_) | ClientSocket::Quic(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "a shared-memory, TLS or QUIC connection has one reader and one writer: it is not cloned",
                ));
            }
        })
    }

    /// Set non-blocking mode.
    pub fn set_nonblocking(&mut self, on: bool) -> io::Result<()> {
        match self {
            ClientSocket::Tcp(s) => s.set_nonblocking(on),
            ClientSocket::Unix(s) => s.set_nonblocking(on),
            ClientSocket::Shm(s) => {
                s.nonblocking = on;
                Ok(())
            }
            ClientSocket::Tls(s) => s.tcp.set_nonblocking(on),
            ClientSocket::Quic(s) => {
                s.set_nonblocking(on);
                Ok(())
            }
        }
    }

    /// Write what fits now, without blocking whatever the socket's mode: `WouldBlock` when
    /// nothing does. A TLS socket seals at most 64 KiB of `buf` a call and keeps records the
    /// kernel did not take yet ([`ClientSocket::has_pending_output`]); an empty `buf` then
    /// only pushes those.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => crate::sys::send_nonblocking(s, buf),
            ClientSocket::Unix(s) => crate::sys::send_nonblocking(s, buf),
            ClientSocket::Shm(s) => s.try_write(buf),
            ClientSocket::Tls(s) => s.try_write(buf),
            ClientSocket::Quic(s) => s.try_write(buf),
        }
    }

    /// Read what is there now, without blocking whatever the socket's mode: `WouldBlock`
    /// when nothing is, `Ok(0)` at end of stream.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => crate::sys::recv_nonblocking(s, buf),
            ClientSocket::Unix(s) => crate::sys::recv_nonblocking(s, buf),
            ClientSocket::Shm(s) => s.try_read(buf),
            ClientSocket::Tls(s) => s.try_read(buf),
            ClientSocket::Quic(s) => s.try_read(buf),
        }
    }

    /// Bytes accepted by [`ClientSocket::try_write`] that the kernel has not taken yet.
    pub fn has_pending_output(&self) -> bool {
        match self {
            ClientSocket::Tls(s) => !s.wbuf.is_empty(),
            _ => false,
        }
    }

    /// Wait up to `timeout` until the socket may be read or written (a shared-memory socket,
    /// which has no descriptor to wait on, sleeps a moment).
    pub fn wait_io(&self, timeout: std::time::Duration) -> io::Result<()> {
        match self {
            ClientSocket::Tcp(s) => crate::sys::wait_readable_or_writable(s, timeout),
            ClientSocket::Unix(s) => crate::sys::wait_readable_or_writable(s, timeout),
            ClientSocket::Tls(s) => crate::sys::wait_readable_or_writable(&s.tcp, timeout),
            ClientSocket::Quic(s) => s.wait_io(timeout),
            ClientSocket::Shm(_) => {
                std::thread::sleep(timeout.min(std::time::Duration::from_micros(50)));
                Ok(())
            }
        }
    }

    /// Set the read timeout.
    pub fn set_read_timeout(&mut self, t: Option<std::time::Duration>) -> io::Result<()> {
        match self {
            ClientSocket::Tcp(s) => s.set_read_timeout(t),
            ClientSocket::Unix(s) => s.set_read_timeout(t),
            ClientSocket::Shm(s) => {
                s.read_timeout = t;
                Ok(())
            }
            ClientSocket::Tls(s) => s.tcp.set_read_timeout(t),
            ClientSocket::Quic(s) => {
                s.set_read_timeout(t);
                Ok(())
            }
        }
    }
}

impl io::Read for ClientSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => s.read(buf),
            ClientSocket::Unix(s) => s.read(buf),
            ClientSocket::Shm(s) => s.read(buf),
            ClientSocket::Tls(s) => s.read(buf),
            ClientSocket::Quic(s) => s.read(buf),
        }
    }
}

impl io::Write for ClientSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => s.write(buf),
            ClientSocket::Unix(s) => s.write(buf),
            ClientSocket::Shm(s) => s.write(buf),
            ClientSocket::Tls(s) => s.write(buf),
            ClientSocket::Quic(s) => s.write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match self {
            ClientSocket::Tcp(s) => s.write_vectored(bufs),
            ClientSocket::Unix(s) => s.write_vectored(bufs),
            ClientSocket::Tls(s) => s.write_vectored(bufs),
            ClientSocket::Quic(s) => s.write_vectored(bufs),
            ClientSocket::Shm(s) => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]);
                s.write(first)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// TCP over IPv4 or IPv6, with `TCP_NODELAY`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TcpTransport;

/// Unix stream sockets.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnixTransport;

impl Transport for TcpTransport {
    fn scheme(&self) -> &'static str {
        "tcp"
    }

    fn listen(&self, endpoint: &Endpoint, reuse_port: bool, backlog: i32) -> io::Result<OwnedFd> {
        let Endpoint::Tcp(addr) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a tcp endpoint",
            ));
        };
        crate::sys::tcp_listener(addr, reuse_port, backlog)
    }

    fn connect(&self, endpoint: &Endpoint, timeout: Duration) -> io::Result<ClientSocket> {
        let Endpoint::Tcp(addr) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a tcp endpoint",
            ));
        };
        let s = TcpStream::connect_timeout(addr, timeout.max(Duration::from_millis(1)))?;
        s.set_nodelay(true)?;
        Ok(ClientSocket::Tcp(s))
    }
}

/// The bound address of a listening socket (to learn the port after binding port 0).
pub fn local_addr(fd: &OwnedFd) -> io::Result<SocketAddr> {
    crate::sys::local_addr(fd)
}

impl Transport for UnixTransport {
    fn scheme(&self) -> &'static str {
        "unix"
    }

    fn listen(&self, endpoint: &Endpoint, _reuse_port: bool, backlog: i32) -> io::Result<OwnedFd> {
        let Endpoint::Unix(path) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a unix endpoint",
            ));
        };
        crate::sys::unix_listener(path, backlog)
    }

    fn connect(&self, endpoint: &Endpoint, _timeout: Duration) -> io::Result<ClientSocket> {
        let Endpoint::Unix(path) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a unix endpoint",
            ));
        };
        Ok(ClientSocket::Unix(UnixStream::connect(path)?))
    }
}

/// Shared memory between local processes (`shm://name`).
#[derive(Debug, Default, Clone, Copy)]
pub struct ShmTransport;

impl Transport for ShmTransport {
    fn scheme(&self) -> &'static str {
        "shm"
    }

    /// The rendezvous socket, non-blocking (the shard accepts from it and creates each
    /// connection's segment with the node's ring geometry).
    fn listen(&self, endpoint: &Endpoint, _reuse_port: bool, _backlog: i32) -> io::Result<OwnedFd> {
        let Endpoint::Shm(name) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a shm endpoint",
            ));
        };
        let l = ShmListener::bind(name).map_err(shm_io)?.into_listener();
        l.set_nonblocking(true)?;
        Ok(OwnedFd::from(l))
    }

    fn connect(&self, endpoint: &Endpoint, _timeout: Duration) -> io::Result<ClientSocket> {
        let Endpoint::Shm(name) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a shm endpoint",
            ));
        };
        let stream = ShmStream::connect(name).map_err(shm_io)?;
        Ok(ClientSocket::Shm(Box::new(ShmSocket::new(stream))))
    }
}

/// QUIC (`quic://host:port`): a node's listener is a UDP socket per shard (made here); a
/// client's connection needs TLS, so [`crate::Client`] makes it from its configuration
/// ([`crate::quic::QuicSocket::connect`]) rather than through [`Transport::connect`].
#[derive(Debug, Default, Clone, Copy)]
pub struct QuicTransport;

impl Transport for QuicTransport {
    fn scheme(&self) -> &'static str {
        "quic"
    }

    fn listen(&self, endpoint: &Endpoint, reuse_port: bool, _backlog: i32) -> io::Result<OwnedFd> {
        let Endpoint::Quic(addr) = endpoint else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a quic endpoint",
            ));
        };
        crate::quic::udp::bind(addr, reuse_port)
    }

    fn connect(&self, _endpoint: &Endpoint, _timeout: Duration) -> io::Result<ClientSocket> {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a quic:// connection needs TLS: connect with Client and ClientConfig::tls",
        ))
    }
}

/// A shared-memory error as an I/O error: a closed peer is end of file, a dead one a reset.
pub(crate) fn shm_io(e: ShmError) -> io::Error {
    match e {
        ShmError::Io(e) => e,
        ShmError::WouldBlock => io::ErrorKind::WouldBlock.into(),
        ShmError::PeerClosed | ShmError::Closed => io::ErrorKind::BrokenPipe.into(),
        ShmError::PeerDied => io::ErrorKind::ConnectionReset.into(),
        other => io::Error::new(io::ErrorKind::InvalidData, other),
    }
}

/// A byte stream over a shared-memory connection, for code written against `Read`/`Write`
/// (the blocking [`crate::Client`]). Each `write` is one frame in the ring (at most the ring's
/// max frame); `read` copies from the frame at the head, keeping what did not fit.
#[derive(Debug)]
pub struct ShmSocket {
    stream: ShmStream,
    /// The rest of a frame that did not fit the last `read` (at most one max frame).
    rest: Vec<u8>,
    rest_at: usize,
    nonblocking: bool,
    read_timeout: Option<std::time::Duration>,
}

impl ShmSocket {
    /// Wrap a connected stream.
    pub fn new(stream: ShmStream) -> ShmSocket {
        ShmSocket {
            stream,
            rest: Vec::new(),
            rest_at: 0,
            nonblocking: false,
            read_timeout: None,
        }
    }

    /// The stream underneath.
    pub fn stream(&mut self) -> &mut ShmStream {
        &mut self.stream
    }
}

impl ShmSocket {
    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.stream.max_frame());
        self.stream.try_send(&buf[..n]).map(|()| n).map_err(shm_io)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(buf, true)
    }

    fn read_with(&mut self, buf: &mut [u8], nonblocking: bool) -> io::Result<usize> {
        if self.rest_at < self.rest.len() {
            let n = buf.len().min(self.rest.len() - self.rest_at);
            buf[..n].copy_from_slice(&self.rest[self.rest_at..self.rest_at + n]);
            self.rest_at += n;
            return Ok(n);
        }
        let got = if nonblocking {
            self.stream.try_recv()
        } else if let Some(t) = self.read_timeout {
            self.stream.recv_timeout(t).map(Some)
        } else {
            self.stream.recv().map(Some)
        };
        match got {
            Ok(Some(frame)) => {
                let n = buf.len().min(frame.len());
                buf[..n].copy_from_slice(&frame[..n]);
                if n < frame.len() {
                    self.rest.clear();
                    self.rest.extend_from_slice(&frame[n..]);
                    self.rest_at = 0;
                }
                Ok(n)
            }
            Ok(None) | Err(ShmError::WouldBlock) => Err(io::ErrorKind::WouldBlock.into()),
            Err(ShmError::PeerClosed) => Ok(0),
            Err(e) => Err(shm_io(e)),
        }
    }
}

impl io::Read for ShmSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read_with(buf, self.nonblocking)
    }
}

impl io::Write for ShmSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.stream.max_frame());
        let sent = if self.nonblocking {
            self.stream.try_send(&buf[..n])
        } else {
            self.stream.send(&buf[..n])
        };
        sent.map(|()| n).map_err(shm_io)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.stream.flush();
        Ok(())
    }
}

/// Write all of `buf`, spinning while a non-blocking socket is full (the blocking client's
/// writes: a busy-poll client never sleeps, a blocking one never sees `WouldBlock`).
pub(crate) fn write_all_spinning(w: &mut impl io::Write, buf: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < buf.len() {
        match w.write(&buf[off..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => off += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Why a TLS client handshake did not complete.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsConnectError {
    /// Socket I/O failed or timed out.
    #[error(transparent)]
    Io(#[from] io::Error),
    /// TLS refused the server (certificate, alert, corrupt record).
    #[error(transparent)]
    Tls(#[from] SecurityError),
    /// The node answered with a plaintext ERROR frame instead of TLS: it refused the
    /// connection before any handshake (banned 702, overloaded 501).
    #[error("refused by the node: {code}: {message}")]
    Refused {
        /// The ERROR code.
        code: ErrorCode,
        /// Its message.
        message: String,
    },
}

/// A TLS 1.3 client connection over TCP as a byte stream: the sans-IO [`TlsSession`] driven
/// over a blocking (or non-blocking) `TcpStream`. Decrypted bytes wait in a buffer bounded by
/// one read's worth of records.
pub struct TlsSocket {
    tcp: TcpStream,
    session: TlsSession,
    plain: Vec<u8>,
    plain_at: usize,
    rbuf: Box<[u8]>,
    wbuf: Vec<u8>,
}

impl std::fmt::Debug for TlsSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSocket")
            .field("tcp", &self.tcp)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A plaintext ERROR frame at the start of `data` (a node refusing before TLS).
fn plaintext_refusal(data: &[u8]) -> Option<(ErrorCode, String)> {
    let mut d = valkyrie_protocol::codec::Decoder::new(64 * 1024);
    d.feed(data);
    let f = d.decode().ok()??;
    if f.header.msg_type != valkyrie_protocol::MessageType::Error {
        return None;
    }
    let e = ErrorPayload::from_bytes(&f.payload).ok()?;
    Some((ErrorCode(e.code), e.message))
}

impl TlsSocket {
    /// Run the TLS handshake of `session` over the connected `tcp`, within `timeout`.
    pub fn handshake(
        mut tcp: TcpStream,
        mut session: TlsSession,
        timeout: std::time::Duration,
    ) -> Result<TlsSocket, TlsConnectError> {
        let deadline = std::time::Instant::now() + timeout;
        let mut rbuf = vec![0u8; 32 * 1024].into_boxed_slice();
        let mut wbuf = Vec::new();
        let mut plain = Vec::new();
        let mut first = true;
        while session.is_handshaking() {
            wbuf.clear();
            session.transmit(&mut wbuf);
            io::Write::write_all(&mut tcp, &wbuf)?;
            if !session.is_handshaking() {
                break;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Err(io::Error::from(io::ErrorKind::TimedOut).into());
            }
            tcp.set_read_timeout(Some(left))?;
            let n = io::Read::read(&mut tcp, &mut rbuf)?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the node closed the connection during the TLS handshake",
                )
                .into());
            }
            if first
                && rbuf[..2.min(n)] == *b"RC"
                && let Some((code, message)) = plaintext_refusal(&rbuf[..n])
            {
                return Err(TlsConnectError::Refused { code, message });
            }
            first = false;
            if let Err(e) = session.receive(&rbuf[..n], &mut plain) {
                wbuf.clear();
                session.transmit(&mut wbuf);
                let _ = io::Write::write_all(&mut tcp, &wbuf);
                return Err(e.into());
            }
        }
        // Anything the handshake flight still holds (the client Finished).
        wbuf.clear();
        session.transmit(&mut wbuf);
        io::Write::write_all(&mut tcp, &wbuf)?;
        wbuf.clear();
        tcp.set_read_timeout(None)?;
        Ok(TlsSocket {
            tcp,
            session,
            plain,
            plain_at: 0,
            rbuf,
            wbuf,
        })
    }

    /// The server's identity from its verified certificate (`x509:<name>`).
    pub fn peer_identity(&self) -> Option<String> {
        self.session.peer_identity()
    }

    /// The session.
    pub fn session(&self) -> &TlsSession {
        &self.session
    }

    /// Push pending records without blocking; `Ok` with some left when the kernel is full.
    fn push_pending(&mut self) -> io::Result<()> {
        while !self.wbuf.is_empty() {
            match crate::sys::send_nonblocking(&self.tcp, &self.wbuf) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.wbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push_pending()?;
        if !self.wbuf.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let n = buf.len().min(64 * 1024);
        if n == 0 {
            return Ok(0);
        }
        self.session
            .seal(&buf[..n], &mut self.wbuf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.push_pending()?;
        Ok(n)
    }

    fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_at < self.plain.len() {
                return io::Read::read(self, buf);
            }
            let n = crate::sys::recv_nonblocking(&self.tcp, &mut self.rbuf)?;
            if n == 0 {
                return Ok(0);
            }
            let peer_closed = self.receive_records(n);
            self.push_pending()?;
            if peer_closed? && self.plain.is_empty() {
                return Ok(0);
            }
        }
    }

    /// Open the `n` bytes just read into `rbuf` into plaintext; alerts and key updates the
    /// session wants to send are queued in `wbuf` either way (the caller writes them before
    /// acting on the result). Returns whether the peer closed.
    fn receive_records(&mut self, n: usize) -> io::Result<bool> {
        let got = self
            .session
            .receive(&self.rbuf[..n], &mut self.plain)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e));
        self.session.transmit(&mut self.wbuf);
        got.map(|g| g.peer_closed)
    }

    fn write_out(&mut self) -> io::Result<()> {
        write_all_spinning(&mut self.tcp, &self.wbuf)?;
        self.wbuf.clear();
        Ok(())
    }
}

impl io::Read for TlsSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.plain_at < self.plain.len() {
                let n = buf.len().min(self.plain.len() - self.plain_at);
                buf[..n].copy_from_slice(&self.plain[self.plain_at..self.plain_at + n]);
                self.plain_at += n;
                if self.plain_at == self.plain.len() {
                    self.plain.clear();
                    self.plain_at = 0;
                }
                return Ok(n);
            }
            let n = io::Read::read(&mut self.tcp, &mut self.rbuf)?;
            if n == 0 {
                return Ok(0);
            }
            let peer_closed = self.receive_records(n);
            self.write_out()?;
            if peer_closed? && self.plain.is_empty() {
                return Ok(0);
            }
        }
    }
}

impl io::Write for TlsSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.session
            .seal(buf, &mut self.wbuf)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.write_out()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The transport for an endpoint.
pub fn for_endpoint(endpoint: &Endpoint) -> &'static dyn Transport {
    match endpoint {
        Endpoint::Tcp(_) => &TcpTransport,
        Endpoint::Unix(_) => &UnixTransport,
        Endpoint::Shm(_) => &ShmTransport,
        Endpoint::Quic(_) => &QuicTransport,
    }
}
