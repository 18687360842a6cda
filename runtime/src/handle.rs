//! The non-blocking, pipelining client: a small embedded runtime (one shard, no listener)
//! keeps a link to a node, and a [`ClientHandle`] hands it requests from any thread, each
//! answered through a [`ReplyFuture`] or a callback, any number in flight.
//!
//! The handle and its shard share nothing but a bounded command channel, the channel of
//! events the node pushes, and the link's state: the handle pushes a command and nudges the
//! shard ([`Node::nudge`]); the shard's service (the bridge) drains the channel, makes the
//! requests with [`Ctx::request`], and completes each one's future or callback from
//! [`Service::on_reply`]. A callback runs on the shard's thread: keep it short.
//!
//! ```no_run
//! use std::time::Duration;
//! use bytes::Bytes;
//! use valkyrie_protocol::MessageType;
//! use valkyrie_runtime::{Client, Reply};
//!
//! let client = Client::builder().connect(["tcp://127.0.0.1:7420"])?;
//! // A thousand requests in flight at once, their answers collected as they come.
//! let futures: Vec<_> = (0..1000u32)
//!     .map(|i| {
//!         client.request(101, MessageType::JobRequest, Bytes::from(i.to_be_bytes().to_vec()), Duration::from_secs(5))
//!     })
//!     .collect::<Result<_, _>>()?;
//! for f in futures {
//!     match f.wait() {
//!         Reply::Answer(frame) => assert_eq!(frame.msg_type(), MessageType::JobAccept),
//!         other => eprintln!("{other:?}"),
//!     }
//! }
//! client.close();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_channel::oneshot;
use valkyrie_protocol::{CloseReason, Config, Event, Frame, MessageType, SendError, SendOptions};

use crate::ConnRef;
use crate::client::ClientError;
use crate::config::BusyPoll;
use crate::link::{ConnectOptions, LinkId, LinkState};
use crate::node::Node;
use crate::service::{Ctx, Reply, RouteError, Service};

/// Builds a [`ClientHandle`] ([`Client::builder`](crate::Client::builder)).
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    protocol: Config,
    tls: Option<Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>>,
    tls_server_name: Option<String>,
    connect_timeout: Duration,
    queue: usize,
    max_pending_events: usize,
    busy_poll: BusyPoll,
    shape: Option<fn(ConnectOptions) -> ConnectOptions>,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        ClientBuilder {
            protocol: Config::new("valkyrie-client"),
            tls: None,
            tls_server_name: None,
            connect_timeout: Duration::from_secs(10),
            queue: 65_536,
            max_pending_events: 65_536,
            busy_poll: BusyPoll::Off,
            shape: None,
        }
    }
}

impl ClientBuilder {
    /// The protocol configuration (node id, security modes offered and their providers).
    pub fn protocol(mut self, config: Config) -> Self {
        self.protocol = config;
        self
    }

    /// TLS 1.3 under the frames on TCP (`mtls`, or token inside TLS).
    pub fn tls(
        mut self,
        config: Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>,
        server_name: Option<String>,
    ) -> Self {
        self.tls = Some(config);
        self.tls_server_name = server_name;
        self
    }

    /// How long [`connect`](Self::connect) waits for the first connection (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Commands (requests, sends) that may wait for the runtime (default 65,536); past it a
    /// call fails with [`ClientError::QueueFull`].
    pub fn queue(mut self, n: usize) -> Self {
        self.queue = n.max(1);
        self
    }

    /// Events from the node kept for [`ClientHandle::next_event`] before the runtime stops
    /// reading the connection (back-pressure; default 65,536).
    pub fn max_pending_events(mut self, n: usize) -> Self {
        self.max_pending_events = n.max(1);
        self
    }

    /// How the runtime's shard waits (default: it sleeps when idle).
    pub fn busy_poll(mut self, mode: BusyPoll) -> Self {
        self.busy_poll = mode;
        self
    }

    /// Adjust the link's options (backoff, breaker, reconnect) before it starts.
    pub fn link_options(mut self, shape: fn(ConnectOptions) -> ConnectOptions) -> Self {
        self.shape = Some(shape);
        self
    }

    /// The link's options for `urls`: this builder's protocol and TLS, then its shaping.
    fn options<I, S>(&self, urls: I) -> Result<ConnectOptions, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.protocol.validate()?;
        let mut opts = ConnectOptions::new(urls)?;
        opts.protocol = Some(Arc::new(self.protocol.clone()));
        opts.tls = self.tls.clone();
        opts.tls_server_name = self.tls_server_name.clone();
        if let Some(shape) = self.shape {
            opts = shape(opts);
        }
        Ok(opts)
    }

    /// The blocking [`Client`](crate::Client) on the same link: the same URLs in order,
    /// backoff, circuit breaker, reconnect and handling of a node going away, one request at
    /// a time in the caller's thread (no runtime is started). Waits up to the connect
    /// timeout for the first connection; busy-poll other than `Off` makes it spin.
    pub fn blocking<I, S>(self, urls: I) -> Result<crate::Client, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let opts = self.options(urls)?;
        let cfg = crate::ClientConfig {
            busy_poll: self.busy_poll != BusyPoll::Off,
            max_pending_events: self.max_pending_events,
            ..crate::ClientConfig::default()
        };
        crate::Client::connect_options(opts, cfg, self.connect_timeout)
    }

    /// Start the runtime, connect to `urls` (tried in order, reconnected on failure), and
    /// wait until the first connection is up.
    pub fn connect<I, S>(self, urls: I) -> Result<ClientHandle, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let opts = self.options(urls)?;
        let (commands, inbox) = crossbeam_channel::bounded(self.queue);
        let (events_tx, events) = crossbeam_channel::bounded(self.max_pending_events);
        let shared = Arc::new(Shared {
            state: Mutex::new(LinkState::Connecting {
                url: opts.urls()[0].clone(),
                attempt: 1,
            }),
            up: AtomicBool::new(false),
            held: AtomicBool::new(false),
            retried: AtomicU64::new(0),
        });
        let bridge = Mutex::new(Some(Bridge {
            opts,
            inbox,
            events: events_tx,
            overflow: VecDeque::new(),
            shared: shared.clone(),
            link: None,
            conn: None,
            pending: HashMap::new(),
            backlog: VecDeque::new(),
            capacity: self.queue,
            watching: false,
        }));
        let node = Node::builder()
            .without_listeners()
            .shards(1)
            .pin(false)
            .protocol(self.protocol.clone())
            .busy_poll(self.busy_poll)
            .service(move |_| {
                bridge
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take()
                    .expect("one shard, one bridge")
            })
            .start()?;
        let handle = ClientHandle {
            node,
            commands,
            events,
            shared,
            queue: self.queue,
        };
        handle.wait_connected(self.connect_timeout)?;
        Ok(handle)
    }
}

/// What the handle and its runtime share (written by the runtime, read by the handle).
struct Shared {
    /// The link's state (written at each change, rare).
    state: Mutex<LinkState>,
    /// The link is up (read at every request).
    up: AtomicBool,
    /// The runtime holds the connection's input: events wait for the handle.
    held: AtomicBool,
    /// Requests sent again after a node went away before answering them.
    retried: AtomicU64,
}

/// How a request's outcome is handed back.
enum Completion {
    Future(oneshot::Sender<Reply>),
    Callback(Box<dyn FnOnce(Reply) + Send>),
}

impl Completion {
    fn complete(self, reply: Reply) {
        match self {
            // A dropped future no longer wants its reply.
            Completion::Future(tx) => drop(tx.send(reply)),
            Completion::Callback(f) => f(reply),
        }
    }
}

/// What the handle asks its runtime to do.
enum Command {
    Request {
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        deadline: Instant,
        done: Completion,
    },
    Send {
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    },
    Close,
}

/// The runtime's service: keeps the link, makes the handle's requests, hands back replies
/// and events.
struct Bridge {
    opts: ConnectOptions,
    inbox: crossbeam_channel::Receiver<Command>,
    events: crossbeam_channel::Sender<Event>,
    /// Events the channel had no room for (bounded: the connection's input is held as soon
    /// as one waits here, so at most what was already received comes).
    overflow: VecDeque<Event>,
    shared: Arc<Shared>,
    link: Option<LinkId>,
    conn: Option<ConnRef>,
    /// Requests in flight, kept whole so that one lost to a node going away can be sent
    /// again on the next connection.
    pending: HashMap<(ConnRef, u32), Command>,
    /// Commands taken from the channel that the connection's queues had no room for yet,
    /// in order; at most the channel's capacity (past it, commands stay in the channel and
    /// the handle sees [`ClientError::QueueFull`]).
    backlog: VecDeque<Command>,
    capacity: usize,
    /// A timer is set to look at the backlog's deadlines.
    watching: bool,
}

/// How often the deadlines of requests waiting for a connection are looked at.
const DEADLINE_WATCH: Duration = Duration::from_millis(5);

/// The CLOSE code of a node that is draining ("going away"): reconnect at once, and send
/// again what it did not answer.
const GOING_AWAY: u16 = valkyrie_protocol::ErrorCode::SHUTTING_DOWN.0;

/// Whether a refused send is back-pressure: full queues or no stream credit (retry once
/// answers come, or credit).
fn is_backpressure(e: &RouteError) -> bool {
    match e {
        RouteError::Send(e) => e.is_backpressure(),
        RouteError::TooManyRequests(_) => true,
        _ => false,
    }
}

impl Bridge {
    /// Carry out `cmd`, or hand it back when the connection's queues are full.
    fn run(&mut self, ctx: &mut Ctx<'_>, cmd: Command) -> Option<Command> {
        match cmd {
            Command::Request {
                stream_id,
                msg_type,
                payload,
                deadline,
                done,
            } => {
                let cmd = Command::Request {
                    stream_id,
                    msg_type,
                    payload: payload.clone(),
                    deadline,
                    done,
                };
                let Some(conn) = self.conn else {
                    // Not connected now: it waits for the next connection (or its deadline).
                    return Some(cmd);
                };
                if deadline <= ctx.now() {
                    if let Command::Request { done, .. } = cmd {
                        done.complete(Reply::TimedOut);
                    }
                    return None;
                }
                match ctx.request(conn, stream_id, msg_type, payload, deadline) {
                    Ok(corr) => {
                        self.pending.insert((conn, corr), cmd);
                        None
                    }
                    Err(e) if is_backpressure(&e) => Some(cmd),
                    // The connection is ending: it waits for the next one.
                    Err(RouteError::Send(SendError::Closing) | RouteError::Gone) => Some(cmd),
                    Err(e) => {
                        if let Command::Request { done, .. } = cmd {
                            done.complete(Reply::Error {
                                code: valkyrie_protocol::ErrorCode::OVERLOADED,
                                message: format!("not sent: {e}"),
                            });
                        }
                        None
                    }
                }
            }
            Command::Send {
                stream_id,
                msg_type,
                payload,
                opts,
            } => {
                let Some(conn) = self.conn else {
                    // It waits for the next connection.
                    return Some(Command::Send {
                        stream_id,
                        msg_type,
                        payload,
                        opts,
                    });
                };
                match ctx.send(conn, stream_id, msg_type, payload.clone(), opts) {
                    Ok(()) => None,
                    Err(e) if is_backpressure(&e) => Some(Command::Send {
                        stream_id,
                        msg_type,
                        payload,
                        opts,
                    }),
                    Err(e) => {
                        tracing::debug!(error = %e, "a handle's send was refused");
                        None
                    }
                }
            }
            Command::Close => {
                if let Some(link) = self.link.take() {
                    let _ = ctx.disconnect(link);
                }
                None
            }
        }
    }

    /// Carry out what waits in the backlog, then what waits in the channel, in order, until
    /// the connection's queues are full.
    fn pump(&mut self, ctx: &mut Ctx<'_>) {
        // Each turn takes one command from the backlog: bounded by its length.
        while let Some(cmd) = self.backlog.pop_front() {
            if let Some(cmd) = self.run(ctx, cmd) {
                self.backlog.push_front(cmd);
                return;
            }
        }
        // What waits now; commands pushed meanwhile come with a nudge of their own.
        for _ in 0..self.inbox.len() {
            if self.backlog.len() >= self.capacity {
                return;
            }
            let Ok(cmd) = self.inbox.try_recv() else {
                break;
            };
            if let Some(cmd) = self.run(ctx, cmd) {
                self.backlog.push_back(cmd);
                return;
            }
        }
    }

    /// Hand an event to the handle, or keep it (holding the connection's input) when the
    /// handle is behind.
    fn deliver(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, event: Event) {
        if self.overflow.is_empty() {
            match self.events.try_send(event) {
                Ok(()) => return,
                Err(crossbeam_channel::TrySendError::Full(e)) => self.overflow.push_back(e),
                Err(crossbeam_channel::TrySendError::Disconnected(_)) => return,
            }
        } else {
            self.overflow.push_back(event);
        }
        if !self.shared.held.swap(true, Ordering::SeqCst) {
            let _ = ctx.hold_input(conn, true);
        }
    }

    /// While requests wait for a connection, look at their deadlines every few
    /// milliseconds (one timer at a time).
    fn watch_deadlines(&mut self, ctx: &mut Ctx<'_>) {
        if self.watching || self.backlog.is_empty() {
            return;
        }
        if ctx.set_timer(ctx.now() + DEADLINE_WATCH, 0).is_ok() {
            self.watching = true;
        }
    }

    /// Move waiting events to the handle as it makes room; read again once it has.
    fn release(&mut self, ctx: &mut Ctx<'_>) {
        // Each turn moves one event or stops: bounded by the overflow's length.
        while let Some(e) = self.overflow.pop_front() {
            if let Err(crossbeam_channel::TrySendError::Full(e)) = self.events.try_send(e) {
                self.overflow.push_front(e);
                return;
            }
        }
        if self.shared.held.load(Ordering::SeqCst)
            && self.events.len() * 2 <= self.events.capacity().unwrap_or(0)
        {
            self.shared.held.store(false, Ordering::SeqCst);
            if let Some(conn) = self.conn {
                let _ = ctx.hold_input(conn, false);
            }
        }
    }
}

impl Service for Bridge {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.link = Some(ctx.connect(self.opts.clone()));
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, _link: LinkId, state: &LinkState) {
        self.conn = match state {
            LinkState::Up { conn, .. } => Some(*conn),
            _ => None,
        };
        match state {
            LinkState::Up { .. } => self.pump(ctx),
            LinkState::Stopped { .. } => {
                // No connection will come: what waits is lost.
                for cmd in self.backlog.drain(..) {
                    if let Command::Request { done, .. } = cmd {
                        done.complete(Reply::Lost(CloseReason::TransportClosed));
                    }
                }
            }
            // Requests wait for the next connection; their deadlines are watched meanwhile.
            _ => self.watch_deadlines(ctx),
        }
        self.shared.up.store(self.conn.is_some(), Ordering::SeqCst);
        *self.shared.state.lock().unwrap_or_else(|e| e.into_inner()) = state.clone();
    }

    fn on_nudge(&mut self, ctx: &mut Ctx<'_>) {
        self.pump(ctx);
        self.release(ctx);
    }

    fn on_reply(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, request: u32, reply: Reply) {
        if let Some(cmd) = self.pending.remove(&(conn, request)) {
            match (reply, cmd) {
                // The node went away (draining) before it answered: send it again on the next
                // connection, within its deadline.
                (Reply::Lost(CloseReason::Peer { code, .. }), cmd) if code == GOING_AWAY => {
                    self.shared.retried.fetch_add(1, Ordering::Relaxed);
                    self.backlog.push_back(cmd);
                    self.watch_deadlines(ctx);
                }
                (reply, Command::Request { done, .. }) => done.complete(reply),
                _ => {}
            }
        }
        // An answer means the queues have moved: what waited may go now.
        if !self.backlog.is_empty() {
            self.pump(ctx);
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _token: u64) {
        self.watching = false;
        let now = ctx.now();
        let mut kept = VecDeque::with_capacity(self.backlog.len());
        for cmd in self.backlog.drain(..) {
            match cmd {
                Command::Request { deadline, done, .. } if deadline <= now => {
                    done.complete(Reply::TimedOut)
                }
                other => kept.push_back(other),
            }
        }
        self.backlog = kept;
        if self.conn.is_some() {
            self.pump(ctx);
        } else {
            self.watch_deadlines(ctx);
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        self.deliver(ctx, conn, Event::Frame(frame));
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, event: &Event) {
        if matches!(event, Event::StreamWritable { .. }) && !self.backlog.is_empty() {
            // Credit came back: what waited for it may go.
            self.pump(ctx);
        }
        self.deliver(ctx, conn, event.clone());
    }

    fn on_close(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, reason: &CloseReason) {
        // The held input went with the connection.
        self.shared.held.store(false, Ordering::SeqCst);
        let _ = self.events.try_send(Event::Closed(reason.clone()));
    }
}

/// A non-blocking, pipelining connection to a node, usable from any thread
/// ([`Client::builder`](crate::Client::builder)). Dropping it stops its runtime.
pub struct ClientHandle {
    node: Node,
    commands: crossbeam_channel::Sender<Command>,
    events: crossbeam_channel::Receiver<Event>,
    shared: Arc<Shared>,
    queue: usize,
}

impl std::fmt::Debug for ClientHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientHandle")
            .field("state", &self.state())
            .field("queued", &self.commands.len())
            .finish_non_exhaustive()
    }
}

impl ClientHandle {
    fn push(&self, cmd: Command) -> Result<(), ClientError> {
        match self.commands.try_send(cmd) {
            Ok(()) => {
                self.node.nudge(0);
                Ok(())
            }
            Err(crossbeam_channel::TrySendError::Full(_)) => {
                self.node.nudge(0);
                Err(ClientError::QueueFull(self.queue))
            }
            Err(crossbeam_channel::TrySendError::Disconnected(_)) => {
                Err(ClientError::Closed(CloseReason::TransportClosed))
            }
        }
    }

    /// Refuse at once only when the link has stopped: while it reconnects, requests wait
    /// for the next connection (within their deadlines).
    fn check_up(&self) -> Result<(), ClientError> {
        if self.shared.up.load(Ordering::SeqCst) {
            return Ok(());
        }
        match self.state() {
            s @ LinkState::Stopped { .. } => Err(ClientError::NotConnected(s)),
            _ => Ok(()),
        }
    }

    /// Send a request; its outcome comes through the returned future (also usable without
    /// an executor: [`ReplyFuture::wait`]). While the link reconnects the request waits for
    /// the next connection, within `timeout`; one that a draining node went away from
    /// without answering is sent again. Fails at once when the link has stopped or the
    /// queue to the runtime is full.
    pub fn request(
        &self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<ReplyFuture, ClientError> {
        self.check_up()?;
        let (tx, rx) = oneshot::channel();
        self.push(Command::Request {
            stream_id,
            msg_type,
            payload,
            deadline: Instant::now() + timeout,
            done: Completion::Future(tx),
        })?;
        Ok(ReplyFuture { rx })
    }

    /// Send a request; `callback` gets its outcome, once, on the runtime's thread (keep it
    /// short; never block in it).
    pub fn request_with<F>(
        &self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        timeout: Duration,
        callback: F,
    ) -> Result<(), ClientError>
    where
        F: FnOnce(Reply) + Send + 'static,
    {
        self.check_up()?;
        self.push(Command::Request {
            stream_id,
            msg_type,
            payload,
            deadline: Instant::now() + timeout,
            done: Completion::Callback(Box::new(callback)),
        })
    }

    /// Send a frame that expects no answer.
    pub fn send(
        &self,
        stream_id: u32,
        msg_type: MessageType,
        payload: Bytes,
        opts: SendOptions,
    ) -> Result<(), ClientError> {
        self.check_up()?;
        self.push(Command::Send {
            stream_id,
            msg_type,
            payload,
            opts,
        })
    }

    /// The next event from the node (frames it pushed, stream events, the connection's
    /// end), waiting up to `timeout`.
    pub fn next_event(&self, timeout: Duration) -> Option<Event> {
        let e = self.events.recv_timeout(timeout).ok();
        if self.shared.held.load(Ordering::SeqCst) {
            // The runtime holds the connection's input until the handle makes room.
            self.node.nudge(0);
        }
        e
    }

    /// Where the link stands.
    pub fn state(&self) -> LinkState {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Requests sent again on a new connection after their node went away (CLOSE 502,
    /// draining) without answering them.
    pub fn retried(&self) -> u64 {
        self.shared.retried.load(Ordering::Relaxed)
    }

    /// Whether the link is up now.
    pub fn is_connected(&self) -> bool {
        self.shared.up.load(Ordering::SeqCst)
    }

    /// Wait up to `timeout` for the link to be up.
    pub fn wait_connected(&self, timeout: Duration) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        // Each turn sleeps at most 1 ms: bounded by the timeout.
        while !self.is_connected() {
            if let LinkState::Stopped { .. } = self.state() {
                return Err(ClientError::NotConnected(self.state()));
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout);
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Close the connection (CLOSE after what is queued) and stop the runtime. Requests
    /// still in flight are answered, or reported lost.
    pub fn close(self) {
        let _ = self.push(Command::Close);
        let deadline = Instant::now() + Duration::from_secs(2);
        // Each turn sleeps 1 ms: bounded by the deadline.
        while !matches!(self.state(), LinkState::Stopped { .. }) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.node.shutdown();
        self.node.join();
    }
}

/// The outcome of a [`ClientHandle::request`], as a future.
#[derive(Debug)]
pub struct ReplyFuture {
    rx: oneshot::Receiver<Reply>,
}

impl Future for ReplyFuture {
    type Output = Reply;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Reply> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Reply::Lost(CloseReason::TransportClosed)))
    }
}

impl ReplyFuture {
    /// Block the calling thread until the outcome is known (no executor needed).
    pub fn wait(self) -> Reply {
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut fut = self;
        // Each turn parks until the sender wakes it: ends when the reply comes or the
        // runtime drops the sender.
        loop {
            if let Poll::Ready(r) = Pin::new(&mut fut).poll(&mut cx) {
                return r;
            }
            std::thread::park();
        }
    }
}
