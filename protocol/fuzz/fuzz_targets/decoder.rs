//! The streaming decoder fed arbitrary bytes in arbitrary chunks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::codec::Decoder;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else { return };
    let max = [0u32, 1, 24, 1024, 65_536, 1 << 20][usize::from(ctl & 7) % 6];
    let chunk = usize::from(ctl >> 3).max(1);
    let mut dec = Decoder::new(max);
    for piece in rest.chunks(chunk) {
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
                }
                Ok(None) => break,
                Err(e) => {
                    assert!([100, 101, 102, 105].contains(&e.code().0));
                    assert!(dec.decode().is_err(), "errors are sticky");
                    return;
                }
            }
        }
        assert!(dec.buffered() <= 24 + max as usize + chunk);
    }
});
