//! The streaming decoder fed arbitrary bytes in arbitrary chunks. A second decoder is driven
//! the way a connection answers PINGs in place (feeding only what completes the first frame,
//! taking PINGs with `take_ping`, scanning `unread` with `plain_ping_len` and `consume`): it
//! must see exactly the frames the plain decoder sees, in the same order, and fail the same way.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::codec::{plain_ping_len, Decoder};

/// Everything one decoder hands out: frames as wire bytes, then its error code, if any.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    frames: Vec<Vec<u8>>,
    error: Option<u16>,
}

fn plain(max: u32, chunk: usize, data: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut dec = Decoder::new(max);
    for piece in data.chunks(chunk) {
        dec.feed(piece);
        loop {
            match dec.decode() {
                Ok(Some(f)) => {
                    assert!(f.payload.len() as u32 <= max);
                    assert_eq!(f.header.length as usize, f.payload.len());
                    // Whatever decodes re-encodes to the same bytes.
                    let mut out = Vec::new();
                    f.encode(&mut out);
                    assert_eq!(valkyrie_protocol::Header::decode_prefix(&out, max).unwrap().unwrap(), f.header);
                    seen.frames.push(out);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!([100, 101, 102, 105].contains(&e.code().0));
                    assert!(dec.decode().is_err(), "errors are sticky");
                    seen.error = Some(e.code().0);
                    return seen;
                }
            }
        }
        assert!(dec.buffered() <= 24 + max as usize + chunk);
    }
    seen
}

fn in_place(max: u32, chunk: usize, max_ping: usize, data: &[u8]) -> Seen {
    let mut seen = Seen::default();
    let mut dec = Decoder::new(max);
    for piece in data.chunks(chunk) {
        let mut rest = piece;
        // Complete the frame held, as `Connection::handle_input` does, then the rest.
        let missing = dec.missing();
        if missing > 0 {
            let n = missing.min(rest.len());
            dec.feed(&rest[..n]);
            rest = &rest[n..];
        }
        dec.feed(rest);
        loop {
            if dec.take_ping(max_ping, |ping| seen.frames.push(ping.to_vec())) {
                // Then a run of PINGs straight from the buffered bytes.
                let mut taken = 0;
                while let Some(n) = plain_ping_len(&dec.unread()[taken..], max_ping.min(max as usize)) {
                    seen.frames.push(dec.unread()[taken..taken + n].to_vec());
                    taken += n;
                }
                dec.consume(taken);
                continue;
            }
            match dec.decode() {
                Ok(Some(f)) => {
                    let mut out = Vec::new();
                    f.encode(&mut out);
                    seen.frames.push(out);
                }
                Ok(None) => break,
                Err(e) => {
                    seen.error = Some(e.code().0);
                    return seen;
                }
            }
        }
    }
    seen
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let Some((&ping_ctl, rest)) = rest.split_first() else { return };
    let max = [0u32, 1, 24, 1024, 65_536, 1 << 20][usize::from(ctl & 7) % 6];
    let chunk = usize::from(ctl >> 3).max(1);
    let max_ping = [0usize, 8, 64, 1024][usize::from(ping_ctl & 3)];
    let a = plain(max, chunk, rest);
    let b = in_place(max, chunk, max_ping, rest);
    assert_eq!(a, b, "the in-place path sees other frames than the decoder");
});
