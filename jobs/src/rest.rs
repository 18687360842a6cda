//! The control plane's REST API on the node's own port, served by the [`JobsService`] of
//! whichever shard took the connection: `POST /api/v1/jobs` (submit; an idempotency key
//! already used answers with the first job), `GET /api/v1/jobs/{id}`,
//! `GET /api/v1/jobs?state=S&limit=N&after=ID`, `POST /api/v1/jobs/{id}/cancel|pause|resume`,
//! `GET /api/v1/jobs/{id}/logs?from=SEQ[&follow=1]` and `GET /api/v1/agents`.
//! Nothing is answered before the store says so: a submission or a cancel is answered once
//! its commit is on disk. The store's thread builds each answer and hands it back to the
//! shard that owns the connection through that shard's lane; the shard only writes it out.

use std::sync::Arc;

use serde_json::json;
use valkyrie_runtime::http::{Method, Request, Response};
use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer};

use crate::control::event::{Event, Op};
use crate::control::{Hub, JobsService, now_ms};
use crate::job_id;
use crate::model::{Job, JobSpec, JobState};
use crate::store::{Applied, Change, StoreError};

/// The jobs API's paths.
pub const JOBS_PATH: &str = "/api/v1/jobs";

/// The agents list's path.
pub const AGENTS_PATH: &str = "/api/v1/agents";

/// Jobs a list answer holds at most.
pub const MAX_LIST: usize = 1000;

/// A job as the REST API shows it.
fn job_json(job: &Job) -> serde_json::Value {
    json!({
        "job_id": job.job_id,
        "state": job.state,
        "exit_code": job.exit_code,
        "priority": job.spec.priority,
        "created_at": job.created_at,
        "spec": job.spec.redacted(),
        "attempts": job.attempts,
        "progress": job.progress,
    })
}

pub(crate) fn error(status: u16, code: u16, message: &str) -> Response {
    Response::json(
        status,
        json!({"code": code, "message": message}).to_string(),
    )
}

fn busy() -> HttpAnswer {
    HttpAnswer::Respond(error(503, 504, "the store is busy: try again"))
}

/// What hands an answer built on the store's thread back to the connection's shard.
fn answerer(hub: &Arc<Hub>, conn: ConnRef) -> impl FnOnce(Response) + Send + 'static {
    let hub = hub.clone();
    move |resp| hub.http(conn, resp)
}

/// The query's `key=value` pairs.
pub(crate) fn query(req: &Request) -> impl Iterator<Item = (&str, &str)> {
    req.query()
        .unwrap_or("")
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| kv.split_once('=').unwrap_or((kv, "")))
}

impl JobsService {
    /// The API's routes on this shard.
    pub(crate) fn routes(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx.route(Some(Method::Post), JOBS_PATH);
        let _ = ctx.route(Some(Method::Get), JOBS_PATH);
        let _ = ctx.route(Some(Method::Get), AGENTS_PATH);
    }

    pub(crate) fn http(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef, req: &Request) -> HttpAnswer {
        let path = req.path();
        if path == AGENTS_PATH {
            self.dispatch(ctx, Event::ListAgents { conn });
            return HttpAnswer::Later;
        }
        // The route is a prefix: /api/v1/jobsX is not ours.
        if path.len() > JOBS_PATH.len() && !path[JOBS_PATH.len()..].starts_with('/') {
            return HttpAnswer::Respond(error(404, 404, "no such route"));
        }
        let rest = path[JOBS_PATH.len()..].trim_start_matches('/');
        let (id, verb) = match rest.split_once('/') {
            Some((id, verb)) => (id, Some(verb)),
            None => (rest, None),
        };
        match (&req.method, id, verb) {
            (Method::Post, "", None) => self.submit(ctx, conn, req),
            (Method::Post, id, Some("cancel")) => self.op(ctx, conn, id, Op::Cancel, None),
            (Method::Post, id, Some("pause")) => self.op(ctx, conn, id, Op::Pause, None),
            (Method::Post, id, Some("resume")) => self.op(ctx, conn, id, Op::Resume, None),
            (Method::Post, id, Some("migrate")) => {
                #[derive(serde::Deserialize)]
                #[serde(deny_unknown_fields)]
                struct To {
                    agent: Option<String>,
                }
                let body = req.body.trim_ascii();
                let to: To = if body.is_empty() {
                    To { agent: None }
                } else {
                    match serde_json::from_slice(body) {
                        Ok(t) => t,
                        Err(e) => {
                            let m = format!("not {{\"agent\": ID}}: {e}");
                            return HttpAnswer::Respond(error(400, 104, &m));
                        }
                    }
                };
                self.op(ctx, conn, id, Op::Migrate, to.agent)
            }
            (Method::Get | Method::Head, "", None) => self.list(conn, req),
            (Method::Get | Method::Head, id, None) => self.get(conn, id),
            (Method::Get | Method::Head, id, Some("logs")) => self.logs(ctx, conn, id, req),
            (Method::Get | Method::Head, id, Some("artifacts")) => {
                self.artifacts_get(conn, id, None)
            }
            (Method::Get | Method::Head, id, Some(v)) if v.starts_with("artifacts/") => {
                self.artifacts_get(conn, id, Some(&v["artifacts/".len()..]))
            }
            _ => HttpAnswer::Respond(error(404, 404, "no such route")),
        }
    }

    /// A submission: committed, and answered once on disk. The dispatcher hears of it at
    /// once, so that its assignment can be queued right behind it and share its commit (one
    /// fsync for both); the JOB_REQUEST still waits for the assignment's commit, and one for
    /// a job that was not made (an idempotency key used before) finds nothing and is dropped.
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
        let spec = if spec.secrets.is_empty() {
            spec
        } else {
            let Some(key) = &self.hub.config.secrets else {
                return HttpAnswer::Respond(error(
                    400,
                    104,
                    "this control plane keeps no secrets (start it with --secrets-key)",
                ));
            };
            match spec.sealed(key) {
                Ok(s) => s,
                Err(e) => return HttpAnswer::Respond(error(500, 500, &e.to_string())),
            }
        };
        self.seq = self.seq.wrapping_add(1);
        // The shard in the top byte: ids made in the same millisecond on two shards differ.
        let id = job_id(
            now_ms(),
            (self.shard as u32) << 24 | (self.seq & 0x00FF_FFFF),
        );
        let answer = answerer(&self.hub, conn);
        let hub = self.hub.clone();
        let at = now_ms();
        let submitted = std::time::Instant::now();
        let for_dispatcher = spec.clone();
        let change = Change::Submit {
            job_id: id.clone(),
            spec: Box::new(spec),
            at,
        };
        let reply = Box::new(move |r: Result<Applied, StoreError>| {
            let resp = match r {
                Ok(Applied::Submitted { job_id, created }) => {
                    if created {
                        hub.metrics.entered(JobState::Queued);
                    }
                    Response::json(
                        if created { 201 } else { 200 },
                        json!({"job_id": job_id, "state": JobState::Queued, "created": created})
                            .to_string(),
                    )
                }
                Ok(other) => error(500, 500, &format!("unexpected: {other:?}")),
                Err(e) => error(503, 504, &e.to_string()),
            };
            answer(resp);
        });
        if self.hub.store.try_change(change, reply).is_err() {
            return busy();
        }
        self.dispatch(
            ctx,
            Event::Submitted {
                job_id: id,
                spec: Box::new(for_dispatcher),
                created_at: at,
                at: submitted,
            },
        );
        HttpAnswer::Later
    }

    /// Cancel, pause, resume or migrate (to `target`, or anywhere else): committed, then the
    /// dispatcher tells the agent.
    fn op(
        &mut self,
        _ctx: &mut Ctx<'_>,
        conn: ConnRef,
        id: &str,
        op: Op,
        target: Option<String>,
    ) -> HttpAnswer {
        let answer = answerer(&self.hub, conn);
        let hub = self.hub.clone();
        let job_id = id.to_owned();
        let at = now_ms();
        let change = match op {
            Op::Cancel => Change::Cancel { job_id, at },
            Op::Pause => Change::Pause { job_id, at },
            Op::Resume => Change::Resume { job_id, at },
            Op::Migrate => Change::Migrate { job_id, at },
        };
        let job_id = id.to_owned();
        let reply = Box::new(move |r: Result<Applied, StoreError>| {
            let resp = match r {
                Ok(Applied::Moved { state, running }) => {
                    if state.is_final() {
                        hub.metrics.entered(state);
                    }
                    hub.dispatch(Event::Moved {
                        job_id: job_id.clone(),
                        state,
                        running,
                        op,
                        target,
                    });
                    // A running job's cancel or migration is done by its agent: accepted,
                    // not yet done.
                    let status = if matches!(op, Op::Cancel | Op::Migrate) && running.is_some() {
                        202
                    } else {
                        200
                    };
                    Response::json(
                        status,
                        json!({"job_id": job_id, "state": state}).to_string(),
                    )
                }
                Ok(Applied::NotFound) => error(404, 404, "no such job"),
                Ok(Applied::Refused { state }) => error(
                    409,
                    406,
                    &format!("the job is {}: it cannot be that", state.as_str()),
                ),
                Ok(other) => error(500, 500, &format!("unexpected: {other:?}")),
                Err(e) => error(503, 504, &e.to_string()),
            };
            answer(resp);
        });
        if self.hub.store.try_change(change, reply).is_err() {
            return busy();
        }
        HttpAnswer::Later
    }

    fn list(&mut self, conn: ConnRef, req: &Request) -> HttpAnswer {
        let mut state = None;
        let mut limit = 100usize;
        let mut after: Option<String> = None;
        for (k, v) in query(req) {
            match k {
                "state" => match JobState::parse(v) {
                    Some(s) => state = Some(s),
                    None => return HttpAnswer::Respond(error(400, 104, "unknown state")),
                },
                "limit" => limit = v.parse().unwrap_or(limit).clamp(1, MAX_LIST),
                "after" => after = Some(v.to_owned()),
                _ => {}
            }
        }
        let answer = answerer(&self.hub, conn);
        let queued = self.hub.store.try_read(
            move |s| s.jobs(state, limit, after.as_deref()),
            move |r| {
                answer(match r {
                    Ok(jobs) => {
                        let next = (jobs.len() == limit)
                            .then(|| jobs.last().map(|j| j.job_id.clone()))
                            .flatten();
                        let list: Vec<_> = jobs.iter().map(job_json).collect();
                        Response::json(200, json!({"jobs": list, "next": next}).to_string())
                    }
                    Err(e) => error(503, 504, &e.to_string()),
                })
            },
        );
        if queued { HttpAnswer::Later } else { busy() }
    }

    fn get(&mut self, conn: ConnRef, id: &str) -> HttpAnswer {
        let answer = answerer(&self.hub, conn);
        let id = id.to_owned();
        let queued = self.hub.store.try_read(
            move |s| s.job(&id),
            move |r| {
                answer(match r {
                    Ok(Some(job)) => Response::json(200, job_json(&job).to_string()),
                    Ok(None) => error(404, 404, "no such job"),
                    Err(e) => error(503, 504, &e.to_string()),
                })
            },
        );
        if queued { HttpAnswer::Later } else { busy() }
    }
}
