//! The record layer of the encrypting modes: ChaCha20-Poly1305 (`ring`'s assembly
//! implementation, about ten times faster than the portable one on small records) with the frame header as
//! associated data, one key and one nonce counter per direction, keys renewed on a schedule.
//!
//! Nonces follow Noise's ChaChaPoly encoding (four zero bytes, then the 64-bit counter little
//! endian), so a Noise library's cipher state with the same keys seals and opens the same
//! records (`encrypt_with_ad(header, payload)`). Every `rekey_interval` records a direction's key
//! is replaced by Noise's REKEY (the first 32 bytes of encrypting 32 zero bytes under nonce
//! 2^64-1); the counter keeps running, so a nonce never repeats under any key, and the last
//! counter value is refused (705) rather than wrapped.

use bytes::{Bytes, BytesMut};
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};

use super::SecurityFault;
use super::{RecordProtector, SecurityError};
use crate::frame::HEADER_LEN;

/// Bytes a sealed payload is longer than its plaintext (the Poly1305 tag).
pub const TAG_LEN: usize = 16;

/// Records per key before it is renewed (default).
pub const DEFAULT_REKEY_INTERVAL: u64 = 1 << 32;

struct Direction {
    cipher: LessSafeKey,
    n: u64,
}

fn key(k: &[u8; 32]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, k).expect("32-byte key"))
}

fn nonce(n: u64) -> Nonce {
    let mut b = [0u8; 12];
    b[4..].copy_from_slice(&n.to_le_bytes());
    Nonce::assume_unique_for_key(b)
}

impl Direction {
    fn new(k: [u8; 32]) -> Direction {
        Direction {
            cipher: key(&k),
            n: 0,
        }
    }

    /// Take the next nonce (the last counter value is never used).
    fn next(&mut self) -> Result<Nonce, SecurityError> {
        if self.n == u64::MAX {
            return Err(SecurityError::new(
                SecurityFault::NonceExhausted,
                "record nonce space exhausted",
            ));
        }
        let v = nonce(self.n);
        self.n += 1;
        Ok(v)
    }

    /// Renew the key when the interval ends.
    fn after(&mut self, interval: u64) {
        if interval > 0 && self.n.is_multiple_of(interval) {
            // Noise REKEY(k): ENCRYPT(k, 2^64 - 1, empty, zeros), first 32 bytes.
            let mut k = [0u8; 32];
            let _tag = self
                .cipher
                .seal_in_place_separate_tag(nonce(u64::MAX), Aad::empty(), &mut k)
                .expect("32 bytes always seal");
            self.cipher = key(&k);
        }
    }
}

/// Seals with one key and opens with the other.
pub struct ChaChaRecords {
    send: Direction,
    recv: Direction,
    rekey_interval: u64,
}

impl std::fmt::Debug for ChaChaRecords {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChaChaRecords")
            .field("sent", &self.send.n)
            .field("received", &self.recv.n)
            .finish_non_exhaustive()
    }
}

impl ChaChaRecords {
    /// A record layer sending under `send_key` and receiving under `recv_key`.
    pub fn new(send_key: [u8; 32], recv_key: [u8; 32], rekey_interval: u64) -> ChaChaRecords {
        ChaChaRecords {
            send: Direction::new(send_key),
            recv: Direction::new(recv_key),
            rekey_interval,
        }
    }

    /// Records sealed so far.
    pub fn sealed(&self) -> u64 {
        self.send.n
    }
}

impl RecordProtector for ChaChaRecords {
    fn overhead(&self) -> usize {
        TAG_LEN
    }

    fn seal(
        &mut self,
        header: &[u8; HEADER_LEN],
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SecurityError> {
        let nonce = self.send.next()?;
        let start = out.len();
        out.reserve(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self
            .send
            .cipher
            .seal_in_place_separate_tag(nonce, Aad::from(header), &mut out[start..])
            .map_err(|_| SecurityError::new(SecurityFault::Internal, "seal failed"))?;
        out.extend_from_slice(tag.as_ref());
        self.send.after(self.rekey_interval);
        Ok(())
    }

    fn open(&mut self, header: &[u8; HEADER_LEN], sealed: Bytes) -> Result<Bytes, SecurityError> {
        if sealed.len() < TAG_LEN {
            return Err(SecurityError::new(
                SecurityFault::Integrity,
                "sealed payload shorter than its tag",
            ));
        }
        let nonce = self.recv.next()?;
        let mut buf = BytesMut::from(&sealed[..]);
        let plain_len = self
            .recv
            .cipher
            .open_in_place(nonce, Aad::from(header), &mut buf)
            .map_err(|_| {
                SecurityError::new(
                    SecurityFault::Integrity,
                    "sealed frame failed authentication",
                )
            })?
            .len();
        buf.truncate(plain_len);
        self.recv.after(self.rekey_interval);
        Ok(buf.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(interval: u64) -> (ChaChaRecords, ChaChaRecords) {
        let (a, b) = ([1u8; 32], [2u8; 32]);
        (
            ChaChaRecords::new(a, b, interval),
            ChaChaRecords::new(b, a, interval),
        )
    }

    #[test]
    fn seals_and_opens_across_key_renewals() {
        let (mut x, mut y) = pair(3);
        let header = [7u8; HEADER_LEN];
        for i in 0..20u8 {
            let mut out = BytesMut::new();
            x.seal(&header, &[i; 40], &mut out).unwrap();
            assert_eq!(out.len(), 40 + TAG_LEN);
            assert_ne!(&out[..40], &[i; 40][..]);
            let plain = y.open(&header, out.freeze()).unwrap();
            assert_eq!(&plain[..], &[i; 40][..]);
        }
        assert_eq!(x.sealed(), 20);
    }

    #[test]
    fn a_flipped_bit_or_a_changed_header_fails() {
        let (mut x, mut y) = pair(DEFAULT_REKEY_INTERVAL);
        let header = [7u8; HEADER_LEN];
        let mut out = BytesMut::new();
        x.seal(&header, b"payload", &mut out).unwrap();
        let mut bad = out.clone();
        bad[3] ^= 0x10;
        let e = y.open(&header, bad.freeze()).unwrap_err();
        assert_eq!(e.code(), crate::ErrorCode::INTEGRITY_FAILURE);
        let (mut x, mut y) = pair(DEFAULT_REKEY_INTERVAL);
        let mut out = BytesMut::new();
        x.seal(&header, b"payload", &mut out).unwrap();
        let mut other = header;
        other[5] ^= 1;
        assert!(y.open(&other, out.freeze()).is_err());
    }
}
