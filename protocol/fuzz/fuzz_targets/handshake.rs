//! The security handshakes, both sides, fed arbitrary handshake frames from a hostile peer.
//! The first byte picks the mode (token, noise_xk or post_quantum) and the side; the rest is cut into frames
//! (type from the handshake range, payload from the input) after a valid HELLO / HELLO_ACK.
//! Checks that nothing panics and that no frame is delivered before the peer proved itself.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::message::{Hello, HelloAck, Payload};
use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk};
use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
use valkyrie_protocol::security::token::{TokenClient, TokenServer};
use valkyrie_protocol::{Config, Connection, Event, Frame, MessageType, SecurityMode, Side};

struct Keys {
    server: NoiseKeypair,
    client: NoiseKeypair,
    pq_server: PqIdentity,
    pq_client: PqIdentity,
}

fn keys() -> &'static Keys {
    static K: OnceLock<Keys> = OnceLock::new();
    K.get_or_init(|| Keys {
        server: NoiseKeypair::from_private([7; 32]),
        client: NoiseKeypair::from_private([9; 32]),
        pq_server: PqIdentity::generate(),
        pq_client: PqIdentity::generate(),
    })
}

fn config(mode: SecurityMode, side: Side) -> Arc<Config> {
    let k = keys();
    let handshakes: Vec<Arc<dyn valkyrie_protocol::security::HandshakeProvider>> =
        match (&mode, side) {
            (SecurityMode::NoiseXk, Side::Server) => vec![Arc::new(NoiseXk::server(k.server.clone()))],
            (SecurityMode::NoiseXk, Side::Client) => {
                vec![Arc::new(NoiseXk::client(k.client.clone(), k.server.public))]
            }
            (SecurityMode::PostQuantum, Side::Server) => {
                vec![Arc::new(PostQuantum::server(k.pq_server.clone()))]
            }
            (SecurityMode::PostQuantum, Side::Client) => vec![Arc::new(PostQuantum::client(
                k.pq_client.clone(),
                k.pq_server.fingerprint(),
            ))],
            (_, Side::Server) => vec![Arc::new(TokenServer::new([("k".to_owned(), b"s".to_vec())]))],
            (_, Side::Client) => vec![Arc::new(TokenClient::new("k", b"s".to_vec()))],
        };
    Arc::new(Config {
        security: vec![mode],
        handshakes,
        handshake_timeout: Duration::from_secs(1),
        ..Config::new("fuzz")
    })
}

fn frame(t: MessageType, payload: Vec<u8>) -> Vec<u8> {
    let mut v = Vec::new();
    Frame::new(t, 0, payload).encode(&mut v);
    v
}

const TYPES: [MessageType; 6] = [
    MessageType::AuthChallenge,
    MessageType::AuthResponse,
    MessageType::AuthSuccess,
    MessageType::AuthFailure,
    MessageType::KeyExchange,
    MessageType::CertRequest,
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let mode = match pick & 3 {
        0 => SecurityMode::Token,
        1 => SecurityMode::NoiseXk,
        _ => SecurityMode::PostQuantum,
    };
    let side = if pick & 4 == 0 { Side::Server } else { Side::Client };
    let now = Instant::now();
    let mut conn = Connection::new(side, config(mode.clone(), side), now, 1_750_000_000);
    let hello = match side {
        Side::Server => frame(
            MessageType::Hello,
            Hello::new("peer", vec![mode.clone()], 1 << 16, 1000).to_bytes().to_vec(),
        ),
        Side::Client => {
            let ack = HelloAck {
                version: 2,
                node_id: "peer".into(),
                security: mode.clone(),
                max_frame: 1 << 16,
                heartbeat_ms: 1000,
                stream_window: None,
                max_streams: None,
                compression: None,
                host: None,
                quic_streams: false,
            };
            let mut f = Frame::new(MessageType::HelloAck, 0, ack.to_bytes().to_vec());
            f.header.flags |= valkyrie_protocol::Flags::RESPONSE;
            let mut v = Vec::new();
            f.encode(&mut v);
            v
        }
    };
    conn.handle_input(&hello, now);
    let mut out = bytes::BytesMut::new();
    while let Some(_e) = conn.poll_event() {}
    conn.write_transmits(&mut out, usize::MAX);
    // Then hostile frames: [type index, len, payload...]*, or raw bytes when the top bit says so.
    let mut t = now;
    while let Some((&head, tail)) = rest.split_first() {
        rest = tail;
        if head & 0x80 != 0 {
            let n = (head & 0x7f) as usize;
            let n = n.min(rest.len());
            conn.handle_input(&rest[..n], t);
            rest = &rest[n..];
        } else {
            let Some((&len, tail)) = rest.split_first() else { break };
            rest = tail;
            let n = (len as usize).min(rest.len());
            let ty = TYPES[(head as usize) % TYPES.len()];
            conn.handle_input(&frame(ty, rest[..n].to_vec()), t);
            rest = &rest[n..];
        }
        t += Duration::from_millis(50);
        if conn.poll_timeout().is_some_and(|d| d <= t) {
            conn.handle_timeout(t);
        }
        while let Some(e) = conn.poll_event() {
            // No application frame can arrive: nobody here holds the keys or the secret. (A
            // token client does not authenticate its server, so there it is allowed.)
            let server_unauthenticated = mode == SecurityMode::Token && side == Side::Client;
            assert!(
                server_unauthenticated || !matches!(e, Event::Frame(_)),
                "an unauthenticated frame was delivered"
            );
        }
        out.clear();
        conn.write_transmits(&mut out, usize::MAX);
    }
});
