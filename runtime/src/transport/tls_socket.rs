//! A TLS 1.3 client connection over TCP as a byte stream: the sans-IO TLS session driven over
//! a `TcpStream`.

use std::io;
use std::net::TcpStream;

use valkyrie_protocol::ErrorCode;
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::security::SecurityError;
use valkyrie_protocol::security::mtls::TlsSession;

use super::write_all_spinning;

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
    pub(super) tcp: TcpStream,
    session: TlsSession,
    plain: Vec<u8>,
    plain_at: usize,
    rbuf: Box<[u8]>,
    pub(super) wbuf: Vec<u8>,
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

    pub(super) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
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

    pub(super) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
