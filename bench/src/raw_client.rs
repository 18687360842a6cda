//! The client every latency system is measured with: the same HELLO, the same PING frame,
//! blocking or busy-polling reads.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use valkyrie_protocol::message::{Hello, Payload};
use valkyrie_protocol::{Frame, HEADER_LEN, MessageType, SecurityMode};

pub(crate) fn hello_frame() -> Vec<u8> {
    let hello = Hello::new("bench", vec![SecurityMode::Plaintext], 1 << 20, 60_000);
    let mut v = Vec::new();
    Frame::new(MessageType::Hello, 0, hello.to_bytes()).encode(&mut v);
    v
}

/// The same client for every system: writes a PING frame, reads the PONG frame.
pub(crate) struct RawClient {
    pub(crate) s: TcpStream,
    busy: bool,
    rbuf: Vec<u8>,
}

impl RawClient {
    pub(crate) fn connect(
        addr: SocketAddr,
        valkyrie: bool,
        busy: bool,
    ) -> std::io::Result<RawClient> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let mut c = RawClient {
            s,
            busy: false,
            rbuf: vec![0u8; 64 * 1024],
        };
        if valkyrie {
            c.s.write_all(&hello_frame())?;
            c.read_frame()?;
        }
        c.busy = busy;
        c.s.set_nonblocking(busy)?;
        Ok(c)
    }

    fn read_exact(&mut self, n: usize) -> std::io::Result<()> {
        let mut got = 0;
        while got < n {
            match self.s.read(&mut self.rbuf[got..n]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Read one frame; returns its total length.
    fn read_frame(&mut self) -> std::io::Result<usize> {
        self.read_exact(HEADER_LEN)?;
        let len = u32::from_be_bytes(self.rbuf[12..16].try_into().expect("4 bytes")) as usize;
        let mut tail = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match self.s.read(&mut tail[got..]) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(HEADER_LEN + len)
    }

    fn write_all(&mut self, b: &[u8]) -> std::io::Result<()> {
        let mut off = 0;
        while off < b.len() {
            match self.s.write(&b[off..]) {
                Ok(n) => off += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::hint::spin_loop(),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    pub(crate) fn round_trip(&mut self, ping: &[u8]) -> std::io::Result<Duration> {
        let t = Instant::now();
        self.write_all(ping)?;
        let n = self.read_exact(ping.len()).map(|_| ping.len());
        let _ = n?;
        debug_assert_eq!(self.rbuf[3], MessageType::Pong.to_u8());
        Ok(t.elapsed())
    }
}
