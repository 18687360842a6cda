//! UPGRADE to shared memory, the client's side (docs/PROTOCOL.md §6.8): a connection to a
//! node on the same host (both said so in HELLO / HELLO_ACK) asks to move, connects to the
//! one-use rendezvous the node names with the challenge it sent, maps the segment, sends its
//! fence on the socket and writes to the segment from then on; it reads the socket up to the
//! node's fence and the segment after it. The socket stays open: its end is the
//! connection's end, and bytes on it (the node fell back), or a broken segment, bring both
//! ways back to it.

use std::io::{self, Write};
use std::time::{Duration, Instant};

use valkyrie_protocol::{Event, UpgradeKind};
use valkyrie_shm::{ShmConfig, ShmStream};

use super::{Client, ClientError};
use crate::transport::{ClientSocket, ShmSocket};

/// How often an upgraded client looks at its socket for the node's end (or fallback).
const CONTROL_CHECK: Duration = Duration::from_millis(10);

/// An upgraded client's second transport.
pub(super) struct ClientUpgrade {
    /// The segment's socket.
    pub(super) shm: ClientSocket,
    /// Frames are written to the segment (our fence is out).
    pub(super) tx: bool,
    /// Frames are read from the segment (the node's fence came).
    pub(super) rx: bool,
    /// When the control socket was last looked at.
    pub(super) checked: Instant,
}

impl Client {
    /// Move this connection to shared memory if the node runs on this host and network
    /// namespace (both said so in HELLO / HELLO_ACK) and agrees: `Ok(true)` once frames are
    /// written to the segment (reads follow at the node's fence), `Ok(false)` when it cannot
    /// (another host, a TLS or shared-memory connection, the node refused — it stays as it
    /// was). Frames queued before and after stay in order.
    pub fn upgrade_to_shm(&mut self, timeout: Duration) -> Result<bool, ClientError> {
        if self.upgrade.is_some() {
            return Ok(true);
        }
        if !matches!(self.sock, ClientSocket::Tcp(_) | ClientSocket::Unix(_))
            || !self.conn.peer().is_some_and(|p| p.same_host)
        {
            return Ok(false);
        }
        let deadline = Instant::now() + timeout;
        let id = self.conn.request_upgrade("shm")?;
        self.flush()?;
        let answer = self.wait_until(deadline, |e| match e {
            Event::Upgrade {
                kind: UpgradeKind::Answer,
                correlation_id,
                params,
                ..
            } if *correlation_id == id => Some(Ok(Some(params.clone()))),
            Event::PeerError { correlation_id, .. } if *correlation_id == id => Some(Ok(None)),
            _ => None,
        })?;
        let Some(params) = answer else {
            return Ok(false);
        };
        let name = params.get("name").and_then(|v| v.as_str()).unwrap_or("");
        let challenge = params
            .get("challenge")
            .and_then(|v| v.as_str())
            .and_then(unhex)
            .unwrap_or_default();
        let stream = match rendezvous(name, &challenge) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade rendezvous failed: staying on the socket");
                return Ok(false);
            }
        };
        // Everything queued so far leaves on the socket, then the fence, then the segment.
        self.flush()?;
        self.conn.send_upgrade_fence("shm")?;
        self.flush()?;
        self.upgrade = Some(Box::new(ClientUpgrade {
            shm: ClientSocket::Shm(Box::new(ShmSocket::new(stream))),
            tx: true,
            rx: false,
            checked: Instant::now(),
        }));
        Ok(true)
    }

    /// Whether frames travel over shared memory (both ways: the node's fence came).
    pub fn is_upgraded(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.tx && u.rx)
    }

    /// The node's fence was read: reads move to the segment.
    pub(super) fn node_fenced(&mut self) {
        if let Some(u) = self.upgrade.as_mut() {
            u.rx = true;
        }
    }

    /// The socket frames are written to.
    pub(super) fn wsock(&mut self) -> &mut ClientSocket {
        match self.upgrade.as_deref_mut() {
            Some(u) if u.tx => &mut u.shm,
            _ => &mut self.sock,
        }
    }

    /// The socket frames are read from.
    pub(super) fn rsock(&mut self) -> &mut ClientSocket {
        match self.upgrade.as_deref_mut() {
            Some(u) if u.rx => &mut u.shm,
            _ => &mut self.sock,
        }
    }

    /// An error from the segment: both ways back on the socket (`true`); an error from the
    /// socket is the connection's (`false`).
    pub(super) fn fall_back(&mut self, from_segment: bool) -> bool {
        if !from_segment || self.upgrade.is_none() {
            return false;
        }
        let Some(mut u) = self.upgrade.take() else {
            return false;
        };
        // What the node committed to the segment before the break comes before what it
        // writes on the socket after it: read it first (at most the ring's bytes). Before
        // the node's fence nothing of the segment is ours to read yet.
        let mut drained = 0usize;
        if u.rx {
            let mut rbuf = std::mem::take(&mut self.rbuf);
            while let Ok(n @ 1..) = u.shm.try_read(&mut rbuf) {
                drained += n;
                self.conn.handle_input(&rbuf[..n], Instant::now());
            }
            self.rbuf = rbuf;
            self.collect();
        }
        if let ClientSocket::Shm(s) = &mut u.shm {
            s.stream().shutdown();
        }
        tracing::info!(drained, "upgraded connection back on its socket");
        true
    }

    /// Whether the next write goes to the segment.
    pub(super) fn writes_to_segment(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.tx)
    }

    /// Whether the next read comes from the segment.
    pub(super) fn reads_from_segment(&self) -> bool {
        self.upgrade.as_ref().is_some_and(|u| u.rx)
    }

    /// Look at the control socket of an upgraded connection now and then: its end is the
    /// connection's end; bytes on it mean the node fell back to it.
    pub(super) fn check_control(&mut self) -> Result<(), ClientError> {
        let Some(u) = self.upgrade.as_deref_mut() else {
            return Ok(());
        };
        if !u.rx || u.checked.elapsed() < CONTROL_CHECK {
            return Ok(());
        }
        u.checked = Instant::now();
        match self.sock.try_read(&mut self.rbuf) {
            Ok(0) => {
                self.take_input(0);
                Ok(())
            }
            Ok(n) => {
                // The node writes here again: its side of the segment broke.
                self.fall_back(true);
                self.take_input(n);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(self.broken(e)),
        }
    }

    /// Break the segment as a fault would (tests: the traffic must come back to the socket).
    pub fn break_upgrade(&mut self) {
        self.fall_back(true);
    }
}

/// Connect to the rendezvous `name`, prove the challenge, map the segment.
fn rendezvous(name: &str, challenge: &[u8]) -> io::Result<ShmStream> {
    if name.is_empty() || challenge.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "UPGRADE answer without a rendezvous",
        ));
    }
    let mut sock = ShmStream::rendezvous(name).map_err(crate::transport::shm_io)?;
    sock.write_all(challenge)?;
    ShmStream::connect_over(sock, ShmConfig::default()).map_err(crate::transport::shm_io)
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}
