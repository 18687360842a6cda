//! Connection configuration, shared by every connection of a node (wrap it in an `Arc`).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::codec::DEFAULT_MAX_FRAME;
use crate::frame::MAX_FRAME_LIMIT;
use crate::message::SecurityMode;
use crate::security::HandshakeProvider;
use crate::streams::{SchedulerLimits, WindowStrategy};

/// Smallest `max_frame` a peer may announce: a PONG must always fit.
pub const MIN_MAX_FRAME: u32 = 1024;

/// Settings for one side of a connection.
#[derive(Clone)]
pub struct Config {
    /// Our node id, sent in HELLO / HELLO_ACK.
    pub node_id: String,
    /// Client: modes offered, most preferred first. Server: modes accepted, most preferred
    /// first (the client's order decides among those both accept).
    pub security: Vec<SecurityMode>,
    /// Handshake implementations for the non-plaintext modes in `security`.
    pub handshakes: Vec<Arc<dyn HandshakeProvider>>,
    /// Largest payload we accept (announced in HELLO / HELLO_ACK), at most 64 MiB.
    pub max_frame: u32,
    /// Heartbeat interval we propose; the larger of both proposals is used (zero disables
    /// heartbeats only when both sides propose zero).
    pub heartbeat: Duration,
    /// Missed heartbeat intervals after which the connection is closed with error 108.
    pub max_missed_heartbeats: u32,
    /// Time allowed for HELLO and the security handshake (error 107 after it).
    pub handshake_timeout: Duration,
    /// Time allowed for a graceful close to drain.
    pub close_timeout: Duration,
    /// Receive window sizing for windowed streams.
    pub window: WindowStrategy,
    /// Concurrent streams the peer may open.
    pub max_streams: u32,
    /// When true, received stream bytes return credit only through
    /// [`Connection::release`](crate::Connection::release); otherwise on delivery.
    pub manual_flow_control: bool,
    /// Bounds of the outbound queues.
    pub scheduler: SchedulerLimits,
    /// Most payload bytes of PING/PONG the connection tracks in flight (pings outstanding).
    pub max_pings_in_flight: usize,
    /// Server side of `zero_trust`: who may send which message types. A zero_trust connection
    /// without a policy allows nothing (deny by default).
    pub policy: Option<Arc<crate::security::zero_trust::Policy>>,
    /// The capabilities offered in NEGOTIATE ([`crate::features`]; default: every one this
    /// build has). Empty: the connecting side does not negotiate.
    pub features: Vec<String>,
    /// Where this side runs, sent in HELLO / HELLO_ACK so that a peer on the same host and
    /// network namespace can move the connection to shared memory (UPGRADE). `None` (the
    /// default here; the runtime fills it in): not said.
    pub host: Option<crate::message::HostId>,
    /// Offer (client) or accept (server) Valkyrie streams on QUIC streams of their own: set
    /// by the runtime on QUIC connections only (default off).
    pub quic_streams: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            node_id: String::from("valkyrie"),
            security: vec![SecurityMode::Plaintext],
            handshakes: Vec::new(),
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat: Duration::from_secs(5),
            max_missed_heartbeats: 3,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            window: WindowStrategy::Adaptive {
                initial: 256 * 1024,
                min: 64 * 1024,
                max: 16 * 1024 * 1024,
            },
            max_streams: 256,
            manual_flow_control: false,
            scheduler: SchedulerLimits::default(),
            max_pings_in_flight: 16,
            policy: None,
            features: crate::features::FEATURES
                .iter()
                .map(|f| f.name.to_owned())
                .collect(),
            host: None,
            quic_streams: false,
        }
    }
}

impl Config {
    /// Defaults with this node id.
    pub fn new(node_id: impl Into<String>) -> Self {
        Config {
            node_id: node_id.into(),
            ..Config::default()
        }
    }

    /// The provider for `mode`, if configured.
    pub fn provider(&self, mode: &SecurityMode) -> Option<&Arc<dyn HandshakeProvider>> {
        self.handshakes.iter().find(|p| &p.mode() == mode)
    }

    /// Whether this side can run `mode` (plaintext needs no provider).
    pub fn supports(&self, mode: &SecurityMode) -> bool {
        self.security.contains(mode)
            && (*mode == SecurityMode::Plaintext || self.provider(mode).is_some())
    }

    /// Check that the settings agree with each other: every mode in `security` other than
    /// plaintext has exactly one handshake provider, every provider serves a mode in
    /// `security`, at least one mode is named, and `max_frame` lies between
    /// [`MIN_MAX_FRAME`] and 64 MiB. The runtime's node and client builders call this and
    /// return the error instead of starting with a configuration that would offer a mode it
    /// cannot run.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.security.is_empty() {
            return Err(ConfigError::NoSecurityMode);
        }
        for mode in &self.security {
            let providers = self.handshakes.iter().filter(|p| &p.mode() == mode).count();
            match (mode, providers) {
                (SecurityMode::Plaintext, _) | (_, 1) => {}
                (_, 0) => return Err(ConfigError::MissingProvider(mode.clone())),
                (_, _) => return Err(ConfigError::DuplicateProvider(mode.clone())),
            }
        }
        if let Some(p) = self
            .handshakes
            .iter()
            .find(|p| !self.security.contains(&p.mode()))
        {
            return Err(ConfigError::UnusedProvider(p.mode()));
        }
        if !(MIN_MAX_FRAME..=MAX_FRAME_LIMIT).contains(&self.max_frame) {
            return Err(ConfigError::MaxFrame(self.max_frame));
        }
        Ok(())
    }
}

/// A connection configuration whose parts disagree (see [`Config::validate`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `security` is empty: nothing could be offered or accepted.
    #[error("no security mode is configured")]
    NoSecurityMode,
    /// A mode is offered or accepted, but no handshake provider runs it.
    #[error("security mode {0} is configured without a handshake provider")]
    MissingProvider(SecurityMode),
    /// Two providers claim the same mode.
    #[error("security mode {0} has more than one handshake provider")]
    DuplicateProvider(SecurityMode),
    /// A provider is configured for a mode that `security` does not list.
    #[error("a handshake provider for {0} is configured, but {0} is not offered or accepted")]
    UnusedProvider(SecurityMode),
    /// `max_frame` is below the minimum or above 64 MiB.
    #[error("max_frame {0} is outside {MIN_MAX_FRAME}..=67108864")]
    MaxFrame(u32),
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("node_id", &self.node_id)
            .field("security", &self.security)
            .field(
                "handshakes",
                &self.handshakes.iter().map(|h| h.mode()).collect::<Vec<_>>(),
            )
            .field("max_frame", &self.max_frame)
            .field("heartbeat", &self.heartbeat)
            .field("max_missed_heartbeats", &self.max_missed_heartbeats)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("close_timeout", &self.close_timeout)
            .field("window", &self.window)
            .field("max_streams", &self.max_streams)
            .field("manual_flow_control", &self.manual_flow_control)
            .field("scheduler", &self.scheduler)
            .field("host", &self.host)
            .field("quic_streams", &self.quic_streams)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Side;
    use crate::security::{HandshakeProvider, SecurityHandshake};

    /// A provider that is never asked for a handshake: validation only reads its mode.
    struct Named(SecurityMode);

    impl HandshakeProvider for Named {
        fn mode(&self) -> SecurityMode {
            self.0.clone()
        }
        fn new_handshake(&self, _side: Side) -> Box<dyn SecurityHandshake> {
            unreachable!("validation never starts a handshake")
        }
    }

    fn with(security: Vec<SecurityMode>, providers: &[SecurityMode]) -> Config {
        Config {
            security,
            handshakes: providers
                .iter()
                .map(|m| Arc::new(Named(m.clone())) as Arc<dyn HandshakeProvider>)
                .collect(),
            ..Config::new("n")
        }
    }

    #[test]
    fn validation_refuses_modes_and_providers_that_do_not_match() {
        use SecurityMode::*;
        assert_eq!(Config::default().validate(), Ok(()));
        assert_eq!(with(vec![Token, Plaintext], &[Token]).validate(), Ok(()));
        assert_eq!(
            with(vec![Token, Plaintext], &[]).validate(),
            Err(ConfigError::MissingProvider(Token)),
            "offering token without its provider"
        );
        assert_eq!(
            with(vec![Plaintext], &[NoiseXk]).validate(),
            Err(ConfigError::UnusedProvider(NoiseXk)),
            "a provider for a mode not offered"
        );
        assert_eq!(
            with(vec![Token], &[Token, Token]).validate(),
            Err(ConfigError::DuplicateProvider(Token))
        );
        assert_eq!(
            with(vec![], &[]).validate(),
            Err(ConfigError::NoSecurityMode)
        );
        let tiny = Config {
            max_frame: MIN_MAX_FRAME - 1,
            ..Config::default()
        };
        assert_eq!(
            tiny.validate(),
            Err(ConfigError::MaxFrame(MIN_MAX_FRAME - 1))
        );
        // zero_trust over another mode is one provider, for zero_trust.
        let zt = Config {
            security: vec![ZeroTrust],
            handshakes: vec![Arc::new(crate::security::zero_trust::ZeroTrust::over(
                Named(NoiseXk),
            ))],
            ..Config::new("n")
        };
        assert_eq!(zt.validate(), Ok(()));
    }
}
