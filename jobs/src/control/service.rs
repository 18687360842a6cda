//! [`JobsService`]: the control plane's service on one shard — agents' frames, the REST
//! API's requests, its lane drained when the shard is nudged, and on shard 0 the dispatcher.

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use valkyrie_protocol::{CloseReason, Frame};
use valkyrie_runtime::http::Request;
use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer, Service};

use super::dispatcher::{Dispatcher, RETRY_TOKENS};
use super::event::Event;
use super::{Hub, Inbox, Local, response};

/// Timer token: the dispatcher's tick (leases, claims, loads).
const TICK: u64 = 1;
/// Timer token: send what waits in the outbox.
const FLUSH: u64 = 2;
/// Timer token: read more for the clients following a job's output.
pub(crate) const FOLLOW: u64 = 3;
/// Timer token: prune old output (shard 0).
const PRUNE: u64 = 4;

/// How often shard 0 prunes the output of jobs past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How often following clients are given what was stored since.
pub(crate) const FOLLOW_EVERY: Duration = Duration::from_millis(20);

/// The control plane's service on one shard ([`ControlPlane::service`](super::ControlPlane::service)).
pub struct JobsService {
    pub(crate) hub: Arc<Hub>,
    pub(crate) shard: usize,
    pub(crate) seq: u32,
    pub(crate) local: Local,
    dispatcher: Option<Dispatcher>,
    following: bool,
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService")
            .field("shard", &self.shard)
            .finish()
    }
}

impl JobsService {
    pub(crate) fn new(hub: Arc<Hub>, shard: usize) -> JobsService {
        let dispatcher = (shard == 0).then(|| Dispatcher::new(&hub));
        // Ids are made from the time and this sequence: starting it at random keeps two
        // control planes on one store from making the same id in the same millisecond.
        let mut seed = [0u8; 4];
        let _ = getrandom::fill(&mut seed);
        JobsService {
            hub,
            shard,
            seq: u32::from_le_bytes(seed),
            local: Local::default(),
            dispatcher,
            following: false,
        }
    }

    /// Hand the dispatcher an event: at once on shard 0, through its lane elsewhere.
    pub(crate) fn dispatch(&mut self, ctx: &mut Ctx<'_>, ev: Event) {
        match &mut self.dispatcher {
            Some(d) => d.handle(ctx, &self.hub, ev),
            None => {
                self.local.hand_on(&self.hub, ev);
                if !self.local.outbox.is_empty() {
                    let _ = ctx.set_timer(ctx.now() + Duration::from_millis(1), FLUSH);
                }
            }
        }
    }

    /// Have the follow timer run (once at a time).
    pub(crate) fn follow_soon(&mut self, ctx: &mut Ctx<'_>) {
        if !self.following {
            self.following = true;
            let _ = ctx.set_timer(ctx.now() + FOLLOW_EVERY, FOLLOW);
        }
    }

    fn tick_every(&self) -> Duration {
        (self.hub.config.lease / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl Service for JobsService {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        let lanes = self.hub.lanes(ctx.shards());
        let _ = lanes[self.shard].nudger.set(ctx.nudger());
        self.routes(ctx);
        if let Some(d) = &mut self.dispatcher {
            d.start(&self.hub);
            let _ = ctx.set_timer(ctx.now() + self.tick_every(), TICK);
            if self.hub.config.log_retention.is_some() {
                let _ = ctx.set_timer(ctx.now(), PRUNE);
            }
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, frame: Frame) {
        // Uploads only from agents that announced themselves.
        if self.local.agents.contains_key(&conn) && self.upload_frame(ctx, conn, &frame) {
            return;
        }
        let hub = self.hub.clone();
        let mut agents = std::mem::take(&mut self.local.agents);
        super::frames::on_agent_frame(ctx, &hub, &mut agents, conn, frame, &mut |ctx, ev| {
            self.dispatch(ctx, ev)
        });
        self.local.agents = agents;
    }

    fn on_event(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, event: &valkyrie_protocol::Event) {
        if let valkyrie_protocol::Event::StreamFinished { id } = event {
            self.upload_finished(ctx, conn, *id);
        }
    }

    fn on_close(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, _reason: &CloseReason) {
        self.local.uploads.retain(|(c, _), _| *c != conn);
        self.local.downloads.remove(&conn);
        if self.local.agents.remove(&conn).is_some() {
            self.dispatch(ctx, Event::ConnClosed { conn });
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        match token {
            TICK => {
                if let Some(d) = &mut self.dispatcher {
                    d.tick(ctx, &self.hub);
                }
                let _ = ctx.set_timer(ctx.now() + self.tick_every(), TICK);
            }
            FLUSH => {
                self.local.flush(ctx, &self.hub);
                if !self.local.outbox.is_empty() {
                    let _ = ctx.set_timer(ctx.now() + Duration::from_millis(1), FLUSH);
                }
            }
            PRUNE => {
                if let Some(keep) = self.hub.config.log_retention {
                    let before = super::now_ms().saturating_sub(keep.as_millis() as u64);
                    let reply = Box::new(|r: Result<crate::Applied, crate::StoreError>| {
                        if let Ok(crate::Applied::Pruned { chunks }) = r
                            && chunks > 0
                        {
                            tracing::info!(chunks, "pruned the output of jobs past the retention");
                        }
                    });
                    let _ = self
                        .hub
                        .store
                        .try_change(crate::Change::Prune { before }, reply);
                    let _ = ctx.set_timer(ctx.now() + PRUNE_EVERY, PRUNE);
                }
            }
            FOLLOW => {
                self.following = false;
                self.read_followed(ctx);
            }
            t if t >= RETRY_TOKENS => {
                if let Some(d) = &mut self.dispatcher {
                    d.retry(t);
                    d.pump(ctx, &self.hub);
                }
            }
            _ => {}
        }
    }

    fn on_nudge(&mut self, ctx: &mut Ctx<'_>) {
        let Some(lane) = self.hub.lanes.get().and_then(|l| l.get(self.shard)) else {
            return;
        };
        let rx = lane.rx.clone();
        // What is there now; what comes meanwhile nudges again.
        for _ in 0..rx.len() {
            let Ok(msg) = rx.try_recv() else { break };
            match msg {
                // The client or agent may have gone meanwhile: nothing to answer then.
                Inbox::Http(conn, resp) => {
                    let _ = ctx.http_respond(conn, resp);
                }
                Inbox::Answer {
                    conn,
                    stream,
                    corr,
                    msg_type,
                    payload,
                } => {
                    let _ = ctx.send(conn, stream, msg_type, payload, response(corr));
                }
                Inbox::Error {
                    conn,
                    stream,
                    corr,
                    code,
                    message,
                } => {
                    let _ = ctx.send_error(conn, code, &message, stream, corr);
                }
                Inbox::Logs { conn, page, done } => self.logs_read(ctx, conn, page, done),
                Inbox::Download { conn, piece } => self.download_piece(ctx, conn, piece),
                Inbox::Event(ev) => {
                    if let Some(d) = &mut self.dispatcher {
                        d.handle(ctx, &self.hub, ev);
                    }
                }
            }
        }
        if !self.local.outbox.is_empty() {
            self.local.flush(ctx, &self.hub);
        }
    }

    fn on_message(&mut self, _ctx: &mut Ctx<'_>, _from: usize, _msg: Box<dyn Any + Send>) {}

    fn on_http(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, req: &Request) -> HttpAnswer {
        self.http(ctx, conn, req)
    }

    fn on_http_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef) {
        if self.local.downloads.contains_key(&conn) {
            self.download_writable(ctx, conn);
        } else {
            self.logs_writable(ctx, conn);
        }
    }

    fn on_http_gone(&mut self, _ctx: &mut Ctx<'_>, conn: ConnRef) {
        self.local.followers.remove(&conn);
        self.local.downloads.remove(&conn);
    }
}
