//! The embedded store: SQLite (bundled: no system library) in WAL mode with
//! `synchronous=FULL`, so that a committed transaction is on disk when `commit` returns — it
//! survives kill -9 of the process and a power cut. The schema is versioned (`user_version`):
//! a new file gets every migration in order, an older one the migrations it lacks, when the
//! store opens. How each change is applied is in `apply`.

use std::path::Path;

use rusqlite::{Connection, params};

use crate::model::{Attempt, Job, JobSpec, JobState};
use crate::store::{Applied, Artifact, Change, LogPage, Store, StoreError};

mod apply;

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 5] = [
    "
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
",
    // Retries counted apart from attempts (a rejected attempt is not a failure), cancels
    // that wait for a running attempt, and the jobs' output.
    "
ALTER TABLE jobs ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE jobs ADD COLUMN failures INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN cancel_requested INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN log_bytes INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET max_attempts = coalesce(json_extract(spec, '$.max_attempts'), 1);
CREATE TABLE logs (
    job TEXT NOT NULL REFERENCES jobs (id),
    first_seq INTEGER NOT NULL,
    last_seq INTEGER NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (job, first_seq)
) WITHOUT ROWID;
",
    // Migrations of running jobs, ended and queued again without counting a failure.
    "
ALTER TABLE jobs ADD COLUMN migrate_requested INTEGER NOT NULL DEFAULT 0;
",
    // Artifacts uploaded by the attempts of jobs (the files beside the database).
    "
CREATE TABLE artifacts (
    job TEXT NOT NULL REFERENCES jobs (id),
    name TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    size INTEGER NOT NULL,
    blake3 TEXT NOT NULL,
    stored_ms INTEGER NOT NULL,
    PRIMARY KEY (job, name)
) WITHOUT ROWID;
",
    // The latest progress an attempt reported (JSON).
    "
ALTER TABLE jobs ADD COLUMN progress TEXT;
",
];

/// Log bytes kept per job unless told otherwise ([`SqliteStore::with_log_cap`]).
pub const DEFAULT_LOG_CAP: u64 = 64 * 1024 * 1024;

fn db(e: rusqlite::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

/// The embedded store, in one file.
pub struct SqliteStore {
    conn: Connection,
    log_cap: u64,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.conn.path())
            .finish()
    }
}

impl SqliteStore {
    /// Open (or create) the store in `path`, migrating an older schema.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let mut conn = Connection::open(path).map_err(db)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db)?;
        conn.pragma_update(None, "foreign_keys", "ON").map_err(db)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(db)?;
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Database(format!(
                "{} has schema version {version}; this build knows up to {known}",
                path.display()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            // Each migration and its version number in one transaction.
            let tx = conn.transaction().map_err(db)?;
            tx.execute_batch(sql).map_err(db)?;
            tx.pragma_update(None, "user_version", i as i64 + 1)
                .map_err(db)?;
            tx.commit().map_err(db)?;
        }
        Ok(SqliteStore {
            conn,
            log_cap: DEFAULT_LOG_CAP,
        })
    }

    /// Keep at most `bytes` of each job's output: lines past it are acknowledged but not
    /// kept, and one line says so.
    pub fn with_log_cap(mut self, bytes: u64) -> SqliteStore {
        self.log_cap = bytes;
        self
    }

    /// Read the jobs a query selects (columns: id, spec, state, epoch, exit_code,
    /// created_ms, progress), each with its attempts.
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
                    r.get::<_, Option<String>>(6)?,
                ))
            })
            .map_err(db)?;
        let mut jobs = Vec::new();
        for row in rows {
            let (job_id, spec, state, epoch, exit_code, created, progress) = row.map_err(db)?;
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
                progress: progress.and_then(|p| serde_json::from_str(&p).ok()),
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

const JOB_COLUMNS: &str =
    "SELECT id, spec, state, epoch, exit_code, created_ms, progress FROM jobs";

impl Store for SqliteStore {
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let tx = self.conn.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            out.push(apply::apply(&tx, change, self.log_cap)?);
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

    fn logs(&mut self, job_id: &str, from: u64, max_bytes: usize) -> Result<LogPage, StoreError> {
        let from = from.max(1);
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT first_seq, last_seq, text FROM logs WHERE job = ?1 AND last_seq >= ?2
                 ORDER BY first_seq",
            )
            .map_err(db)?;
        let mut rows = stmt.query(params![job_id, from as i64]).map_err(db)?;
        let mut page = LogPage {
            ndjson: String::new(),
            next: from,
        };
        while let Some(row) = rows.next().map_err(db)? {
            if page.ndjson.len() >= max_bytes {
                break;
            }
            let (first, last, text): (i64, i64, String) = (
                row.get(0).map_err(db)?,
                row.get(1).map_err(db)?,
                row.get(2).map_err(db)?,
            );
            let (first, last) = (first as u64, last as u64);
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

    fn artifacts(&mut self, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT name, epoch, size, blake3 FROM artifacts WHERE job = ?1 ORDER BY name",
            )
            .map_err(db)?;
        let rows = stmt
            .query_map([job_id], |r| {
                Ok(Artifact {
                    name: r.get(0)?,
                    epoch: r.get::<_, i64>(1)? as u64,
                    size: r.get::<_, i64>(2)? as u64,
                    blake3: r.get(3)?,
                })
            })
            .map_err(db)?;
        rows.collect::<Result<_, _>>().map_err(db)
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let sql = format!(
            "{JOB_COLUMNS} WHERE state = 'queued' ORDER BY priority DESC, created_ms, id LIMIT ?1"
        );
        self.read_jobs(&sql, &[&(limit as i64)])
    }
}
