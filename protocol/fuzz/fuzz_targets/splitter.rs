//! The frame splitter (a QUIC stream's bytes cut into whole frames): any bytes, cut anywhere,
//! never panic, never make it hold more than one frame in progress (header plus the limit),
//! and every run it hands out is whole frames, in the order they came.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::splitter::FrameSplitter;

const MAX: u32 = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let cut = usize::from(cut).max(1);
    let mut split = FrameSplitter::default();
    let mut out = Vec::new();
    for piece in rest.chunks(cut) {
        let fed = split.feed(piece, MAX, |run| {
            let mut off = 0;
            while off < run.len() {
                assert!(run.len() - off >= 24, "a run ends mid-header");
                let len = u32::from_be_bytes(run[off + 12..off + 16].try_into().unwrap());
                assert!(len <= MAX, "a frame over the limit handed out");
                off += 24 + len as usize;
            }
            assert_eq!(off, run.len(), "a run ends mid-frame");
            out.extend_from_slice(run);
        });
        assert!(split.held() <= 24 + MAX as usize, "held {}", split.held());
        if fed.is_err() {
            return;
        }
    }
    assert!(rest.starts_with(&out), "frames out of order or altered");
});
