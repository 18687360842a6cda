//! Reads every ```vector block of docs/PROTOCOL.md and checks it against the code.
//!
//! A vector with `error: N` must make an established connection answer ERROR N (and close
//! exactly when N is fatal). Any other vector must decode to the header fields it lists, its
//! payload must convert to the JSON it lists, and encoding those fields and that JSON must
//! give back the exact bytes.

mod common;

use std::collections::HashMap;

use bytes::Bytes;
use valkyrie_protocol::codec::Decoder;
use valkyrie_protocol::message::{self, Message};
use valkyrie_protocol::{ErrorCode, Event, Flags, Frame, Header, MessageType, frame::TraceContext};

struct Vector {
    fields: HashMap<String, String>,
    bytes: Vec<u8>,
}

fn parse_hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|h| u8::from_str_radix(h, 16).unwrap_or_else(|_| panic!("bad hex byte {h:?}")))
        .collect()
}

fn vectors() -> Vec<Vector> {
    // The directory cargo runs the test for (read at run time: a target directory shared by
    // two checkouts may hold a binary built in the other one).
    let dir = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned());
    let doc = std::fs::read_to_string(format!("{dir}/../docs/PROTOCOL.md"))
        .expect("docs/PROTOCOL.md is readable");
    let mut out = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if line.trim() != "```vector" {
            continue;
        }
        let mut v = Vector {
            fields: HashMap::new(),
            bytes: Vec::new(),
        };
        for line in lines.by_ref() {
            if line.trim() == "```" {
                break;
            }
            let (k, val) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("vector line without a key: {line}"));
            if k == "hex" {
                v.bytes.extend(parse_hex(val));
            } else {
                v.fields.insert(k.trim().to_owned(), val.trim().to_owned());
            }
        }
        out.push(v);
    }
    out
}

fn num(v: &Vector, k: &str) -> u64 {
    let s = &v.fields[k];
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).unwrap(),
        None => s.parse().unwrap(),
    }
}

#[test]
fn every_vector_in_the_protocol_document_matches_the_code() {
    let all = vectors();
    assert!(all.len() >= 20, "only {} vectors found", all.len());
    let mut seen_errors = Vec::new();
    for v in &all {
        let name = &v.fields["name"];
        if let Some(code) = v.fields.get("error") {
            let code: u16 = code.parse().unwrap();
            seen_errors.push(code);
            let mut p = common::Pair::connected();
            let (events, wire) = common::inject(&mut p.server, &v.bytes, p.now);
            assert_eq!(common::error_codes(&wire), vec![code], "{name}: {events:?}");
            assert_eq!(p.server.is_closed(), ErrorCode(code).is_fatal(), "{name}");
            assert!(
                !events.iter().any(|e| matches!(e, Event::Frame(_))),
                "{name}"
            );
            continue;
        }
        let mut dec = Decoder::new(valkyrie_protocol::MAX_FRAME_LIMIT);
        dec.feed(&v.bytes);
        let frame = dec
            .decode()
            .unwrap()
            .unwrap_or_else(|| panic!("{name}: incomplete"));
        assert_eq!(dec.buffered(), 0, "{name}: trailing bytes");
        let h = frame.header;
        let t = MessageType::from_name(&v.fields["type"])
            .unwrap_or_else(|| panic!("{name}: unknown type name"));
        let expect = Header {
            msg_type: t,
            flags: Flags::from_bits_retain(num(v, "flags") as u8),
            priority: num(v, "priority") as u8,
            trace_flags: num(v, "trace_flags") as u8,
            stream_id: num(v, "stream") as u32,
            length: num(v, "length") as u32,
            correlation_id: num(v, "correlation") as u32,
            timestamp: num(v, "timestamp") as u32,
        };
        assert_eq!(h, expect, "{name}: header");
        let body = frame.body().expect("trace context fits");
        let mut payload = Vec::new();
        if let Some(tid) = v.fields.get("trace_id") {
            let ctx = frame.trace_context().unwrap();
            assert_eq!(
                format!("{}{}", hex(&ctx.trace_id), hex(&ctx.span_id)),
                format!("{tid}{}", v.fields["span_id"])
            );
            let mut c = TraceContext::default();
            c.trace_id.copy_from_slice(&ctx.trace_id);
            c.span_id.copy_from_slice(&ctx.span_id);
            payload.extend_from_slice(&c.to_bytes());
        }
        let decoded = Message::decode(t, &body).unwrap_or_else(|e| panic!("{name}: {e}"));
        if let Some(json) = v.fields.get("json") {
            let json: serde_json::Value = serde_json::from_str(json).unwrap();
            assert_eq!(decoded.to_json(), json, "{name}: payload as JSON");
            payload.extend_from_slice(&message::from_json(t, json).unwrap());
        } else {
            payload.extend_from_slice(&decoded.to_payload());
        }
        // Re-encode from the listed fields: byte-identical.
        let mut wire = Vec::new();
        Frame {
            header: expect,
            payload: Bytes::from(payload),
        }
        .encode(&mut wire);
        assert_eq!(hex(&wire), hex(&v.bytes), "{name}: re-encoding");
    }
    seen_errors.sort_unstable();
    seen_errors.dedup();
    assert_eq!(
        seen_errors,
        [100, 101, 102, 103, 104, 105],
        "one vector per malformed class"
    );
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}
