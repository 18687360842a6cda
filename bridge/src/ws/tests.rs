//! The WebSocket codec against the RFC's examples, every refusal, fragmentation, any split,
//! and the opening handshake.

use bytes::BytesMut;
use proptest::prelude::*;

use super::*;
use crate::http::{Limits, Method, Request, RequestReader};

const MASK: Option<[u8; 4]> = Some([0x37, 0xfa, 0x21, 0x3d]);

fn feed_all(d: &mut Decoder, wire: &[u8]) -> (Vec<u8>, BytesMut, Result<Progress, WsError>) {
    let (mut payload, mut reply) = (Vec::new(), BytesMut::new());
    let r = d.feed(wire, &mut payload, &mut reply);
    (payload, reply, r)
}

#[test]
fn rfc_examples_decode() {
    // RFC 6455 section 5.7: a masked "Hello" as a client sends it... in binary here.
    let wire = [
        0x82, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let (payload, reply, r) = feed_all(&mut Decoder::server(1024), &wire);
    assert_eq!(r, Ok(Progress::Open));
    assert_eq!(payload, b"Hello");
    assert!(reply.is_empty());
    // A server's unmasked ping with "Hello" gets a masked pong from a client.
    let ping = [0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
    let mut client = Decoder::client(1024, 7);
    let (payload, reply, r) = feed_all(&mut client, &ping);
    assert_eq!(r, Ok(Progress::Open));
    assert!(payload.is_empty());
    let (pong, _, r) = feed_all(&mut Decoder::server(1024), &reply);
    assert_eq!(r, Ok(Progress::Open));
    assert!(pong.is_empty(), "a pong carries no message payload");
    assert_eq!(reply[0], 0x8A);
    assert_eq!(reply[1], 0x85, "masked, five bytes");
}

#[test]
fn a_ping_inside_a_fragmented_message_is_answered_and_the_message_goes_on() {
    let mut wire = BytesMut::new();
    write_frame(Opcode::Binary, false, b"abc", MASK, &mut wire);
    write_frame(Opcode::Ping, true, b"p", MASK, &mut wire);
    write_frame(Opcode::Continuation, true, b"def", MASK, &mut wire);
    let (payload, reply, r) = feed_all(&mut Decoder::server(1024), &wire);
    assert_eq!(r, Ok(Progress::Open));
    assert_eq!(payload, b"abcdef");
    assert_eq!(&reply[..], &[0x8A, 0x01, b'p']);
}

#[test]
fn the_refusals_carry_their_close_codes() {
    let cases: Vec<(Vec<u8>, u16)> = vec![
        // Unmasked from a client: 1002.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Binary, true, b"x", None, &mut w);
                w.to_vec()
            },
            close::PROTOCOL,
        ),
        // A fragmented ping: 1002.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Ping, false, b"x", MASK, &mut w);
                w.to_vec()
            },
            close::PROTOCOL,
        ),
        // A ping of 126 bytes: 1002.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Ping, true, &[0; 126], MASK, &mut w);
                w.to_vec()
            },
            close::PROTOCOL,
        ),
        // A reserved bit, a reserved opcode, a continuation out of nowhere: 1002.
        (vec![0xC2, 0x80, 0, 0, 0, 0], close::PROTOCOL),
        (vec![0x83, 0x80, 0, 0, 0, 0], close::PROTOCOL),
        (vec![0x80, 0x80, 0, 0, 0, 0], close::PROTOCOL),
        // Text: 1003.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Text, true, b"hi", MASK, &mut w);
                w.to_vec()
            },
            close::UNSUPPORTED,
        ),
        // A 10 GB claim, with nothing after it: 1009 at once.
        (
            vec![0x82, 0xFF, 0, 0, 0, 2, 0x54, 0x0B, 0xE4, 0, 1, 2, 3, 4],
            close::TOO_BIG,
        ),
        // A close reason that is not UTF-8: 1007.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Close, true, &[0x03, 0xE8, 0xff, 0xfe], MASK, &mut w);
                w.to_vec()
            },
            close::INVALID_DATA,
        ),
        // A close code reserved for the API (1005): 1002.
        (
            {
                let mut w = BytesMut::new();
                write_frame(Opcode::Close, true, &[0x03, 0xED], MASK, &mut w);
                w.to_vec()
            },
            close::PROTOCOL,
        ),
    ];
    for (wire, code) in cases {
        let mut d = Decoder::server(1 << 20);
        let (_, _, r) = feed_all(&mut d, &wire);
        assert_eq!(r.map_err(|e| e.close_code()), Err(code), "{wire:02x?}");
        assert!(d.is_closed());
        let (payload, reply, r) = feed_all(&mut d, &wire);
        assert_eq!(
            r,
            Ok(Progress::Closed(None)),
            "nothing read after a refusal"
        );
        assert!(payload.is_empty() && reply.is_empty());
    }
}

#[test]
fn fragments_count_toward_the_limit_together() {
    let mut wire = BytesMut::new();
    write_frame(Opcode::Binary, false, &[1; 600], MASK, &mut wire);
    write_frame(Opcode::Continuation, true, &[2; 600], MASK, &mut wire);
    let (payload, _, r) = feed_all(&mut Decoder::server(1000), &wire);
    assert_eq!(r.map_err(|e| e.close_code()), Err(close::TOO_BIG));
    assert_eq!(
        payload.len(),
        600,
        "the first fragment passed before the second's claim"
    );
    // Two whole messages of 600 are each within it.
    let mut wire = BytesMut::new();
    write_frame(Opcode::Binary, true, &[1; 600], MASK, &mut wire);
    write_frame(Opcode::Binary, true, &[2; 600], MASK, &mut wire);
    let (payload, _, r) = feed_all(&mut Decoder::server(1000), &wire);
    assert_eq!((r, payload.len()), (Ok(Progress::Open), 1200));
}

#[test]
fn a_close_is_echoed_and_ends_reading() {
    let mut wire = BytesMut::new();
    write_close(close::GOING_AWAY, "bye", MASK, &mut wire);
    write_frame(Opcode::Binary, true, b"late", MASK, &mut wire);
    let (payload, reply, r) = feed_all(&mut Decoder::server(1024), &wire);
    assert_eq!(r, Ok(Progress::Closed(Some(close::GOING_AWAY))));
    assert!(payload.is_empty());
    assert_eq!(&reply[..], &[0x88, 0x02, 0x03, 0xE9]);
}

#[test]
fn write_binary_splits_at_the_limit() {
    let mut out = BytesMut::new();
    write_binary(&[9; 300], 128, &mut out);
    let mut client = Decoder::client(128, 1);
    let (payload, _, r) = feed_all(&mut client, &out);
    assert_eq!((r, payload), (Ok(Progress::Open), vec![9; 300]));
    assert_eq!(
        out.len(),
        300 + 3 * 2 + 2 * 2,
        "two frames of 128, one of 44"
    );
}

#[test]
fn close_reasons_are_cut_at_a_character_boundary() {
    let mut out = BytesMut::new();
    write_close(1000, &"é".repeat(100), None, &mut out);
    assert_eq!(out[1], 2 + 122);
    let (_, _, r) = feed_all(&mut Decoder::client(1024, 3), &out);
    assert_eq!(r, Ok(Progress::Closed(Some(1000))));
}

fn handshake(extra: &[(&str, &str)]) -> Request {
    let mut headers = vec![
        ("host", "node"),
        ("upgrade", "websocket"),
        ("connection", "keep-alive, Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-version", "13"),
    ];
    for (name, value) in extra {
        headers.retain(|(n, _)| n != name);
        headers.push((name, value));
    }
    let headers: Vec<(&str, &str)> = headers.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    Request::new(Method::Get, "/ws", &headers, bytes::Bytes::new())
}

#[test]
fn the_handshake_is_answered_or_refused_with_its_status() {
    let ok = upgrade(&handshake(&[]), &[]).expect("accepted");
    let mut out = BytesMut::new();
    ok.write(true, false, &mut out);
    let text = std::str::from_utf8(&out).unwrap();
    assert!(
        text.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{text}"
    );
    assert!(text.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    assert!(!text.contains("content-length"));
    let with_proto = upgrade(
        &handshake(&[("sec-websocket-protocol", "x, valkyrie.v2")]),
        &[],
    )
    .expect("accepted");
    assert!(
        with_proto
            .headers
            .iter()
            .any(|(n, v)| *n == "sec-websocket-protocol" && v == SUBPROTOCOL)
    );
    let status = |r: Result<crate::http::Response, crate::http::Response>| match r {
        Ok(r) | Err(r) => r.status,
    };
    assert_eq!(
        status(upgrade(&handshake(&[("sec-websocket-version", "8")]), &[])),
        426
    );
    assert_eq!(
        status(upgrade(&handshake(&[("sec-websocket-key", "short")]), &[])),
        400
    );
    assert_eq!(
        status(upgrade(&handshake(&[("connection", "keep-alive")]), &[])),
        400
    );
    let allowed = vec!["https://ci.example".to_owned()];
    assert_eq!(
        status(upgrade(
            &handshake(&[("origin", "https://evil.example")]),
            &allowed
        )),
        403
    );
    assert_eq!(
        status(upgrade(
            &handshake(&[("origin", "https://ci.example")]),
            &allowed
        )),
        101
    );
    assert_eq!(
        status(upgrade(&handshake(&[]), &allowed)),
        101,
        "no Origin: not a browser"
    );
}

#[test]
fn a_client_request_reads_back_as_an_upgrade_and_the_bytes_after_it_are_kept() {
    let (text, expect) = client_request("node:7000", "/ws", [7; 16]);
    let mut reader = RequestReader::new(Limits::default());
    reader.push(text.as_bytes());
    reader.push(&[0x82, 0x80]);
    let req = reader.poll().unwrap().unwrap();
    let resp = upgrade(&req, &[]).expect("accepted");
    assert!(
        resp.headers
            .iter()
            .any(|(n, v)| *n == "sec-websocket-accept" && *v == expect)
    );
    assert_eq!(&reader.take_buffered()[..], &[0x82, 0x80]);
}

proptest! {
    /// Any messages, fragmented anyhow, with pings between, split anywhere on the way, come
    /// out as the same byte stream, and every ping is answered.
    #[test]
    fn any_split_of_any_fragmentation_gives_the_same_stream(
        messages in prop::collection::vec((prop::collection::vec(any::<u8>(), 0..300), 1usize..4), 1..8),
        cut in 1usize..50,
        key in any::<[u8; 4]>(),
    ) {
        let mut wire = BytesMut::new();
        let mut expect = Vec::new();
        let mut pings = 0;
        for (msg, parts) in &messages {
            expect.extend_from_slice(msg);
            let size = msg.len().div_ceil(*parts).max(1);
            let pieces: Vec<&[u8]> = if msg.is_empty() { vec![&[][..]] } else { msg.chunks(size).collect() };
            for (i, piece) in pieces.iter().enumerate() {
                let op = if i == 0 { Opcode::Binary } else { Opcode::Continuation };
                write_frame(op, i + 1 == pieces.len(), piece, Some(key), &mut wire);
                if i == 0 {
                    write_frame(Opcode::Ping, true, &msg[..msg.len().min(3)], Some(key), &mut wire);
                    pings += 1;
                }
            }
        }
        let mut d = Decoder::server(1 << 20);
        let (mut payload, mut reply) = (Vec::new(), BytesMut::new());
        for piece in wire.chunks(cut) {
            prop_assert_eq!(d.feed(piece, &mut payload, &mut reply), Ok(Progress::Open));
        }
        prop_assert_eq!(payload, expect);
        let mut c = Decoder::client(1 << 20, 9);
        let (mut none, mut back) = (Vec::new(), BytesMut::new());
        prop_assert_eq!(c.feed(&reply, &mut none, &mut back), Ok(Progress::Open));
        prop_assert!(none.is_empty() && back.is_empty());
        let pongs = reply.iter().filter(|&&b| b == 0x8A).count();
        prop_assert!(pongs >= pings);
    }
}
