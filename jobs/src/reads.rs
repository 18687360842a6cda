//! What a store reads back — jobs with their attempts, a job's output, its artifacts, the
//! queue — in the SQL both stores share ([`crate::sql`]).

use crate::model::{Attempt, Job, JobSpec, JobState};
use crate::row::parse_state;
use crate::sql::{P, Tx, V};
use crate::store::{Artifact, LogPage, StoreError};

/// A job's columns, in the order [`job_of_row`] reads them (a macro, so that the statements
/// below are made of the one list at compile time).
macro_rules! columns {
    () => {
        "id, spec, state, epoch, exit_code, created_ms, progress"
    };
}

/// A job's columns, in the order [`job_of_row`] reads them.
pub(crate) const COLUMNS: &str = columns!();

const JOB_COLUMNS: &str = concat!("SELECT ", columns!(), " FROM jobs");

/// Log chunks one read looks at, at most (each holds up to 1,024 lines).
const CHUNKS: i64 = 256;

/// The jobs a query selects (the columns of `JOB_COLUMNS`), each with its attempts.
fn read_jobs(tx: &mut dyn Tx, sql: &str, params: &[P<'_>]) -> Result<Vec<Job>, StoreError> {
    let rows = tx.rows(sql, params)?;
    let mut jobs = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut job = job_of_row(r)?;
        job.attempts = attempts(tx, &job.job_id)?;
        jobs.push(job);
    }
    Ok(jobs)
}

/// A job from a row of [`COLUMNS`], without its attempts.
pub(crate) fn job_of_row(r: &[V]) -> Result<Job, StoreError> {
    let job_id = r[0].text()?;
    let spec: JobSpec = serde_json::from_str(&r[1].text()?)
        .map_err(|e| StoreError::Corrupt(format!("{job_id}: {e}")))?;
    Ok(Job {
        attempts: Vec::new(),
        spec,
        state: parse_state(&r[2].text()?)?,
        epoch: r[3].i64()? as u64,
        exit_code: r[4].opt_i64()?.map(|c| c as i32),
        created_at: r[5].i64()? as u64,
        progress: r[6].opt_text()?.and_then(|p| serde_json::from_str(&p).ok()),
        job_id,
    })
}

fn attempts(tx: &mut dyn Tx, job_id: &str) -> Result<Vec<Attempt>, StoreError> {
    let rows = tx.rows(
        "SELECT attempt, agent, epoch, state, started_ms, ended_ms, exit_code, signal, reason
         FROM attempts WHERE job = ?1 ORDER BY attempt",
        &[P::T(job_id)],
    )?;
    let opt_u64 = |v: &V| v.opt_i64().map(|o| o.map(|t| t as u64));
    let opt_i32 = |v: &V| v.opt_i64().map(|o| o.map(|t| t as i32));
    rows.iter()
        .map(|r| {
            Ok(Attempt {
                attempt: r[0].i64()? as u32,
                agent: r[1].text()?,
                epoch: r[2].i64()? as u64,
                state: parse_state(&r[3].text()?)?,
                started_at: opt_u64(&r[4])?,
                ended_at: opt_u64(&r[5])?,
                exit_code: opt_i32(&r[6])?,
                signal: opt_i32(&r[7])?,
                reason: r[8].opt_text()?,
            })
        })
        .collect()
}

pub(crate) fn job(tx: &mut dyn Tx, job_id: &str) -> Result<Option<Job>, StoreError> {
    let sql = format!("{JOB_COLUMNS} WHERE id = ?1");
    Ok(read_jobs(tx, &sql, &[P::T(job_id)])?.pop())
}

pub(crate) fn jobs(
    tx: &mut dyn Tx,
    state: Option<JobState>,
    limit: usize,
    after: Option<&str>,
) -> Result<Vec<Job>, StoreError> {
    let after = after.unwrap_or("");
    let limit = limit as i64;
    match state {
        Some(s) => {
            let sql = format!("{JOB_COLUMNS} WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3");
            read_jobs(tx, &sql, &[P::T(s.as_str()), P::T(after), P::I(limit)])
        }
        None => {
            let sql = format!("{JOB_COLUMNS} WHERE id > ?1 ORDER BY id LIMIT ?2");
            read_jobs(tx, &sql, &[P::T(after), P::I(limit)])
        }
    }
}

pub(crate) fn logs(
    tx: &mut dyn Tx,
    job_id: &str,
    from: u64,
    max_bytes: usize,
) -> Result<LogPage, StoreError> {
    let from = from.max(1);
    let rows = tx.rows(
        "SELECT first_seq, last_seq, text FROM logs WHERE job = ?1 AND last_seq >= ?2
         ORDER BY first_seq LIMIT ?3",
        &[P::T(job_id), P::I(from as i64), P::I(CHUNKS)],
    )?;
    let mut page = LogPage {
        ndjson: String::new(),
        next: from,
    };
    for r in rows {
        if page.ndjson.len() >= max_bytes {
            break;
        }
        let (first, last, text) = (r[0].i64()? as u64, r[1].i64()? as u64, r[2].text()?);
        // A chunk's lines are numbered first..=last, one per line of its text.
        let skip = from.saturating_sub(first) as usize;
        let mut rest = text.as_str();
        for _ in 0..skip {
            rest = rest.split_once('\n').map_or("", |(_, r)| r);
        }
        page.ndjson.push_str(rest);
        page.next = last + 1;
    }
    Ok(page)
}

pub(crate) fn artifacts(tx: &mut dyn Tx, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
    tx.rows(
        "SELECT name, epoch, size, blake3 FROM artifacts WHERE job = ?1 ORDER BY name",
        &[P::T(job_id)],
    )?
    .iter()
    .map(|r| {
        Ok(Artifact {
            name: r[0].text()?,
            epoch: r[1].i64()? as u64,
            size: r[2].i64()? as u64,
            blake3: r[3].text()?,
        })
    })
    .collect()
}

pub(crate) fn queued(tx: &mut dyn Tx, limit: usize) -> Result<Vec<Job>, StoreError> {
    let sql = format!(
        "{JOB_COLUMNS} WHERE state = 'queued' ORDER BY priority DESC, created_ms, id LIMIT ?1"
    );
    read_jobs(tx, &sql, &[P::I(limit as i64)])
}

/// The jobs with an attempt on an agent, held by `node` or by nobody (every one such when
/// `node` is none), in id order.
pub(crate) fn held(tx: &mut dyn Tx, node: Option<&str>) -> Result<Vec<Job>, StoreError> {
    const ACTIVE: &str = "state IN ('assigned', 'running', 'paused')";
    match node {
        Some(node) => {
            let sql = format!(
                "{JOB_COLUMNS} WHERE {ACTIVE} AND (holder IS NULL OR holder = ?1) ORDER BY id"
            );
            read_jobs(tx, &sql, &[P::T(node)])
        }
        None => read_jobs(
            tx,
            &format!("{JOB_COLUMNS} WHERE {ACTIVE} ORDER BY id"),
            &[],
        ),
    }
}

/// The ids and epochs of the jobs with an attempt on an agent that `node` holds.
pub(crate) fn holds(tx: &mut dyn Tx, node: &str) -> Result<Vec<(String, u64)>, StoreError> {
    tx.rows(
        "SELECT id, epoch FROM jobs WHERE holder = ?1 AND state IN ('assigned', 'running', 'paused')",
        &[P::T(node)],
    )?
    .iter()
    .map(|r| Ok((r[0].text()?, r[1].i64()? as u64)))
    .collect()
}
