//! tokio-tungstenite echoing every binary WebSocket message back: the peer of the `ws`
//! scenario (what a tokio WebSocket server does per message, with no protocol behind it).

use futures_util::{SinkExt, StreamExt};

/// Start the echo on an ephemeral loopback port with `workers` tokio workers (one: a
/// current-thread runtime pinned to `core`).
pub fn start(core: usize, workers: usize) -> std::io::Result<super::TokioServer> {
    super::TokioServer::start(core, workers, |l, stop| async move {
        tokio::select! {
            _ = stop => {}
            _ = async {
                loop {
                    let Ok((s, _)) = l.accept().await else { continue };
                    let _ = s.set_nodelay(true);
                    tokio::spawn(async move {
                        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                            return;
                        };
                        while let Some(Ok(msg)) = ws.next().await {
                            if msg.is_binary() && ws.send(msg).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            } => {}
        }
    })
}
