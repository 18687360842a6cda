//! tokio with the same framing: a current-thread runtime (or a multi-thread one for the
//! throughput scenario) answering PING with PONG.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The tokio echo server.
pub struct TokioEcho;

impl TokioEcho {
    /// Start on an ephemeral loopback port: `workers == 1` is a current-thread runtime pinned
    /// to `core`; more is a multi-thread runtime with that many workers.
    pub fn start(core: usize, workers: usize) -> std::io::Result<super::TokioServer> {
        super::TokioServer::serve_each(core, workers, |s| async move {
            let _ = serve(s).await;
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
