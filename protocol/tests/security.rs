//! The security modes end to end between two in-memory connections: success, wrong keys,
//! expired and replayed tokens, tampered records, and plaintext or downgraded offers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use valkyrie_protocol::security::noise_xk::{NoiseKeypair, NoiseXk, hex};
use valkyrie_protocol::security::token::{TokenClient, TokenServer};
use valkyrie_protocol::{
    CloseReason, Config, ErrorCode, Event, MessageType, SecurityMode, SendOptions,
};

fn noise_configs(client: NoiseXk, server: NoiseXk) -> (Config, Config) {
    (
        Config {
            security: vec![SecurityMode::NoiseXk],
            handshakes: vec![Arc::new(client)],
            ..Config::new("agent-1")
        },
        Config {
            security: vec![SecurityMode::NoiseXk],
            handshakes: vec![Arc::new(server)],
            ..Config::new("control")
        },
    )
}

fn closed_with(events: &[Event], code: ErrorCode) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Closed(CloseReason::ProtocolError { code: c, .. }
            | CloseReason::PeerError { code: c, .. }) if *c == code)
    })
}

#[test]
fn noise_xk_authenticates_both_sides_and_seals_payloads() {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let (c, s) = noise_configs(
        NoiseXk::client(ck.clone(), sk.public),
        NoiseXk::server(sk.clone()).allow_clients([ck.public]),
    );
    let mut p = Pair::connected_with(c, s);
    assert_eq!(
        p.server.peer().unwrap().identity.as_deref(),
        Some(format!("noise:{}", hex(&ck.public)).as_str())
    );
    assert_eq!(
        p.client.peer().unwrap().identity.as_deref(),
        Some(format!("noise:{}", hex(&sk.public)).as_str())
    );
    let secret = Bytes::from_static(b"the job's secret parameters");
    p.client
        .send(
            1,
            MessageType::JobRequest,
            secret.clone(),
            SendOptions::default(),
        )
        .unwrap();
    let wire = drain(&mut p.client);
    // The header is readable, the payload is not.
    assert_eq!(wire[3], MessageType::JobRequest.to_u8());
    assert!(!wire.windows(secret.len()).any(|w| w == &secret[..]));
    p.server.handle_input(&wire, p.now);
    p.server_events
        .extend(std::iter::from_fn(|| p.server.poll_event()));
    let frames = p.take_server_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].payload, secret);
    // Both ways, many frames, with pings.
    for i in 0..50u32 {
        p.server
            .send(
                2,
                MessageType::StreamData,
                Bytes::from(i.to_string()),
                SendOptions::default(),
            )
            .unwrap();
    }
    p.client.ping(Bytes::from_static(b"sealed ping")).unwrap();
    p.run();
    assert_eq!(p.take_client_frames().len(), 50);
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Pong { .. })),
        "{:?}",
        p.client_events
    );
}

#[test]
fn noise_xk_with_the_wrong_server_key_fails_201() {
    let (sk, ck, other) = (
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
    );
    let (c, s) = noise_configs(NoiseXk::client(ck, other.public), NoiseXk::server(sk));
    let mut p = Pair::new(c, s);
    p.run();
    assert!(!p.client.is_established() && !p.server.is_established());
    assert!(
        closed_with(&p.server_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.server_events
    );
    assert!(
        closed_with(&p.client_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.client_events
    );
}

#[test]
fn noise_xk_refuses_a_client_key_not_on_the_list_201() {
    let (sk, ck, allowed) = (
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
    );
    let (c, s) = noise_configs(
        NoiseXk::client(ck, sk.public),
        NoiseXk::server(sk).allow_clients([allowed.public]),
    );
    let mut p = Pair::new(c, s);
    p.run();
    assert!(
        closed_with(&p.server_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.server_events
    );
    // The client finished its side of XK before the server refused its key: the server's
    // plaintext ERROR cannot be authenticated on a sealed connection, so the client closes too.
    assert!(p.client.is_closed(), "{:?}", p.client_events);
}

#[test]
fn one_flipped_bit_in_a_sealed_frame_closes_703_and_delivers_nothing() {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let (c, s) = noise_configs(NoiseXk::client(ck, sk.public), NoiseXk::server(sk));
    for bit in [0usize, 5, 24 * 8 + 3, 24 * 8 + 100] {
        let mut p = Pair::connected_with(c.clone(), s.clone());
        p.client
            .send(
                1,
                MessageType::JobRequest,
                Bytes::from(vec![9u8; 40]),
                SendOptions::default(),
            )
            .unwrap();
        let mut wire = drain(&mut p.client);
        if bit < 24 * 8 && (bit / 8) < 4 {
            // Header bytes 0..4 are magic/version/type: flip a bit of the flags or ids instead.
            wire[8 + bit / 8] ^= 1 << (bit % 8);
        } else {
            wire[bit / 8] ^= 1 << (bit % 8);
        }
        p.server.handle_input(&wire, p.now);
        let events: Vec<Event> = std::iter::from_fn(|| p.server.poll_event()).collect();
        assert!(
            !events.iter().any(|e| matches!(e, Event::Frame(_))),
            "bit {bit}: a tampered frame was delivered: {events:?}"
        );
        assert!(
            closed_with(&events, ErrorCode::INTEGRITY_FAILURE),
            "bit {bit}: {events:?}"
        );
    }
}

#[test]
fn keys_are_renewed_on_schedule_and_both_sides_follow() {
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let mut client = NoiseXk::client(ck, sk.public);
    let mut server = NoiseXk::server(sk);
    client.rekey_interval = 7;
    server.rekey_interval = 7;
    let (c, s) = noise_configs(client, server);
    let mut p = Pair::connected_with(c, s);
    for i in 0..100u32 {
        p.client
            .send(
                1,
                MessageType::StreamData,
                Bytes::from(i.to_string()),
                SendOptions::default(),
            )
            .unwrap();
        p.run();
    }
    assert_eq!(p.take_server_frames().len(), 100);
}

#[test]
fn a_plaintext_hello_to_a_listener_requiring_noise_is_refused() {
    let sk = NoiseKeypair::generate();
    let (_, s) = noise_configs(NoiseXk::server(sk.clone()), NoiseXk::server(sk));
    let mut p = Pair::new(Config::new("plain"), s);
    p.run();
    assert!(!p.server.is_established());
    assert!(closed_with(
        &p.client_events,
        ErrorCode::UNSUPPORTED_SECURITY_MODE
    ));
}

#[test]
fn a_downgraded_hello_breaks_the_noise_handshake() {
    // The client offers noise_xk and token; an attacker strips the offer to noise_xk only.
    // The server still runs noise_xk, but the transcripts differ and the handshake fails.
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let client = Config {
        security: vec![SecurityMode::Token, SecurityMode::NoiseXk],
        handshakes: vec![
            Arc::new(NoiseXk::client(ck, sk.public)),
            Arc::new(TokenClient::new("k", b"s".to_vec())),
        ],
        ..Config::new("agent")
    };
    let (_, server) = noise_configs(NoiseXk::server(sk.clone()), NoiseXk::server(sk));
    let mut p = Pair::new(client, server);
    let hello = drain(&mut p.client);
    let frames = frames_of(&hello);
    let mut h = valkyrie_protocol::message::Hello::from_bytes(&frames[0].payload).unwrap();
    h.security = vec![SecurityMode::NoiseXk];
    use valkyrie_protocol::message::Payload;
    let forged = raw(MessageType::Hello, 0, h.to_bytes());
    p.server.handle_input(&forged, p.now);
    p.run();
    assert!(!p.server.is_established());
    assert!(!p.client.is_established());
}

fn token_pair(client: TokenClient, server: TokenServer) -> Pair {
    Pair::new(
        Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(client)],
            ..Config::new("agent-7")
        },
        Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(server)],
            ..Config::new("control")
        },
    )
}

fn server_keys() -> TokenServer {
    TokenServer::new([("ci-agents".to_owned(), b"correct horse battery".to_vec())])
}

#[test]
fn token_succeeds_with_the_right_secret() {
    let mut p = token_pair(
        TokenClient::new("ci-agents", b"correct horse battery".to_vec()),
        server_keys(),
    );
    p.run();
    assert!(p.client.is_established() && p.server.is_established());
    assert_eq!(
        p.server.peer().unwrap().identity.as_deref(),
        Some("token:ci-agents")
    );
}

#[test]
fn token_with_a_wrong_secret_or_key_id_fails_201() {
    for client in [
        TokenClient::new("ci-agents", b"wrong".to_vec()),
        TokenClient::new("nobody", b"correct horse battery".to_vec()),
    ] {
        let mut p = token_pair(client, server_keys());
        p.run();
        assert!(!p.server.is_established());
        assert!(
            closed_with(&p.client_events, ErrorCode::AUTH_FAILED),
            "{:?}",
            p.client_events
        );
    }
}

#[test]
fn an_expired_token_response_fails_202() {
    let mut q = token_pair(
        TokenClient::new("ci-agents", b"correct horse battery".to_vec()),
        server_keys(),
    );
    let hello = drain(&mut q.client);
    let (_, to_client) = inject(&mut q.server, &hello, q.now);
    let (_, response) = inject(&mut q.client, &to_client, q.now);
    // The client's answer (valid 60 s) reaches the server two minutes later.
    let (events, _) = inject(&mut q.server, &response, q.now + Duration::from_secs(120));
    assert!(closed_with(&events, ErrorCode::TOKEN_EXPIRED), "{events:?}");
}

#[test]
fn a_replayed_token_response_fails_203() {
    let server = server_keys();
    let mut a = token_pair(
        TokenClient::new("ci-agents", b"correct horse battery".to_vec()),
        server.clone(),
    );
    let hello = drain(&mut a.client);
    let (_, to_client) = inject(&mut a.server, &hello, a.now);
    let (_, response) = inject(&mut a.client, &to_client, a.now);
    let _ = inject(&mut a.server, &response, a.now);
    assert!(a.server.is_established());
    // An eavesdropper replays the same HELLO and AUTH_RESPONSE on a new connection.
    let mut b = token_pair(TokenClient::new("x", b"y".to_vec()), server);
    let _ = inject(&mut b.server, &hello, b.now);
    let (events, _) = inject(&mut b.server, &response, b.now);
    assert!(
        closed_with(&events, ErrorCode::TOKEN_REPLAYED),
        "{events:?}"
    );
}

#[test]
fn zero_trust_delivers_what_the_policy_allows_and_answers_the_rest_701() {
    use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
    let (sk, ck, other) = (
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
        NoiseKeypair::generate(),
    );
    let policy = Policy::parse(&format!(
        "noise:{} JOB_*,STREAM_DATA\nnoise:{} HEALTH_CHECK\n",
        hex(&ck.public),
        hex(&other.public)
    ))
    .unwrap();
    let server = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(NoiseXk::server(sk.clone())))],
        policy: Some(Arc::new(policy)),
        ..Config::new("control")
    };
    let client = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(NoiseXk::client(ck, sk.public)))],
        ..Config::new("agent")
    };
    let mut p = Pair::connected_with(client, server);
    let allowed = p
        .client
        .request(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"ok"),
            SendOptions::default(),
        )
        .unwrap();
    let denied = p
        .client
        .request(
            3,
            MessageType::FileTransferStart,
            Bytes::from_static(b"no"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    let frames = p.take_server_frames();
    assert_eq!(frames.len(), 1, "only the allowed frame is delivered");
    assert_eq!(frames[0].header.correlation_id, allowed);
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::Denied {
            msg_type: MessageType::FileTransferStart,
            stream_id: 3,
            ..
        }
    )));
    assert!(
        p.client_events.iter().any(|e| matches!(e,
            Event::PeerError { code: ErrorCode::UNAUTHORISED, correlation_id, .. } if *correlation_id == denied)),
        "{:?}",
        p.client_events
    );
    // A denial is not fatal: the connection carries on.
    assert!(p.client.is_established() && p.server.is_established());
}

#[test]
fn zero_trust_without_a_policy_allows_nothing() {
    use valkyrie_protocol::security::zero_trust::ZeroTrust;
    let (sk, ck) = (NoiseKeypair::generate(), NoiseKeypair::generate());
    let server = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(NoiseXk::server(sk.clone())))],
        ..Config::new("control")
    };
    let client = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(NoiseXk::client(ck, sk.public)))],
        ..Config::new("agent")
    };
    let mut p = Pair::connected_with(client, server);
    p.client
        .send(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"x"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    assert!(p.take_server_frames().is_empty());
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::Denied { .. }))
    );
}

fn pq_configs(
    client: valkyrie_protocol::security::post_quantum::PostQuantum,
    server: valkyrie_protocol::security::post_quantum::PostQuantum,
) -> (Config, Config) {
    (
        Config {
            security: vec![SecurityMode::PostQuantum],
            handshakes: vec![Arc::new(client)],
            ..Config::new("agent-pq")
        },
        Config {
            security: vec![SecurityMode::PostQuantum],
            handshakes: vec![Arc::new(server)],
            ..Config::new("control")
        },
    )
}

#[test]
fn post_quantum_agrees_keys_and_authenticates_both_identities() {
    use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
    let (si, ci) = (PqIdentity::generate(), PqIdentity::generate());
    let (sfp, cfp) = (si.fingerprint(), ci.fingerprint());
    let (c, s) = pq_configs(
        PostQuantum::client(ci, sfp),
        PostQuantum::server(si).allow_clients([cfp]),
    );
    let mut p = Pair::connected_with(c.clone(), s.clone());
    assert_eq!(
        p.server.peer().unwrap().identity.as_deref(),
        Some(format!("pq:{}", hex(&cfp)).as_str())
    );
    assert_eq!(
        p.client.peer().unwrap().identity.as_deref(),
        Some(format!("pq:{}", hex(&sfp)).as_str())
    );
    let secret = Bytes::from_static(b"quantum-safe job parameters");
    p.client
        .send(
            1,
            MessageType::JobRequest,
            secret.clone(),
            SendOptions::default(),
        )
        .unwrap();
    let wire = drain(&mut p.client);
    assert!(!wire.windows(secret.len()).any(|w| w == &secret[..]));
    let (events, _) = inject(&mut p.server, &wire, p.now);
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Frame(f) if f.payload == secret))
    );
    // A flipped bit is 703 and nothing is delivered.
    let mut p = Pair::connected_with(c, s);
    p.client
        .send(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"x"),
            SendOptions::default(),
        )
        .unwrap();
    let mut wire = drain(&mut p.client);
    let last = wire.len() - 1;
    wire[last] ^= 0x01;
    let (events, _) = inject(&mut p.server, &wire, p.now);
    assert!(!events.iter().any(|e| matches!(e, Event::Frame(_))));
    assert!(
        closed_with(&events, ErrorCode::INTEGRITY_FAILURE),
        "{events:?}"
    );
}

#[test]
fn post_quantum_refuses_an_unpinned_server_and_an_unlisted_client() {
    use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
    let (si, ci, other) = (
        PqIdentity::generate(),
        PqIdentity::generate(),
        PqIdentity::generate(),
    );
    // The client pins another server.
    let (c, s) = pq_configs(
        PostQuantum::client(ci.clone(), other.fingerprint()),
        PostQuantum::server(si.clone()),
    );
    let mut p = Pair::new(c, s);
    p.run();
    assert!(!p.client.is_established());
    assert!(
        closed_with(&p.client_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.client_events
    );
    // The server lists another client.
    let (c, s) = pq_configs(
        PostQuantum::client(ci, si.fingerprint()),
        PostQuantum::server(si).allow_clients([other.fingerprint()]),
    );
    let mut p = Pair::new(c, s);
    p.run();
    assert!(!p.server.is_established() && !p.client.is_established());
    assert!(
        closed_with(&p.server_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.server_events
    );
}

#[test]
fn zero_trust_over_post_quantum_authorises_by_fingerprint() {
    use valkyrie_protocol::security::post_quantum::{PostQuantum, PqIdentity};
    use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
    let (si, ci) = (PqIdentity::generate(), PqIdentity::generate());
    let (sfp, cfp) = (si.fingerprint(), ci.fingerprint());
    let policy = Policy::parse(&format!("pq:{} JOB_REQUEST\n", hex(&cfp))).unwrap();
    let c = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(PostQuantum::client(ci, sfp)))],
        ..Config::new("agent-pq")
    };
    let s = Config {
        security: vec![SecurityMode::ZeroTrust],
        handshakes: vec![Arc::new(ZeroTrust::over(PostQuantum::server(si)))],
        policy: Some(Arc::new(policy)),
        ..Config::new("control")
    };
    let mut p = Pair::connected_with(c, s);
    assert_eq!(p.server.peer().unwrap().security, SecurityMode::ZeroTrust);
    p.client
        .send(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"ok"),
            SendOptions::default(),
        )
        .unwrap();
    p.client
        .send(
            3,
            MessageType::JobCancel,
            Bytes::from_static(b"no"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    let frames = p.take_server_frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].header.msg_type, MessageType::JobRequest);
    assert!(p.client_events.iter().any(|e| matches!(
        e,
        Event::PeerError {
            code: ErrorCode::UNAUTHORISED,
            ..
        }
    )));
}
