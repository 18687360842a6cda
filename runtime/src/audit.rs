//! The audit log: one JSON object per line for every handshake result, authentication
//! failure, refusal and ban. Shards hand records to a writer thread through a bounded queue
//! (they never block on the file); a full queue drops the record and counts it.

use std::io::{self, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde_json::Value;
use valkyrie_protocol::security::{FaultClass, SecurityFault};
use valkyrie_protocol::{CloseReason, ErrorClass, ErrorCode};

/// Records waiting for the writer at most.
pub const AUDIT_QUEUE: usize = 16_384;

/// What an audit record is about: its `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AuditEvent {
    /// A connection finished its handshake (`node_id`, `mode`, `identity`).
    HandshakeOk,
    /// The peer's credentials did not hold (a 2xx or 7xx fault).
    AuthFailure,
    /// The peer's bytes broke the protocol (framing, records, TLS).
    Malformed,
    /// The handshake did not finish in time.
    HandshakeTimeout,
    /// A zero_trust policy refused a message type (701).
    Denied,
    /// A connection was refused at admission (throttled or banned: 702).
    Refused,
    /// An address started being throttled.
    Throttle,
    /// An address was banned.
    Ban,
}

impl AuditEvent {
    /// The record's `event` string.
    pub const fn as_str(self) -> &'static str {
        match self {
            AuditEvent::HandshakeOk => "handshake_ok",
            AuditEvent::AuthFailure => "auth_failure",
            AuditEvent::Malformed => "malformed",
            AuditEvent::HandshakeTimeout => "handshake_timeout",
            AuditEvent::Denied => "denied",
            AuditEvent::Refused => "refused",
            AuditEvent::Throttle => "throttle",
            AuditEvent::Ban => "ban",
        }
    }

    /// The record a security fault (of a TLS session, say) makes: bad credentials are an
    /// authentication failure, anything else malformed input.
    pub const fn of_fault(fault: SecurityFault) -> AuditEvent {
        match fault.class() {
            FaultClass::Credentials => AuditEvent::AuthFailure,
            _ => AuditEvent::Malformed,
        }
    }

    /// The record a connection's end makes, if it is a security matter, with the code and
    /// reason to record: a fatal framing fault (100–105) is malformed input, an
    /// authentication or security fault an authentication failure, and a handshake that did
    /// not finish in time its own kind.
    pub fn of_close(
        reason: &CloseReason,
        connected: bool,
    ) -> Option<(AuditEvent, ErrorCode, String)> {
        match reason {
            CloseReason::ProtocolError { code, message } => {
                let event = match code.class() {
                    ErrorClass::Protocol
                        if (ErrorCode::BAD_MAGIC..=ErrorCode::RESERVED_BITS).contains(code) =>
                    {
                        AuditEvent::Malformed
                    }
                    ErrorClass::Authentication | ErrorClass::Security => AuditEvent::AuthFailure,
                    _ => return None,
                };
                Some((event, *code, message.clone()))
            }
            CloseReason::HandshakeTimeout if !connected => Some((
                AuditEvent::HandshakeTimeout,
                ErrorCode::HANDSHAKE_TIMEOUT,
                "handshake did not finish in time".to_owned(),
            )),
            _ => None,
        }
    }
}

/// A JSON-lines audit sink shared by the shards of a node.
#[derive(Debug)]
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<String>>>,
    dropped: AtomicU64,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl AuditLog {
    /// Append to the file at `path` (created if missing).
    pub fn to_file(path: &Path) -> io::Result<Arc<AuditLog>> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(AuditLog::to_writer(Box::new(f)))
    }

    /// Write to any sink (a file, stderr, a pipe).
    pub fn to_writer(w: Box<dyn Write + Send>) -> Arc<AuditLog> {
        let (tx, rx) = sync_channel(AUDIT_QUEUE);
        let writer = std::thread::Builder::new()
            .name("valkyrie-audit".into())
            .spawn(move || write_loop(rx, w))
            .expect("spawn the audit writer");
        Arc::new(AuditLog {
            tx: Mutex::new(Some(tx)),
            dropped: AtomicU64::new(0),
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Queue one record (a JSON object; `ts` in Unix milliseconds is added).
    pub fn record(&self, mut v: Value) {
        if let Value::Object(m) = &mut v {
            let ts = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64);
            m.insert("ts".into(), Value::from(ts));
        }
        let line = v.to_string();
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref().map(|tx| tx.try_send(line)) {
            Some(Ok(())) => {}
            Some(Err(TrySendError::Full(_) | TrySendError::Disconnected(_))) | None => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Write everything queued and stop the writer.
    pub fn close(&self) {
        self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(rx: Receiver<String>, mut w: Box<dyn Write + Send>) {
    while let Ok(line) = rx.recv() {
        let _ = writeln!(w, "{line}");
        // Flush once the queue is empty: batches under load, prompt when quiet.
        while let Ok(line) = rx.try_recv() {
            let _ = writeln!(w, "{line}");
        }
        let _ = w.flush();
    }
    let _ = w.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closes_and_faults_map_to_their_record_kinds() {
        let closed = |code: ErrorCode| CloseReason::ProtocolError {
            code,
            message: "m".into(),
        };
        let kind = |r: &CloseReason| AuditEvent::of_close(r, true).map(|(k, _, _)| k);
        assert_eq!(
            kind(&closed(ErrorCode::BAD_MAGIC)),
            Some(AuditEvent::Malformed)
        );
        assert_eq!(
            kind(&closed(ErrorCode::RESERVED_BITS)),
            Some(AuditEvent::Malformed)
        );
        assert_eq!(kind(&closed(ErrorCode::HEARTBEAT_TIMEOUT)), None);
        assert_eq!(
            kind(&closed(ErrorCode::AUTH_FAILED)),
            Some(AuditEvent::AuthFailure)
        );
        assert_eq!(
            kind(&closed(ErrorCode::INTEGRITY_FAILURE)),
            Some(AuditEvent::AuthFailure)
        );
        assert_eq!(kind(&closed(ErrorCode::SLOW_CONSUMER)), None);
        assert_eq!(
            kind(&CloseReason::HandshakeTimeout),
            None,
            "connected: not a failure"
        );
        assert_eq!(
            AuditEvent::of_close(&CloseReason::HandshakeTimeout, false).map(|(k, c, _)| (k, c)),
            Some((AuditEvent::HandshakeTimeout, ErrorCode::HANDSHAKE_TIMEOUT))
        );
        assert_eq!(
            AuditEvent::of_fault(SecurityFault::BadCertificate),
            AuditEvent::AuthFailure
        );
        assert_eq!(
            AuditEvent::of_fault(SecurityFault::Integrity),
            AuditEvent::Malformed
        );
        assert_eq!(AuditEvent::AuthFailure.as_str(), "auth_failure");
    }
}
