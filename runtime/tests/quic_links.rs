//! Links over QUIC (`Ctx::connect` to a `quic://` URL): node A's shard dials node B from its
//! own client endpoint, both sides authenticated (`mtls`: B's service sees A's certificate
//! identity), requests answered; when B's QUIC listener closes, the link is sent away, its
//! attempts are refused at once while it stays closed, and it comes back up when it opens;
//! a link to a node whose certificate it does not trust reports why.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::link_caller::{Seen, node_a, wait_answer, wait_failure, wait_for, wait_up};
use valkyrie_protocol::retry::{ExponentialBackoff, Jitter};
use valkyrie_protocol::security::mtls::{self, DevPki, Mtls};
use valkyrie_protocol::{Config, SecurityMode};
use valkyrie_runtime::{ConnectOptions, LinkState, Node};

fn mtls_config(name: &str) -> Config {
    Config {
        security: vec![SecurityMode::Mtls],
        handshakes: vec![Arc::new(Mtls)],
        ..Config::new(name)
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
    assert_eq!(wait_up(&rx).to_string(), quic);
    let answer = wait_answer(&rx);
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
    wait_up(&rx);
    let answer = wait_answer(&rx);
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
    let tls = pki.server_config_without_client_auth(0).unwrap();
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
    let error = wait_failure(&rx);
    assert!(error.contains("certificate"), "{error}");
    a.shutdown();
    a.join();
}
