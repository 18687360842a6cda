//! `post_quantum`: a hybrid key agreement that stays secret if either X25519 or ML-KEM-768
//! holds, with long-term ML-DSA-65 identities.
//!
//! 1. Noise `NN` in its hybrid form (clatter's `noise_hybrid_nn`: X25519 + ML-KEM-768,
//!    ChaChaPoly, BLAKE2s), two KEY_EXCHANGE messages; the prologue is `valkyrie-pq/1` and the
//!    HELLO exchange, so a changed HELLO breaks it.
//! 2. With its Noise answer the server sends AUTH_CHALLENGE `{pk, sig}`: its ML-DSA-65 public
//!    key and a signature over `"valkyrie-pq/1 server" || h`, where `h` is the handshake hash;
//!    the client checks it against the server fingerprint it pins and answers AUTH_RESPONSE
//!    `{pk, sig}` over `"valkyrie-pq/1 client" || h`; the server checks that (and its allow-list
//!    of fingerprints). Three flights in all.
//!    Signing the transcript binds each long-term identity to this session's keys (as in SIGMA
//!    and TLS 1.3's CertificateVerify); a man in the middle would have to forge ML-DSA.
//! 3. Record keys: `BLAKE3.derive_key("valkyrie-pq/1 record <direction>", k || h)` from each of
//!    Noise's split keys, then the common record layer ([`ChaChaRecords`]: ChaCha20-Poly1305,
//!    header as associated data).
//!
//! Identities are `pq:` and the hex of BLAKE3(public key). The public keys travel in the clear
//! (the NN pattern hides nothing before its keys exist); only their holders can sign.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use super::x25519::AwsMlKem768 as MlKem768;
use super::x25519::AwsX25519 as X25519;
use bytes::Bytes;
use clatter::crypto::cipher::ChaChaPoly;
use clatter::crypto::hash::Blake2s;
use clatter::handshakepattern::noise_hybrid_nn;
use clatter::traits::Handshaker;
use clatter::{HybridHandshake, HybridHandshakeParams};
use pqcrypto_mldsa::mldsa65;
use pqcrypto_traits::sign::{DetachedSignature as _, PublicKey as _, SecretKey as _};
use serde::{Deserialize, Serialize};

use super::SecurityFault;
use super::noise_xk::hex;
use super::record::{ChaChaRecords, DEFAULT_REKEY_INTERVAL};
use super::{
    HandshakeContext, HandshakeMessage, HandshakeProvider, HandshakeStatus, SecurityError,
    SecurityHandshake,
};
use crate::Side;
use crate::frame::MessageType;
use crate::message::SecurityMode;

type Hs = HybridHandshake<X25519, MlKem768, MlKem768, ChaChaPoly, Blake2s>;

/// Bytes hashed into the handshake before the HELLO transcript.
pub const PROLOGUE_LABEL: &[u8] = b"valkyrie-pq/1";
/// Largest handshake message accepted (the hybrid messages are about 1.2 KB; identities
/// 1,952 + 3,309 bytes).
const MAX_MESSAGE: usize = 8192;

/// An ML-DSA-65 identity key pair.
#[derive(Clone)]
pub struct PqIdentity {
    public: mldsa65::PublicKey,
    secret: mldsa65::SecretKey,
}

impl std::fmt::Debug for PqIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PqIdentity")
            .field("fingerprint", &hex(&self.fingerprint()))
            .finish_non_exhaustive()
    }
}

/// BLAKE3 of a public key: how identities are named and pinned.
pub fn fingerprint(public_key: &[u8]) -> [u8; 32] {
    *blake3::hash(public_key).as_bytes()
}

impl PqIdentity {
    /// A fresh identity.
    pub fn generate() -> PqIdentity {
        let (public, secret) = mldsa65::keypair();
        PqIdentity { public, secret }
    }

    /// An identity from its stored public and secret keys.
    pub fn from_bytes(public: &[u8], secret: &[u8]) -> Option<PqIdentity> {
        Some(PqIdentity {
            public: mldsa65::PublicKey::from_bytes(public).ok()?,
            secret: mldsa65::SecretKey::from_bytes(secret).ok()?,
        })
    }

    /// The public key.
    pub fn public_bytes(&self) -> &[u8] {
        self.public.as_bytes()
    }

    /// The secret key (store it privately).
    pub fn secret_bytes(&self) -> &[u8] {
        self.secret.as_bytes()
    }

    /// BLAKE3 of the public key.
    pub fn fingerprint(&self) -> [u8; 32] {
        fingerprint(self.public.as_bytes())
    }
}

/// Configuration of the `post_quantum` mode.
#[derive(Debug, Clone)]
pub struct PostQuantum {
    /// Our long-term identity.
    pub identity: Arc<PqIdentity>,
    /// Client: the server fingerprint it accepts (required).
    pub server_fingerprint: Option<[u8; 32]>,
    /// Server: the client fingerprints accepted (`None`: any, reported as the identity).
    pub allowed_clients: Option<Arc<HashSet<[u8; 32]>>>,
    /// Records per key before renewal.
    pub rekey_interval: u64,
}

impl PostQuantum {
    /// A server with `identity`, accepting any client identity.
    pub fn server(identity: PqIdentity) -> PostQuantum {
        PostQuantum {
            identity: Arc::new(identity),
            server_fingerprint: None,
            allowed_clients: None,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }

    /// A client with `identity` that accepts the server whose fingerprint is `server`.
    pub fn client(identity: PqIdentity, server: [u8; 32]) -> PostQuantum {
        PostQuantum {
            identity: Arc::new(identity),
            server_fingerprint: Some(server),
            allowed_clients: None,
            rekey_interval: DEFAULT_REKEY_INTERVAL,
        }
    }

    /// Only these client fingerprints are accepted.
    pub fn allow_clients(mut self, fps: impl IntoIterator<Item = [u8; 32]>) -> PostQuantum {
        self.allowed_clients = Some(Arc::new(fps.into_iter().collect()));
        self
    }
}

impl HandshakeProvider for PostQuantum {
    fn mode(&self) -> SecurityMode {
        SecurityMode::PostQuantum
    }

    fn new_handshake(&self, side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(PqHandshake {
            cfg: self.clone(),
            side,
            hs: None,
            keys: None,
        })
    }
}

#[derive(Serialize, Deserialize)]
struct Proof {
    #[serde(with = "serde_bytes")]
    pk: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

/// What the key agreement left: the handshake hash and the two record keys.
struct Keys {
    h: Vec<u8>,
    send: [u8; 32],
    recv: [u8; 32],
}

struct PqHandshake {
    cfg: PostQuantum,
    side: Side,
    hs: Option<Box<Hs>>,
    keys: Option<Keys>,
}

fn failed(message: impl Into<String>) -> SecurityError {
    SecurityError::new(SecurityFault::BadCredentials, message)
}

fn label(side: Side) -> &'static [u8] {
    match side {
        Side::Client => b"valkyrie-pq/1 client",
        Side::Server => b"valkyrie-pq/1 server",
    }
}

impl PqHandshake {
    fn write(&mut self, out: &mut Vec<HandshakeMessage>) -> Result<(), SecurityError> {
        let hs = self.hs.as_mut().expect("started");
        let mut buf = vec![0u8; MAX_MESSAGE];
        let n = hs
            .write_message(&[], &mut buf)
            .map_err(|e| failed(format!("post_quantum: {e:?}")))?;
        buf.truncate(n);
        out.push(HandshakeMessage {
            msg_type: MessageType::KeyExchange,
            payload: Bytes::from(buf),
        });
        Ok(())
    }

    /// The key agreement is done: keep the hash and derive the record keys.
    fn agree(&mut self) -> Result<(), SecurityError> {
        let hs = self.hs.take().expect("started");
        let ts = hs
            .finalize()
            .map_err(|e| failed(format!("post_quantum: {e:?}")))?;
        let h = ts.get_handshake_hash().as_slice().to_vec();
        let cs = ts.take();
        let (i2r, _) = cs.initiator_to_responder.take();
        let (r2i, _) = cs.responder_to_initiator.take();
        let derive = |ctx: &str, k: &[u8]| {
            let mut material = k.to_vec();
            material.extend_from_slice(&h);
            blake3::derive_key(ctx, &material)
        };
        let i2r = derive(
            "valkyrie-pq/1 record initiator to responder",
            i2r.as_slice(),
        );
        let r2i = derive(
            "valkyrie-pq/1 record responder to initiator",
            r2i.as_slice(),
        );
        let (send, recv) = match self.side {
            Side::Client => (i2r, r2i),
            Side::Server => (r2i, i2r),
        };
        self.keys = Some(Keys { h, send, recv });
        Ok(())
    }

    fn proof(&self) -> Bytes {
        let keys = self.keys.as_ref().expect("agreed");
        let mut msg = label(self.side).to_vec();
        msg.extend_from_slice(&keys.h);
        let sig = mldsa65::detached_sign(&msg, &self.cfg.identity.secret);
        Bytes::from(
            rmp_serde::to_vec_named(&Proof {
                pk: self.cfg.identity.public.as_bytes().to_vec(),
                sig: sig.as_bytes().to_vec(),
            })
            .expect("plain struct encodes"),
        )
    }

    /// Check the peer's proof; returns its fingerprint.
    fn verify(&self, payload: &[u8]) -> Result<[u8; 32], SecurityError> {
        let keys = self.keys.as_ref().expect("agreed");
        let p: Proof = rmp_serde::from_slice(payload)
            .map_err(|_| failed("post_quantum: malformed identity proof"))?;
        let pk = mldsa65::PublicKey::from_bytes(&p.pk)
            .map_err(|_| failed("post_quantum: bad ML-DSA-65 public key"))?;
        let sig = mldsa65::DetachedSignature::from_bytes(&p.sig)
            .map_err(|_| failed("post_quantum: bad ML-DSA-65 signature"))?;
        let peer = match self.side {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        let mut msg = label(peer).to_vec();
        msg.extend_from_slice(&keys.h);
        mldsa65::verify_detached_signature(&sig, &msg, &pk)
            .map_err(|_| failed("post_quantum: the identity signature does not verify"))?;
        Ok(fingerprint(&p.pk))
    }

    fn complete(&mut self, peer_fp: [u8; 32]) -> HandshakeStatus {
        let keys = self.keys.take().expect("agreed");
        HandshakeStatus::Complete {
            peer_identity: Some(format!("pq:{}", hex(&peer_fp))),
            protector: Some(Box::new(ChaChaRecords::new(
                keys.send,
                keys.recv,
                self.cfg.rekey_interval,
            ))),
        }
    }
}

impl SecurityHandshake for PqHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        if self.side == Side::Client && self.cfg.server_fingerprint.is_none() {
            return Err(SecurityError::new(
                SecurityFault::Internal,
                "post_quantum client without a server fingerprint",
            ));
        }
        let mut prologue = PROLOGUE_LABEL.to_vec();
        prologue.extend_from_slice(&ctx.hello_transcript);
        let params = HybridHandshakeParams::new(noise_hybrid_nn(), self.side == Side::Client)
            .with_prologue(&prologue);
        let hs = Hs::new(params).map_err(|e| failed(format!("post_quantum: {e:?}")))?;
        self.hs = Some(Box::new(hs));
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
        if payload.len() > MAX_MESSAGE {
            return Err(failed("post_quantum: handshake message too long"));
        }
        match (self.side, msg_type, self.hs.is_some(), self.keys.is_some()) {
            // Server: the client's `e, ekem` — answer, agree, and prove who we are in the
            // same flight.
            (Side::Server, MessageType::KeyExchange, true, false) => {
                let hs = self.hs.as_mut().expect("checked");
                let mut buf = vec![0u8; MAX_MESSAGE];
                hs.read_message(payload, &mut buf)
                    .map_err(|e| failed(format!("post_quantum: rejected ({e:?})")))?;
                self.write(out)?;
                self.agree()?;
                out.push(HandshakeMessage {
                    msg_type: MessageType::AuthChallenge,
                    payload: self.proof(),
                });
                Ok(HandshakeStatus::InProgress)
            }
            // Client: the server's answer — agree.
            (Side::Client, MessageType::KeyExchange, true, false) => {
                let hs = self.hs.as_mut().expect("checked");
                let mut buf = vec![0u8; MAX_MESSAGE];
                hs.read_message(payload, &mut buf)
                    .map_err(|e| failed(format!("post_quantum: rejected ({e:?})")))?;
                if !hs.is_finished() {
                    return Err(failed("post_quantum: handshake did not finish"));
                }
                self.agree()?;
                Ok(HandshakeStatus::InProgress)
            }
            // Client: the server's identity proof — check it, then prove ours; done.
            (Side::Client, MessageType::AuthChallenge, false, true) => {
                let fp = self.verify(payload)?;
                if Some(fp) != self.cfg.server_fingerprint {
                    return Err(failed(format!(
                        "post_quantum: server {} is not the one pinned",
                        hex(&fp)
                    )));
                }
                out.push(HandshakeMessage {
                    msg_type: MessageType::AuthResponse,
                    payload: self.proof(),
                });
                Ok(self.complete(fp))
            }
            // Server: the client's identity proof; done.
            (Side::Server, MessageType::AuthResponse, false, true) => {
                let fp = self.verify(payload)?;
                if let Some(allowed) = &self.cfg.allowed_clients
                    && !allowed.contains(&fp)
                {
                    return Err(failed(format!(
                        "post_quantum: client {} is not allowed",
                        hex(&fp)
                    )));
                }
                Ok(self.complete(fp))
            }
            (_, t, _, _) => Err(failed(format!("post_quantum: unexpected {t}"))),
        }
    }
}
