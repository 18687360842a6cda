//! What a control-plane shard does with an agent's frames: its announcement and lease
//! (STATUS_UPDATE), its answers to assignments (JOB_ACCEPT / JOB_REJECT) handed to the
//! dispatcher, and what it reports about an attempt (JOB_START, LOG_ENTRY, JOB_COMPLETE,
//! JOB_FAILED) committed to the store from this shard, each answered once it is on disk.

use std::sync::Arc;

use valkyrie_protocol::message::{
    JobAccept, JobComplete, JobFailed, JobProgress, JobReject, JobStart, LogEntry, Payload,
    StatusUpdate,
};
use valkyrie_protocol::{ErrorCode, Flags, Frame, MessageType};
use valkyrie_runtime::{ConnRef, Ctx};

use super::event::Event;
use super::{Hub, Reply, response};
use crate::model::JobState;
use crate::store::{Applied, Change};
use crate::wire::{self, CANCELLED, TIMED_OUT};

/// What an agent said, decoded.
enum Said {
    Status(StatusUpdate),
    Accept(JobAccept),
    Reject(JobReject),
    Start(JobStart),
    Log(LogEntry),
    Complete(JobComplete),
    Failed(JobFailed),
    Progress(JobProgress),
}

fn decode(frame: &Frame) -> Option<Result<Said, String>> {
    let p = &frame.payload;
    let r = match frame.msg_type() {
        MessageType::StatusUpdate => StatusUpdate::from_bytes(p).map(Said::Status),
        MessageType::JobAccept => JobAccept::from_bytes(p).map(Said::Accept),
        MessageType::JobReject => JobReject::from_bytes(p).map(Said::Reject),
        MessageType::JobStart => JobStart::from_bytes(p).map(Said::Start),
        MessageType::LogEntry => LogEntry::from_bytes(p).map(Said::Log),
        MessageType::JobComplete => JobComplete::from_bytes(p).map(Said::Complete),
        MessageType::JobFailed => JobFailed::from_bytes(p).map(Said::Failed),
        MessageType::JobProgress => JobProgress::from_bytes(p).map(Said::Progress),
        _ => return None,
    };
    Some(r.map_err(|e| e.to_string()))
}

/// The job state a result asks for (`Queued`: retry if attempts are left).
fn outcome(said: &Said) -> (JobState, Option<i32>, Option<i32>, String) {
    match said {
        Said::Complete(c) => {
            let signal = c
                .outputs
                .get("signal")
                .and_then(serde_json::Value::as_i64)
                .map(|s| s as i32);
            let state = if c.exit_code == 0 && signal.is_none() {
                JobState::Succeeded
            } else {
                JobState::Queued
            };
            let reason = match signal {
                Some(s) => format!("killed by signal {s}"),
                None => format!("exited {}", c.exit_code),
            };
            (state, Some(c.exit_code), signal, reason)
        }
        Said::Failed(f) => {
            let state = match f.code {
                TIMED_OUT => JobState::TimedOut,
                CANCELLED => JobState::Cancelled,
                _ if f.retryable => JobState::Queued,
                _ => JobState::Failed,
            };
            (state, None, None, f.reason.clone())
        }
        _ => (JobState::Failed, None, None, String::new()),
    }
}

/// Handle an agent's frame on this shard. `to_dispatcher` hands the dispatcher an event.
pub(crate) fn on_agent_frame(
    ctx: &mut Ctx<'_>,
    hub: &Arc<Hub>,
    agents: &mut std::collections::HashMap<ConnRef, String>,
    conn: ConnRef,
    frame: Frame,
    to_dispatcher: &mut dyn FnMut(&mut Ctx<'_>, Event),
) {
    let h = frame.header;
    let is_request = h.correlation_id != 0 && !h.flags.contains(Flags::RESPONSE);
    let to = Reply {
        conn,
        stream: h.stream_id,
        corr: h.correlation_id,
    };
    let said = match decode(&frame) {
        None => {
            if is_request {
                let _ = ctx.send_error(
                    conn,
                    ErrorCode::SERVICE_UNAVAILABLE,
                    &format!("a control plane does not serve {}", h.msg_type),
                    h.stream_id,
                    h.correlation_id,
                );
            }
            return;
        }
        Some(Err(e)) => {
            let _ = ctx.send_error(
                conn,
                ErrorCode::MALFORMED_PAYLOAD,
                &e,
                h.stream_id,
                h.correlation_id,
            );
            return;
        }
        Some(Ok(s)) => s,
    };
    if let Said::Status(s) = &said {
        if hub.cut.load(std::sync::atomic::Ordering::Relaxed) {
            // Its store is away: the agent goes to another control plane.
            let _ = ctx.close(
                conn,
                ErrorCode::SHUTTING_DOWN.0,
                "going away: this control plane lost its store",
            );
            return;
        }
        let mut info = wire::agent_info(s);
        // What its authenticated identity is granted, not what it says.
        if let Some(policy) = &hub.config.grants {
            let identity = ctx.peer(conn).and_then(|p| p.identity);
            info.projects = Some(policy.projects(identity.as_deref()));
        }
        agents.insert(conn, info.id.clone());
        if is_request {
            let answer = StatusUpdate {
                node_id: hub.config.node_id.clone(),
                state: "ready".into(),
                load: None,
                running_jobs: None,
                capacity: None,
                labels: Default::default(),
            };
            let _ = ctx.send(
                conn,
                h.stream_id,
                MessageType::StatusUpdate,
                answer.to_bytes(),
                response(h.correlation_id),
            );
        }
        to_dispatcher(ctx, Event::AgentUp { info, conn });
        return;
    }
    let Some(agent) = agents.get(&conn).cloned() else {
        let _ = ctx.send_error(
            conn,
            ErrorCode::UNEXPECTED_MESSAGE,
            "an agent announces itself (STATUS_UPDATE) before it speaks of jobs",
            h.stream_id,
            h.correlation_id,
        );
        return;
    };
    let at = super::now_ms();
    match said {
        Said::Status(_) => {}
        Said::Accept(a) => to_dispatcher(
            ctx,
            Event::Accepted {
                job_id: a.job_id,
                epoch: a.epoch,
            },
        ),
        Said::Reject(r) => to_dispatcher(
            ctx,
            Event::Rejected {
                job_id: r.job_id,
                epoch: r.epoch,
                agent,
                reason: r.reason,
            },
        ),
        Said::Start(s) => {
            to_dispatcher(
                ctx,
                Event::Started {
                    job_id: s.job_id.clone(),
                    epoch: s.epoch,
                    agent,
                },
            );
            let change = Change::Start {
                job_id: s.job_id,
                epoch: s.epoch,
                at,
            };
            commit(ctx, hub, change, to, frame, |_, _| {});
        }
        Said::Progress(p) => {
            let progress = crate::model::Progress {
                percent: p.percent.clamp(0.0, 100.0) as u8,
                message: p.message.map(|m| m.chars().take(1024).collect()),
            };
            let change = Change::Progress {
                job_id: p.job_id,
                epoch: p.epoch,
                progress,
            };
            commit(ctx, hub, change, to, frame, |_, _| {});
        }
        Said::Log(entry) => match wire::parse_log_batch(entry) {
            Err(e) => {
                let _ = ctx.send_error(
                    conn,
                    ErrorCode::MALFORMED_PAYLOAD,
                    &e,
                    h.stream_id,
                    h.correlation_id,
                );
            }
            Ok(b) => {
                let n = b.lines.len() as u64;
                let change = Change::Log {
                    job_id: b.job_id,
                    epoch: b.epoch,
                    first_seq: b.seq,
                    lines: b.lines,
                };
                commit(ctx, hub, change, to, frame, move |hub, _| {
                    hub.metrics
                        .log_lines
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                });
            }
        },
        ref result @ (Said::Complete(_) | Said::Failed(_)) => {
            let (state, exit_code, signal, reason) = outcome(result);
            let (job_id, epoch) = match result {
                Said::Complete(c) => (c.job_id.clone(), c.epoch),
                Said::Failed(f) => (f.job_id.clone(), f.epoch),
                _ => unreachable!("a result"),
            };
            let id = job_id.clone();
            let change = Change::End {
                job_id,
                epoch,
                state,
                exit_code,
                signal,
                reason: Some(reason),
                at,
            };
            commit(ctx, hub, change, to, frame, move |hub, applied| {
                if let Applied::Ended { state } = applied {
                    hub.dispatch(Event::Ended {
                        job_id: id,
                        state,
                        rejected_by: None,
                    });
                }
            });
        }
    }
}

/// Commit `change` and answer the agent's request once it is on disk: the frame echoed (a
/// LOG_ENTRY: the acknowledged line), or ERROR 400 when the attempt is not the job's.
/// `then` runs on the store's thread after a commit.
fn commit(
    ctx: &mut Ctx<'_>,
    hub: &Arc<Hub>,
    change: Change,
    to: Reply,
    frame: Frame,
    then: impl FnOnce(&Hub, Applied) + Send + 'static,
) {
    let h = hub.clone();
    let job_id = match &change {
        Change::Log { job_id, .. } => job_id.clone(),
        _ => String::new(),
    };
    let msg_type = frame.msg_type();
    let payload = frame.payload;
    let reply = Box::new(move |r: Result<Applied, crate::StoreError>| match r {
        Err(e) => h.refuse(to, ErrorCode(503), format!("the store failed: {e}")),
        Ok(Applied::Stale { current }) => {
            tracing::warn!(?msg_type, current, "a stale attempt's report was refused");
            h.refuse(
                to,
                ErrorCode::JOB_NOT_FOUND,
                format!("stale attempt: the job's current epoch is {current}"),
            );
        }
        Ok(Applied::NotFound) => h.refuse(to, ErrorCode::JOB_NOT_FOUND, "no such job".into()),
        Ok(applied) => {
            if to.corr != 0 {
                match &applied {
                    Applied::Logged { acked } => h.answer(
                        to,
                        MessageType::LogEntry,
                        wire::log_ack(&job_id, *acked, super::now_ms()).to_bytes(),
                    ),
                    _ => h.answer(to, msg_type, payload),
                }
            }
            then(&h, applied);
        }
    });
    if let Err((_, reply)) = hub.store.try_change(change, reply) {
        drop(reply);
        let _ = ctx.send_error(
            to.conn,
            ErrorCode(503),
            "the store is busy: send it again",
            to.stream,
            to.corr,
        );
    }
}
