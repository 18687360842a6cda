//! A service for tests of links (`Ctx::connect`): node A, without listeners, keeps one link
//! and asks who it is on every connection the link brings up; the test reads what it saw.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use valkyrie_protocol::{Frame, MessageType};
use valkyrie_runtime::{ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Node, Reply, Service};

/// What node A's service tells the test.
#[derive(Debug)]
pub enum Seen {
    Link(LinkState),
    Answer(String),
}

/// Node A's service: a link to `opts`; on every link up, one request asking who it is.
pub struct Caller {
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

pub fn node_a(opts: ConnectOptions) -> (Node, mpsc::Receiver<Seen>) {
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
pub fn wait_for<T>(
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

/// The URL of the next connection the link brings up.
pub fn wait_up(rx: &mpsc::Receiver<Seen>) -> valkyrie_runtime::Endpoint {
    wait_for(rx, "link up", |s| match s {
        Seen::Link(LinkState::Up { url, .. }) => Some(url.clone()),
        _ => None,
    })
}

/// The next answer to the service's question.
pub fn wait_answer(rx: &mpsc::Receiver<Seen>) -> String {
    wait_for(rx, "answer", |s| match s {
        Seen::Answer(a) => Some(a.clone()),
        _ => None,
    })
}

/// The error of the next failed attempt (the link must not come up first).
pub fn wait_failure(rx: &mpsc::Receiver<Seen>) -> String {
    wait_for(rx, "a failed attempt", |s| match s {
        Seen::Link(LinkState::Waiting { error, .. }) => Some(error.clone()),
        Seen::Link(LinkState::Up { url, .. }) => panic!("up on {url}"),
        _ => None,
    })
}
