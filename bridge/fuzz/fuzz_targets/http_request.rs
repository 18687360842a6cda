//! The HTTP request reader on arbitrary bytes, fed in the pieces the first bytes choose:
//! it never panics, never holds more than its limits allow, refuses with a status in the
//! set the bridge answers, and gives the same requests whichever way the bytes are split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_bridge::http::{Limits, Request, RequestReader};

const LIMITS: Limits = Limits {
    max_headers: 16,
    max_head_bytes: 1024,
    max_body: 4096,
};

/// Requests (and the refusal's status, if any) from `data` pushed in `piece`-byte pieces.
fn read(data: &[u8], piece: usize) -> (Vec<Request>, Option<u16>) {
    let mut r = RequestReader::new(LIMITS);
    let mut out = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        r.push(chunk);
        assert!(r.buffered() <= LIMITS.max_head_bytes + LIMITS.max_body + 2 + piece);
        loop {
            match r.poll() {
                Ok(Some(req)) => {
                    assert!(req.body.len() <= LIMITS.max_body);
                    assert!(req.headers().count() <= LIMITS.max_headers);
                    out.push(req);
                }
                Ok(None) => break,
                Err(e) => {
                    assert!(matches!(e.status(), 400 | 408 | 413 | 431 | 501 | 505));
                    return (out, Some(e.status()));
                }
            }
        }
    }
    (out, None)
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    let whole = read(data, data.len());
    let pieces = read(data, usize::from(split % 64) + 1);
    assert_eq!(whole, pieces, "the split changed what was read");
});
