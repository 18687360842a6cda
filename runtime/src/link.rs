//! Outbound connections a shard keeps up: [`Ctx::connect`](crate::Ctx::connect) makes a link
//! to a list of URLs, and the shard connects, hands every connection it makes to the service
//! like an accepted one, and reconnects when it ends: the URLs in order (failover), then the
//! protocol crate's exponential backoff with jitter between rounds, and a circuit breaker that
//! stops attempts for its recovery time after repeated failures. The service follows the
//! link through [`Service::on_link`](crate::Service::on_link) and
//! [`Ctx::link_state`](crate::Ctx::link_state).
//!
//! `Link` is the pure state machine (times passed in, randomness from the caller); the shard
//! does the I/O (`shard/links.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use valkyrie_protocol::Config;
use valkyrie_protocol::retry::{Backoff, CircuitBreaker, ExponentialBackoff, Jitter};
use valkyrie_protocol::security::mtls::rustls;

use crate::ConnRef;
use crate::url::{Endpoint, EndpointError};

/// A link: an outbound connection that a shard keeps up, across reconnects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId {
    /// The shard that owns the link (and every connection it makes).
    pub shard: u16,
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// How a link connects and reconnects.
#[derive(Clone)]
pub struct ConnectOptions {
    urls: Vec<Endpoint>,
    /// The protocol configuration of the link's connections (node id, security modes offered
    /// and their providers, limits). Default: the node's own.
    pub protocol: Option<Arc<Config>>,
    /// TLS 1.3 under the frames on TCP (for `mtls`, or token inside TLS), and QUIC's own TLS
    /// on `quic://` URLs (required there).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// The name the server's certificate must carry (default: the endpoint's IP address).
    pub tls_server_name: Option<String>,
    /// How long one attempt may take, from the socket to the end of the handshake.
    pub connect_timeout: Duration,
    /// The delay between rounds of attempts (every URL once): by default 50 ms doubling to
    /// 5 s with full jitter, without end.
    pub backoff: ExponentialBackoff,
    /// Opens after consecutive failed attempts and holds attempts back for its recovery
    /// time: by default 10 failures, 2 s, one probe.
    pub breaker: CircuitBreaker,
    /// Connect again when an established connection ends (default true).
    pub reconnect: bool,
    /// While up on another URL than the first, look at the first this often and move back
    /// to it when it answers and no request is in flight (default: never; TCP, Unix and
    /// shared-memory first URLs).
    pub reprobe: Option<Duration>,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("urls", &self.urls)
            .field("tls", &self.tls.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect", &self.reconnect)
            .finish_non_exhaustive()
    }
}

impl ConnectOptions {
    /// Options for `urls`, tried in order (at least one: `tcp://`, `unix://`, `quic://`,
    /// `shm://`).
    pub fn new<I, S>(urls: I) -> Result<ConnectOptions, EndpointError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls = urls
            .into_iter()
            .map(|u| u.as_ref().parse())
            .collect::<Result<Vec<Endpoint>, _>>()?;
        if urls.is_empty() {
            return Err(EndpointError {
                url: String::new(),
                reason: "no URL to connect to".into(),
            });
        }
        Ok(ConnectOptions {
            urls,
            protocol: None,
            tls: None,
            tls_server_name: None,
            connect_timeout: Duration::from_secs(5),
            backoff: ExponentialBackoff::new(Duration::from_millis(50), Duration::from_secs(5))
                .with_jitter(Jitter::Full),
            breaker: CircuitBreaker::new(10, Duration::from_secs(2), 1),
            reconnect: true,
            reprobe: None,
        })
    }

    /// The URLs, in the order they are tried.
    pub fn urls(&self) -> &[Endpoint] {
        &self.urls
    }

    /// Builder-style: the protocol configuration of the link's connections.
    pub fn protocol(mut self, config: Config) -> Self {
        self.protocol = Some(Arc::new(config));
        self
    }

    /// Builder-style: TLS under the frames on TCP, and QUIC's TLS.
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>, server_name: Option<String>) -> Self {
        self.tls = Some(config);
        self.tls_server_name = server_name;
        self
    }

    /// Builder-style: the time one attempt may take.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Builder-style: the delay between rounds of attempts.
    pub fn backoff(mut self, b: ExponentialBackoff) -> Self {
        self.backoff = b;
        self
    }

    /// Builder-style: the circuit breaker.
    pub fn breaker(mut self, b: CircuitBreaker) -> Self {
        self.breaker = b;
        self
    }

    /// Builder-style: whether to connect again when an established connection ends.
    pub fn reconnect(mut self, on: bool) -> Self {
        self.reconnect = on;
        self
    }

    /// Builder-style: move back to the first URL when it answers again, looking every
    /// `every` while up on another (see [`ConnectOptions::reprobe`]).
    pub fn reprobe(mut self, every: Duration) -> Self {
        self.reprobe = Some(every);
        self
    }
}

/// Where a link stands, as the service sees it.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum LinkState {
    /// An attempt to `url` is under way (the `attempt`-th since the link was last up).
    Connecting {
        /// The URL tried.
        url: Endpoint,
        /// Attempts since the link was last up, this one included.
        attempt: u32,
    },
    /// Connected and past the handshake: `conn` is the connection (it reaches the service's
    /// `on_connect`, `on_frame` and `on_close` like any other).
    Up {
        /// The connection.
        conn: ConnRef,
        /// The URL it went to.
        url: Endpoint,
    },
    /// Every URL failed this round: the next attempt is at `until`.
    Waiting {
        /// When the next round starts.
        until: Instant,
        /// Consecutive failed attempts.
        failures: u32,
        /// Why the last attempt failed.
        error: String,
        /// The circuit breaker is open (attempts are held back for its recovery time).
        circuit_open: bool,
    },
    /// No more attempts: [`Ctx::disconnect`](crate::Ctx::disconnect), no reconnect wanted,
    /// or the backoff's attempts ran out.
    Stopped {
        /// Why.
        reason: String,
    },
}

/// What the shard does next for a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// Connect to the URL of this index.
    Connect(usize),
    /// Nothing until this time, then [`Link::begin`].
    Wait(Instant),
    /// Nothing any more.
    Stop,
}

/// One link's connect and reconnect logic.
pub(crate) struct Link {
    pub(crate) opts: ConnectOptions,
    /// The URLs in the order they were given (`opts.urls` turns when a peer sends the link
    /// away).
    home: Vec<Endpoint>,
    /// The URL of the current (or next) attempt.
    url: usize,
    /// Consecutive failed attempts.
    failures: u32,
    state: LinkState,
}

impl Link {
    pub(crate) fn new(opts: ConnectOptions) -> Link {
        let url = opts.urls[0].clone();
        Link {
            home: opts.urls.clone(),
            opts,
            url: 0,
            failures: 0,
            state: LinkState::Connecting { url, attempt: 1 },
        }
    }

    pub(crate) fn state(&self) -> &LinkState {
        &self.state
    }

    /// The URL of the current attempt.
    pub(crate) fn url(&self) -> &Endpoint {
        &self.opts.urls[self.url]
    }

    /// Start an attempt at `now`, if the circuit breaker lets one through.
    pub(crate) fn begin(&mut self, now: Instant) -> Next {
        if matches!(self.state, LinkState::Stopped { .. }) {
            return Next::Stop;
        }
        if !self.opts.breaker.try_acquire(now) {
            let until = self.opts.breaker.retry_at().unwrap_or(now).max(now);
            self.state = LinkState::Waiting {
                until,
                failures: self.failures,
                error: "circuit breaker open".into(),
                circuit_open: true,
            };
            return Next::Wait(until);
        }
        self.state = LinkState::Connecting {
            url: self.opts.urls[self.url].clone(),
            attempt: self.failures + 1,
        };
        Next::Connect(self.url)
    }

    /// The attempt failed (the connect, the handshake, or its time ran out): the next URL at
    /// once, or after a full round the backoff's delay (and the breaker's, when it opened).
    pub(crate) fn failed<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        error: String,
        rng: &mut R,
    ) -> Next {
        if matches!(self.state, LinkState::Stopped { .. }) {
            return Next::Stop;
        }
        self.opts.breaker.on_failure(now);
        self.failures = self.failures.saturating_add(1);
        if self.url + 1 < self.opts.urls.len() {
            self.url += 1;
            return self.begin(now);
        }
        self.url = 0;
        let Some(delay) = self.opts.backoff.next_delay(rng) else {
            self.state = LinkState::Stopped {
                reason: format!("gave up after {} attempts: {error}", self.failures),
            };
            return Next::Stop;
        };
        let breaker_at = self.opts.breaker.retry_at();
        let until = (now + delay).max(breaker_at.unwrap_or(now));
        self.state = LinkState::Waiting {
            until,
            failures: self.failures,
            error,
            circuit_open: breaker_at.is_some(),
        };
        Next::Wait(until)
    }

    /// The attempt ended in an established connection.
    pub(crate) fn up(&mut self, now: Instant, conn: ConnRef) {
        self.succeeded(now);
        self.state = LinkState::Up {
            conn,
            url: self.opts.urls[self.url].clone(),
        };
    }

    /// The attempt succeeded: the breaker closes, the backoff and the failures start over
    /// (the state is the caller's: a blocking client has no `ConnRef`).
    pub(crate) fn succeeded(&mut self, now: Instant) {
        self.opts.breaker.on_success(now);
        self.opts.backoff.reset();
        self.failures = 0;
    }

    /// The established connection ended: connect again from the first URL, at once.
    pub(crate) fn lost(&mut self, now: Instant, reason: &str) -> Next {
        if !self.opts.reconnect {
            self.stop(format!("connection ended ({reason}); reconnect is off"));
            return Next::Stop;
        }
        self.restart(now)
    }

    /// The peer closed the established connection saying "going away" (it drains, or it
    /// cannot serve for now): connect again at once, from the next URL on (the one that sent
    /// it away is tried last).
    pub(crate) fn sent_away(&mut self, now: Instant, reason: &str) -> Next {
        if !self.opts.reconnect {
            self.stop(format!("connection ended ({reason}); reconnect is off"));
            return Next::Stop;
        }
        let n = self.opts.urls.len();
        self.opts.urls.rotate_left((self.url + 1) % n);
        self.url = 0;
        self.begin(now)
    }

    /// Connect again from the first URL, at once (whatever `reconnect` says: asked for).
    pub(crate) fn restart(&mut self, now: Instant) -> Next {
        self.url = 0;
        self.begin(now)
    }

    /// The first URL given.
    pub(crate) fn home(&self) -> &Endpoint {
        &self.home[0]
    }

    /// Whether the link is on (or next tries) its first URL.
    pub(crate) fn is_home(&self) -> bool {
        self.opts.urls[self.url] == self.home[0]
    }

    /// Take the URLs in their given order again: the next attempt after the current
    /// connection ends goes to the first.
    pub(crate) fn go_home(&mut self) {
        let current = self.opts.urls[self.url].clone();
        self.opts.urls = self.home.clone();
        self.url = self
            .opts
            .urls
            .iter()
            .position(|u| *u == current)
            .unwrap_or(0);
    }

    /// No more attempts.
    pub(crate) fn stop(&mut self, reason: String) {
        self.state = LinkState::Stopped { reason };
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn opts(urls: &[&str]) -> ConnectOptions {
        ConnectOptions::new(urls)
            .unwrap()
            .backoff(
                ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(40))
                    .with_jitter(Jitter::None),
            )
            .breaker(CircuitBreaker::new(4, Duration::from_secs(1), 1))
    }

    fn conn() -> ConnRef {
        ConnRef {
            shard: 0,
            slot: 3,
            generation: 9,
        }
    }

    #[test]
    fn a_link_sent_away_from_its_first_url_goes_home_when_asked() {
        let t0 = Instant::now();
        let mut l = Link::new(opts(&["unix:///tmp/a", "tcp://127.0.0.1:2"]));
        assert_eq!(l.begin(t0), Next::Connect(0));
        l.up(t0, conn());
        assert!(l.is_home());
        // Sent away from the first: the list turns, the link comes up on the second.
        assert_eq!(l.sent_away(t0, "going away"), Next::Connect(0));
        assert_eq!(l.url().to_string(), "tcp://127.0.0.1:2");
        l.up(t0, conn());
        assert!(!l.is_home());
        assert_eq!(l.home().to_string(), "unix:///tmp/a");
        // A probe found the first again: its connection ends, the next attempt goes home.
        l.go_home();
        assert_eq!(
            l.url().to_string(),
            "tcp://127.0.0.1:2",
            "still where it is up"
        );
        assert_eq!(l.lost(t0, "moving to a better transport"), Next::Connect(0));
        assert_eq!(l.url().to_string(), "unix:///tmp/a");
        assert!(l.is_home());
    }

    #[test]
    fn urls_are_tried_in_order_then_the_round_waits_its_backoff() {
        let mut rng = SmallRng::seed_from_u64(1);
        let t0 = Instant::now();
        let mut l = Link::new(opts(&["tcp://127.0.0.1:1", "tcp://127.0.0.1:2"]));
        assert_eq!(l.begin(t0), Next::Connect(0));
        assert_eq!(
            l.failed(t0, "refused".into(), &mut rng),
            Next::Connect(1),
            "failover at once"
        );
        assert_eq!(l.url().to_string(), "tcp://127.0.0.1:2");
        assert_eq!(
            l.failed(t0, "refused".into(), &mut rng),
            Next::Wait(t0 + Duration::from_millis(10)),
            "a full round failed: back off"
        );
        assert!(matches!(
            l.state(),
            LinkState::Waiting {
                failures: 2,
                circuit_open: false,
                ..
            }
        ));
        let t1 = t0 + Duration::from_millis(10);
        assert_eq!(
            l.begin(t1),
            Next::Connect(0),
            "the next round starts from the first URL"
        );
        l.up(t1, conn());
        assert!(matches!(l.state(), LinkState::Up { .. }));
        // A lost connection reconnects at once, from the first URL, with the backoff reset.
        assert_eq!(l.lost(t1, "peer went away"), Next::Connect(0));
        assert!(matches!(
            l.state(),
            LinkState::Connecting { attempt: 1, .. }
        ));
    }

    #[test]
    fn a_peer_that_sends_the_link_away_is_tried_last() {
        let t0 = Instant::now();
        let mut l = Link::new(opts(&[
            "tcp://127.0.0.1:1",
            "tcp://127.0.0.1:2",
            "tcp://127.0.0.1:3",
        ]));
        assert_eq!(l.begin(t0), Next::Connect(0));
        l.up(t0, conn());
        assert!(matches!(l.sent_away(t0, "going away"), Next::Connect(_)));
        assert_eq!(l.url().to_string(), "tcp://127.0.0.1:2");
        l.up(t0, conn());
        l.sent_away(t0, "going away");
        assert_eq!(l.url().to_string(), "tcp://127.0.0.1:3");
        l.up(t0, conn());
        l.sent_away(t0, "going away");
        assert_eq!(l.url().to_string(), "tcp://127.0.0.1:1", "round the list");
    }

    #[test]
    fn the_breaker_holds_attempts_back_after_repeated_failures() {
        let mut rng = SmallRng::seed_from_u64(2);
        let t0 = Instant::now();
        let mut l = Link::new(opts(&["tcp://127.0.0.1:1"]));
        let mut next = l.begin(t0);
        for _ in 0..4 {
            assert_eq!(next, Next::Connect(0));
            next = match l.failed(t0, "refused".into(), &mut rng) {
                Next::Wait(_) => l.begin(t0),
                other => other,
            };
        }
        // Four failures opened the breaker: no attempt before its recovery time.
        assert_eq!(next, Next::Wait(t0 + Duration::from_secs(1)));
        assert!(matches!(
            l.state(),
            LinkState::Waiting {
                circuit_open: true,
                ..
            }
        ));
        assert_eq!(
            l.begin(t0 + Duration::from_millis(500)),
            Next::Wait(t0 + Duration::from_secs(1))
        );
        // Then one probe; its success closes the breaker.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.begin(t1), Next::Connect(0));
        l.up(t1, conn());
        assert_eq!(l.lost(t1, "x"), Next::Connect(0));
    }

    #[test]
    fn a_link_stops_when_its_attempts_run_out_or_reconnect_is_off() {
        let mut rng = SmallRng::seed_from_u64(3);
        let t0 = Instant::now();
        let mut l = Link::new(
            opts(&["tcp://127.0.0.1:1"]).backoff(
                ExponentialBackoff::new(Duration::from_millis(1), Duration::from_millis(1))
                    .with_max_attempts(1),
            ),
        );
        assert_eq!(l.begin(t0), Next::Connect(0));
        assert!(matches!(
            l.failed(t0, "refused".into(), &mut rng),
            Next::Wait(_)
        ));
        assert_eq!(l.begin(t0 + Duration::from_millis(1)), Next::Connect(0));
        assert_eq!(l.failed(t0, "refused".into(), &mut rng), Next::Stop);
        assert!(matches!(l.state(), LinkState::Stopped { .. }));
        assert_eq!(l.begin(t0), Next::Stop, "a stopped link stays stopped");

        let mut once = Link::new(opts(&["tcp://127.0.0.1:1"]).reconnect(false));
        assert_eq!(once.begin(t0), Next::Connect(0));
        once.up(t0, conn());
        assert_eq!(once.lost(t0, "bye"), Next::Stop);
    }
}
