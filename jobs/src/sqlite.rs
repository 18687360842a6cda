//! The embedded store: SQLite (bundled: no system library) in WAL mode with
//! `synchronous=FULL`, so that a committed transaction is on disk when `commit` returns — it
//! survives kill -9 of the process and a power cut. The schema is versioned (`user_version`):
//! a new file gets every migration in order, an older one the migrations it lacks, when the
//! store opens. How each change is applied is in `apply`.

use std::path::Path;

use rusqlite::Connection;

use crate::holding::Terms;
use crate::model::{Job, JobState};
use crate::reads;
use crate::store::{Applied, Artifact, Change, LogPage, Store, StoreError};

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 7] = [
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
    // Who holds a job, until when, and the agent of its current attempt (`crate::holding`).
    "
ALTER TABLE jobs ADD COLUMN holder TEXT;
ALTER TABLE jobs ADD COLUMN lease_ms INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN agent TEXT;
CREATE INDEX jobs_leases ON jobs (lease_ms) WHERE holder IS NOT NULL;
",
    // A retried job's backoff (claims wait it out).
    "
ALTER TABLE jobs ADD COLUMN not_before_ms INTEGER NOT NULL DEFAULT 0;
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
    terms: Terms,
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
            terms: Terms {
                node: "control-plane".into(),
                lease_ms: 3000,
                log_cap: DEFAULT_LOG_CAP,
                exclusive: true,
            },
        })
    }

    /// Keep at most `bytes` of each job's output: lines past it are acknowledged but not
    /// kept, and one line says so.
    pub fn with_log_cap(mut self, bytes: u64) -> SqliteStore {
        self.terms.log_cap = bytes;
        self
    }

    /// Hold jobs as control plane `node`, for `lease` at a time (default `control-plane`,
    /// 3 s). One control plane owns an SQLite store; the holds still say which attempt it
    /// runs.
    pub fn with_holder(mut self, node: &str, lease: std::time::Duration) -> SqliteStore {
        self.terms.node = node.to_owned();
        self.terms.lease_ms = lease.as_millis() as u64;
        self
    }
}

impl Store for SqliteStore {
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.conn.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            out.push(crate::rules::apply(&mut tx, change, &self.terms)?);
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn job(&mut self, job_id: &str) -> Result<Option<Job>, StoreError> {
        reads::job(&mut self.conn, job_id)
    }

    fn jobs(
        &mut self,
        state: Option<JobState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        reads::jobs(&mut self.conn, state, limit, after)
    }

    fn logs(&mut self, job_id: &str, from: u64, max_bytes: usize) -> Result<LogPage, StoreError> {
        reads::logs(&mut self.conn, job_id, from, max_bytes)
    }

    fn artifacts(&mut self, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        reads::artifacts(&mut self.conn, job_id)
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError> {
        reads::queued(&mut self.conn, limit)
    }

    fn holds(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        reads::holds(&mut self.conn, &self.terms.node)
    }

    fn held(&mut self) -> Result<Vec<Job>, StoreError> {
        // One control plane owns the file: every job on an agent is its own.
        reads::held(&mut self.conn, None)
    }
}
