//! The REST gateway's mapping on arbitrary bodies (peer input: JSON or raw bytes) for every
//! type a client may send: it never panics, refuses with 400/404 and a protocol code, and a
//! body it accepts becomes a payload that decodes as its type and maps back to an answer;
//! a `traceparent` value is parsed or refused, and one parsed is written back the same; a
//! bearer token verifies only when it is the one minted with the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valkyrie_bridge::{bearer, rest};
use valkyrie_protocol::MessageType;

fuzz_target!(|input: &[u8]| {
    if let Ok(text) = std::str::from_utf8(input) {
        // A traceparent header from the peer: parsed, or refused, and written back the same.
        if let Some(ctx) = rest::parse_traceparent(text) {
            assert_eq!(rest::parse_traceparent(&rest::traceparent(&ctx)), Some(ctx));
        }
        // An Authorization header: a bearer token that is not minted with the key never
        // verifies.
        let keys = vec![("agents".to_owned(), b"fuzzing secret".to_vec())];
        if let Some(token) = bearer::from_authorization(text) {
            let minted = token.split('.').nth(1).and_then(|e| e.parse::<u64>().ok())
                .map(|e| bearer::mint("agents", b"fuzzing secret", e));
            if bearer::verify(token, &keys, 0).is_ok() {
                assert_eq!(minted.as_deref(), Some(token), "only a minted token verifies");
            }
        }
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
