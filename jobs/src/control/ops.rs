//! What an API client asks of a job on an agent, passed on by the dispatcher: cancel, pause,
//! resume (JOB_CANCEL, JOB_PAUSE, JOB_RESUME to the agent that runs it), and migrate (a pin to
//! another agent, or a while away from this one; JOB_MIGRATE stops a running attempt).

use valkyrie_protocol::message::{JobCancel, JobMigrate, JobPause, JobResume, Payload};
use valkyrie_protocol::{MessageType, SendOptions};
use valkyrie_runtime::Ctx;

use super::dispatcher::{Dispatcher, REJECTION_LASTS};
use super::event::Op;
use crate::model::JobState;
use crate::wire::JOB_STREAM;

impl Dispatcher {
    /// Pin a job to `target` (or keep it from the agent it is on, for a while); one still
    /// queued is queued again so, one running is queued again so once its attempt ends.
    fn migrate(&mut self, ctx: &mut Ctx<'_>, job_id: &str, running: bool, target: Option<String>) {
        let Some(t) = self.jobs.get_mut(job_id) else {
            return;
        };
        t.queued.pinned = target.clone();
        t.migrating = running;
        let (queued, agent) = (t.queued.clone(), t.agent.clone());
        if target.is_none()
            && let Some(agent) = agent
        {
            self.sched.avoid(job_id, &agent);
            self.later(ctx, job_id.to_owned(), true, REJECTION_LASTS);
        }
        if !running && self.sched.dequeue(job_id) {
            self.sched.enqueue(queued);
        }
    }

    pub(super) fn moved(
        &mut self,
        ctx: &mut Ctx<'_>,
        job_id: String,
        state: JobState,
        running: Option<u64>,
        op: Op,
        target: Option<String>,
    ) {
        if op == Op::Migrate {
            self.migrate(ctx, &job_id, running.is_some(), target.clone());
        }
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
                Op::Migrate => (
                    MessageType::JobMigrate,
                    JobMigrate {
                        job_id,
                        target_node: target.unwrap_or_default(),
                        reason: "migrated through the API".into(),
                    }
                    .to_bytes(),
                ),
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
}
