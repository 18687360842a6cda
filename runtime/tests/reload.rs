//! Reload without restart (`Node::reload`, SIGHUP): new connections — TCP and QUIC — see the
//! new certificate or token secret, established ones keep the identity they authenticated with, and a source
//! that fails changes nothing.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::security::mtls::{DevPki, Mtls};
use valkyrie_protocol::security::token::{TokenClient, TokenServer};
use valkyrie_protocol::{Config, Frame, MessageType, SecurityMode};
use valkyrie_runtime::{Client, ClientConfig, ConnRef, Ctx, Node, Reload, ReloadError, Service};

/// Answers a JOB_REQUEST with a JOB_ACCEPT.
struct Accept;
impl Service for Accept {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

fn answers(c: &mut Client) -> bool {
    c.request(
        101,
        MessageType::JobRequest,
        Bytes::from_static(b"?"),
        Duration::from_secs(5),
    )
    .is_ok()
}

fn mtls_client(pki: &DevPki) -> ClientConfig {
    common::mtls_client(ClientConfig::default(), pki, &pki.ca_pem, false)
}

#[test]
fn a_new_certificate_reaches_new_connections_and_the_old_ones_stay_up() {
    let old = DevPki::generate(&["127.0.0.1"], &["agent"]).unwrap();
    let new = DevPki::generate(&["127.0.0.1"], &["agent"]).unwrap();
    // What the node reads on a reload: the old PKI until the "files" change, then the new
    // one, then a broken file.
    let files: Arc<Mutex<Result<Arc<DevPki>, String>>> =
        Arc::new(Mutex::new(Ok(Arc::new(old.clone()))));
    let source = files.clone();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            ..Config::new("control")
        })
        .tls(old.server_config(0).unwrap())
        .shards(2)
        .service(|_| Accept)
        .reload_with(move || {
            let pki = source.lock().unwrap().clone()?;
            Ok(Reload::new().tls(pki.server_config(0).map_err(|e| e.to_string())?))
        })
        .start()
        .unwrap();
    let mut before = Client::connect_with(&node.url(), mtls_client(&old)).unwrap();
    assert!(answers(&mut before));

    *files.lock().unwrap() = Ok(Arc::new(new.clone()));
    node.reload().unwrap();
    // A new connection is shown the new certificate: a client that trusts only the old CA
    // refuses it, one that trusts the new CA is served.
    let mut after = Client::connect_with(&node.url(), mtls_client(&new)).unwrap();
    assert!(answers(&mut after));
    assert!(
        Client::connect_with(&node.url(), mtls_client(&old)).is_err(),
        "the old certificate is no longer presented"
    );
    // The connection made before the reload stays up, with the identity it had.
    assert!(answers(&mut before));

    // A reload whose source fails changes nothing.
    *files.lock().unwrap() = Err("agent.crt: no such file".into());
    assert!(matches!(node.reload(), Err(ReloadError::Source(m)) if m.contains("no such file")));
    let mut still = Client::connect_with(&node.url(), mtls_client(&new)).unwrap();
    assert!(answers(&mut still));
    assert!(answers(&mut before) && answers(&mut after));
    node.shutdown();
    node.join();
}

#[test]
fn a_reload_gives_new_quic_connections_the_new_certificate() {
    let old = DevPki::generate(&["127.0.0.1"], &["agent"]).unwrap();
    let new = DevPki::generate(&["127.0.0.1"], &["agent"]).unwrap();
    let files: Arc<Mutex<Arc<DevPki>>> = Arc::new(Mutex::new(Arc::new(old.clone())));
    let source = files.clone();
    let node = Node::builder()
        .listen("quic://127.0.0.1:0")
        .unwrap()
        .protocol(Config {
            security: vec![SecurityMode::Mtls],
            handshakes: vec![Arc::new(Mtls)],
            ..Config::new("control")
        })
        .quic_tls(old.server_config(0).unwrap(), true)
        .shards(2)
        .service(|_| Accept)
        .reload_with(move || {
            let pki = source.lock().unwrap().clone();
            Ok(Reload::new().quic_tls(pki.server_config(0).map_err(|e| e.to_string())?, true))
        })
        .start()
        .unwrap();
    let url = node.endpoints()[0].to_string();
    let mut before = Client::connect_with(&url, mtls_client(&old)).unwrap();
    assert!(answers(&mut before));

    *files.lock().unwrap() = Arc::new(new.clone());
    node.reload().unwrap();
    // The reload reaches the shards at their next turn.
    let t = std::time::Instant::now();
    let mut after = loop {
        if let Ok(c) = Client::connect_with(&url, mtls_client(&new)) {
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the new certificate never showed"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(answers(&mut after));
    assert!(
        Client::connect_with(&url, mtls_client(&old)).is_err(),
        "the old certificate is still presented, or the old CA still admits clients"
    );
    // The QUIC connection made before the reload keeps its TLS session and identity.
    assert!(answers(&mut before));
    assert!(answers(&mut after));
}

fn token_client(secret: &[u8]) -> ClientConfig {
    let base = ClientConfig::default();
    ClientConfig {
        protocol: Config {
            security: vec![SecurityMode::Token],
            handshakes: vec![Arc::new(TokenClient::new("agents", secret.to_vec()))],
            ..base.protocol.clone()
        },
        ..base
    }
}

fn token_node_config(secret: &[u8]) -> Config {
    Config {
        security: vec![SecurityMode::Token],
        handshakes: vec![Arc::new(TokenServer::new([(
            "agents".to_owned(),
            secret.to_vec(),
        )]))],
        ..Config::new("control")
    }
}

#[test]
fn a_rotated_token_secret_is_required_of_new_connections_only() {
    // The secret the node reads on a reload (`None`: a configuration missing its provider).
    let secret: Arc<Mutex<Option<Vec<u8>>>> = Arc::new(Mutex::new(Some(b"first".to_vec())));
    let source = secret.clone();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(token_node_config(b"first"))
        .shards(1)
        .service(|_| Accept)
        .reload_with(move || {
            Ok(
                Reload::new().protocol(match source.lock().unwrap().as_deref() {
                    Some(s) => token_node_config(s),
                    None => Config {
                        security: vec![SecurityMode::Token],
                        handshakes: vec![],
                        ..Config::new("control")
                    },
                }),
            )
        })
        .start()
        .unwrap();
    let mut old = Client::connect_with(&node.url(), token_client(b"first")).unwrap();
    *secret.lock().unwrap() = Some(b"second".to_vec());
    node.reload().unwrap();
    assert!(Client::connect_with(&node.url(), token_client(b"first")).is_err());
    let mut new = Client::connect_with(&node.url(), token_client(b"second")).unwrap();
    assert!(answers(&mut new));
    assert!(
        answers(&mut old),
        "authenticated before the rotation: still served"
    );
    // A configuration that does not hold together is refused, and the rotation stays.
    *secret.lock().unwrap() = None;
    assert!(matches!(node.reload(), Err(ReloadError::Config(_))));
    let mut again = Client::connect_with(&node.url(), token_client(b"second")).unwrap();
    assert!(answers(&mut again));
    node.shutdown();
    node.join();
}

#[test]
fn a_reload_rotates_the_bearer_keys_of_http_clients() {
    use valkyrie_runtime::{BearerKeys, bearer};
    let keys = |s: &[u8]| BearerKeys(Arc::new(vec![("agents".to_owned(), s.to_vec())]));
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .protocol(token_node_config(b"first"))
        .configure(|c| c.http.bearer_keys = keys(b"first"))
        .shards(1)
        .service(|_| Accept)
        .reload_with(move || {
            Ok(Reload::new()
                .protocol(token_node_config(b"second"))
                .bearer_keys(keys(b"second")))
        })
        .start()
        .unwrap();
    let port = node.url().rsplit(':').next().unwrap().to_owned();
    let status = |token: &str| {
        let out = std::process::Command::new("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg("-H")
            .arg(format!("authorization: Bearer {token}"))
            .arg(format!("http://127.0.0.1:{port}/healthz"))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let far = 4_000_000_000;
    let (first, second) = (
        bearer::mint("agents", b"first", far),
        bearer::mint("agents", b"second", far),
    );
    assert_eq!(
        (status(&first), status(&second)),
        ("200".into(), "401".into())
    );
    node.reload().unwrap();
    assert_eq!(
        (status(&first), status(&second)),
        ("401".into(), "200".into())
    );
    node.shutdown();
    node.join();
}
