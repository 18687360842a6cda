//! mtls: the TLS 1.3 session under the frames, both sides, fed arbitrary bytes from a hostile
//! peer in arbitrary pieces. The first byte picks the side; each later piece is one length
//! byte and that many bytes. Checks that nothing panics, that an error ends the session for
//! good, and that no frame reaches the connection without a verified certificate.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use valkyrie_protocol::security::mtls::{DevPki, Mtls, TlsSession, rustls};
use valkyrie_protocol::{Config, Connection, Event, SecurityMode, Side};

struct Setup {
    server: Arc<rustls::ServerConfig>,
    client: Arc<rustls::ClientConfig>,
    protocol: Arc<Config>,
}

fn setup() -> &'static Setup {
    static S: OnceLock<Setup> = OnceLock::new();
    S.get_or_init(|| {
        let pki = DevPki::generate(&["node"], &["agent"]).unwrap();
        Setup {
            server: pki.server_config(0).unwrap(),
            client: pki.client_config(0).unwrap(),
            protocol: Arc::new(Config {
                security: vec![SecurityMode::Mtls],
                handshakes: vec![Arc::new(Mtls)],
                ..Config::new("fuzz")
            }),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, mut rest)) = data.split_first() else {
        return;
    };
    let s = setup();
    let now = Instant::now();
    let (side, mut tls) = if pick & 1 == 0 {
        (Side::Server, TlsSession::server(s.server.clone()).unwrap())
    } else {
        (
            Side::Client,
            TlsSession::client(s.client.clone(), "node").unwrap(),
        )
    };
    let mut conn = Connection::new(side, s.protocol.clone(), now, 1_750_000_000);
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    tls.transmit(&mut out);
    let mut failed = false;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (piece, tail) = tail.split_at(n);
        rest = tail;
        match conn.handle_tls_input(&mut tls, piece, now, &mut scratch) {
            Ok(_) => assert!(!failed, "a failed session accepted bytes"),
            Err(_) => failed = true,
        }
        out.clear();
        tls.transmit(&mut out);
        while let Some(ev) = conn.poll_event() {
            assert!(
                !matches!(ev, Event::Frame(_) | Event::Connected(_)),
                "a frame or connection without a verified certificate: {ev:?}"
            );
        }
    }
    assert!(
        tls.peer_identity().is_none(),
        "the fuzzer cannot forge a certificate"
    );
});
