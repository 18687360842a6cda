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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_protocol::message::{JobRequest, Payload};
use valkyrie_protocol::retry::ExponentialBackoff;
use valkyrie_protocol::{MessageType, SendOptions};
use valkyrie_runtime::http::Response;
use valkyrie_runtime::{ConnRef, Ctx};

use super::event::Event;
use super::{Hub, now_ms};
use crate::model::{Job, JobSpec, JobState};
use crate::scheduler::{AgentInfo, Queued, Scheduler};
use crate::store::{Applied, Change, StoreError};
use crate::wire::{JOB_STREAM, spec_value};

/// The dispatcher's timer tokens from here on are retries waiting out their backoff.
pub(crate) const RETRY_TOKENS: u64 = 1 << 32;

/// How long an agent's rejection of a job keeps the job from it.
pub(super) const REJECTION_LASTS: Duration = Duration::from_secs(1);

/// How long a job whose assignment the store failed waits before it is queued again.
const STORE_RETRY: Duration = Duration::from_millis(100);

/// Assignments one pass decides at most.
const PASS: usize = 512;

pub(super) struct AgentSlot {
    pub(super) info: AgentInfo,
    pub(super) conn: Option<ConnRef>,
    pub(super) last_heard: Instant,
    pub(super) lost: bool,
}

/// A job the dispatcher holds: queued, waiting out a backoff, or on an agent.
pub(super) struct Tracked {
    pub(super) spec: Arc<JobSpec>,
    pub(super) queued: Queued,
    pub(super) agent: Option<String>,
    pub(super) epoch: u64,
    pub(super) started: bool,
    /// Its agent must claim it by then (after a reconnect or a restart).
    pub(super) confirm_by: Option<Instant>,
    /// Being ended as lost (the commit is on its way).
    pub(super) losing: bool,
    /// Being stopped to run elsewhere.
    pub(super) migrating: bool,
    /// When it was submitted, when this control plane saw it happen.
    pub(super) submitted: Option<Instant>,
    pub(super) failures: u32,
}

/// The dispatcher's state.
pub(crate) struct Dispatcher {
    pub(super) sched: Scheduler,
    pub(super) agents: BTreeMap<String, AgentSlot>,
    pub(super) jobs: HashMap<String, Tracked>,
    pub(super) recovered: bool,
    pub(super) more_in_store: bool,
    pub(super) loading: bool,
    /// Timers: a retry's backoff (false) or a rejection's (true) running out.
    pub(super) retries: HashMap<u64, (String, bool)>,
    pub(super) next_token: u64,
    /// Whether other control planes share the store ([`crate::Store::shared`]).
    pub(super) shared: bool,
    pub(super) sharing: Sharing,
}

/// Commit `change` (an attempt's end) and tell the dispatcher where the job is then.
fn end_then_tell(hub: &Arc<Hub>, change: Change, job_id: String, rejected_by: Option<String>) {
    let h = hub.clone();
    // A store whose queue is full refuses: the attempt stays as it is until its lease says.
    let _ = hub.store.try_change(
        change,
        Box::new(move |r| {
            if let Ok(Applied::Ended { state }) = r {
                h.dispatch(Event::Ended {
                    job_id,
                    state,
                    rejected_by,
                });
            }
        }),
    );
}

pub(super) fn queued_of(job_id: &str, spec: &JobSpec, created_at: u64) -> Queued {
    Queued {
        job_id: job_id.to_owned(),
        priority: spec.priority,
        created_at,
        labels: spec.labels.clone(),
        group: spec.concurrency_group.clone(),
        pinned: None,
        project: spec.project.clone(),
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
            shared: hub.store.shared(),
            sharing: Sharing::new(),
        }
    }

    /// Read what the store says this control plane holds, and claim queued jobs (when the
    /// shard starts, and again after the store was away).
    pub(crate) fn start(&mut self, hub: &Arc<Hub>) {
        self.loading = true;
        let (limit, shared) = (self.claim_limit(), self.shared);
        let h = hub.clone();
        let read = hub.store.try_read(
            move |s| {
                let at = now_ms();
                if shared {
                    // Its holds first, before anyone reaps them.
                    s.commit(&[Change::Renew { at }])?;
                }
                let active = s.held()?;
                let queued = match s.commit(&[Change::Claim { limit, at }])?.pop() {
                    Some(Applied::Claimed { jobs }) => jobs,
                    _ => Vec::new(),
                };
                Ok((active, queued))
            },
            move |r| h.dispatch(Event::Recovered(r)),
        );
        if !read {
            self.loading = false;
            tracing::error!("the store's queue is full at start: dispatch waits for a retry");
        }
    }

    /// Decide and commit what can be assigned now; load more from the store when there is
    /// room.
    pub(crate) fn pump(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>) {
        if !self.recovered || !self.dispatching(ctx.now(), hub) {
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
        let limit = self.claim_limit();
        if self.more_in_store && !self.loading && limit > 0 {
            self.loading = true;
            let h = hub.clone();
            let reply = Box::new(move |r: Result<Applied, StoreError>| {
                let r = r.map(|a| match a {
                    Applied::Claimed { jobs } => jobs,
                    _ => Vec::new(),
                });
                h.dispatch(Event::Loaded { limit, jobs: r });
            });
            let claim = Change::Claim {
                limit,
                at: now_ms(),
            };
            if hub.store.try_change(claim, reply).is_err() {
                self.loading = false;
            }
        }
    }

    /// Hold `job` (known to be queued in the store) and queue it.
    pub(super) fn track_queued(&mut self, job: &Job, submitted: Option<Instant>) {
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
                migrating: false,
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
                    progress: None,
                };
                self.track_queued(&job, Some(at));
            }
            Event::Recovered(r) => self.recovered(ctx, hub, r),
            Event::Loaded { limit, jobs } => {
                self.loading = false;
                match jobs {
                    Ok(jobs) => {
                        self.more_in_store = jobs.len() >= limit.max(1);
                        for j in &jobs {
                            self.track_queued(j, None);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "claiming queued jobs failed"),
                }
            }
            Event::Assigned {
                job_id,
                agent,
                result,
            } => self.assigned(ctx, hub, job_id, agent, result),
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
                target,
            } => self.moved(ctx, job_id, state, running, op, target),
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
                {
                    hub.metrics.assigned(at.elapsed().as_micros() as u64);
                }
            }
            Event::Rejected {
                job_id,
                epoch,
                agent,
                reason,
            } => {
                let change = Change::Requeue {
                    job_id: job_id.clone(),
                    epoch,
                    reason: format!("rejected by {agent}: {reason}"),
                    at: now_ms(),
                };
                end_then_tell(hub, change, job_id, Some(agent));
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
                } else if !self.jobs.contains_key(&job_id) {
                    self.adopt(hub, job_id, epoch, agent);
                }
            }
            Event::Adopted {
                job_id,
                agent,
                result,
            } => self.adopted(job_id, agent, result),
            Event::Renewed(ok) => self.renewed(ctx, hub, ok),
            Event::Reaped(r) => self.reaped(ctx, hub, r),
            Event::Holds(r) => self.check_holds(hub, r),
            Event::Notified(n) => self.notified(ctx, hub, n),
            Event::Released { job_id } => {
                self.sched.job_done(&job_id);
                self.jobs.remove(&job_id);
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
                        let connected =
                            up && self.agents.get(&info.id).is_some_and(|a| a.conn.is_some());
                        json!({"id": info.id, "labels": info.labels, "slots": info.slots,
                               "running": running, "connected": connected})
                    })
                    .collect();
                let resp = Response::json(200, json!({ "agents": agents }).to_string());
                if conn.shard == 0 {
                    let _ = ctx.http_respond(conn, resp);
                } else {
                    hub.http(conn, resp);
                }
            }
        }
        self.pump(ctx, hub);
        let m = &hub.metrics;
        m.queued.store(self.sched.queued() as i64, Relaxed);
        let up = self.agents.values().filter(|a| a.conn.is_some()).count();
        m.agents.store(up as i64, Relaxed);
    }

    fn assigned(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
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
                // Queued again after a pause, not at once: a store that fails now is
                // likely to fail again right away.
                tracing::debug!(job = %job_id, error = %e, "assignment not committed");
                self.later(ctx, job_id, false, STORE_RETRY);
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
        // Secrets are opened only for the agent that runs the job.
        let spec = match (&hub.config.secrets, t.spec.secrets.is_empty()) {
            (_, true) => spec_value(&t.spec),
            (Some(key), false) => match (*t.spec).clone().opened(key) {
                Ok(open) => spec_value(&open),
                Err(e) => {
                    tracing::error!(job = %job_id, error = %e, "a job's secrets do not open");
                    self.unrunnable(hub, &job_id, epoch, e.to_string());
                    return;
                }
            },
            (None, false) => {
                self.unrunnable(
                    hub,
                    &job_id,
                    epoch,
                    "no --secrets-key to open its secrets".into(),
                );
                return;
            }
        };
        let req = JobRequest {
            job_id: job_id.clone(),
            spec,
            resources: valkyrie_protocol::message::Resources {
                cpu_millis: t.spec.resources.cpu_millis,
                memory_bytes: t.spec.resources.memory_bytes,
                ..Default::default()
            },
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

    /// End an attempt that cannot be sent (its secrets do not open): failed, for good.
    fn unrunnable(&mut self, hub: &Arc<Hub>, job_id: &str, epoch: u64, reason: String) {
        let change = Change::End {
            job_id: job_id.to_owned(),
            epoch,
            state: JobState::Failed,
            exit_code: None,
            signal: None,
            reason: Some(reason),
            at: now_ms(),
        };
        end_then_tell(hub, change, job_id.to_owned(), None);
    }

    pub(super) fn ended(
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
                // Asked again after a while: an agent's refusal need not last.
                self.later(ctx, job_id, true, REJECTION_LASTS);
            }
            (JobState::Queued, None) if t.migrating => {
                // Stopped to move: queued again at once, its pin with it.
                t.migrating = false;
                self.sched.job_done(&job_id);
                let q = t.queued.clone();
                if !self.sched.enqueue(q) {
                    self.jobs.remove(&job_id);
                    self.more_in_store = true;
                }
            }
            (JobState::Queued, None) => {
                self.sched.job_done(&job_id);
                let backoff = ExponentialBackoff::new(
                    Duration::from_millis(t.spec.backoff_ms),
                    Duration::from_secs(60),
                );
                let delay = backoff.base_delay(t.failures);
                hub.metrics.entered(JobState::Queued);
                t.failures += 1;
                self.later(ctx, job_id, false, delay);
            }
            (JobState::Paused, _) => self.sched.job_done(&job_id),
            _ => {
                hub.metrics.entered(state);
                self.sched.job_done(&job_id);
                self.jobs.remove(&job_id);
            }
        }
    }

    /// In `after`: queue `job` again (`forgive` false), or let agents that refused it be
    /// asked again (true). With no room for a timer, at once rather than never.
    pub(super) fn later(&mut self, ctx: &mut Ctx<'_>, job: String, forgive: bool, after: Duration) {
        let token = self.next_token;
        self.next_token += 1;
        self.retries.insert(token, (job, forgive));
        if ctx.set_timer(ctx.now() + after, token).is_err() {
            self.retry(token);
        }
    }

    /// A retry's backoff is over: queue it again (or a rejection's time: any agent may be
    /// asked again).
    pub(crate) fn retry(&mut self, token: u64) {
        let Some((job, forgive)) = self.retries.remove(&token) else {
            return;
        };
        if forgive {
            self.sched.forgive(&job);
            return;
        }
        if let Some(t) = self.jobs.get(&job)
            && t.agent.is_none()
            && !self.sched.enqueue(t.queued.clone())
        {
            self.jobs.remove(&job);
            self.more_in_store = true;
        }
    }
}

/// Where the dispatcher stands with a shared store.
pub(super) struct Sharing {
    /// When the store last renewed this node's leases.
    pub(super) last_ok: Instant,
    /// Since when it has answered every renewal (none: it just failed).
    pub(super) ok_since: Option<Instant>,
    pub(super) renewing: bool,
    pub(super) reaping: bool,
    /// Agents were sent away: the store has not answered for half a lease.
    pub(super) cut: bool,
    /// Jobs whose adoption is being committed.
    pub(super) adopting: HashSet<String>,
    /// Ticks since the holds were last checked.
    pub(super) ticks: u32,
    pub(super) checking: bool,
}

impl Sharing {
    pub(super) fn new() -> Sharing {
        Sharing {
            last_ok: Instant::now(),
            ok_since: None,
            renewing: false,
            reaping: false,
            cut: false,
            adopting: HashSet::new(),
            ticks: 0,
            checking: false,
        }
    }
}
