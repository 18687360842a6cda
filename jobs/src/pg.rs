//! The PostgreSQL store: the same rules and reads as the embedded store (one SQL text for both,
//! `crate::sql`), on a database several control planes can share (issue 19 builds the sharing:
//! claims with `FOR UPDATE SKIP LOCKED`, leases in columns, `LISTEN/NOTIFY`). Its schema is
//! versioned in `valkyrie_schema` and migrated when it connects. The client is synchronous and
//! lives on the store's thread (the [`crate::Committer`]), never on a shard.

use postgres::{Client, NoTls};

use crate::model::{Job, JobState};
use crate::reads;
use crate::sql::{Pg, PgStatements};
use crate::sqlite::DEFAULT_LOG_CAP;
use crate::store::{Applied, Artifact, Change, LogPage, Store, StoreError};

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 1] = ["
CREATE TABLE jobs (
    id TEXT COLLATE \"C\" PRIMARY KEY,
    idempotency_key TEXT UNIQUE,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    priority BIGINT NOT NULL,
    epoch BIGINT NOT NULL DEFAULT 0,
    attempts BIGINT NOT NULL DEFAULT 0,
    exit_code BIGINT,
    created_ms BIGINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    max_attempts BIGINT NOT NULL DEFAULT 1,
    failures BIGINT NOT NULL DEFAULT 0,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    log_seq BIGINT NOT NULL DEFAULT 0,
    log_bytes BIGINT NOT NULL DEFAULT 0,
    migrate_requested BIGINT NOT NULL DEFAULT 0,
    progress TEXT
);
CREATE INDEX jobs_queue ON jobs (state, priority DESC, created_ms, id);
CREATE TABLE attempts (
    job TEXT COLLATE \"C\" NOT NULL REFERENCES jobs (id),
    attempt BIGINT NOT NULL,
    agent TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    state TEXT NOT NULL,
    started_ms BIGINT,
    ended_ms BIGINT,
    exit_code BIGINT,
    signal BIGINT,
    reason TEXT,
    PRIMARY KEY (job, attempt)
);
CREATE TABLE logs (
    job TEXT COLLATE \"C\" NOT NULL REFERENCES jobs (id),
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    text TEXT NOT NULL,
    PRIMARY KEY (job, first_seq)
);
CREATE TABLE artifacts (
    job TEXT COLLATE \"C\" NOT NULL REFERENCES jobs (id),
    name TEXT NOT NULL,
    epoch BIGINT NOT NULL,
    size BIGINT NOT NULL,
    blake3 TEXT NOT NULL,
    stored_ms BIGINT NOT NULL,
    PRIMARY KEY (job, name)
);
"];

fn db(e: postgres::Error) -> StoreError {
    StoreError::Database(match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => e.to_string(),
    })
}

/// A store in a PostgreSQL database.
pub struct PgStore {
    client: Client,
    statements: PgStatements,
    log_cap: u64,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Connect to `url` (`postgres://USER@HOST:PORT/DB`) and bring its schema up to date
    /// (each migration in a transaction of its own, under an advisory lock so that control
    /// planes starting together migrate once).
    pub fn connect(url: &str) -> Result<PgStore, StoreError> {
        let mut client = Client::connect(url, NoTls).map_err(db)?;
        let mut tx = client.transaction().map_err(db)?;
        tx.execute("SELECT pg_advisory_xact_lock(7420)", &[])
            .map_err(db)?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS valkyrie_schema (version BIGINT NOT NULL)")
            .map_err(db)?;
        let version: i64 = match tx
            .query_opt("SELECT version FROM valkyrie_schema", &[])
            .map_err(db)?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO valkyrie_schema (version) VALUES (0)", &[])
                    .map_err(db)?;
                0
            }
        };
        let known = MIGRATIONS.len() as i64;
        if version > known {
            return Err(StoreError::Database(format!(
                "the database has schema version {version}; this build knows up to {known}"
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).map_err(db)?;
            tx.execute(
                "UPDATE valkyrie_schema SET version = $1",
                &[&(i as i64 + 1)],
            )
            .map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(PgStore {
            client,
            statements: PgStatements::new(),
            log_cap: DEFAULT_LOG_CAP,
        })
    }

    /// The client with its prepared statements.
    fn on(&mut self) -> Pg<'_, Client> {
        Pg {
            client: &mut self.client,
            statements: &mut self.statements,
        }
    }

    /// Keep at most `bytes` of each job's output (as [`crate::SqliteStore::with_log_cap`]).
    pub fn with_log_cap(mut self, bytes: u64) -> PgStore {
        self.log_cap = bytes;
        self
    }
}

impl Store for PgStore {
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let mut tx = self.client.transaction().map_err(db)?;
        let mut out = Vec::with_capacity(changes.len());
        {
            let mut on = Pg {
                client: &mut tx,
                statements: &mut self.statements,
            };
            for change in changes {
                out.push(crate::rules::apply(&mut on, change, self.log_cap)?);
            }
        }
        tx.commit().map_err(db)?;
        Ok(out)
    }

    fn job(&mut self, job_id: &str) -> Result<Option<Job>, StoreError> {
        reads::job(&mut self.on(), job_id)
    }

    fn jobs(
        &mut self,
        state: Option<JobState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        reads::jobs(&mut self.on(), state, limit, after)
    }

    fn logs(&mut self, job_id: &str, from: u64, max_bytes: usize) -> Result<LogPage, StoreError> {
        reads::logs(&mut self.on(), job_id, from, max_bytes)
    }

    fn artifacts(&mut self, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        reads::artifacts(&mut self.on(), job_id)
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError> {
        reads::queued(&mut self.on(), limit)
    }
}
