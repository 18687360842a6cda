//! Property tests: encode/decode round trips, arbitrary chunkings, arbitrary garbage, and
//! MessagePack <-> JSON conversion.

mod common;

use std::time::Instant;

use bytes::Bytes;
use proptest::prelude::*;
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{
    self, JobRequest, LogEntry, Message, Payload, Resources, StreamAck,
};
use valkyrie_protocol::{Flags, Frame, Header, MAX_FRAME_LIMIT, MessageType};

fn any_header() -> impl Strategy<Value = Header> {
    (
        any::<u8>(),
        0u8..64,
        any::<u8>(),
        any::<u8>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        0u32..=MAX_FRAME_LIMIT,
    )
        .prop_map(
            |(t, flags, priority, trace_flags, stream_id, correlation_id, timestamp, length)| {
                Header {
                    msg_type: MessageType::from_u8(t),
                    flags: Flags::from_bits_retain(flags),
                    priority,
                    trace_flags,
                    stream_id,
                    length,
                    correlation_id,
                    timestamp,
                }
            },
        )
}

fn any_frame() -> impl Strategy<Value = Frame> {
    (any_header(), proptest::collection::vec(any::<u8>(), 0..300)).prop_map(|(mut h, p)| {
        h.length = p.len() as u32;
        Frame {
            header: h,
            payload: Bytes::from(p),
        }
    })
}

proptest! {
    #[test]
    fn header_round_trips(h in any_header()) {
        let bytes = h.to_bytes();
        prop_assert_eq!(Header::decode(&bytes, MAX_FRAME_LIMIT), Ok(h));
    }

    #[test]
    fn frames_survive_any_chunking(
        frames in proptest::collection::vec(any_frame(), 1..20),
        cuts in proptest::collection::vec(1usize..64, 1..200),
    ) {
        let mut wire = Vec::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let mut dec = Decoder::new(1024);
        let mut out = Vec::new();
        let mut pos = 0;
        let mut i = 0;
        while pos < wire.len() {
            let n = cuts[i % cuts.len()].min(wire.len() - pos);
            i += 1;
            dec.feed(&wire[pos..pos + n]);
            pos += n;
            while let Some(f) = dec.decode().unwrap() {
                out.push(f);
            }
            // Never more buffered than one frame plus one chunk.
            prop_assert!(dec.buffered() <= 24 + 300 + 64);
        }
        prop_assert_eq!(out, frames);
        prop_assert_eq!(dec.buffered(), 0);
    }

    #[test]
    fn garbage_never_panics_and_never_over_buffers(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..50),
        max in 0u32..4096,
    ) {
        let mut dec = Decoder::new(max);
        for c in &chunks {
            dec.feed(c);
            loop {
                match dec.decode() {
                    Ok(Some(f)) => prop_assert!(f.payload.len() as u32 <= max),
                    Ok(None) => break,
                    Err(e) => {
                        prop_assert!([100, 101, 102, 105].contains(&e.code().0));
                        break;
                    }
                }
            }
            prop_assert!(dec.buffered() <= 24 + max as usize + 100);
        }
    }

    #[test]
    fn connection_survives_garbage_after_hello(
        chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..30),
    ) {
        let mut p = common::Pair::connected();
        let now = Instant::now();
        for c in &chunks {
            p.server.handle_input(c, now);
            while p.server.poll_event().is_some() {}
            while p.server.poll_transmit().is_some() {}
            p.server.handle_timeout(now);
        }
    }

    #[test]
    fn typed_payloads_round_trip_through_msgpack_and_json(
        job_id in "[a-z0-9-]{1,20}",
        priority in any::<u8>(),
        timeout_ms in any::<u64>(),
        cpu in proptest::option::of(any::<u32>()),
        mem in proptest::option::of(any::<u64>()),
        spec_n in any::<i64>(),
        spec_s in ".{0,20}",
        level in "(trace|debug|info|warn|error)",
        line in ".{0,80}",
        ts in any::<u64>(),
        max_data in proptest::option::of(any::<u64>()),
    ) {
        let job = JobRequest {
            attempt: 0,
            log_from: 0,
            epoch: 0,
            job_id,
            spec: serde_json::json!({"n": spec_n, "s": spec_s, "list": [1, 2.5, "x", null, true]}),
            resources: Resources { cpu_millis: cpu, memory_bytes: mem, ..Default::default() },
            priority,
            timeout_ms,
        };
        let log = LogEntry { timestamp_ms: ts, level, message: line, job_id: None, source: Some("step-1".into()), fields: Default::default() };
        let ack = StreamAck { max_data, received: None };
        for msg in [Message::JobRequest(job), Message::LogEntry(log), Message::StreamAck(ack)] {
            let t = msg.msg_type();
            let wire = msg.to_payload();
            prop_assert_eq!(&Message::decode(t, &wire).unwrap(), &msg);
            let json = message::to_json(t, &wire).unwrap();
            let back = message::from_json(t, json.clone()).unwrap();
            prop_assert_eq!(&back, &wire, "msgpack -> JSON -> msgpack is byte-identical");
            // And JSON text survives too.
            let text = serde_json::to_string(&json).unwrap();
            let reparsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(message::from_json(t, reparsed).unwrap(), wire);
        }
    }

    #[test]
    fn raw_payloads_round_trip_through_json(data in proptest::collection::vec(any::<u8>(), 0..1024), offset in any::<u64>()) {
        let ping = Message::Ping(Bytes::from(data.clone()));
        let json = ping.to_json();
        prop_assert_eq!(Message::from_json(MessageType::Ping, json).unwrap(), ping);
        let chunk = Message::FileTransferChunk(message::FileChunk { offset, data: Bytes::from(data) });
        let wire = chunk.to_payload();
        prop_assert_eq!(&Message::decode(MessageType::FileTransferChunk, &wire).unwrap(), &chunk);
        prop_assert_eq!(message::from_json(MessageType::FileTransferChunk, chunk.to_json()).unwrap(), wire);
    }

    #[test]
    fn any_payload_bytes_decode_to_a_message_or_a_104(t in any::<u8>(), data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let t = MessageType::from_u8(t);
        match Message::decode(t, &Bytes::from(data)) {
            Ok(m) => prop_assert_eq!(m.msg_type(), t),
            Err(e) => prop_assert!(e.code().0 == 104 || (e.code().0 == 103 && !t.is_known())),
        }
    }
}

#[test]
fn unknown_keys_are_ignored() {
    let json = serde_json::json!({"job_id": "j", "agent_id": "a", "added_in_v3": {"x": 1}});
    let wire = rmp_serde::to_vec_named(&json).unwrap();
    let accept = valkyrie_protocol::message::JobAccept::from_bytes(&wire).unwrap();
    assert_eq!(accept.agent_id, "a");
}

#[test]
fn every_structured_type_has_a_schema() {
    for &t in MessageType::ALL {
        let raw = matches!(
            t,
            MessageType::Ping
                | MessageType::Pong
                | MessageType::StreamData
                | MessageType::FileTransferChunk
        );
        // An empty map decodes for the types whose fields are all optional, and is a clean
        // 104 otherwise; it is never "unknown type".
        let r = Message::decode(t, &Bytes::from_static(b"\x80"));
        if let Err(e) = r {
            assert_eq!(e.code().0, 104, "{t}");
            assert!(!raw || t == MessageType::FileTransferChunk);
        }
    }
}
