//! The dispatcher's part in sharing a store with other control planes (a PostgreSQL store:
//! [`crate::Store::shared`]). Every tick it renews the leases of the jobs it holds and, once
//! the store has answered for a whole lease, reaps the jobs of control planes that went
//! quiet; it claims queued jobs for its agents' free slots (at each tick, and at once when
//! another node says it queued some); it adopts the attempts of agents that failed over to
//! it; it passes a cancel, pause, resume or migration asked of another node on to its agent.
//!
//! A control plane whose store does not answer stops dispatching at once; after half a lease
//! it sends its agents away ("going away": they connect to the next control plane on their
//! list) and refuses them until the store is back — by then its leases have run out and the
//! others reap or adopt its jobs. When the store answers again it starts over from what the
//! store says it holds.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use valkyrie_protocol::ErrorCode;
use valkyrie_runtime::Ctx;

use super::dispatcher::{Dispatcher, Tracked, queued_of};
use super::event::{Event, Op};
use super::{Hub, now_ms};
use crate::model::JobState;
use crate::notice::Notice;
use crate::scheduler::Scheduler;
use crate::store::{Applied, Change, StoreError};

/// Jobs one reap ends at most.
const REAP: usize = 256;

/// Ticks between checks of what the store says this node holds (a tick is a quarter lease).
const CHECK_EVERY: u32 = 4;

/// The reason agents are sent away with.
const SENT_AWAY: &str = "going away: this control plane lost its store";

impl Dispatcher {
    /// Whether to assign jobs now: always on a store of its own; on a shared store only
    /// while it answers.
    pub(super) fn dispatching(&self, now: Instant, hub: &Hub) -> bool {
        !self.shared || (!self.sharing.cut && !self.store_quiet(now, hub))
    }

    /// Whether the store has not renewed this node's leases for half a lease.
    fn store_quiet(&self, now: Instant, hub: &Hub) -> bool {
        now.duration_since(self.sharing.last_ok) > hub.config.lease / 2
    }

    /// How many queued jobs to claim: the room left on a store of its own; on a shared one
    /// as many as its agents have free slots (a node without agents takes none).
    pub(super) fn claim_limit(&self) -> usize {
        let room = self.sched.room();
        if !self.shared {
            return room;
        }
        let free: usize = self
            .sched
            .agents()
            .map(|(info, running)| (info.slots as usize).saturating_sub(running))
            .sum();
        free.min(room)
    }

    /// Every tick on a shared store: renew, watch the store's answers, reap, poll for jobs.
    pub(super) fn share_tick(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>) {
        let now = ctx.now();
        let lease = hub.config.lease;
        if !self.sharing.renewing {
            self.sharing.renewing = true;
            let h = hub.clone();
            let reply = Box::new(move |r: Result<Applied, StoreError>| {
                h.dispatch(Event::Renewed(r.is_ok()));
            });
            if hub
                .store
                .try_change(Change::Renew { at: now_ms() }, reply)
                .is_err()
            {
                self.sharing.renewing = false;
            }
        }
        // Half a lease: its agents reach another node while its holds still stand there,
        // so their attempts are adopted rather than reaped and run again.
        if !self.sharing.cut && self.store_quiet(now, hub) {
            self.cut_off(ctx, hub);
        }
        let steady = self
            .sharing
            .ok_since
            .is_some_and(|t| now.duration_since(t) >= lease);
        if steady && !self.sharing.reaping {
            self.sharing.reaping = true;
            let h = hub.clone();
            let reply = Box::new(move |r: Result<Applied, StoreError>| {
                let r = r.map(|a| match a {
                    Applied::Reaped { jobs } => jobs,
                    _ => Vec::new(),
                });
                h.dispatch(Event::Reaped(r));
            });
            let reap = Change::Reap {
                limit: REAP,
                at: now_ms(),
            };
            if hub.store.try_change(reap, reply).is_err() {
                self.sharing.reaping = false;
            }
        }
        self.sharing.ticks += 1;
        if steady && !self.sharing.checking && self.sharing.ticks >= CHECK_EVERY {
            self.sharing.ticks = 0;
            self.sharing.checking = true;
            let h = hub.clone();
            if !hub
                .store
                .try_read(|s| s.holds(), move |r| h.dispatch(Event::Holds(r)))
            {
                self.sharing.checking = false;
            }
        }
        // Jobs queued elsewhere whose notice was missed, or whose claim ran out.
        self.more_in_store = true;
    }

    /// What the store says this node holds, against what it knows it dispatched: an attempt
    /// it holds but does not know (its assignment was committed though the commit's answer
    /// was lost with the connection) reached no agent, and is ended as lost.
    pub(super) fn check_holds(
        &mut self,
        hub: &Arc<Hub>,
        r: Result<Vec<(String, u64)>, StoreError>,
    ) {
        self.sharing.checking = false;
        let Ok(holds) = r else { return };
        for (job_id, epoch) in holds {
            if self.jobs.contains_key(&job_id) || self.sharing.adopting.contains(&job_id) {
                continue;
            }
            let h = hub.clone();
            let change = Change::Lose {
                job_id: job_id.clone(),
                epoch,
                at: now_ms(),
            };
            // Ended only if it is still so when the commit looks (not ended meanwhile).
            let reply = Box::new(move |r: Result<Applied, StoreError>| {
                if let Ok(Applied::Ended { state }) = r {
                    tracing::warn!(job = %job_id, epoch, ?state, "an attempt held here reached no agent: ended as lost");
                    h.dispatch(Event::Notified(Notice::Queued));
                }
            });
            let _ = hub.store.try_change(change, reply);
        }
    }

    /// A renewal's answer.
    pub(super) fn renewed(&mut self, ctx: &mut Ctx<'_>, hub: &Arc<Hub>, ok: bool) {
        self.sharing.renewing = false;
        if !ok {
            if self.sharing.ok_since.take().is_some() {
                tracing::warn!("the store does not answer: dispatch waits for it");
            }
            return;
        }
        let now = ctx.now();
        self.sharing.last_ok = now;
        self.sharing.ok_since.get_or_insert(now);
        if self.sharing.cut {
            tracing::info!("the store answers again: dispatch starts over from what it holds");
            self.sharing.cut = false;
            hub.cut.store(false, Relaxed);
            self.start_over(hub);
        }
    }

    /// The store has not answered for half a lease: stop, and send the agents away.
    fn cut_off(&mut self, ctx: &mut Ctx<'_>, hub: &Hub) {
        tracing::warn!(
            "the store has not answered for half a lease: dispatch stops, agents are sent to other control planes"
        );
        self.sharing.cut = true;
        hub.cut.store(true, Relaxed);
        for a in self.agents.values_mut() {
            if let Some(conn) = a.conn.take() {
                let _ = ctx.close(conn, ErrorCode::SHUTTING_DOWN.0, SENT_AWAY);
            }
        }
    }

    /// Forget every job and agent; the next tick reads what the store says this node holds.
    fn start_over(&mut self, hub: &Hub) {
        self.jobs.clear();
        self.agents.clear();
        self.retries.clear();
        self.sharing.adopting.clear();
        self.sched = Scheduler::new(hub.config.policy, hub.config.queue);
        self.recovered = false;
        self.loading = false;
        self.more_in_store = true;
    }

    /// Jobs whose holder went quiet were queued again (or ended).
    pub(super) fn reaped(
        &mut self,
        ctx: &mut Ctx<'_>,
        hub: &Arc<Hub>,
        r: Result<Vec<(String, JobState)>, StoreError>,
    ) {
        self.sharing.reaping = false;
        let jobs = match r {
            Ok(jobs) => jobs,
            Err(e) => {
                tracing::warn!(error = %e, "reaping expired leases failed");
                return;
            }
        };
        if !jobs.is_empty() {
            tracing::warn!(
                jobs = jobs.len(),
                "reaped jobs whose control plane went quiet"
            );
        }
        for (job_id, state) in jobs {
            if self.jobs.contains_key(&job_id) {
                self.ended(ctx, hub, job_id, state, None);
            } else if state == JobState::Queued {
                self.more_in_store = true;
            }
        }
    }

    /// An agent says it runs an attempt this node does not know: it failed over from
    /// another control plane. The job is held here once the store agrees.
    pub(super) fn adopt(&mut self, hub: &Arc<Hub>, job_id: String, epoch: u64, agent: String) {
        if !self.shared || self.jobs.contains_key(&job_id) {
            return;
        }
        if !self.sharing.adopting.insert(job_id.clone()) {
            return;
        }
        let h = hub.clone();
        let change = Change::Adopt {
            job_id: job_id.clone(),
            epoch,
            agent: agent.clone(),
            at: now_ms(),
        };
        let id = job_id.clone();
        let reply = Box::new(move |result| {
            h.dispatch(Event::Adopted {
                job_id: id,
                agent,
                result,
            })
        });
        if hub.store.try_change(change, reply).is_err() {
            // The agent claims it again when it reconnects; else its lease says.
            self.sharing.adopting.remove(&job_id);
        }
    }

    /// An adoption's commit.
    pub(super) fn adopted(
        &mut self,
        job_id: String,
        agent: String,
        result: Result<Applied, StoreError>,
    ) {
        self.sharing.adopting.remove(&job_id);
        let job = match result {
            Ok(Applied::Adopted { job }) => job,
            Ok(other) => {
                tracing::info!(job = %job_id, ?other, "an attempt was not adopted");
                return;
            }
            Err(e) => {
                tracing::warn!(job = %job_id, error = %e, "adopting an attempt failed");
                return;
            }
        };
        if self.jobs.contains_key(&job_id) {
            return;
        }
        tracing::info!(job = %job_id, agent = %agent, "adopted an attempt from another control plane");
        let queued = queued_of(&job.job_id, &job.spec, job.created_at);
        self.sched.restore(queued.clone(), &agent);
        self.jobs.insert(
            job_id,
            Tracked {
                spec: Arc::new(job.spec),
                queued,
                agent: Some(agent),
                epoch: job.epoch,
                started: job.attempts.last().is_some_and(|a| a.started_at.is_some()),
                confirm_by: None,
                losing: false,
                migrating: false,
                submitted: None,
                failures: 0,
            },
        );
    }

    /// A notice from another control plane.
    pub(super) fn notified(&mut self, ctx: &mut Ctx<'_>, hub: &Hub, notice: Notice) {
        match notice {
            Notice::Queued => self.more_in_store = true,
            Notice::Op {
                op,
                job_id,
                epoch,
                from,
            } => {
                if from == hub.config.node_id || !self.jobs.contains_key(&job_id) {
                    return;
                }
                let op = match op.as_str() {
                    "cancel" => Op::Cancel,
                    "pause" => Op::Pause,
                    "resume" => Op::Resume,
                    _ => Op::Migrate,
                };
                self.moved(ctx, job_id, JobState::Running, Some(epoch), op, None);
            }
        }
    }
}
