//! A connection that became a WebSocket (`GET /ws` with `Upgrade: websocket`): a Valkyrie
//! connection like any other whose bytes travel in binary messages. Its decoder turns what
//! arrives into the byte stream the protocol reads; what the protocol sends goes out framed
//! as binary messages of at most `max_message` bytes; control frames' replies (pongs, the
//! close echo) wait in `out` and go first.

use bytes::{Buf, BytesMut};
use valkyrie_bridge::ws::{Decoder, Progress, WsError, close, write_binary, write_close};

/// Reply bytes a connection may hold before it stops reading (a peer that pings faster
/// than it reads the pongs is slowed like any other).
pub(crate) const OUT_HIGH: usize = 64 * 1024;

/// A WebSocket connection's framing state.
#[derive(Debug)]
pub(crate) struct WsConn {
    pub(crate) decoder: Decoder,
    /// Bytes that go before the protocol's next frames: the `101` answer at first, then the
    /// replies control frames call for, and our close.
    pub(crate) out: BytesMut,
    /// The longest message either side sends (the protocol's largest frame with its header).
    pub(crate) max_message: usize,
    /// A close frame is in `out` or sent: nothing follows it.
    pub(crate) close_sent: bool,
}

impl WsConn {
    /// A connection just upgraded: `answer` (the `101`) goes first.
    pub(crate) fn new(answer: BytesMut, max_message: usize) -> WsConn {
        WsConn {
            decoder: Decoder::server(max_message),
            out: answer,
            max_message,
            close_sent: false,
        }
    }

    /// Whether it reads more now.
    pub(crate) fn wants_input(&self) -> bool {
        !self.decoder.is_closed() && self.out.len() < OUT_HIGH
    }

    /// Decode `data` into `plain` (the bytes the protocol reads). `Ok(true)`: the peer
    /// closed (its close is echoed); an error has written our close with its code: the
    /// connection ends either way.
    pub(crate) fn receive(&mut self, data: &[u8], plain: &mut Vec<u8>) -> Result<bool, WsError> {
        match self.decoder.feed(data, plain, &mut self.out) {
            Ok(Progress::Open) => Ok(false),
            Ok(Progress::Closed(_)) => {
                self.close_sent = true;
                Ok(true)
            }
            Err(e) => {
                self.close(e.close_code(), &e.to_string());
                Err(e)
            }
        }
    }

    /// Write our close (once).
    pub(crate) fn close(&mut self, code: u16, reason: &str) {
        if !self.close_sent {
            self.close_sent = true;
            write_close(code, reason, None, &mut self.out);
        }
    }

    /// Move up to `batch` bytes of `out` into `buf` (the send's buffer).
    pub(crate) fn take_output(&mut self, buf: &mut BytesMut, batch: usize) {
        let n = self.out.len().min(batch);
        buf.extend_from_slice(&self.out[..n]);
        self.out.advance(n);
    }

    /// Frame `frames` (the protocol's bytes) as binary messages into `buf`. Nothing goes
    /// after our close.
    pub(crate) fn frame(&self, frames: &[u8], buf: &mut BytesMut) {
        if !self.close_sent {
            write_binary(frames, self.max_message, buf);
        }
    }

    /// The protocol has ended: close normally (once the replies before it have gone), or
    /// as "going away" (1001) when the node drains.
    pub(crate) fn protocol_ended(&mut self, going_away: bool) {
        if going_away {
            self.close(close::GOING_AWAY, "the node is draining");
        } else {
            self.close(close::NORMAL, "");
        }
    }
}
