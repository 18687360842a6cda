//! QUIC (`quic://host:port`): the mapping of a Valkyrie connection onto a QUIC connection,
//! the configurations both sides use, and the client's blocking socket.
//!
//! The mapping (docs/PROTOCOL.md, "QUIC"): ALPN `valkyrie/2`; the Valkyrie connection's
//! frames, byte for byte as over TCP, travel on the first client-initiated bidirectional
//! stream (stream 0). TLS 1.3 is QUIC's own: a `quic://` listener needs a certificate, and
//! with a client CA it requires client certificates, whose identity HELLO then negotiates as
//! `mtls`. A resumed client may send HELLO, PING and HEALTH_CHECK in 0-RTT; any other frame
//! there is answered with ERROR 706 (too early) and may be sent again once the handshake is
//! confirmed.
//!
//! A node serves QUIC on its shards' own loops (`shard/quic.rs`, through io_uring, no other
//! runtime): one UDP socket and one `quinn-proto` endpoint per shard on `SO_REUSEPORT`. The
//! connection ids a shard issues carry its index (cid.rs), so a datagram the kernel hands
//! to another shard (a client whose port changed) is forwarded over the mesh to its owner.
//!
//! ```no_run
//! use valkyrie_runtime::{Client, ClientConfig};
//! use valkyrie_protocol::security::mtls;
//!
//! let ca = std::fs::read("ca.pem").unwrap();
//! let mut cfg = ClientConfig::default();
//! // Server authentication only: trust the node's CA.
//! cfg.tls = Some(mtls::server_only_client_config(&ca).unwrap());
//! cfg.tls_server_name = Some("node-a".into());
//! let mut client = Client::connect_with("quic://127.0.0.1:7421", cfg).unwrap();
//! client.ping(b"hello").unwrap();
//! ```

pub(crate) mod cid;
mod mux;
mod socket;
pub(crate) mod udp;

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn_proto::{IdleTimeout, TransportConfig, VarInt};
use valkyrie_protocol::security::mtls::rustls;

pub use socket::QuicSocket;

/// The ALPN name of Valkyrie over QUIC.
pub const ALPN: &[u8] = b"valkyrie/2";

/// Bidirectional streams a peer may have open at once: the connection's own, and room for
/// Valkyrie streams on QUIC streams of their own.
const MAX_BIDI_STREAMS: u32 = 64;
/// Unidirectional streams a peer may have open at once: Valkyrie streams on QUIC streams of
/// their own (a Valkyrie stream that begins while this many are open goes on the first
/// stream). quinn-proto keeps ~35 bytes per allowed stream in every connection: 64 cost an
/// idle connection ~3 KB, 256 ~9 KB (measured, BENCHMARKS.md).
pub(crate) const MAX_UNI_STREAMS: u32 = 64;
/// How long a QUIC connection may be silent (both sides also send Valkyrie heartbeats).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Handshakes a shard's endpoint holds unanswered at once: beyond them new ones are refused.
pub(crate) const MAX_INCOMING: usize = 4096;

/// Why a QUIC configuration could not be made from a TLS one.
#[derive(Debug, thiserror::Error)]
#[error("QUIC needs TLS 1.3 with an AES-128-GCM suite: {0}")]
pub struct QuicConfigError(String);

fn transport() -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_BIDI_STREAMS))
        .max_concurrent_uni_streams(VarInt::from_u32(MAX_UNI_STREAMS))
        .max_idle_timeout(Some(
            IdleTimeout::try_from(IDLE_TIMEOUT).expect("60 s fits a QUIC idle timeout"),
        ))
        .datagram_receive_buffer_size(None);
    Arc::new(t)
}

/// The server side of a `quic://` listener from the node's TLS configuration: ALPN
/// `valkyrie/2` only, 0-RTT accepted (rustls keeps each ticket for one use, so early data is
/// not replayed through it), migration allowed.
pub fn server_config(
    tls: &Arc<rustls::ServerConfig>,
) -> Result<Arc<quinn_proto::ServerConfig>, QuicConfigError> {
    let mut tls = (**tls).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = u32::MAX;
    let crypto =
        QuicServerConfig::try_from(Arc::new(tls)).map_err(|e| QuicConfigError(e.to_string()))?;
    let mut cfg = quinn_proto::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(transport())
        .migration(true)
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(64 * 1024)
        .incoming_buffer_size_total(16 * 1024 * 1024);
    Ok(Arc::new(cfg))
}

/// The client side from a TLS client configuration: ALPN `valkyrie/2`, early data on (a
/// resumed connection sends its HELLO in 0-RTT). Configurations made from the same
/// `ClientConfig` share its session store, so a second connection resumes.
pub fn client_config(
    tls: &Arc<rustls::ClientConfig>,
) -> Result<quinn_proto::ClientConfig, QuicConfigError> {
    let mut tls = (**tls).clone();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = true;
    let crypto =
        QuicClientConfig::try_from(Arc::new(tls)).map_err(|e| QuicConfigError(e.to_string()))?;
    let mut cfg = quinn_proto::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}
