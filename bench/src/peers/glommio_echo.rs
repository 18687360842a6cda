//! glommio with the same framing: a thread-per-core io_uring runtime (the design Valkyrie's
//! runtime shares), one executor pinned to one core, answering PING with PONG.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};

/// A running glommio echo server.
pub struct GlommioEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GlommioEcho {
    /// Start on an ephemeral loopback port, the executor pinned to `core`.
    pub fn start(core: usize) -> std::io::Result<GlommioEcho> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let cores = core_affinity::get_core_ids().map_or(1, |c| c.len().max(1));
        let thread = std::thread::spawn(move || {
            let ex = LocalExecutorBuilder::new(Placement::Fixed(core % cores))
                .name("glommio-echo")
                .make();
            let ex = match ex {
                Ok(ex) => ex,
                Err(e) => {
                    let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                    return;
                }
            };
            ex.run(async move {
                let l = match TcpListener::bind("127.0.0.1:0") {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string())));
                        return;
                    }
                };
                let _ = tx.send(
                    l.local_addr()
                        .map_err(|e| std::io::Error::other(e.to_string())),
                );
                while !stop2.load(Ordering::Relaxed) {
                    let Ok(s) = l.accept().await else { continue };
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    glommio::spawn_local(serve(s)).detach();
                }
            });
        });
        let addr = rx
            .recv()
            .map_err(|_| std::io::Error::other("glommio executor did not start"))??;
        Ok(GlommioEcho {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0usize;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let n = s.read(&mut buf[have..]).await?;
        if n == 0 {
            return Ok(());
        }
        have += n;
        // Answer every whole frame in what arrived, in one write.
        out.clear();
        let Some(off) = super::answer_frames(&buf[..have], &mut out) else {
            return Ok(());
        };
        if !out.is_empty() {
            s.write_all(&out).await?;
        }
        buf.copy_within(off..have, 0);
        have -= off;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

impl Drop for GlommioEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so that it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
