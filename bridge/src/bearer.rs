//! Bearer credentials for HTTP clients of a node in `token` mode:
//! `Authorization: Bearer KEY_ID.EXPIRES.MAC`, where EXPIRES is a Unix time in seconds and MAC
//! the hex HMAC-SHA256, keyed with KEY_ID's secret (the same secrets file the binary `token`
//! mode reads), of `valkyrie-bearer`, a zero byte, KEY_ID, a zero byte and EXPIRES in
//! decimal. A token verified names the identity `token:KEY_ID` — the one a binary client
//! authenticating with that key has, so the zero_trust policy treats both alike.
//!
//! ```
//! use valkyrie_bridge::bearer;
//! let keys = vec![("agents".to_owned(), b"0123456789abcdef".to_vec())];
//! let token = bearer::mint("agents", b"0123456789abcdef", 2_000_000_000);
//! assert_eq!(bearer::verify(&token, &keys, 1_900_000_000).unwrap(), "token:agents");
//! assert_eq!(bearer::verify(&token, &keys, 2_000_000_001), Err(bearer::BearerError::Expired));
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Why a bearer token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BearerError {
    /// Not `KEY_ID.EXPIRES.MAC`.
    #[error("malformed bearer token")]
    Malformed,
    /// No secret for its key id.
    #[error("unknown key id")]
    UnknownKey,
    /// Its time has passed.
    #[error("bearer token expired")]
    Expired,
    /// The MAC does not hold.
    #[error("bearer token does not verify")]
    BadMac,
}

/// The longest token looked at (a key id of up to 128 bytes, the time, 64 hex digits).
const MAX_TOKEN: usize = 256;

fn mac(secret: &[u8], key_id: &str, expires: &str) -> Hmac<Sha256> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(b"valkyrie-bearer\0");
    m.update(key_id.as_bytes());
    m.update(b"\0");
    m.update(expires.as_bytes());
    m
}

/// A token for `key_id` with `secret`, valid until `expires` (Unix seconds).
pub fn mint(key_id: &str, secret: &[u8], expires: u64) -> String {
    let expires = expires.to_string();
    let tag = mac(secret, key_id, &expires).finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in tag {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("{key_id}.{expires}.{hex}")
}

/// The identity a token proves at `now` (Unix seconds), given the node's `keys`.
pub fn verify(token: &str, keys: &[(String, Vec<u8>)], now: u64) -> Result<String, BearerError> {
    if token.len() > MAX_TOKEN {
        return Err(BearerError::Malformed);
    }
    let mut parts = token.rsplitn(3, '.');
    let (hex, expires, key_id) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(e), Some(k)) if !k.is_empty() => (h, e, k),
        _ => return Err(BearerError::Malformed),
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BearerError::Malformed);
    }
    let until: u64 = expires.parse().map_err(|_| BearerError::Malformed)?;
    let mut tag = [0u8; 32];
    for (i, b) in tag.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| BearerError::Malformed)?;
    }
    let secret = keys
        .iter()
        .find(|(id, _)| id == key_id)
        .map(|(_, s)| s)
        .ok_or(BearerError::UnknownKey)?;
    // The MAC first (constant time), then the time: a forged token learns nothing of either.
    mac(secret, key_id, expires)
        .verify_slice(&tag)
        .map_err(|_| BearerError::BadMac)?;
    if until < now {
        return Err(BearerError::Expired);
    }
    Ok(format!("token:{key_id}"))
}

/// The token in an `Authorization` header value (`Bearer TOKEN`, scheme in any case).
pub fn from_authorization(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<(String, Vec<u8>)> {
        vec![
            ("a".to_owned(), b"first secret".to_vec()),
            ("b.c".to_owned(), b"second".to_vec()),
        ]
    }

    #[test]
    fn minted_tokens_verify_and_any_change_does_not() {
        let t = mint("b.c", b"second", 100);
        assert_eq!(verify(&t, &keys(), 100), Ok("token:b.c".into()));
        assert_eq!(verify(&t, &keys(), 101), Err(BearerError::Expired));
        let other = mint("a", b"second", 100);
        assert_eq!(verify(&other, &keys(), 1), Err(BearerError::BadMac));
        let later = t.replace(".100.", ".200.");
        assert_eq!(verify(&later, &keys(), 1), Err(BearerError::BadMac));
        assert_eq!(
            verify(&mint("z", b"x", 9), &keys(), 1),
            Err(BearerError::UnknownKey)
        );
        for bad in ["", "a", "a.1", "a.x.00", ".1.00", &"a".repeat(300)] {
            assert_eq!(
                verify(bad, &keys(), 1),
                Err(BearerError::Malformed),
                "{bad}"
            );
        }
        assert_eq!(from_authorization("bearer  abc "), Some("abc"));
        assert_eq!(from_authorization("Basic abc"), None);
    }
}
