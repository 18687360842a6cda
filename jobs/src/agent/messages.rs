//! The messages an agent builds: its claims (JOB_START), its output (LOG_ENTRY batches), its
//! results (JOB_COMPLETE, JOB_FAILED), and what a refusal of them means.

use valkyrie_protocol::ErrorCode;
use valkyrie_protocol::MessageType;
use valkyrie_protocol::message::{JobComplete, JobFailed, JobStart, LogEntry, Payload};
use valkyrie_runtime::Reply;

use super::exec::ExecMsg;
use crate::store::LogLine;
use crate::wire;

/// The answer to a report is a refusal that ends the attempt here: the control plane
/// counts it as another attempt's (or no job's).
pub(super) fn is_stale(reply: &Reply) -> bool {
    matches!(reply, Reply::Error { code, .. } if *code == ErrorCode::JOB_NOT_FOUND)
}

/// The epoch-carrying JOB_START a job re-attaches with.
pub(super) fn start(job_id: &str, epoch: u64) -> JobStart {
    JobStart {
        job_id: job_id.to_owned(),
        started_at_ms: crate::control::now_ms(),
        epoch,
    }
}

/// A LOG_ENTRY batch of `lines` from line `seq`.
pub(super) fn batch(job_id: &str, epoch: u64, seq: u64, lines: Vec<LogLine>) -> LogEntry {
    wire::log_batch(
        &wire::LogBatch {
            job_id: job_id.to_owned(),
            epoch,
            seq,
            lines,
        },
        crate::control::now_ms(),
    )
}

/// Results as the agent reports them (a JOB_COMPLETE names the artifacts uploaded and those
/// the job did not leave in `outputs`).
pub(super) fn result(
    job_id: &str,
    epoch: u64,
    msg: &ExecMsg,
    uploaded: &[String],
    missing: &[String],
) -> (MessageType, bytes::Bytes) {
    match msg {
        ExecMsg::SpawnFailed(reason) => (
            MessageType::JobFailed,
            JobFailed {
                job_id: job_id.to_owned(),
                code: wire::COULD_NOT_RUN,
                reason: reason.clone(),
                retryable: true,
                epoch,
            }
            .to_bytes(),
        ),
        ExecMsg::Exited {
            cancelled: true, ..
        } => (
            MessageType::JobFailed,
            JobFailed {
                job_id: job_id.to_owned(),
                code: wire::CANCELLED,
                reason: "cancelled".into(),
                retryable: false,
                epoch,
            }
            .to_bytes(),
        ),
        ExecMsg::Exited {
            timed_out: true,
            duration,
            ..
        } => (
            MessageType::JobFailed,
            JobFailed {
                job_id: job_id.to_owned(),
                code: wire::TIMED_OUT,
                reason: format!("timed out after {} ms", duration.as_millis()),
                retryable: false,
                epoch,
            }
            .to_bytes(),
        ),
        ExecMsg::Exited {
            exit_code,
            signal,
            duration,
            ..
        } => {
            let mut outputs = serde_json::Map::new();
            if let Some(s) = signal {
                outputs.insert("signal".into(), (*s).into());
            }
            if !uploaded.is_empty() {
                outputs.insert("artifacts".into(), uploaded.into());
            }
            if !missing.is_empty() {
                outputs.insert("missing_artifacts".into(), missing.into());
            }
            (
                MessageType::JobComplete,
                JobComplete {
                    job_id: job_id.to_owned(),
                    exit_code: exit_code.unwrap_or(128 + signal.unwrap_or(0)),
                    duration_ms: duration.as_millis() as u64,
                    outputs,
                    epoch,
                }
                .to_bytes(),
            )
        }
        _ => unreachable!("only an end is a result"),
    }
}

/// A progress line a job wrote: `::progress::PERCENT[ MESSAGE]`.
pub(super) fn progress_of(line: &str) -> Option<(f64, Option<String>)> {
    let rest = line.strip_prefix("::progress::")?;
    let (n, msg) = match rest.split_once(' ') {
        Some((n, m)) => (n, Some(m.trim().to_owned()).filter(|m| !m.is_empty())),
        None => (rest, None),
    };
    let percent: f64 = n.trim().parse().ok()?;
    percent
        .is_finite()
        .then_some((percent.clamp(0.0, 100.0), msg))
}
