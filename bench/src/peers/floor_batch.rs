//! The batching floor: what the kernel allows a pipelined server. One thread per connection
//! reads whatever has arrived into a large buffer, answers every whole frame in it (a PONG
//! per PING) and writes all the answers in one `write`. No runtime, no parsing beyond the
//! header, no per-frame allocation: the least a server must spend per pipelined message.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Bytes read at a time (and the first size of the answer buffer).
const READ: usize = 256 * 1024;

/// A running batching-floor server.
pub struct FloorBatch {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl FloorBatch {
    /// Listen on an ephemeral loopback port; connection threads are pinned to `core`.
    pub fn start(core: usize) -> std::io::Result<FloorBatch> {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let addr = l.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let accept = std::thread::spawn(move || {
            super::pin(core);
            for conn in l.incoming() {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                std::thread::spawn(move || {
                    super::pin(core);
                    let _ = serve(conn);
                });
            }
        });
        Ok(FloorBatch {
            addr,
            stop,
            accept: Some(accept),
        })
    }
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

impl Drop for FloorBatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
