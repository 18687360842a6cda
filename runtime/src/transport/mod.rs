//! The transport trait: how a listening socket is made and how a client reaches a node.
//!
//! The shard loop drives every stream transport the same way through io_uring (accept into a
//! direct descriptor, multishot receive, send); a transport only decides how sockets are
//! created. TCP and Unix stream sockets are here, and shared memory (`shm://name`, through
//! `valkyrie-shm`): its rendezvous socket is accepted like the others, then the bytes move
//! through the shared rings and the shard waits on their futex words with io_uring.
//! RDMA has no hardware on the hosts this is built on: it is not supported yet.
//!
//! The client's side: [`ClientSocket`] (client_socket.rs) over TCP, Unix, shared memory
//! ([`ShmSocket`], shm_socket.rs), TLS ([`TlsSocket`], tls_socket.rs) or QUIC.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use valkyrie_shm::{ShmListener, ShmStream};

use crate::url::Endpoint;

mod client_socket;
mod shm_socket;
mod tls_socket;

pub use client_socket::ClientSocket;
pub use shm_socket::ShmSocket;
pub(crate) use shm_socket::{shm_io, write_all_spinning};
pub use tls_socket::{TlsConnectError, TlsSocket};

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

/// The transport for an endpoint.
pub fn for_endpoint(endpoint: &Endpoint) -> &'static dyn Transport {
    match endpoint {
        Endpoint::Tcp(_) => &TcpTransport,
        Endpoint::Unix(_) => &UnixTransport,
        Endpoint::Shm(_) => &ShmTransport,
        Endpoint::Quic(_) => &QuicTransport,
    }
}
