//! `noise_xk`: Noise_XK_25519_ChaChaPoly_BLAKE2s (via `snow`), its three messages carried in
//! KEY_EXCHANGE frames on stream 0, then [`ChaChaRecords`] keyed by the handshake's split.
//!
//! ```text
//! client (initiator, knows the server's static key)      server (responder)
//!   KEY_EXCHANGE  -> e, es                                 
//!                                                        <- e, ee        KEY_EXCHANGE
//!   KEY_EXCHANGE  -> s, se                                 
//! ```
//!
//! The prologue is `valkyrie-noise-xk/1` followed by the HELLO and HELLO_ACK payloads as sent,
//! so a HELLO changed on the way (a downgraded offer) makes the handshake fail. The server
//! learns the client's static key in the third message and accepts it only if it is on its
//! allow-list (when one is set). A peer's identity is `noise:` and the hex of its static key.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use snow::{Builder, HandshakeState};

use super::SecurityFault;
use super::record::{ChaChaRecords, DEFAULT_REKEY_INTERVAL};
use super::{
    HandshakeContext, HandshakeMessage, HandshakeProvider, HandshakeStatus, SecurityError,
    SecurityHandshake,
};
use crate::Side;
use crate::frame::MessageType;
use crate::message::SecurityMode;

/// The Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_XK_25519_ChaChaPoly_BLAKE2s";
/// Bytes hashed into the handshake before the HELLO transcript.
pub const PROLOGUE_LABEL: &[u8] = b"valkyrie-noise-xk/1";
/// Largest handshake message accepted (XK's messages are 48, 48 and 64 bytes).
const MAX_MESSAGE: usize = 1024;

/// A Curve25519 static key pair.
#[derive(Clone)]
pub struct NoiseKeypair {
    /// Private key (32 bytes).
    pub private: [u8; 32],
    /// Public key (32 bytes).
    pub public: [u8; 32],
}

impl std::fmt::Debug for NoiseKeypair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NoiseKeypair")
            .field("public", &hex(&self.public))
            .finish_non_exhaustive()
    }
}

impl NoiseKeypair {
    /// A fresh key pair from the operating system's random source.
    pub fn generate() -> NoiseKeypair {
        let kp = Builder::new(NOISE_PARAMS.parse().expect("valid params"))
            .generate_keypair()
            .expect("key generation");
        NoiseKeypair {
            private: kp.private.try_into().expect("32-byte key"),
            public: kp.public.try_into().expect("32-byte key"),
        }
    }

    /// The key pair whose private key is `private`.
    pub fn from_private(private: [u8; 32]) -> NoiseKeypair {
        let public = x25519_public(&private);
        NoiseKeypair { private, public }
    }
}

/// The X25519 public key of `private`.
fn x25519_public(private: &[u8; 32]) -> [u8; 32] {
    x25519_dalek::x25519(*private, x25519_dalek::X25519_BASEPOINT_BYTES)
}

/// Lower-case hex.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Configuration of the `noise_xk` mode for one node or client.
#[derive(Debug, Clone)]
pub struct NoiseXk {
    /// Our static key pair.
    pub keypair: NoiseKeypair,
    /// The server's static public key (required on a client).
    pub server_public: Option<[u8; 32]>,
    /// On a server: the client keys accepted (`None`: any key, its identity is reported).
    pub allowed_clients: Option<Arc<HashSet<[u8; 32]>>>,
    /// Records per key before it is renewed.
    pub rekey_interval: u64,
}

impl NoiseXk {
    /// A server with `keypair`, accepting any client key.
    pub fn server(keypair: NoiseKeypair) -> NoiseXk {
        NoiseXk {
            keypair,
            server_public: None,
            allowed_clients: None,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }

    /// A client with `keypair` that trusts the server key `server_public`.
    pub fn client(keypair: NoiseKeypair, server_public: [u8; 32]) -> NoiseXk {
        NoiseXk {
            keypair,
            server_public: Some(server_public),
            allowed_clients: None,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }

    /// Only these client keys are accepted.
    pub fn allow_clients(mut self, keys: impl IntoIterator<Item = [u8; 32]>) -> NoiseXk {
        self.allowed_clients = Some(Arc::new(keys.into_iter().collect()));
        self
    }
}

impl HandshakeProvider for NoiseXk {
    fn mode(&self) -> SecurityMode {
        SecurityMode::NoiseXk
    }

    fn new_handshake(&self, side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(NoiseXkHandshake {
            cfg: self.clone(),
            side,
            hs: None,
            step: 0,
        })
    }
}

struct NoiseXkHandshake {
    cfg: NoiseXk,
    side: Side,
    hs: Option<HandshakeState>,
    /// Messages processed (sent or received) so far.
    step: u8,
}

fn failed(message: impl Into<String>) -> SecurityError {
    SecurityError::new(SecurityFault::BadCredentials, message)
}

impl NoiseXkHandshake {
    fn write(&mut self, out: &mut Vec<HandshakeMessage>) -> Result<(), SecurityError> {
        let hs = self.hs.as_mut().expect("started");
        let mut buf = [0u8; MAX_MESSAGE];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(|e| failed(format!("noise: {e}")))?;
        out.push(HandshakeMessage {
            msg_type: MessageType::KeyExchange,
            payload: Bytes::copy_from_slice(&buf[..n]),
        });
        self.step += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<HandshakeStatus, SecurityError> {
        let mut hs = self.hs.take().expect("started");
        let remote: [u8; 32] = hs
            .get_remote_static()
            .and_then(|k| k.try_into().ok())
            .ok_or_else(|| failed("noise: no remote static key"))?;
        if self.side == Side::Server
            && let Some(allowed) = &self.cfg.allowed_clients
            && !allowed.contains(&remote)
        {
            return Err(failed(format!(
                "noise: client key {} is not allowed",
                hex(&remote)
            )));
        }
        let (i2r, r2i) = hs.dangerously_get_raw_split();
        let (send, recv) = match self.side {
            Side::Client => (i2r, r2i),
            Side::Server => (r2i, i2r),
        };
        Ok(HandshakeStatus::Complete {
            peer_identity: Some(format!("noise:{}", hex(&remote))),
            protector: Some(Box::new(ChaChaRecords::new(
                send,
                recv,
                self.cfg.rekey_interval,
            ))),
        })
    }
}

impl SecurityHandshake for NoiseXkHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        let mut prologue = PROLOGUE_LABEL.to_vec();
        prologue.extend_from_slice(&ctx.hello_transcript);
        let params = NOISE_PARAMS.parse().expect("valid params");
        let b = Builder::with_resolver(params, super::x25519::snow_resolver())
            .local_private_key(&self.cfg.keypair.private)
            .and_then(|b| b.prologue(&prologue))
            .map_err(|e| failed(format!("noise: {e}")))?;
        let hs = match self.side {
            Side::Client => {
                let server = self.cfg.server_public.ok_or_else(|| {
                    SecurityError::new(
                        SecurityFault::Internal,
                        "noise_xk client without a server key",
                    )
                })?;
                b.remote_public_key(&server)
                    .and_then(|b| b.build_initiator())
            }
            Side::Server => b.build_responder(),
        }
        .map_err(|e| failed(format!("noise: {e}")))?;
        self.hs = Some(hs);
        if self.side == Side::Client {
            self.write(out)?;
        }
        Ok(HandshakeStatus::InProgress)
    }

    fn handle(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        _now: Instant,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        if msg_type != MessageType::KeyExchange {
            return Err(failed(format!("noise: unexpected {msg_type}")));
        }
        let Some(hs) = self.hs.as_mut() else {
            return Err(failed("noise: message after the handshake"));
        };
        if payload.len() > MAX_MESSAGE || hs.is_my_turn() {
            return Err(failed("noise: message out of turn or too long"));
        }
        let mut buf = [0u8; MAX_MESSAGE];
        hs.read_message(payload, &mut buf)
            .map_err(|e| failed(format!("noise: handshake message rejected ({e})")))?;
        self.step += 1;
        match (self.side, self.step) {
            // Server: got `e, es`; answer `e, ee`.
            (Side::Server, 1) => {
                self.write(out)?;
                Ok(HandshakeStatus::InProgress)
            }
            // Client: got `e, ee`; send `s, se`, done.
            (Side::Client, 2) => {
                self.write(out)?;
                self.finish()
            }
            // Server: got `s, se`, done.
            (Side::Server, 3) => self.finish(),
            _ => Err(failed("noise: unexpected handshake message")),
        }
    }
}
