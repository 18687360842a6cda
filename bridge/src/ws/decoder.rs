//! Reading frames: received bytes (split anywhere) in, message payload bytes and the
//! replies control frames call for out. Only a frame header (at most 14 bytes) and a control
//! frame's payload (at most 125) are ever held; data payloads pass straight through,
//! unmasked on the way.

use bytes::BytesMut;

use super::close;
use super::frame::{Opcode, apply_mask, write_close, write_frame};

/// Why a peer's bytes are refused; [`close_code`](WsError::close_code) is the code to close
/// with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A frame the protocol forbids (unmasked from a client, masked from a server, a
    /// reserved bit or opcode, a fragmented or oversized control frame, a continuation
    /// without a message, a message inside a message, a bad close payload).
    #[error("websocket protocol error: {0}")]
    Protocol(&'static str),
    /// A text message: the node's WebSocket carries binary messages only.
    #[error("text messages are not accepted: send binary messages")]
    Text,
    /// A message longer than the limit, by its frame headers' claim.
    #[error("message of {claimed} bytes or more exceeds the limit of {limit}")]
    TooBig {
        /// The length the headers claim so far.
        claimed: u64,
        /// The limit.
        limit: usize,
    },
    /// A close reason that is not UTF-8.
    #[error("close reason is not UTF-8")]
    InvalidUtf8,
}

impl WsError {
    /// The close code to answer with.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => close::PROTOCOL,
            WsError::Text => close::UNSUPPORTED,
            WsError::TooBig { .. } => close::TOO_BIG,
            WsError::InvalidUtf8 => close::INVALID_DATA,
        }
    }
}

/// Where the connection is after [`Decoder::feed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Open: more may come.
    Open,
    /// The peer closed (with this code, if it gave one); the echo of its close frame is in
    /// the replies. Nothing more is read.
    Closed(Option<u16>),
}

/// Where the decoder is within a frame.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading a header: `have` bytes of it so far.
    Header { have: u8 },
    /// Inside a frame's payload.
    Payload {
        opcode: Opcode,
        mask: Option<[u8; 4]>,
        /// Payload bytes read so far, and left.
        done: u64,
        left: u64,
    },
    /// Closed (by the peer, or by an error): nothing more is read.
    Closed,
}

/// Decodes one direction of a WebSocket connection.
#[derive(Debug)]
pub struct Decoder {
    /// A server's decoder (client frames must be masked); else a client's.
    server: bool,
    max_message: usize,
    state: State,
    header: [u8; 14],
    /// A control frame's payload, gathered (at most 125 bytes).
    control: Vec<u8>,
    /// Inside a fragmented message, and its length so far.
    in_message: bool,
    message_len: u64,
    /// A client's masking keys come from this (xorshift).
    mask_state: u64,
}

impl Decoder {
    /// The decoder of a server: client frames must be masked; messages of more than
    /// `max_message` bytes are refused.
    pub fn server(max_message: usize) -> Decoder {
        Decoder::new(true, max_message, 0)
    }

    /// The decoder of a client: server frames must not be masked; the replies it writes
    /// (pongs, the close echo) are masked with keys drawn from `seed`.
    pub fn client(max_message: usize, seed: u64) -> Decoder {
        Decoder::new(false, max_message, seed | 1)
    }

    fn new(server: bool, max_message: usize, mask_state: u64) -> Decoder {
        Decoder {
            server,
            max_message,
            state: State::Header { have: 0 },
            header: [0; 14],
            control: Vec::new(),
            in_message: false,
            message_len: 0,
            mask_state,
        }
    }

    /// Whether the connection has closed (the peer's close, or an error).
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Take received bytes: message payloads are appended to `payload`, the replies control
    /// frames call for (pong, the close echo) to `reply`. After an error nothing more is
    /// read: write a close frame with its [`close_code`](WsError::close_code) and end the
    /// connection.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        payload: &mut Vec<u8>,
        reply: &mut BytesMut,
    ) -> Result<Progress, WsError> {
        while !data.is_empty() {
            match self.state {
                State::Closed => return Ok(Progress::Closed(None)),
                State::Header { have } => {
                    let have = have as usize;
                    let need = header_len(&self.header[..have]);
                    let take = (need - have).min(data.len());
                    self.header[have..have + take].copy_from_slice(&data[..take]);
                    data = &data[take..];
                    let have = have + take;
                    // The first two bytes tell the header's full length.
                    if have < header_len(&self.header[..have]) {
                        self.state = State::Header { have: have as u8 };
                        continue;
                    }
                    if let Err(e) = self.start_frame(have) {
                        self.state = State::Closed;
                        return Err(e);
                    }
                    if let Some(done) = self.end_if_empty(reply)? {
                        return Ok(done);
                    }
                }
                State::Payload {
                    opcode,
                    mask,
                    done,
                    left,
                } => {
                    let take = (left.min(data.len() as u64)) as usize;
                    let (piece, rest) = data.split_at(take);
                    data = rest;
                    let sink = if opcode.is_control() {
                        &mut self.control
                    } else {
                        &mut *payload
                    };
                    let start = sink.len();
                    sink.extend_from_slice(piece);
                    if let Some(key) = mask {
                        apply_mask(&mut sink[start..], key, (done % 4) as usize);
                    }
                    self.state = State::Payload {
                        opcode,
                        mask,
                        done: done + take as u64,
                        left: left - take as u64,
                    };
                    if let Some(done) = self.end_if_empty(reply)? {
                        return Ok(done);
                    }
                }
            }
        }
        Ok(if self.is_closed() {
            Progress::Closed(None)
        } else {
            Progress::Open
        })
    }

    /// A whole header of `have` bytes is in `self.header`: check it and start its payload.
    fn start_frame(&mut self, have: usize) -> Result<(), WsError> {
        let h = &self.header[..have];
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Err(WsError::Protocol("reserved bits set"));
        }
        let opcode = Opcode::from_bits(h[0] & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
        let masked = h[1] & 0x80 != 0;
        if masked != self.server {
            return Err(WsError::Protocol(if self.server {
                "unmasked frame from a client"
            } else {
                "masked frame from a server"
            }));
        }
        let (len, at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), 4),
            127 => {
                let len = u64::from_be_bytes(h[2..10].try_into().unwrap_or_default());
                if len >> 63 != 0 {
                    return Err(WsError::Protocol("payload length with its top bit set"));
                }
                (len, 10)
            }
            n => (u64::from(n), 2),
        };
        let mask = masked.then(|| [h[at], h[at + 1], h[at + 2], h[at + 3]]);
        if opcode.is_control() {
            if !fin {
                return Err(WsError::Protocol("fragmented control frame"));
            }
            if len > 125 {
                return Err(WsError::Protocol("control frame longer than 125 bytes"));
            }
            self.control.clear();
        } else {
            match (opcode, self.in_message) {
                (Opcode::Continuation, false) => {
                    return Err(WsError::Protocol("continuation without a message"));
                }
                (Opcode::Text | Opcode::Binary, true) => {
                    return Err(WsError::Protocol("a new message inside a fragmented one"));
                }
                (Opcode::Text, false) => return Err(WsError::Text),
                (Opcode::Continuation, true) => {}
                _ => self.message_len = 0,
            }
            self.message_len = self.message_len.saturating_add(len);
            if self.message_len > self.max_message as u64 {
                return Err(WsError::TooBig {
                    claimed: self.message_len,
                    limit: self.max_message,
                });
            }
            self.in_message = !fin;
        }
        self.state = State::Payload {
            opcode,
            mask,
            done: 0,
            left: len,
        };
        Ok(())
    }

    /// A frame whose payload is all read ends here: a control frame is acted on.
    fn end_if_empty(&mut self, reply: &mut BytesMut) -> Result<Option<Progress>, WsError> {
        let State::Payload {
            opcode, left: 0, ..
        } = self.state
        else {
            return Ok(None);
        };
        self.state = State::Header { have: 0 };
        let mask = (!self.server).then(|| self.next_mask());
        match opcode {
            Opcode::Ping => write_frame(Opcode::Pong, true, &self.control, mask, reply),
            Opcode::Close => {
                self.state = State::Closed;
                let code = self.close_code()?;
                match code {
                    Some(code) => write_close(code, "", mask, reply),
                    None => write_frame(Opcode::Close, true, &[], mask, reply),
                }
                return Ok(Some(Progress::Closed(code)));
            }
            _ => {}
        }
        Ok(None)
    }

    /// The code of the close frame in `self.control`, checked.
    fn close_code(&self) -> Result<Option<u16>, WsError> {
        match self.control.len() {
            0 => Ok(None),
            1 => Err(WsError::Protocol("close payload of one byte")),
            _ => {
                let code = u16::from_be_bytes([self.control[0], self.control[1]]);
                let valid = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
                if !valid {
                    return Err(WsError::Protocol("close code not allowed on the wire"));
                }
                std::str::from_utf8(&self.control[2..]).map_err(|_| WsError::InvalidUtf8)?;
                Ok(Some(code))
            }
        }
    }

    fn next_mask(&mut self) -> [u8; 4] {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.mask_state = x;
        (x as u32).to_ne_bytes()
    }
}

/// A header's full length from its first bytes (2 until the second byte is known).
fn header_len(h: &[u8]) -> usize {
    let Some(&b1) = h.get(1) else {
        return 2;
    };
    let len = match b1 & 0x7F {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    len + if b1 & 0x80 != 0 { 4 } else { 0 }
}
