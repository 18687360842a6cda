//! The embedded store: SQLite (bundled: no system library) in WAL mode with
//! `synchronous=FULL`, so that a committed transaction is on disk when `commit` returns — it
//! survives kill -9 of the process and a power cut. The schema is versioned (`user_version`)
//! and created or migrated when the store opens.

use std::path::Path;

use rusqlite::{Connection, OptionalExtension, params};

use crate::model::{Attempt, Job, JobSpec, JobState};
use crate::store::{Applied, Change, Store, StoreError};

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX jobs_queue ON jobs (state, priority DESC, created_ms, id);
CREATE TABLE attempts (
    job TEXT NOT NULL REFERENCES jobs (id),
    attempt INTEGER NOT NULL,
    agent TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    state TEXT NOT NULL,
    started_ms INTEGER,
    ended_ms INTEGER,
    exit_code INTEGER,
    signal INTEGER,
    reason TEXT,
    PRIMARY KEY (job, attempt)
);
";

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// The embedded store, in one file.
pub struct SqliteStore {
    conn: Connection,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl SqliteStore {
    /// Open (or create) the store in `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        match version {
            0 => {
                conn.execute_batch(SCHEMA).map_err(db)?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(db)?;
            }
            SCHEMA_VERSION => {}
            newer => {
                return Err(StoreError::Database(format!(
                    "{} has schema version {newer}; this build knows up to {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        Ok(SqliteStore { conn })
    }

    fn apply(tx: &rusqlite::Transaction<'_>, change: &Change) -> Result<Applied, StoreError> {
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
                    "INSERT INTO jobs (id, idempotency_key, spec, state, priority, created_ms, updated_ms)
                     VALUES (?1, ?2, ?3, 'queued', ?4, ?5, ?5)",
                )
                .map_err(db)?
                .execute(params![job_id, spec.idempotency_key, text, spec.priority, *at as i64])
                .map_err(db)?;
                Ok(Applied::Submitted {
                    job_id: job_id.clone(),
                    created: true,
                })
            }
            Change::Assign { job_id, agent, at } => {
                let Some((state, epoch, attempts)) = Self::head(tx, job_id)? else {
                    return Ok(Applied::NotFound);
                };
                if state != JobState::Queued {
                    return Ok(Applied::Refused { state });
                }
                let (epoch, attempt) = (epoch + 1, attempts + 1);
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
                Ok(Applied::Assigned { attempt, epoch })
            }
            Change::Start { job_id, epoch, at } => {
                let Some((state, current, _)) = Self::head(tx, job_id)? else {
                    return Ok(Applied::NotFound);
                };
                if *epoch != current {
                    return Ok(Applied::Stale { current });
                }
                match state {
                    JobState::Running => return Ok(Applied::Done),
                    JobState::Assigned => {}
                    other => return Ok(Applied::Refused { state: other }),
                }
                tx.prepare_cached(
                    "UPDATE jobs SET state = 'running', updated_ms = ?2 WHERE id = ?1",
                )
                .map_err(db)?
                .execute(params![job_id, *at as i64])
                .map_err(db)?;
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
                let Some((now, current, _)) = Self::head(tx, job_id)? else {
                    return Ok(Applied::NotFound);
                };
                if *epoch != current {
                    return Ok(Applied::Stale { current });
                }
                if now.is_final() || now == JobState::Queued {
                    return Ok(Applied::Refused { state: now });
                }
                // A retry ends the attempt as failed and queues the job again.
                let attempt_state = if *state == JobState::Queued {
                    JobState::Failed
                } else {
                    *state
                };
                let final_code = state.is_final().then_some(*exit_code).flatten();
                tx.prepare_cached(
                    "UPDATE jobs SET state = ?2, exit_code = ?3, updated_ms = ?4 WHERE id = ?1",
                )
                .map_err(db)?
                .execute(params![job_id, state.as_str(), final_code, *at as i64])
                .map_err(db)?;
                tx.prepare_cached(
                    "UPDATE attempts SET state = ?3, ended_ms = ?4, exit_code = ?5, signal = ?6, reason = ?7
                     WHERE job = ?1 AND epoch = ?2",
                )
                .map_err(db)?
                .execute(params![
                    job_id,
                    *epoch as i64,
                    attempt_state.as_str(),
                    *at as i64,
                    exit_code,
                    signal,
                    reason
                ])
                .map_err(db)?;
                Ok(Applied::Done)
            }
        }
    }

    /// A job's state, epoch and attempt count.
    fn head(
        tx: &rusqlite::Transaction<'_>,
        job_id: &str,
    ) -> Result<Option<(JobState, u64, u32)>, StoreError> {
        let row: Option<(String, i64, u32)> = tx
            .prepare_cached("SELECT state, epoch, attempts FROM jobs WHERE id = ?1")
            .map_err(db)?
            .query_row([job_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .optional()
            .map_err(db)?;
        row.map(|(state, epoch, attempts)| Ok((parse_state(&state)?, epoch as u64, attempts)))
            .transpose()
    }

    /// Read the jobs a query selects (columns: id, spec, state, epoch, exit_code,
    /// created_ms), each with its attempts.
    fn read_jobs(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<Job>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(db)?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<i32>>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(db)?;
        let mut jobs = Vec::new();
        for row in rows {
            let (job_id, spec, state, epoch, exit_code, created) = row.map_err(db)?;
            let spec: JobSpec = serde_json::from_str(&spec)
                .map_err(|e| StoreError::Corrupt(format!("{job_id}: {e}")))?;
            jobs.push(Job {
                attempts: self.attempts(&job_id)?,
                job_id,
                spec,
                state: parse_state(&state)?,
                epoch: epoch as u64,
                exit_code,
                created_at: created as u64,
            });
        }
        Ok(jobs)
    }

    fn attempts(&self, job_id: &str) -> Result<Vec<Attempt>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT attempt, agent, epoch, state, started_ms, ended_ms, exit_code, signal, reason
                 FROM attempts WHERE job = ?1 ORDER BY attempt",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, Option<i64>>(4)?,
                    r.get::<_, Option<i64>>(5)?,
                    r.get::<_, Option<i32>>(6)?,
                    r.get::<_, Option<i32>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                ))
            })
            .map_err(db)?;
        let mut out = Vec::new();
        for row in rows {
            let (attempt, agent, epoch, state, started, ended, exit_code, signal, reason) =
                row.map_err(db)?;
            out.push(Attempt {
                attempt,
                agent,
                epoch: epoch as u64,
                state: parse_state(&state)?,
                started_at: started.map(|t| t as u64),
                ended_at: ended.map(|t| t as u64),
                exit_code,
                signal,
                reason,
            });
        }
        Ok(out)
    }
}

fn parse_state(s: &str) -> Result<JobState, StoreError> {
    JobState::parse(s).ok_or_else(|| StoreError::Corrupt(format!("unknown state {s:?}")))
}

const JOB_COLUMNS: &str = "SELECT id, spec, state, epoch, exit_code, created_ms FROM jobs";

impl Store for SqliteStore {
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            out.push(Self::apply(&tx, change)?);
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn job(&mut self, job_id: &str) -> Result<Option<Job>, StoreError> {
        let sql = format!("{JOB_COLUMNS} WHERE id = ?1");
        Ok(self.read_jobs(&sql, &[&job_id])?.pop())
    }

    fn jobs(
        &mut self,
        state: Option<JobState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        let after = after.unwrap_or("");
        let limit = limit as i64;
        match state {
            Some(s) => {
                let sql =
                    format!("{JOB_COLUMNS} WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3");
                self.read_jobs(&sql, &[&s.as_str(), &after, &limit])
            }
            None => {
                let sql = format!("{JOB_COLUMNS} WHERE id > ?1 ORDER BY id LIMIT ?2");
                self.read_jobs(&sql, &[&after, &limit])
            }
        }
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "{JOB_COLUMNS} WHERE state = 'queued' ORDER BY priority DESC, created_ms, id LIMIT ?1"
        );
        self.read_jobs(&sql, &[&(limit as i64)])
    }
}
