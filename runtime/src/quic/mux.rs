//! The client's side of a connection's QUIC streams (docs/PROTOCOL.md §6.7): what arrives on
//! any of them (the first bidirectional stream, and the node's unidirectional ones once
//! `quic_streams` is agreed) is cut into whole frames and handed out as one byte stream;
//! what is written is cut into frames and each goes on its Valkyrie stream's own QUIC stream
//! (stream 0 on the first), a blocked QUIC stream holding back only its own frames.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use quinn_proto::{Connection, Dir, ReadError, StreamId, WriteError};

use valkyrie_protocol::splitter::{FrameSplitter, ends_stream, stream_of};

/// Whole frames read ahead of the caller at most.
const READY_MAX: usize = 256 * 1024;
/// Bytes of frames waiting on blocked QUIC streams before writes report `WouldBlock`.
const PENDING_MAX: usize = 4 << 20;
/// The largest frame taken in either direction (the protocol's own limit is checked on top).
const MAX_FRAME: u32 = valkyrie_protocol::MAX_FRAME_LIMIT;

/// A QUIC connection's streams, from the client's side.
#[derive(Default)]
pub(crate) struct StreamMux {
    inbound: HashMap<StreamId, FrameSplitter>,
    ready: BytesMut,
    /// Valkyrie streams go on QUIC streams of their own.
    on: bool,
    wsplit: FrameSplitter,
    out: HashMap<u32, Option<StreamId>>,
    pending: HashMap<StreamId, VecDeque<Bytes>>,
    finish_after: HashSet<StreamId>,
    pending_bytes: usize,
    /// QUIC streams opened for Valkyrie streams, and taken from the node.
    pub(crate) opened: u64,
    pub(crate) accepted: u64,
}

/// What reading found.
pub(crate) enum Read {
    /// Bytes were handed out.
    Bytes(usize),
    /// Nothing now.
    Nothing,
    /// The first stream ended.
    End,
}

impl StreamMux {
    /// From now on, Valkyrie streams go on QUIC streams of their own.
    pub(crate) fn enable(&mut self) {
        self.on = true;
    }

    /// Read what the streams hold into whole frames, and hand out up to `buf.len()` bytes.
    pub(crate) fn read(
        &mut self,
        conn: &mut Connection,
        main: StreamId,
        buf: &mut [u8],
    ) -> io::Result<Read> {
        while let Some(id) = conn.streams().accept(Dir::Uni) {
            self.inbound.insert(id, FrameSplitter::default());
            self.accepted += 1;
        }
        self.inbound.entry(main).or_default();
        let mut main_ended = false;
        let ids: Vec<StreamId> = self.inbound.keys().copied().collect();
        for id in ids {
            if self.ready.len() >= READY_MAX {
                break;
            }
            let Some(split) = self.inbound.get_mut(&id) else {
                continue;
            };
            let ready = &mut self.ready;
            let mut ended = false;
            let mut bad = false;
            if let Ok(mut chunks) = conn.recv_stream(id).read(true) {
                while ready.len() < READY_MAX {
                    match chunks.next(READY_MAX) {
                        Ok(Some(c)) => {
                            if split
                                .feed(&c.bytes, MAX_FRAME, |f| ready.extend_from_slice(f))
                                .is_err()
                            {
                                bad = true;
                                break;
                            }
                        }
                        Ok(None) => {
                            ended = true;
                            break;
                        }
                        Err(ReadError::Blocked) => break,
                        Err(ReadError::Reset(_)) => {
                            ended = true;
                            break;
                        }
                    }
                }
                let _ = chunks.finalize();
            }
            if bad || (ended && split.held() > 0) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "a frame over the limit, or cut by the end of its QUIC stream",
                ));
            }
            if ended {
                if id == main {
                    main_ended = true;
                } else {
                    self.inbound.remove(&id);
                }
            }
        }
        if !self.ready.is_empty() {
            let n = self.ready.len().min(buf.len());
            buf[..n].copy_from_slice(&self.ready[..n]);
            self.ready.advance(n);
            return Ok(Read::Bytes(n));
        }
        Ok(if main_ended { Read::End } else { Read::Nothing })
    }

    /// Take `buf` to send: all of it is accepted (frames waiting on blocked streams are kept)
    /// unless too much already waits (`WouldBlock`).
    pub(crate) fn write(
        &mut self,
        conn: &mut Connection,
        main: StreamId,
        buf: &[u8],
    ) -> io::Result<usize> {
        if !self.on {
            return match conn.send_stream(main).write(buf) {
                Ok(n) => Ok(n),
                Err(WriteError::Blocked) => Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => Err(io::Error::new(io::ErrorKind::BrokenPipe, e)),
            };
        }
        self.flush(conn)?;
        if self.pending_bytes >= PENDING_MAX {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut frames: Vec<Bytes> = Vec::new();
        let fed = self.wsplit.feed(buf, MAX_FRAME, |run| {
            let mut off = 0;
            while off < run.len() {
                let len = u32::from_be_bytes([
                    run[off + 12],
                    run[off + 13],
                    run[off + 14],
                    run[off + 15],
                ]) as usize;
                let end = off + valkyrie_protocol::HEADER_LEN + len;
                frames.push(Bytes::copy_from_slice(&run[off..end]));
                off = end;
            }
        });
        if fed.is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "frame too large",
            ));
        }
        for f in frames {
            let sid = stream_of(&f);
            let target = if sid == 0 {
                main
            } else {
                match self.out.get(&sid) {
                    Some(Some(id)) => *id,
                    Some(None) => main,
                    None => match conn.streams().open(Dir::Uni) {
                        Some(id) => {
                            self.out.insert(sid, Some(id));
                            self.opened += 1;
                            id
                        }
                        None => {
                            self.out.insert(sid, None);
                            main
                        }
                    },
                }
            };
            if target != main && ends_stream(&f) {
                self.finish_after.insert(target);
                self.out.remove(&sid);
            }
            self.pending_bytes += f.len();
            self.pending.entry(target).or_default().push_back(f);
        }
        self.flush(conn)?;
        Ok(buf.len())
    }

    /// Write what waits, each QUIC stream in order; finish the streams whose last frame is out.
    pub(crate) fn flush(&mut self, conn: &mut Connection) -> io::Result<()> {
        let ids: Vec<StreamId> = self.pending.keys().copied().collect();
        for id in ids {
            let Some(queue) = self.pending.get_mut(&id) else {
                continue;
            };
            while let Some(front) = queue.front_mut() {
                match conn.send_stream(id).write(front) {
                    Ok(n) => {
                        self.pending_bytes -= n;
                        front.advance(n);
                        if front.is_empty() {
                            queue.pop_front();
                        } else {
                            break;
                        }
                    }
                    Err(WriteError::Blocked) => break,
                    Err(_) => {
                        // The node stopped this stream: what waits on it goes with it.
                        self.pending_bytes -= queue.iter().map(Bytes::len).sum::<usize>();
                        queue.clear();
                        break;
                    }
                }
            }
            if queue.is_empty() {
                self.pending.remove(&id);
                if self.finish_after.remove(&id) {
                    let _ = conn.send_stream(id).finish();
                }
            }
        }
        Ok(())
    }
}
