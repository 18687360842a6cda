//! Reloading a running node's material ([`Node::reload`], SIGHUP under
//! [`Node::run_until_signal`]): keys and certificates, token secrets, the zero_trust policy,
//! the trusted list, bearer-token secrets, the QUIC listeners' TLS. New connections use what
//! was read; established ones keep what they authenticated with.

use std::sync::Arc;

use valkyrie_protocol::Config;

use crate::mesh::ListenerCommand;
use crate::node::Node;
use crate::url::Endpoint;

/// What a reload replaces ([`NodeBuilder::reload_with`]): the material new connections use.
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

/// Why [`Node::reload`] changed nothing (the old material stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The node was built without [`NodeBuilder::reload_with`].
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

impl Node {
    /// Read new material from the reload source ([`NodeBuilder::reload_with`]) and hand it
    /// to every shard for its new connections: certificates and keys, token secrets, the
    /// zero_trust policy, the trusted list. Established connections keep the identity they
    /// authenticated with. What the source refuses, or a configuration that does not hold
    /// together, changes nothing (logged at WARN, returned).
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = self.try_reload();
        match &result {
            Ok(()) => tracing::info!("reloaded: new connections use the new material"),
            Err(e) => tracing::warn!(error = %e, "reload refused; the old material stays"),
        }
        result
    }

    fn try_reload(&self) -> Result<(), ReloadError> {
        let source = self.reloader.as_ref().ok_or(ReloadError::NotConfigured)?;
        let new = source().map_err(ReloadError::Source)?;
        let mut current = self.cfg.lock().unwrap_or_else(|e| e.into_inner());
        let mut cfg = (**current).clone();
        if let Some(p) = new.protocol {
            p.validate()?;
            cfg.protocol = Arc::new(p);
        }
        // QUIC's TLS: what the reload names for it, or the TCP listeners' where QUIC was
        // started with theirs. Made once here for every shard, so a refusal changes nothing.
        let quic = match (&new.quic_tls, &new.tls) {
            (Some(q), _) => Some(q.clone()),
            (None, Some(tls)) if cfg.quic_tls.is_none() => Some((tls.clone(), true)),
            (None, _) => None,
        };
        if let Some(tls) = new.tls {
            if cfg.tls.is_none() {
                return Err(ReloadError::TlsSwitch);
            }
            cfg.tls = Some(tls);
        }
        let mut quic_server = None;
        if let Some((tls, client_auth)) = quic {
            let server = crate::quic::server_config(&tls)
                .map_err(|e| ReloadError::QuicTls(e.to_string()))?;
            if new.quic_tls.is_some() {
                cfg.quic_tls = Some(tls);
                cfg.quic_client_auth = client_auth;
            }
            quic_server = Some((server, client_auth));
        }
        if let Some(keys) = new.bearer_keys {
            cfg.http.bearer_keys = keys;
        }
        if let (Some(trusted), Some(guard)) = (new.trusted, cfg.guard.as_mut()) {
            guard.trusted = trusted;
        }
        let cfg = Arc::new(cfg);
        *current = cfg.clone();
        for w in self.wakers.iter() {
            w.reload(cfg.clone());
        }
        if let Some((server, client_auth)) = quic_server
            && self
                .endpoints
                .iter()
                .any(|e| matches!(e, Endpoint::Quic(_)))
        {
            for w in self.wakers.iter() {
                w.command(ListenerCommand::QuicTls {
                    server: server.clone(),
                    client_auth,
                });
            }
        }
        Ok(())
    }
}
