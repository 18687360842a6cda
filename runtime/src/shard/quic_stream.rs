//! A Valkyrie connection on a QUIC stream: the stream's bytes into the protocol (up to a
//! budget a turn, and not at all while the connection wants no input: QUIC's flow control
//! then slows the peer), the protocol's frames into the stream (a frame the stream's flow
//! control holds back waits, and the slow-consumer timer runs).

use valkyrie_protocol::HEADER_LEN;

use super::Shard;
use crate::conn::Io;

/// Bytes of input a QUIC connection hands to the protocol per turn.
const QUIC_INPUT_BUDGET: usize = 256 * 1024;

impl Shard {
    /// Feed what the stream holds to the protocol.
    pub(super) fn quic_recv(&mut self, slot: u32) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let generation = c.generation;
        let Io::Quic(qi) = &mut c.io else {
            return;
        };
        if qi.early && qi.hold_early {
            return;
        }
        let (li, h) = (qi.listener, qi.handle);
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        let Some(id) = q.stream else {
            return;
        };
        let mut taken = 0usize;
        let mut eof = false;
        let mut more = false;
        if let Ok(mut chunks) = q.conn.recv_stream(id).read(true) {
            loop {
                if !c.proto.wants_input() {
                    qi.rx_held = true;
                    break;
                }
                if taken >= QUIC_INPUT_BUDGET {
                    more = true;
                    break;
                }
                match chunks.next(QUIC_INPUT_BUDGET - taken) {
                    Ok(Some(chunk)) => {
                        taken += chunk.bytes.len();
                        c.proto.handle_input(&chunk.bytes, now);
                    }
                    Ok(None) => {
                        eof = true;
                        break;
                    }
                    Err(quinn_proto::ReadError::Blocked) => break,
                    Err(quinn_proto::ReadError::Reset(_)) => {
                        eof = true;
                        break;
                    }
                }
            }
            // Flow-control credit for what was read goes out with the next transmit.
            let _ = chunks.finalize();
        }
        if eof {
            c.proto.handle_eof(now);
        }
        if more {
            self.shm_more.push((slot, generation));
        }
        if taken > 0 {
            self.quic.mark(li, h);
        }
        if taken > 0 || eof {
            self.mark(slot);
        }
    }

    /// Write the protocol's queued frames into the stream; a frame the stream does not take
    /// whole waits for its `Writable` event.
    pub(super) fn quic_flush(&mut self, slot: u32) {
        let now = self.timers.tick(self.now);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let generation = c.generation;
        let Io::Quic(qi) = &mut c.io else {
            return;
        };
        let (li, h) = (qi.listener, qi.handle);
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        let Some(id) = q.stream else {
            return;
        };
        let mut written = 0u64;
        let mut failed = false;
        let mut answers = crate::metrics::Answers {
            table: &mut self.latency,
            spans: &mut self.spans,
            slot,
            generation,
            epoch: self.timers.epoch(),
            now_us: None,
        };
        let mut stream = q.conn.send_stream(id);
        // Each turn writes (part of) a frame or ends: bounded by what the protocol queued.
        loop {
            if qi.pending.is_none() {
                match c.proto.poll_transmit() {
                    Some(t) => {
                        self.metrics.transmitted(&t, &mut answers);
                        qi.pending = Some((t, 0));
                    }
                    None => break,
                }
            }
            let Some((t, off)) = qi.pending.as_mut() else {
                break;
            };
            let part = if *off < HEADER_LEN {
                &t.header[*off..]
            } else {
                &t.payload[*off - HEADER_LEN..]
            };
            match stream.write(part) {
                Ok(n) => {
                    *off += n;
                    written += n as u64;
                    if *off == t.len() {
                        qi.pending = None;
                    } else if n < part.len() {
                        break;
                    }
                }
                Err(quinn_proto::WriteError::Blocked) => break,
                Err(_) => {
                    failed = true;
                    qi.pending = None;
                    break;
                }
            }
        }
        let blocked = qi.pending.is_some();
        if written > 0 || !blocked {
            qi.blocked_since = None;
        }
        if blocked && qi.blocked_since.is_none() {
            qi.blocked_since = Some(now);
        }
        if failed {
            c.proto.handle_eof(self.now);
        }
        if written > 0 {
            self.quic.mark(li, h);
        }
        if failed {
            self.mark(slot);
        }
    }
}
