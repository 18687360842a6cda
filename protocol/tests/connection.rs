//! Connection behaviour: negotiation, PING/PONG, heartbeats, close, streams, flow control,
//! scheduling, and the security-handshake slot.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::*;
use valkyrie_protocol::message::{Hello, HelloAck, Payload, StreamOpen, StreamReset};
use valkyrie_protocol::security::{
    HandshakeContext, HandshakeMessage, HandshakeProvider, HandshakeStatus, RecordProtector,
    SecurityError, SecurityFault, SecurityHandshake,
};
use valkyrie_protocol::streams::{
    Enqueued, SchedulerLimits, StreamClass, StreamError, WindowStrategy,
};
use valkyrie_protocol::{
    CloseReason, Config, Connection, ErrorCode, Event, Flags, HEADER_LEN, MessageType,
    SecurityMode, SendError, SendOptions, Side, State,
};

#[test]
fn hello_negotiates_heartbeat_limits_and_security() {
    let client = Config {
        heartbeat: Duration::from_secs(2),
        max_frame: 64 * 1024,
        security: vec![SecurityMode::Token, SecurityMode::Plaintext],
        ..Config::new("agent")
    };
    let server = Config {
        heartbeat: Duration::from_secs(7),
        max_frame: 2 * 1024 * 1024,
        ..Config::new("control")
    };
    let mut p = Pair::new(client, server);
    // The HELLO on the wire has the SPEC's keys.
    let hello_wire = drain(&mut p.client);
    let hello = &frames_of(&hello_wire)[0];
    assert_eq!(hello.msg_type(), MessageType::Hello);
    assert_eq!(hello.stream_id(), 0);
    let json = valkyrie_protocol::message::to_json(MessageType::Hello, &hello.payload).unwrap();
    for key in [
        "versions",
        "node_id",
        "security",
        "max_frame",
        "heartbeat_ms",
    ] {
        assert!(json.get(key).is_some(), "HELLO lacks {key}: {json}");
    }
    assert_eq!(json["security"], serde_json::json!(["token", "plaintext"]));
    p.server.handle_input(&hello_wire, p.now);
    p.run();

    let ack = p.server.peer().unwrap();
    assert_eq!(ack.node_id, "agent");
    assert_eq!(
        ack.security,
        SecurityMode::Plaintext,
        "token has no provider on the server"
    );
    assert_eq!(ack.max_frame, 64 * 1024);
    assert_eq!(
        ack.heartbeat,
        Some(Duration::from_secs(7)),
        "the longer proposal wins"
    );
    let c = p.client.peer().unwrap();
    assert_eq!(c.node_id, "control");
    assert_eq!(c.max_frame, 2 * 1024 * 1024);
    assert_eq!(c.heartbeat, Some(Duration::from_secs(7)));
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Connected(_)))
    );
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::Connected(_)))
    );
}

#[test]
fn hello_ack_answers_with_response_flag_and_fields() {
    let mut p = Pair::new(Config::new("a"), Config::new("b"));
    let hello = drain(&mut p.client);
    let (_, wire) = inject(&mut p.server, &hello, p.now);
    let f = &frames_of(&wire)[0];
    assert_eq!(f.msg_type(), MessageType::HelloAck);
    assert!(f.header.flags.contains(Flags::RESPONSE));
    let ack = HelloAck::from_bytes(&f.payload).unwrap();
    assert_eq!(
        (ack.version, ack.node_id.as_str(), &ack.security),
        (2, "b", &SecurityMode::Plaintext)
    );
    assert_eq!(f.header.timestamp, UNIX as u32);
}

#[test]
fn no_common_version_is_101() {
    let mut p = Pair::new(Config::new("a"), Config::new("b"));
    let hello = Hello {
        versions: vec![3, 4],
        ..Hello::new("future", vec![SecurityMode::Plaintext], 65536, 1000)
    };
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::Hello, 0, hello.to_bytes()),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![101]);
    assert!(p.server.is_closed());
}

#[test]
fn no_common_security_mode_is_refused_204() {
    let client = Config {
        security: vec![SecurityMode::Plaintext],
        ..Config::new("a")
    };
    let server = Config {
        security: vec![SecurityMode::NoiseXk],
        handshakes: vec![Arc::new(ToyProvider)],
        ..Config::new("b")
    };
    let mut p = Pair::new(client, server);
    p.run();
    assert!(p.server.is_closed());
    assert!(
        matches!(
            p.client_events.last(),
            Some(Event::Closed(CloseReason::PeerError {
                code: ErrorCode::UNSUPPORTED_SECURITY_MODE,
                ..
            }))
        ),
        "{:?}",
        p.client_events
    );
}

#[test]
fn a_hello_ack_choosing_an_unoffered_mode_is_a_downgrade_704() {
    let mut client = Connection::new(
        Side::Client,
        Arc::new(Config::new("a")),
        Instant::now(),
        UNIX,
    );
    drain(&mut client);
    let ack = HelloAck {
        version: 2,
        node_id: "evil".into(),
        security: SecurityMode::Token,
        max_frame: 65536,
        heartbeat_ms: 0,
        stream_window: None,
        max_streams: None,
        compression: None,
        host: None,
        quic_streams: false,
    };
    let (events, wire) = inject(
        &mut client,
        &raw(MessageType::HelloAck, 0, ack.to_bytes()),
        Instant::now(),
    );
    assert_eq!(error_codes(&wire), vec![704]);
    assert!(matches!(events.last(), Some(Event::Closed(_))));
}

#[test]
fn a_mode_offered_without_its_provider_is_not_reported_as_a_downgrade() {
    // An unvalidated configuration (the runtime's builders refuse it) offers token with no
    // token provider; the server validly picks token. That is this side's fault (204), not
    // the server's downgrade (704).
    let cfg = Config {
        security: vec![SecurityMode::Token],
        ..Config::new("a")
    };
    assert!(cfg.validate().is_err());
    let mut client = Connection::new(Side::Client, Arc::new(cfg), Instant::now(), UNIX);
    drain(&mut client);
    let ack = HelloAck {
        version: 2,
        node_id: "server".into(),
        security: SecurityMode::Token,
        max_frame: 65536,
        heartbeat_ms: 0,
        stream_window: None,
        max_streams: None,
        compression: None,
        host: None,
        quic_streams: false,
    };
    let (events, wire) = inject(
        &mut client,
        &raw(MessageType::HelloAck, 0, ack.to_bytes()),
        Instant::now(),
    );
    assert_eq!(
        error_codes(&wire),
        vec![ErrorCode::UNSUPPORTED_SECURITY_MODE.0]
    );
    assert!(matches!(events.last(), Some(Event::Closed(_))));
}

#[test]
fn frames_before_hello_are_refused() {
    let mut p = Pair::new(Config::new("a"), Config::new("b"));
    let (_, wire) = inject(&mut p.server, &raw(MessageType::Ping, 0, &b""[..]), p.now);
    assert_eq!(error_codes(&wire), vec![ErrorCode::UNEXPECTED_MESSAGE.0]);
}

#[test]
fn ping_is_answered_by_pong_echoing_payload_and_correlation_with_response() {
    let mut p = Pair::connected();
    for size in [0usize, 1, 64, 1024] {
        let payload = Bytes::from((0..size).map(|i| i as u8).collect::<Vec<_>>());
        let mut ping = raw(MessageType::Ping, 0, payload.clone());
        ping[16..20].copy_from_slice(&0xDEAD_BEEFu32.to_be_bytes());
        let (events, wire) = inject(&mut p.server, &ping, p.now);
        assert!(events.is_empty());
        let pong = &frames_of(&wire)[0];
        assert_eq!(pong.msg_type(), MessageType::Pong);
        assert_eq!(pong.stream_id(), 0);
        assert_eq!(pong.payload, payload);
        assert_eq!(pong.header.correlation_id, 0xDEAD_BEEF);
        assert!(pong.header.flags.contains(Flags::RESPONSE));
    }
}

#[test]
fn client_ping_reports_rtt_from_the_times_passed_in() {
    let mut p = Pair::connected();
    let id = p.client.ping(Bytes::from_static(b"hi")).unwrap();
    let wire = drain(&mut p.client);
    p.advance(Duration::from_micros(250));
    let (_, wire) = inject(&mut p.server, &wire, p.now);
    let (events, _) = inject(&mut p.client, &wire, p.now);
    assert_eq!(
        events,
        vec![Event::Pong {
            correlation_id: id,
            payload: Bytes::from_static(b"hi"),
            rtt: Duration::from_micros(250)
        }]
    );
    assert_eq!(p.client.rtt(), Some(Duration::from_micros(250)));
    assert!(matches!(
        p.client.ping(Bytes::from(vec![0; 1025])),
        Err(SendError::TooLarge { .. })
    ));
}

#[test]
fn idle_client_sends_heartbeats_and_both_sides_stay_up() {
    let hb = Duration::from_secs(1);
    let cfg = |n: &str| Config {
        heartbeat: hb,
        ..Config::new(n)
    };
    let mut p = Pair::connected_with(cfg("c"), cfg("s"));
    for _ in 0..20 {
        let next = [p.client.poll_timeout(), p.server.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
            .unwrap();
        p.now = next;
        p.timers();
        p.run();
    }
    assert!(p.client.is_established() && p.server.is_established());
    assert!(
        p.client.stats().heartbeats_sent >= 10,
        "{:?}",
        p.client.stats()
    );
    assert!(
        !p.server_events
            .iter()
            .any(|e| matches!(e, Event::HeartbeatMissed { .. })),
        "{:?}",
        p.server_events
    );
}

#[test]
fn a_silent_peer_surfaces_missed_heartbeats_then_108() {
    let hb = Duration::from_secs(1);
    let cfg = |n: &str| Config {
        heartbeat: hb,
        max_missed_heartbeats: 3,
        ..Config::new(n)
    };
    let mut p = Pair::connected_with(cfg("c"), cfg("s"));
    // The client vanishes: only the server's timers run.
    let mut missed = Vec::new();
    let mut wire = Vec::new();
    for _ in 0..10 {
        let Some(t) = p.server.poll_timeout() else {
            break;
        };
        p.now = t;
        p.server.handle_timeout(p.now);
        while let Some(e) = p.server.poll_event() {
            missed.push(e);
        }
        wire.extend(drain(&mut p.server));
    }
    assert!(matches!(missed[0], Event::HeartbeatMissed { missed: 1 }));
    assert!(matches!(missed[1], Event::HeartbeatMissed { missed: 2 }));
    assert!(matches!(missed[2], Event::HeartbeatMissed { missed: 3 }));
    assert_eq!(missed[3], Event::Closed(CloseReason::HeartbeatTimeout));
    assert_eq!(error_codes(&wire), vec![108]);
    assert!(p.server.is_drained());
}

#[test]
fn hello_must_arrive_within_the_handshake_timeout_107() {
    let server = Config {
        handshake_timeout: Duration::from_millis(500),
        ..Config::new("s")
    };
    let now = Instant::now();
    let mut s = Connection::new(Side::Server, Arc::new(server), now, UNIX);
    // A slow-drip peer: one byte of HELLO.
    s.handle_input(&[0x52], now);
    assert!(s.poll_event().is_none());
    let deadline = s.poll_timeout().unwrap();
    assert_eq!(deadline, now + Duration::from_millis(500));
    s.handle_timeout(deadline);
    assert_eq!(
        s.poll_event(),
        Some(Event::Closed(CloseReason::HandshakeTimeout))
    );
    assert_eq!(error_codes(&drain(&mut s)), vec![107]);
}

#[test]
fn close_drains_queued_frames_then_both_sides_close() {
    let mut p = Pair::connected();
    for i in 0..5u8 {
        p.client
            .send(
                101,
                MessageType::StreamData,
                Bytes::from(vec![i; 10]),
                SendOptions::default(),
            )
            .unwrap();
    }
    p.client.close(0, "done");
    assert_eq!(p.client.state(), State::Closing);
    assert_eq!(
        p.client.send(
            101,
            MessageType::StreamData,
            Bytes::new(),
            SendOptions::default()
        ),
        Err(SendError::Closing)
    );
    let wire = drain(&mut p.client);
    let types: Vec<_> = frames_of(&wire).iter().map(|f| f.msg_type()).collect();
    assert_eq!(
        types.last(),
        Some(&MessageType::Close),
        "CLOSE goes last: {types:?}"
    );
    assert_eq!(
        types
            .iter()
            .filter(|t| **t == MessageType::StreamData)
            .count(),
        5
    );

    let (mut events, answer) = inject(&mut p.server, &wire, p.now);
    // The connection ends once its answering CLOSE has been handed to the transport.
    events.extend(std::iter::from_fn(|| p.server.poll_event()));
    assert_eq!(
        take_frames(&mut events.clone()).len(),
        5,
        "in-flight frames delivered"
    );
    assert!(events.contains(&Event::CloseRequested {
        code: 0,
        reason: "done".into()
    }));
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed(CloseReason::Peer { code: 0, .. }))
        ),
        "{events:?}"
    );
    assert!(p.server.is_drained());
    let close = frames_of(&answer);
    assert_eq!(close.last().unwrap().msg_type(), MessageType::Close);

    let (events, _) = inject(&mut p.client, &answer, p.now);
    assert_eq!(
        events,
        vec![Event::Closed(CloseReason::Local {
            code: 0,
            reason: "done".into()
        })]
    );
    assert!(p.client.is_drained());
}

#[test]
fn close_without_answer_times_out() {
    let mut p = Pair::connected();
    p.client.close(0, "bye");
    drain(&mut p.client);
    let t = p.client.poll_timeout().unwrap();
    p.client.handle_timeout(t);
    assert_eq!(
        p.client.poll_event(),
        Some(Event::Closed(CloseReason::CloseTimeout))
    );
    assert!(p.client.is_drained());
}

#[test]
fn eof_without_close_is_reported() {
    let mut p = Pair::connected();
    p.server.handle_eof(p.now);
    assert_eq!(
        p.server.poll_event(),
        Some(Event::Closed(CloseReason::TransportClosed))
    );
}

#[test]
fn requests_and_responses_match_by_correlation_id() {
    let mut p = Pair::connected();
    let a = p
        .client
        .request(
            101,
            MessageType::HealthCheck,
            Bytes::from_static(b"\x80"),
            SendOptions::default(),
        )
        .unwrap();
    let b = p
        .client
        .request(
            101,
            MessageType::HealthCheck,
            Bytes::from_static(b"\x80"),
            SendOptions::default(),
        )
        .unwrap();
    assert_ne!(a, b);
    p.run();
    let reqs = p.take_server_frames();
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::StreamOpened {
            id: 101,
            open: None
        }
    )));
    for r in reqs.iter().rev() {
        p.server
            .respond(
                &r.header,
                MessageType::HealthCheck,
                Bytes::from_static(b"\x81\xa6status\xa7serving"),
                SendOptions::default(),
            )
            .unwrap();
    }
    p.run();
    let resp: Vec<u32> = p
        .take_client_frames()
        .iter()
        .map(|f| {
            assert!(f.header.flags.contains(Flags::RESPONSE));
            f.header.correlation_id
        })
        .collect();
    assert_eq!(resp, vec![b, a]);
}

#[test]
fn an_error_on_a_stream_is_a_peer_error_for_that_request() {
    let mut p = Pair::connected();
    let id = p
        .client
        .request(
            101,
            MessageType::JobRequest,
            Bytes::from_static(b"\x80"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    let req = p.take_server_frames().pop().unwrap();
    p.server
        .send_error(
            ErrorCode::JOB_REJECTED,
            "no capacity",
            req.stream_id(),
            req.header.correlation_id,
        )
        .unwrap();
    p.run();
    assert!(p.client_events.iter().any(|e| matches!(e,
        Event::PeerError { code: ErrorCode::JOB_REJECTED, stream_id: 101, correlation_id, .. } if *correlation_id == id)),
        "{:?}", p.client_events);
    assert!(
        p.take_client_frames().is_empty(),
        "not delivered as stream data"
    );
}

#[test]
fn ack_flag_is_answered_with_stream_ack() {
    let mut p = Pair::connected();
    let opts = SendOptions {
        flags: Flags::ACK,
        correlation_id: 9,
        ..Default::default()
    };
    p.client
        .send(
            1001,
            MessageType::StreamData,
            Bytes::from_static(b"abc"),
            opts,
        )
        .unwrap();
    p.run();
    assert!(
        p.client_events.contains(&Event::Acked {
            stream_id: 1001,
            correlation_id: 9
        }),
        "{:?}",
        p.client_events
    );
}

#[test]
fn the_application_cannot_send_connection_frames() {
    let mut p = Pair::connected();
    for t in [
        MessageType::Hello,
        MessageType::Pong,
        MessageType::Close,
        MessageType::AuthChallenge,
        MessageType::Unknown(0x99),
    ] {
        assert_eq!(
            p.client.send(0, t, Bytes::new(), SendOptions::default()),
            Err(SendError::ReservedType(t))
        );
    }
    assert_eq!(
        p.client.send(
            0,
            MessageType::StreamData,
            Bytes::new(),
            SendOptions::default()
        ),
        Err(SendError::ReservedType(MessageType::StreamData))
    );
    let cmp = SendOptions {
        flags: Flags::CMP,
        ..Default::default()
    };
    assert_eq!(
        p.client
            .send(101, MessageType::StreamData, Bytes::new(), cmp),
        Err(SendError::InvalidFlags(Flags::CMP))
    );
    let big = Bytes::from(vec![0u8; p.client.peer().unwrap().max_frame as usize + 1]);
    assert!(matches!(
        p.client
            .send(1001, MessageType::StreamData, big, SendOptions::default()),
        Err(SendError::TooLarge { .. })
    ));
    // The peer's streams must be opened by the peer.
    assert_eq!(
        p.client.send(
            100,
            MessageType::StreamData,
            Bytes::new(),
            SendOptions::default()
        ),
        Err(SendError::Stream(StreamError::Unknown(100)))
    );
}

#[test]
fn explicit_stream_open_is_acknowledged_with_credit() {
    let mut p = Pair::connected();
    let open = StreamOpen {
        kind: "job".into(),
        window: None,
        metadata: Default::default(),
    };
    let id = p.client.open_stream(StreamClass::Job, Some(open)).unwrap();
    assert_eq!(id % 2, 1);
    p.run();
    assert!(p.server_events.iter().any(
        |e| matches!(e, Event::StreamOpened { id: i, open: Some(o) } if *i == id && o.kind == "job")
    ));
    assert!(
        p.client_events
            .iter()
            .any(|e| matches!(e, Event::Acked { stream_id, .. } if *stream_id == id))
    );
    // Opening the same id again is 305.
    let (_, wire) = inject(
        &mut p.server,
        &raw(
            MessageType::StreamOpen,
            id,
            StreamOpen {
                kind: String::new(),
                window: None,
                metadata: Default::default(),
            }
            .to_bytes(),
        ),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![305]);
}

#[test]
fn eos_and_stream_close_finish_each_half() {
    let mut p = Pair::connected();
    let eos = SendOptions {
        flags: Flags::EOS,
        ..Default::default()
    };
    p.client
        .send(
            1001,
            MessageType::StreamData,
            Bytes::from_static(b"last"),
            eos,
        )
        .unwrap();
    assert_eq!(
        p.client.send(
            1001,
            MessageType::StreamData,
            Bytes::new(),
            SendOptions::default()
        ),
        Err(SendError::Stream(StreamError::Closed(1001)))
    );
    p.run();
    assert!(
        p.server_events
            .contains(&Event::StreamFinished { id: 1001 })
    );
    // Server finishes its half with STREAM_CLOSE: the stream is gone on both sides.
    p.server.finish_stream(1001).unwrap();
    p.run();
    assert!(
        p.client_events
            .contains(&Event::StreamFinished { id: 1001 })
    );
    assert_eq!(p.client.open_streams(), 0);
    assert_eq!(p.server.open_streams(), 0);
    // Data after the sender finished is 304.
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::StreamData, 1003, &b"x"[..]),
        p.now,
    );
    assert!(error_codes(&wire).is_empty());
    let mut f = raw(MessageType::StreamData, 1003, &b"y"[..]);
    f[4] = Flags::EOS.bits();
    inject(&mut p.server, &f, p.now);
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::StreamData, 1003, &b"z"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![304]);
}

#[test]
fn flow_control_blocks_the_sender_until_credit_arrives() {
    let window = WindowStrategy::Fixed(1000);
    let server = Config {
        window,
        manual_flow_control: true,
        ..Config::new("s")
    };
    let client = Config {
        window,
        ..Config::new("c")
    };
    let mut p = Pair::connected_with(client, server);
    let chunk = Bytes::from(vec![7u8; 400]);
    p.client
        .send(
            101,
            MessageType::StreamData,
            chunk.clone(),
            SendOptions::default(),
        )
        .unwrap();
    p.client
        .send(
            101,
            MessageType::StreamData,
            chunk.clone(),
            SendOptions::default(),
        )
        .unwrap();
    let blocked = p.client.send(
        101,
        MessageType::StreamData,
        chunk.clone(),
        SendOptions::default(),
    );
    assert!(matches!(
        blocked,
        Err(SendError::Stream(StreamError::Blocked {
            id: 101,
            available: 200,
            wanted: 400
        }))
    ));
    p.run();
    assert_eq!(p.take_server_frames().len(), 2);
    // The server application consumes the data: credit flows back.
    p.server.release(101, 800);
    p.run();
    assert!(
        p.client_events.contains(&Event::StreamWritable { id: 101 }),
        "{:?}",
        p.client_events
    );
    p.client
        .send(101, MessageType::StreamData, chunk, SendOptions::default())
        .unwrap();
}

#[test]
fn a_peer_overrunning_its_credit_gets_its_stream_reset_302() {
    let server = Config {
        window: WindowStrategy::Fixed(1000),
        manual_flow_control: true,
        ..Config::new("s")
    };
    let mut p = Pair::connected_with(Config::new("c"), server);
    // A hostile client ignores the credit and sends 1500 bytes.
    let mut wire = raw(MessageType::StreamData, 101, vec![0u8; 1000]);
    wire.extend(raw(MessageType::StreamData, 101, vec![0u8; 500]));
    wire.extend(raw(MessageType::StreamData, 101, vec![0u8; 10])); // in flight before the reset
    let (events, out) = inject(&mut p.server, &wire, p.now);
    assert!(
        events.iter().any(|e| matches!(
            e,
            Event::StreamReset {
                id: 101,
                code: 302,
                remote: false,
                ..
            }
        )),
        "{events:?}"
    );
    let reset = frames_of(&out)
        .into_iter()
        .find(|f| f.msg_type() == MessageType::StreamReset)
        .unwrap();
    assert_eq!(StreamReset::from_bytes(&reset.payload).unwrap().code, 302);
    assert_eq!(
        p.server.stats().dropped_rx,
        1,
        "frames after the reset are dropped, not reopened"
    );
    assert!(p.server.is_established(), "only the stream is lost");
    // The client confirms the reset (it never opened 101 through its API, so there is no
    // stream to report); once the confirmation is in, the id can be used again.
    p.client.handle_input(&out, p.now);
    p.run();
    assert!(p.server.stream_info(101).is_none());
    p.client
        .send(
            101,
            MessageType::StreamData,
            Bytes::from_static(b"again"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    assert_eq!(
        take_frames(&mut events.clone()).len(),
        1,
        "the 1000 bytes within credit were delivered"
    );
    let again = p.take_server_frames();
    assert_eq!(again.len(), 1);
    assert_eq!(&again[0].payload[..], b"again");
    assert!(
        p.server_events
            .iter()
            .any(|e| matches!(e, Event::StreamOpened { id: 101, .. }))
    );
}

#[test]
fn too_many_peer_streams_are_reset_303() {
    let server = Config {
        max_streams: 2,
        ..Config::new("s")
    };
    let mut p = Pair::connected_with(Config::new("c"), server);
    let mut wire = Vec::new();
    for id in [101u32, 103, 105] {
        wire.extend(raw(MessageType::StreamData, id, &b"x"[..]));
    }
    let (events, out) = inject(&mut p.server, &wire, p.now);
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::StreamOpened { .. }))
            .count(),
        2
    );
    let reset = frames_of(&out)
        .into_iter()
        .find(|f| f.msg_type() == MessageType::StreamReset)
        .unwrap();
    assert_eq!(reset.stream_id(), 105);
    assert_eq!(StreamReset::from_bytes(&reset.payload).unwrap().code, 303);
    // And the client side learns the limit from HELLO_ACK: it cannot open a third stream.
    assert!(p.client.open_stream(StreamClass::Job, None).is_ok());
    assert!(p.client.open_stream(StreamClass::Job, None).is_ok());
    assert_eq!(
        p.client.open_stream(StreamClass::Job, None),
        Err(SendError::Stream(StreamError::Limit(2)))
    );
}

#[test]
fn frames_on_an_unopened_stream_of_our_parity_are_300() {
    let mut p = Pair::connected();
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::StreamData, 100, &b"x"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![300]);
}

#[test]
fn stream_management_on_stream_zero_is_301() {
    let mut p = Pair::connected();
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::StreamData, 0, &b"x"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![301]);
}

#[test]
fn resetting_a_stream_drops_its_queued_frames_and_notifies_the_peer() {
    let mut p = Pair::connected();
    p.client
        .send(
            101,
            MessageType::StreamData,
            Bytes::from_static(b"hello"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    for _ in 0..3 {
        p.client
            .send(
                101,
                MessageType::StreamData,
                Bytes::from_static(b"never"),
                SendOptions::default(),
            )
            .unwrap();
    }
    p.client
        .reset_stream(101, ErrorCode::STREAM_CANCELLED.0, "user cancelled")
        .unwrap();
    let wire = drain(&mut p.client);
    let types: Vec<_> = frames_of(&wire).iter().map(|f| f.msg_type()).collect();
    assert_eq!(types, [MessageType::StreamReset]);
    let (events, confirm) = inject(&mut p.server, &wire, p.now);
    assert!(events.iter().any(|e| matches!(
        e,
        Event::StreamReset {
            id: 101,
            code: 306,
            remote: true,
            ..
        }
    )));
    let c = &frames_of(&confirm)[0];
    assert!(c.header.flags.contains(Flags::RESPONSE));
    inject(&mut p.client, &confirm, p.now);
    assert_eq!(p.client.open_streams(), 0);
}

/// A connected pair whose client queues at most 64 KiB of data frames.
fn small_queue_pair() -> Pair {
    let client = Config {
        scheduler: SchedulerLimits {
            max_bytes: 64 * 1024,
            ..SchedulerLimits::default()
        },
        ..Config::new("c")
    };
    Pair::connected_with(client, Config::new("s"))
}

#[test]
fn log_frames_are_shed_under_pressure_but_jobs_are_not() {
    let mut p = small_queue_pair();
    let line = Bytes::from(vec![b'l'; 1000]);
    let mut shed = 0;
    for _ in 0..200 {
        if p.client
            .send(
                10_001,
                MessageType::LogEntry,
                line.clone(),
                SendOptions::default(),
            )
            .unwrap()
            == Enqueued::Shed
        {
            shed += 1;
        }
    }
    assert!(shed > 100, "shed {shed}");
    assert_eq!(p.client.shed_frames(), shed);
    // Job frames still get in (queued logs make room), and are delivered.
    for _ in 0..20 {
        assert_eq!(
            p.client.send(
                101,
                MessageType::JobProgress,
                Bytes::from(vec![0u8; 1000]),
                SendOptions::default()
            ),
            Ok(Enqueued::Queued)
        );
    }
    p.run();
    let frames = p.take_server_frames();
    assert_eq!(
        frames
            .iter()
            .filter(|f| f.msg_type() == MessageType::JobProgress)
            .count(),
        20
    );
}

#[test]
fn a_quiet_connection_releases_its_buffers_and_keeps_its_counters_and_pings() {
    let mut p = small_queue_pair();
    let line = Bytes::from(vec![b'l'; 1000]);
    for _ in 0..200 {
        p.client
            .send(
                10_001,
                MessageType::LogEntry,
                line.clone(),
                SendOptions::default(),
            )
            .unwrap();
    }
    let shed = p.client.shed_frames();
    assert!(shed > 100, "shed {shed}");
    // Shrinking with frames queued keeps them; once everything is sent it releases the rest.
    p.client.shrink_buffers();
    assert!(p.client.queued_frames() > 0);
    p.run();
    p.client.shrink_buffers();
    p.server.shrink_buffers();
    assert_eq!(p.client.queued_frames(), 0);
    assert_eq!(
        p.client.shed_frames(),
        shed,
        "shed count survives the release"
    );
    let before = p.client.stats();
    assert!(before.frames_tx > 0 && before.bytes_tx > 0);
    // An application PING outstanding across a shrink still matches its PONG.
    let id = p.client.ping(Bytes::from_static(b"still here")).unwrap();
    let wire = drain(&mut p.client);
    p.client.shrink_buffers();
    p.server.handle_input(&wire, p.now);
    p.server_events
        .extend(std::iter::from_fn(|| p.server.poll_event()));
    let answer = drain(&mut p.server);
    p.server.shrink_buffers();
    p.client.handle_input(&answer, p.now);
    let pong = std::iter::from_fn(|| p.client.poll_event()).find_map(|e| match e {
        Event::Pong {
            correlation_id,
            payload,
            ..
        } => Some((correlation_id, payload)),
        _ => None,
    });
    assert_eq!(pong, Some((id, Bytes::from_static(b"still here"))));
    assert!(p.client.rtt().is_some());
    let after = p.client.stats();
    assert_eq!(after.frames_tx, before.frames_tx + 1);
    assert_eq!(after.frames_rx, before.frames_rx + 1);
}

#[test]
fn a_peer_that_provokes_answers_faster_than_it_reads_is_held_back_not_closed() {
    let server = Config {
        scheduler: SchedulerLimits {
            // PINGs answered in place count by bytes: room for 8 PONGs of 25 bytes.
            max_critical_frames: 8,
            max_critical_bytes: 8 * 25,
            ..SchedulerLimits::default()
        },
        ..Config::new("s")
    };
    let mut p = Pair::connected_with(Config::new("c"), server);
    let pings = 100_000u32;
    let mut flood = Vec::new();
    for i in 0..pings {
        let mut ping = raw(MessageType::Ping, 0, &b"x"[..]);
        ping[16..20].copy_from_slice(&i.to_be_bytes());
        flood.extend(ping);
    }
    p.server.handle_input(&flood, p.now);
    // Decoding stops at the high-water mark (half the critical queue) without a close.
    assert!(
        std::iter::from_fn(|| p.server.poll_event())
            .next()
            .is_none()
    );
    assert_eq!(p.server.queued_frames(), 4);
    assert!(p.server.is_input_held());
    assert!(
        !p.server.wants_input(),
        "the transport is asked to stop reading"
    );
    // Each drain of the queue lets the next frames in; every PING is answered, in order.
    let mut next = 0u32;
    for _ in 0..2 * pings {
        for pong in frames_of(&drain(&mut p.server)) {
            assert_eq!(pong.msg_type(), MessageType::Pong);
            assert_eq!(pong.header.correlation_id, next);
            next += 1;
        }
        assert!(
            p.server.queued_frames() <= 4,
            "the queue never passes its bound"
        );
        if next == pings {
            break;
        }
        assert!(
            std::iter::from_fn(|| p.server.poll_event())
                .next()
                .is_none()
        );
    }
    assert_eq!(next, pings);
    assert!(p.server.is_established());
    assert!(p.server.wants_input());
    assert!(!p.server.is_input_held());
}

#[test]
fn input_is_decoded_lazily_so_events_stay_bounded() {
    let mut p = Pair::connected();
    let mut wire = Vec::new();
    for _ in 0..10_000 {
        wire.extend(raw(MessageType::StatusUpdate, 0, &b"\x80"[..]));
    }
    p.server.handle_input(&wire, p.now);
    assert_eq!(p.server.buffered_input(), wire.len());
    assert!(matches!(p.server.poll_event(), Some(Event::Frame(_))));
    assert_eq!(p.server.buffered_input(), wire.len() - (HEADER_LEN + 1));
}

// ----- the security slot --------------------------------------------------------------

/// A toy mode for testing the slot: the server challenges with a nonce, the client answers
/// with nonce XOR the shared key; afterwards payloads are XOR-masked and carry a 4-byte sum of
/// header and payload as their "tag". Not cryptography: it only exercises the interface.
struct ToyProvider;
const KEY: u8 = 0x5A;

impl HandshakeProvider for ToyProvider {
    fn mode(&self) -> SecurityMode {
        SecurityMode::NoiseXk
    }
    fn new_handshake(&self, side: Side) -> Box<dyn SecurityHandshake> {
        Box::new(ToyHandshake {
            side,
            nonce: [0; 8],
        })
    }
}

struct ToyHandshake {
    side: Side,
    nonce: [u8; 8],
}

impl SecurityHandshake for ToyHandshake {
    fn start(
        &mut self,
        ctx: &HandshakeContext,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        assert!(!ctx.hello_transcript.is_empty());
        if self.side == Side::Server {
            self.nonce = [3; 8];
            out.push(HandshakeMessage {
                msg_type: MessageType::AuthChallenge,
                payload: Bytes::copy_from_slice(&self.nonce),
            });
        }
        Ok(HandshakeStatus::InProgress)
    }

    fn handle(
        &mut self,
        t: MessageType,
        payload: &[u8],
        _now: Instant,
        out: &mut Vec<HandshakeMessage>,
    ) -> Result<HandshakeStatus, SecurityError> {
        match (self.side, t) {
            (Side::Client, MessageType::AuthChallenge) => {
                let proof: Vec<u8> = payload.iter().map(|b| b ^ KEY).collect();
                out.push(HandshakeMessage {
                    msg_type: MessageType::AuthResponse,
                    payload: proof.into(),
                });
                Ok(HandshakeStatus::InProgress)
            }
            (Side::Client, MessageType::AuthSuccess) => Ok(HandshakeStatus::Complete {
                peer_identity: Some("server".into()),
                protector: Some(Box::new(Toy)),
            }),
            (Side::Server, MessageType::AuthResponse) => {
                if payload.iter().zip(self.nonce).all(|(p, n)| *p == n ^ KEY) && payload.len() == 8
                {
                    out.push(HandshakeMessage {
                        msg_type: MessageType::AuthSuccess,
                        payload: Bytes::new(),
                    });
                    Ok(HandshakeStatus::Complete {
                        peer_identity: Some("client".into()),
                        protector: Some(Box::new(Toy)),
                    })
                } else {
                    Err(SecurityError::new(
                        SecurityFault::BadCredentials,
                        "bad proof",
                    ))
                }
            }
            _ => Err(SecurityError::new(
                SecurityFault::UnexpectedMessage,
                "unexpected handshake frame",
            )),
        }
    }
}

struct Toy;
fn tag(header: &[u8], body: &[u8]) -> [u8; 4] {
    let s = header
        .iter()
        .chain(body)
        .fold(0u32, |a, b| a.wrapping_mul(31).wrapping_add(u32::from(*b)));
    s.to_be_bytes()
}
impl RecordProtector for Toy {
    fn overhead(&self) -> usize {
        4
    }
    fn seal(
        &mut self,
        header: &[u8; HEADER_LEN],
        plaintext: &[u8],
        out: &mut BytesMut,
    ) -> Result<(), SecurityError> {
        out.extend(plaintext.iter().map(|b| b ^ KEY));
        let t = tag(header, out);
        out.extend_from_slice(&t);
        Ok(())
    }
    fn open(&mut self, header: &[u8; HEADER_LEN], sealed: Bytes) -> Result<Bytes, SecurityError> {
        let n = sealed
            .len()
            .checked_sub(4)
            .ok_or_else(|| SecurityError::new(SecurityFault::Integrity, "short"))?;
        if tag(header, &sealed[..n]) != sealed[n..] {
            return Err(SecurityError::new(SecurityFault::Integrity, "tag mismatch"));
        }
        Ok(sealed[..n]
            .iter()
            .map(|b| b ^ KEY)
            .collect::<Vec<u8>>()
            .into())
    }
}

fn secure(name: &str) -> Config {
    Config {
        security: vec![SecurityMode::NoiseXk],
        handshakes: vec![Arc::new(ToyProvider)],
        ..Config::new(name)
    }
}

#[test]
fn a_security_handshake_runs_in_the_slot_and_seals_later_frames() {
    let mut p = Pair::connected_with(secure("c"), secure("s"));
    assert_eq!(p.client.peer().unwrap().identity.as_deref(), Some("server"));
    assert_eq!(p.server.peer().unwrap().identity.as_deref(), Some("client"));
    p.client
        .send(
            101,
            MessageType::StreamData,
            Bytes::from_static(b"secret"),
            SendOptions::default(),
        )
        .unwrap();
    let wire = drain(&mut p.client);
    assert!(
        !wire.windows(6).any(|w| w == b"secret"),
        "payload is sealed on the wire"
    );
    let f = &frames_of(&wire)[0];
    assert_eq!(f.header.length, 10, "the header carries the sealed length");
    let (events, _) = inject(&mut p.server, &wire, p.now);
    let frames = take_frames(&mut events.clone());
    assert_eq!(&frames[0].payload[..], b"secret");
}

#[test]
fn one_flipped_bit_in_a_sealed_frame_closes_with_703_and_delivers_nothing() {
    let mut p = Pair::connected_with(secure("c"), secure("s"));
    p.client
        .send(
            101,
            MessageType::StreamData,
            Bytes::from_static(b"secret"),
            SendOptions::default(),
        )
        .unwrap();
    let mut wire = drain(&mut p.client);
    let last = wire.len() - 6;
    wire[last] ^= 0x01;
    let (events, out) = inject(&mut p.server, &wire, p.now);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Frame(_) | Event::StreamOpened { .. }))
    );
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseReason::ProtocolError {
            code: ErrorCode::INTEGRITY_FAILURE,
            ..
        }))
    ));
    // The ERROR (sealed: the keys are intact, only that frame was damaged) reaches the client,
    // which closes on it.
    let errors: Vec<_> = frames_of(&out).into_iter().map(|f| f.msg_type()).collect();
    assert_eq!(errors, [MessageType::Error]);
    let (events, _) = inject(&mut p.client, &out, p.now);
    assert!(
        matches!(
            events.last(),
            Some(Event::Closed(CloseReason::PeerError {
                code: ErrorCode::INTEGRITY_FAILURE,
                ..
            }))
        ),
        "{events:?}"
    );
    // A flipped header bit (authenticated as associated data) is caught too.
    let mut p = Pair::connected_with(secure("c"), secure("s"));
    p.client
        .send(
            101,
            MessageType::StreamData,
            Bytes::from_static(b"secret"),
            SendOptions::default(),
        )
        .unwrap();
    let mut wire = drain(&mut p.client);
    wire[5] ^= 0x01; // priority byte
    let (events, _) = inject(&mut p.server, &wire, p.now);
    assert!(matches!(
        events.last(),
        Some(Event::Closed(CloseReason::ProtocolError {
            code: ErrorCode::INTEGRITY_FAILURE,
            ..
        }))
    ));
}

#[test]
fn application_frames_during_the_handshake_are_refused_200() {
    let mut p = Pair::new(secure("c"), secure("s"));
    let hello = drain(&mut p.client);
    let (_, _) = inject(&mut p.server, &hello, p.now);
    assert_eq!(p.server.state(), State::Handshaking);
    let (events, wire) = inject(
        &mut p.server,
        &raw(MessageType::JobRequest, 101, &b"\x80"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![200]);
    assert!(matches!(events.last(), Some(Event::Closed(_))));
}

#[test]
fn a_failed_handshake_is_reported_with_its_code() {
    let mut p = Pair::new(secure("c"), secure("s"));
    let hello = drain(&mut p.client);
    let (_, ack) = inject(&mut p.server, &hello, p.now);
    assert!(
        frames_of(&ack)
            .iter()
            .any(|f| f.msg_type() == MessageType::AuthChallenge)
    );
    let (_, wire) = inject(
        &mut p.server,
        &raw(MessageType::AuthResponse, 0, &b"wrongkey"[..]),
        p.now,
    );
    assert_eq!(error_codes(&wire), vec![201]);
    let plain_client = Config::new("c");
    let mut q = Pair::new(plain_client, secure("s"));
    q.run();
    assert!(
        q.server.is_closed(),
        "a plaintext HELLO to a listener that requires a secure mode is refused"
    );
}

#[test]
fn pings_answered_in_place_keep_their_order_with_queued_control_frames() {
    let mut p = Pair::connected();
    let ping = |corr: u32, flags: Flags| {
        let mut f = valkyrie_protocol::Frame::new(MessageType::Ping, 0, vec![corr as u8; 16]);
        f.header.correlation_id = corr;
        f.header.flags = flags;
        let mut v = Vec::new();
        f.encode(&mut v);
        v
    };
    let mut wire = Vec::new();
    wire.extend(ping(1, Flags::empty()));
    wire.extend(ping(2, Flags::empty()));
    // An unknown type queues a (non-fatal) ERROR in the critical queue...
    let mut unknown = raw(MessageType::Ping, 0, &b""[..]);
    unknown[3] = 0x7E;
    wire.extend(unknown);
    // ...so this PING takes the queued path, and the next one too while the ERROR waits.
    wire.extend(ping(3, Flags::empty()));
    wire.extend(ping(4, Flags::empty()));
    let (events, out) = inject(&mut p.server, &wire, p.now);
    assert!(events.is_empty());
    let frames = frames_of(&out);
    let kinds: Vec<(MessageType, u32)> = frames
        .iter()
        .map(|f| (f.msg_type(), f.header.correlation_id))
        .collect();
    assert_eq!(
        kinds,
        [
            (MessageType::Pong, 1),
            (MessageType::Pong, 2),
            (MessageType::Error, 0),
            (MessageType::Pong, 3),
            (MessageType::Pong, 4),
        ]
    );
    // In place or queued, a PONG is the same frame.
    for f in frames.iter().filter(|f| f.msg_type() == MessageType::Pong) {
        assert_eq!(f.header.flags, Flags::RESPONSE);
        assert_eq!(f.header.priority, u8::MAX);
        assert_eq!(f.header.stream_id, 0);
        assert_eq!(f.header.timestamp, frames[0].header.timestamp);
        assert_eq!(&f.payload[..], &[f.header.correlation_id as u8; 16][..]);
    }
    // Drivers that take one frame at a time get the same frames.
    p.server.handle_input(&ping(5, Flags::empty()), p.now);
    p.server.handle_input(&ping(6, Flags::empty()), p.now);
    assert!(p.server.poll_event().is_none());
    assert_eq!(p.server.queued_frames(), 2);
    let one = p.server.poll_transmit().unwrap();
    assert_eq!(
        u32::from_be_bytes(one.header[16..20].try_into().unwrap()),
        5
    );
    assert_eq!(&one.payload[..], &[5u8; 16][..]);
    let two = p.server.poll_transmit().unwrap();
    assert_eq!(
        u32::from_be_bytes(two.header[16..20].try_into().unwrap()),
        6
    );
    assert!(p.server.poll_transmit().is_none());
}

#[test]
fn a_server_that_closes_during_the_handshake_ends_the_attempt_with_its_code() {
    // A draining node closes a connection whose HELLO it has not read yet: the HELLO gets no
    // answer but the CLOSE, and the client's attempt ends with the server's code (502
    // "going away": connect again, elsewhere), not a negotiation failure.
    let mut p = Pair::new(Config::new("c"), Config::new("s"));
    let hello = drain(&mut p.client);
    p.server.close(502, "going away");
    p.server.handle_input(&hello, p.now);
    p.server_events
        .extend(std::iter::from_fn(|| p.server.poll_event()));
    let out = drain(&mut p.server);
    let frames = frames_of(&out);
    assert_eq!(
        frames.iter().map(|f| f.msg_type()).collect::<Vec<_>>(),
        [MessageType::Close],
        "only the CLOSE"
    );
    p.client.handle_input(&out, p.now);
    p.client_events
        .extend(std::iter::from_fn(|| p.client.poll_event()));
    assert!(p.client.is_closed());
    assert!(
        p.client_events.iter().any(|e| matches!(
            e,
            Event::Closed(CloseReason::Peer { code: 502, reason }) if reason == "going away"
        )),
        "{:?}",
        p.client_events
    );
}

#[test]
fn early_data_carries_hello_ping_and_health_check_only_the_rest_gets_706() {
    let mut p = Pair::new(Config::new("a"), Config::new("b"));
    p.server.set_early_data(true);
    let mut wire = drain(&mut p.client);
    let mut ping = raw(MessageType::Ping, 0, &b"0rtt"[..]);
    ping[16..20].copy_from_slice(&7u32.to_be_bytes());
    wire.extend(ping);
    wire.extend(raw(MessageType::HealthCheck, 0, &b""[..]));
    let mut job = raw(MessageType::JobRequest, 0, &b"build"[..]);
    job[16..20].copy_from_slice(&9u32.to_be_bytes());
    wire.extend(job.clone());
    let (events, out) = inject(&mut p.server, &wire, p.now);
    let frames = frames_of(&out);
    let types: Vec<MessageType> = frames.iter().map(|f| f.msg_type()).collect();
    assert_eq!(types[0], MessageType::HelloAck, "{types:?}");
    assert!(types.contains(&MessageType::Pong), "{types:?}");
    let error = frames
        .iter()
        .find(|f| f.msg_type() == MessageType::Error)
        .expect("the JOB_REQUEST is refused");
    assert_eq!(
        error.header.correlation_id, 9,
        "the ERROR answers the request"
    );
    assert_eq!(error_codes(&out), vec![ErrorCode::TOO_EARLY.0]);
    assert!(!ErrorCode::TOO_EARLY.is_fatal());
    let delivered: Vec<MessageType> = events
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) => Some(f.msg_type()),
            _ => None,
        })
        .collect();
    assert!(
        !delivered.contains(&MessageType::JobRequest),
        "an early request reached the application: {delivered:?}"
    );
    // The handshake confirmed: the same request is taken.
    p.server.set_early_data(false);
    let (events, out) = inject(&mut p.server, &job, p.now);
    assert!(error_codes(&out).is_empty());
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::Frame(f) if f.msg_type() == MessageType::JobRequest))
    );
    assert!(p.server.is_established());
}
