//! A job's row as the rules read it ([`Head`], locked for the rest of the transaction on
//! PostgreSQL), and the checks every rule starts from: the job exists, the attempt is its
//! current one, the attempt is still on an agent, the job is not over.

use crate::model::JobState;
use crate::sql::{P, Tx};
use crate::store::{Applied, StoreError};

pub(crate) fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown state {s:?}")))
}

/// A job's row, as the rules need it.
pub(crate) struct Head {
    pub(crate) state: JobState,
    pub(crate) epoch: u64,
    pub(crate) attempts: u32,
    pub(crate) failures: u32,
    pub(crate) max_attempts: u32,
    pub(crate) cancel_requested: bool,
    pub(crate) migrate_requested: bool,
    pub(crate) log_seq: u64,
    pub(crate) log_bytes: u64,
    /// Whether the attempt of `epoch` is still on an agent (not ended).
    pub(crate) active: bool,
    /// The control plane that holds the job, and until when (Unix milliseconds).
    pub(crate) holder: Option<String>,
    pub(crate) lease_ms: u64,
    /// Whether the attempt of `epoch` has started.
    pub(crate) started: bool,
}

/// The job's row, locked until the transaction ends (on PostgreSQL: two control planes
/// changing one job take turns).
pub(crate) fn head(tx: &mut dyn Tx, job_id: &str) -> Result<Option<Head>, StoreError> {
    // Lock the row first (PostgreSQL; SQLite holds the whole database), then read it and its
    // attempt in a statement of its own: a read that waited for the lock inside one
    // statement would see the job's new row but the attempt as it was before the wait.
    if tx
        .row(
            "SELECT id FROM jobs WHERE id = ?1 FOR UPDATE",
            &[P::T(job_id)],
        )?
        .is_none()
    {
        return Ok(None);
    }
    let Some(r) = tx.row(
        "SELECT j.state, j.epoch, j.attempts, j.failures, j.max_attempts, j.cancel_requested,
                j.log_seq, j.log_bytes,
                (SELECT a.ended_ms IS NULL FROM attempts a WHERE a.job = j.id AND a.epoch = j.epoch),
                j.migrate_requested, j.holder, j.lease_ms,
                (SELECT a.started_ms IS NOT NULL FROM attempts a WHERE a.job = j.id AND a.epoch = j.epoch)
         FROM jobs j WHERE j.id = ?1",
        &[P::T(job_id)],
    )?
    else {
        return Ok(None);
    };
    Ok(Some(Head {
        state: parse_state(&r[0].text()?)?,
        epoch: r[1].i64()? as u64,
        attempts: r[2].i64()? as u32,
        failures: r[3].i64()? as u32,
        max_attempts: (r[4].i64()? as u32).max(1),
        cancel_requested: r[5].flag(),
        log_seq: r[6].i64()? as u64,
        log_bytes: r[7].i64()? as u64,
        active: r[8].flag(),
        migrate_requested: r[9].flag(),
        holder: r[10].opt_text()?,
        lease_ms: r[11].i64()? as u64,
        started: r[12].flag(),
    }))
}

/// The job's row when `epoch` is its current attempt's; else the answer (no such job, or
/// a stale attempt).
pub(crate) fn at_epoch(
    tx: &mut dyn Tx,
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

/// The job's row when `epoch` is its current attempt's and that attempt is still on an
/// agent; else the answer (no such job, a stale attempt, or refused: over, or ended).
pub(crate) fn live_attempt(
    tx: &mut dyn Tx,
    job_id: &str,
    epoch: u64,
) -> Result<Result<Head, Applied>, StoreError> {
    Ok(at_epoch(tx, job_id, epoch)?.and_then(|h| {
        if h.state.is_final() || !h.active {
            Err(Applied::Refused { state: h.state })
        } else {
            Ok(h)
        }
    }))
}

/// The job's row when it is not over; else the answer (no such job, or refused).
pub(crate) fn not_over(tx: &mut dyn Tx, job_id: &str) -> Result<Result<Head, Applied>, StoreError> {
    let Some(h) = head(tx, job_id)? else {
        return Ok(Err(Applied::NotFound));
    };
    if h.state.is_final() {
        return Ok(Err(Applied::Refused { state: h.state }));
    }
    Ok(Ok(h))
}
