//! Who holds a job, so that several control planes can share one store: a control plane
//! *claims* queued jobs (`FOR UPDATE SKIP LOCKED`: two never take the same ones, nor wait for
//! each other) and holds each job it assigns under a *lease* it renews while it hears the
//! agent; a job whose holder stopped renewing is *reaped* by any control plane (its attempt
//! ended as lost, the job queued again); an agent that fails over to another control plane
//! has its attempt *adopted* there. The attempt's epoch fences everyone else: a holder that
//! lost the job can no longer end it, and its agent's reports are refused.
//!
//! Leases are Unix milliseconds of the control planes' clocks, which must agree to well
//! within a lease (NTP).

use crate::model::JobState;
use crate::reads;
use crate::row::{Head, live_attempt};
use crate::sql::{P, Tx};
use crate::store::{Applied, Change, StoreError};

/// What a store applies changes as: the control plane it holds jobs for, how long its
/// holds last unrenewed, and how much of a job's output it keeps.
#[derive(Debug, Clone)]
pub(crate) struct Terms {
    /// The control plane's node id.
    pub(crate) node: String,
    /// A hold's length, milliseconds.
    pub(crate) lease_ms: u64,
    /// Output bytes kept per job.
    pub(crate) log_cap: u64,
    /// The store is this control plane's alone (SQLite): whoever a job's hold names — an
    /// earlier `--node-id` of this same control plane — it is this one's.
    pub(crate) exclusive: bool,
}

impl Terms {
    /// A hold taken or renewed `at` lasts until then.
    pub(crate) fn until(&self, at: u64) -> i64 {
        at.saturating_add(self.lease_ms) as i64
    }

    /// Who holds a job whose attempt ended leaving it in `state`: nobody once it is over;
    /// else the control plane that ended the attempt, for a lease (it queues the job again
    /// after the retry's backoff; gone, any other claims the job when the lease runs out).
    pub(crate) fn after(&self, state: JobState, at: u64) -> (Option<&str>, i64) {
        if state.is_final() {
            (None, 0)
        } else {
            (Some(self.node.as_str()), self.until(at))
        }
    }
}

/// Whether `terms`' control plane may take the job: nobody holds it, it holds it, or the
/// holder's lease ran out.
pub(crate) fn free_for(h: &Head, terms: &Terms, at: u64) -> bool {
    match &h.holder {
        None => true,
        Some(node) => terms.exclusive || *node == terms.node || h.lease_ms < at,
    }
}

/// Claim up to `limit` queued jobs nobody holds (or whose holder's lease ran out) and that
/// are not waiting out a retry's backoff, first by priority then age, for a lease: the jobs
/// (in one statement, without their attempts).
pub(crate) fn claim(
    tx: &mut dyn Tx,
    terms: &Terms,
    limit: usize,
    at: u64,
) -> Result<Applied, StoreError> {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let sql = SQL.get_or_init(|| {
        format!(
            "UPDATE jobs SET holder = ?1, lease_ms = ?2 WHERE id IN (
                 SELECT id FROM jobs WHERE state = 'queued' AND (holder IS NULL OR lease_ms < ?3)
                     AND not_before_ms <= ?3
                 ORDER BY priority DESC, created_ms, id LIMIT ?4 FOR UPDATE SKIP LOCKED)
             RETURNING {}",
            reads::COLUMNS
        )
    });
    let rows = tx.rows(
        sql,
        &[
            P::T(&terms.node),
            P::I(terms.until(at)),
            P::I(at as i64),
            P::I(limit as i64),
        ],
    )?;
    let mut jobs = rows
        .iter()
        .map(|r| reads::job_of_row(r))
        .collect::<Result<Vec<_>, _>>()?;
    jobs.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then(a.created_at.cmp(&b.created_at))
            .then_with(|| a.job_id.cmp(&b.job_id))
    });
    Ok(Applied::Claimed { jobs })
}

/// Renew the leases of the jobs this control plane holds on agents.
pub(crate) fn renew(tx: &mut dyn Tx, terms: &Terms, at: u64) -> Result<Applied, StoreError> {
    // Rows another transaction holds right now are passed over (renewed at the next tick):
    // waiting for them could deadlock with a batch that locks them in another order.
    let jobs = tx.exec(
        "UPDATE jobs SET lease_ms = ?2 WHERE id IN (
             SELECT id FROM jobs WHERE holder = ?1 AND state IN ('assigned', 'running', 'paused')
             FOR UPDATE SKIP LOCKED)",
        &[P::T(&terms.node), P::I(terms.until(at))],
    )?;
    Ok(Applied::Renewed { jobs })
}

/// The jobs on agents whose holder's lease ran out before `at` (up to `limit`, the longest
/// expired first, passing over rows another transaction holds): id, epoch, holder.
pub(crate) fn expired(
    tx: &mut dyn Tx,
    limit: usize,
    at: u64,
) -> Result<Vec<(String, u64, String)>, StoreError> {
    tx.rows(
        "SELECT id, epoch, holder FROM jobs
         WHERE holder IS NOT NULL AND lease_ms < ?1 AND state IN ('assigned', 'running', 'paused')
         ORDER BY lease_ms LIMIT ?2 FOR UPDATE SKIP LOCKED",
        &[P::I(at as i64), P::I(limit as i64)],
    )?
    .iter()
    .map(|r| Ok((r[0].text()?, r[1].i64()? as u64, r[2].text()?)))
    .collect()
}

/// Nobody holds the job any more: any control plane may take it.
pub(crate) fn release(tx: &mut dyn Tx, job_id: &str) -> Result<(), StoreError> {
    tx.exec(
        "UPDATE jobs SET holder = NULL WHERE id = ?1",
        &[P::T(job_id)],
    )?;
    Ok(())
}

/// An agent that runs the attempt of `epoch` now speaks to this control plane (it failed
/// over): the job is held here, under a new lease. Refused unless the attempt is live and
/// the agent's.
pub(crate) fn adopt(
    tx: &mut dyn Tx,
    terms: &Terms,
    job_id: &str,
    epoch: u64,
    agent: &str,
    at: u64,
) -> Result<Applied, StoreError> {
    let h = match live_attempt(tx, job_id, epoch)? {
        Ok(h) => h,
        Err(answer) => return Ok(answer),
    };
    let runs_it = tx
        .row(
            "SELECT agent FROM attempts WHERE job = ?1 AND epoch = ?2",
            &[P::T(job_id), P::I(epoch as i64)],
        )?
        .map(|r| r[0].text())
        .transpose()?;
    if runs_it.as_deref() != Some(agent) {
        return Ok(Applied::Refused { state: h.state });
    }
    tx.exec(
        "UPDATE jobs SET holder = ?2, lease_ms = ?3, agent = ?4 WHERE id = ?1",
        &[
            P::T(job_id),
            P::T(&terms.node),
            P::I(terms.until(at)),
            P::T(agent),
        ],
    )?;
    match reads::job(tx, job_id)? {
        Some(job) => Ok(Applied::Adopted { job: Box::new(job) }),
        None => Ok(Applied::NotFound),
    }
}

/// This control plane lost the agent of the attempt of `epoch`: the job's row when the
/// attempt may be ended as lost here — live, and not held by another control plane now (the
/// agent failed over to it) — else the answer.
pub(crate) fn losable(
    tx: &mut dyn Tx,
    terms: &Terms,
    job_id: &str,
    epoch: u64,
) -> Result<Result<Head, Applied>, StoreError> {
    Ok(live_attempt(tx, job_id, epoch)?.and_then(|h| {
        if !terms.exclusive && h.holder.as_deref().is_some_and(|n| n != terms.node) {
            Err(Applied::Refused { state: h.state })
        } else {
            Ok(h)
        }
    }))
}

/// How a lost attempt ends: a failure when it had started (retried while attempts are
/// left), a plain requeue when it had not.
pub(crate) fn lost(job_id: &str, epoch: u64, h: &Head, reason: &str, at: u64) -> Change {
    if h.started {
        Change::End {
            job_id: job_id.to_owned(),
            epoch,
            state: JobState::Queued,
            exit_code: None,
            signal: None,
            reason: Some(reason.to_owned()),
            at,
        }
    } else {
        Change::Requeue {
            job_id: job_id.to_owned(),
            epoch,
            reason: format!("{reason} before it started"),
            at,
        }
    }
}
