//! Shared-memory connections: frames the peer committed are fed to the protocol (up to a
//! budget per turn), queued frames are written in place into the send ring, and the shard
//! waits on the rings' futex words and the rendezvous socket's hang-up through io_uring.

use io_uring::{opcode, squeue, types};
use valkyrie_protocol::HEADER_LEN;
use valkyrie_shm::ShmError;

use super::Shard;
use crate::conn::Io;
use crate::metrics::ShardMetrics;
use crate::uring::{Op, ud};

/// `FUTEX2_SIZE_U32` without `FUTEX2_PRIVATE`: the words are shared with another process.
const FUTEX2_SIZE_U32: u32 = 0x02;
/// Bytes of input a shared-memory connection hands to the protocol per turn: the rest waits
/// for the next loop iteration, so one busy peer cannot starve the others.
const SHM_INPUT_BUDGET: usize = 256 * 1024;

/// An io_uring FUTEX_WAIT on a shared-memory ring's word (process-shared, 32-bit), completing
/// when the peer wakes it.
fn futex_wait(word: valkyrie_shm::FutexWord, user_data: u64) -> squeue::Entry {
    opcode::FutexWait::new(
        word.as_ptr(),
        u64::from(valkyrie_shm::FutexWord::EXPECTED),
        u64::from(u32::MAX),
        FUTEX2_SIZE_U32,
    )
    .build()
    .user_data(user_data)
}

impl Shard {
    /// Continue the shared-memory (and QUIC) connections that had more input than one turn's
    /// budget.
    pub(super) fn drain_shm_more(&mut self) -> bool {
        if self.shm_more.is_empty() {
            return false;
        }
        let more = std::mem::take(&mut self.shm_more);
        for &(slot, generation) in &more {
            match self.conns.live(slot, generation).map(|c| &c.io) {
                // A socket here is an upgraded connection reading its segment.
                Some(Io::Shm(_) | Io::Socket(_)) => self.shm_recv(slot),
                Some(Io::Quic(_)) => self.quic_recv(slot),
                None => {}
            }
        }
        true
    }

    /// Watch a shared-memory connection's socket for the peer's death.
    pub(super) fn arm_shm_hup(&mut self, slot: u32) {
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        let generation = c.generation;
        let Some((_, shm)) = c.proto_and_shm() else {
            return;
        };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&shm.stream.socket());
        shm.hup_armed = true;
        let e = opcode::PollAdd::new(types::Fd(fd), (libc::POLLRDHUP | libc::POLLHUP) as u32)
            .build()
            .user_data(ud(Op::ShmHup, slot, generation));
        self.ring.push(e);
    }

    /// A futex wait or the hang-up poll of a shared-memory connection completed.
    pub(super) fn on_shm_wait(&mut self, slot: u32, generation: u32, op: Op) {
        let Some(c) = self.conns.live(slot, generation) else {
            return;
        };
        let closing = c.is_closing();
        let upgraded = matches!(c.io, Io::Socket(_));
        let shm = match &mut c.io {
            Io::Shm(s) => Some(&mut **s),
            _ => c
                .extra
                .as_mut()
                .and_then(|e| e.upgrade.as_mut())
                .and_then(|u| u.held()),
        };
        let Some(shm) = shm else {
            return;
        };
        match op {
            Op::ShmRx => shm.rx_armed = false,
            Op::ShmTx => shm.tx_armed = false,
            _ => shm.hup_armed = false,
        }
        if closing {
            self.remove_if_released(slot);
            return;
        }
        if upgraded && self.upgrade_released(slot) {
            return;
        }
        match op {
            Op::ShmRx => self.shm_recv(slot),
            Op::ShmTx => self.mark(slot),
            _ => {
                // Hang-up: deliver what the peer committed, then the end of the stream (of
                // an upgraded connection: the segment broke, its socket takes the traffic).
                self.shm_recv(slot);
                let now = self.now;
                if let Some(c) = self.conns.get_mut(slot)
                    && let Some((proto, shm)) = c.proto_and_shm()
                    && shm.stream.check_peer().is_err()
                {
                    if upgraded {
                        self.upgrade_broke(slot);
                    } else {
                        proto.handle_eof(now);
                        self.mark(slot);
                    }
                }
            }
        }
    }

    /// Feed what the peer committed to the protocol (up to a budget), then wait on the
    /// receive ring's futex word once it is empty.
    pub(super) fn shm_recv(&mut self, slot: u32) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let generation = c.generation;
        let upgraded = matches!(c.io, Io::Socket(_));
        let Some((proto, shm)) = c.proto_and_shm() else {
            return;
        };
        let mut taken = 0usize;
        let mut eof = false;
        let mut arm = None;
        // Each turn takes a frame (bounded by the budget) or ends.
        loop {
            if !proto.wants_input() {
                // Back-pressure: frames wait in the ring until the connection drains its
                // outbound queues (`steer_input` resumes reading).
                shm.rx_held = true;
                break;
            }
            if taken >= SHM_INPUT_BUDGET {
                // More is waiting: come back on the next turn of the loop.
                self.shm_more.push((slot, generation));
                break;
            }
            let empty = match shm.stream.try_recv() {
                Ok(Some(frame)) => {
                    taken += frame.len();
                    proto.handle_input(&frame, now);
                    false
                }
                Ok(None) => true,
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm receive");
                    eof = true;
                    break;
                }
            };
            if !empty {
                continue;
            }
            if shm.rx_armed {
                break;
            }
            match shm.stream.recv_wakeup() {
                Ok(None) => continue,
                Ok(Some(word)) => {
                    shm.rx_armed = true;
                    arm = Some(futex_wait(word, ud(Op::ShmRx, slot, generation)));
                    break;
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm receive");
                    eof = true;
                    break;
                }
            }
        }
        if eof && !upgraded {
            proto.handle_eof(now);
        }
        // The word lives in the connection's mapping, kept until this wait completes or is
        // cancelled (see start_close).
        if let Some(e) = arm {
            self.ring.push(e);
        }
        if eof && upgraded {
            self.upgrade_broke(slot);
        }
        if taken > 0 {
            ShardMetrics::add(&self.metrics.bytes_in, taken as u64);
        }
        if taken > 0 || eof {
            self.mark(slot);
        }
    }

    /// Write the protocol's queued frames into the send ring; when it is full keep the frame
    /// and wait on the ring's space word (the slow-consumer timer runs meanwhile).
    pub(super) fn shm_flush(&mut self, slot: u32) {
        let now = self.timers.tick(self.now);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let generation = c.generation;
        let upgraded = matches!(c.io, Io::Socket(_));
        let Some((proto, shm)) = c.proto_and_shm() else {
            return;
        };
        let mut written = 0u64;
        let mut failed = false;
        let mut arm = None;
        let mut answers = crate::metrics::Answers {
            table: &mut self.latency,
            spans: &mut self.spans,
            slot,
            generation,
            epoch: self.timers.epoch(),
            now_us: None,
        };
        // Each turn writes (part of) a frame, or ends: bounded by what the protocol queued.
        loop {
            if shm.pending.is_none() {
                match proto.poll_transmit() {
                    Some(t) => {
                        self.metrics.transmitted(&t, &mut answers);
                        shm.pending = Some((t, 0));
                    }
                    None => break,
                }
            }
            let Some((t, off)) = shm.pending.as_mut() else {
                break;
            };
            let total = t.len();
            let chunk = (total - *off).min(shm.stream.max_frame());
            match shm.stream.try_claim(chunk) {
                Ok(mut claim) => {
                    // Header and payload as one byte string, from `off`.
                    let mut at = 0;
                    let mut pos = *off;
                    while at < chunk {
                        let n = if pos < HEADER_LEN {
                            let n = (HEADER_LEN - pos).min(chunk - at);
                            claim[at..at + n].copy_from_slice(&t.header[pos..pos + n]);
                            n
                        } else {
                            let p = pos - HEADER_LEN;
                            let n = chunk - at;
                            claim[at..at + n].copy_from_slice(&t.payload[p..p + n]);
                            n
                        };
                        at += n;
                        pos += n;
                    }
                    claim.commit_deferred();
                    *off += chunk;
                    written += chunk as u64;
                    if *off == total {
                        shm.pending = None;
                    }
                }
                Err(ShmError::WouldBlock) => {
                    if shm.tx_armed {
                        break;
                    }
                    match shm.stream.send_wakeup(chunk) {
                        Ok(None) => continue,
                        Ok(Some(word)) => {
                            shm.tx_armed = true;
                            arm = Some(futex_wait(word, ud(Op::ShmTx, slot, generation)));
                            break;
                        }
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(shard = self.id, slot, error = %e, "shm send");
                    failed = true;
                    break;
                }
            }
        }
        shm.stream.flush();
        if failed {
            // The frame cannot go anywhere: drop it with the connection.
            shm.pending = None;
        }
        let blocked = shm.pending.is_some();
        if written > 0 || !blocked {
            shm.blocked_since = None;
        }
        if blocked && shm.blocked_since.is_none() {
            shm.blocked_since = Some(now);
        }
        if failed && !upgraded {
            proto.handle_eof(self.now);
        }
        if written > 0 {
            ShardMetrics::add(&self.metrics.bytes_out, written);
        }
        if let Some(e) = arm {
            self.ring.push(e);
        }
        if failed && upgraded {
            self.upgrade_broke(slot);
        } else if failed {
            self.mark(slot);
        }
    }
}
