//! Telling the protocols apart on one port by the first byte a client sends.
//!
//! A Valkyrie frame starts with the magic `"RC"`, a TLS connection with a handshake record
//! (content type `0x16`), an HTTP/1.1 request with its method (upper-case ASCII). No HTTP
//! method starts with `R` and no method or frame with `0x16`, so the first byte decides.

/// What a connection speaks, from its first byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// A Valkyrie frame (`R` of `"RC"`), or anything else: the frame decoder answers bytes
    /// that are none of these with ERROR 100 (bad magic), as it always has.
    Valkyrie,
    /// An HTTP/1.1 request: the first letter of a method (`GET`, `HEAD`, `POST`, `PUT`,
    /// `PATCH`, `DELETE`, `OPTIONS`, `CONNECT`, `TRACE`).
    Http,
    /// A TLS record (`0x16`, handshake): ALPN inside the tunnel picks what follows.
    Tls,
}

/// The protocol a connection whose first byte is `first` speaks.
///
/// ```
/// use valkyrie_bridge::{sniff, Sniffed};
/// assert_eq!(sniff(b'R'), Sniffed::Valkyrie);
/// assert_eq!(sniff(b'G'), Sniffed::Http);
/// assert_eq!(sniff(0x16), Sniffed::Tls);
/// assert_eq!(sniff(0x00), Sniffed::Valkyrie);
/// ```
pub fn sniff(first: u8) -> Sniffed {
    match first {
        0x16 => Sniffed::Tls,
        b'G' | b'H' | b'P' | b'D' | b'O' | b'C' | b'T' => Sniffed::Http,
        _ => Sniffed::Valkyrie,
    }
}

/// The ALPN protocol name a TLS client asks for to speak Valkyrie inside the tunnel.
pub const ALPN_VALKYRIE: &[u8] = b"valkyrie/2";
/// The ALPN protocol name a TLS client asks for to speak HTTP/1.1 inside the tunnel.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_is_http_and_the_magic_is_valkyrie() {
        for m in [
            "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE",
        ] {
            assert_eq!(sniff(m.as_bytes()[0]), Sniffed::Http, "{m}");
        }
        assert_eq!(sniff(b"RC"[0]), Sniffed::Valkyrie);
        assert_eq!(sniff(0x16), Sniffed::Tls);
    }
}
