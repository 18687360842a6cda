//! Bytes from a TLS transport ([`TlsSession`]) into the connection: the caller owns both,
//! and the security layer never sees the connection.

use std::time::Instant;

use super::Connection;
use crate::security::SecurityError;
use crate::security::mtls::{Received, TlsSession};

impl Connection {
    /// Decrypt `data` with `tls` ([`TlsSession::receive`]) and feed the result here: the
    /// decrypted bytes go to [`Connection::handle_input`], the verified peer identity to
    /// [`Connection::set_transport_identity`] when the TLS handshake completes, and a
    /// close_notify to [`Connection::handle_eof`]. `scratch` is a reusable buffer (left
    /// empty). On error the connection is not told: the caller transmits the alert and closes
    /// the transport.
    pub fn handle_tls_input(
        &mut self,
        tls: &mut TlsSession,
        data: &[u8],
        now: Instant,
        scratch: &mut Vec<u8>,
    ) -> Result<Received, SecurityError> {
        scratch.clear();
        let got = tls.receive(data, scratch)?;
        if got.handshake_complete
            && let Some(id) = tls.peer_identity()
        {
            self.set_transport_identity(id);
        }
        if !scratch.is_empty() {
            self.handle_input(scratch, now);
            scratch.clear();
        }
        if got.peer_closed {
            self.handle_eof(now);
        }
        Ok(got)
    }
}
