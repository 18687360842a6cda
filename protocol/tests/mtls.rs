//! mtls end to end between two in-memory connections, each under a [`TlsSession`]: both
//! certificates verified, identities handed to the connections, frames sealed by TLS; a
//! certificate from another CA, a missing client certificate, a flipped bit in a record, a
//! plaintext HELLO to a TLS listener, a downgraded offer inside TLS, and zero_trust over mtls.

mod common;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use common::{UNIX, drain};
use valkyrie_protocol::security::SecurityError;
use valkyrie_protocol::security::mtls::{self, DevPki, Mtls, TlsSession};
use valkyrie_protocol::security::zero_trust::{Policy, ZeroTrust};
use valkyrie_protocol::{
    CloseReason, Config, Connection, ErrorCode, Event, MessageType, SecurityMode, SendOptions, Side,
};

fn mtls_config(node: &str, zero_trust: Option<Policy>) -> Config {
    match zero_trust {
        None => Config {
            security: vec![SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            ..Config::new(node)
        },
        Some(policy) => Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
            policy: Some(Arc::new(policy)),
            ..Config::new(node)
        },
    }
}

/// One side: a connection under a TLS session, and what happened to it.
struct Side1 {
    conn: Connection,
    tls: TlsSession,
    events: Vec<Event>,
    error: Option<SecurityError>,
}

impl Side1 {
    /// Encrypt what the connection queued, plus pending TLS bytes.
    fn output(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        let plain = drain(&mut self.conn);
        if self.error.is_none() && !plain.is_empty() {
            self.tls.seal(&plain, &mut out).unwrap();
        }
        self.tls.transmit(&mut out);
        out
    }

    fn input(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() || self.error.is_some() {
            return;
        }
        if let Err(e) = self
            .conn
            .handle_tls_input(&mut self.tls, data, now, &mut Vec::new())
        {
            self.error = Some(e);
            self.conn.handle_eof(now);
        }
        self.events
            .extend(std::iter::from_fn(|| self.conn.poll_event()));
    }
}

struct TlsPair {
    client: Side1,
    server: Side1,
    now: Instant,
}

impl TlsPair {
    fn new(
        client_tls: TlsSession,
        server_tls: TlsSession,
        client: Config,
        server: Config,
    ) -> TlsPair {
        let now = Instant::now();
        let side = |side, cfg, tls| Side1 {
            conn: Connection::new(side, Arc::new(cfg), now, UNIX),
            tls,
            events: Vec::new(),
            error: None,
        };
        TlsPair {
            client: side(Side::Client, client, client_tls),
            server: side(Side::Server, server, server_tls),
            now,
        }
    }

    fn run(&mut self) {
        for _ in 0..100 {
            let a = self.client.output();
            self.server.input(&a, self.now);
            let b = self.server.output();
            self.client.input(&b, self.now);
            if a.is_empty() && b.is_empty() {
                return;
            }
        }
        panic!("pair did not settle");
    }
}

fn sessions(pki: &DevPki, client_pki: &DevPki) -> (TlsSession, TlsSession) {
    let s = pki.server_config(0).unwrap();
    let c = mtls::client_config(
        &client_pki.client_chain_pem(0),
        &client_pki.client_key_pem(0),
        &pki.ca_pem,
    )
    .unwrap();
    (
        TlsSession::client(c, "control").unwrap(),
        TlsSession::server(s).unwrap(),
    )
}

/// Client and server in mtls mode; the client's certificate is from `client_pki`.
fn mtls_pair(pki: &DevPki, client_pki: &DevPki) -> TlsPair {
    let (ct, st) = sessions(pki, client_pki);
    TlsPair::new(
        ct,
        st,
        mtls_config("agent-7", None),
        mtls_config("control", None),
    )
}

fn pki() -> DevPki {
    DevPki::generate(&["control"], &["agent-7"]).unwrap()
}

fn closed_with(events: &[Event], code: ErrorCode) -> bool {
    events.iter().any(|e| {
        matches!(e, Event::Closed(CloseReason::ProtocolError { code: c, .. }
            | CloseReason::PeerError { code: c, .. }) if *c == code)
    })
}

#[test]
fn mtls_verifies_both_certificates_and_carries_frames() {
    let pki = pki();
    let mut p = mtls_pair(&pki, &pki);
    p.run();
    assert!(p.client.conn.is_established(), "{:?}", p.client.events);
    assert!(p.server.conn.is_established(), "{:?}", p.server.events);
    let server_peer = p.server.conn.peer().unwrap();
    assert_eq!(server_peer.security, SecurityMode::Mtls);
    assert_eq!(server_peer.identity.as_deref(), Some("x509:agent-7"));
    assert_eq!(
        p.client.conn.peer().unwrap().identity.as_deref(),
        Some("x509:control")
    );
    assert_eq!(
        p.client.tls.key_exchange().as_deref(),
        Some("X25519MLKEM768")
    );

    let secret = Bytes::from_static(b"the job's secret parameters");
    p.client
        .conn
        .send(
            1,
            MessageType::JobRequest,
            secret.clone(),
            SendOptions::default(),
        )
        .unwrap();
    let wire = p.client.output();
    assert!(!wire.windows(secret.len()).any(|w| w == &secret[..]));
    p.server.input(&wire, p.now);
    assert!(p.server.events.iter().any(|e| matches!(e,
        Event::Frame(f) if f.header.msg_type == MessageType::JobRequest && f.payload == secret)));
    p.client.conn.ping(Bytes::from_static(b"over tls")).unwrap();
    p.run();
    assert!(
        p.client
            .events
            .iter()
            .any(|e| matches!(e, Event::Pong { .. }))
    );
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_201() {
    let (pki, rogue) = (pki(), pki());
    let mut p = mtls_pair(&pki, &rogue);
    p.run();
    assert!(!p.server.conn.is_established());
    let err = p
        .server
        .error
        .as_ref()
        .expect("server refused the certificate");
    assert_eq!(err.code(), ErrorCode::AUTH_FAILED, "{err}");
    // The client hears the alert and delivers nothing.
    assert!(p.client.error.is_some());
    assert!(!p.client.conn.is_established());
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_201() {
    let (pki, rogue) = (pki(), pki());
    // The client trusts `pki`'s CA; the server presents `rogue`'s certificate.
    let s = mtls::server_config(
        &rogue.server_chain_pem(0),
        &rogue.server_key_pem(0),
        &pki.ca_pem,
    )
    .unwrap();
    let c = pki.client_config(0).unwrap();
    let mut p = TlsPair::new(
        TlsSession::client(c, "control").unwrap(),
        TlsSession::server(s).unwrap(),
        mtls_config("agent-7", None),
        mtls_config("control", None),
    );
    p.run();
    let err = p.client.error.as_ref().expect("client refused the server");
    assert_eq!(err.code(), ErrorCode::AUTH_FAILED, "{err}");
    assert!(!p.server.conn.is_established());
}

#[test]
fn a_client_without_a_certificate_is_refused() {
    let pki = pki();
    let s = pki.server_config(0).unwrap();
    let mut roots = mtls::rustls::RootCertStore::empty();
    for c in mtls::rustls::pki_types::pem::PemObject::pem_slice_iter(&pki.ca_pem[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let anon = mtls::rustls::ClientConfig::builder_with_provider(mtls::provider())
        .with_protocol_versions(&[&mtls::rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut p = TlsPair::new(
        TlsSession::client(Arc::new(anon), "control").unwrap(),
        TlsSession::server(s).unwrap(),
        mtls_config("agent-7", None),
        mtls_config("control", None),
    );
    p.run();
    let err = p.server.error.as_ref().expect("server refused");
    assert_eq!(err.code(), ErrorCode::AUTH_FAILED, "{err}");
    assert!(!p.server.conn.is_established() && !p.client.conn.is_established());
}

#[test]
fn one_flipped_bit_in_a_record_ends_the_session_and_delivers_nothing() {
    let pki = pki();
    let mut p = mtls_pair(&pki, &pki);
    p.run();
    p.server.events.clear();
    p.client
        .conn
        .send(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"x"),
            SendOptions::default(),
        )
        .unwrap();
    let mut wire = p.client.output();
    let last = wire.len() - 3;
    wire[last] ^= 0x10;
    p.server.input(&wire, p.now);
    let err = p.server.error.as_ref().expect("tampered record refused");
    assert_eq!(err.code(), ErrorCode::INTEGRITY_FAILURE, "{err}");
    assert!(
        !p.server.events.iter().any(|e| matches!(e, Event::Frame(_))),
        "{:?}",
        p.server.events
    );
    assert!(p.server.conn.is_closed());
}

#[test]
fn a_plaintext_hello_to_a_tls_listener_is_refused() {
    let pki = pki();
    let (_, mut st) = sessions(&pki, &pki);
    let mut plain = Connection::new(
        Side::Client,
        Arc::new(Config::new("agent-7")),
        Instant::now(),
        UNIX,
    );
    let hello = drain(&mut plain);
    let err = st.receive(&hello, &mut Vec::new()).unwrap_err();
    assert!(err.message.starts_with("tls:"), "{err}");
    // A fatal alert goes back.
    let mut alert = Vec::new();
    assert!(st.transmit(&mut alert) > 0);
    assert_eq!(alert[0], 21, "an alert record");
}

#[test]
fn a_plaintext_offer_inside_tls_to_an_mtls_server_is_refused() {
    let pki = pki();
    let (ct, st) = sessions(&pki, &pki);
    let mut p = TlsPair::new(ct, st, Config::new("agent-7"), mtls_config("control", None));
    p.run();
    assert!(!p.server.conn.is_established());
    assert!(
        closed_with(&p.server.events, ErrorCode::UNSUPPORTED_SECURITY_MODE)
            || closed_with(&p.server.events, ErrorCode::NEGOTIATION_FAILED),
        "{:?}",
        p.server.events
    );
}

#[test]
fn mtls_without_a_tls_transport_fails_201() {
    let mut p = common::Pair::new(mtls_config("agent-7", None), mtls_config("control", None));
    p.run();
    assert!(!p.server.is_established());
    assert!(
        closed_with(&p.server_events, ErrorCode::AUTH_FAILED),
        "{:?}",
        p.server_events
    );
}

#[test]
fn zero_trust_over_mtls_authorises_by_certificate_name() {
    let pki = DevPki::generate(&["control"], &["agent-7"]).unwrap();
    let (ct, st) = sessions(&pki, &pki);
    let policy = Policy::parse("x509:agent-7 JOB_*\nx509:someone-else STREAM_*\n").unwrap();
    let mut p = TlsPair::new(
        ct,
        st,
        Config {
            security: vec![SecurityMode::ZeroTrust],
            handshakes: vec![Arc::new(ZeroTrust::over(Mtls))],
            ..Config::new("agent-7")
        },
        mtls_config("control", Some(policy)),
    );
    p.run();
    assert!(p.server.conn.is_established(), "{:?}", p.server.events);
    assert_eq!(
        p.server.conn.peer().unwrap().security,
        SecurityMode::ZeroTrust
    );
    p.server.events.clear();
    p.client
        .conn
        .send(
            1,
            MessageType::JobRequest,
            Bytes::from_static(b"ok"),
            SendOptions::default(),
        )
        .unwrap();
    p.client
        .conn
        .send(
            3,
            MessageType::StreamData,
            Bytes::from_static(b"no"),
            SendOptions::default(),
        )
        .unwrap();
    p.run();
    let frames: Vec<_> = p
        .server
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Frame(f) => Some(f.header.msg_type),
            _ => None,
        })
        .collect();
    assert_eq!(frames, vec![MessageType::JobRequest]);
    assert!(
        p.server
            .events
            .iter()
            .any(|e| matches!(e, Event::Denied { .. })),
        "{:?}",
        p.server.events
    );
    assert!(
        p.client.events.iter().any(|e| matches!(
            e,
            Event::PeerError {
                code: ErrorCode::UNAUTHORISED,
                ..
            }
        )),
        "{:?}",
        p.client.events
    );
    assert!(p.client.conn.is_established() && p.server.conn.is_established());
}
