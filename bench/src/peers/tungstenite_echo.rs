//! tokio-tungstenite echoing every binary WebSocket message back: the peer of the `ws`
//! scenario (what a tokio WebSocket server does per message, with no protocol behind it).

use futures_util::{SinkExt, StreamExt};

/// Start the echo on an ephemeral loopback port with `workers` tokio workers (one: a
/// current-thread runtime pinned to `core`).
pub fn start(core: usize, workers: usize) -> std::io::Result<super::TokioServer> {
    super::TokioServer::serve_each(core, workers, |s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_binary() && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
}
