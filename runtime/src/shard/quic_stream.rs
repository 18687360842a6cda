//! A Valkyrie connection on QUIC streams: its first bidirectional stream, and — once both
//! sides agreed to `quic_streams` — a unidirectional QUIC stream per Valkyrie stream each way
//! (docs/PROTOCOL.md §6.7). Input goes to the protocol in whole frames (each QUIC stream cut
//! by its own splitter), up to a budget a turn and not at all while the connection wants none
//! (QUIC's flow control then slows the peer). Output is routed by the frame's stream: stream 0
//! and everything before the agreement on the first stream, the rest on its own; a frame a
//! stream's flow control holds back waits there, in order, without holding back the others.

use std::sync::Arc;

use valkyrie_protocol::{Config, ErrorCode, HEADER_LEN, Transmit};

use super::Shard;
use super::quic::UniStreams;
use crate::conn::Io;
use valkyrie_protocol::splitter::{FrameSplitter, ends_stream, stream_of};

/// Bytes of input a QUIC connection hands to the protocol per turn.
const QUIC_INPUT_BUDGET: usize = 256 * 1024;
/// Frames that may wait on blocked QUIC streams of one connection before nothing more is
/// taken from its protocol (which then holds its own queues: back-pressure).
const MAX_PENDING_FRAMES: usize = 1024;

/// Read one QUIC receive stream into `split`, handing whole frames to `sink`, up to `budget`
/// bytes. Returns (bytes taken, whether it ended, a frame too large).
fn read_stream(
    stream: &mut quinn_proto::RecvStream<'_>,
    split: &mut FrameSplitter,
    budget: usize,
    max: u32,
    sink: &mut dyn FnMut(&[u8]),
) -> (usize, bool, bool) {
    let mut taken = 0;
    let mut eof = false;
    let mut bad = false;
    if let Ok(mut chunks) = stream.read(true) {
        while taken < budget {
            match chunks.next(budget - taken) {
                Ok(Some(chunk)) => {
                    taken += chunk.bytes.len();
                    if split.feed(&chunk.bytes, max, &mut *sink).is_err() {
                        bad = true;
                        break;
                    }
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
    (taken, eof, bad)
}

impl Shard {
    /// The protocol configuration of QUIC connections: the node's, offering `quic_streams`
    /// (made once per configuration, not per connection).
    pub(super) fn quic_protocol(&mut self) -> Arc<Config> {
        match &self.quic.protocol {
            Some((base, quic)) if Arc::ptr_eq(base, &self.cfg.protocol) => quic.clone(),
            _ => {
                let mut c = (*self.cfg.protocol).clone();
                c.quic_streams = true;
                let quic = Arc::new(c);
                self.quic.protocol = Some((self.cfg.protocol.clone(), quic.clone()));
                quic
            }
        }
    }

    /// Feed what the connection's QUIC streams hold to the protocol.
    pub(super) fn quic_recv(&mut self, slot: u32) {
        let now = self.now;
        let max = self.cfg.protocol.max_frame;
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
        let Some(main) = q.stream else {
            return;
        };
        if q.uni.is_none() && c.proto.peer().is_some_and(|p| p.quic_streams) {
            q.uni = Some(Box::default());
        }
        let mut taken = 0usize;
        let mut eof = false;
        let mut bad = false;
        let mut more = false;
        let proto = &mut c.proto;
        if !proto.wants_input() {
            qi.rx_held = true;
        } else {
            let (n, end, too_large) = read_stream(
                &mut q.conn.recv_stream(main),
                &mut qi.main,
                QUIC_INPUT_BUDGET,
                max,
                &mut |f| proto.handle_input(f, now),
            );
            taken += n;
            eof = end;
            bad = too_large;
            more = n >= QUIC_INPUT_BUDGET;
        }
        // The Valkyrie streams on QUIC streams of their own.
        if let Some(u) = q.uni.as_mut() {
            let mut i = 0;
            while i < u.readable.len() && !bad {
                if !proto.wants_input() {
                    qi.rx_held = true;
                    break;
                }
                if taken >= QUIC_INPUT_BUDGET {
                    more = true;
                    break;
                }
                let id = u.readable[i];
                let Some(split) = u.inbound.get_mut(&id) else {
                    u.readable.swap_remove(i);
                    continue;
                };
                let (n, end, too_large) = read_stream(
                    &mut q.conn.recv_stream(id),
                    split,
                    QUIC_INPUT_BUDGET - taken,
                    max,
                    &mut |f| proto.handle_input(f, now),
                );
                taken += n;
                bad |= too_large;
                if end {
                    // A stream that ends mid-frame cut that frame: a protocol error.
                    bad |= split.held() > 0;
                    u.inbound.remove(&id);
                }
                if end || taken < QUIC_INPUT_BUDGET {
                    // Read to the end of what is there.
                    u.readable.swap_remove(i);
                } else {
                    i += 1;
                }
            }
        }
        if bad {
            let _ = proto.send_error(
                ErrorCode::FRAME_TOO_LARGE,
                "a frame over the limit, or cut by the end of its QUIC stream",
                0,
                0,
            );
        }
        if eof {
            proto.handle_eof(now);
        }
        if more {
            self.shm_more.push((slot, generation));
        }
        if taken > 0 {
            self.quic.mark(li, h);
        }
        if taken > 0 || eof || bad {
            self.mark(slot);
        }
    }

    /// Write the protocol's queued frames into their QUIC streams.
    pub(super) fn quic_flush(&mut self, slot: u32) {
        let now = self.timers.tick(self.now);
        let Some(c) = self.conns.get_mut(slot) else {
            return;
        };
        if c.is_closing() {
            return;
        }
        let generation = c.generation;
        let agreed = c.proto.peer().is_some_and(|p| p.quic_streams);
        let Io::Quic(qi) = &mut c.io else {
            return;
        };
        let (li, h) = (qi.listener, qi.handle);
        let Some(q) = self.quic.conn(li, h) else {
            return;
        };
        let Some(main) = q.stream else {
            return;
        };
        if agreed && q.uni.is_none() {
            q.uni = Some(Box::default());
        }
        let mut written = 0u64;
        let mut failed = false;
        // What waits on the Valkyrie streams' own QUIC streams goes first, in order.
        if let Some(u) = q.uni.as_mut() {
            written += retry_pending(&mut q.conn, u);
        }
        let mut answers = crate::metrics::Answers {
            table: &mut self.latency,
            spans: &mut self.spans,
            slot,
            generation,
            epoch: self.timers.epoch(),
            now_us: None,
        };
        // Each turn writes (part of) a frame or ends: bounded by what the protocol queued.
        loop {
            if qi.pending.is_none() {
                if q.uni
                    .as_ref()
                    .is_some_and(|u| u.pending_frames >= MAX_PENDING_FRAMES)
                {
                    break;
                }
                match c.proto.poll_transmit() {
                    Some(t) => {
                        self.metrics.transmitted(&t, &mut answers);
                        let sid = stream_of(&t.header);
                        match q.uni.as_mut() {
                            Some(u) if sid != 0 => match route(&mut q.conn, u, sid, t) {
                                Ok(n) => {
                                    written += n;
                                    continue;
                                }
                                Err(t) => qi.pending = Some((t, 0)),
                            },
                            _ => qi.pending = Some((t, 0)),
                        }
                    }
                    None => break,
                }
            }
            let Some((t, off)) = qi.pending.as_mut() else {
                break;
            };
            match write_frame(&mut q.conn.send_stream(main), t, off) {
                Ok(n) => {
                    written += n as u64;
                    if *off == t.len() {
                        qi.pending = None;
                    } else {
                        break;
                    }
                }
                Err(()) => {
                    failed = true;
                    qi.pending = None;
                    break;
                }
            }
        }
        let blocked = qi.pending.is_some() || q.uni.as_ref().is_some_and(|u| u.pending_frames > 0);
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

/// Write what the stream takes of `t` from `off` (header, then payload); `Err` when the
/// stream is gone.
fn write_frame(
    stream: &mut quinn_proto::SendStream<'_>,
    t: &Transmit,
    off: &mut usize,
) -> Result<usize, ()> {
    let mut n = 0;
    while *off < t.len() {
        let part = if *off < HEADER_LEN {
            &t.header[*off..]
        } else {
            &t.payload[*off - HEADER_LEN..]
        };
        match stream.write(part) {
            Ok(0) => break,
            Ok(k) => {
                *off += k;
                n += k;
                if k < part.len() {
                    break;
                }
            }
            Err(quinn_proto::WriteError::Blocked) => break,
            Err(_) => return Err(()),
        }
    }
    Ok(n)
}

/// Send frame `t` of Valkyrie stream `sid` on its own QUIC stream (opened on its first frame,
/// finished after its last), or queue it behind what already waits there. `Err(t)`: the
/// stream goes on the first QUIC stream (every stream the peer allows was open when it began,
/// so all its frames go there, in order). Returns the bytes written now.
fn route(
    conn: &mut quinn_proto::Connection,
    u: &mut UniStreams,
    sid: u32,
    t: Transmit,
) -> Result<u64, Transmit> {
    let id = match u.out.get(&sid) {
        Some(Some(id)) => *id,
        Some(None) => return Err(t),
        None => match conn.streams().open(quinn_proto::Dir::Uni) {
            Some(id) => {
                u.out.insert(sid, Some(id));
                id
            }
            None => {
                u.out.insert(sid, None);
                return Err(t);
            }
        },
    };
    let queue = u.pending.entry(id).or_default();
    if !queue.is_empty() {
        queue.push_back((t, 0));
        u.pending_frames += 1;
        return Ok(0);
    }
    let mut off = 0;
    let mut stream = conn.send_stream(id);
    match write_frame(&mut stream, &t, &mut off) {
        Ok(n) if off == t.len() => {
            if ends_stream(&t.header) {
                let _ = stream.finish();
                u.out.remove(&sid);
                u.pending.remove(&id);
            }
            Ok(n as u64)
        }
        Ok(n) => {
            queue.push_back((t, off));
            u.pending_frames += 1;
            Ok(n as u64)
        }
        Err(()) => {
            // The peer stopped it: the frame goes with it.
            u.out.remove(&sid);
            u.pending.remove(&id);
            Ok(0)
        }
    }
}

/// Write what waits on the Valkyrie streams' QUIC streams, each in order. Returns the bytes.
fn retry_pending(conn: &mut quinn_proto::Connection, u: &mut UniStreams) -> u64 {
    let mut written = 0u64;
    let ids: Vec<quinn_proto::StreamId> = u.pending.keys().copied().collect();
    for id in ids {
        let Some(mut queue) = u.pending.remove(&id) else {
            continue;
        };
        while let Some((t, mut off)) = queue.pop_front() {
            match write_frame(&mut conn.send_stream(id), &t, &mut off) {
                Ok(n) if off == t.len() => {
                    written += n as u64;
                    u.pending_frames -= 1;
                    if ends_stream(&t.header) {
                        let _ = conn.send_stream(id).finish();
                        let sid = stream_of(&t.header);
                        u.out.remove(&sid);
                    }
                }
                Ok(n) => {
                    written += n as u64;
                    queue.push_front((t, off));
                    break;
                }
                Err(()) => {
                    u.pending_frames -= 1 + queue.len();
                    queue.clear();
                    break;
                }
            }
        }
        if !queue.is_empty() {
            u.pending.insert(id, queue);
        }
    }
    written
}
