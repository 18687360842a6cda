//! Job secrets: values given at submission (`"secrets": {"NAME": "value"}`) are sealed with
//! the control plane's key (`--secrets-key FILE`: ChaCha20-Poly1305, a random nonce per
//! value) before the spec is stored, shown as `***` by the API, opened only to go to the
//! agent that runs the job (in its JOB_REQUEST: give agents an encrypted transport), set in
//! the job's environment there, and replaced by `***` in every line of its output before the
//! line leaves the agent — so the stored logs never hold them.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};

/// What a sealed value starts with.
const SEALED: &str = "sealed:v1:";

/// Why a secret could not be sealed or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The key file is not 32 bytes (raw, or 64 hex digits).
    #[error("a secrets key is 32 bytes, raw or as 64 hex digits: {0}")]
    BadKey(String),
    /// A stored value is not one this key sealed.
    #[error("a secret does not open with this key")]
    Unopenable,
    /// No random bytes for a nonce.
    #[error("no random bytes: {0}")]
    Random(String),
}

/// The control plane's key for secrets.
#[derive(Clone)]
pub struct SecretsKey(ChaCha20Poly1305);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretsKey(..)")
    }
}

impl SecretsKey {
    /// The key in `bytes` (32 bytes).
    pub fn from_bytes(bytes: &[u8; 32]) -> SecretsKey {
        SecretsKey(ChaCha20Poly1305::new(Key::from_slice(bytes)))
    }

    /// The key in a file: 32 raw bytes, or 64 hex digits (whitespace around them ignored).
    pub fn load(path: &Path) -> Result<SecretsKey, SecretError> {
        let raw = std::fs::read(path)
            .map_err(|e| SecretError::BadKey(format!("{}: {e}", path.display())))?;
        let text = String::from_utf8_lossy(&raw);
        let hex = text.trim();
        let bytes: Vec<u8> = if raw.len() == 32 {
            raw
        } else if hex.len() == 64 {
            (0..32)
                .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16))
                .collect::<Result<_, _>>()
                .map_err(|e| SecretError::BadKey(e.to_string()))?
        } else {
            return Err(SecretError::BadKey(format!("{} bytes", raw.len())));
        };
        let arr: [u8; 32] = bytes
            .try_into()
            .map_err(|_| SecretError::BadKey("length".into()))?;
        Ok(SecretsKey::from_bytes(&arr))
    }

    /// Write a new random key to `path` as hex (mode 0600).
    pub fn generate(path: &Path) -> Result<(), SecretError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut k = [0u8; 32];
        getrandom::fill(&mut k).map_err(|e| SecretError::Random(e.to_string()))?;
        let hex: String = k.iter().map(|b| format!("{b:02x}")).collect();
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .and_then(|mut f| writeln!(f, "{hex}"))
            .map_err(|e| SecretError::BadKey(format!("{}: {e}", path.display())))
    }

    /// Seal `value`.
    pub fn seal(&self, value: &str) -> Result<String, SecretError> {
        let mut n = [0u8; 12];
        getrandom::fill(&mut n).map_err(|e| SecretError::Random(e.to_string()))?;
        let ct = self
            .0
            .encrypt(Nonce::from_slice(&n), value.as_bytes())
            .map_err(|_| SecretError::Unopenable)?;
        let mut out = n.to_vec();
        out.extend_from_slice(&ct);
        Ok(format!("{SEALED}{}", STANDARD.encode(out)))
    }

    /// Open a value [`SecretsKey::seal`] made.
    pub fn open(&self, sealed: &str) -> Result<String, SecretError> {
        let b64 = sealed.strip_prefix(SEALED).ok_or(SecretError::Unopenable)?;
        let raw = STANDARD.decode(b64).map_err(|_| SecretError::Unopenable)?;
        if raw.len() < 12 + 16 {
            return Err(SecretError::Unopenable);
        }
        let (n, ct) = raw.split_at(12);
        let plain = self
            .0
            .decrypt(Nonce::from_slice(n), ct)
            .map_err(|_| SecretError::Unopenable)?;
        String::from_utf8(plain).map_err(|_| SecretError::Unopenable)
    }
}

/// Replace every secret value in `line` with `***` (values shorter than 3 bytes are left:
/// masking them would hide ordinary text, not secrets).
pub fn mask(line: &str, values: &[String]) -> String {
    let mut out = line.to_owned();
    for v in values.iter().filter(|v| v.len() >= 3) {
        if out.contains(v.as_str()) {
            out = out.replace(v.as_str(), "***");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_seals_and_opens_and_a_wrong_key_or_a_tampered_one_does_not() {
        let k = SecretsKey::from_bytes(&[7; 32]);
        let s = k.seal("hunter2-token").unwrap();
        assert!(s.starts_with(SEALED) && !s.contains("hunter2"));
        assert_ne!(s, k.seal("hunter2-token").unwrap(), "a nonce per value");
        assert_eq!(k.open(&s).unwrap(), "hunter2-token");
        assert_eq!(
            SecretsKey::from_bytes(&[8; 32]).open(&s),
            Err(SecretError::Unopenable)
        );
        let mut t = s.clone();
        t.replace_range(
            t.len() - 3..t.len() - 2,
            if t.ends_with("A==") { "B" } else { "A" },
        );
        assert!(k.open(&t).is_err());
        assert!(k.open("plain").is_err());
    }

    #[test]
    fn masking_replaces_every_occurrence() {
        let v = vec!["s3cr3t".to_owned(), "ab".to_owned()];
        assert_eq!(mask("x s3cr3t y s3cr3t ab", &v), "x *** y *** ab");
    }
}
