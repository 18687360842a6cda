//! How the embedded store applies each [`Change`] inside a transaction: the rules of a job's
//! life (which state allows what, epochs fencing stale attempts, retries counted against
//! `max_attempts`, cancels that wait for a running attempt) and its output's numbering (no
//! gap, no duplicate).

use rusqlite::{OptionalExtension, Transaction, params};

use super::{db, parse_state};
use crate::model::JobState;
use crate::store::{Applied, Change, LogLine, StoreError};

/// A job's row, as the rules need it.
struct Head {
    state: JobState,
    epoch: u64,
    attempts: u32,
    failures: u32,
    max_attempts: u32,
    cancel_requested: bool,
    migrate_requested: bool,
    log_seq: u64,
    log_bytes: u64,
    /// Whether the attempt of `epoch` is still on an agent (not ended).
    active: bool,
}

fn head(tx: &Transaction<'_>, job_id: &str) -> Result<Option<Head>, StoreError> {
    let row = tx
        .prepare_cached(
            "SELECT j.state, j.epoch, j.attempts, j.failures, j.max_attempts, j.cancel_requested,
                    j.log_seq, j.log_bytes,
                    (SELECT a.ended_ms IS NULL FROM attempts a WHERE a.job = j.id AND a.epoch = j.epoch),
                    j.migrate_requested
             FROM jobs j WHERE j.id = ?1",
        )
        .map_err(db)?
        .query_row([job_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, u32>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, u32>(4)?,
                r.get::<_, bool>(5)?,
                r.get::<_, i64>(6)?,
                r.get::<_, i64>(7)?,
                r.get::<_, Option<bool>>(8)?,
                r.get::<_, bool>(9)?,
            ))
        })
        .optional()
        .map_err(db)?;
    let Some((
        state,
        epoch,
        attempts,
        failures,
        max_attempts,
        cancel,
        log_seq,
        log_bytes,
        active,
        migrate,
    )) = row
    else {
        return Ok(None);
    };
    Ok(Some(Head {
        state: parse_state(&state)?,
        epoch: epoch as u64,
        attempts,
        failures,
        max_attempts: max_attempts.max(1),
        cancel_requested: cancel,
        migrate_requested: migrate,
        log_seq: log_seq as u64,
        log_bytes: log_bytes as u64,
        active: active.unwrap_or(false),
    }))
}

/// The job's row when `epoch` is its current attempt's; else the answer (no such job, or
/// a stale attempt).
fn at_epoch(
    tx: &Transaction<'_>,
    job_id: &str,
    epoch: u64,
) -> Result<Result<Head, Applied>, StoreError> {
    let Some(h) = head(tx, job_id)? else {
        return Ok(Err(Applied::NotFound));
    };
    if epoch != h.epoch {
        return Ok(Err(Applied::Stale { current: h.epoch }));
    }
    Ok(Ok(h))
}

fn set_job(tx: &Transaction<'_>, job_id: &str, state: JobState, at: u64) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE jobs SET state = ?2, updated_ms = ?3 WHERE id = ?1")
        .map_err(db)?
        .execute(params![job_id, state.as_str(), at as i64])
        .map_err(db)?;
    Ok(())
}

fn set_attempt(
    tx: &Transaction<'_>,
    job_id: &str,
    epoch: u64,
    state: JobState,
) -> Result<(), StoreError> {
    tx.prepare_cached("UPDATE attempts SET state = ?3 WHERE job = ?1 AND epoch = ?2")
        .map_err(db)?
        .execute(params![job_id, epoch as i64, state.as_str()])
        .map_err(db)?;
    Ok(())
}

/// End the attempt of `epoch`.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    tx: &Transaction<'_>,
    job_id: &str,
    epoch: u64,
    state: JobState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<&str>,
    at: u64,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "UPDATE attempts SET state = ?3, ended_ms = ?4, exit_code = ?5, signal = ?6, reason = ?7,
         started_ms = CASE WHEN ?5 IS NULL THEN started_ms ELSE coalesce(started_ms, ?4) END
         WHERE job = ?1 AND epoch = ?2",
    )
    .map_err(db)?
    .execute(params![
        job_id,
        epoch as i64,
        state.as_str(),
        at as i64,
        exit_code,
        signal,
        reason
    ])
    .map_err(db)?;
    Ok(())
}

/// Apply one change.
pub(super) fn apply(
    tx: &Transaction<'_>,
    change: &Change,
    log_cap: u64,
) -> Result<Applied, StoreError> {
    match change {
        Change::Submit { job_id, spec, at } => {
            if let Some(key) = &spec.idempotency_key {
                let first: Option<String> = tx
                    .prepare_cached("SELECT id FROM jobs WHERE idempotency_key = ?1")
                    .map_err(db)?
                    .query_row([key], |r| r.get(0))
                    .optional()
                    .map_err(db)?;
                if let Some(first) = first {
                    return Ok(Applied::Submitted {
                        job_id: first,
                        created: false,
                    });
                }
            }
            let text =
                serde_json::to_string(spec).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.prepare_cached(
                "INSERT INTO jobs (id, idempotency_key, spec, state, priority, created_ms, updated_ms, max_attempts)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?5, ?6)",
            )
            .map_err(db)?
            .execute(params![
                job_id,
                spec.idempotency_key,
                text,
                spec.priority,
                *at as i64,
                spec.max_attempts
            ])
            .map_err(db)?;
            Ok(Applied::Submitted {
                job_id: job_id.clone(),
                created: true,
            })
        }
        Change::Assign { job_id, agent, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            if h.state != JobState::Queued {
                return Ok(Applied::Refused { state: h.state });
            }
            let (epoch, attempt) = (h.epoch + 1, h.attempts + 1);
            tx.prepare_cached(
                "UPDATE jobs SET state = 'assigned', epoch = ?2, attempts = ?3, updated_ms = ?4 WHERE id = ?1",
            )
            .map_err(db)?
            .execute(params![job_id, epoch as i64, attempt, *at as i64])
            .map_err(db)?;
            tx.prepare_cached(
                "INSERT INTO attempts (job, attempt, agent, epoch, state) VALUES (?1, ?2, ?3, ?4, 'assigned')",
            )
            .map_err(db)?
            .execute(params![job_id, attempt, agent, epoch as i64])
            .map_err(db)?;
            Ok(Applied::Assigned {
                attempt,
                epoch,
                log_seq: h.log_seq,
            })
        }
        Change::Start { job_id, epoch, at } => {
            let h = match at_epoch(tx, job_id, *epoch)? {
                Ok(h) if h.active => h,
                Ok(h) => return Ok(Applied::Stale { current: h.epoch }),
                Err(answer) => return Ok(answer),
            };
            match h.state {
                JobState::Running => return Ok(Applied::Done),
                JobState::Assigned => {}
                other => return Ok(Applied::Refused { state: other }),
            }
            set_job(tx, job_id, JobState::Running, *at)?;
            tx.prepare_cached(
                "UPDATE attempts SET state = 'running', started_ms = ?3 WHERE job = ?1 AND epoch = ?2",
            )
            .map_err(db)?
            .execute(params![job_id, *epoch as i64, *at as i64])
            .map_err(db)?;
            Ok(Applied::Done)
        }
        Change::End {
            job_id,
            epoch,
            state,
            exit_code,
            signal,
            reason,
            at,
        } => {
            let h = match at_epoch(tx, job_id, *epoch)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            if h.state.is_final() || !h.active {
                return Ok(Applied::Refused { state: h.state });
            }
            let mut failures = h.failures;
            let mut reason = reason.clone();
            let (job_state, attempt_state) = if *state == JobState::Succeeded {
                // It finished before a cancel or a migration reached it: it stands.
                (JobState::Succeeded, JobState::Succeeded)
            } else if h.cancel_requested {
                (JobState::Cancelled, JobState::Cancelled)
            } else if h.migrate_requested {
                // Stopped to run elsewhere: queued again, not a failure.
                reason = Some("migrated".into());
                (JobState::Queued, JobState::Cancelled)
            } else if *state == JobState::Queued {
                failures += 1;
                let next = if failures >= h.max_attempts {
                    JobState::Failed
                } else {
                    JobState::Queued
                };
                (next, JobState::Failed)
            } else {
                (*state, *state)
            };
            let final_code = job_state.is_final().then_some(*exit_code).flatten();
            tx.prepare_cached(
                "UPDATE jobs SET state = ?2, exit_code = ?3, failures = ?4, updated_ms = ?5,
                 migrate_requested = 0 WHERE id = ?1",
            )
            .map_err(db)?
            .execute(params![
                job_id,
                job_state.as_str(),
                final_code,
                failures,
                *at as i64
            ])
            .map_err(db)?;
            end_attempt(
                tx,
                job_id,
                *epoch,
                attempt_state,
                *exit_code,
                *signal,
                reason.as_deref(),
                *at,
            )?;
            Ok(Applied::Ended { state: job_state })
        }
        Change::Requeue {
            job_id,
            epoch,
            reason,
            at,
        } => {
            let h = match at_epoch(tx, job_id, *epoch)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            if h.state.is_final() || !h.active {
                return Ok(Applied::Refused { state: h.state });
            }
            let state = if h.cancel_requested {
                JobState::Cancelled
            } else if h.state == JobState::Paused {
                JobState::Paused
            } else {
                JobState::Queued
            };
            set_job(tx, job_id, state, *at)?;
            end_attempt(
                tx,
                job_id,
                *epoch,
                JobState::Failed,
                None,
                None,
                Some(reason),
                *at,
            )?;
            Ok(Applied::Ended { state })
        }
        Change::Cancel { job_id, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            if h.state.is_final() {
                return Ok(Applied::Refused { state: h.state });
            }
            if h.active {
                tx.prepare_cached("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                    .map_err(db)?
                    .execute([job_id])
                    .map_err(db)?;
                return Ok(Applied::Moved {
                    state: h.state,
                    running: Some(h.epoch),
                });
            }
            set_job(tx, job_id, JobState::Cancelled, *at)?;
            Ok(Applied::Moved {
                state: JobState::Cancelled,
                running: None,
            })
        }
        Change::Migrate { job_id, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            if h.state.is_final() {
                return Ok(Applied::Refused { state: h.state });
            }
            if h.active {
                tx.prepare_cached(
                    "UPDATE jobs SET migrate_requested = 1, updated_ms = ?2 WHERE id = ?1",
                )
                .map_err(db)?
                .execute(params![job_id, *at as i64])
                .map_err(db)?;
            }
            Ok(Applied::Moved {
                state: h.state,
                running: h.active.then_some(h.epoch),
            })
        }
        Change::Pause { job_id, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            if h.state.is_final() {
                return Ok(Applied::Refused { state: h.state });
            }
            let running = h.active.then_some(h.epoch);
            if h.state != JobState::Paused {
                set_job(tx, job_id, JobState::Paused, *at)?;
                if h.active {
                    set_attempt(tx, job_id, h.epoch, JobState::Paused)?;
                }
            }
            Ok(Applied::Moved {
                state: JobState::Paused,
                running,
            })
        }
        Change::Resume { job_id, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            if h.state != JobState::Paused {
                return Ok(Applied::Refused { state: h.state });
            }
            let state = if !h.active {
                JobState::Queued
            } else {
                let started: Option<i64> = tx
                    .prepare_cached("SELECT started_ms FROM attempts WHERE job = ?1 AND epoch = ?2")
                    .map_err(db)?
                    .query_row(params![job_id, h.epoch as i64], |r| r.get(0))
                    .map_err(db)?;
                let state = if started.is_some() {
                    JobState::Running
                } else {
                    JobState::Assigned
                };
                set_attempt(tx, job_id, h.epoch, state)?;
                state
            };
            set_job(tx, job_id, state, *at)?;
            Ok(Applied::Moved {
                state,
                running: h.active.then_some(h.epoch),
            })
        }
        Change::Prune { before } => {
            let chunks = tx
                .prepare_cached(
                    "DELETE FROM logs WHERE job IN (SELECT id FROM jobs WHERE updated_ms < ?1
                     AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out'))",
                )
                .map_err(db)?
                .execute([*before as i64])
                .map_err(db)?;
            Ok(Applied::Pruned {
                chunks: chunks as u64,
            })
        }
        Change::Progress {
            job_id,
            epoch,
            progress,
        } => {
            match at_epoch(tx, job_id, *epoch)? {
                Ok(h) if h.active => {}
                Ok(h) => return Ok(Applied::Stale { current: h.epoch }),
                Err(answer) => return Ok(answer),
            }
            let text =
                serde_json::to_string(progress).map_err(|e| StoreError::Database(e.to_string()))?;
            tx.prepare_cached("UPDATE jobs SET progress = ?2 WHERE id = ?1")
                .map_err(db)?
                .execute(params![job_id, text])
                .map_err(db)?;
            Ok(Applied::Done)
        }
        Change::Artifact {
            job_id,
            epoch,
            name,
            size,
            blake3,
            at,
        } => {
            if let Err(answer) = at_epoch(tx, job_id, *epoch)? {
                return Ok(answer);
            }
            tx.prepare_cached(
                "INSERT OR REPLACE INTO artifacts (job, name, epoch, size, blake3, stored_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            )
            .map_err(db)?
            .execute(params![
                job_id,
                name,
                *epoch as i64,
                *size as i64,
                blake3,
                *at as i64
            ])
            .map_err(db)?;
            Ok(Applied::Done)
        }
        Change::Log {
            job_id,
            epoch,
            first_seq,
            lines,
        } => {
            let h = match at_epoch(tx, job_id, *epoch)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            log(tx, job_id, &h, *first_seq, lines, log_cap)
        }
    }
}

/// Store the lines of a batch the job does not have yet.
fn log(
    tx: &Transaction<'_>,
    job_id: &str,
    h: &Head,
    first_seq: u64,
    lines: &[LogLine],
    log_cap: u64,
) -> Result<Applied, StoreError> {
    // A batch starting past the next line would leave a gap: its sender goes back to the
    // acknowledged number (the answer) and sends from there.
    if first_seq == 0 || first_seq > h.log_seq + 1 {
        return Ok(Applied::Logged { acked: h.log_seq });
    }
    let skip = (h.log_seq + 1 - first_seq) as usize;
    if skip >= lines.len() {
        return Ok(Applied::Logged { acked: h.log_seq });
    }
    let from = h.log_seq + 1;
    let last = first_seq + lines.len() as u64 - 1;
    let mut text = String::new();
    let mut bytes = h.log_bytes;
    let mut kept_last = None;
    for (i, l) in lines[skip..].iter().enumerate() {
        let seq = from + i as u64;
        if bytes > log_cap {
            break;
        }
        bytes += l.line.len() as u64;
        if bytes > log_cap {
            // Said once: the lines after it are counted, not kept.
            let note = LogLine {
                stream: "valkyrie".into(),
                line: format!(
                    "[the job's output passed {log_cap} bytes: lines from {seq} on are not kept]"
                ),
            };
            push_line(&mut text, seq, &note);
        } else {
            push_line(&mut text, seq, l);
        }
        kept_last = Some(seq);
    }
    if let Some(kept) = kept_last {
        tx.prepare_cached(
            "INSERT INTO logs (job, first_seq, last_seq, text) VALUES (?1, ?2, ?3, ?4)",
        )
        .map_err(db)?
        .execute(params![job_id, from as i64, kept as i64, text])
        .map_err(db)?;
    }
    tx.prepare_cached("UPDATE jobs SET log_seq = ?2, log_bytes = ?3 WHERE id = ?1")
        .map_err(db)?
        .execute(params![job_id, last as i64, bytes as i64])
        .map_err(db)?;
    Ok(Applied::Logged { acked: last })
}

/// One NDJSON line: `{"seq":N,"stream":"stdout","line":"..."}`.
fn push_line(out: &mut String, seq: u64, l: &LogLine) {
    use std::fmt::Write;
    let _ = write!(out, "{{\"seq\":{seq},\"stream\":");
    quote(out, &l.stream);
    out.push_str(",\"line\":");
    quote(out, &l.line);
    out.push_str("}\n");
}

/// `s` as a JSON string, escaped (no intermediate value).
fn quote(out: &mut String, s: &str) {
    let mut buf = Vec::with_capacity(s.len() + 2);
    if serde_json::to_writer(&mut buf, s).is_ok() {
        // serde_json writes valid UTF-8.
        out.push_str(&String::from_utf8_lossy(&buf));
    }
}
