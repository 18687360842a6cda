//! The systems Valkyrie is measured against, built here so every figure comes from one run.
//!
//! The tokio and floor peers speak the same framing as Valkyrie (24-byte header, same payloads)
//! and answer a PING frame with a PONG frame carrying the same payload and correlation id, so
//! the client and the bytes on the wire are identical for those systems. The gRPC peer answers
//! the same payload as a unary call over HTTP/2 (what a gRPC deployment would send instead).

pub mod floor;
pub mod floor_batch;
pub mod glommio_echo;
pub mod grpc;
pub mod hyper_json;
pub mod quinn_echo;
pub mod tokio_echo;
pub mod tungstenite_echo;

use valkyrie_protocol::{Flags, HEADER_LEN, Header, MAX_FRAME_LIMIT, MessageType};

/// Turn the PING whose header is `head` into its PONG header, in place. Returns the payload
/// length, or `None` when the header is not a frame.
pub(crate) fn pong_header(head: &mut [u8; HEADER_LEN]) -> Option<usize> {
    let mut h = Header::decode(head, MAX_FRAME_LIMIT).ok()?;
    if h.msg_type == MessageType::Ping {
        h.msg_type = MessageType::Pong;
        h.flags |= Flags::RESPONSE;
    }
    *head = h.to_bytes();
    Some(h.length as usize)
}

/// Answer every whole frame at the start of `buf` (a PONG for each PING, other frames as
/// they are) into `out`; returns how many bytes were consumed, or `None` when the bytes are
/// not frames (the connection should close).
pub(crate) fn answer_frames(buf: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let mut off = 0;
    while buf.len() - off >= HEADER_LEN {
        let mut head: [u8; HEADER_LEN] = buf[off..off + HEADER_LEN].try_into().expect("24 bytes");
        let len = pong_header(&mut head)?;
        if buf.len() - off < HEADER_LEN + len {
            break;
        }
        out.extend_from_slice(&head);
        out.extend_from_slice(&buf[off + HEADER_LEN..off + HEADER_LEN + len]);
        off += HEADER_LEN + len;
    }
    Some(off)
}

/// A server on its own thread running a tokio runtime until dropped: the scaffold of the
/// tokio and gRPC peers.
pub struct TokioServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokioServer {
    /// Bind an ephemeral loopback port and run `serve(listener, stop)` on a runtime:
    /// `workers == 1` is a current-thread runtime pinned to `core`, more a multi-thread one
    /// with that many workers, unpinned. `serve` should return once `stop` fires.
    pub fn start<F, Fut>(core: usize, workers: usize, serve: F) -> std::io::Result<TokioServer>
    where
        F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut
            + Send
            + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            // A multi-thread runtime's workers inherit the affinity of the thread that builds
            // it: pinned here they would all share `core`. Its workers run where the kernel
            // puts them, as tokio is deployed.
            if workers <= 1 {
                pin(core);
            } else {
                unpin();
            }
            let rt = if workers <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(workers)
                    .enable_all()
                    .build()
            }
            .expect("tokio runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_listener).expect("listener");
                serve(l, rx).await;
            });
        });
        Ok(TokioServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }

    /// [`TokioServer::start`] with the accept loop every tokio peer runs: each connection
    /// (`TCP_NODELAY` set) served by `serve` on a task of its own, until stopped.
    pub fn serve_each<F, Fut>(core: usize, workers: usize, serve: F) -> std::io::Result<TokioServer>
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + Copy + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        TokioServer::start(core, workers, move |l, stop| async move {
            tokio::select! {
                _ = stop => {}
                _ = async {
                    loop {
                        let Ok((s, _)) = l.accept().await else { continue };
                        let _ = s.set_nodelay(true);
                        tokio::spawn(serve(s));
                    }
                } => {}
            }
        })
    }
}

impl Drop for TokioServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which core a server runs on and a client runs on.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// Server core.
    pub server: usize,
    /// Client core.
    pub client: usize,
}

/// Pin the calling thread to `core` (ignored when the core does not exist).
pub fn pin(core: usize) {
    // Among the machine's online cores, not the calling thread's mask (`get_core_ids`
    // lists only the cores the thread may already run on: a thread pinned to core 0 would
    // "pin" to core 0 whatever it asked for).
    // SAFETY: sysconf reads a system value; no memory is passed.
    #[allow(unsafe_code)]
    let online = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize;
    core_affinity::set_for_current(core_affinity::CoreId { id: core % online });
}

/// Let the calling thread run on every online core again (undo an inherited pinning).
pub fn unpin() {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it; sched_setaffinity reads it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let n = libc::sysconf(libc::_SC_NPROCESSORS_ONLN).max(1) as usize;
        for cpu in 0..n.min(libc::CPU_SETSIZE as usize) {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
