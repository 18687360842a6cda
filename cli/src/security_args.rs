//! The security flags `node` and `ping` share (see docs/SECURITY.md): which mode, which key
//! files, and the `--trusted` list of intrusion detection.

/// Security flags shared by `node` and `ping` (see docs/SECURITY.md).
#[derive(clap::Args, Clone)]
pub(crate) struct SecurityArgs {
    /// Security mode: plaintext, token, noise_xk, mtls, post_quantum or zero_trust (with
    /// --policy, over mtls when --tls-cert is given, else post_quantum when --pq-key is given,
    /// else noise_xk).
    #[arg(long, default_value = "plaintext")]
    security: String,
    /// mtls (or token inside TLS): our certificate chain, PEM (NAME.crt from keygen cert).
    #[arg(long)]
    tls_cert: Option<std::path::PathBuf>,
    /// mtls: our private key, PEM (NAME.key).
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// mtls: the CA certificate the peer's certificate must chain to, PEM. A node without it
    /// authenticates itself alone (QUIC, token inside TLS); a client with it alone checks the
    /// node's certificate and presents none.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
    /// QUIC listeners only: our certificate chain, PEM (default: --tls-cert). With it the TCP
    /// listeners stay as --security and --tls-cert leave them (plain HTTP keeps working).
    #[arg(long)]
    quic_cert: Option<std::path::PathBuf>,
    /// QUIC listeners only: our private key, PEM (default: --tls-key).
    #[arg(long)]
    quic_key: Option<std::path::PathBuf>,
    /// mtls client: the name the server's certificate must carry (default: its IP address).
    #[arg(long)]
    pub(crate) tls_server_name: Option<String>,
    /// noise_xk: our private key file (NAME.key).
    #[arg(long)]
    noise_key: Option<std::path::PathBuf>,
    /// noise_xk client: the server's public key file (NAME.pub).
    #[arg(long)]
    server_key: Option<std::path::PathBuf>,
    /// noise_xk node: accept only the client keys listed in this file (one hex key per line).
    #[arg(long)]
    allow_keys: Option<std::path::PathBuf>,
    /// token: the secrets file (node: every key it accepts; client: its one key).
    #[arg(long)]
    pub(crate) token_file: Option<std::path::PathBuf>,
    /// post_quantum: our identity file (NAME.pqkey).
    #[arg(long)]
    pq_key: Option<std::path::PathBuf>,
    /// post_quantum client: the server's fingerprint (64 hex digits, printed by keygen).
    #[arg(long)]
    server_fingerprint: Option<String>,
    /// post_quantum node: accept only these client fingerprints (one per line).
    #[arg(long)]
    allow_fingerprints: Option<std::path::PathBuf>,
    /// zero_trust node: the authorisation policy (`IDENTITY TYPE[,TYPE...]` per line).
    #[arg(long)]
    policy: Option<std::path::PathBuf>,
}

impl SecurityArgs {
    /// Fill `cfg`'s security modes and handshake providers for `side`.
    pub(crate) fn apply(
        &self,
        mut cfg: valkyrie_protocol::Config,
        server: bool,
    ) -> Result<valkyrie_protocol::Config, Box<dyn std::error::Error>> {
        use std::sync::Arc;
        use valkyrie_protocol::SecurityMode;
        use valkyrie_protocol::security::noise_xk::NoiseXk;
        use valkyrie_protocol::security::token::{TokenClient, TokenServer};
        use valkyrie_runtime::keys;
        let need = |p: &Option<std::path::PathBuf>, flag: &str| {
            p.clone()
                .ok_or_else(|| format!("--security {} needs {flag}", self.security))
        };
        match self.security.as_str() {
            "plaintext" => {}
            "mtls" => {
                use valkyrie_protocol::security::mtls::Mtls;
                self.tls_files()?;
                cfg.security = vec![SecurityMode::Mtls];
                cfg.handshakes = vec![Arc::new(Mtls)];
            }
            "zero_trust" if self.tls_cert.is_some() || self.pq_key.is_some() => {
                use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
                let inner = match self.tls_cert {
                    Some(_) => Self {
                        security: "mtls".into(),
                        ..self.clone()
                    },
                    None => Self {
                        security: "post_quantum".into(),
                        ..self.clone()
                    },
                }
                .apply(cfg.clone(), server)?;
                if server {
                    let text = std::fs::read_to_string(need(&self.policy, "--policy")?)?;
                    cfg.policy = Some(Arc::new(Policy::parse(&text)?));
                }
                cfg.security = vec![SecurityMode::ZeroTrust];
                cfg.handshakes = vec![Arc::new(ZeroTrust {
                    inner: inner.handshakes[0].clone(),
                })];
            }
            "noise_xk" | "zero_trust" => {
                let kp = keys::read_noise_keypair(&need(&self.noise_key, "--noise-key")?)?;
                let p = if server {
                    let mut p = NoiseXk::server(kp);
                    if let Some(f) = &self.allow_keys {
                        p = p.allow_clients(keys::read_public_keys(f)?);
                    }
                    p
                } else {
                    NoiseXk::client(
                        kp,
                        keys::read_public_key(&need(&self.server_key, "--server-key")?)?,
                    )
                };
                if self.security == "zero_trust" {
                    use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
                    if server {
                        let text = std::fs::read_to_string(need(&self.policy, "--policy")?)?;
                        cfg.policy = Some(Arc::new(Policy::parse(&text)?));
                    }
                    cfg.security = vec![SecurityMode::ZeroTrust];
                    cfg.handshakes = vec![Arc::new(ZeroTrust::over(p))];
                } else {
                    cfg.security = vec![SecurityMode::NoiseXk];
                    cfg.handshakes = vec![Arc::new(p)];
                }
            }
            "post_quantum" => {
                use valkyrie_protocol::security::post_quantum::PostQuantum;
                let id = keys::read_pq_identity(&need(&self.pq_key, "--pq-key")?)?;
                let p = if server {
                    let mut p = PostQuantum::server(id);
                    if let Some(f) = &self.allow_fingerprints {
                        let fps = std::fs::read_to_string(f)?
                            .lines()
                            .map(|l| l.split('#').next().unwrap_or("").trim().to_owned())
                            .filter(|l| !l.is_empty())
                            .map(|l| keys::parse_fingerprint(&l))
                            .collect::<Result<Vec<_>, _>>()?;
                        p = p.allow_clients(fps);
                    }
                    p
                } else {
                    let fp = self
                        .server_fingerprint
                        .as_deref()
                        .ok_or("--security post_quantum needs --server-fingerprint")?;
                    PostQuantum::client(id, keys::parse_fingerprint(fp)?)
                };
                cfg.security = vec![SecurityMode::PostQuantum];
                cfg.handshakes = vec![Arc::new(p)];
            }
            "token" => {
                let t = keys::read_tokens(&need(&self.token_file, "--token-file")?)?;
                cfg.security = vec![SecurityMode::Token];
                cfg.handshakes = if server {
                    vec![Arc::new(TokenServer::new(t))]
                } else {
                    let (id, secret) = t.into_iter().next().ok_or("empty token file")?;
                    vec![Arc::new(TokenClient::new(id, secret))]
                };
            }
            other => {
                return Err(format!(
                    "--security {other}: this build has plaintext, token, noise_xk, mtls, post_quantum and zero_trust"
                )
                .into());
            }
        }
        Ok(cfg)
    }

    /// The three PEM files mtls needs.
    fn tls_files(
        &self,
    ) -> Result<(&std::path::Path, &std::path::Path, &std::path::Path), Box<dyn std::error::Error>>
    {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(c), Some(k), Some(a)) => Ok((c, k, a)),
            _ => Err(format!(
                "--security {} over TLS needs --tls-cert, --tls-key and --tls-ca",
                self.security
            )
            .into()),
        }
    }

    /// TLS for a node: required by mtls, optional (with --tls-cert) under token and zero_trust.
    pub(crate) fn tls_server(
        &self,
    ) -> Result<
        Option<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>>,
        Box<dyn std::error::Error>,
    > {
        if self.security != "mtls" && self.tls_cert.is_none() {
            return Ok(None);
        }
        if self.security != "mtls"
            && self.tls_ca.is_none()
            && let (Some(c), Some(k)) = (&self.tls_cert, &self.tls_key)
        {
            // Token (or plaintext) inside TLS that authenticates the node alone.
            return Ok(Some(
                valkyrie_runtime::keys::tls_server_without_client_auth(c, k)?,
            ));
        }
        let (c, k, a) = self.tls_files()?;
        Ok(Some(valkyrie_runtime::keys::tls_server(c, k, a)?))
    }

    /// TLS for a node's `quic://` listeners (QUIC always has it): --quic-cert and --quic-key
    /// (else --tls-cert and --tls-key), and with --tls-ca client certificates are required
    /// (`mtls`). The flag says whether they are.
    pub(crate) fn quic_server(
        &self,
    ) -> Result<
        (
            std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>,
            bool,
        ),
        Box<dyn std::error::Error>,
    > {
        let cert = self.quic_cert.as_ref().or(self.tls_cert.as_ref());
        let key = self.quic_key.as_ref().or(self.tls_key.as_ref());
        let (Some(c), Some(k)) = (cert, key) else {
            return Err("a quic:// listener needs --quic-cert and --quic-key, or --tls-cert and --tls-key (and --tls-ca to require client certificates)".into());
        };
        Ok(match &self.tls_ca {
            Some(a) => (valkyrie_runtime::keys::tls_server(c, k, a)?, true),
            None => (
                valkyrie_runtime::keys::tls_server_without_client_auth(c, k)?,
                false,
            ),
        })
    }

    /// TLS for a client, in the same cases.
    pub(crate) fn tls_client(
        &self,
    ) -> Result<
        Option<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>>,
        Box<dyn std::error::Error>,
    > {
        if self.security != "mtls" && self.tls_cert.is_none() && self.tls_ca.is_none() {
            return Ok(None);
        }
        if self.security != "mtls"
            && self.tls_cert.is_none()
            && let Some(a) = &self.tls_ca
        {
            // The node alone is authenticated (QUIC, or token inside TLS).
            return Ok(Some(
                valkyrie_runtime::keys::tls_client_without_certificate(a)?,
            ));
        }
        let (c, k, a) = self.tls_files()?;
        Ok(Some(valkyrie_runtime::keys::tls_client(c, k, a)?))
    }
}

/// The `--trusted` list: loopback when empty, nothing for `none`.
pub(crate) fn parse_trusted(
    trusted: &[String],
) -> Result<Vec<valkyrie_runtime::guard::IpNet>, Box<dyn std::error::Error>> {
    if trusted.is_empty() {
        return Ok(valkyrie_runtime::guard::default_trusted());
    }
    Ok(trusted
        .iter()
        .filter(|t| t.as_str() != "none")
        .map(|t| {
            t.parse::<valkyrie_runtime::guard::IpNet>()
                .or_else(|_| {
                    t.parse::<std::net::IpAddr>()
                        .map(valkyrie_runtime::guard::IpNet::from)
                })
                .map_err(|e| format!("--trusted {t}: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?)
}
