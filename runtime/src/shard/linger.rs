//! Lingering close (RFC 9112 section 9.6, and what every web server does): a connection the
//! node closes while its peer may still be sending — an HTTP client whose body was refused
//! with 413, a WebSocket closed with 1009, a Valkyrie peer answered with ERROR then CLOSE —
//! is not closed at once. Closing a socket with unread input makes the kernel reset it, and
//! the reset can overtake the node's last bytes: the peer would see "connection reset" in
//! place of the answer that says why. So the node shuts down its sending side after its last
//! bytes (the peer reads them, then end of stream), keeps reading and dropping what still
//! arrives, and closes on the peer's end of stream, or after [`LINGER`] at most.
//!
//! Not while the node drains (its deadline bounds every connection), not for a peer that has
//! ended its side already, not with a send still in flight (a peer that reads nothing — a
//! slow consumer — is closed at once), not in the poll-then-receive mode.
//!
//! The descriptor is closed only once the shutdown's completion is in: the shutdown names the
//! socket by its slot in the ring's descriptor table, and a slot closed and handed to a new
//! connection before a deferred shutdown ran would have that connection's socket shut (the
//! rolling-restart test caught exactly that: new clients seeing their node end the stream).

use std::time::Duration;

use io_uring::{opcode, types};

use super::Shard;
use crate::config::RecvMode;
use crate::conn::recv::Recv;
use crate::conn::{Io, Life, Linger};
use crate::uring::{Op, ud};

/// The longest a connection lingers.
pub(super) const LINGER: Duration = Duration::from_secs(2);

impl Shard {
    /// Whether closing `slot` now should linger.
    pub(super) fn should_linger(&self, slot: u32) -> bool {
        let Some(c) = self.conns.get(slot) else {
            return false;
        };
        self.shutdown_deadline.is_none()
            && self.cfg.recv_mode == RecvMode::Multishot
            && c.life == Life::Open
            && matches!(&c.io, Io::Socket(s)
                if matches!(s.recv, Recv::Armed | Recv::Paused | Recv::Rested)
                    && !s.send.in_kernel())
    }

    /// Shut down the sending side of `slot`, keep its receive armed, and close it on the
    /// peer's end of stream or at its deadline.
    pub(super) fn linger(&mut self, slot: u32) {
        let until = self.timers.tick(self.now + LINGER);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Io::Socket(s) = &mut c.io else {
            return;
        };
        c.life = Life::Lingering(Linger::Shutting);
        let shutdown = opcode::Shutdown::new(types::Fixed(s.fixed), libc::SHUT_WR)
            .build()
            .user_data(ud(Op::Shutdown, slot, generation));
        let rearm = matches!(s.recv, Recv::Paused | Recv::Rested);
        if rearm {
            s.recv = Recv::Armed;
        }
        c.timer = Some(until);
        self.ring.push(shutdown);
        if rearm {
            self.arm_recv(slot);
        }
        self.timers.push(until, slot, generation);
    }

    /// A receive completion of a lingering connection (its buffer already given back): what
    /// arrived is dropped; the peer's end of stream (or an error) closes it.
    pub(super) fn lingering_input(&mut self, slot: u32, res: i32, more: bool) {
        if res > 0 || res == -libc::ENOBUFS {
            if !more {
                self.arm_recv(slot);
            }
            return;
        }
        self.close_now(slot);
    }

    /// Close `slot` now if it lingers (its deadline, the shard's stop).
    pub(super) fn end_linger(&mut self, slot: u32) {
        if self.conns.get(slot).is_some_and(|c| c.is_lingering()) {
            self.close_now(slot);
        }
    }

    /// Whether the lingering `slot` may be closed now: once its shutdown has completed (else
    /// it is closed when it does: `on_shutdown`).
    pub(super) fn linger_may_close(&mut self, slot: u32) -> bool {
        match self.conns.get_mut(slot).map(|c| &mut c.life) {
            Some(life @ Life::Lingering(Linger::Shutting | Linger::CloseDue)) => {
                *life = Life::Lingering(Linger::CloseDue);
                false
            }
            _ => true,
        }
    }

    /// The shutdown of a lingering connection completed: close it if that was waiting.
    pub(super) fn on_shutdown(&mut self, slot: u32, generation: u32) {
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        if let Life::Lingering(step) = c.life {
            c.life = Life::Lingering(Linger::Shut);
            if step == Linger::CloseDue {
                self.close_now(slot);
            }
        }
    }
}
