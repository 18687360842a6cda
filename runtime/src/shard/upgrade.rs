//! UPGRADE to shared memory, the node's side (docs/PROTOCOL.md §6.8): a same-host client's
//! request is answered with a one-use rendezvous (an abstract Unix socket) and a challenge
//! sent on this connection; the client that connects there must send the challenge back and
//! run as the node's user (`SO_PEERCRED`), and is given a segment. At the client's fence the
//! connection's input moves to the segment; this side queues its own fence, and once it is
//! written to the socket its output moves too. The socket stays open as the control and
//! liveness channel; bytes on it after the switch (the client fell back), or a broken
//! segment, move both ways back to it.

use std::io::Read;
use std::os::fd::AsRawFd;

use io_uring::{opcode, types};
use valkyrie_protocol::message::Object;
use valkyrie_protocol::{ErrorCode, UpgradeKind};
use valkyrie_shm::{ShmListener, ShmStream};

use super::Shard;
use crate::audit::AuditEvent;
use crate::conn::upgrade::{CHALLENGE_LEN, Upgrade};
use crate::conn::{Io, ShmIo};
use crate::metrics::ShardMetrics;
use crate::uring::{Op, ud};

/// The target this node moves connections to.
const SHM: &str = "shm";

impl Shard {
    /// An UPGRADE frame on `slot`.
    pub(super) fn on_upgrade(
        &mut self,
        slot: u32,
        kind: UpgradeKind,
        to: &str,
        correlation_id: u32,
    ) {
        match kind {
            UpgradeKind::Request => self.offer_upgrade(slot, to, correlation_id),
            UpgradeKind::Fence => self.peer_fenced(slot),
            // A node asks nothing: an answer is out of place.
            UpgradeKind::Answer => {}
        }
    }

    /// Why `slot` cannot move to shared memory, if it cannot.
    fn upgrade_refusal(&mut self, slot: u32, to: &str) -> Option<&'static str> {
        let enabled = self.cfg.upgrade;
        let c = self.conns.get_mut(slot)?;
        if to != SHM {
            return Some("only shm is offered");
        }
        if !enabled {
            return Some("this node does not move connections to shared memory");
        }
        if !c.proto.peer().is_some_and(|p| p.same_host) {
            return Some("not on this node's host and network namespace");
        }
        if c.is_http() || c.extra.as_ref().is_some_and(|e| e.ws.is_some()) {
            return Some("an HTTP or WebSocket connection");
        }
        match &c.io {
            Io::Socket(s) if s.tls.is_none() => {}
            _ => return Some("only a plain TCP or Unix connection moves"),
        }
        if c.upgrade().is_some() {
            return Some("already moving or moved");
        }
        None
    }

    fn offer_upgrade(&mut self, slot: u32, to: &str, correlation_id: u32) {
        if let Some(why) = self.upgrade_refusal(slot, to) {
            if let Some(c) = self.conns.get_mut(slot) {
                let _ = c
                    .proto
                    .send_error(ErrorCode::UNREACHABLE, why, 0, correlation_id);
                self.mark(slot);
            }
            return;
        }
        let mut challenge = [0u8; CHALLENGE_LEN];
        let mut tag = [0u8; 12];
        if getrandom::fill(&mut challenge).is_err() || getrandom::fill(&mut tag).is_err() {
            return;
        }
        let name = format!(
            "valkyrie-upgrade-{}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let listener = match ShmListener::bind_with(&name, self.cfg.shm) {
            Ok(l) => l.into_listener(),
            Err(e) => {
                tracing::debug!(shard = self.id, error = %e, "upgrade rendezvous");
                if let Some(c) = self.conns.get_mut(slot) {
                    let _ = c.proto.send_error(
                        ErrorCode::RESOURCE_EXHAUSTED,
                        "no rendezvous",
                        0,
                        correlation_id,
                    );
                    self.mark(slot);
                }
                return;
            }
        };
        let _ = listener.set_nonblocking(true);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let mut params = Object::new();
        params.insert("name".into(), name.into());
        params.insert(
            "challenge".into(),
            challenge
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into(),
        );
        if c.proto.answer_upgrade(correlation_id, SHM, params).is_err() {
            return;
        }
        c.extra().upgrade = Some(Box::new(Upgrade::Offered {
            listener,
            challenge,
            armed: false,
        }));
        self.arm_upgrade(slot);
        self.mark(slot);
    }

    /// Poll the rendezvous (for the client's connect) or the accepted socket (for its
    /// challenge).
    fn arm_upgrade(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let fd = match c.upgrade() {
            Some(Upgrade::Offered {
                listener, armed, ..
            }) if !*armed => {
                *armed = true;
                listener.as_raw_fd()
            }
            Some(Upgrade::Checking { sock, armed, .. }) if !*armed => {
                *armed = true;
                sock.as_raw_fd()
            }
            _ => return,
        };
        let e = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(ud(Op::Upgrade, slot, generation));
        self.ring.push(e);
    }

    /// The rendezvous or the accepted socket is readable.
    pub(super) fn on_upgrade_poll(&mut self, slot: u32, generation: u32) {
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        let closing = c.is_closing();
        let Some(up) = c.upgrade() else {
            return;
        };
        match up {
            Upgrade::Offered { armed, .. } | Upgrade::Checking { armed, .. } => *armed = false,
            _ => return,
        }
        if closing {
            self.remove_if_released(slot);
            return;
        }
        let state = c.extra.as_mut().and_then(|e| e.upgrade.take());
        let next = match state.map(|b| *b) {
            Some(Upgrade::Offered {
                listener,
                challenge,
                ..
            }) => match listener.accept() {
                // One use: the rendezvous is gone with its listener.
                Ok((sock, _)) => {
                    let _ = sock.set_nonblocking(true);
                    Some(Upgrade::Checking {
                        sock,
                        challenge,
                        armed: false,
                    })
                }
                Err(_) => Some(Upgrade::Offered {
                    listener,
                    challenge,
                    armed: false,
                }),
            },
            Some(Upgrade::Checking {
                sock, challenge, ..
            }) => self.check_rendezvous(slot, sock, challenge),
            other => other,
        };
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.extra().upgrade = next.map(Box::new);
        self.arm_upgrade(slot);
    }

    /// The client's challenge on the rendezvous: right, and from the node's user, it gets
    /// its segment.
    fn check_rendezvous(
        &mut self,
        slot: u32,
        mut sock: std::os::unix::net::UnixStream,
        challenge: [u8; CHALLENGE_LEN],
    ) -> Option<Upgrade> {
        let mut got = [0u8; CHALLENGE_LEN];
        // The client writes its 32 bytes at once after connecting: what is not there now,
        // with the socket readable, is a client that does not follow the protocol.
        let n = sock.read(&mut got).unwrap_or(0);
        let cred = crate::sys::peer_cred(&sock);
        let same_user = cred
            .as_ref()
            .is_ok_and(|&(_, uid)| uid == crate::sys::euid());
        let right = n == CHALLENGE_LEN && constant_time_eq(&got, &challenge);
        if !right || !same_user {
            let ip = self.conns.get(slot).and_then(|c| c.peer_ip());
            let mut record = serde_json::json!({"event": AuditEvent::AuthFailure.as_str(),
                "mode": "upgrade", "code": ErrorCode::SECURITY_VIOLATION.0,
                "reason": if right { "rendezvous from another user" } else { "wrong challenge on the rendezvous" },
                "peer_pid": cred.as_ref().ok().map(|c| c.0),
                "peer_uid": cred.as_ref().ok().map(|c| c.1)});
            self.security_failure(&mut record, ip);
            return None;
        }
        match ShmStream::serve(sock, &self.cfg.shm) {
            Ok(stream) => {
                crate::metrics::ShardMetrics::add(&self.metrics.upgrades, 1);
                Some(Upgrade::Ready(Box::new(ShmIo::new(stream))))
            }
            Err(e) => {
                tracing::debug!(shard = self.id, error = %e, "upgrade segment");
                None
            }
        }
    }

    /// The client's fence: its frames come on the segment from now on; ours follow our fence.
    fn peer_fenced(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let ready = matches!(c.upgrade(), Some(Upgrade::Ready(_)));
        if !ready {
            c.proto.close(
                ErrorCode::UNEXPECTED_MESSAGE.0,
                "UPGRADE fence without a segment ready",
            );
            self.mark(slot);
            return;
        }
        if let Some(e) = c.extra.as_mut()
            && let Some(Upgrade::Ready(shm)) = e.upgrade.take().map(|b| *b)
        {
            e.upgrade = Some(Box::new(Upgrade::Fencing(shm)));
        }
        let _ = c.proto.send_upgrade_fence(SHM);
        self.arm_shm_hup(slot);
        self.shm_recv(slot);
        self.mark(slot);
    }

    /// Our fence was just written to the socket: output moves to the segment.
    pub(super) fn fence_written(&mut self, slot: u32) {
        if let Some(e) = self.conns.get_mut(slot).and_then(|c| c.extra.as_mut())
            && let Some(Upgrade::Fencing(shm)) = e.upgrade.take().map(|b| *b)
        {
            e.upgrade = Some(Box::new(Upgrade::Switched(shm)));
        }
    }

    /// The segment broke (or the client fell back to the socket): both ways on the socket
    /// again; the mapping goes once no wait is left on it.
    pub(super) fn upgrade_broke(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some(e) = c.extra.as_mut() else {
            return;
        };
        let (mut shm, reading) = match e.upgrade.take().map(|b| *b) {
            Some(Upgrade::Fencing(s) | Upgrade::Switched(s)) => (s, true),
            Some(Upgrade::Ready(s)) => (s, false),
            other => {
                e.upgrade = other.map(Box::new);
                return;
            }
        };
        // What the client committed to the segment before the break comes before what it
        // sends on the socket after it: take it first (at most the ring's bytes, even under
        // back-pressure, once). A ring that fails its checks gives nothing more.
        let mut drained = 0usize;
        if reading {
            let now = self.now;
            while let Ok(Some(frame)) = shm.stream.try_recv() {
                drained += frame.len();
                c.proto.handle_input(&frame, now);
            }
            ShardMetrics::add(&self.metrics.bytes_in, drained as u64);
        }
        tracing::info!(
            shard = self.id,
            slot,
            drained,
            "upgraded connection back on its socket"
        );
        shm.stream.shutdown();
        shm.pending = None;
        let armed = [
            (shm.rx_armed, Op::ShmRx),
            (shm.tx_armed, Op::ShmTx),
            (shm.hup_armed, Op::ShmHup),
        ];
        e.upgrade = Some(Box::new(Upgrade::Broken(shm)));
        for (_, op) in armed.into_iter().filter(|(on, _)| *on) {
            let cancel = opcode::AsyncCancel::new(ud(op, slot, generation))
                .build()
                .user_data(ud(Op::Cancel, slot, generation));
            self.ring.push(cancel);
        }
        self.upgrade_released(slot);
        self.mark(slot);
    }

    /// Let a broken upgrade's mapping go once no wait is left on it. Returns whether it was
    /// broken (its waits' completions need nothing more).
    pub(super) fn upgrade_released(&mut self, slot: u32) -> bool {
        let Some(e) = self.conns.get_mut(slot).and_then(|c| c.extra.as_mut()) else {
            return false;
        };
        let Some(Upgrade::Broken(shm)) = e.upgrade.as_deref() else {
            return false;
        };
        if !shm.in_flight() {
            e.upgrade = None;
        }
        true
    }

    /// Cancel what the ring holds for a closing connection's upgrade.
    pub(super) fn cancel_upgrade(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some(up) = c.upgrade() else {
            return;
        };
        let mut ops = Vec::new();
        match up {
            Upgrade::Offered { armed: true, .. } | Upgrade::Checking { armed: true, .. } => {
                ops.push(Op::Upgrade)
            }
            _ => {}
        }
        if let Some(shm) = up.held() {
            shm.stream.shutdown();
            for (on, op) in [
                (shm.rx_armed, Op::ShmRx),
                (shm.tx_armed, Op::ShmTx),
                (shm.hup_armed, Op::ShmHup),
            ] {
                if on {
                    ops.push(op);
                }
            }
        }
        for op in ops {
            let cancel = opcode::AsyncCancel::new(ud(op, slot, generation))
                .build()
                .user_data(ud(Op::Cancel, slot, generation));
            self.ring.push(cancel);
        }
    }
}

/// Compare two secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
