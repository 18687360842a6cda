//! The floor: the least a server can do. Blocking read and write, one thread per connection.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use valkyrie_protocol::HEADER_LEN;

/// A running floor server.
pub struct Floor {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Floor {
    /// Listen on an ephemeral loopback port; connection threads are pinned to `core`.
    pub fn start(core: usize) -> std::io::Result<Floor> {
        Floor::start_with(core, serve)
    }

    /// The same scaffold (accept thread, a thread per connection on `core`) answering with
    /// `serve` (the batching floor's, for one).
    pub fn start_with(
        core: usize,
        serve: fn(TcpStream) -> std::io::Result<()>,
    ) -> std::io::Result<Floor> {
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
        Ok(Floor {
            addr,
            stop,
            accept: Some(accept),
        })
    }
}

fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut head = [0u8; HEADER_LEN];
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if s.read_exact(&mut head).is_err() {
            return Ok(());
        }
        let Some(len) = super::pong_header(&mut head) else {
            return Ok(());
        };
        if len > buf.len() {
            buf.resize(len, 0);
        }
        s.read_exact(&mut buf[..len])?;
        let mut out = Vec::with_capacity(HEADER_LEN + len);
        out.extend_from_slice(&head);
        out.extend_from_slice(&buf[..len]);
        s.write_all(&out)?;
    }
}

impl Drop for Floor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}
