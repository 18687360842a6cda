//! A shared-memory connection as a byte stream (`Read`/`Write`) for the blocking client, and
//! the shared-memory errors as I/O errors.

use std::io;

use valkyrie_shm::{ShmError, ShmStream};

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
    pub(super) nonblocking: bool,
    pub(super) read_timeout: Option<std::time::Duration>,
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
    pub(super) fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.stream.max_frame());
        self.stream.try_send(&buf[..n]).map(|()| n).map_err(shm_io)
    }

    pub(super) fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
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
