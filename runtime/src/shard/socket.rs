//! Socket connections through the ring: the receive modes (multishot receive, or a multishot
//! poll and one-shot receives), input into the protocol, the flush that gathers queued frames
//! into one send, and send completions driving [`SendState`](crate::conn::send::SendState).

use io_uring::{cqueue, opcode, squeue, types};
use valkyrie_bridge::ALPN_HTTP1;

use super::Shard;
use crate::config::RecvMode;
use crate::conn::http::HttpConn;
use crate::conn::recv::{Recv, RecvAction};
use crate::conn::send::{Completion, Outgoing};
use crate::conn::{Extra, Io, Life};
use crate::metrics::{Answers, ShardMetrics};
use crate::uring::{Op, ud};

impl Shard {
    /// Start waiting for data: a multishot receive, or a multishot poll.
    pub(super) fn arm_recv(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some(s) = c.socket() else {
            return;
        };
        let e = match self.cfg.recv_mode {
            RecvMode::Multishot => crate::uring::limit_multishot(
                opcode::RecvMulti::new(types::Fixed(s.fixed), self.bufs.bgid)
                    .build()
                    .user_data(ud(Op::Recv, slot, generation)),
                self.recv_budget,
            ),
            RecvMode::PollThenRecv => {
                opcode::PollAdd::new(types::Fixed(s.fixed), libc::POLLIN as u32)
                    .multi(true)
                    .build()
                    .user_data(ud(Op::Poll, slot, generation))
            }
        };
        self.ring.push(e);
    }

    /// One receive into a provided buffer (poll-then-receive mode).
    fn recv_once(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some(s) = c.socket() else {
            return;
        };
        let e = opcode::Recv::new(
            types::Fixed(s.fixed),
            std::ptr::null_mut(),
            self.bufs.buf_size(),
        )
        .buf_group(self.bufs.bgid)
        .flags(libc::MSG_DONTWAIT)
        .build()
        .flags(squeue::Flags::BUFFER_SELECT)
        .user_data(ud(Op::Recv, slot, generation));
        self.ring.push(e);
    }

    /// Whether `slot` still holds the connection of `generation`, not closing.
    fn receiving(&mut self, slot: u32, generation: u32) -> bool {
        self.conns
            .live(slot, generation)
            .is_some_and(|c| !c.is_closing())
    }

    pub(super) fn on_poll(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        if !self.receiving(slot, generation) {
            return;
        }
        let more = cqueue::more(flags);
        if res < 0 {
            if res != -libc::ECANCELED {
                if let Some(c) = self.conns.get_mut(slot) {
                    c.proto.handle_eof(self.now);
                    self.mark(slot);
                }
            } else if !more {
                self.recv_ended(slot);
            }
            return;
        }
        if self.recv_armed(slot) {
            self.recv_once(slot);
        }
        if !more {
            self.recv_ended(slot);
        }
    }

    fn recv_mode(&self) -> RecvMode {
        self.cfg.recv_mode
    }

    /// Whether the connection's receive is armed (its input is not held back).
    fn recv_armed(&self, slot: u32) -> bool {
        self.conns
            .get(slot)
            .is_some_and(|c| matches!(&c.io, Io::Socket(s) if s.recv.is_armed()))
    }

    /// The armed receive (multishot receive or poll) posted its final completion: arm it
    /// again unless the connection's input is held back.
    fn recv_ended(&mut self, slot: u32) {
        let backed_up = self.backed_up(slot);
        let Some(s) = self.conns.get_mut(slot).and_then(|c| c.socket()) else {
            return;
        };
        if s.recv.ended(backed_up) {
            self.arm_recv(slot);
        } else if s.recv == Recv::Rested {
            ShardMetrics::add(&self.metrics.input_rests, 1);
        }
    }

    /// Whether a turn's receive worth of output (`recv_budget`) already waits behind the
    /// connection's send in flight: its receive, having ended by itself, then rests until
    /// that output has gone (see `conn::recv`).
    fn backed_up(&self, slot: u32) -> bool {
        self.recv_budget != 0
            && self.conns.get(slot).is_some_and(|c| {
                matches!(&c.io, Io::Socket(s) if s.send.in_kernel())
                    && c.proto.queued_bytes() >= self.recv_budget as usize
            })
    }

    /// Follow the connection's wish for input (back-pressure): cancel its receive while its
    /// outbound queues are full, arm it again once they have drained.
    pub(super) fn steer_input(&mut self, slot: u32) {
        let backed_up = self.backed_up(slot);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let wants = c.wants_input() && !c.held;
        let generation = c.generation;
        // An upgraded connection's input is its segment's: resume it as a shared-memory one.
        let socket = matches!(c.io, Io::Socket(_));
        if socket && let Some((_, shm)) = c.proto_and_shm() {
            if wants && shm.rx_held {
                shm.rx_held = false;
                ShardMetrics::add(&self.metrics.input_resumes, 1);
                self.shm_recv(slot);
            }
            return;
        }
        match &mut c.io {
            Io::Socket(s) => match s.recv.want(wants, backed_up) {
                RecvAction::None => {}
                RecvAction::Arm => {
                    ShardMetrics::add(&self.metrics.input_resumes, 1);
                    self.arm_recv(slot);
                }
                RecvAction::Cancel => {
                    ShardMetrics::add(&self.metrics.input_holds, 1);
                    let op = match self.recv_mode() {
                        RecvMode::Multishot => Op::Recv,
                        RecvMode::PollThenRecv => Op::Poll,
                    };
                    let e = opcode::AsyncCancel::new(ud(op, slot, generation))
                        .build()
                        .user_data(ud(Op::Cancel, slot, generation));
                    self.ring.push(e);
                }
            },
            Io::Shm(shm) => {
                if wants && shm.rx_held {
                    shm.rx_held = false;
                    ShardMetrics::add(&self.metrics.input_resumes, 1);
                    self.shm_recv(slot);
                }
            }
            Io::Quic(q) => {
                if wants && q.rx_held {
                    q.rx_held = false;
                    ShardMetrics::add(&self.metrics.input_resumes, 1);
                    self.quic_recv(slot);
                }
            }
        }
    }

    pub(super) fn on_recv(&mut self, slot: u32, generation: u32, res: i32, flags: u32) {
        let bid = cqueue::buffer_select(flags);
        let more = cqueue::more(flags);
        if self
            .conns
            .live(slot, generation)
            .is_some_and(|c| c.is_lingering())
        {
            if let Some(bid) = bid {
                self.bufs.release(bid, res.max(0) as usize, flags);
            }
            self.lingering_input(slot, res, more);
            return;
        }
        let live = self.receiving(slot, generation);
        if res > 0 {
            if let Some(bid) = bid {
                if live {
                    self.receive(slot, bid, res as usize);
                }
                self.bufs.release(bid, res as usize, flags);
            }
            if live {
                self.mark(slot);
                match self.recv_mode() {
                    RecvMode::Multishot if !more => self.recv_ended(slot),
                    RecvMode::PollThenRecv
                        if (cqueue::sock_nonempty(flags) || res as u32 == self.bufs.buf_size())
                            && self.recv_armed(slot) =>
                    {
                        self.recv_once(slot)
                    }
                    _ => {}
                }
            }
            return;
        }
        if let Some(bid) = bid {
            self.bufs.release(bid, 0, flags);
        }
        if !live {
            return;
        }
        if res == -libc::ENOBUFS {
            // Every receive buffer was in use for a moment: they are recycled as soon as each
            // completion is handled, so simply ask again.
            ShardMetrics::add(&self.metrics.recv_buffer_shortages, 1);
            match self.recv_mode() {
                RecvMode::Multishot if !more => self.recv_ended(slot),
                RecvMode::PollThenRecv if self.recv_armed(slot) => self.recv_once(slot),
                _ => {}
            }
            return;
        }
        if res == -libc::EINVAL && self.recv_budget != 0 && self.recv_mode() == RecvMode::Multishot
        {
            // A kernel before 6.17 refuses a byte limit on a multishot receive: go without.
            tracing::info!(
                shard = self.id,
                "multishot receives without a per-turn byte limit (the kernel has none)"
            );
            self.recv_budget = 0;
            self.recv_ended(slot);
            return;
        }
        if res == -libc::ECANCELED {
            // Cancelled to hold the connection's input back (a closing one is not live).
            if self.cfg.recv_mode == RecvMode::Multishot && !more {
                self.recv_ended(slot);
            }
            return;
        }
        if res == -libc::EAGAIN && self.cfg.recv_mode == RecvMode::PollThenRecv {
            // The poll fired but another receive already took the data.
            return;
        }
        // End of file or a transport error: nothing more will be received.
        if let Some(c) = self.conns.get_mut(slot) {
            if let Io::Socket(s) = &mut c.io {
                s.recv = Recv::Ended;
            }
            c.proto.handle_eof(self.now);
            self.mark(slot);
        }
    }

    /// Hand `len` bytes of receive buffer `bid` to the connection (through TLS when it has it).
    fn receive(&mut self, slot: u32, bid: u16, len: usize) {
        ShardMetrics::add(&self.metrics.bytes_in, len as u64);
        if let Some(c) = self.conns.get_mut(slot)
            && (c.sniffing || c.is_http())
        {
            let now = self.timers.tick(self.now);
            match super::http::take_input(c, self.bufs.data(bid, len), &self.cfg.http, now) {
                super::http::Taken::Http => return,
                super::http::Taken::PlaintextOnTls => {
                    self.plaintext_on_tls(slot);
                    return;
                }
                super::http::Taken::Frames => {}
            }
        }
        if self
            .conns
            .get_mut(slot)
            .and_then(|c| c.upgrade())
            .is_some_and(|u| u.shm().is_some())
        {
            // Bytes on the socket of a connection that moved: the client fell back to it.
            self.upgrade_broke(slot);
        }
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let data = self.bufs.data(bid, len);
        let Io::Socket(s) = &mut c.io else {
            return;
        };
        match s.tls.as_mut() {
            None => super::websocket::deliver(c, data, &mut self.ws_plain, self.now),
            Some(tls) => {
                self.tls_plain.clear();
                match tls.receive(data, &mut self.tls_plain) {
                    Err(e) => {
                        c.proto.handle_eof(self.now);
                        let ip = c.peer_ip();
                        self.tls_failure(e, ip);
                    }
                    Ok(got) => {
                        if got.handshake_complete {
                            let identity = tls.peer_identity();
                            if let Some(id) = &identity {
                                c.proto.set_transport_identity(id.clone());
                            }
                            // ALPN http/1.1: the tunnel carries the node's HTTP side.
                            if self.cfg.http.enabled && tls.alpn_protocol() == Some(ALPN_HTTP1) {
                                let now = self.timers.tick(self.now);
                                let mut h = HttpConn::new(self.cfg.http.limits, now);
                                h.identity = identity;
                                c.extra.get_or_insert_with(Box::default).http = Some(Box::new(h));
                            }
                        }
                        match c.extra.as_mut().and_then(|e| e.http.as_deref_mut()) {
                            Some(h) => h.reader.push(&self.tls_plain),
                            None if !self.tls_plain.is_empty() => super::websocket::deliver(
                                c,
                                &self.tls_plain,
                                &mut self.ws_plain,
                                self.now,
                            ),
                            None => {}
                        }
                        if got.peer_closed {
                            c.proto.handle_eof(self.now);
                        }
                    }
                }
            }
        }
    }

    /// Write what the connection has queued into one send (sealed by TLS when it has it).
    pub(super) fn flush(&mut self, slot: u32) {
        let batch = self.cfg.send_batch;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let closing = c.is_closing();
        if c.upgrade().is_some_and(|u| u.output_switched()) {
            self.shm_flush(slot);
            return;
        }
        let fencing = matches!(c.upgrade(), Some(crate::conn::upgrade::Upgrade::Fencing(_)));
        let s = match &mut c.io {
            Io::Socket(s) => s,
            Io::Shm(_) => {
                self.shm_flush(slot);
                return;
            }
            Io::Quic(_) => {
                self.quic_flush(slot);
                return;
            }
        };
        if s.send.in_kernel() || closing {
            return;
        }
        let tls = s.tls.is_some();
        let draining = self.shutdown_deadline.is_some();
        let mut fenced = false;
        let mut out = self.send_pool.take();
        let mut answers = Answers {
            table: &mut self.latency,
            spans: &mut self.spans,
            slot,
            generation: c.generation,
            epoch: self.timers.epoch(),
            now_us: None,
        };
        match c.extra.as_deref_mut() {
            Some(Extra { http: Some(h), .. }) => h.take_output(&mut out.buf, batch),
            Some(Extra { ws: Some(_), .. }) => super::websocket::flush_ws(
                c,
                &self.metrics,
                &mut answers,
                &mut self.ws_frames,
                &mut out.buf,
                batch,
                draining,
            ),
            _ if fencing => {
                // Up to and with our UPGRADE fence on the socket; what follows goes to the
                // segment.
                fenced = super::output::output_to_fence(
                    &mut c.proto,
                    &self.metrics,
                    &mut answers,
                    &mut out.buf,
                );
            }
            _ => super::output::protocol_output(
                &mut c.proto,
                &self.metrics,
                &mut answers,
                &mut out.buf,
                batch,
            ),
        }
        if tls {
            out = self.seal(slot, out);
        }
        if out.buf.is_empty() {
            self.recycle_send_buf(out);
        } else {
            self.submit_send(slot, out);
        }
        if fenced {
            self.fence_written(slot);
            self.shm_flush(slot);
        }
    }

    /// Submit `out` as the connection's send.
    pub(super) fn submit_send(&mut self, slot: u32, out: Box<Outgoing>) {
        let now = self.timers.tick(self.now);
        let Some(c) = self.conns.get_mut(slot) else {
            self.recycle_send_buf(out);
            return;
        };
        let generation = c.generation;
        let Some(s) = c.socket() else {
            return;
        };
        s.send.submit(out, now);
        self.push_send(slot, generation);
    }

    /// Submit the bytes the connection's send state shows as pending.
    fn push_send(&mut self, slot: u32, generation: u32) {
        let Some(s) = self.conns.get_mut(slot).and_then(|c| c.socket()) else {
            return;
        };
        let fixed = s.fixed;
        let Some(pending) = s.send.pending() else {
            return;
        };
        // The buffer stays in the send state (and, when the connection gives up, orphaned
        // there) until this send's completion: see `Ring::push`.
        let e = opcode::Send::new(types::Fixed(fixed), pending.as_ptr(), pending.len() as u32)
            .build()
            .user_data(ud(Op::Send, slot, generation));
        self.ring.push(e);
    }

    pub(super) fn on_send(&mut self, slot: u32, generation: u32, res: i32) {
        let now = self.timers.tick(self.now);
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        let refused = c.life == Life::Refused;
        let Some(s) = c.socket() else {
            return;
        };
        match s.send.complete(res, now) {
            Completion::Partial => {
                // Submit the rest from where it stopped.
                if res > 0 {
                    ShardMetrics::add(&self.metrics.bytes_out, res as u64);
                }
                self.push_send(slot, generation);
            }
            Completion::Done(out) => {
                ShardMetrics::add(&self.metrics.bytes_out, res as u64);
                self.recycle_send_buf(out);
                if refused {
                    self.start_close(slot);
                } else {
                    self.mark(slot);
                }
            }
            Completion::Failed(out, _errno) => {
                self.recycle_send_buf(out);
                if let Some(c) = self.conns.get_mut(slot) {
                    c.proto.handle_eof(self.now);
                }
                if refused {
                    self.start_close(slot);
                } else {
                    self.mark(slot);
                }
            }
            Completion::Released(out) => {
                // The send of a connection being closed ended (completed or cancelled): its
                // buffer is no longer read by the kernel and may be reused.
                self.recycle_send_buf(out);
                self.remove_if_released(slot);
            }
            Completion::Stray => {}
        }
    }

    pub(super) fn recycle_send_buf(&mut self, b: Box<Outgoing>) {
        self.send_pool.give(b, 4 * self.cfg.send_batch);
    }
}
