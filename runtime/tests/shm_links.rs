//! Links over shared memory (`Ctx::connect` to a `shm://` URL): node A's shard connects to
//! node B's shared-memory listener through its ring, maps the segment B offers, and its
//! requests are answered over the rings; when B's shared-memory listener closes, the link is
//! sent away and fails over to B's TCP listener, the next URL, and when it opens again the
//! link's probe (`ConnectOptions::reprobe`) finds it and the link moves back; a name nobody
//! listens on fails the attempt at once.

mod common;

use std::time::Duration;

use common::link_caller::{node_a, wait_answer, wait_failure, wait_up};
use valkyrie_protocol::retry::{ExponentialBackoff, Jitter};
use valkyrie_runtime::{ConnectOptions, Endpoint, Node};

#[test]
fn a_link_over_shared_memory_is_answered_and_fails_over_to_tcp() {
    let shm = format!("shm://links-{}", std::process::id());
    let mut b = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .listen(&shm)
        .unwrap()
        .shards(2)
        .service(|_| common::Identify)
        .start()
        .unwrap();
    let tcp = b.endpoints()[0].to_string();
    let opts = ConnectOptions::new([shm.as_str(), tcp.as_str()])
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .reprobe(Duration::from_millis(100))
        .backoff(
            ExponentialBackoff::new(Duration::from_millis(20), Duration::from_millis(100))
                .with_jitter(Jitter::Equal),
        );
    let (a, rx) = node_a(opts);
    let url = wait_up(&rx);
    assert!(matches!(url, Endpoint::Shm(_)), "{url}");
    let answer = wait_answer(&rx);
    assert_eq!(answer, "who from ", "answered over the segment");
    let held: i64 = b.shard_metrics().iter().map(|m| m.connections()).sum();
    assert_eq!(held, 1, "B holds the link's connection");

    // B's shared-memory listener closes: the link is sent away and moves to TCP.
    b.close_listener(&shm).unwrap();
    let url = wait_up(&rx);
    assert_eq!(url.to_string(), tcp);
    let answer = wait_answer(&rx);
    assert_eq!(answer, "who from ");

    // Closed for a while: the probes find nothing and the link stays on TCP.
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        rx.try_recv().is_err(),
        "the link moved while shm was closed"
    );
    // Open again: the next probe finds it and the link moves back.
    b.open_listener(&shm).unwrap();
    let t = std::time::Instant::now();
    let url = wait_up(&rx);
    assert!(matches!(url, Endpoint::Shm(_)), "{url}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "back on shm after {:?}",
        t.elapsed()
    );
    assert_eq!(wait_answer(&rx), "who from ");
    a.shutdown();
    a.join();
    b.shutdown();
    b.join();
}

#[test]
fn a_link_to_a_name_nobody_listens_on_says_so() {
    let opts = ConnectOptions::new([format!("shm://nobody-{}", std::process::id())])
        .unwrap()
        .connect_timeout(Duration::from_secs(2));
    let (a, rx) = node_a(opts);
    let error = wait_failure(&rx);
    assert!(error.contains("refused"), "{error}");
    a.shutdown();
    a.join();
}
