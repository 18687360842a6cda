//! A client's connected socket, whichever transport carries it: one `Read`/`Write` for the
//! blocking client.

use std::io;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;

use super::{ShmSocket, TlsSocket};

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
