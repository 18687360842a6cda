//! The control plane's REST side on the node's own port, served by a [`JobsService`] on
//! every shard: `POST /api/v1/jobs` (submit; an idempotency key already used answers with the
//! first job), `GET /api/v1/jobs/{id}` and `GET /api/v1/jobs?state=S&limit=N&after=ID`.
//! Nothing is answered before the store says so: a submission is answered once its commit is
//! on disk. The store's thread builds each answer and hands it back to the shard that owns
//! the connection through a queue of that shard's service and its [`Nudger`]; the shard only
//! writes it out.
//!
//! Dispatch to agents, cancel, pause, resume, migrate, logs and artifacts come with the
//! agents (issue 18, under way): their paths answer 501 until then.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;
use valkyrie_protocol::Frame;
use valkyrie_runtime::http::{Method, Request, Response};
use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer, Nudger, Service};

use crate::committer::Committer;
use crate::job_id;
use crate::model::{Job, JobSpec, JobState};
use crate::store::{Applied, Change};

/// The jobs API's paths.
pub const JOBS_PATH: &str = "/api/v1/jobs";

/// Jobs a list answer holds at most.
pub const MAX_LIST: usize = 1000;

/// Answers waiting for their shard, at most (one per HTTP connection of the shard at most:
/// each waits for its answer before its next request).
const ANSWERS_WAITING: usize = 65_536;

/// A job as the REST API shows it.
fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "job_id": job.job_id,
        "state": job.state,
        "exit_code": job.exit_code,
        "priority": job.spec.priority,
        "created_at": job.created_at,
        "spec": job.spec,
        "attempts": job.attempts,
    })
}

fn error(status: u16, code: u16, message: &str) -> Response {
    Response::json(
        status,
        json!({"code": code, "message": message}).to_string(),
    )
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The jobs service of one shard.
pub struct JobsService {
    store: Arc<Committer>,
    shard: usize,
    seq: u32,
    answers: Receiver<(ConnRef, Response)>,
    answers_tx: Sender<(ConnRef, Response)>,
    nudger: Option<Nudger>,
}

impl std::fmt::Debug for JobsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobsService")
            .field("shard", &self.shard)
            .finish()
    }
}

impl JobsService {
    /// The service of shard `shard`, on the node's store.
    pub fn new(store: Arc<Committer>, shard: usize) -> JobsService {
        let (answers_tx, answers) = crossbeam_channel::bounded(ANSWERS_WAITING);
        JobsService {
            store,
            shard,
            seq: 0,
            answers,
            answers_tx,
            nudger: None,
        }
    }

    /// What hands an answer built on the store's thread back to this shard.
    fn answerer(&self) -> impl Fn(ConnRef, Response) + Send + Clone + 'static {
        let tx = self.answers_tx.clone();
        let nudger = self.nudger.clone();
        move |conn, resp| {
            if tx.send((conn, resp)).is_ok()
                && let Some(n) = &nudger
            {
                n.nudge();
            }
        }
    }

    fn submit(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, req: &Request) -> HttpAnswer {
        let spec: JobSpec = match serde_json::from_slice(&req.body) {
            Ok(s) => s,
            Err(e) => {
                return HttpAnswer::Respond(error(400, 104, &format!("not a job spec: {e}")));
            }
        };
        if let Err(e) = spec.validate() {
            return HttpAnswer::Respond(error(400, 104, &e.to_string()));
        }
        self.seq = self.seq.wrapping_add(1);
        // The shard in the top byte: ids made in the same millisecond on two shards differ.
        let id = job_id(
            now_ms(),
            (self.shard as u32) << 24 | (self.seq & 0x00FF_FFFF),
        );
        let answer = self.answerer();
        let change = Change::Submit {
            job_id: id,
            spec: Box::new(spec),
            at: now_ms(),
        };
        let reply = Box::new(move |r: Result<Applied, crate::StoreError>| {
            let resp = match r {
                Ok(Applied::Submitted { job_id, created }) => Response::json(
                    if created { 201 } else { 200 },
                    json!({"job_id": job_id, "state": JobState::Queued, "created": created})
                        .to_string(),
                ),
                Ok(other) => error(500, 500, &format!("unexpected: {other:?}")),
                Err(e) => error(503, 504, &e.to_string()),
            };
            answer(conn, resp);
        });
        if self.store.try_change(change, reply).is_err() {
            return HttpAnswer::Respond(error(503, 504, "the store is busy: try again"));
        }
        let _ = ctx;
        HttpAnswer::Later
    }

    fn read(&mut self, conn: ConnRef, req: &Request) -> HttpAnswer {
        let answer = self.answerer();
        let rest = req.path()[JOBS_PATH.len()..].trim_start_matches('/');
        let queued = if rest.is_empty() {
            let mut state = None;
            let mut limit = 100usize;
            let mut after: Option<String> = None;
            for kv in req
                .query()
                .unwrap_or("")
                .split('&')
                .filter(|s| !s.is_empty())
            {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                match k {
                    "state" => match JobState::parse(v) {
                        Some(s) => state = Some(s),
                        None => {
                            return HttpAnswer::Respond(error(400, 104, "unknown state"));
                        }
                    },
                    "limit" => limit = v.parse().unwrap_or(limit).clamp(1, MAX_LIST),
                    "after" => after = Some(v.to_owned()),
                    _ => {}
                }
            }
            self.store.try_read(
                move |s| s.jobs(state, limit, after.as_deref()),
                move |r| {
                    let resp = match r {
                        Ok(jobs) => {
                            let next = (jobs.len() == limit)
                                .then(|| jobs.last().map(|j| j.job_id.clone()))
                                .flatten();
                            let list: Vec<_> = jobs.iter().map(job_json).collect();
                            Response::json(200, json!({"jobs": list, "next": next}).to_string())
                        }
                        Err(e) => error(503, 504, &e.to_string()),
                    };
                    answer(conn, resp);
                },
            )
        } else if !rest.contains('/') {
            let id = rest.to_owned();
            self.store.try_read(
                move |s| s.job(&id),
                move |r| {
                    let resp = match r {
                        Ok(Some(job)) => Response::json(200, job_json(&job).to_string()),
                        Ok(None) => error(404, 404, "no such job"),
                        Err(e) => error(503, 504, &e.to_string()),
                    };
                    answer(conn, resp);
                },
            )
        } else {
            return HttpAnswer::Respond(error(404, 404, "no such route"));
        };
        if queued {
            HttpAnswer::Later
        } else {
            HttpAnswer::Respond(error(503, 504, "the store is busy: try again"))
        }
    }
}

impl Service for JobsService {
    fn on_start(&mut self, ctx: &mut Ctx<'_>) {
        self.nudger = Some(ctx.nudger());
        let _ = ctx.route(Some(Method::Post), JOBS_PATH);
        let _ = ctx.route(Some(Method::Get), JOBS_PATH);
    }

    fn on_frame(&mut self, _ctx: &mut Ctx<'_>, _conn: ConnRef, _frame: Frame) {}

    fn on_http(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, req: &Request) -> HttpAnswer {
        let path = req.path();
        // The route is a prefix: /api/v1/jobsX is not ours.
        if path.len() > JOBS_PATH.len() && !path[JOBS_PATH.len()..].starts_with('/') {
            return HttpAnswer::Respond(error(404, 404, "no such route"));
        }
        match req.method {
            Method::Post if path == JOBS_PATH => self.submit(ctx, conn, req),
            Method::Post => HttpAnswer::Respond(error(
                501,
                501,
                "cancel, pause, resume and migrate come with the agents",
            )),
            _ => self.read(conn, req),
        }
    }

    fn on_nudge(&mut self, ctx: &mut Ctx<'_>) {
        while let Ok((conn, resp)) = self.answers.try_recv() {
            // The client may have gone meanwhile: nothing to answer then.
            let _ = ctx.http_respond(conn, resp);
        }
    }
}
