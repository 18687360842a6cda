//! How a store applies each [`Change`] inside a transaction — the same SQL on SQLite and on
//! PostgreSQL ([`crate::sql`]): the rules of a job's life (which state allows what, epochs
//! fencing stale attempts, retries counted against `max_attempts`, cancels and migrations that
//! wait for a running attempt) and its output's numbering (no gap, no duplicate).

use crate::holding::{self, Terms};
use crate::model::JobState;
use crate::row::{Head, at_epoch, head, live_attempt, not_over};
use crate::sql::{P, Tx};
use crate::store::{Applied, Change, LogLine, StoreError};

fn set_job(tx: &mut dyn Tx, job_id: &str, state: JobState, at: u64) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE jobs SET state = ?2, updated_ms = ?3 WHERE id = ?1",
        &[P::T(job_id), P::T(state.as_str()), P::I(at as i64)],
    )?;
    Ok(())
}

/// Set the job's state after its attempt (or its wait) is over, with who holds it then
/// ([`Terms::after`]).
fn set_held(
    tx: &mut dyn Tx,
    terms: &Terms,
    job_id: &str,
    state: JobState,
    at: u64,
) -> Result<(), StoreError> {
    let (holder, lease) = terms.after(state, at);
    tx.exec(
        "UPDATE jobs SET state = ?2, updated_ms = ?3, holder = ?4, lease_ms = ?5 WHERE id = ?1",
        &[
            P::T(job_id),
            P::T(state.as_str()),
            P::I(at as i64),
            P::OT(holder),
            P::I(lease),
        ],
    )?;
    Ok(())
}

fn set_attempt(
    tx: &mut dyn Tx,
    job_id: &str,
    epoch: u64,
    state: JobState,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE attempts SET state = ?3 WHERE job = ?1 AND epoch = ?2",
        &[P::T(job_id), P::I(epoch as i64), P::T(state.as_str())],
    )?;
    Ok(())
}

/// End the attempt of `epoch`.
#[allow(clippy::too_many_arguments)]
fn end_attempt(
    tx: &mut dyn Tx,
    job_id: &str,
    epoch: u64,
    state: JobState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    reason: Option<&str>,
    at: u64,
) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE attempts SET state = ?3, ended_ms = ?4, exit_code = ?5, signal = ?6, reason = ?7,
         started_ms = CASE WHEN CAST(?5 AS BIGINT) IS NULL THEN started_ms ELSE coalesce(started_ms, ?4) END
         WHERE job = ?1 AND epoch = ?2",
        &[
            P::T(job_id),
            P::I(epoch as i64),
            P::T(state.as_str()),
            P::I(at as i64),
            P::OI(exit_code.map(i64::from)),
            P::OI(signal.map(i64::from)),
            P::OT(reason),
        ],
    )?;
    Ok(())
}

/// Apply one change.
pub(crate) fn apply(
    tx: &mut dyn Tx,
    change: &Change,
    terms: &Terms,
) -> Result<Applied, StoreError> {
    match change {
        Change::Claim { limit, at } => holding::claim(tx, terms, *limit, *at),
        Change::Renew { at } => holding::renew(tx, terms, *at),
        Change::Reap { limit, at } => reap(tx, terms, *limit, *at),
        Change::Adopt {
            job_id,
            epoch,
            agent,
            at,
        } => holding::adopt(tx, terms, job_id, *epoch, agent, *at),
        Change::Lose { job_id, epoch, at } => match holding::losable(tx, terms, job_id, *epoch)? {
            Ok(h) => apply(
                tx,
                &holding::lost(job_id, *epoch, &h, "agent lost", *at),
                terms,
            ),
            Err(answer) => Ok(answer),
        },
        Change::Submit { job_id, spec, at } => {
            if let Some(key) = &spec.idempotency_key {
                let first = tx.row(
                    "SELECT id FROM jobs WHERE idempotency_key = ?1",
                    &[P::T(key)],
                )?;
                if let Some(first) = first {
                    return Ok(Applied::Submitted {
                        job_id: first[0].text()?,
                        created: false,
                    });
                }
            }
            let text =
                serde_json::to_string(spec).map_err(|e| StoreError::Database(e.to_string()))?;
            // Two control planes given the same key at once: one inserts, the other finds it.
            let made = tx.exec("INSERT INTO jobs (id, idempotency_key, spec, state, priority, created_ms, updated_ms, max_attempts)
                 VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?5, ?6) ON CONFLICT (idempotency_key) DO NOTHING", &[P::T(job_id), P::OT(spec.idempotency_key.as_deref()), P::T(&text), P::I(i64::from(spec.priority)), P::I(*at as i64), P::I(i64::from(spec.max_attempts))])?;
            if made == 0
                && let Some(key) = &spec.idempotency_key
                && let Some(first) = tx.row(
                    "SELECT id FROM jobs WHERE idempotency_key = ?1",
                    &[P::T(key)],
                )?
            {
                return Ok(Applied::Submitted {
                    job_id: first[0].text()?,
                    created: false,
                });
            }
            Ok(Applied::Submitted {
                job_id: job_id.clone(),
                created: true,
            })
        }
        Change::Assign { job_id, agent, at } => {
            let Some(h) = head(tx, job_id)? else {
                return Ok(Applied::NotFound);
            };
            // Queued, and not claimed by another control plane whose claim still holds.
            if h.state != JobState::Queued || !holding::free_for(&h, terms, *at) {
                return Ok(Applied::Refused { state: h.state });
            }
            let (epoch, attempt) = (h.epoch + 1, h.attempts + 1);
            tx.exec(
                "UPDATE jobs SET state = 'assigned', epoch = ?2, attempts = ?3, updated_ms = ?4,
                     holder = ?5, lease_ms = ?6, agent = ?7 WHERE id = ?1",
                &[
                    P::T(job_id),
                    P::I(epoch as i64),
                    P::I(i64::from(attempt)),
                    P::I(*at as i64),
                    P::T(&terms.node),
                    P::I(terms.until(*at)),
                    P::T(agent),
                ],
            )?;
            tx.exec("INSERT INTO attempts (job, attempt, agent, epoch, state) VALUES (?1, ?2, ?3, ?4, 'assigned')", &[P::T(job_id), P::I(i64::from(attempt)), P::T(agent), P::I(epoch as i64)])?;
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
            tx.exec("UPDATE attempts SET state = 'running', started_ms = ?3 WHERE job = ?1 AND epoch = ?2", &[P::T(job_id), P::I(*epoch as i64), P::I(*at as i64)])?;
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
            let h = match live_attempt(tx, job_id, *epoch)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
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
            let (holder, lease) = terms.after(job_state, *at);
            // A failure retried waits out its backoff, on whichever control plane claims it.
            let not_before = if failures > h.failures && job_state == JobState::Queued {
                at + retry_delay(tx, job_id, failures - 1)?
            } else {
                0
            };
            tx.exec(
                "UPDATE jobs SET state = ?2, exit_code = ?3, failures = ?4, updated_ms = ?5,
                 migrate_requested = 0, holder = ?6, lease_ms = ?7, not_before_ms = ?8 WHERE id = ?1",
                &[
                    P::T(job_id),
                    P::T(job_state.as_str()),
                    P::OI(final_code.map(i64::from)),
                    P::I(i64::from(failures)),
                    P::I(*at as i64),
                    P::OT(holder),
                    P::I(lease),
                    P::I(not_before as i64),
                ],
            )?;
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
            let h = match live_attempt(tx, job_id, *epoch)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            let state = if h.cancel_requested {
                JobState::Cancelled
            } else if h.state == JobState::Paused {
                JobState::Paused
            } else {
                JobState::Queued
            };
            set_held(tx, terms, job_id, state, *at)?;
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
            let h = match not_over(tx, job_id)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            if h.active {
                tx.exec(
                    "UPDATE jobs SET cancel_requested = 1 WHERE id = ?1",
                    &[P::T(job_id)],
                )?;
                return Ok(Applied::Moved {
                    state: h.state,
                    running: Some(h.epoch),
                });
            }
            set_held(tx, terms, job_id, JobState::Cancelled, *at)?;
            Ok(Applied::Moved {
                state: JobState::Cancelled,
                running: None,
            })
        }
        Change::Migrate { job_id, at } => {
            let h = match not_over(tx, job_id)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
            if h.active {
                tx.exec(
                    "UPDATE jobs SET migrate_requested = 1, updated_ms = ?2 WHERE id = ?1",
                    &[P::T(job_id), P::I(*at as i64)],
                )?;
            }
            Ok(Applied::Moved {
                state: h.state,
                running: h.active.then_some(h.epoch),
            })
        }
        Change::Pause { job_id, at } => {
            let h = match not_over(tx, job_id)? {
                Ok(h) => h,
                Err(answer) => return Ok(answer),
            };
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
                let started = tx
                    .row(
                        "SELECT started_ms FROM attempts WHERE job = ?1 AND epoch = ?2",
                        &[P::T(job_id), P::I(h.epoch as i64)],
                    )?
                    .map(|r| r[0].opt_i64())
                    .transpose()?
                    .flatten();
                let state = if started.is_some() {
                    JobState::Running
                } else {
                    JobState::Assigned
                };
                set_attempt(tx, job_id, h.epoch, state)?;
                state
            };
            if state == JobState::Queued {
                // Back in the queue: any control plane may take it.
                tx.exec(
                    "UPDATE jobs SET state = 'queued', updated_ms = ?2, holder = NULL WHERE id = ?1",
                    &[P::T(job_id), P::I(*at as i64)],
                )?;
            } else {
                set_job(tx, job_id, state, *at)?;
            }
            Ok(Applied::Moved {
                state,
                running: h.active.then_some(h.epoch),
            })
        }
        Change::Prune { before } => {
            let chunks = tx.exec(
                "DELETE FROM logs WHERE job IN (SELECT id FROM jobs WHERE updated_ms < ?1
                     AND state IN ('succeeded', 'failed', 'cancelled', 'timed_out'))",
                &[P::I(*before as i64)],
            )?;
            Ok(Applied::Pruned { chunks })
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
            tx.exec(
                "UPDATE jobs SET progress = ?2 WHERE id = ?1",
                &[P::T(job_id), P::T(&text)],
            )?;
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
            tx.exec(
                "INSERT INTO artifacts (job, name, epoch, size, blake3, stored_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (job, name) DO UPDATE SET epoch = excluded.epoch,
                 size = excluded.size, blake3 = excluded.blake3, stored_ms = excluded.stored_ms",
                &[
                    P::T(job_id),
                    P::T(name),
                    P::I(*epoch as i64),
                    P::I(*size as i64),
                    P::T(blake3),
                    P::I(*at as i64),
                ],
            )?;
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
            log(tx, job_id, &h, *first_seq, lines, terms.log_cap)
        }
    }
}

/// The backoff before a job's retry after `failures_before` failures, milliseconds: its
/// spec's `backoff_ms`, doubling per failure up to a minute (what the dispatcher waits).
fn retry_delay(tx: &mut dyn Tx, job_id: &str, failures_before: u32) -> Result<u64, StoreError> {
    let Some(r) = tx.row("SELECT spec FROM jobs WHERE id = ?1", &[P::T(job_id)])? else {
        return Ok(0);
    };
    let spec: crate::model::JobSpec = serde_json::from_str(&r[0].text()?)
        .map_err(|e| StoreError::Corrupt(format!("{job_id}: {e}")))?;
    let backoff = valkyrie_protocol::retry::ExponentialBackoff::new(
        std::time::Duration::from_millis(spec.backoff_ms),
        std::time::Duration::from_secs(60),
    );
    Ok(backoff.base_delay(failures_before).as_millis() as u64)
}

/// End, as lost, the attempts of up to `limit` jobs whose holder's lease ran out; those
/// queued again are free for anyone at once.
fn reap(tx: &mut dyn Tx, terms: &Terms, limit: usize, at: u64) -> Result<Applied, StoreError> {
    let mut jobs = Vec::new();
    for (job_id, epoch, holder) in holding::expired(tx, limit, at)? {
        let Some(h) = head(tx, &job_id)? else {
            continue;
        };
        if !h.active {
            // A paused job off its agent: nothing to end; anyone may resume it.
            holding::release(tx, &job_id)?;
            continue;
        }
        let reason = format!("its control plane {holder} stopped renewing the lease");
        let change = holding::lost(&job_id, epoch, &h, &reason, at);
        if let Applied::Ended { state } = apply(tx, &change, terms)? {
            if state == JobState::Queued {
                holding::release(tx, &job_id)?;
            }
            jobs.push((job_id, state));
        }
    }
    Ok(Applied::Reaped { jobs })
}

/// Store the lines of a batch the job does not have yet.
fn log(
    tx: &mut dyn Tx,
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
        tx.exec(
            "INSERT INTO logs (job, first_seq, last_seq, text) VALUES (?1, ?2, ?3, ?4)",
            &[
                P::T(job_id),
                P::I(from as i64),
                P::I(kept as i64),
                P::T(&text),
            ],
        )?;
    }
    tx.exec(
        "UPDATE jobs SET log_seq = ?2, log_bytes = ?3 WHERE id = ?1",
        &[P::T(job_id), P::I(last as i64), P::I(bytes as i64)],
    )?;
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
