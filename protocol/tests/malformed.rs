//! One test per malformed-header class, driven through the connection as a peer would.

mod common;

use common::*;
use valkyrie_protocol::frame::{HEADER_LEN, Header};
use valkyrie_protocol::message::{ErrorPayload, Payload};
use valkyrie_protocol::{CloseReason, ErrorCode, Event, Flags, MessageType};

/// An established pair; the server gets `bytes` and must answer with a fatal ERROR `code`
/// and close.
fn assert_fatal(bytes: &[u8], code: ErrorCode) {
    let mut p = Pair::connected();
    let (events, wire) = inject(&mut p.server, bytes, p.now);
    assert_eq!(error_codes(&wire), vec![code.0], "events {events:?}");
    assert!(
        events.iter().any(|e| matches!(e,
            Event::Closed(CloseReason::ProtocolError { code: c, .. }) if *c == code)),
        "{events:?}"
    );
    assert!(p.server.is_drained());
    // The client, fed the ERROR, closes too.
    let (events, _) = inject(&mut p.client, &wire, p.now);
    assert!(
        events.iter().any(|e| matches!(e,
            Event::Closed(CloseReason::PeerError { code: c, .. }) if *c == code)),
        "{events:?}"
    );
}

#[test]
fn bad_magic_is_fatal_100() {
    let mut f = raw(MessageType::Ping, 0, &b"x"[..]);
    f[0] = b'H';
    f[1] = b'T';
    assert_fatal(&f, ErrorCode::BAD_MAGIC);
}

#[test]
fn bad_magic_before_hello_is_fatal_100() {
    // An HTTP client knocking on a Valkyrie port.
    let mut p = Pair::new(Default::default(), Default::default());
    let (events, wire) = inject(&mut p.server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", p.now);
    assert_eq!(error_codes(&wire), vec![100]);
    assert!(matches!(events.last(), Some(Event::Closed(_))));
}

#[test]
fn bad_version_is_fatal_101() {
    let mut f = raw(MessageType::Ping, 0, &b"x"[..]);
    f[2] = 1;
    assert_fatal(&f, ErrorCode::UNSUPPORTED_VERSION);
}

#[test]
fn oversized_length_is_fatal_102_before_any_payload_arrives() {
    let mut p = Pair::connected();
    let max = p.server.peer().unwrap().max_frame; // symmetric defaults
    let header = Header::new(MessageType::StreamData, 101, max + 1).to_bytes();
    // Only the 24 header bytes: no payload at all has arrived.
    let (events, wire) = inject(&mut p.server, &header, p.now);
    assert_eq!(error_codes(&wire), vec![102], "{events:?}");
    assert!(p.server.is_drained());
    // Whatever follows is ignored, and nothing is buffered for it.
    p.server.handle_input(&vec![0u8; 4096], p.now);
    assert_eq!(p.server.buffered_input(), 0);
}

#[test]
fn length_over_the_absolute_limit_is_102_even_before_hello() {
    let mut p = Pair::new(Default::default(), Default::default());
    let header = Header::new(MessageType::Hello, 0, u32::MAX).to_bytes();
    let (_, wire) = inject(&mut p.server, &header, p.now);
    assert_eq!(error_codes(&wire), vec![102]);
}

#[test]
fn unknown_type_is_103_and_the_connection_stays_usable() {
    let mut p = Pair::connected();
    let mut f = raw(MessageType::Unknown(0x7E), 0, &b"future"[..]);
    f[16..20].copy_from_slice(&77u32.to_be_bytes()); // correlation id
    let (events, wire) = inject(&mut p.server, &f, p.now);
    assert!(events.is_empty(), "{events:?}");
    let frames = frames_of(&wire);
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].msg_type(), MessageType::Error);
    assert_eq!(
        frames[0].header.correlation_id, 77,
        "the error names the request"
    );
    assert_eq!(
        ErrorPayload::from_bytes(&frames[0].payload).unwrap().code,
        103
    );
    assert!(p.server.is_established());

    // The client reports it as a non-fatal peer error, and PING still works both ways.
    let (events, _) = inject(&mut p.client, &wire, p.now);
    assert!(matches!(
        events[..],
        [Event::PeerError {
            code: ErrorCode::UNKNOWN_MESSAGE_TYPE,
            correlation_id: 77,
            ..
        }]
    ));
    let id = p
        .client
        .ping(bytes::Bytes::from_static(b"still here"))
        .unwrap();
    p.run();
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Pong { correlation_id, .. } if *correlation_id == id))
    );
}

#[test]
fn malformed_payload_is_104_non_fatal_once_established() {
    let mut p = Pair::connected();
    // STREAM_OPEN whose payload is not a MessagePack map.
    let (events, wire) = inject(
        &mut p.server,
        &raw(MessageType::StreamOpen, 101, &[0xC1u8, 0xFF][..]),
        p.now,
    );
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(error_codes(&wire), vec![104]);
    assert!(p.server.is_established());
    // PING longer than 1024 bytes is malformed too.
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::Ping, 0, vec![0u8; 1025]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![104]);
    // TRACE set with a payload shorter than the trace context.
    let mut f = raw(MessageType::LogEntry, 10_001, vec![0u8; 10]);
    f[4] = Flags::TRACE.bits();
    let (_, wire) = inject(&mut p.server, &f, p.now);
    assert_eq!(error_codes(&wire), vec![104]);
    assert!(p.server.is_established());
}

#[test]
fn malformed_hello_is_104_and_fatal() {
    let mut p = Pair::new(Default::default(), Default::default());
    let (events, wire) = inject(
        &mut p.server,
        &raw(MessageType::Hello, 0, &b"\x93\x01\x02\x03"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![104]);
    assert!(matches!(events.last(), Some(Event::Closed(_))));
}

#[test]
fn reserved_flag_bits_are_fatal_105() {
    let mut f = raw(MessageType::Ping, 0, &b"x"[..]);
    f[4] = 0x80;
    assert_fatal(&f, ErrorCode::RESERVED_BITS);
}

#[test]
fn reserved_byte_is_fatal_105() {
    let mut f = raw(MessageType::Ping, 0, &b"x"[..]);
    f[7] = 0x01;
    assert_fatal(&f, ErrorCode::RESERVED_BITS);
}

#[test]
fn a_fatal_error_discards_frames_queued_behind_it() {
    let mut p = Pair::connected();
    // Two pings and a bad frame in one chunk: the pongs are not sent after the ERROR.
    let mut chunk = raw(MessageType::Ping, 0, &b"a"[..]);
    chunk.extend(raw(MessageType::Ping, 0, &b"b"[..]));
    let mut bad = raw(MessageType::Ping, 0, &b"c"[..]);
    bad[0] = 0;
    chunk.extend(bad);
    let (_, wire) = inject(&mut p.server, &chunk, p.now);
    let types: Vec<_> = frames_of(&wire).iter().map(|f| f.msg_type()).collect();
    assert_eq!(types, [MessageType::Error]);
    assert_eq!(HEADER_LEN, 24);
}
