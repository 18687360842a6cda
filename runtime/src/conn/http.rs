//! A connection that turned out to speak HTTP/1.1 (sniffed from its first byte): its
//! request reader, the answers waiting for the socket, and where its current answer is.
//! Requests are answered one at a time in order (a pipelined request waits in the reader
//! until the one before it is answered), so answers never need reordering.

use bytes::Bytes;
use bytes::{Buf, BytesMut};
use valkyrie_bridge::http::{Limits, RequestReader, Response, write_chunk, write_last_chunk};
use valkyrie_bridge::rest;
use valkyrie_protocol::{ErrorCode, Flags, MessageType, SendOptions, Tick};

/// Answer bytes a connection may hold before it stops taking requests (and, with its reader
/// full, input): the answers' back-pressure.
pub(crate) const OUT_HIGH: usize = 256 * 1024;

/// Where the current request's answer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answering {
    /// No request is being answered: the next one may be read.
    Idle,
    /// The service will answer later ([`Ctx::http_respond`](crate::Ctx::http_respond)).
    Later {
        /// Keep the connection open after the answer.
        keep_alive: bool,
        /// The request was HEAD: the answer goes without its body.
        head: bool,
    },
    /// A chunked body is being written ([`Ctx::http_chunk`](crate::Ctx::http_chunk), then
    /// [`Ctx::http_finish`](crate::Ctx::http_finish)).
    Streaming {
        /// Keep the connection open after the last chunk.
        keep_alive: bool,
        /// The request was HEAD: chunks are dropped.
        head: bool,
    },
}

/// An HTTP connection's state.
#[derive(Debug)]
pub(crate) struct HttpConn {
    pub(crate) reader: RequestReader,
    /// Answer bytes waiting for the socket.
    pub(crate) out: BytesMut,
    pub(crate) answering: Answering,
    /// Close once `out` has gone (an answer without keep-alive, a refused request, the
    /// client's end of stream).
    pub(crate) close_after: bool,
    /// The client ended its side: answer what was received, then close.
    pub(crate) eof: bool,
    /// When the request being received began (its time limit runs from here: 408).
    pub(crate) since: Option<Tick>,
    /// When the connection last became idle between requests (keep-alive limit).
    pub(crate) idle_since: Tick,
    /// A chunk was refused for back-pressure: tell the service when it may go on.
    pub(crate) stalled: bool,
    /// The REST gateway's request waiting for the service's answer.
    pub(crate) gateway: Option<GatewayRequest>,
    /// Who the client is: its certificate's identity when it came through TLS with one.
    pub(crate) identity: Option<String>,
    /// The correlation id of the gateway's last request on this connection.
    pub(crate) last_corr: u32,
}

/// A request the REST gateway handed to the service as a frame, waiting for its answer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GatewayRequest {
    /// The correlation id the gateway gave it.
    pub(crate) corr: u32,
    /// No answer by then: 504.
    pub(crate) deadline: Tick,
}

impl HttpConn {
    pub(crate) fn new(limits: Limits, now: Tick) -> HttpConn {
        HttpConn {
            reader: RequestReader::new(limits),
            out: BytesMut::new(),
            answering: Answering::Idle,
            close_after: false,
            eof: false,
            since: None,
            idle_since: now,
            stalled: false,
            gateway: None,
            identity: None,
            last_corr: 0,
        }
    }

    /// Whether the connection takes more input now.
    pub(crate) fn wants_input(&self) -> bool {
        !self.close_after && !self.eof && self.reader.wants_input() && self.out.len() < OUT_HIGH
    }

    /// Write `resp` as the answer to the current request. A chunked head starts a streamed
    /// answer; anything else ends the request (and, without keep-alive, the connection).
    pub(crate) fn answer(&mut self, resp: &Response, keep_alive: bool, head: bool, now: Tick) {
        resp.write(keep_alive, head, &mut self.out);
        if resp.chunked {
            self.answering = Answering::Streaming { keep_alive, head };
        } else {
            self.ended(keep_alive, now);
        }
    }

    /// One chunk of the streamed answer (dropped for HEAD). False when no streamed answer
    /// is due.
    pub(crate) fn chunk(&mut self, data: &[u8]) -> bool {
        match self.answering {
            Answering::Streaming { head, .. } => {
                if !head {
                    write_chunk(data, &mut self.out);
                }
                true
            }
            _ => false,
        }
    }

    /// End the streamed answer. False when no streamed answer is due.
    pub(crate) fn finish(&mut self, now: Tick) -> bool {
        match self.answering {
            Answering::Streaming { keep_alive, head } => {
                if !head {
                    write_last_chunk(&mut self.out);
                }
                self.ended(keep_alive, now);
                true
            }
            _ => false,
        }
    }

    fn ended(&mut self, keep_alive: bool, now: Tick) {
        self.answering = Answering::Idle;
        self.idle_since = now;
        if !keep_alive {
            self.close_after = true;
        }
    }

    /// Move up to `batch` bytes of the answers into `buf` (the send's buffer).
    pub(crate) fn take_output(&mut self, buf: &mut BytesMut, batch: usize) {
        let n = self.out.len().min(batch);
        buf.extend_from_slice(&self.out[..n]);
        self.out.advance(n);
    }

    /// A frame the service sends on this connection: the answer to the gateway's request
    /// (RESPONSE set, its correlation id) becomes the HTTP answer, and its status is
    /// returned; anything else has nowhere to go on an HTTP connection.
    pub(crate) fn gateway_answer(
        &mut self,
        msg_type: MessageType,
        payload: &Bytes,
        opts: &SendOptions,
        now: Tick,
    ) -> Option<u16> {
        let pending = self.gateway?;
        if !opts.flags.contains(Flags::RESPONSE) || opts.correlation_id != pending.corr {
            return None;
        }
        let traced = opts.flags.contains(Flags::TRACE);
        let resp = rest::traced_answer(msg_type, pending.corr, payload, traced);
        self.settle(&resp, now);
        Some(resp.status)
    }

    /// An ERROR the service sends on this connection: the gateway's request it answers gets
    /// the status of its class.
    pub(crate) fn gateway_error(
        &mut self,
        code: ErrorCode,
        message: &str,
        correlation_id: u32,
        now: Tick,
    ) -> Option<u16> {
        let pending = self.gateway?;
        if correlation_id != pending.corr {
            return None;
        }
        let resp = rest::error_answer(code, message);
        self.settle(&resp, now);
        Some(resp.status)
    }

    /// The gateway's request has had no answer by its deadline: 504.
    pub(crate) fn gateway_expired(&mut self, now: Tick) -> Option<u16> {
        if self.gateway?.deadline > now {
            return None;
        }
        let resp = rest::timeout_answer();
        self.settle(&resp, now);
        Some(resp.status)
    }

    fn settle(&mut self, resp: &Response, now: Tick) {
        self.gateway = None;
        if let Answering::Later { keep_alive, head } = self.answering {
            self.answer(resp, keep_alive, head, now);
        }
    }

    /// The node drains: close now if nothing is under way (otherwise the answer under way
    /// carries `connection: close`).
    pub(crate) fn close_when_idle(&mut self) {
        if self.answering == Answering::Idle && !self.reader.in_request() {
            self.close_after = true;
        }
    }

    /// Whether the answers have all gone and the connection should close now.
    pub(crate) fn done(&self) -> bool {
        self.close_after && self.out.is_empty()
    }
}
