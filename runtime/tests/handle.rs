//! The non-blocking, pipelining client (`Client::builder().connect(...)`): requests from one
//! thread and from several at once, answered through futures and callbacks; events the node
//! pushes, delivered in order under back-pressure; a node that goes away and comes back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::{Event, Frame, MessageType, PeerInfo, SendOptions};
use valkyrie_runtime::{Client, ClientError, ConnRef, Ctx, Node, Reply, Service};

/// Answers a JOB_REQUEST with a JOB_ACCEPT carrying its payload.
struct Accept;
impl Service for Accept {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        if frame.msg_type() == MessageType::JobRequest {
            let _ = ctx.respond(conn, &frame.header, MessageType::JobAccept, frame.payload);
        }
    }
}

fn accept_node(port: u16) -> Node {
    Node::builder()
        .listen(&format!("tcp://127.0.0.1:{port}"))
        .unwrap()
        .shards(2)
        .service(|_| Accept)
        .start()
        .unwrap()
}

#[test]
fn a_hundred_thousand_requests_through_futures_a_thousand_in_flight() {
    let node = accept_node(0);
    let client = Client::builder().connect([node.url()]).unwrap();
    let total = 100_000u64;
    let mut window = std::collections::VecDeque::new();
    let mut answered = 0u64;
    for i in 0..total {
        if window.len() == 1_000 {
            let (n, f): (u64, valkyrie_runtime::ReplyFuture) = window.pop_front().unwrap();
            match f.wait() {
                Reply::Answer(frame) => {
                    assert_eq!(frame.payload, Bytes::from(n.to_be_bytes().to_vec()));
                    answered += 1;
                }
                other => panic!("request {n}: {other:?}"),
            }
        }
        let payload = Bytes::from(i.to_be_bytes().to_vec());
        let f = loop {
            match client.request(
                101,
                MessageType::JobRequest,
                payload.clone(),
                Duration::from_secs(10),
            ) {
                Ok(f) => break f,
                Err(ClientError::QueueFull(_)) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        window.push_back((i, f));
    }
    for (_, f) in window {
        assert!(matches!(f.wait(), Reply::Answer(_)));
        answered += 1;
    }
    assert_eq!(answered, total);
    client.close();
    node.shutdown();
    node.join();
}

#[test]
fn callbacks_from_four_threads_at_once() {
    let node = accept_node(0);
    let client = Arc::new(Client::builder().connect([node.url()]).unwrap());
    let answered = Arc::new(AtomicU64::new(0));
    let per_thread = 10_000u64;
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (client, answered) = (client.clone(), answered.clone());
            std::thread::spawn(move || {
                // Each thread keeps at most 500 in flight (the echo service drops what its
                // queues refuse, as a naive service would).
                let mine = Arc::new(AtomicU64::new(0));
                for i in 0..per_thread {
                    while i - mine.load(Ordering::Relaxed) >= 500 {
                        std::thread::yield_now();
                    }
                    let answered = answered.clone();
                    let payload = Bytes::from(i.to_be_bytes().to_vec());
                    // Each turn either queues the request or yields: the runtime drains.
                    loop {
                        let (a, m) = (answered.clone(), mine.clone());
                        match client.request_with(
                            101,
                            MessageType::JobRequest,
                            payload.clone(),
                            Duration::from_secs(10),
                            move |r| {
                                assert!(matches!(r, Reply::Answer(_)), "{r:?}");
                                a.fetch_add(1, Ordering::Relaxed);
                                m.fetch_add(1, Ordering::Relaxed);
                            },
                        ) {
                            Ok(()) => break,
                            Err(ClientError::QueueFull(_)) => std::thread::yield_now(),
                            Err(e) => panic!("{e}"),
                        }
                    }
                    drop(answered);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::Relaxed) < 4 * per_thread {
        assert!(Instant::now() < deadline, "answers missing");
        std::thread::sleep(Duration::from_millis(5));
    }
    Arc::try_unwrap(client).unwrap().close();
    node.shutdown();
    node.join();
}

/// Pushes `n` numbered STATUS_UPDATEs on stream 4 (the accepting side opens even streams)
/// to every connection as soon as it is up.
struct Pusher {
    n: u32,
}
impl Service for Pusher {
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, _: &PeerInfo) {
        for i in 0..self.n {
            // The connection's queues bound what one call may push: stop at the first refusal
            // and go on as the client reads (each of its frames is a cue).
            if let Err(e) = ctx.send(
                conn,
                4,
                MessageType::StatusUpdate,
                Bytes::from(i.to_be_bytes().to_vec()),
                SendOptions::default(),
            ) {
                panic!("push {i} of {}: {e}", self.n);
            }
        }
    }
    fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: Frame) {}
}

#[test]
fn pushed_events_arrive_in_order_when_the_handle_reads_slowly() {
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .service(|_| Pusher { n: 2_000 })
        .start()
        .unwrap();
    // Room for 16 events: the runtime holds the connection's input until the handle reads.
    let client = Client::builder()
        .max_pending_events(16)
        .connect([node.url()])
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut next = 0u32;
    while next < 2_000 {
        match client.next_event(Duration::from_secs(10)) {
            Some(Event::Frame(f)) => {
                assert_eq!(f.msg_type(), MessageType::StatusUpdate);
                assert_eq!(
                    &f.payload[..],
                    &next.to_be_bytes()[..],
                    "in order, none lost"
                );
                next += 1;
            }
            Some(_) => {}
            None => panic!("events stopped at {next}"),
        }
    }
    client.close();
    node.shutdown();
    node.join();
}

#[test]
fn requests_wait_for_a_node_that_went_away_and_are_answered_when_it_returns() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let node = accept_node(port);
    let client = Client::builder()
        .link_options(|o| {
            // Retry every 50 ms at most, and never let the breaker hold attempts back.
            o.backoff(valkyrie_protocol::retry::ExponentialBackoff::new(
                Duration::from_millis(10),
                Duration::from_millis(50),
            ))
            .breaker(valkyrie_protocol::retry::CircuitBreaker::new(
                u32::MAX,
                Duration::from_secs(1),
                1,
            ))
        })
        .connect([format!("tcp://127.0.0.1:{port}")])
        .unwrap();
    let ok = client
        .request(
            101,
            MessageType::JobRequest,
            Bytes::from_static(b"1"),
            Duration::from_secs(5),
        )
        .unwrap()
        .wait();
    assert!(matches!(ok, Reply::Answer(_)));
    node.shutdown();
    node.join();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.is_connected() {
        assert!(Instant::now() < deadline, "the loss was never seen");
        std::thread::sleep(Duration::from_millis(5));
    }
    // While the link reconnects, a request waits for the next connection within its
    // deadline: one with a short deadline times out, one with a long one is answered once
    // the node is back.
    let short = client
        .request(
            101,
            MessageType::JobRequest,
            Bytes::new(),
            Duration::from_millis(50),
        )
        .unwrap();
    let long = client
        .request(
            101,
            MessageType::JobRequest,
            Bytes::from_static(b"2"),
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(short.wait(), Reply::TimedOut);
    let node = accept_node(port);
    assert!(matches!(long.wait(), Reply::Answer(f) if &f.payload[..] == b"2"));
    client.wait_connected(Duration::from_secs(5)).unwrap();
    client.close();
    node.shutdown();
    node.join();
}
