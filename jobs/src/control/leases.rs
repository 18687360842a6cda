//! The dispatcher's leases: agents announcing themselves and going unheard, a lost agent's
//! jobs ended in the store before they are queued again (a failure when they had started,
//! not one when they had not), and the claims an agent must make for what it runs after it
//! reconnects — or after the control plane itself starts again on its store.

use std::sync::Arc;

use valkyrie_runtime::{ConnRef, Ctx};

use super::Hub;
use super::dispatcher::{AgentSlot, Dispatcher, Tracked, queued_of};
use super::event::Event;
use crate::control::now_ms;
use crate::model::{Job, JobState};
use crate::scheduler::AgentInfo;
use crate::store::{Applied, Change, StoreError};

impl Dispatcher {
    /// Every `tick`: leases, claims, loads that failed.
    pub(crate) fn tick(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>) {
        if !self.recovered && !self.loading && self.dispatching(ctx.now(), hub) {
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
        if self.shared {
            self.share_tick(ctx, hub);
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
    pub(super) fn lose(&mut self, hub: &Arc<Hub>, job_id: &str) {
        let Some(t) = self.jobs.get_mut(job_id) else {
            return;
        };
        t.losing = true;
        t.confirm_by = None;
        let change = Change::Lose {
            job_id: job_id.to_owned(),
            epoch: t.epoch,
            at: now_ms(),
        };
        let h = hub.clone();
        let id = job_id.to_owned();
        // A store whose queue is full refuses: the next tick tries again.
        let _ = hub.store.try_change(
            change,
            Box::new(move |r| {
                let state = match r {
                    Ok(Applied::Ended { state }) => state,
                    // Stale or refused: the attempt ended otherwise meanwhile, or another
                    // control plane adopted it; the dispatcher lets it go.
                    Ok(_) => return h.dispatch(Event::Released { job_id: id }),
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

    pub(super) fn recovered(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
        r: Result<(Vec<Job>, Vec<Job>), StoreError>,
    ) {
        self.loading = false;
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
                    migrating: false,
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

    pub(super) fn agent_up(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
        info: AgentInfo,
        conn: ConnRef,
    ) {
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
