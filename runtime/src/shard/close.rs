//! The end of a connection: cancel what is armed for it, close its descriptor, and take it
//! out of the table once the kernel holds nothing of it (no orphaned send, no wait on a
//! shared-memory mapping); and the shard's own shutdown, which drains every connection up to
//! the deadline and then closes what is left.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};

use super::Shard;
use super::accept::{GOING_AWAY, GOING_AWAY_REASON};
use crate::config::RecvMode;
use crate::conn::{Io, Life};
use crate::uring::{Op, ud};

/// How long a stopping shard waits for the kernel to finish with its buffers.
const STOP_GRACE: Duration = Duration::from_secs(1);

impl Shard {
    /// Begin closing `slot`: cancel its armed operations and close its descriptor (a socket),
    /// or cancel the waits on its mapping (shared memory).
    pub(super) fn start_close(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        // An HTTP connection whose answer the service still owes: the service is told, so
        // that it stops preparing it.
        let owed = c
            .http()
            .is_some_and(|h| h.answering != crate::conn::http::Answering::Idle);
        if owed {
            let conn = crate::ConnRef {
                shard: self.id as u16,
                slot,
                generation: c.generation,
            };
            let (service, mut ctx) = self.ctx();
            service.on_http_gone(&mut ctx, conn);
        }
        if self.should_linger(slot) {
            self.linger(slot);
            return;
        }
        self.close_now(slot);
    }

    /// Close `slot` now: cancel its armed operations and close its descriptor, or cancel the
    /// waits on its mapping.
    pub(super) fn close_now(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if matches!(c.life, Life::Closing { .. }) || !self.linger_may_close(slot) {
            return;
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        c.life = Life::Closing {
            fd_closed: false,
            refused: c.life == Life::Refused,
        };
        let generation = c.generation;
        let cancel = |op: Op| {
            opcode::AsyncCancel::new(ud(op, slot, generation))
                .build()
                .user_data(ud(Op::Cancel, slot, generation))
        };
        match &mut c.io {
            Io::Shm(shm) => {
                // The mapping is released (and the peer told) once no wait is left on it.
                let armed = [
                    (shm.rx_armed, Op::ShmRx),
                    (shm.tx_armed, Op::ShmTx),
                    (shm.hup_armed, Op::ShmHup),
                ];
                for (_, op) in armed.into_iter().filter(|(on, _)| *on) {
                    self.ring.push(cancel(op));
                }
                self.remove_if_released(slot);
            }
            Io::Quic(qi) => {
                let (li, h) = (qi.listener, qi.handle);
                self.quic_close(li, h);
                self.remove_if_released(slot);
            }
            Io::Socket(s) => {
                let upgraded = c.extra.as_ref().is_some_and(|e| e.upgrade.is_some());
                let fixed = s.fixed;
                if s.send.orphan() {
                    // The kernel may still read the buffer: the send state keeps it until
                    // this send's completion.
                    self.ring.push(cancel(Op::Send));
                }
                self.ring.push(cancel(Op::Recv));
                if self.cfg.recv_mode == RecvMode::PollThenRecv {
                    self.ring.push(cancel(Op::Poll));
                }
                let close = opcode::Close::new(types::Fixed(fixed))
                    .build()
                    .user_data(ud(Op::Close, slot, generation));
                self.ring.push(close);
                if upgraded {
                    // Its rendezvous poll or the waits on its segment's mapping.
                    self.cancel_upgrade(slot);
                }
            }
        }
    }

    /// The descriptor's close completed.
    pub(super) fn on_closed(&mut self, slot: u32, generation: u32) {
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        if let Life::Closing { fd_closed, .. } = &mut c.life {
            *fd_closed = true;
        }
        self.remove_if_released(slot);
    }

    /// Take `slot` out of the table if the kernel holds nothing of it any more.
    pub(super) fn remove_if_released(&mut self, slot: u32) {
        if !self.conns.get(slot).is_some_and(|c| c.is_released()) {
            return;
        }
        self.report_streams(slot, true);
        self.spans.forget(slot);
        let c = self.conns.remove(slot);
        if let Life::Closing { refused: false, .. } = c.life {
            let lived = self.now.saturating_duration_since(c.proto.created_at());
            self.metrics
                .durations
                .observe(c.transport() as usize, lived.as_micros() as u64);
        }
        if let Io::Socket(_) = c.io {
            self.listeners.slot_freed();
        }
        // A refused connection was never counted as active.
        if let Life::Closing { refused: false, .. } = c.life {
            self.metrics.connections_active[c.transport() as usize].fetch_sub(1, Ordering::Relaxed);
        }
        self.maybe_resume_accepts();
    }

    /// Drain: close the listeners (new connections go to the node that replaces this one),
    /// stop the links, CLOSE every connection with 502 "going away", and serve until they
    /// have closed or the shutdown deadline passes.
    pub(super) fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now + self.cfg.shutdown_timeout);
        tracing::info!(
            shard = self.id,
            connections = self.conns.len(),
            "shutting down: closing listeners, draining connections"
        );
        self.close_listeners();
        // Outbound links close with the rest and make no new connection.
        self.links.stop_all();
        self.run_links();
        for slot in self.conns.slots() {
            if let Some(c) = self.conns.get_mut(slot)
                && c.life != Life::Refused
            {
                match c.http() {
                    // HTTP: a request under way is answered (with `connection: close`), an
                    // idle kept-alive connection closes now.
                    Some(h) => h.close_when_idle(),
                    None => c.proto.close(GOING_AWAY.0, GOING_AWAY_REASON),
                }
                self.mark(slot);
            }
        }
    }

    /// Close whatever has not drained by the deadline, and wait (briefly) for the kernel to
    /// finish with every buffer before the ring and its buffers are freed.
    pub(super) fn finish_shutdown(&mut self) {
        for slot in self.conns.slots() {
            self.start_close(slot);
            self.end_linger(slot);
        }
        // The pending eventfd read writes into the wake buffer: cancel it too.
        self.stopping = true;
        if self.wake.armed {
            let cancel = opcode::AsyncCancel::new(ud(Op::Wake, 0, 0))
                .build()
                .user_data(ud(Op::Cancel, 0, 0));
            self.ring.push(cancel);
        }
        self.stop_quic();
        let deadline = Instant::now() + STOP_GRACE;
        while (!self.conns.is_empty() || self.wake.armed || self.quic.in_kernel())
            && Instant::now() < deadline
        {
            self.ring.push_backlog();
            let _ = self.ring.submit_and_wait(Some(Duration::from_millis(10)));
            self.reap();
        }
        self.bufs.unregister(self.ring.inner());
        self.unregister_quic();
        tracing::info!(shard = self.id, "shard stopped");
    }
}
