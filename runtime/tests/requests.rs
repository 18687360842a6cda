//! Requests with deadlines (`Ctx::request`) on outbound and inbound connections: answers,
//! ERRORs answering them, deadlines that pass (reported once, the late answer dropped and
//! counted), and a connection's end.

use std::sync::mpsc;
use std::time::Duration;

use bytes::Bytes;
use valkyrie_protocol::{ErrorCode, Event, Frame, Header, MessageType, SendOptions};
use valkyrie_runtime::{
    Client, ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Node, Reply, Service,
};

/// Holds JOB_REQUESTs; answers all it holds when one says "flush", refuses one that says
/// "refuse" with ERROR 401 (job rejected).
#[derive(Default)]
struct Holder {
    held: Vec<(ConnRef, Header)>,
}

impl Service for Holder {
    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        let h = frame.header;
        match &frame.payload[..] {
            b"refuse" => {
                ctx.send_error(
                    conn,
                    ErrorCode::JOB_REJECTED,
                    "not today",
                    h.stream_id,
                    h.correlation_id,
                )
                .unwrap();
            }
            b"flush" => {
                self.held.push((conn, h));
                for (c, h) in self.held.drain(..) {
                    ctx.respond(c, &h, MessageType::JobAccept, Bytes::new())
                        .unwrap();
                }
            }
            _ => self.held.push((conn, h)),
        }
    }
}

/// Sends the requests the test asks for on its link and passes every reply back.
struct Asker {
    url: String,
    plan: Vec<(&'static [u8], Duration)>,
    conn: Option<ConnRef>,
    tx: mpsc::Sender<(u32, Reply)>,
}

impl Asker {
    fn next(&mut self, ctx: &mut Ctx<'_>) {
        let (Some(conn), Some((payload, within))) = (self.conn, self.plan.first().copied()) else {
            return;
        };
        self.plan.remove(0);
        ctx.request(
            conn,
            101,
            MessageType::JobRequest,
            Bytes::from_static(payload),
            ctx.now() + within,
        )
        .unwrap();
    }
}

impl Service for Asker {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        ctx.connect(ConnectOptions::new([self.url.as_str()]).unwrap());
    }
    fn on_link(&mut self, ctx: &mut Ctx<'_>, _link: LinkId, state: &LinkState) {
        if let LinkState::Up { conn, .. } = state {
            self.conn = Some(*conn);
            self.next(ctx);
        }
    }
    fn on_reply(&mut self, ctx: &mut Ctx<'_>, _conn: ConnRef, request: u32, reply: Reply) {
        let _ = self.tx.send((request, reply));
        self.next(ctx);
    }
    fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, frame: Frame) {
        panic!("not a reply: {frame:?}");
    }
}

#[test]
fn a_deadline_is_reported_once_and_the_late_answer_is_dropped_and_counted() {
    let b = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .service(|_| Holder::default())
        .start()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let url = b.url();
    let a = Node::builder()
        .without_listeners()
        .shards(1)
        .service(move |_| Asker {
            url: url.clone(),
            plan: vec![
                // Held by B past its 50 ms: timed out.
                (b"hold", Duration::from_millis(50)),
                // B answers the held one (late) and this one.
                (b"flush", Duration::from_secs(5)),
                // Refused with an ERROR.
                (b"refuse", Duration::from_secs(5)),
            ],
            conn: None,
            tx: tx.clone(),
        })
        .start()
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..3 {
        replies.push(rx.recv_timeout(Duration::from_secs(10)).expect("a reply"));
    }
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "one reply per request"
    );
    assert_eq!(replies[0].1, Reply::TimedOut);
    assert!(matches!(&replies[1].1, Reply::Answer(f) if f.msg_type() == MessageType::JobAccept));
    assert!(
        matches!(&replies[2].1, Reply::Error { code, message } if *code == ErrorCode::JOB_REJECTED && message == "not today")
    );
    assert_ne!(replies[0].0, replies[1].0);
    let m = &a.shard_metrics()[0];
    assert_eq!(m.request_outcomes(), [1, 1, 1, 0]);
    assert_eq!(m.late_answers(), 1, "the held request's answer came late");
    assert!(
        a.metrics_text()
            .contains("valkyrie_requests_total{outcome=\"late\"} 1")
    );
    a.shutdown();
    a.join();
    b.shutdown();
    b.join();
}

/// Asks every client that connects a question, and passes the reply back.
struct Quizzer {
    tx: mpsc::Sender<Reply>,
}

impl Service for Quizzer {
    fn on_connect(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, _: &valkyrie_protocol::PeerInfo) {
        let deadline = ctx.now() + Duration::from_secs(5);
        ctx.request(
            conn,
            2,
            MessageType::HealthCheck,
            Bytes::from_static(b"ok?"),
            deadline,
        )
        .unwrap();
    }
    fn on_reply(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: u32, reply: Reply) {
        let _ = self.tx.send(reply);
    }
    fn on_frame(&mut self, _: &mut Ctx<'_>, _: ConnRef, _: Frame) {}
}

#[test]
fn a_node_requests_from_a_client_that_connected_to_it_and_loses_the_rest_when_it_leaves() {
    let (tx, rx) = mpsc::channel();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .unwrap()
        .shards(1)
        .service(move |_| Quizzer { tx: tx.clone() })
        .start()
        .unwrap();
    // The first client answers the node's question.
    let mut c = Client::connect(&node.url()).unwrap();
    let question = loop {
        match c.next_event(Duration::from_secs(5)).unwrap() {
            Some(Event::Frame(f)) if f.msg_type() == MessageType::HealthCheck => break f,
            Some(_) => {}
            None => panic!("no question"),
        }
    };
    c.connection()
        .respond(
            &question.header,
            MessageType::StatusUpdate,
            Bytes::from_static(b"fine"),
            SendOptions::default(),
        )
        .unwrap();
    c.flush_now().unwrap();
    let reply = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        matches!(&reply, Reply::Answer(f) if f.msg_type() == MessageType::StatusUpdate && &f.payload[..] == b"fine")
    );
    c.close().unwrap();
    // The second leaves without answering: its request is lost with its connection.
    let c2 = Client::connect(&node.url()).unwrap();
    drop(c2);
    let reply = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(matches!(reply, Reply::Lost(_)), "{reply:?}");
    assert_eq!(node.shard_metrics()[0].request_outcomes(), [1, 0, 0, 1]);
    node.shutdown();
    node.join();
}
