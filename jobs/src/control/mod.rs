//! The control plane on a node: a [`JobsService`] on every shard, made by a [`ControlPlane`].
//!
//! Every shard takes agents' connections and REST requests; what it can do alone it does
//! there (a job's start, output and result go straight to the store, and the store's thread
//! answers the agent through that shard). What needs one view of all agents — the scheduler,
//! leases, which attempt runs where — is the dispatcher on shard 0 ([`dispatcher`]): the
//! other shards hand it events, and it sends JOB_REQUESTs to agents wherever they are (a send
//! to another shard's connection crosses the mesh once).
//!
//! Between threads (the store's thread to a shard, a shard to the dispatcher) work goes
//! through each shard's lane: a bounded queue the shard drains when its [`Nudger`] wakes it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use valkyrie_protocol::{ErrorCode, Flags, MessageType, SendOptions};
use valkyrie_runtime::http::Response;
use valkyrie_runtime::{ConnRef, Ctx, Nudger};

use crate::committer::Committer;
use crate::scheduler::Policy;
use crate::store::LogPage;

mod artifacts;
pub(crate) mod dispatcher;
mod download;
pub(crate) mod event;
mod follow;
mod frames;
mod leases;
mod metrics;
mod ops;
mod service;
mod sharing;

pub use service::JobsService;

use event::Event;

/// Requests, answers and events waiting for one shard, at most.
const LANE: usize = 65_536;

/// Events a shard holds for the dispatcher while its lane is full, at most; past it the
/// shard stops reading agents until they drain.
const OUTBOX: usize = 65_536;

/// How the control plane runs.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The control plane's node id (in its answers to agents).
    pub node_id: String,
    /// How long an agent may go unheard before its jobs are given to others (default 3 s:
    /// three of an agent's default heartbeats).
    pub lease: Duration,
    /// How agents are chosen.
    pub policy: Policy,
    /// Queued jobs the dispatcher holds in memory at most (the store holds the rest).
    pub queue: usize,
    /// Where uploaded artifacts are kept (`JOB/NAME`); none: uploads are refused.
    pub artifacts: Option<std::path::PathBuf>,
    /// The largest artifact kept, in bytes.
    pub artifact_cap: u64,
    /// How long the output of a job that ended is kept (none: for ever).
    pub log_retention: Option<Duration>,
    /// The key that seals jobs' secrets; none: a job with secrets is refused.
    pub secrets: Option<crate::SecretsKey>,
    /// The zero_trust policy whose project grants decide which agents run a project's jobs
    /// (none: any agent runs any project).
    pub grants: Option<Arc<valkyrie_protocol::security::zero_trust::Policy>>,
}

impl Default for ControlConfig {
    fn default() -> ControlConfig {
        ControlConfig {
            node_id: "control-plane".into(),
            lease: Duration::from_secs(3),
            policy: Policy::LeastLoaded,
            queue: 100_000,
            artifacts: None,
            artifact_cap: 256 * 1024 * 1024,
            log_retention: None,
            secrets: None,
            grants: None,
        }
    }
}

/// What one shard's lane carries.
pub(crate) enum Inbox {
    /// The answer to an HTTP request of this shard.
    Http(ConnRef, Response),
    /// An answer to an agent's request (RESPONSE, its stream and correlation id).
    Answer {
        conn: ConnRef,
        stream: u32,
        corr: u32,
        msg_type: MessageType,
        payload: Bytes,
    },
    /// An ERROR answering an agent's request.
    Error {
        conn: ConnRef,
        stream: u32,
        corr: u32,
        code: ErrorCode,
        message: String,
    },
    /// A page of a job's output for a following HTTP client; `done` once the job is over
    /// and the page is its last.
    Logs {
        conn: ConnRef,
        page: LogPage,
        done: bool,
    },
    /// A piece of an artifact for a downloading HTTP client (the head first: `Err` when
    /// there is nothing to download).
    Download {
        conn: ConnRef,
        piece: Result<download::Piece, Response>,
    },
    /// For the dispatcher (shard 0).
    Event(Event),
}

struct Lane {
    tx: Sender<Inbox>,
    rx: Receiver<Inbox>,
    nudger: OnceLock<Nudger>,
}

/// What every shard's service shares: the store, the configuration, the lanes.
pub(crate) struct Hub {
    pub(crate) store: Arc<Committer>,
    pub(crate) config: ControlConfig,
    pub(crate) metrics: Arc<metrics::JobsMetrics>,
    lanes: OnceLock<Vec<Lane>>,
    /// The shared store has not answered for half a lease: agents are sent away.
    pub(crate) cut: AtomicBool,
}

impl Hub {
    /// Make the lanes for `shards` shards (the first shard to start does it).
    fn lanes(&self, shards: usize) -> &[Lane] {
        self.lanes.get_or_init(|| {
            (0..shards)
                .map(|_| {
                    let (tx, rx) = crossbeam_channel::bounded(LANE);
                    Lane {
                        tx,
                        rx,
                        nudger: OnceLock::new(),
                    }
                })
                .collect()
        })
    }

    fn lane(&self, shard: usize) -> Option<&Lane> {
        self.lanes.get().and_then(|l| l.get(shard))
    }

    /// Hand `msg` to `shard`, waiting while its lane is full (the store's thread: it is
    /// slowed, never a shard).
    pub(crate) fn post(&self, shard: usize, msg: Inbox) {
        if let Some(lane) = self.lane(shard)
            && lane.tx.send(msg).is_ok()
            && let Some(n) = lane.nudger.get()
        {
            n.nudge();
        }
    }

    /// Hand `msg` to `shard` without waiting: it comes back when the lane is full.
    pub(crate) fn try_post(&self, shard: usize, msg: Inbox) -> Result<(), Inbox> {
        let Some(lane) = self.lane(shard) else {
            return Err(msg);
        };
        match lane.tx.try_send(msg) {
            Ok(()) => {
                if let Some(n) = lane.nudger.get() {
                    n.nudge();
                }
                Ok(())
            }
            Err(TrySendError::Full(m) | TrySendError::Disconnected(m)) => Err(m),
        }
    }

    /// The answer to an HTTP request, handed to the shard that holds its connection.
    pub(crate) fn http(&self, conn: ConnRef, resp: Response) {
        self.post(conn.shard as usize, Inbox::Http(conn, resp));
    }

    /// An answer to an agent's request, from the store's thread.
    pub(crate) fn answer(&self, to: Reply, msg_type: MessageType, payload: Bytes) {
        self.post(
            to.conn.shard as usize,
            Inbox::Answer {
                conn: to.conn,
                stream: to.stream,
                corr: to.corr,
                msg_type,
                payload,
            },
        );
    }

    /// An ERROR answering an agent's request, from the store's thread.
    pub(crate) fn refuse(&self, to: Reply, code: ErrorCode, message: String) {
        self.post(
            to.conn.shard as usize,
            Inbox::Error {
                conn: to.conn,
                stream: to.stream,
                corr: to.corr,
                code,
                message,
            },
        );
    }

    /// An event for the dispatcher, from the store's thread.
    pub(crate) fn dispatch(&self, ev: Event) {
        self.post(0, Inbox::Event(ev));
    }
}

/// Where an answer to an agent's request goes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reply {
    pub(crate) conn: ConnRef,
    pub(crate) stream: u32,
    pub(crate) corr: u32,
}

/// A control plane: the store and the configuration its services share. Give
/// [`ControlPlane::service`] to [`NodeBuilder::service`](valkyrie_runtime::NodeBuilder::service).
#[derive(Clone)]
pub struct ControlPlane {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("config", &self.hub.config)
            .finish()
    }
}

impl ControlPlane {
    /// A control plane on `store`.
    pub fn new(store: Arc<Committer>, config: ControlConfig) -> ControlPlane {
        ControlPlane {
            hub: Arc::new(Hub {
                store,
                config,
                metrics: Arc::default(),
                lanes: OnceLock::new(),
                cut: AtomicBool::new(false),
            }),
        }
    }

    /// The service of shard `shard`.
    pub fn service(&self, shard: usize) -> JobsService {
        JobsService::new(self.hub.clone(), shard)
    }

    /// Jobs that entered `state` since the control plane started (`Queued`: submitted or
    /// retried; a final state: ended so).
    pub fn count(&self, state: crate::model::JobState) -> u64 {
        self.hub.metrics.count(state)
    }

    /// Lines of jobs' output committed since the control plane started.
    pub fn log_lines(&self) -> u64 {
        self.hub
            .metrics
            .log_lines
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The latest times from a job's submission to its agent's JOB_ACCEPT, in microseconds
    /// (up to 65,536 of them, in no particular order): what `valkyrie_job_assignment_seconds`
    /// counts, for a percentile finer than its buckets.
    pub fn assignment_samples(&self) -> Vec<u64> {
        self.hub.metrics.samples()
    }

    /// Hand the dispatcher a notice from another control plane sharing the store (give this
    /// to [`crate::notice::listen`]).
    pub fn notice(&self, notice: crate::notice::Notice) {
        self.hub.dispatch(Event::Notified(notice));
    }

    /// Whether the control plane serves agents: false while its shared store has not
    /// answered for half a lease (its agents are sent to the others).
    pub fn serving(&self) -> bool {
        !self.hub.cut.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The control plane's metrics, for [`NodeBuilder::collector`](valkyrie_runtime::NodeBuilder::collector).
    pub fn collector(&self) -> impl prometheus_client::collector::Collector + use<> {
        metrics::JobsCollector(self.hub.metrics.clone())
    }
}

/// What a shard's service keeps besides the dispatcher: its agents' connections, its events
/// waiting for the dispatcher's lane, its following HTTP clients.
#[derive(Default)]
pub(crate) struct Local {
    /// The agent behind each of this shard's agent connections.
    pub(crate) agents: HashMap<ConnRef, String>,
    /// Events the dispatcher's lane had no room for yet.
    pub(crate) outbox: VecDeque<Event>,
    /// Connections held while the outbox is over its bound.
    pub(crate) held: Vec<ConnRef>,
    /// HTTP clients following a job's output.
    pub(crate) followers: HashMap<ConnRef, Follow>,
    /// Uploads under way, by connection and stream.
    pub(crate) uploads: HashMap<(ConnRef, u32), artifacts::Upload>,
    /// Downloads under way, by connection.
    pub(crate) downloads: HashMap<ConnRef, download::Download>,
}

/// A client following a job's output (`GET .../logs?follow=1`).
pub(crate) struct Follow {
    pub(crate) job_id: String,
    pub(crate) next: u64,
    /// A read is on its way.
    pub(crate) reading: bool,
    /// Text the client had no room for yet.
    pub(crate) pending: Option<String>,
    /// The job is over: finish once `pending` is out.
    pub(crate) done: bool,
}

impl Local {
    /// Hand the dispatcher an event from a shard other than 0.
    pub(crate) fn hand_on(&mut self, hub: &Hub, ev: Event) {
        if !self.outbox.is_empty() {
            self.outbox.push_back(ev);
            return;
        }
        if let Err(Inbox::Event(ev)) = hub.try_post(0, Inbox::Event(ev)) {
            self.outbox.push_back(ev);
        }
    }

    /// Send what waits in the outbox; hold or release agents by its length.
    pub(crate) fn flush(&mut self, ctx: &mut Ctx<'_>, hub: &Hub) {
        while let Some(ev) = self.outbox.pop_front() {
            if let Err(Inbox::Event(ev)) = hub.try_post(0, Inbox::Event(ev)) {
                self.outbox.push_front(ev);
                break;
            }
        }
        if self.outbox.len() >= OUTBOX && self.held.is_empty() {
            self.held = self.agents.keys().copied().collect();
            for c in &self.held {
                let _ = ctx.hold_input(*c, true);
            }
        } else if self.outbox.len() < OUTBOX / 2 {
            for c in self.held.drain(..) {
                let _ = ctx.hold_input(c, false);
            }
        }
    }
}

/// RESPONSE options answering `corr`.
pub(crate) fn response(corr: u32) -> SendOptions {
    SendOptions {
        flags: Flags::RESPONSE,
        correlation_id: corr,
        ..SendOptions::default()
    }
}

/// Now, Unix milliseconds.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
