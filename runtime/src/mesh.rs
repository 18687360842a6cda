//! The cross-shard mesh: one bounded single-producer single-consumer ring (`rtrb`) for every
//! ordered pair of shards, drained in batches, and a waker per shard.
//!
//! A shard that is about to sleep sets its `sleeping` flag, looks at its inbound rings once
//! more, then blocks in `io_uring_enter`. A producer that pushes into a sleeping shard's ring
//! writes that shard's eventfd, whose pending read completes in the sleeper's ring and wakes
//! it. A busy shard costs its producers no syscall at all.

use std::any::Any;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use valkyrie_protocol::{MessageType, SendOptions};

use crate::ConnRef;

/// Messages between shards.
pub(crate) enum MeshMsg {
    /// Send a frame on a connection owned by the receiving shard.
    Send {
        to: ConnRef,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    },
    /// Close a connection owned by the receiving shard.
    Close {
        to: ConnRef,
        code: u16,
        reason: String,
    },
    /// A security failure from an address whose failures the receiving shard counts.
    Failure { ip: std::net::IpAddr },
    /// Another shard banned an address until the given time.
    Ban {
        ip: std::net::IpAddr,
        until: std::time::Instant,
    },
    /// A QUIC datagram for a connection the receiving shard owns (its connection id says
    /// so), received by another shard's socket on the same listener (boxed: a message
    /// stays one cache line; forwarding is the rare path of a client whose address changed).
    Datagram(Box<Forwarded>),
    /// A message for the receiving shard's service.
    User {
        from: usize,
        msg: Box<dyn Any + Send>,
    },
}

/// A forwarded QUIC datagram: the listener (its index in the shards' QUIC listeners), the
/// sender, its ECN bits, its bytes.
pub(crate) struct Forwarded {
    /// The node endpoint of the listener it came to (the shards' listener lists may differ:
    /// one opened while the node runs, a client endpoint made on first use).
    pub(crate) endpoint: u8,
    pub(crate) from: std::net::SocketAddr,
    pub(crate) ecn: Option<u8>,
    pub(crate) data: bytes::BytesMut,
}

/// Wakes one shard.
#[derive(Debug)]
pub(crate) struct Waker {
    pub(crate) eventfd: OwnedFd,
    pub(crate) sleeping: AtomicBool,
    /// Something outside the node asked the shard's service to look at its own queues
    /// (`Node::nudge`).
    pub(crate) nudged: AtomicBool,
    /// New material for the shard's new connections (`Node::reload`), taken at its next
    /// turn; `reloaded` says one waits.
    reload: std::sync::Mutex<Option<Arc<crate::config::NodeConfig>>>,
    reloaded: AtomicBool,
    /// Listeners to close or open (`Node::close_listener`, `Node::open_listener`), taken at
    /// its next turn; `commanded` says some wait.
    commands: std::sync::Mutex<Vec<ListenerCommand>>,
    pub(crate) commanded: AtomicBool,
}

/// A change to a shard's listeners while the node runs.
#[derive(Debug)]
pub(crate) enum ListenerCommand {
    /// Stop accepting on the listener of node endpoint `endpoint` and send the connections
    /// accepted through it away (CLOSE 502, going away).
    Close { endpoint: u8 },
    /// Accept on `fd` (of transport index `transport`) for node endpoint `endpoint`.
    Open {
        endpoint: u8,
        transport: u8,
        fd: OwnedFd,
    },
    /// Admit new connections again on the QUIC listener of node endpoint `endpoint` (its
    /// socket stayed open for the connections it was ending).
    Resume { endpoint: u8 },
    /// A new QUIC listener for node endpoint `endpoint`: this shard's UDP socket and the
    /// handshake configuration every shard shares.
    OpenQuic {
        endpoint: u8,
        fd: OwnedFd,
        server: Arc<quinn_proto::ServerConfig>,
        client_auth: bool,
    },
    /// New TLS for the QUIC listeners' new connections (a reload): the handshake
    /// configuration, made once for every shard, and whether it asks for client certificates.
    QuicTls {
        server: Arc<quinn_proto::ServerConfig>,
        client_auth: bool,
    },
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        Ok(Waker {
            eventfd: crate::sys::eventfd()?,
            sleeping: AtomicBool::new(false),
            nudged: AtomicBool::new(false),
            reload: std::sync::Mutex::new(None),
            reloaded: AtomicBool::new(false),
            commands: std::sync::Mutex::new(Vec::new()),
            commanded: AtomicBool::new(false),
        })
    }

    /// Hand the shard a reloaded configuration and wake it.
    pub(crate) fn reload(&self, cfg: Arc<crate::config::NodeConfig>) {
        *self.reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(cfg);
        self.reloaded.store(true, Ordering::SeqCst);
        self.wake(true);
    }

    /// The reloaded configuration waiting for the shard, if any (a relaxed load when none).
    pub(crate) fn take_reload(&self) -> Option<Arc<crate::config::NodeConfig>> {
        if !self.reloaded.load(Ordering::Relaxed) || !self.reloaded.swap(false, Ordering::SeqCst) {
            return None;
        }
        self.reload.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// Hand the shard a change to its listeners and wake it.
    pub(crate) fn command(&self, cmd: ListenerCommand) {
        self.commands
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(cmd);
        self.commanded.store(true, Ordering::SeqCst);
        self.wake(true);
    }

    /// The listener changes waiting for the shard (a relaxed load when none).
    pub(crate) fn take_commands(&self) -> Vec<ListenerCommand> {
        if !self.commanded.load(Ordering::Relaxed) || !self.commanded.swap(false, Ordering::SeqCst)
        {
            return Vec::new();
        }
        std::mem::take(&mut *self.commands.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Raise the nudge and wake the shard if it sleeps.
    pub(crate) fn nudge(&self) {
        self.nudged.store(true, Ordering::SeqCst);
        self.wake(false);
    }

    /// Take the nudge (whether one was raised since the last take).
    pub(crate) fn take_nudge(&self) -> bool {
        self.nudged.load(Ordering::Relaxed) && self.nudged.swap(false, Ordering::SeqCst)
    }

    /// Wake the shard if it sleeps (or unconditionally with `force`).
    pub(crate) fn wake(&self, force: bool) {
        if force || self.sleeping.load(Ordering::SeqCst) {
            crate::sys::eventfd_signal(&self.eventfd);
        }
    }
}

/// The mesh ring is full: the message was not sent (back-pressure; the sender retries or
/// drops, and the shard counts it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MeshFull;

/// A shard's sending side of the mesh: one producer per other shard, and every shard's waker.
pub(crate) struct MeshTx {
    /// `to[j]` sends to shard `j` (`None` for this shard itself).
    to: Vec<Option<rtrb::Producer<MeshMsg>>>,
    wakers: Arc<Vec<Waker>>,
}

impl MeshTx {
    pub(crate) fn new(to: Vec<Option<rtrb::Producer<MeshMsg>>>, wakers: Arc<Vec<Waker>>) -> Self {
        MeshTx { to, wakers }
    }

    /// How many shards the node runs.
    pub(crate) fn shards(&self) -> usize {
        self.wakers.len()
    }

    /// Whether `shard` is another shard of the node.
    pub(crate) fn reaches(&self, shard: usize) -> bool {
        matches!(self.to.get(shard), Some(Some(_)))
    }

    /// Push `msg` to `shard` and wake it if it sleeps.
    pub(crate) fn push(&mut self, shard: usize, msg: MeshMsg) -> Result<(), MeshFull> {
        let Some(Some(p)) = self.to.get_mut(shard) else {
            debug_assert!(false, "no mesh ring to shard {shard}");
            return Err(MeshFull);
        };
        p.push(msg).map_err(|_| MeshFull)?;
        self.wakers[shard].wake(false);
        Ok(())
    }

    /// The waker of `shard`.
    pub(crate) fn waker(&self, shard: usize) -> &Waker {
        &self.wakers[shard]
    }

    /// Every shard's waker (for handles that outlive a call: `Nudger`).
    pub(crate) fn wakers(&self) -> Arc<Vec<Waker>> {
        self.wakers.clone()
    }
}

/// The most memory the mesh's rings take together (see `NodeConfig::mesh_capacity`).
pub const MESH_MEMORY: usize = 64 << 20;

/// The capacity each of the mesh's rings gets among `n` shards when asked for `wanted`:
/// the whole mesh stays under [`MESH_MEMORY`], and no ring is smaller than 256 messages.
pub(crate) fn ring_capacity(n: usize, wanted: usize) -> usize {
    let rings = (n * n.saturating_sub(1)).max(1);
    let fits = MESH_MEMORY / (rings * std::mem::size_of::<MeshMsg>());
    wanted.min(fits).max(256)
}

/// Build the N×N mesh: `producers[i][j]` sends from shard `i` to shard `j`,
/// `consumers[j][i]` receives it (the diagonal is unused).
#[allow(clippy::type_complexity)]
pub(crate) fn build(
    n: usize,
    capacity: usize,
) -> (
    Vec<Vec<Option<rtrb::Producer<MeshMsg>>>>,
    Vec<Vec<Option<rtrb::Consumer<MeshMsg>>>>,
) {
    let mut producers: Vec<Vec<Option<rtrb::Producer<MeshMsg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    let mut consumers: Vec<Vec<Option<rtrb::Consumer<MeshMsg>>>> =
        (0..n).map(|_| (0..n).map(|_| None).collect()).collect();
    for (i, row) in producers.iter_mut().enumerate() {
        for (j, slot) in row.iter_mut().enumerate() {
            if i != j {
                let (p, c) = rtrb::RingBuffer::new(capacity);
                *slot = Some(p);
                consumers[j][i] = Some(c);
            }
        }
    }
    (producers, consumers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mesh_stays_within_its_memory_bound() {
        assert_eq!(ring_capacity(2, 8192), 8192);
        assert_eq!(ring_capacity(16, 8192), 4369);
        assert_eq!(ring_capacity(64, 8192), 260);
        assert_eq!(ring_capacity(1024, 8192), 256, "never below 256");
        for n in [2, 4, 16, 64] {
            assert!(n * (n - 1) * ring_capacity(n, 8192) * 64 <= MESH_MEMORY);
        }
    }

    #[test]
    fn a_mesh_message_is_one_cache_line() {
        // The mesh's memory is shards × (shards − 1) × capacity × this (docs/RUNTIME.md,
        // "Scaling"), which `ring_capacity` keeps under MESH_MEMORY.
        assert_eq!(std::mem::size_of::<MeshMsg>(), 64);
    }
}
