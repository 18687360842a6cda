//! The REST gateway's mapping on arbitrary bodies (peer input: JSON or raw bytes) for every
//! type a client may send: it never panics, refuses with 400/404 and a protocol code, and a
//! body it accepts becomes a payload that decodes as its type and maps back to an answer;
//! a `traceparent` value is parsed or refused, and one parsed is written back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_bridge::rest;
use valkyrie_protocol::MessageType;

fuzz_target!(|input: &[u8]| {
    // A traceparent header from the peer: parsed, or refused, and written back the same.
    if let Ok(text) = std::str::from_utf8(input)
        && let Some(ctx) = rest::parse_traceparent(text)
    {
        assert_eq!(rest::parse_traceparent(&rest::traceparent(&ctx)), Some(ctx));
    }
    let Some((&pick, body)) = input.split_first() else {
        return;
    };
    let t = MessageType::from_u8(pick);
    let path = format!("{}{}", rest::MESSAGES_PREFIX, rest::type_name(t));
    match rest::request(&path, body) {
        Ok((got, payload)) => {
            assert_eq!(got, t);
            let answer = rest::answer(t, 1, &payload);
            assert_eq!(answer.status, 200, "an accepted body maps back");
        }
        Err(refusal) => assert!(matches!(refusal.status, 400 | 404)),
    }
});
