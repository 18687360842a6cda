//! The agent: a node with no listener whose service keeps a link to the control plane (its
//! URLs in order, reconnecting with backoff, jitter and a circuit breaker), announces itself
//! and renews its lease with STATUS_UPDATE, runs the jobs it is given (each on a thread of its
//! own: [`exec`]), and reports them as `crate::wire` says.
//!
//! Nothing it must report is lost to a broken connection: a job's output waits until the
//! control plane acknowledges it — in memory, then spilled to a file in the work directory
//! (both bounded: past them the job's lines are not taken, so its own writes wait) — and its
//! result waits until every line is acknowledged and the result itself is answered. On a new connection the agent announces
//! itself, re-attaches to what it still runs (JOB_START again), and sends again from the last
//! acknowledged line. A job the control plane no longer counts as this agent's (its attempt
//! was replaced while the agent was away) is ended here.
//!
//! ```no_run
//! use valkyrie_jobs::agent::{AgentConfig, Agent};
//! use valkyrie_runtime::Node;
//!
//! let agent = Agent::new(AgentConfig::new("builder-1", ["tcp://127.0.0.1:7420"], "/tmp/work"));
//! let node = Node::builder()
//!     .without_listeners()
//!     .shards(1)
//!     .service(move |shard| agent.service(shard))
//!     .start()?;
//! node.run_until_signal()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use valkyrie_protocol::message::{
    JobAccept, JobCancel, JobFailed, JobMigrate, JobPause, JobReject, JobRequest, JobResume,
    Payload, StatusUpdate,
};
use valkyrie_protocol::{Frame, MessageType, SendOptions};
use valkyrie_runtime::{ConnRef, ConnectOptions, Ctx, LinkId, LinkState, Nudger, Reply, Service};

use crate::model::JobSpec;
use crate::scheduler::AgentInfo;
use crate::wire::{self, JOB_STREAM};

mod backlog;
mod exec;
mod messages;
mod report;
mod upload;

use exec::{ArtifactFile, Control, ExecMsg, JobThread};
use messages::{batch, is_stale, result, start};

/// Messages from one job's thread waiting for the shard, at most.
const EXEC_QUEUE: usize = 1024;

/// Timer token: announce again (lease).
const HEARTBEAT: u64 = 1;
/// Timer token: send what waits (after back-pressure or a busy store).
const RETRY: u64 = 2;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its id (`--id`).
    pub id: String,
    /// The control plane's URLs, tried in order.
    pub urls: Vec<String>,
    /// Its labels.
    pub labels: BTreeSet<String>,
    /// Jobs it runs at once.
    pub slots: u32,
    /// Where jobs run (a job's `cwd` is taken relative to it).
    pub work: PathBuf,
    /// How often it announces itself (the control plane's lease is three of these).
    pub heartbeat: Duration,
    /// Between SIGTERM and SIGKILL when a job is cancelled or times out.
    pub grace: Duration,
    /// How long a report may wait for its answer before it is sent again.
    pub request_timeout: Duration,
    /// Run each job in a cgroup of its own where the host offers cgroups (default true).
    pub cgroups: bool,
    /// Lines of one job's unacknowledged output held in memory (default 65,536); past them
    /// they spill to a file in the work directory.
    pub memory_lines: usize,
    /// Bytes of one job's output spilled to disk at most (default 256 MiB); past them the
    /// job's lines are not taken and its writes wait.
    pub spool_bytes: u64,
    /// The protocol configuration of its connections (security mode and keys; default: the
    /// node's own).
    pub protocol: Option<valkyrie_protocol::Config>,
    /// TLS under the frames (mtls), and the name the control plane's certificate carries.
    pub tls: Option<(
        Arc<valkyrie_protocol::security::mtls::rustls::ClientConfig>,
        Option<String>,
    )>,
}

impl AgentConfig {
    /// What the names of this agent's jobs' cgroups start with: its id and a hash of its
    /// work directory (one agent's leftovers are told from another's on the same host).
    pub fn cgroup_prefix(&self) -> String {
        let h = blake3::hash(self.work.as_os_str().as_encoded_bytes()).to_hex();
        let id: String = self
            .id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        format!("valkyrie-{id}-{}-", &h[..8])
    }

    /// An agent `id` of one slot, no labels, for the control plane at `urls`, running jobs in
    /// `work`.
    pub fn new<I, S>(id: &str, urls: I, work: impl Into<PathBuf>) -> AgentConfig
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        AgentConfig {
            id: id.to_owned(),
            urls: urls.into_iter().map(Into::into).collect(),
            labels: BTreeSet::new(),
            slots: 1,
            work: work.into(),
            heartbeat: Duration::from_secs(1),
            grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            cgroups: true,
            memory_lines: 65_536,
            spool_bytes: 256 * 1024 * 1024,
            protocol: None,
            tls: None,
        }
    }
}

/// An agent: give [`Agent::service`] to a node's builder.
#[derive(Debug, Clone)]
pub struct Agent {
    config: Arc<AgentConfig>,
}

impl Agent {
    /// An agent with `config`.
    pub fn new(config: AgentConfig) -> Agent {
        Agent {
            config: Arc::new(config),
        }
    }

    /// The service for shard `shard` (an agent runs on one shard).
    pub fn service(&self, _shard: usize) -> AgentService {
        AgentService {
            cfg: self.config.clone(),
            link: None,
            conn: None,
            jobs: BTreeMap::new(),
            live: BTreeSet::new(),
            pending: HashMap::new(),
            nudger: None,
            retry_set: false,
            next_stream: upload::FIRST_STREAM,
        }
    }
}

/// What an answer the agent waits for is about.
#[derive(Debug, Clone)]
enum Pending {
    Status,
    Start(String),
    /// Output up to this line.
    Logs(String, u64),
    Result(String),
    /// An artifact's FILE_TRANSFER_START.
    UploadStart(String),
    /// An artifact's chunk ending at this offset.
    UploadChunk(String, u64),
    /// An artifact's FILE_TRANSFER_COMPLETE.
    UploadComplete(String),
}

/// A job on this agent.
struct JobRun {
    epoch: u64,
    /// Lines after `acked`, in order: the first is line `acked + 1`.
    lines: backlog::Backlog,
    /// The last line the control plane acknowledged.
    acked: u64,
    /// The last line sent on this connection.
    sent: u64,
    batches_in_flight: usize,
    started: bool,
    /// Its JOB_COMPLETE or JOB_FAILED, once it ended.
    result: Option<(MessageType, bytes::Bytes)>,
    result_in_flight: bool,
    /// Its thread, when it has one: what it says, and how to reach it.
    thread: Option<(Receiver<ExecMsg>, Sender<Control>)>,
    /// How it ended (its result is built again once its artifacts are up).
    end: Option<ExecMsg>,
    /// When it last reported progress.
    last_progress: Option<std::time::Instant>,
    /// Artifacts still to upload, the one under way, those uploaded, those it did not leave.
    uploads: VecDeque<ArtifactFile>,
    upload: Option<upload::Active>,
    uploaded: Vec<String>,
    missing: Vec<String>,
}

/// The agent's service.
pub struct AgentService {
    cfg: Arc<AgentConfig>,
    link: Option<LinkId>,
    conn: Option<ConnRef>,
    jobs: BTreeMap<String, JobRun>,
    /// Jobs whose process runs (their thread may have news): what a nudge looks at.
    live: BTreeSet<String>,
    pending: HashMap<u32, Pending>,
    nudger: Option<Nudger>,
    retry_set: bool,
    /// The next data stream an upload takes (odd: this side's).
    next_stream: u32,
}

impl std::fmt::Debug for AgentService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("id", &self.cfg.id)
            .field("jobs", &self.jobs.len())
            .finish()
    }
}

impl AgentService {
    fn info(&self) -> AgentInfo {
        AgentInfo {
            id: self.cfg.id.clone(),
            labels: self.cfg.labels.clone(),
            slots: self.cfg.slots,
            projects: None,
        }
    }

    /// Send a request on the job stream; its answer comes to `on_reply`.
    fn request(
        &mut self,
        ctx: &mut Ctx<'_>,
        ty: MessageType,
        payload: bytes::Bytes,
        p: Pending,
    ) -> bool {
        self.request_on(ctx, JOB_STREAM, ty, payload, p)
    }

    /// Send a request on `stream` of the link's connection.
    fn request_on(
        &mut self,
        ctx: &mut Ctx<'_>,
        stream: u32,
        ty: MessageType,
        payload: bytes::Bytes,
        p: Pending,
    ) -> bool {
        let Some(conn) = self.conn else {
            return false;
        };
        let deadline = ctx.now() + self.cfg.request_timeout;
        match ctx.request(conn, stream, ty, payload, deadline) {
            Ok(corr) => {
                self.pending.insert(corr, p);
                true
            }
            Err(_) => {
                // Back-pressure or a connection ending: try again shortly.
                self.retry_soon(ctx);
                false
            }
        }
    }

    fn send(&mut self, ctx: &mut Ctx<'_>, ty: MessageType, payload: bytes::Bytes) {
        if let Some(conn) = self.conn {
            let _ = ctx.send(conn, JOB_STREAM, ty, payload, SendOptions::default());
        }
    }

    fn retry_soon(&mut self, ctx: &mut Ctx<'_>) {
        if !self.retry_set {
            self.retry_set = true;
            let _ = ctx.set_timer(ctx.now() + Duration::from_millis(20), RETRY);
        }
    }

    fn announce(&mut self, ctx: &mut Ctx<'_>) {
        let status: StatusUpdate = wire::status(&self.info(), self.jobs.len() as u32);
        self.request(
            ctx,
            MessageType::StatusUpdate,
            status.to_bytes(),
            Pending::Status,
        );
    }

    /// A JOB_REQUEST: accept and start it, or say why not.
    fn job_request(&mut self, ctx: &mut Ctx<'_>, req: JobRequest) {
        if let Some(run) = self.jobs.get(&req.job_id)
            && run.epoch == req.epoch
        {
            // Sent again (a reconnect crossed it): it runs already.
            let accept = JobAccept {
                job_id: req.job_id,
                agent_id: self.cfg.id.clone(),
                epoch: req.epoch,
            };
            self.send(ctx, MessageType::JobAccept, accept.to_bytes());
            return;
        }
        // A job that has ended holds no slot while its result is on its way.
        if self.live.len() >= self.cfg.slots as usize {
            let reject = JobReject {
                job_id: req.job_id,
                code: 401,
                reason: format!("all {} slots are taken", self.cfg.slots),
                retry_after_ms: None,
                epoch: req.epoch,
            };
            self.send(ctx, MessageType::JobReject, reject.to_bytes());
            return;
        }
        let accept = JobAccept {
            job_id: req.job_id.clone(),
            agent_id: self.cfg.id.clone(),
            epoch: req.epoch,
        };
        self.send(ctx, MessageType::JobAccept, accept.to_bytes());
        let acked = req.log_from.max(1) - 1;
        let mut run = JobRun {
            epoch: req.epoch,
            lines: backlog::Backlog::new(
                self.cfg
                    .work
                    .join(".valkyrie-spool")
                    .join(format!("{}-{}.ndjson", req.job_id, req.epoch)),
                self.cfg.memory_lines,
                self.cfg.spool_bytes,
            ),
            acked,
            sent: acked,
            batches_in_flight: 0,
            started: false,
            result: None,
            result_in_flight: false,
            thread: None,
            end: None,
            last_progress: None,
            uploads: VecDeque::new(),
            upload: None,
            uploaded: Vec::new(),
            missing: Vec::new(),
        };
        match serde_json::from_value::<JobSpec>(req.spec) {
            Ok(spec) if spec.builtin.as_deref() == Some("noop") => {
                // Done as soon as it starts: no process, no thread, and no JOB_START — its
                // result says it ran (the store takes the start from the end).
                run.result = Some(result(
                    &req.job_id,
                    req.epoch,
                    &ExecMsg::Exited {
                        exit_code: Some(0),
                        signal: None,
                        duration: Duration::ZERO,
                        timed_out: false,
                        cancelled: false,
                    },
                    &[],
                    &[],
                ));
                self.jobs.insert(req.job_id.clone(), run);
                self.flush_job(ctx, &req.job_id);
                return;
            }
            Ok(spec) => {
                let Some(nudger) = self.nudger.clone() else {
                    return;
                };
                let (out, from_exec) = crossbeam_channel::bounded(EXEC_QUEUE);
                let (control, control_rx) = crossbeam_channel::bounded(16);
                run.thread = Some((from_exec, control));
                JobThread {
                    spec,
                    work: self.cfg.work.clone(),
                    grace: self.cfg.grace,
                    out,
                    control: control_rx,
                    nudger,
                    cgroup: self.cfg.cgroups.then(|| {
                        format!("{}{}-{}", self.cfg.cgroup_prefix(), req.job_id, req.epoch)
                    }),
                }
                .spawn(&req.job_id);
                self.live.insert(req.job_id.clone());
            }
            Err(e) => {
                let failed = JobFailed {
                    job_id: req.job_id.clone(),
                    code: 405,
                    reason: format!("not a job spec: {e}"),
                    retryable: false,
                    epoch: req.epoch,
                };
                run.result = Some((MessageType::JobFailed, failed.to_bytes()));
            }
        }
        self.jobs.insert(req.job_id.clone(), run);
        self.flush_job(ctx, &req.job_id);
    }

    fn control(&mut self, job_id: &str, c: Control) {
        if let Some((_, control)) = self.jobs.get(job_id).and_then(|r| r.thread.as_ref()) {
            let _ = control.try_send(c);
        }
    }
}

impl Service for AgentService {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.nudger = Some(ctx.nudger());
        let _ = std::fs::create_dir_all(&self.cfg.work);
        if self.cfg.cgroups {
            // What an earlier run of this agent left (it was killed): ended and removed.
            let n = crate::cgroup::sweep(&self.cfg.cgroup_prefix());
            if n > 0 {
                tracing::warn!(
                    cgroups = n,
                    "ended the jobs an earlier run of this agent left"
                );
            }
        }
        match ConnectOptions::new(&self.cfg.urls) {
            Ok(mut opts) => {
                if let Some(p) = &self.cfg.protocol {
                    opts = opts.protocol(p.clone());
                }
                if let Some((tls, name)) = &self.cfg.tls {
                    opts = opts.tls(tls.clone(), name.clone());
                }
                self.link = Some(ctx.connect(opts));
            }
            Err(e) => tracing::error!(error = %e, "the agent has no URL it can use"),
        }
        let _ = ctx.set_timer(ctx.now() + self.cfg.heartbeat, HEARTBEAT);
    }

    fn on_link(&mut self, ctx: &mut Ctx<'_>, _link: LinkId, state: &LinkState) {
        match state {
            LinkState::Up { conn, url } => {
                tracing::info!(%url, "agent connected to the control plane");
                self.conn = Some(*conn);
                self.announce(ctx);
                // Re-attach: what runs is claimed again, and output goes on from the last
                // acknowledged line.
                let ids: Vec<String> = self.jobs.keys().cloned().collect();
                for id in ids {
                    if let Some(run) = self.jobs.get_mut(&id) {
                        run.sent = run.acked;
                        run.batches_in_flight = 0;
                        run.result_in_flight = false;
                        if let Some(up) = &mut run.upload {
                            up.restart();
                        }
                    }
                    self.reclaim(ctx, &id);
                    self.flush_job(ctx, &id);
                }
            }
            _ => {
                if self.conn.take().is_some() {
                    tracing::warn!("agent lost its control plane: reconnecting");
                }
            }
        }
    }

    fn on_frame(&mut self, ctx: &mut Ctx<'_>, _conn: ConnRef, frame: Frame) {
        let p = &frame.payload;
        match frame.msg_type() {
            MessageType::JobRequest => match JobRequest::from_bytes(p) {
                Ok(req) => self.job_request(ctx, req),
                Err(e) => tracing::warn!(error = %e, "a JOB_REQUEST that does not parse"),
            },
            MessageType::JobCancel => {
                if let Ok(c) = JobCancel::from_bytes(p) {
                    self.control(&c.job_id, Control::Cancel);
                }
            }
            MessageType::JobMigrate => {
                // Stopped here; the control plane runs it again where it is sent.
                if let Ok(c) = JobMigrate::from_bytes(p) {
                    self.control(&c.job_id, Control::Cancel);
                }
            }
            MessageType::JobPause => {
                if let Ok(c) = JobPause::from_bytes(p) {
                    self.control(&c.job_id, Control::Pause);
                }
            }
            MessageType::JobResume => {
                if let Ok(c) = JobResume::from_bytes(p) {
                    self.control(&c.job_id, Control::Resume);
                }
            }
            _ => {}
        }
    }

    fn on_reply(&mut self, ctx: &mut Ctx<'_>, _conn: ConnRef, request: u32, reply: Reply) {
        let Some(p) = self.pending.remove(&request) else {
            return;
        };
        self.answered(ctx, p, reply);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        match token {
            HEARTBEAT => {
                self.announce(ctx);
                let _ = ctx.set_timer(ctx.now() + self.cfg.heartbeat, HEARTBEAT);
            }
            RETRY => {
                self.retry_set = false;
                self.drain(ctx, true);
            }
            _ => {}
        }
    }

    fn on_nudge(&mut self, ctx: &mut Ctx<'_>) {
        self.drain(ctx, false);
    }
}
