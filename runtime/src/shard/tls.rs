//! TLS under the frames on a socket connection (TCP listeners of a node configured with
//! `tls`): frames leave as TLS records sealed into a second pooled buffer, handshake messages
//! and alerts leave even when no frame is queued, and a failed session is audited and counted
//! against the peer's address before the connection closes.

use std::net::IpAddr;

use valkyrie_protocol::security::SecurityError;

use std::sync::atomic::Ordering;

use valkyrie_protocol::ErrorCode;

use super::Shard;
use super::accept::Refusal;
use crate::audit::AuditEvent;
use crate::conn::send::Outgoing;
use crate::conn::{Io, Life};

impl Shard {
    /// The TLS records for the frames in `plain` (and whatever else TLS has to send).
    pub(super) fn seal(&mut self, slot: u32, plain: Box<Outgoing>) -> Box<Outgoing> {
        let mut sealed = self.send_pool.take();
        let Some(c) = self.conns.get_mut(slot) else {
            return plain;
        };
        let Io::Socket(s) = &mut c.io else {
            return plain;
        };
        let Some(tls) = s.tls.as_mut() else {
            return plain;
        };
        if plain.buf.is_empty() || tls.has_failed() {
            tls.transmit(&mut sealed.buf);
        } else if let Err(e) = tls.seal(&plain.buf, &mut sealed.buf) {
            tracing::debug!(shard = self.id, error = %e, "tls seal failed");
            c.proto.handle_eof(self.now);
        }
        self.recycle_send_buf(plain);
        sealed
    }

    /// A Valkyrie frame in the clear on a listener that requires TLS: the client is told
    /// security is required (ERROR 200, in the clear, where it can read it), the attempt is
    /// audited and counted against its address, and the connection closes.
    pub(super) fn plaintext_on_tls(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let ip = c.peer_ip();
        if let Io::Socket(s) = &mut c.io {
            s.tls = None;
        }
        // From served to refused: no longer counted as active, closed once the ERROR is out.
        c.life = Life::Refused;
        self.metrics.connections_active[c.transport() as usize].fetch_sub(1, Ordering::Relaxed);
        let mut record = serde_json::json!({"event": AuditEvent::AuthFailure.as_str(),
            "mode": "tls", "code": ErrorCode::AUTH_REQUIRED.0,
            "reason": "a frame in the clear on a listener that requires TLS"});
        self.security_failure(&mut record, ip);
        self.refuse(slot, Refusal::SecurityRequired);
    }

    /// A TLS session failed on received bytes: audit it and count it against `ip`. Its alert
    /// goes out with the next flush, then the connection closes.
    pub(super) fn tls_failure(&mut self, e: SecurityError, ip: Option<IpAddr>) {
        let kind = AuditEvent::of_fault(e.fault);
        let mut record = serde_json::json!({"event": kind.as_str(), "mode": "tls",
            "code": e.code().0, "reason": e.message});
        self.security_failure(&mut record, ip);
    }
}
