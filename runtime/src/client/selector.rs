//! The transport selector: [`Client::connect_any`] takes every URL a peer may be reached at,
//! ranks them — shared memory (same host, no kernel on the data path), then Unix sockets, then
//! QUIC, then TCP — skips those that cannot reach the
//! peer from here, and connects to the best that answers. When the connection breaks it moves
//! to the next (the link's failover) and sends an unanswered request again, so none is lost
//! silently; while on a lower-ranked one it tries the better ones again every two heartbeat
//! intervals and moves back to the first that answers.

use std::time::{Duration, Instant};

use valkyrie_protocol::retry::{CircuitBreaker, ExponentialBackoff, Jitter};

use super::{Client, ClientConfig, ClientError};
use crate::link::ConnectOptions;
use crate::url::{Endpoint, EndpointError};

/// How long a probe of a better transport may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(250);

/// A selector's clock: how often to look above, and when it last did.
pub(super) struct Selector {
    every: Duration,
    last: Instant,
}

/// Where the selector ranks a transport: lower is tried first.
pub fn transport_rank(endpoint: &Endpoint) -> u8 {
    match endpoint {
        Endpoint::Shm(_) => 0,
        Endpoint::Unix(_) => 1,
        Endpoint::Quic(_) => 2,
        Endpoint::Tcp(_) => 3,
    }
}

/// Whether `endpoint` may reach a peer from this host: a Unix socket's path must exist (a
/// shared-memory name lives in the abstract namespace: only trying tells).
fn reachable(endpoint: &Endpoint) -> bool {
    match endpoint {
        Endpoint::Unix(path) => path.exists(),
        Endpoint::Shm(_) | Endpoint::Tcp(_) | Endpoint::Quic(_) => true,
    }
}

impl ClientError {
    /// The connection broke under a request (it ended, or its socket failed): not an answer.
    pub(super) fn is_broken(&self) -> bool {
        matches!(self, ClientError::Io(_) | ClientError::Closed(_))
    }
}

impl Client {
    /// Connect to the best of `urls` (ranked by [`transport_rank`], the caller's order within
    /// a rank; those that cannot reach the peer skipped), waiting up to `wait` for one to
    /// answer. The client fails over to the next when its connection breaks, sends again a
    /// request it had no answer to, and every two heartbeat intervals
    /// (`cfg.protocol.heartbeat`) while on a lower-ranked transport tries the better ones,
    /// moving back to the first that answers ([`Client::url`] says where it is).
    pub fn connect_any<S: AsRef<str>>(
        urls: &[S],
        cfg: ClientConfig,
        wait: Duration,
    ) -> Result<Client, ClientError> {
        let mut ranked: Vec<Endpoint> = urls
            .iter()
            .filter_map(|u| u.as_ref().parse::<Endpoint>().ok())
            .filter(reachable)
            .collect();
        if ranked.is_empty() {
            return Err(ClientError::Endpoint(EndpointError {
                url: urls
                    .iter()
                    .map(|u| u.as_ref())
                    .collect::<Vec<_>>()
                    .join(","),
                reason: "none of these reaches a peer from this host".into(),
            }));
        }
        ranked.sort_by_key(transport_rank);
        let names: Vec<String> = ranked.iter().map(ToString::to_string).collect();
        let heartbeat = cfg.protocol.heartbeat;
        // Failover at once to the next; a full round failing waits a little, not seconds.
        let opts = ConnectOptions::new(&names)?
            .backoff(
                ExponentialBackoff::new(
                    Duration::from_millis(10),
                    heartbeat.max(Duration::from_millis(20)),
                )
                .with_jitter(Jitter::Full),
            )
            .breaker(CircuitBreaker::new(u32::MAX, Duration::from_millis(1), 1));
        let mut client = Client::connect_options(opts, cfg, wait)?;
        if let Some(f) = client.failover.as_mut() {
            f.selector = Some(Selector {
                every: heartbeat * 2,
                last: Instant::now(),
            });
        }
        Ok(client)
    }

    /// On a lower-ranked transport, once every two heartbeat intervals: try the better ones
    /// (each within [`PROBE_TIMEOUT`]) and move to the first that answers.
    pub(super) fn reprobe(&mut self) {
        let Some(f) = self.failover.as_mut() else {
            return;
        };
        let Some(sel) = f.selector.as_mut() else {
            return;
        };
        if sel.last.elapsed() < sel.every {
            return;
        }
        sel.last = Instant::now();
        let Some(now) = f.connected.clone() else {
            return;
        };
        let urls = f.link.opts.urls().to_vec();
        let here = urls.iter().position(|u| *u == now).unwrap_or(0);
        for better in &urls[..here] {
            let mut cfg = f.cfg.clone();
            cfg.connect_timeout = PROBE_TIMEOUT;
            let Ok(mut fresh) = Client::connect_to(better, cfg) else {
                continue;
            };
            tracing::info!(from = %now, to = %better, "moving to a better transport");
            // The old connection ends cleanly; nothing is in flight between calls.
            self.conn.close(0, "moving to a better transport");
            let _ = self.flush();
            let mut f = self.failover.take().expect("a selector's failover");
            f.connected = Some(better.clone());
            fresh.events = std::mem::take(&mut self.events);
            fresh.failover = Some(f);
            *self = fresh;
            return;
        }
    }
}
