//! The WebSocket decoder on arbitrary bytes, as a server and as a client, fed in the pieces
//! the first byte chooses: it never panics, never holds more than a header and a control
//! frame, refuses with a close code it may send, and reads the same stream, replies and
//! outcome whichever way the bytes are split.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use valkyrie_bridge::ws::{Decoder, Progress};

const MAX_MESSAGE: usize = 4096;

/// What a decoder makes of `data` pushed in `piece`-byte pieces.
fn decode(server: bool, data: &[u8], piece: usize) -> (Vec<u8>, Vec<u8>, Option<u16>, bool) {
    let mut d = if server {
        Decoder::server(MAX_MESSAGE)
    } else {
        Decoder::client(MAX_MESSAGE, 5)
    };
    let (mut payload, mut reply) = (Vec::new(), BytesMut::new());
    let mut consumed = 0;
    for chunk in data.chunks(piece.max(1)) {
        consumed += chunk.len();
        match d.feed(chunk, &mut payload, &mut reply) {
            Ok(Progress::Open) => {}
            Ok(Progress::Closed(_)) => return (payload, reply.to_vec(), None, true),
            Err(e) => {
                assert!(matches!(e.close_code(), 1002 | 1003 | 1007 | 1009));
                return (payload, reply.to_vec(), Some(e.close_code()), true);
            }
        }
        // Output is at most three times what came in (a client answers a two-byte ping
        // with a six-byte masked pong).
        assert!(payload.len() + reply.len() <= consumed * 3);
    }
    (payload, reply.to_vec(), None, d.is_closed())
}

fuzz_target!(|input: &[u8]| {
    let Some((&split, data)) = input.split_first() else {
        return;
    };
    for server in [true, false] {
        let whole = decode(server, data, data.len());
        let pieces = decode(server, data, usize::from(split % 32) + 1);
        if server {
            assert_eq!(whole, pieces, "the split changed what was read");
        } else {
            // A client masks its replies with keys drawn in order: the same frames, the
            // same keys — the outcome and the stream must agree too.
            assert_eq!((whole.0, whole.2, whole.3), (pieces.0, pieces.2, pieces.3));
        }
    }
});
