//! The blocking client on a link's machinery: made from [`ConnectOptions`], it tries the URLs
//! in order, backs off between rounds behind the circuit breaker (the pure [`Link`] a shard
//! drives for [`Ctx::connect`](crate::Ctx::connect), driven here in the caller's thread),
//! connects again when its connection has ended, and sends a request again on the next
//! connection when its node went away (CLOSE 502, draining) before answering it — what the
//! [`ClientHandle`](crate::ClientHandle) does, one request at a time.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use valkyrie_protocol::connection::State as ConnState;
use valkyrie_protocol::{CloseReason, ErrorCode, Frame, MessageType};

use super::{Client, ClientConfig, ClientError};
use crate::link::{ConnectOptions, Link, LinkState, Next};
use crate::url::Endpoint;

/// A blocking client's link: its options and policy, and what it has done.
pub(super) struct Failover {
    pub(super) link: Link,
    /// Settings of every attempt (the options' protocol and TLS folded in).
    pub(super) cfg: ClientConfig,
    rng: SmallRng,
    /// The URL of the connection now.
    pub(super) connected: Option<Endpoint>,
    reconnects: u64,
    pub(super) retried: u64,
    /// Made by [`Client::connect_any`]: re-probes and resends on a broken connection.
    pub(super) selector: Option<super::selector::Selector>,
}

impl Failover {
    /// Attempts from `next` until one connects, the link stops, or `until` passes. Each
    /// turn is one attempt (bounded by its connect timeout and `until`) or one wait (only
    /// when it ends before `until`).
    fn walk(&mut self, mut next: Next, until: Instant) -> Result<Client, ClientError> {
        let mut last: Option<ClientError> = None;
        loop {
            let now = Instant::now();
            match next {
                Next::Connect(_) => {
                    let left = until.saturating_duration_since(now);
                    if left.is_zero() {
                        return Err(last.unwrap_or(ClientError::Timeout));
                    }
                    let url = self.link.url().clone();
                    let mut cfg = self.cfg.clone();
                    cfg.connect_timeout = self.link.opts.connect_timeout.min(left);
                    match Client::connect_to(&url, cfg) {
                        Ok(client) => {
                            self.link.succeeded(Instant::now());
                            self.connected = Some(url);
                            return Ok(client);
                        }
                        Err(e) => {
                            let error = format!("{url}: {e}");
                            next = self.link.failed(Instant::now(), error, &mut self.rng);
                            last = Some(e);
                        }
                    }
                }
                Next::Wait(t) if t < until => {
                    std::thread::sleep(t.saturating_duration_since(now));
                    next = self.link.begin(Instant::now());
                }
                Next::Wait(_) | Next::Stop => {
                    return Err(last
                        .unwrap_or_else(|| ClientError::NotConnected(self.link.state().clone())));
                }
            }
        }
    }
}

impl ClientError {
    /// The node went away (CLOSE or ERROR 502: it is draining): connect again, elsewhere
    /// if need be. Not a failure of the request.
    pub fn is_going_away(&self) -> bool {
        match self {
            ClientError::Closed(CloseReason::Peer { code, .. }) => {
                *code == ErrorCode::SHUTTING_DOWN.0
            }
            ClientError::Closed(CloseReason::PeerError { code, .. })
            | ClientError::Peer { code, .. } => *code == ErrorCode::SHUTTING_DOWN,
            _ => false,
        }
    }
}

impl Client {
    /// Connect through a link's options, as a shard's link or a
    /// [`ClientHandle`](crate::ClientHandle) would: the URLs in order, then the options'
    /// backoff between rounds behind their circuit breaker, until a handshake completes or
    /// `wait` has passed (the error is then the last attempt's). The options' protocol
    /// configuration and TLS, when set, take the place of `cfg`'s; each attempt takes at most
    /// the options' `connect_timeout`.
    ///
    /// The client keeps the options: when its connection has ended (and the options'
    /// `reconnect` is on) the next call connects again first, and a request whose node went
    /// away before answering it (CLOSE 502, the node drains) is sent again on the next
    /// connection within its timeout ([`Client::retried`]).
    pub fn connect_options(
        opts: ConnectOptions,
        mut cfg: ClientConfig,
        wait: Duration,
    ) -> Result<Client, ClientError> {
        if let Some(protocol) = &opts.protocol {
            cfg.protocol = (**protocol).clone();
        }
        if opts.tls.is_some() {
            cfg.tls = opts.tls.clone();
            cfg.tls_server_name = opts.tls_server_name.clone();
        }
        cfg.protocol.validate()?;
        let mut f = Box::new(Failover {
            link: Link::new(opts),
            cfg,
            rng: SmallRng::seed_from_u64(seed()),
            connected: None,
            reconnects: 0,
            retried: 0,
            selector: None,
        });
        let first = f.link.begin(Instant::now());
        let mut client = f.walk(first, Instant::now() + wait)?;
        client.failover = Some(f);
        Ok(client)
    }

    /// Connect again through the options the client was made from (from the first URL),
    /// waiting up to `wait`; a connection still open is closed first. Events not yet read
    /// stay. Streams and requests of the old connection are gone with it.
    pub fn reconnect(&mut self, wait: Duration) -> Result<(), ClientError> {
        let Some(mut f) = self.failover.take() else {
            return Err(ClientError::NotConnected(LinkState::Stopped {
                reason: "made without ConnectOptions: nothing to connect again to".into(),
            }));
        };
        if self.closed.is_none() {
            self.conn.close(0, "client reconnecting");
            // Best effort: the old connection is dropped either way.
            let _ = self.flush();
        }
        let until = Instant::now() + wait;
        let next = f.link.restart(Instant::now());
        match f.walk(next, until) {
            Ok(mut fresh) => {
                f.reconnects += 1;
                fresh.events = std::mem::take(&mut self.events);
                fresh.failover = Some(f);
                *self = fresh;
                Ok(())
            }
            Err(e) => {
                self.failover = Some(f);
                Err(e)
            }
        }
    }

    /// The URL of the connection, when the client was made from [`ConnectOptions`].
    pub fn url(&self) -> Option<&Endpoint> {
        self.failover.as_ref().and_then(|f| f.connected.as_ref())
    }

    /// Times the client connected again after its first connection.
    pub fn reconnects(&self) -> u64 {
        self.failover.as_ref().map_or(0, |f| f.reconnects)
    }

    /// Requests sent again on a new connection because their node went away first.
    pub fn retried(&self) -> u64 {
        self.failover.as_ref().map_or(0, |f| f.retried)
    }

    /// Before a call: a client made from options whose connection has ended (or is ending) connects
    /// again (when the options want it), within `until`.
    pub(super) fn revive(&mut self, until: Instant) -> Result<(), ClientError> {
        let wanted = self
            .failover
            .as_ref()
            .is_some_and(|f| f.link.opts.reconnect);
        // A connection that is closing (the node's CLOSE came; ours answers it as the old
        // connection is let go in `reconnect`) is as good as ended.
        let ending = self.closed.is_some()
            || matches!(self.conn.state(), ConnState::Closing | ConnState::Closed);
        if ending && wanted {
            self.reconnect(until.saturating_duration_since(Instant::now()))?;
        }
        Ok(())
    }

    /// Send a request and wait up to `timeout` for its response frame. An ERROR answering it
    /// is returned as [`ClientError::Peer`]. Made from [`ConnectOptions`], the client connects
    /// again first when its connection has ended, and sends the request again on the next
    /// connection when its node goes away before answering, all within `timeout`; made by
    /// [`Client::connect_any`], also when the connection broke under it, and it first moves
    /// to a better transport that answers again.
    pub fn request(
        &mut self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Frame, ClientError> {
        let deadline = Instant::now() + timeout;
        // Each turn is one connection: bounded by the deadline (a reconnect waits within it).
        loop {
            self.revive(deadline)?;
            self.reprobe();
            let resend_broken = self.failover.as_ref().is_some_and(|f| f.selector.is_some());
            match self.request_once(stream_id, msg_type, payload.clone(), deadline) {
                Err(e)
                    if (e.is_going_away() || (resend_broken && e.is_broken()))
                        && self.failover.is_some() =>
                {
                    if let Some(f) = self.failover.as_mut() {
                        f.retried += 1;
                    }
                    self.reconnect(deadline.saturating_duration_since(Instant::now()))?;
                }
                other => return other,
            }
        }
    }
}

/// A seed for the backoff's jitter (not a secret: spreads clients' retries apart).
fn seed() -> u64 {
    let mut b = [0u8; 8];
    if getrandom::fill(&mut b).is_err() {
        // The clock's nanoseconds spread retries well enough.
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos() as u64);
    }
    u64::from_le_bytes(b)
}
