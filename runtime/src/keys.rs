//! Key files for the security modes, as `valkyrie keygen` writes them and `valkyrie node` /
//! `valkyrie ping` read them (formats in docs/SECURITY.md).
//!
//! - Noise static key: `NAME.key` holds the private key, `NAME.pub` the public key, each as 64
//!   lower-case hex digits and a newline; the private file is created with mode 0600.
//! - Post-quantum identity: `NAME.pqkey` holds two lines, the ML-DSA-65 public key then the
//!   secret key, in hex (mode 0600); `NAME.pqpub` the public key; the identity is named by the
//!   BLAKE3 fingerprint of the public key (64 hex digits), which is what peers pin.
//! - Token secrets: one `KEY_ID HEX_SECRET` per line (`#` starts a comment); a client's file
//!   holds one line.
//! - mtls: PEM files. A development CA is `NAME.crt` and `NAME.key` (0600); a certificate it
//!   issues is `NAME.crt` (the chain: leaf, then the CA) and `NAME.key` (PKCS#8, 0600). Any
//!   CA's PEM files work the same way.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use valkyrie_protocol::security::noise_xk::{NoiseKeypair, hex};

fn bad(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{}: {what}", path.display()),
    )
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn key32(path: &Path) -> io::Result<[u8; 32]> {
    let text = fs::read_to_string(path)?;
    unhex(&text)
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| bad(path, "expected 64 hex digits"))
}

/// Write `data` to `path`, readable by the owner only when `private`.
fn write_file(path: &Path, data: &str, private: bool) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)?;
    f.write_all(data.as_bytes())
}

/// Create a Noise static key pair at `base.key` and `base.pub` (refusing to overwrite).
pub fn write_noise_keypair(base: &Path) -> io::Result<NoiseKeypair> {
    let kp = NoiseKeypair::generate();
    write_file(
        &base.with_extension("key"),
        &format!("{}\n", hex(&kp.private)),
        true,
    )?;
    write_file(
        &base.with_extension("pub"),
        &format!("{}\n", hex(&kp.public)),
        false,
    )?;
    Ok(kp)
}

/// Read a Noise private key file (`NAME.key`) into its key pair.
pub fn read_noise_keypair(path: &Path) -> io::Result<NoiseKeypair> {
    Ok(NoiseKeypair::from_private(key32(path)?))
}

/// Read a Noise public key file (`NAME.pub`).
pub fn read_public_key(path: &Path) -> io::Result<[u8; 32]> {
    key32(path)
}

/// Read a list of public keys, one file per key or one key per line in one file.
pub fn read_public_keys(path: &Path) -> io::Result<Vec<[u8; 32]>> {
    fs::read_to_string(path)?
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            unhex(l)
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad(path, "a line is not 64 hex digits"))
        })
        .collect()
}

/// Create a post-quantum identity at `base.pqkey` and `base.pqpub`; returns its fingerprint.
pub fn write_pq_identity(base: &Path) -> io::Result<[u8; 32]> {
    use valkyrie_protocol::security::post_quantum::PqIdentity;
    let id = PqIdentity::generate();
    write_file(
        &base.with_extension("pqkey"),
        &format!("{}\n{}\n", hex(id.public_bytes()), hex(id.secret_bytes())),
        true,
    )?;
    write_file(
        &base.with_extension("pqpub"),
        &format!("{}\n", hex(id.public_bytes())),
        false,
    )?;
    Ok(id.fingerprint())
}

/// Read a post-quantum identity (`NAME.pqkey`).
pub fn read_pq_identity(
    path: &Path,
) -> io::Result<valkyrie_protocol::security::post_quantum::PqIdentity> {
    let text = fs::read_to_string(path)?;
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let (Some(public), Some(secret)) = (lines.next().and_then(unhex), lines.next().and_then(unhex))
    else {
        return Err(bad(
            path,
            "expected the public key and the secret key in hex",
        ));
    };
    valkyrie_protocol::security::post_quantum::PqIdentity::from_bytes(&public, &secret)
        .ok_or_else(|| bad(path, "not an ML-DSA-65 key pair"))
}

/// A 32-byte fingerprint given as 64 hex digits.
pub fn parse_fingerprint(text: &str) -> io::Result<[u8; 32]> {
    unhex(text).and_then(|v| v.try_into().ok()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "a fingerprint is 64 hex digits",
        )
    })
}

/// Create a token secret file with one `KEY_ID HEX_SECRET` line (32 random bytes).
pub fn write_token(path: &Path, key_id: &str) -> io::Result<()> {
    if key_id.is_empty() || key_id.contains(char::is_whitespace) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the key id must be one word",
        ));
    }
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(io::Error::other)?;
    write_file(path, &format!("{key_id} {}\n", hex(&secret)), true)
}

/// Read `KEY_ID HEX_SECRET` lines.
pub fn read_tokens(path: &Path) -> io::Result<Vec<(String, Vec<u8>)>> {
    fs::read_to_string(path)?
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut it = l.split_whitespace();
            match (it.next(), it.next().and_then(unhex), it.next()) {
                (Some(id), Some(secret), None) if !secret.is_empty() => Ok((id.to_owned(), secret)),
                _ => Err(bad(path, "expected `KEY_ID HEX_SECRET` lines")),
            }
        })
        .collect()
}

fn cert_paths(base: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    (base.with_extension("crt"), base.with_extension("key"))
}

fn security_io(e: valkyrie_protocol::security::SecurityError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e.message)
}

fn write_pem_pair(base: &Path, pair: (Vec<u8>, Vec<u8>)) -> io::Result<()> {
    let (crt, key) = cert_paths(base);
    let text = |b: Vec<u8>| String::from_utf8(b).map_err(|_| bad(base, "PEM is not UTF-8"));
    write_file(&key, &text(pair.1)?, true)?;
    write_file(&crt, &text(pair.0)?, false)
}

/// Create a development CA at `base.crt` and `base.key` named `name`, valid for `days`.
pub fn write_ca(base: &Path, name: &str, days: u32) -> io::Result<()> {
    let pair = valkyrie_protocol::security::mtls::generate_ca(name, days).map_err(security_io)?;
    write_pem_pair(base, pair)
}

/// Issue a certificate for `name` from the CA at `ca.crt`/`ca.key` into `base.crt` (chain)
/// and `base.key`.
pub fn write_cert(
    base: &Path,
    ca: &Path,
    name: &str,
    role: valkyrie_protocol::security::mtls::CertRole,
    days: u32,
) -> io::Result<()> {
    let (ca_crt, ca_key) = cert_paths(ca);
    let pair = valkyrie_protocol::security::mtls::issue(
        &fs::read(ca_crt)?,
        &fs::read(ca_key)?,
        name,
        role,
        days,
    )
    .map_err(security_io)?;
    write_pem_pair(base, pair)
}

/// A TLS server configuration from PEM files: our chain and key, and the CA that issues
/// client certificates.
pub fn tls_server(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> io::Result<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>> {
    valkyrie_protocol::security::mtls::server_config(
        &fs::read(cert)?,
        &fs::read(key)?,
        &fs::read(ca)?,
    )
    .map_err(security_io)
}

/// A TLS server configuration from PEM files that asks for no client certificate: our
/// chain and key (a `quic://` listener without a client CA, or token inside TLS).
pub fn tls_server_without_client_auth(
    cert: &Path,
    key: &Path,
) -> io::Result<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ServerConfig>> {
    valkyrie_protocol::security::mtls::server_config_without_client_auth(
        &fs::read(cert)?,
        &fs::read(key)?,
    )
    .map_err(security_io)
}

/// A TLS client configuration that trusts the CA in `ca` and presents no certificate.
pub fn tls_client_without_certificate(
    ca: &Path,
) -> io::Result<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>> {
    valkyrie_protocol::security::mtls::server_only_client_config(&fs::read(ca)?)
        .map_err(security_io)
}

/// A TLS client configuration from PEM files: our chain and key, and the CA that issues
/// server certificates.
pub fn tls_client(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> io::Result<std::sync::Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>> {
    valkyrie_protocol::security::mtls::client_config(
        &fs::read(cert)?,
        &fs::read(key)?,
        &fs::read(ca)?,
    )
    .map_err(security_io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_files_round_trip() {
        let dir = std::env::temp_dir().join(format!("valkyrie-keys-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let kp = write_noise_keypair(&dir.join("node")).unwrap();
        assert_eq!(
            read_noise_keypair(&dir.join("node.key")).unwrap().public,
            kp.public
        );
        assert_eq!(read_public_key(&dir.join("node.pub")).unwrap(), kp.public);
        assert!(
            write_noise_keypair(&dir.join("node")).is_err(),
            "never overwrites"
        );
        let fp = write_pq_identity(&dir.join("node")).unwrap();
        assert_eq!(
            read_pq_identity(&dir.join("node.pqkey"))
                .unwrap()
                .fingerprint(),
            fp
        );
        write_token(&dir.join("agent.token"), "agents").unwrap();
        let t = read_tokens(&dir.join("agent.token")).unwrap();
        assert_eq!(t[0].0, "agents");
        assert_eq!(t[0].1.len(), 32);
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(dir.join("node.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "private key readable by others");
        use valkyrie_protocol::security::mtls::CertRole;
        write_ca(&dir.join("ca"), "test-ca", 30).unwrap();
        write_cert(
            &dir.join("srv"),
            &dir.join("ca"),
            "node-a",
            CertRole::Server,
            30,
        )
        .unwrap();
        write_cert(
            &dir.join("cli"),
            &dir.join("ca"),
            "agent-1",
            CertRole::Client,
            30,
        )
        .unwrap();
        assert!(
            write_ca(&dir.join("ca"), "again", 30).is_err(),
            "no overwrite"
        );
        let (crt, key) = cert_paths(&dir.join("srv"));
        tls_server(&crt, &key, &dir.join("ca.crt")).unwrap();
        let (crt, key) = cert_paths(&dir.join("cli"));
        tls_client(&crt, &key, &dir.join("ca.crt")).unwrap();
        let mode = fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "certificate key readable by others");
        fs::remove_dir_all(&dir).unwrap();
    }
}
