//! Reloading a running node ([`Node::reload`], SIGHUP under [`Node::run_until_signal`]): keys
//! and certificates, token secrets, the zero_trust policy, the trusted list, bearer-token
//! secrets, the QUIC listeners' TLS. New connections use what was read; established ones keep
//! what they authenticated with.

use std::sync::Arc;

use crate::mesh::ListenerCommand;
use crate::node::Node;
use crate::reload::ReloadError;
use crate::url::Endpoint;

impl Node {
    /// Read new material from the reload source ([`NodeBuilder::reload_with`](crate::NodeBuilder::reload_with)) and hand it
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
