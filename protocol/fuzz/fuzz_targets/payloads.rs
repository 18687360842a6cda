//! Every payload parser: MessagePack of every type, JSON conversion both ways.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::message::{self, Message};

fuzz_target!(|data: &[u8]| {
    let Some((&t, rest)) = data.split_first() else { return };
    let t = MessageType::from_u8(t);
    let payload = Bytes::copy_from_slice(rest);
    if let Ok(m) = Message::decode(t, &payload) {
        assert_eq!(m.msg_type(), t);
        // A decoded message converts to JSON and back to a message equal to itself.
        let json = m.to_json();
        let again = Message::from_json(t, json.clone()).expect("own JSON converts back");
        assert_eq!(again.to_json(), json);
    }
    // JSON from a peer (the HTTP bridge's input) never panics either.
    if let Ok(json) = serde_json::from_slice::<serde_json::Value>(rest) {
        if let Ok(wire) = message::from_json(t, json) {
            // Whatever JSON is accepted encodes to a payload that decodes again.
            Message::decode(t, &wire).expect("encoded from accepted JSON");
        }
    }
});
