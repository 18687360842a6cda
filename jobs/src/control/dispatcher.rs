//! The dispatcher, on shard 0: the one view of agents and jobs a control plane needs to
//! dispatch — the [`Scheduler`], each agent's lease, which attempt of a job runs where — and
//! the events that move it. Every decision is made durable before it acts: an assignment is
//! committed (a new attempt, the next epoch) before its JOB_REQUEST leaves; a lost agent's
//! jobs are ended in the store before they are queued again.
//!
//! Leases: an agent is heard from (its STATUS_UPDATE, every heartbeat interval); one unheard
//! for the lease is lost — its connection, if any, is closed and its jobs go back to the
//! queue (a failure when they had started, not one when they had not). An agent that
//! connects again in time re-attaches by sending JOB_START again for what it still runs; a
//! job it does not claim within a lease of its return (or of the control plane's own start)
//! is lost the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_protocol::{MessageType, SendOptions};
use valkyrie_protocol::message::{JobCancel, JobPause, JobRequest, JobResume, Payload};
use valkyrie_protocol::retry::ExponentialBackoff;
use valkyrie_runtime::http::Response;
use valkyrie_runtime::{ConnRef, Ctx};

use super::{Hub, Inbox, now_ms};
use crate::model::{Job, JobSpec, JobState};
use crate::scheduler::{AgentInfo, Queued, Scheduler};
use crate::store::{Applied, Change, StoreError};
use crate::wire::{JOB_STREAM, spec_value};

/// The dispatcher's timer tokens from here on are retries waiting out their backoff.
pub(crate) const RETRY_TOKENS: u64 = 1 << 32;

/// Assignments one pass decides at most.
const PASS: usize = 512;

/// What pause, resume or cancel was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Cancel,
    Pause,
    Resume,
}

/// What moves the dispatcher.
pub(crate) enum Event {
    /// A job was submitted (its commit is on disk).
    Submitted {
        job_id: String,
        spec: Box<JobSpec>,
        created_at: u64,
        at: Instant,
    },
    /// The jobs on agents and the first queued jobs, read when the control plane starts.
    Recovered(Result<(Vec<Job>, Vec<Job>), StoreError>),
    /// More queued jobs read from the store.
    Loaded(Result<Vec<Job>, StoreError>),
    /// An assignment's commit.
    Assigned {
        job_id: String,
        agent: String,
        result: Result<Applied, StoreError>,
    },
    /// An attempt ended (its commit is on disk): the job's state now; `rejected_by` when the
    /// agent turned it down.
    Ended {
        job_id: String,
        state: JobState,
        rejected_by: Option<String>,
    },
    /// A pause, resume or cancel was committed.
    Moved {
        job_id: String,
        state: JobState,
        running: Option<u64>,
        op: Op,
    },
    /// An agent announced itself on `conn` (its lease is renewed).
    AgentUp { info: AgentInfo, conn: ConnRef },
    /// An agent's connection ended.
    ConnClosed { conn: ConnRef },
    /// An agent accepted an attempt.
    Accepted { job_id: String, epoch: u64 },
    /// An agent rejected an attempt.
    Rejected {
        job_id: String,
        epoch: u64,
        agent: String,
        reason: String,
    },
    /// An agent says it runs an attempt (first start, or re-attaching).
    Started {
        job_id: String,
        epoch: u64,
        agent: String,
    },
    /// `GET /api/v1/agents` on `conn`.
    ListAgents { conn: ConnRef },
}

struct AgentSlot {
    info: AgentInfo,
    conn: Option<ConnRef>,
    last_heard: Instant,
    lost: bool,
}

/// A job the dispatcher holds: queued, waiting out a backoff, or on an agent.
struct Tracked {
    spec: Arc<JobSpec>,
    queued: Queued,
    agent: Option<String>,
    epoch: u64,
    started: bool,
    /// Its agent must claim it by then (after a reconnect or a restart).
    confirm_by: Option<Instant>,
    /// Being ended as lost (the commit is on its way).
    losing: bool,
    /// When it was submitted, when this control plane saw it happen.
    submitted: Option<Instant>,
    failures: u32,
}

/// The dispatcher's state.
pub(crate) struct Dispatcher {
    sched: Scheduler,
    agents: BTreeMap<String, AgentSlot>,
    jobs: HashMap<String, Tracked>,
    recovered: bool,
    more_in_store: bool,
    loading: bool,
    retries: HashMap<u64, String>,
    next_token: u64,
    /// Submit → JOB_ACCEPT, microseconds, for the metrics.
    pub(crate) assignment_us: Vec<u64>,
}

fn queued_of(job_id: &str, spec: &JobSpec, created_at: u64) -> Queued {
    Queued {
        job_id: job_id.to_owned(),
        priority: spec.priority,
        created_at,
        labels: spec.labels.clone(),
        group: spec.concurrency_group.clone(),
    }
}

/// Every job in `state`, page by page.
fn all_in(s: &mut dyn crate::Store, state: JobState) -> Result<Vec<Job>, StoreError> {
    let mut out: Vec<Job> = Vec::new();
    loop {
        let after = out.last().map(|j| j.job_id.clone());
        let page = s.jobs(Some(state), 1000, after.as_deref())?;
        let n = page.len();
        out.extend(page);
        if n < 1000 {
            return Ok(out);
        }
    }
}

impl Dispatcher {
    pub(crate) fn new(hub: &Hub) -> Dispatcher {
        Dispatcher {
            sched: Scheduler::new(hub.config.policy, hub.config.queue),
            agents: BTreeMap::new(),
            jobs: HashMap::new(),
            recovered: false,
            more_in_store: true,
            loading: false,
            retries: HashMap::new(),
            next_token: RETRY_TOKENS,
            assignment_us: Vec::new(),
        }
    }

    /// Read what the store holds (once, when the shard starts).
    pub(crate) fn start(&mut self, hub: &Arc<Hub>) {
        let room = self.sched.room();
        let h = hub.clone();
        let read = hub.store.try_read(
            move |s| {
                let mut active = Vec::new();
                for st in [JobState::Assigned, JobState::Running, JobState::Paused] {
                    active.extend(all_in(s, st)?);
                }
                Ok((active, s.queued(room)?))
            },
            move |r| h.dispatch(Event::Recovered(r)),
        );
        if !read {
            tracing::error!("the store's queue is full at start: dispatch waits for a retry");
        }
    }

    /// Every `tick`: leases, claims, loads that failed.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>) {
        if !self.recovered && !self.loading {
            self.start(hub);
        }
        let now = ctx.now();
        let lease = hub.config.lease;
        let mut lost_agents = Vec::new();
        for (id, a) in &mut self.agents {
            if !a.lost && now.duration_since(a.last_heard) > lease {
                a.lost = true;
                if let Some(conn) = a.conn.take() {
                    let _ = ctx.close(conn, 1000, "lease expired");
                }
                lost_agents.push(id.clone());
            }
        }
        for id in lost_agents {
            tracing::warn!(agent = %id, "agent lost: its lease expired");
            for job in self.sched.agent_down(&id) {
                self.lose(hub, &job);
            }
        }
        let unclaimed: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, t)| t.confirm_by.is_some_and(|d| now >= d) && !t.losing)
            .map(|(id, _)| id.clone())
            .collect();
        for job in unclaimed {
            self.sched.job_done(&job);
            self.lose(hub, &job);
        }
        self.pump(ctx, hub);
    }

    /// End a job's attempt as lost: a failure if it had started, a plain requeue if not.
    fn lose(&mut self, hub: &Arc<Hub>, job_id: &str) {
        let Some(t) = self.jobs.get_mut(job_id) else {
            return;
        };
        t.losing = true;
        t.confirm_by = None;
        let (epoch, at) = (t.epoch, now_ms());
        let change = if t.started {
            Change::End {
                job_id: job_id.to_owned(),
                epoch,
                state: JobState::Queued,
                exit_code: None,
                signal: None,
                reason: Some("agent lost".into()),
                at,
            }
        } else {
            Change::Requeue {
                job_id: job_id.to_owned(),
                epoch,
                reason: "agent lost before it started".into(),
                at,
            }
        };
        let h = hub.clone();
        let id = job_id.to_owned();
        // A store whose queue is full refuses: the next tick tries again.
        let _ = hub.store.try_change(
            change,
            Box::new(move |r| {
                let state = match r {
                    Ok(Applied::Ended { state }) => state,
                    // Stale or refused: the attempt ended otherwise meanwhile; the store
                    // says where the job is, and the dispatcher lets it go.
                    Ok(_) => JobState::Cancelled,
                    Err(_) => JobState::Assigned,
                };
                h.dispatch(Event::Ended {
                    job_id: id,
                    state,
                    rejected_by: None,
                });
            }),
        );
    }

    /// Decide and commit what can be assigned now; load more from the store when there is
    /// room.
    pub(crate) fn pump(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>) {
        if !self.recovered {
            return;
        }
        for a in self.sched.assign(PASS) {
            let h = hub.clone();
            let (job_id, agent) = (a.job_id.clone(), a.agent.clone());
            let change = Change::Assign {
                job_id: a.job_id.clone(),
                agent: a.agent.clone(),
                at: now_ms(),
            };
            let reply = Box::new(move |result| {
                h.dispatch(Event::Assigned {
                    job_id,
                    agent,
                    result,
                })
            });
            if hub.store.try_change(change, reply).is_err() {
                // The store is behind: the job waits for the next tick.
                self.sched.job_done(&a.job_id);
                if let Some(t) = self.jobs.get(&a.job_id) {
                    self.sched.enqueue(t.queued.clone());
                }
            }
        }
        let room = self.sched.room();
        if self.more_in_store && !self.loading && room > 0 {
            self.loading = true;
            let h = hub.clone();
            if !hub
                .store
                .try_read(move |s| s.queued(room), move |r| h.dispatch(Event::Loaded(r)))
            {
                self.loading = false;
            }
        }
        let _ = ctx;
    }

    /// Hold `job` (known to be queued in the store) and queue it.
    fn track_queued(&mut self, job: &Job, submitted: Option<Instant>) {
        if self.jobs.contains_key(&job.job_id) {
            return;
        }
        let queued = queued_of(&job.job_id, &job.spec, job.created_at);
        if !self.sched.enqueue(queued.clone()) {
            self.more_in_store = true;
            return;
        }
        self.jobs.insert(
            job.job_id.clone(),
            Tracked {
                spec: Arc::new(job.spec.clone()),
                queued,
                agent: None,
                epoch: job.epoch,
                started: false,
                confirm_by: None,
                losing: false,
                submitted,
                failures: 0,
            },
        );
    }

    pub(crate) fn handle(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>, ev: Event) {
        match ev {
            Event::Submitted {
                job_id,
                spec,
                created_at,
                at,
            } => {
                let job = Job {
                    job_id,
                    spec: *spec,
                    state: JobState::Queued,
                    epoch: 0,
                    exit_code: None,
                    created_at,
                    attempts: Vec::new(),
                };
                self.track_queued(&job, Some(at));
            }
            Event::Recovered(r) => self.recovered(ctx, hub, r),
            Event::Loaded(r) => {
                self.loading = false;
                match r {
                    Ok(jobs) => {
                        self.more_in_store = jobs.len() >= self.sched.room().max(1);
                        for j in &jobs {
                            self.track_queued(j, None);
                        }
                    }
                    Err(e) => tracing::error!(error = %e, "loading queued jobs failed"),
                }
            }
            Event::Assigned {
                job_id,
                agent,
                result,
            } => self.assigned(ctx, job_id, agent, result),
            Event::Ended {
                job_id,
                state,
                rejected_by,
            } => self.ended(ctx, hub, job_id, state, rejected_by),
            Event::Moved {
                job_id,
                state,
                running,
                op,
            } => self.moved(ctx, job_id, state, running, op),
            Event::AgentUp { info, conn } => self.agent_up(ctx, hub, info, conn),
            Event::ConnClosed { conn } => {
                if let Some(a) = self.agents.values_mut().find(|a| a.conn == Some(conn)) {
                    a.conn = None;
                }
            }
            Event::Accepted { job_id, epoch } => {
                if let Some(t) = self.jobs.get_mut(&job_id)
                    && t.epoch == epoch
                    && let Some(at) = t.submitted.take()
                    && self.assignment_us.len() < 65_536
                {
                    self.assignment_us.push(at.elapsed().as_micros() as u64);
                }
            }
            Event::Rejected {
                job_id,
                epoch,
                agent,
                reason,
            } => {
                let h = hub.clone();
                let id = job_id.clone();
                let change = Change::Requeue {
                    job_id,
                    epoch,
                    reason: format!("rejected by {agent}: {reason}"),
                    at: now_ms(),
                };
                let _ = hub.store.try_change(
                    change,
                    Box::new(move |r| {
                        if let Ok(Applied::Ended { state }) = r {
                            h.dispatch(Event::Ended {
                                job_id: id,
                                state,
                                rejected_by: Some(agent),
                            });
                        }
                    }),
                );
            }
            Event::Started {
                job_id,
                epoch,
                agent,
            } => {
                if let Some(t) = self.jobs.get_mut(&job_id)
                    && t.epoch == epoch
                    && t.agent.as_deref() == Some(agent.as_str())
                {
                    t.started = true;
                    t.confirm_by = None;
                }
            }
            Event::ListAgents { conn } => {
                let agents: Vec<_> = self
                    .sched
                    .agents()
                    .map(|(info, running)| (info.clone(), running, true))
                    .chain(
                        self.agents
                            .values()
                            .filter(|a| a.lost)
                            .map(|a| (a.info.clone(), 0, false)),
                    )
                    .map(|(info, running, up)| {
                        let connected = up
                            && self
                                .agents
                                .get(&info.id)
                                .is_some_and(|a| a.conn.is_some());
                        json!({"id": info.id, "labels": info.labels, "slots": info.slots,
                               "running": running, "connected": connected})
                    })
                    .collect();
                let resp = Response::json(200, json!({ "agents": agents }).to_string());
                if conn.shard == 0 {
                    let _ = ctx.http_respond(conn, resp);
                } else {
                    hub.post(conn.shard as usize, Inbox::Http(conn, resp));
                }
            }
        }
        self.pump(ctx, hub);
    }

    fn recovered(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
        r: Result<(Vec<Job>, Vec<Job>), StoreError>,
    ) {
        let (active, queued) = match r {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "reading the store at start failed: retrying");
                return;
            }
        };
        self.recovered = true;
        let claim_by = ctx.now() + hub.config.lease;
        for job in active {
            let Some(last) = job.attempts.last() else {
                continue;
            };
            // A paused job whose attempt ended waits for its resume, off the queue.
            if last.ended_at.is_some() || last.epoch != job.epoch {
                continue;
            }
            let queued = queued_of(&job.job_id, &job.spec, job.created_at);
            self.sched.restore(queued.clone(), &last.agent);
            self.jobs.insert(
                job.job_id.clone(),
                Tracked {
                    spec: Arc::new(job.spec.clone()),
                    queued,
                    agent: Some(last.agent.clone()),
                    epoch: job.epoch,
                    started: last.started_at.is_some(),
                    confirm_by: Some(claim_by),
                    losing: false,
                    submitted: None,
                    failures: 0,
                },
            );
        }
        self.more_in_store = queued.len() >= self.sched.room().max(1);
        for j in &queued {
            self.track_queued(j, None);
        }
        tracing::info!(
            on_agents = self.sched.running(),
            queued = self.sched.queued(),
            "dispatcher recovered the store's jobs"
        );
    }

    fn assigned(
        &mut self,
        ctx: &mut Ctx<'_>,
        job_id: String,
        agent: String,
        result: Result<Applied, StoreError>,
    ) {
        let Ok(Applied::Assigned {
            attempt,
            epoch,
            log_seq,
        }) = result
        else {
            // Not queued any more (cancelled, paused meanwhile) or the store failed: let
            // it go; the store holds where it is.
            self.sched.job_done(&job_id);
            if let Err(e) = &result {
                tracing::error!(job = %job_id, error = %e, "assignment not committed");
                if let Some(t) = self.jobs.get(&job_id) {
                    self.sched.enqueue(t.queued.clone());
                }
            } else {
                self.jobs.remove(&job_id);
            }
            return;
        };
        let Some(t) = self.jobs.get_mut(&job_id) else {
            return;
        };
        t.agent = Some(agent.clone());
        t.epoch = epoch;
        t.started = false;
        t.losing = false;
        let req = JobRequest {
            job_id: job_id.clone(),
            spec: spec_value(&t.spec),
            resources: Default::default(),
            priority: t.spec.priority,
            timeout_ms: t.spec.timeout_ms,
            attempt,
            epoch,
            log_from: log_seq + 1,
        };
        let conn = self.agents.get(&agent).and_then(|a| a.conn);
        let sent = conn.is_some_and(|c| {
            ctx.send(
                c,
                JOB_STREAM,
                MessageType::JobRequest,
                req.to_bytes(),
                SendOptions::default(),
            )
            .is_ok()
        });
        if !sent {
            // The agent's connection went meanwhile: it must claim the job when it is back.
            t.confirm_by = Some(ctx.now());
        }
    }

    fn ended(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
        job_id: String,
        state: JobState,
        rejected_by: Option<String>,
    ) {
        let Some(t) = self.jobs.get_mut(&job_id) else {
            return;
        };
        if state == JobState::Assigned {
            // The store failed to end it: try again at the next tick.
            t.losing = false;
            t.confirm_by = Some(ctx.now());
            return;
        }
        t.agent = None;
        t.started = false;
        t.losing = false;
        t.confirm_by = None;
        match (state, rejected_by) {
            (JobState::Queued, Some(agent)) => {
                let q = t.queued.clone();
                self.sched.rejected(q, &agent);
            }
            (JobState::Queued, None) => {
                self.sched.job_done(&job_id);
                let backoff = ExponentialBackoff::new(
                    Duration::from_millis(t.spec.backoff_ms),
                    Duration::from_secs(60),
                );
                let delay = backoff.base_delay(t.failures);
                t.failures += 1;
                let token = self.next_token;
                self.next_token += 1;
                self.retries.insert(token, job_id);
                if ctx.set_timer(ctx.now() + delay, token).is_err() {
                    // No room for a timer: retry at once rather than never.
                    self.retry(token);
                }
                let _ = hub;
            }
            (JobState::Paused, _) => self.sched.job_done(&job_id),
            _ => {
                self.sched.job_done(&job_id);
                self.jobs.remove(&job_id);
            }
        }
    }

    /// A retry's backoff is over: queue it again.
    pub(crate) fn retry(&mut self, token: u64) {
        if let Some(job) = self.retries.remove(&token)
            && let Some(t) = self.jobs.get(&job)
            && t.agent.is_none()
            && !self.sched.enqueue(t.queued.clone())
        {
            self.jobs.remove(&job);
            self.more_in_store = true;
        }
    }

    fn moved(
        &mut self,
        ctx: &mut Ctx<'_>,
        job_id: String,
        state: JobState,
        running: Option<u64>,
        op: Op,
    ) {
        if let Some(epoch) = running {
            let conn = self
                .jobs
                .get(&job_id)
                .filter(|t| t.epoch == epoch)
                .and_then(|t| t.agent.as_ref())
                .and_then(|a| self.agents.get(a))
                .and_then(|a| a.conn);
            let Some(conn) = conn else {
                // Its agent is away. A cancel is held by the store (the attempt ends
                // cancelled however it ends); a pause or resume is not sent again.
                return;
            };
            let (ty, payload) = match op {
                Op::Cancel => (
                    MessageType::JobCancel,
                    JobCancel {
                        job_id,
                        reason: "cancelled through the API".into(),
                    }
                    .to_bytes(),
                ),
                Op::Pause => (
                    MessageType::JobPause,
                    JobPause {
                        job_id,
                        reason: "paused through the API".into(),
                    }
                    .to_bytes(),
                ),
                Op::Resume => (MessageType::JobResume, JobResume { job_id }.to_bytes()),
            };
            let _ = ctx.send(conn, JOB_STREAM, ty, payload, SendOptions::default());
            return;
        }
        match state {
            JobState::Cancelled => {
                self.sched.dequeue(&job_id);
                self.jobs.remove(&job_id);
            }
            JobState::Paused => {
                self.sched.dequeue(&job_id);
            }
            JobState::Queued => match self.jobs.get(&job_id) {
                Some(t) => {
                    if !self.sched.enqueue(t.queued.clone()) {
                        self.more_in_store = true;
                    }
                }
                None => self.more_in_store = true,
            },
            _ => {}
        }
    }

    fn agent_up(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>, info: AgentInfo, conn: ConnRef) {
        let now = ctx.now();
        let id = info.id.clone();
        let slot = self.agents.entry(id.clone()).or_insert_with(|| AgentSlot {
            info: info.clone(),
            conn: None,
            last_heard: now,
            lost: false,
        });
        let new_conn = slot.conn != Some(conn);
        if new_conn && let Some(old) = slot.conn {
            let _ = ctx.close(old, 1000, "the agent connected again");
        }
        slot.conn = Some(conn);
        slot.last_heard = now;
        slot.lost = false;
        slot.info = info.clone();
        self.sched.agent_up(info);
        if new_conn {
            tracing::info!(agent = %id, "agent connected");
            let claim_by = now + hub.config.lease;
            for t in self.jobs.values_mut() {
                if t.agent.as_deref() == Some(id.as_str()) && !t.losing {
                    t.confirm_by = Some(claim_by);
                }
            }
        }
    }
}
