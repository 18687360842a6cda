//! Writing frames: the header (minimal length encoding, the mask when the writer is a
//! client), the payload masked on the way.

use bytes::{BufMut, BytesMut};

/// A frame's opcode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// The continuation of a fragmented message.
    Continuation,
    /// A text message (refused by the node: close 1003).
    Text,
    /// A binary message.
    Binary,
    /// Close.
    Close,
    /// Ping.
    Ping,
    /// Pong.
    Pong,
}

impl Opcode {
    /// The opcode's four bits.
    pub fn bits(self) -> u8 {
        match self {
            Opcode::Continuation => 0x0,
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
            Opcode::Close => 0x8,
            Opcode::Ping => 0x9,
            Opcode::Pong => 0xA,
        }
    }

    /// The opcode of four bits, `None` for a reserved one.
    pub fn from_bits(bits: u8) -> Option<Opcode> {
        Some(match bits {
            0x0 => Opcode::Continuation,
            0x1 => Opcode::Text,
            0x2 => Opcode::Binary,
            0x8 => Opcode::Close,
            0x9 => Opcode::Ping,
            0xA => Opcode::Pong,
            _ => return None,
        })
    }

    /// Whether this is a control frame's opcode (close, ping, pong).
    pub fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }
}

/// Write one frame: `fin` ends its message; `mask` is the client's masking key (a server
/// writes unmasked frames, `None`).
pub fn write_frame(
    opcode: Opcode,
    fin: bool,
    payload: &[u8],
    mask: Option<[u8; 4]>,
    out: &mut BytesMut,
) {
    out.reserve(payload.len() + 14);
    out.put_u8(if fin { 0x80 } else { 0 } | opcode.bits());
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match payload.len() {
        n @ 0..=125 => out.put_u8(masked | n as u8),
        n @ 126..=0xFFFF => {
            out.put_u8(masked | 126);
            out.put_u16(n as u16);
        }
        n => {
            out.put_u8(masked | 127);
            out.put_u64(n as u64);
        }
    }
    match mask {
        None => out.put_slice(payload),
        Some(key) => {
            out.put_slice(&key);
            let start = out.len();
            out.put_slice(payload);
            apply_mask(&mut out[start..], key, 0);
        }
    }
}

/// Write `payload` as binary messages of at most `max_message` bytes each (one frame per
/// message; the receiver reads the payloads as one byte stream, so any split will do).
pub fn write_binary(payload: &[u8], max_message: usize, out: &mut BytesMut) {
    for piece in payload.chunks(max_message.max(1)) {
        write_frame(Opcode::Binary, true, piece, None, out);
    }
}

/// Write a close frame with `code` and `reason` (cut to fit a control frame's 125 bytes at a
/// character boundary).
pub fn write_close(code: u16, reason: &str, mask: Option<[u8; 4]>, out: &mut BytesMut) {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut body = [0u8; 125];
    body[..2].copy_from_slice(&code.to_be_bytes());
    body[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
    write_frame(Opcode::Close, true, &body[..2 + end], mask, out);
}

/// XOR `data` with `key`, `offset` bytes into the masked payload.
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4], offset: usize) {
    let mut rotated = [0u8; 4];
    for (i, r) in rotated.iter_mut().enumerate() {
        *r = key[(offset + i) % 4];
    }
    let word = u32::from_ne_bytes(rotated);
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        let v = u32::from_ne_bytes([c[0], c[1], c[2], c[3]]) ^ word;
        c.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= rotated[i];
    }
}
