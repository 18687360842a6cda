//! The batching floor: what the kernel allows a pipelined server. One thread per connection
//! reads whatever has arrived into a large buffer, answers every whole frame in it (a PONG
//! per PING) and writes all the answers in one `write`. No runtime, no parsing beyond the
//! header, no per-frame allocation: the least a server must spend per pipelined message.

use std::io::{Read, Write};
use std::net::TcpStream;

/// Bytes read at a time (and the first size of the answer buffer).
const READ: usize = 256 * 1024;

/// Start a batching floor on an ephemeral loopback port, connection threads on `core`.
pub fn start(core: usize) -> std::io::Result<super::floor::Floor> {
    super::floor::Floor::start_with(core, serve)
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; READ];
    let mut have = 0usize;
    let mut out = Vec::with_capacity(READ);
    loop {
        let n = s.read(&mut buf[have..])?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        out.clear();
        let Some(off) = super::answer_frames(&buf[..have], &mut out) else {
            return Ok(());
        };
        if !out.is_empty() {
            s.write_all(&out)?;
        }
        buf.copy_within(off..have, 0);
        have -= off;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}
