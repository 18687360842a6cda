//! quinn with the same framing: quinn's own tokio endpoint (a current-thread runtime pinned to
//! one core, as the Valkyrie node's one shard), answering PING with PONG on each bidirectional
//! stream a client opens. Same TLS and transport configuration as the node's `quic://`
//! listener (`valkyrie_runtime::quic::server_config`), so only the server differs.

use std::net::SocketAddr;
use std::sync::Arc;

/// The quinn echo server, until dropped.
pub struct QuinnEcho {
    /// Where it listens (UDP).
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl QuinnEcho {
    /// Start on an ephemeral loopback port, on `core`.
    pub fn start(core: usize, config: Arc<quinn::ServerConfig>) -> std::io::Result<QuinnEcho> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let addr = socket.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            super::pin(core);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tokio runtime");
            rt.block_on(async move {
                let runtime = quinn::default_runtime().expect("tokio runtime for quinn");
                let endpoint = quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some((*config).clone()),
                    socket,
                    runtime,
                )
                .expect("quinn endpoint");
                tokio::select! {
                    _ = rx => {}
                    _ = accept(endpoint.clone()) => {}
                }
                endpoint.close(0u32.into(), b"done");
            });
        });
        Ok(QuinnEcho {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

async fn accept(endpoint: quinn::Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else {
                return;
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(serve(send, recv));
            }
        });
    }
}

async fn serve(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0usize;
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        let n = match recv.read(&mut buf[have..]).await {
            Ok(Some(n)) => n,
            _ => return,
        };
        have += n;
        // Answer every whole frame in what arrived, in one write.
        out.clear();
        let Some(off) = super::answer_frames(&buf[..have], &mut out) else {
            return;
        };
        if !out.is_empty() && send.write_all(&out).await.is_err() {
            return;
        }
        buf.copy_within(off..have, 0);
        have -= off;
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

impl Drop for QuinnEcho {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
