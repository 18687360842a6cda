//! Going back to a better transport (`ConnectOptions::reprobe`): while a link is up on another
//! URL than its first, every interval the shard connects a probe socket to the first (TCP,
//! Unix, shared memory; through the ring, like an attempt's connect). When the probe connects
//! and no request is in flight on the link's connection, that connection is closed and the
//! link connects again from its first URL; otherwise it looks again after the interval.

use io_uring::opcode;

use super::Shard;
use super::links::{LinkIo, Probe};
use crate::link::LinkState;
use crate::uring::{Op, ud};
use crate::url::Endpoint;

impl Shard {
    /// Arm link `index`'s next probe if it is up on a URL other than its first.
    pub(super) fn schedule_probe(&mut self, index: u32) {
        let now = self.now;
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        let Some(every) = e.link.opts.reprobe else {
            return;
        };
        if e.link.is_home() || !matches!(e.link.state(), LinkState::Up { .. }) {
            return;
        }
        let at = self.timers.tick(now + every);
        self.links.set_timer(index, at);
    }

    /// The probe timer of link `index` (up, connected) fired: connect to its first URL, or
    /// give up the probe still connecting (bounded like an attempt, by the connect timeout).
    pub(super) fn probe_timer(&mut self, index: u32) {
        let now = self.now;
        let Some(e) = self.links.slab.get_mut(index as usize) else {
            return;
        };
        let generation = e.generation;
        if e.probe.is_some() {
            // Its completion (cancelled) looks again after the interval.
            self.cancel_probe(index, generation);
            return;
        }
        let deadline = now + e.link.opts.connect_timeout;
        let home = e.link.home().clone();
        if matches!(home, Endpoint::Quic(_)) {
            // A QUIC handshake is no probe to make on a timer: the link stays where it is.
            return;
        }
        match crate::sys::outbound_socket(&home) {
            Ok((fd, addr)) => {
                let sqe = addr.connect_entry(&fd, ud(Op::Probe, index, generation));
                e.probe = Some(Probe {
                    _fd: fd,
                    _addr: addr,
                });
                self.ring.push(sqe);
                let at = self.timers.tick(deadline);
                self.links.set_timer(index, at);
            }
            Err(_) => self.schedule_probe(index),
        }
    }

    /// Cancel link `index`'s probe (its completion arrives with `ECANCELED`).
    pub(super) fn cancel_probe(&mut self, index: u32, generation: u32) {
        let sqe = opcode::AsyncCancel::new(ud(Op::Probe, index, generation))
            .build()
            .user_data(ud(Op::Cancel, index, generation));
        self.ring.push(sqe);
    }

    /// A probe's connect completed: go home if it connected and nothing is in flight.
    pub(super) fn on_probe(&mut self, index: u32, generation: u32, res: i32) {
        let Some(e) = self.links.live(index, generation) else {
            return;
        };
        // The socket closes here: a listener sees a connection come and go.
        e.probe = None;
        if matches!(e.link.state(), LinkState::Stopped { .. }) {
            self.release_link(index);
            return;
        }
        let LinkIo::Conn {
            slot,
            generation: g,
        } = e.io
        else {
            return;
        };
        let idle = self
            .conns
            .live(slot, g)
            .is_some_and(|c| c.connected && c.extra.as_ref().is_none_or(|x| x.requests.len() == 0));
        if res == 0 && idle {
            let home = e.link.home().clone();
            e.link.go_home();
            e.timer = None;
            if let Some(c) = self.conns.live(slot, g) {
                tracing::info!(shard = self.id, link = index, to = %home, "moving back to the link's first URL");
                c.proto.close(0, "moving to a better transport");
                self.mark(slot);
            }
            return;
        }
        self.schedule_probe(index);
    }
}
