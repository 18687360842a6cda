//! The blocking client made from a link's options: URLs in order, reconnect when its node
//! comes back, the options' `reconnect` respected, an explicit reconnect.

use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::retry::{CircuitBreaker, ExponentialBackoff, Jitter};
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{Client, ClientConfig, ClientError, ConnectOptions, Node};

mod common;

use common::free_port;

fn node(port: u16) -> Node {
    common::accept_node(port, 1)
}

fn ask(c: &mut Client, what: &'static [u8]) -> Result<Frame, ClientError> {
    c.request(
        101,
        MessageType::JobRequest,
        Bytes::from_static(what),
        Duration::from_secs(5),
    )
}

fn quick(urls: &[String]) -> ConnectOptions {
    ConnectOptions::new(urls)
        .unwrap()
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(50))
                .with_jitter(Jitter::None),
        )
        .breaker(CircuitBreaker::new(1_000, Duration::from_secs(1), 1))
}

#[test]
fn the_urls_are_tried_in_order() {
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let b = node(0);
    let mut c = Client::connect_options(
        quick(&[dead, b.url()]),
        ClientConfig::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert_eq!(c.url().map(|u| u.to_string()), Some(b.url()));
    assert_eq!(ask(&mut c, b"one").unwrap().payload.as_ref(), b"one");
    let _ = c.close();
    b.shutdown();
    b.join();
}

#[test]
fn nothing_to_connect_to_ends_with_the_last_attempts_error_when_the_wait_is_over() {
    let dead = format!("tcp://127.0.0.1:{}", free_port());
    let t0 = Instant::now();
    let e = Client::connect_options(
        quick(&[dead]),
        ClientConfig::default(),
        Duration::from_millis(300),
    )
    .unwrap_err();
    assert!(matches!(e, ClientError::Io(_)), "{e:?}");
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "retried for {waited:?}"
    );
}

#[test]
fn the_next_call_connects_again_when_the_node_comes_back() {
    let port = free_port();
    let first = node(port);
    let mut c = Client::builder()
        .link_options(|o| {
            o.backoff(
                ExponentialBackoff::new(Duration::from_millis(10), Duration::from_millis(50))
                    .with_jitter(Jitter::None),
            )
        })
        .blocking([format!("tcp://127.0.0.1:{port}")])
        .unwrap();
    assert_eq!(ask(&mut c, b"before").unwrap().payload.as_ref(), b"before");
    first.shutdown();
    first.join();
    // The node is gone: the client learns it on its next call (its connection ended).
    assert!(ask(&mut c, b"while away").is_err());
    // Back on the same port, a moment later: the client connects again by itself.
    let restarter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        node(port)
    });
    let answer = ask(&mut c, b"after").expect("answered by the restarted node");
    assert_eq!(answer.payload.as_ref(), b"after");
    assert_eq!(c.reconnects(), 1);
    let second = restarter.join().unwrap();
    let _ = c.close();
    second.shutdown();
    second.join();
}

#[test]
fn without_reconnect_an_ended_connection_stays_ended_until_asked() {
    let a = node(0);
    let mut c = Client::connect_options(
        quick(&[a.url()]).reconnect(false),
        ClientConfig::default(),
        Duration::from_secs(5),
    )
    .unwrap();
    assert!(ask(&mut c, b"x").is_ok());
    // The node closes every connection (shutdown), then a new one listens on its port.
    let port = a.url().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    a.shutdown();
    a.join();
    let b = node(port);
    let e = ask(&mut c, b"y").unwrap_err();
    assert!(
        matches!(e, ClientError::Closed(_) | ClientError::Io(_)),
        "{e:?}"
    );
    assert!(ask(&mut c, b"z").is_err(), "reconnect is off");
    c.reconnect(Duration::from_secs(5)).unwrap();
    assert_eq!(ask(&mut c, b"w").unwrap().payload.as_ref(), b"w");
    assert_eq!(c.reconnects(), 1);
    let _ = c.close();
    b.shutdown();
    b.join();
}

#[test]
fn a_client_made_without_options_has_nothing_to_reconnect_to() {
    let a = node(0);
    let mut c = Client::connect(&a.url()).unwrap();
    assert!(matches!(
        c.reconnect(Duration::from_millis(10)),
        Err(ClientError::NotConnected(_))
    ));
    assert_eq!(c.url(), None);
    let _ = c.close();
    a.shutdown();
    a.join();
}
