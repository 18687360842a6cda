//! PINGs answered in place: however the input is cut, every PING gets the PONG the queued path
//! would send, in order, and none of them falls back to the queued path because a frame was
//! split across reads.

mod common;

use bytes::BytesMut;
use common::{Pair, frames_of, raw};
use valkyrie_protocol::{Flags, Frame, MessageType};

/// `n` PINGs with correlation ids 1..=n and 64-byte payloads that differ by id.
fn pings(n: u32) -> Vec<u8> {
    let mut wire = Vec::new();
    for corr in 1..=n {
        let mut ping = raw(MessageType::Ping, 0, vec![corr as u8; 64]);
        ping[16..20].copy_from_slice(&corr.to_be_bytes());
        wire.extend(ping);
    }
    wire
}

/// Feed `wire` to the server in pieces of the sizes `cut` yields, draining after each piece
/// the way the runtime does (events, then answers, then queued frames); returns the PONGs
/// answered in place and every byte written.
fn feed(p: &mut Pair, wire: &[u8], mut cut: impl FnMut() -> usize) -> (u32, Vec<u8>) {
    let mut in_place = 0;
    let mut out = BytesMut::new();
    let mut rest = wire;
    while !rest.is_empty() {
        let n = cut().clamp(1, rest.len());
        p.server.handle_input(&rest[..n], p.now);
        rest = &rest[n..];
        while p.server.poll_event().is_some() {}
        in_place += p.server.write_answers(&mut out);
        while let Some(t) = p.server.poll_transmit() {
            t.write_to(&mut out);
        }
    }
    (in_place, out.to_vec())
}

fn assert_pongs(out: &[u8], n: u32, timestamp: u32) {
    let frames = frames_of(out);
    assert_eq!(frames.len(), n as usize);
    for (i, f) in frames.iter().enumerate() {
        let corr = i as u32 + 1;
        let mut want = Frame::new(MessageType::Pong, 0, vec![corr as u8; 64])
            .with_flags(Flags::RESPONSE)
            .with_priority(u8::MAX)
            .with_timestamp(timestamp);
        want.header.correlation_id = corr;
        assert_eq!(f, &want, "PONG {corr}");
    }
}

/// How a test cuts its input into reads.
type Cut = Box<dyn FnMut() -> usize>;

#[test]
fn pings_cut_anywhere_are_all_answered_in_place_and_in_order() {
    let n = 1_000;
    let wire = pings(n);
    // Receive-buffer sized pieces (a frame split at most every one), tiny ones, and pieces of
    // every size from 1 to 200 bytes in turn.
    let mut sizes = 0usize;
    let cuts: [(&str, Cut); 3] = [
        ("4 KiB", Box::new(|| 4096)),
        ("7 B", Box::new(|| 7)),
        (
            "1..200 B",
            Box::new(move || {
                sizes = sizes % 200 + 1;
                sizes
            }),
        ),
    ];
    for (name, cut) in cuts {
        let mut p = Pair::connected();
        let timestamp = p.server.unix_time();
        let (in_place, out) = feed(&mut p, &wire, cut);
        assert_eq!(in_place, n, "{name}: every PING answered in place");
        assert_pongs(&out, n, timestamp);
        assert_eq!(
            p.server.stats().frames_rx,
            p.client.stats().frames_tx + u64::from(n)
        );
    }
}

#[test]
fn pings_behind_another_frame_wait_for_it_and_keep_their_order() {
    let mut p = Pair::connected();
    // A PING with ACK takes the ordinary path; the plain ones behind it must not overtake it.
    let mut wire = Vec::new();
    let mut first = raw(MessageType::Ping, 0, vec![1u8; 64]);
    first[4] = Flags::ACK.bits();
    first[16..20].copy_from_slice(&1u32.to_be_bytes());
    wire.extend(first);
    wire.extend(&pings(3)[88..]);
    let (_, out) = feed(&mut p, &wire, || usize::MAX);
    let corrs: Vec<(MessageType, u32)> = frames_of(&out)
        .iter()
        .map(|f| (f.msg_type(), f.header.correlation_id))
        .collect();
    assert_eq!(corrs[0], (MessageType::Pong, 1));
    assert_eq!(
        &corrs[corrs.len() - 2..],
        [(MessageType::Pong, 2), (MessageType::Pong, 3)]
    );
    // A malformed PING (reserved byte set) is refused by the decoder as before: fatal 105.
    let mut bad = raw(MessageType::Ping, 0, vec![0u8; 8]);
    bad[7] = 1;
    let (_, out) = feed(&mut p, &bad, || usize::MAX);
    let codes = common::error_codes(&out);
    assert_eq!(codes, [105]);
    assert!(p.server.is_closed());
}
