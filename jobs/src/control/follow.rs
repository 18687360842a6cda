//! `GET /api/v1/jobs/{id}/logs?from=SEQ[&follow=1]`: a job's stored output as NDJSON
//! (`{"seq":N,"stream":"stdout","line":"..."}` a line). Without `follow` the answer is what
//! is stored from `from` on (up to [`PAGE`] bytes: the `x-valkyrie-next` header says where
//! to go on). With it the answer is chunked and goes on, every 20 ms at a time, until
//! the job is over and every line of it was sent; a client that reads slowly is given more
//! only once it has read what waits.

use valkyrie_runtime::http::{Request, Response};
use valkyrie_runtime::{ConnRef, Ctx, HttpAnswer, RouteError};

use super::{Follow, Inbox, JobsService};
use crate::rest::{error, query};
use crate::store::LogPage;

/// Bytes of output one answer (or one chunk of a followed one) carries at most.
pub(crate) const PAGE: usize = 4 * 1024 * 1024;

/// Clients one shard lets follow at once.
const MAX_FOLLOWERS: usize = 4096;

impl JobsService {
    pub(crate) fn logs(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnRef,
        id: &str,
        req: &Request,
    ) -> HttpAnswer {
        let mut from = 1u64;
        let mut follow = false;
        for (k, v) in query(req) {
            match k {
                "from" => match v.parse() {
                    Ok(n) => from = n,
                    Err(_) => return HttpAnswer::Respond(error(400, 104, "from is a number")),
                },
                "follow" => follow = v == "1" || v == "true",
                _ => {}
            }
        }
        if follow {
            if self.local.followers.len() >= MAX_FOLLOWERS {
                return HttpAnswer::Respond(error(503, 503, "too many clients follow logs here"));
            }
            self.local.followers.insert(
                conn,
                Follow {
                    job_id: id.to_owned(),
                    next: from,
                    reading: false,
                    pending: None,
                    done: false,
                },
            );
            self.read_followed(ctx);
            return HttpAnswer::Stream(Response::streamed(200, "application/x-ndjson"));
        }
        let hub = self.hub.clone();
        let id = id.to_owned();
        let queued = self.hub.store.try_read(
            move |s| match s.job(&id)? {
                None => Ok(None),
                Some(_) => s.logs(&id, from, PAGE).map(Some),
            },
            move |r| {
                let resp = match r {
                    Ok(Some(page)) => Response::with_body(200, "application/x-ndjson", page.ndjson)
                        .header("x-valkyrie-next", page.next.to_string()),
                    Ok(None) => error(404, 404, "no such job"),
                    Err(e) => error(503, 504, &e.to_string()),
                };
                hub.http(conn, resp);
            },
        );
        if queued {
            HttpAnswer::Later
        } else {
            HttpAnswer::Respond(error(503, 504, "the store is busy: try again"))
        }
    }

    /// Ask the store for what followed jobs stored since.
    pub(crate) fn read_followed(&mut self, ctx: &mut Ctx<'_>) {
        let mut again = false;
        for (&conn, f) in &mut self.local.followers {
            if f.reading || f.pending.is_some() || f.done {
                continue;
            }
            let (job, next) = (f.job_id.clone(), f.next);
            let hub = self.hub.clone();
            let queued = self.hub.store.try_read(
                move |s| {
                    // The state first: a job over then has all its lines stored by then.
                    let over = s.job(&job)?.is_none_or(|j| j.state.is_final());
                    Ok::<_, crate::StoreError>((over, s.logs(&job, next, PAGE)?))
                },
                move |r| {
                    let (page, done) = match r {
                        Ok((over, page)) => {
                            let last = page.ndjson.len() < PAGE;
                            (page, over && last)
                        }
                        Err(_) => (LogPage::default(), true),
                    };
                    hub.post(conn.shard as usize, Inbox::Logs { conn, page, done });
                },
            );
            f.reading = queued;
            again |= !queued;
        }
        if again {
            self.follow_soon(ctx);
        }
    }

    /// A page read for a follower.
    pub(crate) fn logs_read(
        &mut self,
        ctx: &mut Ctx<'_>,
        conn: ConnRef,
        page: LogPage,
        done: bool,
    ) {
        let Some(f) = self.local.followers.get_mut(&conn) else {
            return;
        };
        f.reading = false;
        f.done = done;
        if !page.ndjson.is_empty() {
            f.next = page.next;
            f.pending = Some(page.ndjson);
        }
        self.logs_writable(ctx, conn);
    }

    /// Write what waits for a follower; finish it once the job is over.
    pub(crate) fn logs_writable(&mut self, ctx: &mut Ctx<'_>, conn: ConnRef) {
        let Some(f) = self.local.followers.get_mut(&conn) else {
            return;
        };
        if let Some(text) = f.pending.take() {
            match ctx.http_chunk(conn, text.as_bytes()) {
                Ok(()) => {}
                Err(RouteError::HttpBackpressure(_)) => {
                    // on_http_writable comes back here.
                    f.pending = Some(text);
                    return;
                }
                Err(_) => {
                    self.local.followers.remove(&conn);
                    return;
                }
            }
        }
        if f.done {
            let _ = ctx.http_finish(conn);
            self.local.followers.remove(&conn);
        } else {
            self.follow_soon(ctx);
        }
    }
}
