//! What a reload of a running node replaces ([`Reload`], read by the source given to
//! [`NodeBuilder::reload_with`](crate::NodeBuilder::reload_with)) and why a reload can be
//! refused ([`ReloadError`]); `node_reload.rs` applies it.

use std::sync::Arc;

use valkyrie_protocol::Config;

/// What a reload replaces ([`NodeBuilder::reload_with`](crate::NodeBuilder::reload_with)): the material new connections use.
/// A part left `None` stays as it is.
#[derive(Default)]
#[non_exhaustive]
pub struct Reload {
    /// The protocol configuration: handshake providers with their keys, token secrets, the
    /// zero_trust policy, limits.
    pub protocol: Option<Config>,
    /// TLS on the TCP listeners (certificate, key, client CA); only where the node already
    /// has TLS (a listener does not switch between TLS and the clear).
    pub tls: Option<Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>>,
    /// TLS on the `quic://` listeners, and whether it asks for client certificates (as
    /// [`NodeBuilder::quic_tls`](crate::NodeBuilder::quic_tls)). A node whose QUIC listeners
    /// took the TCP listeners' TLS takes [`Reload::tls`] there too.
    pub quic_tls: Option<(
        Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
        bool,
    )>,
    /// The addresses intrusion detection never counts (when it is on).
    pub trusted: Option<Vec<crate::guard::IpNet>>,
    /// The secrets HTTP clients' bearer tokens are checked with (a rotated token file).
    pub bearer_keys: Option<crate::config::BearerKeys>,
}

impl Reload {
    /// Nothing replaced yet.
    pub fn new() -> Reload {
        Reload::default()
    }

    /// Builder-style: the protocol configuration.
    pub fn protocol(mut self, config: Config) -> Self {
        self.protocol = Some(config);
        self
    }

    /// Builder-style: TLS.
    pub fn tls(
        mut self,
        config: Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
    ) -> Self {
        self.tls = Some(config);
        self
    }

    /// Builder-style: QUIC's TLS; `client_auth` as in
    /// [`NodeBuilder::quic_tls`](crate::NodeBuilder::quic_tls).
    pub fn quic_tls(
        mut self,
        config: Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
        client_auth: bool,
    ) -> Self {
        self.quic_tls = Some((config, client_auth));
        self
    }

    /// Builder-style: the trusted list.
    pub fn trusted(mut self, trusted: Vec<crate::guard::IpNet>) -> Self {
        self.trusted = Some(trusted);
        self
    }

    /// Builder-style: the bearer-token secrets.
    pub fn bearer_keys(mut self, keys: crate::config::BearerKeys) -> Self {
        self.bearer_keys = Some(keys);
        self
    }
}

/// Why [`Node::reload`](crate::Node::reload) changed nothing (the old material stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The node was built without [`NodeBuilder::reload_with`](crate::NodeBuilder::reload_with).
    #[error("no reload source configured")]
    NotConfigured,
    /// The reload source failed (a file missing or unreadable, a bad key or certificate).
    #[error("{0}")]
    Source(String),
    /// The new protocol configuration is inconsistent.
    #[error(transparent)]
    Config(#[from] valkyrie_protocol::connection::ConfigError),
    /// TLS offered to a node without TLS (or the reverse).
    #[error("TLS cannot be added to a node started without it")]
    TlsSwitch,
    /// The new TLS cannot serve QUIC (no TLS 1.3, no suite QUIC can use).
    #[error("QUIC TLS: {0}")]
    QuicTls(String),
}
