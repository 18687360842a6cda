//! Connection ids that name the shard owning the connection: a datagram the kernel hands to
//! another shard (`SO_REUSEPORT` hashes the address, which changes when a client rebinds) is
//! forwarded to the owner before any endpoint sees it, instead of being answered with a
//! stateless reset by an endpoint that does not know the connection.
//!
//! An id is [`CID_LEN`] bytes: the shard's index, seven random bytes, and four bytes of a
//! keyed hash of those eight (the key is the node's, shared by its shards), so an id nobody
//! issued is told apart and dropped: a spoofed id neither reaches a connection nor draws a
//! reset.

use std::hash::BuildHasher;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::{RngCore, SeedableRng, rngs::SmallRng};

/// Bytes in a connection id this node issues.
pub(crate) const CID_LEN: usize = 12;
/// The bytes of the id that the hash covers.
const BODY: usize = 8;

/// The node-wide key the ids' check is computed with.
#[derive(Clone, Default)]
pub(crate) struct CidKey(std::collections::hash_map::RandomState);

impl CidKey {
    fn tag(&self, body: &[u8]) -> [u8; CID_LEN - BODY] {
        let h = self.0.hash_one(body);
        let b = h.to_le_bytes();
        [b[0], b[1], b[2], b[3]]
    }

    /// The shard that issued `cid`, if this node issued it.
    pub(crate) fn owner(&self, cid: &[u8]) -> Option<usize> {
        if cid.len() != CID_LEN || self.tag(&cid[..BODY]) != cid[BODY..] {
            return None;
        }
        Some(cid[0] as usize)
    }
}

/// A shard's generator of connection ids.
pub(crate) struct ShardCids {
    shard: u8,
    key: CidKey,
    rng: SmallRng,
}

impl ShardCids {
    /// Ids for `shard` (at most 256 shards serve QUIC), checked with `key`.
    pub(crate) fn new(shard: usize, key: CidKey) -> ShardCids {
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        ShardCids {
            shard: shard as u8,
            key,
            rng: SmallRng::seed_from_u64(u64::from_le_bytes(seed) ^ shard as u64),
        }
    }
}

impl ConnectionIdGenerator for ShardCids {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[0] = self.shard;
        self.rng.fill_bytes(&mut id[1..BODY]);
        let tag = self.key.tag(&id[..BODY]);
        id[BODY..].copy_from_slice(&tag);
        ConnectionId::new(&id)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.key.owner(cid) {
            Some(s) if s == self.shard as usize => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The destination connection id of a QUIC datagram: after the length byte of a long header
/// (the first packet of a handshake, where the client chose it), or the [`CID_LEN`] bytes
/// after the first byte of a short one.
pub(crate) fn destination(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 != 0 {
        let len = *datagram.get(5)? as usize;
        datagram.get(6..6 + len)
    } else {
        datagram.get(1..1 + CID_LEN)
    }
}

/// The shard a datagram belongs to: the issuer of its destination id, when this node issued
/// it; `None` for a client's first packets (its own random id) and for ids nobody issued —
/// the shard that received them handles them.
pub(crate) fn route(key: &CidKey, datagram: &[u8]) -> Option<usize> {
    destination(datagram).and_then(|cid| key.owner(cid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_names_its_shard_and_a_forged_one_names_none() {
        let key = CidKey::default();
        let mut g = ShardCids::new(3, key.clone());
        let id = g.generate_cid();
        assert_eq!(key.owner(&id), Some(3));
        assert!(g.validate(&id).is_ok());
        assert!(ShardCids::new(1, key.clone()).validate(&id).is_err());
        let mut forged = id.to_vec();
        forged[0] = 1;
        assert_eq!(
            key.owner(&forged),
            None,
            "changing the shard byte breaks the tag"
        );
        assert_eq!(CidKey::default().owner(&id), None, "another node's key");
        let mut short = vec![0x40];
        short.extend_from_slice(&id);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(route(&key, &short), Some(3));
        assert_eq!(route(&key, &[0x40, 1, 2]), None);
        assert_eq!(route(&key, &[]), None);
        let mut long = vec![0xC0, 0, 0, 0, 1, CID_LEN as u8];
        long.extend_from_slice(&id);
        assert_eq!(route(&key, &long), Some(3));
        assert_eq!(route(&key, &[0xC0, 0, 0, 0, 1, 200, 1]), None);
    }
}
