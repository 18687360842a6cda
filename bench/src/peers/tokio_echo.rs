//! tokio with the same framing: a current-thread runtime (or a multi-thread one for the
//! throughput scenario) answering PING with PONG.

use std::net::SocketAddr;
use std::thread::JoinHandle;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A running tokio echo server.
pub struct TokioEcho {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl TokioEcho {
    /// Start on an ephemeral loopback port: `workers == 1` is a current-thread runtime pinned
    /// to `core`; more is a multi-thread runtime with that many workers.
    pub fn start(core: usize, workers: usize) -> std::io::Result<TokioEcho> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            super::pin(core);
            let rt = if workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_io()
                    .build()
            }
            .expect("tokio runtime");
            rt.block_on(async move {
                let l = TcpListener::from_std(std_listener).expect("listener");
                tokio::select! {
                    _ = rx => {}
                    _ = async {
                        loop {
                            let Ok((s, _)) = l.accept().await else { continue };
                            tokio::spawn(serve(s));
                        }
                    } => {}
                }
            });
        });
        Ok(TokioEcho {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

async fn serve(mut s: TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
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

impl Drop for TokioEcho {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
