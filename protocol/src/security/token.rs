//! `token`: a shared-secret challenge–response. The server sends a fresh 32-byte nonce; the
//! client answers with its key id, its own nonce, an expiry time and
//! `HMAC-SHA256(secret, transcript)`, where the transcript binds both nonces, the expiry, the
//! key id, both node ids and a hash of the HELLO exchange. The server checks, in order: the key
//! id is known (201), the expiry is in the future (202) and not further than its maximum
//! lifetime (201), the client nonce was not seen before (203), the MAC (201). Accepted nonces
//! are remembered until they expire, in a bounded cache. Plain `token` authenticates but does
//! not encrypt: run it inside TLS (or choose `noise_xk`) where the link is not trusted.
//!
//! ```text
//! server                                   client
//!   AUTH_CHALLENGE {nonce}          ->
//!                                    <-    AUTH_RESPONSE {key_id, nonce, expires, mac}
//!   AUTH_SUCCESS {}                 ->
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SecurityFault;
use super::{
    HandshakeContext, HandshakeMessage, HandshakeProvider, HandshakeStatus, SecurityError,
    SecurityHandshake,
};
use crate::Side;
use crate::frame::MessageType;
use crate::message::SecurityMode;

/// Label at the start of every MAC transcript.
pub const MAC_LABEL: &[u8] = b"valkyrie-token/1";
/// Accepted client nonces remembered at most (the oldest is forgotten first).
pub const REPLAY_CACHE: usize = 65_536;

#[derive(Serialize, Deserialize)]
struct Challenge {
    #[serde(with = "serde_bytes")]
    nonce: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Response {
    key_id: String,
    #[serde(with = "serde_bytes")]
    nonce: Vec<u8>,
    expires: u64,
    #[serde(with = "serde_bytes")]
    mac: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct Success {}

/// Nonces accepted and not yet expired, bounded.
#[derive(Debug, Default)]
struct ReplayCache {
    seen: HashSet<[u8; 32]>,
    order: VecDeque<([u8; 32], u64)>,
}

impl ReplayCache {
    fn contains(&self, n: &[u8; 32]) -> bool {
        self.seen.contains(n)
    }

    fn insert(&mut self, n: [u8; 32], expires: u64, now: u64) {
        while let Some(&(old, exp)) = self.order.front() {
            if exp > now && self.order.len() < REPLAY_CACHE {
                break;
            }
            self.order.pop_front();
            self.seen.remove(&old);
        }
        if self.seen.insert(n) {
            self.order.push_back((n, expires));
        }
    }
}

/// The server side of `token`: the secrets it accepts, by key id.
#[derive(Debug, Clone)]
pub struct TokenServer {
    keys: Arc<HashMap<String, Vec<u8>>>,
    /// The longest lifetime a response may claim.
    pub max_lifetime: Duration,
    replay: Arc<Mutex<ReplayCache>>,
}

impl TokenServer {
    /// Accept the `(key id, secret)` pairs.
    pub fn new(keys: impl IntoIterator<Item = (String, Vec<u8>)>) -> TokenServer {
        TokenServer {
            keys: Arc::new(keys.into_iter().collect()),
            max_lifetime: Duration::from_secs(3600),
            replay: Arc::default(),
        }
    }
}

/// The client side of `token`: one key id and its secret.
#[derive(Clone)]
pub struct TokenClient {
    /// The key id the server knows the secret by.
    pub key_id: String,
    secret: Vec<u8>,
    /// How long a response stays valid.
    pub lifetime: Duration,
}

impl std::fmt::Debug for TokenClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenClient")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

impl TokenClient {
    /// Authenticate as `key_id` with `secret`; responses are valid for 60 s.
    pub fn new(key_id: impl Into<String>, secret: impl Into<Vec<u8>>) -> TokenClient {
        TokenClient {
            key_id: key_id.into(),
            secret: secret.into(),
            lifetime: Duration::from_secs(60),
        }
    }
}

impl HandshakeProvider for TokenServer {
    fn mode(&self) -> SecurityMode {
        SecurityMode::Token
    }
    fn new_handshake(&self, _side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(ServerHandshake {
            cfg: self.clone(),
            ctx: None,
            nonce: [0; 32],
        })
    }
}

impl HandshakeProvider for TokenClient {
    fn mode(&self) -> SecurityMode {
        SecurityMode::Token
    }
    fn new_handshake(&self, _side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(ClientHandshake {
            cfg: self.clone(),
            ctx: None,
            answered: false,
        })
    }
}

fn random32() -> Result<[u8; 32], SecurityError> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b)
        .map_err(|e| SecurityError::new(SecurityFault::Internal, format!("random source: {e}")))?;
    Ok(b)
}

/// The bytes the MAC covers.
fn transcript(
    server_nonce: &[u8],
    client_nonce: &[u8],
    expires: u64,
    key_id: &str,
    client_id: &str,
    server_id: &str,
    hello: &[u8],
) -> Vec<u8> {
    let mut t = MAC_LABEL.to_vec();
    t.extend_from_slice(server_nonce);
    t.extend_from_slice(client_nonce);
    t.extend_from_slice(&expires.to_be_bytes());
    for s in [key_id, client_id, server_id] {
        t.extend_from_slice(&(s.len() as u16).to_be_bytes());
        t.extend_from_slice(s.as_bytes());
    }
    t.extend_from_slice(&Sha256::digest(hello));
    t
}

fn mac(secret: &[u8], t: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(t);
    m
}

fn unix_at(ctx: &HandshakeContext, now: Instant) -> u64 {
    ctx.unix_secs + now.saturating_duration_since(ctx.now).as_secs()
}

fn encode<T: Serialize>(v: &T) -> Bytes {
    Bytes::from(rmp_serde::to_vec_named(v).expect("plain struct encodes"))
}

struct ServerHandshake {
    cfg: TokenServer,
    ctx: Option<HandshakeContext>,
    nonce: [u8; 32],
}

impl SecurityHandshake for ServerHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        self.nonce = random32()?;
        self.ctx = Some(ctx.clone());
        out.push(HandshakeMessage {
            msg_type: MessageType::AuthChallenge,
            payload: encode(&Challenge {
                nonce: self.nonce.to_vec(),
            }),
        });
        Ok(HandshakeStatus::InProgress)
    }

    fn handle(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        let fail = |code: SecurityFault, m: &str| SecurityError::new(code, format!("token: {m}"));
        let Some(ctx) = self.ctx.take() else {
            return Err(fail(
                SecurityFault::BadCredentials,
                "response after the handshake",
            ));
        };
        if msg_type != MessageType::AuthResponse {
            return Err(fail(
                SecurityFault::BadCredentials,
                "expected AUTH_RESPONSE",
            ));
        }
        let r: Response = rmp_serde::from_slice(payload)
            .map_err(|_| fail(SecurityFault::BadCredentials, "malformed AUTH_RESPONSE"))?;
        let Some(secret) = self.cfg.keys.get(&r.key_id) else {
            return Err(fail(SecurityFault::BadCredentials, "unknown key id"));
        };
        let unix = unix_at(&ctx, now);
        if r.expires <= unix {
            return Err(fail(SecurityFault::Expired, "response expired"));
        }
        if r.expires > unix + self.cfg.max_lifetime.as_secs() {
            return Err(fail(
                SecurityFault::BadCredentials,
                "expiry beyond the allowed lifetime",
            ));
        }
        let client_nonce: [u8; 32] = r.nonce.as_slice().try_into().map_err(|_| {
            fail(
                SecurityFault::BadCredentials,
                "client nonce is not 32 bytes",
            )
        })?;
        let seen = self
            .cfg
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(&client_nonce);
        if seen {
            return Err(fail(SecurityFault::Replayed, "client nonce already used"));
        }
        let t = transcript(
            &self.nonce,
            &client_nonce,
            r.expires,
            &r.key_id,
            &ctx.peer_node_id,
            &ctx.local_node_id,
            &ctx.hello_transcript,
        );
        mac(secret, &t)
            .verify_slice(&r.mac)
            .map_err(|_| fail(SecurityFault::BadCredentials, "wrong MAC"))?;
        self.cfg
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client_nonce, r.expires, unix);
        out.push(HandshakeMessage {
            msg_type: MessageType::AuthSuccess,
            payload: encode(&Success {}),
        });
        Ok(HandshakeStatus::Complete {
            peer_identity: Some(format!("token:{}", r.key_id)),
            protector: None,
        })
    }
}

struct ClientHandshake {
    cfg: TokenClient,
    ctx: Option<HandshakeContext>,
    answered: bool,
}

impl SecurityHandshake for ClientHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        _out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        self.ctx = Some(ctx.clone());
        Ok(HandshakeStatus::InProgress)
    }

    fn handle(
        &mut self,
        msg_type: MessageType,
        payload: &[u8],
        now: Instant,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        let fail =
            |m: &str| SecurityError::new(SecurityFault::BadCredentials, format!("token: {m}"));
        let ctx = self.ctx.as_ref().ok_or_else(|| fail("not started"))?;
        match (msg_type, self.answered) {
            (MessageType::AuthChallenge, false) => {
                let c: Challenge =
                    rmp_serde::from_slice(payload).map_err(|_| fail("malformed AUTH_CHALLENGE"))?;
                if c.nonce.len() != 32 {
                    return Err(fail("server nonce is not 32 bytes"));
                }
                let nonce = random32()?;
                let expires = unix_at(ctx, now) + self.cfg.lifetime.as_secs().max(1);
                let t = transcript(
                    &c.nonce,
                    &nonce,
                    expires,
                    &self.cfg.key_id,
                    &ctx.local_node_id,
                    &ctx.peer_node_id,
                    &ctx.hello_transcript,
                );
                let m = mac(&self.cfg.secret, &t).finalize().into_bytes();
                out.push(HandshakeMessage {
                    msg_type: MessageType::AuthResponse,
                    payload: encode(&Response {
                        key_id: self.cfg.key_id.clone(),
                        nonce: nonce.to_vec(),
                        expires,
                        mac: m.to_vec(),
                    }),
                });
                self.answered = true;
                Ok(HandshakeStatus::InProgress)
            }
            (MessageType::AuthSuccess, true) => Ok(HandshakeStatus::Complete {
                peer_identity: None,
                protector: None,
            }),
            (t, _) => Err(fail(&format!("unexpected {t}"))),
        }
    }
}
