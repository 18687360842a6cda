//! The PostgreSQL store: the same rules and reads as the embedded store (one SQL text for both,
//! `crate::sql`), on a database several control planes share — each claims jobs with
//! `FOR UPDATE SKIP LOCKED`, holds them under leases it renews, and reaps the ones whose
//! holder went quiet (`crate::holding`); a committed batch tells the others what it queued
//! or signalled ([`crate::notice`]). Its schema is versioned in `valkyrie_schema` and
//! migrated when it connects. The client is synchronous and lives on the store's thread (the
//! [`crate::Committer`]), never on a shard; a broken connection is made again on the next
//! use, and a transaction that lost a race with another node's runs again.

use std::time::{Duration, Instant};

use postgres::{Client, Config};

use crate::holding::Terms;
use crate::model::{Job, JobState};
use crate::notice::{self, CHANNEL};
use crate::pg_client::{NET_TIMEOUT, connect};
use crate::reads;
use crate::sql::{P, Pg, PgStatements, Tx};
use crate::sqlite::DEFAULT_LOG_CAP;
use crate::store::{Applied, Artifact, Change, FILE_PIECE, LogPage, Store, StoreError};

/// How often a transaction that lost a race runs again before its error is given back.
const CONFLICT_TRIES: usize = 5;

/// The migrations, in order: migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: [&str; 4] = ["
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
",
    // Who holds a job, until when, and the agent of its current attempt (`crate::holding`).
    "
ALTER TABLE jobs ADD COLUMN holder TEXT COLLATE \"C\", ADD COLUMN lease_ms BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN agent TEXT;
CREATE INDEX jobs_leases ON jobs (lease_ms) WHERE holder IS NOT NULL;
",
    // Artifacts' bytes, in pieces of `FILE_PIECE`: any control plane serves them.
    "
CREATE TABLE artifact_pieces (
    job TEXT COLLATE \"C\" NOT NULL REFERENCES jobs (id),
    name TEXT NOT NULL,
    seq BIGINT NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (job, name, seq)
);
",
    // A retried job's backoff, kept by every control plane that claims it.
    "
ALTER TABLE jobs ADD COLUMN not_before_ms BIGINT NOT NULL DEFAULT 0;
"];

use crate::sql::pg as db;

/// Lock `node` to the session of `client` (see [`PgStore::lock_node`]).
fn take_node_lock(client: &mut Client, node: &str) -> Result<(), StoreError> {
    let key = format!("valkyrie-node:{node}");
    let got: bool = client
        .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&key])
        .map_err(db)?
        .get(0);
    if got {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "another control plane runs as node {node:?} on this database: give each its own --node-id"
        )))
    }
}

/// A store in a PostgreSQL database.
pub struct PgStore {
    config: Config,
    /// None while the connection is broken (made again on the next use).
    client: Option<Client>,
    statements: PgStatements,
    terms: Terms,
    /// When the connection was last tried, failing.
    failed_at: Option<Instant>,
    /// The node id is locked to this store's connection ([`PgStore::lock_node`]).
    node_locked: bool,
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
        let config: Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("{url}: {e}")))?;
        let mut client = connect(&config).map_err(db)?;
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
            config,
            client: Some(client),
            statements: PgStatements::new(),
            terms: Terms {
                node: "control-plane".into(),
                lease_ms: 3000,
                log_cap: DEFAULT_LOG_CAP,
                exclusive: false,
            },
            failed_at: None,
            node_locked: false,
        })
    }

    /// Make sure no other control plane on the database runs under this store's node id (two
    /// would each take the other's holds for its own): a session advisory lock on the id,
    /// held by the store's connection — taken again after a reconnect, and an error then if
    /// another control plane took the id meanwhile.
    pub fn lock_node(mut self) -> Result<PgStore, StoreError> {
        let client = self.client.as_mut().ok_or(StoreError::Stopped)?;
        take_node_lock(client, &self.terms.node)?;
        self.node_locked = true;
        Ok(self)
    }

    /// The client, connected again if its connection broke (tries a third of [`NET_TIMEOUT`]
    /// apart: a database that is away is not hammered).
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.as_ref().is_some_and(Client::is_closed) {
            self.client = None;
        }
        if self.client.is_none() {
            // Tried a moment ago: wait the rest of the moment, then try (the store's thread
            // has nothing else it could do meanwhile; what waits for it is bounded).
            if let Some(t) = self.failed_at {
                let pause = NET_TIMEOUT / 3;
                if t.elapsed() < pause {
                    std::thread::sleep(pause - t.elapsed());
                }
            }
            match connect(&self.config) {
                Ok(mut c) => {
                    if self.node_locked {
                        take_node_lock(&mut c, &self.terms.node)?;
                    }
                    tracing::info!("connected to the database again");
                    self.statements.clear();
                    self.failed_at = None;
                    self.client = Some(c);
                }
                Err(e) => {
                    self.failed_at = Some(Instant::now());
                    return Err(db(e));
                }
            }
        }
        Ok(self.client.as_mut().expect("connected"))
    }

    /// Run `f` on the client with its prepared statements.
    fn on<T>(
        &mut self,
        f: impl FnOnce(&mut dyn Tx) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.client()?;
        let client = self.client.as_mut().expect("connected");
        f(&mut Pg {
            client,
            statements: &mut self.statements,
        })
    }

    /// Keep at most `bytes` of each job's output (as [`crate::SqliteStore::with_log_cap`]).
    pub fn with_log_cap(mut self, bytes: u64) -> PgStore {
        self.terms.log_cap = bytes;
        self
    }

    /// Hold jobs as control plane `node` (unique among those sharing the database), for
    /// `lease` at a time unrenewed (default `control-plane`, 3 s).
    pub fn with_holder(mut self, node: &str, lease: Duration) -> PgStore {
        self.terms.node = node.to_owned();
        self.terms.lease_ms = lease.as_millis() as u64;
        self
    }

    /// One try of the batch: its changes and notices in one transaction.
    fn try_commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        self.client()?;
        // A connection that died while idle (a partition, the database restarted) shows at
        // BEGIN: nothing of the batch was sent, so it runs on a new connection.
        let begun = self
            .client
            .as_mut()
            .expect("connected")
            .batch_execute("BEGIN");
        if let Err(e) = begun {
            if e.as_db_error().is_some() {
                return Err(db(e));
            }
            self.client = None;
            self.client()?.batch_execute("BEGIN").map_err(db)?;
        }
        let result = self.batch(changes);
        let client = self.client.as_mut().expect("connected");
        match result {
            Ok(out) => {
                client.batch_execute("COMMIT").map_err(db)?;
                Ok(out)
            }
            Err(e) => {
                // The transaction is void; a broken connection is made again next time.
                let _ = client.batch_execute("ROLLBACK");
                Err(e)
            }
        }
    }

    /// The batch's changes and notices, inside the transaction begun on the client.
    fn batch(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let client = self.client.as_mut().expect("connected");
        let mut on = Pg {
            client,
            statements: &mut self.statements,
        };
        let mut out = Vec::with_capacity(changes.len());
        for change in changes {
            out.push(crate::rules::apply(&mut on, change, &self.terms)?);
        }
        for n in notice::of_batch(&self.terms.node, changes, &out) {
            on.exec(
                "SELECT pg_notify(?1, ?2)",
                &[P::T(CHANNEL), P::T(&n.payload())],
            )?;
        }
        Ok(out)
    }
}

impl Store for PgStore {
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError> {
        let mut tries = 0;
        loop {
            match self.try_commit(changes) {
                Err(StoreError::Conflict(e)) if tries + 1 < CONFLICT_TRIES => {
                    tries += 1;
                    tracing::debug!(error = %e, tries, "a transaction lost a race: again");
                }
                r => return r,
            }
        }
    }

    fn job(&mut self, job_id: &str) -> Result<Option<Job>, StoreError> {
        self.on(|tx| reads::job(tx, job_id))
    }

    fn jobs(
        &mut self,
        state: Option<JobState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Job>, StoreError> {
        self.on(|tx| reads::jobs(tx, state, limit, after))
    }

    fn logs(&mut self, job_id: &str, from: u64, max_bytes: usize) -> Result<LogPage, StoreError> {
        self.on(|tx| reads::logs(tx, job_id, from, max_bytes))
    }

    fn artifacts(&mut self, job_id: &str) -> Result<Vec<Artifact>, StoreError> {
        self.on(|tx| reads::artifacts(tx, job_id))
    }

    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError> {
        self.on(|tx| reads::queued(tx, limit))
    }

    fn holds(&mut self) -> Result<Vec<(String, u64)>, StoreError> {
        let node = self.terms.node.clone();
        self.on(|tx| reads::holds(tx, &node))
    }

    fn held(&mut self) -> Result<Vec<Job>, StoreError> {
        let node = self.terms.node.clone();
        self.on(|tx| reads::held(tx, Some(&node)))
    }

    fn shared(&self) -> bool {
        true
    }

    fn put_file(
        &mut self,
        job_id: &str,
        name: &str,
        path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        use std::io::Read;
        let io = |e: std::io::Error| StoreError::Database(format!("{}: {e}", path.display()));
        let mut file = std::fs::File::open(path).map_err(io)?;
        let client = self.client()?;
        let mut tx = client.transaction().map_err(db)?;
        tx.execute(
            "DELETE FROM artifact_pieces WHERE job = $1 AND name = $2",
            &[&job_id, &name],
        )
        .map_err(db)?;
        let insert = tx
            .prepare("INSERT INTO artifact_pieces (job, name, seq, data) VALUES ($1, $2, $3, $4)")
            .map_err(db)?;
        let mut piece = vec![0u8; FILE_PIECE as usize];
        for seq in 0i64.. {
            let mut n = 0;
            while n < piece.len() {
                match file.read(&mut piece[n..]).map_err(io)? {
                    0 => break,
                    k => n += k,
                }
            }
            if n == 0 && seq > 0 {
                break;
            }
            tx.execute(&insert, &[&job_id, &name, &seq, &&piece[..n]])
                .map_err(db)?;
            if n < piece.len() {
                break;
            }
        }
        tx.commit().map_err(db)?;
        Ok(true)
    }

    fn file_piece(
        &mut self,
        job_id: &str,
        name: &str,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let seq = (offset / FILE_PIECE) as i64;
        let row = self
            .client()?
            .query_opt(
                "SELECT data FROM artifact_pieces WHERE job = $1 AND name = $2 AND seq = $3",
                &[&job_id, &name, &seq],
            )
            .map_err(db)?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }
}
