//! `mtls`: TLS 1.3 with X.509 certificates on both sides (via `rustls`, aws-lc-rs provider,
//! X25519MLKEM768 hybrid key exchange preferred, X25519 and P-256 accepted), as the transport
//! *under* the frames.
//!
//! Unlike the other modes, TLS wraps the whole byte stream: a standard TLS client (`openssl
//! s_client` with a client certificate) connects, and the first bytes inside the tunnel are the
//! HELLO. [`TlsSession`] is the sans-IO TLS state machine a transport drives: bytes from the
//! socket go in through [`TlsSession::receive`], frames go out through [`TlsSession::seal`], and
//! nothing here touches a socket or a clock. Once the TLS handshake has verified the peer's
//! certificate chain against the configured CA, the transport hands the peer's identity to the
//! [`Connection`](crate::Connection) ([`Connection::set_transport_identity`](crate::Connection::set_transport_identity),
//! or [`Connection::handle_tls_input`](crate::Connection::handle_tls_input) which does it); HELLO then
//! negotiates `mtls` (or `zero_trust` over [`Mtls`]) and the [`Mtls`] handshake completes at
//! once with that identity. TLS seals the records, so frames carry no second record layer.
//!
//! A peer's identity is `x509:` followed by the certificate's first DNS subject alternative
//! name, else its first URI name, else its subject common name.
//!
//! ```
//! use valkyrie_protocol::security::mtls::{DevPki, TlsSession};
//!
//! // A throw-away CA with one server and one client certificate (for tests and examples).
//! let pki = DevPki::generate(&["node-a"], &["agent-7"]).unwrap();
//! // `mtls::server_config(chain_pem, key_pem, ca_pem)` and `mtls::client_config(...)` take
//! // any CA's PEM files; the dev PKI has shortcuts for its own.
//! let server_cfg = pki.server_config(0).unwrap();
//! let client_cfg = pki.client_config(0).unwrap();
//!
//! let mut server = TlsSession::server(server_cfg).unwrap();
//! let mut client = TlsSession::client(client_cfg, "node-a").unwrap();
//! let (mut to_server, mut to_client, mut plain) = (Vec::new(), Vec::new(), Vec::new());
//! client.seal(b"HELLO...", &mut to_server).unwrap();
//! while client.is_handshaking() || server.is_handshaking() || !to_server.is_empty() {
//!     server.receive(&std::mem::take(&mut to_server), &mut plain).unwrap();
//!     server.transmit(&mut to_client);
//!     client.receive(&std::mem::take(&mut to_client), &mut Vec::new()).unwrap();
//!     client.transmit(&mut to_server);
//! }
//! assert_eq!(plain, b"HELLO...");
//! assert_eq!(server.peer_identity().as_deref(), Some("x509:agent-7"));
//! assert_eq!(client.peer_identity().as_deref(), Some("x509:node-a"));
//! ```

use std::io::{self, Read, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::BufMut;
use rustls::crypto::{CryptoProvider, aws_lc_rs};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

pub use rustls;

use super::{
    HandshakeContext, HandshakeMessage, HandshakeProvider, HandshakeStatus, SecurityError,
    SecurityFault, SecurityHandshake,
};
use crate::Side;
use crate::frame::MessageType;
use crate::message::SecurityMode;

/// Plaintext bytes taken from rustls at a time while decrypting.
const READ_CHUNK: usize = 16 * 1024;

/// The crypto provider: aws-lc-rs with the key exchanges in preference order
/// X25519MLKEM768, X25519, P-256.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        kx_groups: vec![
            aws_lc_rs::kx_group::X25519MLKEM768,
            aws_lc_rs::kx_group::X25519,
            aws_lc_rs::kx_group::SECP256R1,
        ],
        ..aws_lc_rs::default_provider()
    })
}

fn config_error(what: &str, e: impl std::fmt::Display) -> SecurityError {
    SecurityError::new(SecurityFault::Configuration, format!("{what}: {e}"))
}

fn certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, SecurityError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(what, e))?;
    if certs.is_empty() {
        return Err(config_error(what, "no CERTIFICATE block"));
    }
    Ok(certs)
}

fn roots(ca_pem: &[u8]) -> Result<Arc<RootCertStore>, SecurityError> {
    let mut roots = RootCertStore::empty();
    for c in certs(ca_pem, "CA certificate")? {
        roots
            .add(c)
            .map_err(|e| config_error("CA certificate", e))?;
    }
    Ok(Arc::new(roots))
}

/// The ALPN name of Valkyrie frames inside TLS.
pub const ALPN_VALKYRIE: &[u8] = b"valkyrie/2";
/// The ALPN name of HTTP/1.1 inside TLS (a node serves its HTTP side there too).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A TLS 1.3 server configuration that requires a client certificate issued by `ca_pem`;
/// it offers ALPN [`ALPN_VALKYRIE`] and [`ALPN_HTTP1`].
/// `chain_pem` is the server's certificate chain (leaf first), `key_pem` its private key
/// (PKCS#8, SEC1 or PKCS#1), all PEM.
pub fn server_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> Result<Arc<ServerConfig>, SecurityError> {
    let provider = provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider.clone())
        .build()
        .map_err(|e| config_error("client verifier", e))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| config_error("key", e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("protocol versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(chain_pem, "certificate")?, key)
        .map_err(|e| config_error("certificate and key", e))?;
    // ALPN picks what the tunnel carries; a client that offers none speaks Valkyrie.
    cfg.alpn_protocols = vec![ALPN_VALKYRIE.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 client configuration that trusts servers issued by `ca_pem` and presents the
/// client certificate `chain_pem` with `key_pem`.
pub fn client_config(
    chain_pem: &[u8],
    key_pem: &[u8],
    ca_pem: &[u8],
) -> Result<Arc<ClientConfig>, SecurityError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| config_error("key", e))?;
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("protocol versions", e))?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(chain_pem, "certificate")?, key)
        .map_err(|e| config_error("certificate and key", e))?;
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 server configuration that authenticates the server alone (no client
/// certificate asked for): what a `quic://` listener without a client CA uses. ALPN as
/// [`server_config`].
pub fn server_config_without_client_auth(
    chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, SecurityError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| config_error("key", e))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("protocol versions", e))?
        .with_no_client_auth()
        .with_single_cert(certs(chain_pem, "certificate")?, key)
        .map_err(|e| config_error("certificate and key", e))?;
    cfg.alpn_protocols = vec![ALPN_VALKYRIE.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(Arc::new(cfg))
}

/// A TLS 1.3 client configuration that trusts servers issued by `ca_pem` and presents no
/// certificate of its own (server authentication only).
pub fn server_only_client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, SecurityError> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| config_error("protocol versions", e))?
        .with_root_certificates(roots(ca_pem)?)
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The identity of a certificate: `x509:` and its first DNS name, else its first URI name,
/// else its subject common name. `None` when the certificate does not parse or names nothing.
pub fn certificate_identity(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        let names = &san.value.general_names;
        let dns = names.iter().find_map(|n| match n {
            GeneralName::DNSName(s) => Some(*s),
            _ => None,
        });
        let uri = names.iter().find_map(|n| match n {
            GeneralName::URI(s) => Some(*s),
            _ => None,
        });
        if let Some(name) = dns.or(uri) {
            return Some(format!("x509:{name}"));
        }
    }
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(format!("x509:{cn}"))
}

/// What one [`TlsSession::receive`] call found besides plaintext.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Received {
    /// The TLS handshake completed during this call: [`TlsSession::peer_identity`] is now
    /// available.
    pub handshake_complete: bool,
    /// The peer sent close_notify: no more plaintext will come.
    pub peer_closed: bool,
}

/// One side of one TLS 1.3 connection, sans-IO.
pub struct TlsSession {
    conn: rustls::Connection,
    was_handshaking: bool,
    failed: bool,
}

impl std::fmt::Debug for TlsSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSession")
            .field("handshaking", &self.conn.is_handshaking())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

/// Type a rustls error: certificate problems (found here, or named by the peer's alert) are
/// bad credentials, incompatible parameters are a failed negotiation, a peer's other alerts a
/// violation, and anything else a corrupt or hostile record stream.
fn tls_error(e: &rustls::Error) -> SecurityError {
    use rustls::AlertDescription as A;
    use rustls::Error as E;
    let fault = match e {
        E::InvalidCertificate(_)
        | E::NoCertificatesPresented
        | E::InvalidCertRevocationList(_)
        | E::UnsupportedNameType => SecurityFault::BadCertificate,
        E::PeerIncompatible(_) => SecurityFault::Incompatible,
        E::AlertReceived(
            A::NoCertificate
            | A::BadCertificate
            | A::UnsupportedCertificate
            | A::CertificateRevoked
            | A::CertificateExpired
            | A::CertificateUnknown
            | A::UnknownCA
            | A::CertificateUnobtainable
            | A::BadCertificateStatusResponse
            | A::BadCertificateHashValue
            | A::CertificateRequired,
        ) => SecurityFault::BadCertificate,
        E::AlertReceived(_) => SecurityFault::Violation,
        _ => SecurityFault::Integrity,
    };
    SecurityError::new(fault, format!("tls: {e}"))
}

impl TlsSession {
    /// The server side of a connection just accepted.
    pub fn server(config: Arc<ServerConfig>) -> Result<TlsSession, SecurityError> {
        let conn = rustls::ServerConnection::new(config).map_err(|e| tls_error(&e))?;
        Ok(TlsSession {
            conn: conn.into(),
            was_handshaking: true,
            failed: false,
        })
    }

    /// The client side, expecting a server certificate for `server_name` (a DNS name or an IP
    /// address).
    pub fn client(
        config: Arc<ClientConfig>,
        server_name: &str,
    ) -> Result<TlsSession, SecurityError> {
        let name = ServerName::try_from(server_name.to_owned())
            .map_err(|e| config_error("server name", e))?;
        let conn = rustls::ClientConnection::new(config, name).map_err(|e| tls_error(&e))?;
        Ok(TlsSession {
            conn: conn.into(),
            was_handshaking: true,
            failed: false,
        })
    }

    /// Whether the TLS handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether TLS bytes wait for [`TlsSession::transmit`].
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    /// Whether the session failed (a fatal alert may still wait to be transmitted).
    pub fn has_failed(&self) -> bool {
        self.failed
    }

    /// The peer's identity once its certificate chain verified (see the module docs).
    pub fn peer_identity(&self) -> Option<String> {
        if self.conn.is_handshaking() {
            return None;
        }
        let leaf = self.conn.peer_certificates()?.first()?;
        certificate_identity(leaf)
    }

    /// The application protocol ALPN agreed, once the handshake is done (`None`: the client
    /// offered none, and speaks Valkyrie).
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    /// The negotiated key exchange group, once known (e.g. `X25519MLKEM768`).
    pub fn key_exchange(&self) -> Option<String> {
        self.conn
            .negotiated_key_exchange_group()
            .map(|g| format!("{:?}", g.name()))
    }

    /// Feed bytes received from the peer; decrypted application bytes are appended to
    /// `plain`. rustls bounds what it buffers (one record, one handshake message); plaintext is
    /// drained after every record, so nothing here grows by a length the peer claims. After an
    /// error the session is dead: transmit the alert, then close the transport.
    pub fn receive(&mut self, data: &[u8], plain: &mut Vec<u8>) -> Result<Received, SecurityError> {
        if self.failed {
            return Err(SecurityError::new(
                SecurityFault::Violation,
                "tls: session already failed",
            ));
        }
        let mut rest = data;
        let mut got = Received::default();
        loop {
            let (before, plain_before) = (rest.len(), plain.len());
            if !rest.is_empty()
                && let Err(e) = self.conn.read_tls(&mut rest)
                && e.kind() != io::ErrorKind::Other
            {
                // `Other` is rustls's "plaintext buffer full": it is drained below and
                // reading goes on. Anything else ends the session.
                self.failed = true;
                return Err(SecurityError::new(
                    SecurityFault::Violation,
                    format!("tls: {e}"),
                ));
            }
            let state = match self.conn.process_new_packets() {
                Ok(s) => s,
                Err(e) => {
                    self.failed = true;
                    return Err(tls_error(&e));
                }
            };
            let mut avail = state.plaintext_bytes_to_read();
            while avail > 0 {
                let start = plain.len();
                let n = avail.min(READ_CHUNK);
                plain.resize(start + n, 0);
                let read = self.conn.reader().read(&mut plain[start..]).unwrap_or(0);
                plain.truncate(start + read);
                if read == 0 {
                    break;
                }
                avail -= read;
            }
            if state.peer_has_closed() {
                got.peer_closed = true;
            }
            if self.was_handshaking && !self.conn.is_handshaking() {
                self.was_handshaking = false;
                got.handshake_complete = true;
            }
            if rest.is_empty() {
                return Ok(got);
            }
            if rest.len() == before && plain.len() == plain_before {
                self.failed = true;
                return Err(SecurityError::new(
                    SecurityFault::Violation,
                    "tls: no progress on received bytes",
                ));
            }
        }
    }

    /// Encrypt `plain` and append the TLS records (and anything else pending, such as
    /// handshake messages) to `out`. Before the handshake completes the plaintext is held by
    /// rustls (up to its buffer limit) and sent once keys exist.
    pub fn seal<B: BufMut>(&mut self, plain: &[u8], out: &mut B) -> Result<(), SecurityError> {
        let mut rest = plain;
        while !rest.is_empty() {
            let n = self
                .conn
                .writer()
                .write(rest)
                .map_err(|e| config_error("tls send", e))?;
            rest = &rest[n..];
            let wrote = self.transmit(out);
            if n == 0 && wrote == 0 {
                return Err(SecurityError::new(
                    SecurityFault::ResourceExhausted,
                    "tls: send buffer full before the handshake completed",
                ));
            }
        }
        self.transmit(out);
        Ok(())
    }

    /// Append pending TLS bytes (handshake messages, records, alerts) to `out`; returns how
    /// many.
    pub fn transmit<B: BufMut>(&mut self, out: &mut B) -> usize {
        let mut w = out.writer();
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut w) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    }

    /// Queue a close_notify alert (sent by the next [`TlsSession::transmit`]).
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }
}

/// The `mtls` handshake provider: completes as soon as HELLO agrees on the mode, with the
/// identity the TLS transport verified ([`HandshakeContext::transport_identity`]). Without a
/// TLS transport under the connection the handshake fails with 201.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mtls;

impl HandshakeProvider for Mtls {
    fn mode(&self) -> SecurityMode {
        SecurityMode::Mtls
    }

    fn new_handshake(&self, _side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(MtlsHandshake)
    }
}

struct MtlsHandshake;

impl SecurityHandshake for MtlsHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        _out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        match &ctx.transport_identity {
            Some(id) => Ok(HandshakeStatus::Complete {
                peer_identity: Some(id.clone()),
                protector: None,
            }),
            None => Err(SecurityError::new(
                SecurityFault::BadCertificate,
                "mtls requires a TLS transport with a verified peer certificate",
            )),
        }
    }

    fn handle(
        &mut self,
        _msg_type: MessageType,
        _payload: &[u8],
        _now: Instant,
        _out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        Err(SecurityError::new(
            SecurityFault::UnexpectedMessage,
            "mtls has no handshake frames: TLS authenticated the transport",
        ))
    }
}

/// A development PKI: a self-signed CA and certificates it issued, all in PEM. For tests,
/// examples and `valkyrie keygen ca|cert`; production deployments use their own CA.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// The CA certificate.
    pub ca_pem: Vec<u8>,
    /// The CA's private key (PKCS#8).
    pub ca_key_pem: Vec<u8>,
    /// Issued server certificates: (certificate, key) per name.
    pub servers: Vec<(Vec<u8>, Vec<u8>)>,
    /// Issued client certificates: (certificate, key) per name.
    pub clients: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Whether a certificate is for a server or a client (its extended key usage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertRole {
    /// `serverAuth`.
    Server,
    /// `clientAuth`.
    Client,
}

fn rcgen_error(e: rcgen::Error) -> SecurityError {
    config_error("certificate generation", e)
}

/// A fresh self-signed CA named `name`: (certificate PEM, key PEM).
pub fn generate_ca(name: &str, days: u32) -> Result<(Vec<u8>, Vec<u8>), SecurityError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, days);
    let cert = p.self_signed(&key).map_err(rcgen_error)?;
    Ok((cert.pem().into_bytes(), key.serialize_pem().into_bytes()))
}

fn validity(p: &mut rcgen::CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(i64::from(days));
}

/// Issue a certificate for `name` (a DNS name or an IP address, also the common name) signed
/// by the CA in `ca_pem`/`ca_key_pem`: (certificate chain PEM — leaf then CA —, key PEM).
pub fn issue(
    ca_pem: &[u8],
    ca_key_pem: &[u8],
    name: &str,
    role: CertRole,
    days: u32,
) -> Result<(Vec<u8>, Vec<u8>), SecurityError> {
    use rcgen::{
        CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca_key = std::str::from_utf8(ca_key_pem)
        .map_err(|e| config_error("CA key", e))
        .and_then(|s| KeyPair::from_pem(s).map_err(rcgen_error))?;
    let ca_text = std::str::from_utf8(ca_pem).map_err(|e| config_error("CA certificate", e))?;
    let issuer = Issuer::from_ca_cert_pem(ca_text, ca_key).map_err(rcgen_error)?;
    let key = KeyPair::generate().map_err(rcgen_error)?;
    let mut p = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_error)?;
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![match role {
        CertRole::Server => ExtendedKeyUsagePurpose::ServerAuth,
        CertRole::Client => ExtendedKeyUsagePurpose::ClientAuth,
    }];
    validity(&mut p, days);
    let cert = p.signed_by(&key, &issuer).map_err(rcgen_error)?;
    let mut chain = cert.pem().into_bytes();
    chain.extend_from_slice(ca_pem);
    Ok((chain, key.serialize_pem().into_bytes()))
}

impl DevPki {
    /// A CA named `valkyrie-dev-ca`, one server certificate per name in `servers` and one
    /// client certificate per name in `clients`, valid for 30 days.
    pub fn generate(servers: &[&str], clients: &[&str]) -> Result<DevPki, SecurityError> {
        let (ca_pem, ca_key_pem) = generate_ca("valkyrie-dev-ca", 30)?;
        let issue_all = |names: &[&str], role| {
            names
                .iter()
                .map(|n| issue(&ca_pem, &ca_key_pem, n, role, 30))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(DevPki {
            servers: issue_all(servers, CertRole::Server)?,
            clients: issue_all(clients, CertRole::Client)?,
            ca_pem: ca_pem.clone(),
            ca_key_pem: ca_key_pem.clone(),
        })
    }

    /// A server configuration ([`server_config`]) presenting server certificate `i` and
    /// requiring client certificates from this CA. Panics if there is no certificate `i`.
    pub fn server_config(&self, i: usize) -> Result<Arc<ServerConfig>, SecurityError> {
        server_config(&self.servers[i].0, &self.servers[i].1, &self.ca_pem)
    }

    /// A server configuration ([`server_config_without_client_auth`]) for server
    /// certificate `i` that asks for no client certificate (QUIC, token inside TLS). Panics
    /// if there is no certificate `i`.
    pub fn server_config_without_client_auth(
        &self,
        i: usize,
    ) -> Result<Arc<ServerConfig>, SecurityError> {
        server_config_without_client_auth(&self.servers[i].0, &self.servers[i].1)
    }

    /// A client configuration ([`client_config`]) presenting client certificate `i` and
    /// trusting this CA. Panics if there is no certificate `i`.
    pub fn client_config(&self, i: usize) -> Result<Arc<ClientConfig>, SecurityError> {
        client_config(&self.clients[i].0, &self.clients[i].1, &self.ca_pem)
    }

    /// Server certificate chain `i`.
    pub fn server_chain_pem(&self, i: usize) -> Vec<u8> {
        self.servers[i].0.clone()
    }

    /// Server key `i`.
    pub fn server_key_pem(&self, i: usize) -> Vec<u8> {
        self.servers[i].1.clone()
    }

    /// Client certificate chain `i`.
    pub fn client_chain_pem(&self, i: usize) -> Vec<u8> {
        self.clients[i].0.clone()
    }

    /// Client key `i`.
    pub fn client_key_pem(&self, i: usize) -> Vec<u8> {
        self.clients[i].1.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_prefers_dns_name() {
        let pki = DevPki::generate(&["node-a"], &["10.0.0.7"]).unwrap();
        let der = |pem: &[u8]| certs(pem, "x").unwrap().remove(0);
        assert_eq!(
            certificate_identity(&der(&pki.servers[0].0)).as_deref(),
            Some("x509:node-a")
        );
        // An IP-address SAN is not a DNS name: the common name names it.
        assert_eq!(
            certificate_identity(&der(&pki.clients[0].0)).as_deref(),
            Some("x509:10.0.0.7")
        );
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }
}
