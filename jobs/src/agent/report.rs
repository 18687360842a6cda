//! What the agent reports about its jobs, and what it does with the answers: the lines of
//! each job's output taken from its thread while its backlog has room, sent as
//! LOG_ENTRY batches (a few in flight per job), acknowledged lines let go, everything after
//! the acknowledged line sent again after an error, a timeout or a new connection; the
//! result sent once every line is acknowledged, and the job let go once it is answered.

use valkyrie_protocol::MessageType;
use valkyrie_protocol::message::{LogEntry, Payload};
use valkyrie_runtime::{Ctx, Reply};

use super::exec::{Control, ExecMsg};
use super::{AgentService, Pending, batch, is_stale, result, start};

use crate::wire::{MAX_BATCH_LINES, parse_log_ack};

/// The least time between two progress reports of one job.
const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// Batches of one job in flight at most.
const BATCHES_IN_FLIGHT: usize = 4;

/// Bytes of output one batch carries at most (well under a frame).
const BATCH_BYTES: usize = 256 * 1024;

impl AgentService {
    /// Take what the jobs' threads said, and send what can be sent: for the jobs whose
    /// process runs, or (`all`) for every job.
    pub(super) fn drain(&mut self, ctx: &mut Ctx<'_>, all: bool) {
        let ids: Vec<String> = if all {
            self.jobs.keys().cloned().collect()
        } else {
            self.live.iter().cloned().collect()
        };
        for id in ids {
            self.take(ctx, &id);
            self.flush_job(ctx, &id);
        }
    }

    /// Take a job's messages while its output has room.
    fn take(&mut self, ctx: &mut Ctx<'_>, id: &str) {
        loop {
            let Some(run) = self.jobs.get_mut(id) else {
                return;
            };
            if !run.lines.has_room() || run.result.is_some() {
                return;
            }
            let Some(Ok(msg)) = run.thread.as_ref().map(|(rx, _)| rx.try_recv()) else {
                return;
            };
            match msg {
                ExecMsg::Line(l) => {
                    let progress = (l.stream == "stdout")
                        .then(|| super::messages::progress_of(&l.line))
                        .flatten();
                    run.lines.push(l);
                    if let Some((percent, message)) = progress {
                        self.progress(ctx, id, percent, message);
                    }
                }
                ExecMsg::Started => {
                    run.started = true;
                    self.reclaim(ctx, id);
                }
                ExecMsg::Artifacts { found, missing } => {
                    run.uploads = found.into();
                    run.missing = missing;
                }
                end => {
                    let epoch = run.epoch;
                    run.result = Some(result(id, epoch, &end, &[], &run.missing));
                    run.end = Some(end);
                    self.live.remove(id);
                }
            }
        }
    }

    /// Report a job's progress (at most every [`PROGRESS_EVERY`], and always at 100 %).
    fn progress(&mut self, ctx: &mut Ctx<'_>, id: &str, percent: f64, message: Option<String>) {
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        let now = ctx.now();
        if percent < 100.0 && run.last_progress.is_some_and(|t| now - t < PROGRESS_EVERY) {
            return;
        }
        run.last_progress = Some(now);
        let p = valkyrie_protocol::message::JobProgress {
            job_id: id.to_owned(),
            percent,
            stage: None,
            message,
            epoch: run.epoch,
        };
        self.send(ctx, MessageType::JobProgress, p.to_bytes());
    }

    /// Claim a started job on this connection (JOB_START; again after a reconnect).
    pub(super) fn reclaim(&mut self, ctx: &mut Ctx<'_>, id: &str) {
        let Some(run) = self.jobs.get(id) else {
            return;
        };
        if !run.started {
            return;
        }
        let payload = start(id, run.epoch).to_bytes();
        self.request(
            ctx,
            MessageType::JobStart,
            payload,
            Pending::Start(id.to_owned()),
        );
    }

    /// Send a job's waiting output, then its result once all of it is acknowledged.
    pub(super) fn flush_job(&mut self, ctx: &mut Ctx<'_>, id: &str) {
        loop {
            let Some(run) = self.jobs.get_mut(id) else {
                return;
            };
            // Batches go from what is in memory.
            let waiting = run.acked + run.lines.in_memory().len() as u64 - run.sent;
            if waiting == 0 || run.batches_in_flight >= BATCHES_IN_FLIGHT || self.conn.is_none() {
                break;
            }
            let skip = (run.sent - run.acked) as usize;
            let mut bytes = 0;
            let lines: Vec<_> = run
                .lines
                .in_memory()
                .iter()
                .skip(skip)
                .take(MAX_BATCH_LINES)
                .take_while(|l| {
                    bytes += l.line.len() + 32;
                    bytes <= BATCH_BYTES || bytes == l.line.len() + 32
                })
                .cloned()
                .collect();
            let (seq, n, epoch) = (run.sent + 1, lines.len() as u64, run.epoch);
            let payload = batch(id, epoch, seq, lines).to_bytes();
            if !self.request(
                ctx,
                MessageType::LogEntry,
                payload,
                Pending::Logs(id.to_owned(), seq + n - 1),
            ) {
                break;
            }
            if let Some(run) = self.jobs.get_mut(id) {
                run.sent += n;
                run.batches_in_flight += 1;
            }
        }
        let Some(run) = self.jobs.get_mut(id) else {
            return;
        };
        // Every line is acknowledged before the artifacts go, and they before the result.
        if run.lines.is_empty()
            && run.result.is_some()
            && (run.upload.is_some() || !run.uploads.is_empty())
        {
            self.upload_step(ctx, id);
            return;
        }
        if run.lines.is_empty()
            && !run.result_in_flight
            && self.conn.is_some()
            && run.result.is_some()
        {
            // The result names the artifacts that went up and those that did not.
            if let Some(end) = &run.end {
                run.result = Some(result(id, run.epoch, end, &run.uploaded, &run.missing));
            }
            let Some((ty, payload)) = run.result.clone() else {
                return;
            };
            run.result_in_flight = true;
            if !self.request(ctx, ty, payload, Pending::Result(id.to_owned()))
                && let Some(run) = self.jobs.get_mut(id)
            {
                run.result_in_flight = false;
            }
        }
    }

    /// Let a job go: its attempt is over here (reported, or replaced while away).
    pub(super) fn let_go(&mut self, ctx: &mut Ctx<'_>, id: &str) {
        self.live.remove(id);
        if let Some(run) = self.jobs.remove(id) {
            if run.result.is_none() {
                // Its attempt was given to another: end the process here.
                if let Some((_, control)) = &run.thread {
                    let _ = control.try_send(Control::Cancel);
                }
            }
            // The next announcement says a slot is free.
            self.announce(ctx);
        }
    }

    /// What became of a report.
    pub(super) fn answered(&mut self, ctx: &mut Ctx<'_>, p: Pending, reply: Reply) {
        match p {
            Pending::Status => {}
            Pending::Start(id) => {
                if is_stale(&reply) {
                    tracing::warn!(job = %id, "the control plane gave this attempt to another: ending it");
                    self.let_go(ctx, &id);
                }
            }
            Pending::Logs(id, last) => {
                let stale = is_stale(&reply);
                let Some(run) = self.jobs.get_mut(&id) else {
                    return;
                };
                run.batches_in_flight = run.batches_in_flight.saturating_sub(1);
                let acked = match &reply {
                    Reply::Answer(f) => LogEntry::from_bytes(&f.payload)
                        .ok()
                        .and_then(|e| parse_log_ack(&e)),
                    _ => None,
                };
                if let Some(acked) = acked
                    && acked > run.acked
                {
                    let n = ((acked - run.acked) as usize).min(run.lines.in_memory().len());
                    run.lines.acknowledge(n);
                    run.acked += n as u64;
                }
                if stale {
                    tracing::warn!(job = %id, "output of a replaced attempt refused: ending it");
                    self.let_go(ctx, &id);
                    return;
                }
                if acked.is_none_or(|a| a < last) && run.sent > run.acked {
                    // Refused, timed out, lost or a gap: from the acknowledged line again
                    // once what is in flight is answered.
                    if run.batches_in_flight == 0 {
                        run.sent = run.acked;
                    }
                    self.retry_soon(ctx);
                }
                self.take(ctx, &id);
                self.flush_job(ctx, &id);
            }
            Pending::UploadStart(id) => self.upload_started(ctx, &id, reply),
            Pending::UploadChunk(id, end) => self.upload_chunk_answered(ctx, &id, end, reply),
            Pending::UploadComplete(id) => self.upload_completed(ctx, &id, reply),
            Pending::Result(id) => match reply {
                Reply::Answer(_) => self.let_go(ctx, &id),
                Reply::Error { code, .. } if code.0 < 500 => self.let_go(ctx, &id),
                _ => {
                    if let Some(run) = self.jobs.get_mut(&id) {
                        run.result_in_flight = false;
                    }
                    self.retry_soon(ctx);
                }
            },
        }
    }
}
