//! Links over QUIC (`Ctx::connect` to a `quic://` URL): node A's shard dials node B from its
//! own client endpoint, both sides authenticated (`mtls`: B's service sees A's certificate
//! identity), requests answered; when B's QUIC listener closes, the link is sent away, its
//! attempts are refused at once while it stays closed, and it comes back up when it opens;
//! a link to a node whose certificate it does not trust reports why.

mod common;

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::retry::{ExponentialBackoff, Jitter};
use valkyrie_protocol::security::mtls::{self, DevPki, Mtls};
use valkyrie_protocol::{Config, Frame, MessageType, SecurityMode};
use valkyrie_runtime::{ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Node, Reply, Service};

/// What node A's service tells the test.
#[derive(Debug)]
enum Seen {
    Link(LinkState),
    Answer(String),
}

/// Node A's service: a link to `opts`; on every link up, one request asking who it is.
struct Caller {
    opts: ConnectOptions,
    tx: mpsc::Sender<Seen>,
}

impl Service for Caller {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.connect(self.opts.clone());
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, _: LinkId, state: &LinkState) {
        let _ = self.tx.send(Seen::Link(state.clone()));
        if let LinkState::Up { conn, .. } = state {
            let deadline = ctx.now() + Duration::from_secs(5);
            ctx.request(
                *conn,
                101,
                MessageType::JobRequest,
                Bytes::from_static(b"who"),
                deadline,
            )
            .expect("a request on a link that is up");
        }
    }

    fn on_reply(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: u32, reply: Reply) {
        let text = match reply {
            Reply::Answer(f) => String::from_utf8_lossy(&f.payload).into_owned(),
            other => format!("{other:?}"),
        };
        let _ = self.tx.send(Seen::Answer(text));
    }

    fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: Frame) {}
}

fn mtls_config(name: &str) -> Config {
    Config {
        security: vec![SecurityMode::Mtls],
        handshakes: vec![Arc::new(Mtls)],
        ..Config::new(name)
    }
}

fn node_a(opts: ConnectOptions) -> (Node, mpsc::Receiver<Seen>) {
    let (tx, rx) = mpsc::channel();
    let node = Node::builder()
        .without_listeners()
        .shards(1)
        .service(move |_| Caller {
            opts: opts.clone(),
            tx: tx.clone(),
        })
        .start()
        .unwrap();
    (node, rx)
}

/// Wait for what `want` picks out of A's reports (every report before it is passed over).
fn wait_for<T>(
    rx: &mpsc::Receiver<Seen>,
    what: &str,
    mut want: impl FnMut(&Seen) -> Option<T>,
) -> T {
    let t = Instant::now();
    loop {
        let left = Duration::from_secs(10).saturating_sub(t.elapsed());
        let seen = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {what} in 10 s"));
        if let Some(v) = want(&seen) {
            return v;
        }
    }
}

#[test]
fn a_link_dials_quic_with_mtls_and_comes_back_after_the_listener_reopens() {
    let pki = DevPki::generate(&["node-b"], &["agent-9"]).unwrap();
    let mut b = Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .quic_tls(pki.server_config(0).unwrap(), true)
        .protocol(mtls_config("control"))
        .shards(2)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let quic = b.endpoints()[0].to_string();
    let opts = ConnectOptions::new([quic.as_str()])
        .unwrap()
        .protocol(mtls_config("agent"))
        .tls(
            mtls::client_config(
                &pki.client_chain_pem(0),
                &pki.client_key_pem(0),
                &pki.ca_pem,
            )
            .unwrap(),
            Some("node-b".into()),
        )
        .connect_timeout(Duration::from_secs(2))
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(20), Duration::from_millis(100))
                .with_jitter(Jitter::Equal),
        );
    let (a, rx) = node_a(opts);
    let url = wait_for(&rx, "link up", |s| match s {
        Seen::Link(LinkState::Up { url, .. }) => Some(url.to_string()),
        _ => None,
    });
    assert_eq!(url, quic);
    let answer = wait_for(&rx, "answer", |s| match s {
        Seen::Answer(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(answer, "who from x509:agent-9");

    // B's QUIC listener closes: the link is sent away and its attempts are refused.
    b.close_listener(&quic).unwrap();
    let error = wait_for(&rx, "a refused attempt", |s| match s {
        Seen::Link(LinkState::Waiting { error, .. }) => Some(error.clone()),
        _ => None,
    });
    assert!(error.starts_with(&quic), "{error}");
    assert!(
        !error.contains("timed out"),
        "a closed listener let the handshake time out instead of refusing it: {error}"
    );

    b.open_listener(&quic).unwrap();
    wait_for(&rx, "link up again", |s| {
        matches!(s, Seen::Link(LinkState::Up { .. })).then_some(())
    });
    let answer = wait_for(&rx, "answer", |s| match s {
        Seen::Answer(a) => Some(a.clone()),
        _ => None,
    });
    assert_eq!(answer, "who from x509:agent-9");
    a.shutdown();
    a.join();
    b.shutdown();
    b.join();
}

#[test]
fn a_link_to_an_untrusted_quic_node_says_why() {
    let pki = DevPki::generate(&["node-b"], &[]).unwrap();
    let other = DevPki::generate(&["node-b"], &[]).unwrap();
    let tls =
        mtls::server_config_without_client_auth(&pki.server_chain_pem(0), &pki.server_key_pem(0))
            .unwrap();
    let b = Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .quic_tls(tls, false)
        .shards(1)
        .service(|_| common::Accept)
        .start()
        .unwrap();
    let opts = ConnectOptions::new([b.endpoints()[0].to_string()])
        .unwrap()
        .tls(
            mtls::server_only_client_config(&other.ca_pem).unwrap(),
            Some("node-b".into()),
        )
        .connect_timeout(Duration::from_secs(2));
    let (a, rx) = node_a(opts);
    let error = wait_for(&rx, "a failed attempt", |s| match s {
        Seen::Link(LinkState::Waiting { error, .. }) => Some(error.clone()),
        Seen::Link(LinkState::Up { .. }) => panic!("a node with an untrusted certificate"),
        _ => None,
    });
    assert!(error.contains("certificate"), "{error}");
    a.shutdown();
    a.join();
}
