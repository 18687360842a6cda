//! One connection of a shard: its protocol state machine, its I/O (a socket in the ring's
//! direct-descriptor table, or a shared-memory stream), and where it is in its life. The
//! table that holds a shard's connections is [`table`]; the send path of a socket is
//! [`send`]. Nothing here submits to io_uring: the shard does, reading these states.
//!
//! The life of a connection (docs/RUNTIME.md draws it):
//! accepted → [`Life::Open`] (or [`Life::Refused`]: only an ERROR is sent) → (when input
//! may still arrive, [`Life::Lingering`]) → [`Life::Closing`]
//! (its operations cancelled, its descriptor closed) → removed from the table once the kernel
//! holds nothing of it ([`Conn::is_released`]).

pub(crate) mod http;
pub(crate) mod recv;
pub(crate) mod requests;
pub(crate) mod send;
pub(crate) mod table;
pub(crate) mod upgrade;
pub(crate) mod ws;

use std::net::IpAddr;

use valkyrie_protocol::security::mtls::TlsSession;
use valkyrie_protocol::{Connection, Tick, Transmit};
use valkyrie_shm::ShmStream;

use recv::Recv;
use requests::Requests;
use send::SendState;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Life {
    /// Refused at admission (connection limit, shutdown, ban): only its ERROR frame is sent,
    /// then it is closed. No service ever sees it.
    Refused,
    /// Served.
    Open,
    /// Its last bytes are sent and its sending side shut down; what the peer still sends is
    /// read and dropped until the peer's end of stream or its timer (the connection's `timer`
    /// holds the deadline), then it is closed (`shard/linger.rs`: a close with input unread
    /// would reset the connection, and the peer could lose those last bytes).
    Lingering(Linger),
    /// Being closed: its operations are cancelled and its descriptor closed (the slot may
    /// still wait for an orphaned send, or for the waits on a shared-memory mapping).
    Closing {
        /// The descriptor's close completed.
        fd_closed: bool,
        /// It was refused, never served (so never counted as active).
        refused: bool,
    },
}

/// Where a lingering connection's shutdown is. Its descriptor is closed only once the
/// shutdown has completed: a shutdown still to run when the descriptor's slot is closed and
/// reused would shut another connection's socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Linger {
    /// The shutdown is in flight.
    Shutting,
    /// The shutdown is in flight, and the connection is to close when it completes.
    CloseDue,
    /// The shutdown has completed.
    Shut,
}

/// A socket connection's I/O: a slot of the ring's direct-descriptor table, its send state,
/// and TLS under the frames when the listener has it.
#[derive(Debug)]
pub(crate) struct Socket {
    pub(crate) fixed: u32,
    pub(crate) recv: Recv,
    pub(crate) send: SendState,
    pub(crate) tls: Option<Box<TlsSession>>,
}

/// A shared-memory connection's I/O: the stream, and the operations armed in the ring on
/// its mapping (the mapping is released only once none is left).
pub(crate) struct ShmIo {
    pub(crate) stream: ShmStream,
    /// A frame taken from the protocol that did not fit the send ring yet, and how much of it
    /// was written (at most one frame per connection waits here).
    pub(crate) pending: Option<(Transmit, usize)>,
    /// Since when the send ring has been full with a frame waiting (slow-consumer timer).
    pub(crate) blocked_since: Option<Tick>,
    /// A futex wait for frames the peer commits.
    pub(crate) rx_armed: bool,
    /// A futex wait for space the peer releases.
    pub(crate) tx_armed: bool,
    /// The poll for the peer's hang-up.
    pub(crate) hup_armed: bool,
    /// Reading the receive ring stopped because the connection wants no input (its
    /// outbound queues are full): frames wait in the ring, and the peer's sends block.
    pub(crate) rx_held: bool,
}

impl ShmIo {
    pub(crate) fn new(stream: ShmStream) -> ShmIo {
        ShmIo {
            stream,
            pending: None,
            blocked_since: None,
            rx_armed: false,
            tx_armed: false,
            hup_armed: false,
            rx_held: false,
        }
    }

    /// Whether the ring still holds an operation on this connection's mapping.
    pub(crate) fn in_flight(&self) -> bool {
        self.rx_armed || self.tx_armed || self.hup_armed
    }
}

/// A QUIC connection's I/O: the first bidirectional stream of a QUIC connection that the
/// shard's endpoint holds (`shard/quic.rs`).
pub(crate) struct QuicIo {
    /// The shard's QUIC listener and the connection's handle in its endpoint.
    pub(crate) listener: u8,
    pub(crate) handle: u32,
    /// A frame taken from the protocol that the stream did not take whole yet.
    pub(crate) pending: Option<(Transmit, usize)>,
    /// Since when the stream's flow control has held a frame back (slow-consumer timer).
    pub(crate) blocked_since: Option<Tick>,
    /// Reading the stream stopped because the connection wants no input: QUIC's flow
    /// control then slows the peer.
    pub(crate) rx_held: bool,
    /// The bytes so far arrived as 0-RTT early data.
    pub(crate) early: bool,
    /// Early data is left unread until the handshake is confirmed.
    pub(crate) hold_early: bool,
    /// The first stream's frame in progress (input goes to the protocol in whole frames, so
    /// frames of other QUIC streams can come between).
    pub(crate) main: valkyrie_protocol::splitter::FrameSplitter,
}

impl QuicIo {
    /// Connection `handle` of QUIC endpoint `listener`; `early`: its bytes so far are 0-RTT
    /// data, `hold_early`: left unread until the handshake is confirmed.
    pub(crate) fn new(listener: u8, handle: u32, early: bool, hold_early: bool) -> QuicIo {
        QuicIo {
            listener,
            handle,
            pending: None,
            blocked_since: None,
            rx_held: false,
            early,
            hold_early,
            main: Default::default(),
        }
    }
}

/// A connection's I/O.
pub(crate) enum Io {
    /// TCP or Unix, through the ring.
    Socket(Socket),
    /// Shared memory (boxed: most connections are sockets).
    Shm(Box<ShmIo>),
    /// A QUIC stream.
    Quic(Box<QuicIo>),
}

/// One connection of a shard.
pub(crate) struct Conn {
    pub(crate) generation: u32,
    /// Its transport index (see `metrics::TRANSPORTS`; low 3 bits) and the node endpoint it
    /// was accepted on (its index in `Node::endpoints`, high 5 bits; [`NO_ENDPOINT`] for an
    /// outbound connection or an endpoint past the 31st): one byte, so that the connection
    /// stays 392 bytes. Read with [`Conn::transport`] and [`Conn::endpoint`].
    pub(crate) origin: u8,
    pub(crate) life: Life,
    pub(crate) proto: Connection,
    pub(crate) io: Io,
    /// The service has been told it connected.
    pub(crate) connected: bool,
    /// Just finished its handshake: release the handshake's buffers once flushed.
    pub(crate) fresh: bool,
    /// Accepted on a listener that serves HTTP too and nothing received yet: its first
    /// byte decides what it speaks.
    pub(crate) sniffing: bool,
    /// Queued for processing at the end of this round (see [`table::ConnTable::mark`]).
    pub(crate) dirty: bool,
    /// The service holds its input back (`Ctx::hold_input`).
    pub(crate) held: bool,
    /// The deadline of its entry in the shard's timer heap.
    pub(crate) timer: Option<Tick>,
    /// When it was accepted (or its outbound attempt began): microseconds from the shard's
    /// start, wrapping every 71 minutes — the handshake's duration is measured from it
    /// (a handshake never lasts that long: its deadline is seconds). Fits in the struct's
    /// padding (the connection stays 392 bytes).
    pub(crate) opened_us: u32,
    /// What few connections carry (boxed: the others pay 8 bytes for it).
    pub(crate) extra: Option<Box<Extra>>,
}

/// The parts of a connection that most connections do without.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    /// The peer's address (TCP, when intrusion detection is on).
    pub(crate) ip: Option<IpAddr>,
    /// The link that made this connection (index and generation in the shard's links).
    pub(crate) link: Option<(u32, u32)>,
    /// Requests in flight through `Ctx::request`.
    pub(crate) requests: Requests,
    /// The connection speaks HTTP/1.1.
    pub(crate) http: Option<Box<http::HttpConn>>,
    /// The connection became a WebSocket: its framing.
    pub(crate) ws: Option<Box<ws::WsConn>>,
    /// The connection is moving (or moved) to shared memory.
    pub(crate) upgrade: Option<Box<upgrade::Upgrade>>,
}

/// The endpoint part of [`Conn::origin`] that names none.
pub(crate) const NO_ENDPOINT: u8 = 31;

/// A connection's [`Conn::origin`]: its transport index and the node endpoint it came through.
pub(crate) fn origin(transport: u8, endpoint: u8) -> u8 {
    debug_assert!(transport < 8);
    (endpoint.min(NO_ENDPOINT) << 3) | (transport & 7)
}

impl Conn {
    /// Its transport index (see `metrics::TRANSPORTS`).
    pub(crate) fn transport(&self) -> u8 {
        self.origin & 7
    }

    /// Change its transport (a socket that became a WebSocket), keeping its endpoint.
    pub(crate) fn set_transport(&mut self, transport: u8) {
        self.origin = (self.origin & !7) | (transport & 7);
    }

    /// The node endpoint it was accepted on, if known.
    pub(crate) fn endpoint(&self) -> Option<u8> {
        let e = self.origin >> 3;
        (e != NO_ENDPOINT).then_some(e)
    }

    /// Whether the connection is served (not refused, not closing).
    pub(crate) fn is_open(&self) -> bool {
        self.life == Life::Open
    }

    /// Whether it is being closed (lingering, or closing).
    pub(crate) fn is_closing(&self) -> bool {
        matches!(self.life, Life::Closing { .. } | Life::Lingering(_))
    }

    /// Whether it lingers (see [`Life::Lingering`]).
    pub(crate) fn is_lingering(&self) -> bool {
        matches!(self.life, Life::Lingering(_))
    }

    /// The peer's address, when known.
    pub(crate) fn peer_ip(&self) -> Option<IpAddr> {
        self.extra.as_ref().and_then(|e| e.ip)
    }

    /// The link that made this connection, if it is outbound.
    pub(crate) fn link(&self) -> Option<(u32, u32)> {
        self.extra.as_ref().and_then(|e| e.link)
    }

    /// The connection's rarely used parts, allocated on first use.
    pub(crate) fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The HTTP state, when the connection speaks HTTP.
    pub(crate) fn http(&mut self) -> Option<&mut http::HttpConn> {
        self.extra.as_mut().and_then(|e| e.http.as_deref_mut())
    }

    /// Whether the connection speaks HTTP.
    pub(crate) fn is_http(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.http.is_some())
    }

    /// Whether the connection takes input now (its protocol's, or its HTTP reader's, wish;
    /// the service's hold aside).
    pub(crate) fn wants_input(&self) -> bool {
        match self.extra.as_deref() {
            Some(Extra { http: Some(h), .. }) => h.wants_input(),
            Some(Extra { ws: Some(w), .. }) => w.wants_input() && self.proto.wants_input(),
            _ => self.proto.wants_input(),
        }
    }

    /// The protocol and the shared-memory I/O its input comes from: a shared-memory
    /// connection's, or an upgraded socket connection's (split borrows of the two).
    pub(crate) fn proto_and_shm(&mut self) -> Option<(&mut Connection, &mut ShmIo)> {
        let shm = match &mut self.io {
            Io::Shm(s) => &mut **s,
            Io::Socket(_) => self
                .extra
                .as_mut()
                .and_then(|e| e.upgrade.as_mut())
                .and_then(|u| u.shm())?,
            Io::Quic(_) => return None,
        };
        Some((&mut self.proto, shm))
    }

    /// The connection's move to shared memory, if one began.
    pub(crate) fn upgrade(&mut self) -> Option<&mut upgrade::Upgrade> {
        self.extra.as_mut().and_then(|e| e.upgrade.as_deref_mut())
    }

    /// The socket I/O, for socket connections.
    pub(crate) fn socket(&mut self) -> Option<&mut Socket> {
        match &mut self.io {
            Io::Socket(s) => Some(s),
            Io::Shm(_) | Io::Quic(_) => None,
        }
    }

    /// Since when its output has waited on a peer that takes nothing (slow-consumer timer).
    pub(crate) fn stalled_since(&self) -> Option<Tick> {
        match &self.io {
            Io::Socket(s) => s.send.started(),
            Io::Shm(s) => s.blocked_since,
            Io::Quic(q) => q.blocked_since,
        }
    }

    /// Whether the connection may leave the table: it is closing, and the kernel holds
    /// nothing of it (its descriptor is closed and no send still reads its buffer; for shared
    /// memory, no wait is armed on its mapping).
    pub(crate) fn is_released(&self) -> bool {
        match (&self.life, &self.io) {
            (Life::Closing { fd_closed, .. }, Io::Socket(s)) => {
                *fd_closed
                    && !s.send.in_kernel()
                    && !self
                        .extra
                        .as_ref()
                        .and_then(|e| e.upgrade.as_ref())
                        .is_some_and(|u| u.in_flight())
            }
            (Life::Closing { .. }, Io::Shm(s)) => !s.in_flight(),
            // The QUIC connection lives on in the endpoint until its stream is acknowledged.
            (Life::Closing { .. }, Io::Quic(_)) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    /// What a shard holds per connection (docs/RUNTIME.md counts on it): a change here is a
    /// change in memory per connection, to be measured and written down.
    #[test]
    fn a_connection_slot_stays_392_bytes() {
        assert_eq!(std::mem::size_of::<super::Conn>(), 392);
    }
}
