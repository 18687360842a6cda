//! The store trait: what the control plane asks of its durable store, in batches so that one
//! commit (one fsync) can acknowledge many changes (the committer's group commit). The
//! embedded SQLite store implements it, and the PostgreSQL one ([`crate::PgStore`]) that several
//! control planes share (who holds which job: its claims and leases).
//!
//! Every change a job goes through is one [`Change`]; a result from an attempt carries that
//! attempt's epoch, and one whose epoch is not the job's current one is refused
//! ([`Applied::Stale`]): an agent that was cut off and comes back cannot overwrite what
//! happened since.

use crate::model::{Job, JobSpec, JobState};

/// Why the store failed (the batch it was committing is not durable; nothing of it happened).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The database said no.
    #[error("store: {0}")]
    Database(String),
    /// The transaction lost a race with another control plane's (a deadlock or a
    /// serialization failure): nothing of it happened, and it may simply run again.
    #[error("store: a concurrent transaction won: {0}")]
    Conflict(String),
    /// A stored row could not be read back (a spec or state that does not parse).
    #[error("store holds a row it cannot read: {0}")]
    Corrupt(String),
    /// The store's thread is gone.
    #[error("the store's thread has stopped")]
    Stopped,
}

/// One change to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A new job, queued. With an idempotency key already used, nothing changes and the
    /// first job's id comes back.
    Submit {
        /// Its id (made by the caller: [`crate::job_id`]).
        job_id: String,
        /// What it runs (boxed: the other changes are small).
        spec: Box<JobSpec>,
        /// Now, Unix milliseconds.
        at: u64,
    },
    /// A queued job given to `agent`: a new attempt, with the next epoch.
    Assign {
        /// The job.
        job_id: String,
        /// The agent.
        agent: String,
        /// Now.
        at: u64,
    },
    /// The agent started the attempt of `epoch`.
    Start {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// Now.
        at: u64,
    },
    /// The attempt of `epoch` ended. A final `state` ends the job; `Queued` asks for another
    /// attempt (a failure that may be retried, a lost agent): the job is queued again while
    /// failures are fewer than its `max_attempts`, and fails otherwise. Unless the attempt
    /// succeeded, a job cancelled while it ran ends `cancelled`, and one being migrated is
    /// queued again (not a failure).
    End {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// The attempt's outcome, as the job's state: `Succeeded`, `Failed`, `TimedOut`,
        /// `Cancelled`, or `Queued` for a retry.
        state: JobState,
        /// Its exit code.
        exit_code: Option<i32>,
        /// The signal that ended it.
        signal: Option<i32>,
        /// Why.
        reason: Option<String>,
        /// Now.
        at: u64,
    },
    /// Give a job back to the queue without counting a failure: the agent rejected it
    /// (it goes to another) or it is being moved ([`JobState`] stays within its attempts).
    Requeue {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// Why.
        reason: String,
        /// Now.
        at: u64,
    },
    /// Cancel a job: a queued or idle paused one ends `cancelled` now; one with an attempt
    /// running is marked, and ends `cancelled` when that attempt ends (however it ends).
    Cancel {
        /// The job.
        job_id: String,
        /// Now.
        at: u64,
    },
    /// Move a job to another agent: a queued or idle paused one changes nothing here (the
    /// dispatcher pins it); one with an attempt running is marked, and when that attempt ends
    /// it is queued again without counting a failure.
    Migrate {
        /// The job.
        job_id: String,
        /// Now.
        at: u64,
    },
    /// Pause a job: a queued one is held out of the queue; a running one is stopped.
    Pause {
        /// The job.
        job_id: String,
        /// Now.
        at: u64,
    },
    /// Resume a paused job: back to the queue, or running again where its attempt was.
    Resume {
        /// The job.
        job_id: String,
        /// Now.
        at: u64,
    },
    /// How far the attempt of `epoch` says it is (the latest replaces the one before).
    Progress {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// Where it is.
        progress: crate::model::Progress,
    },
    /// Drop the stored output of jobs that ended before `before` (Unix milliseconds): what
    /// bounds the logs' retention across jobs. The jobs and their attempts stay.
    Prune {
        /// Jobs that ended before this lose their output.
        before: u64,
    },
    /// A file the attempt of `epoch` uploaded (its bytes are already on disk beside the
    /// store, hashed): recorded under `name`, replacing one of the same name.
    Artifact {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// Its name.
        name: String,
        /// Its size in bytes.
        size: u64,
        /// Its BLAKE3 hash, hex.
        blake3: String,
        /// Now.
        at: u64,
    },
    /// Claim up to `limit` queued jobs that no control plane holds (or whose holder's lease
    /// ran out) for this store's control plane, first by priority then age
    /// ([`Applied::Claimed`]). Two control planes claiming at once get different jobs.
    Claim {
        /// Jobs at most.
        limit: usize,
        /// Now.
        at: u64,
    },
    /// Renew the leases of the jobs this store's control plane holds on agents.
    Renew {
        /// Now.
        at: u64,
    },
    /// End, as lost, the attempts of up to `limit` jobs whose holder's lease ran out
    /// (whichever control plane holds them): the jobs are queued again for anyone.
    Reap {
        /// Jobs at most.
        limit: usize,
        /// Now.
        at: u64,
    },
    /// `agent`, which runs the attempt of `epoch`, now speaks to this store's control plane
    /// (it failed over): the job is held here ([`Applied::Adopted`]).
    Adopt {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// The agent that says it runs it.
        agent: String,
        /// Now.
        at: u64,
    },
    /// This store's control plane lost the agent of the attempt of `epoch`: the attempt ends
    /// as lost (a failure when it had started, a plain requeue when not) — refused when
    /// another control plane holds the job now.
    Lose {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// Now.
        at: u64,
    },
    /// Lines of a job's output from the attempt of `epoch`, numbered from `first_seq` on.
    /// Lines the store already holds are skipped (a batch sent again after a reconnect);
    /// a batch that would leave a gap is refused.
    Log {
        /// The job.
        job_id: String,
        /// The attempt's epoch.
        epoch: u64,
        /// The first line's number in the job's output.
        first_seq: u64,
        /// The lines.
        lines: Vec<LogLine>,
    },
}

/// One line of a job's output.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogLine {
    /// `"stdout"` or `"stderr"`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

/// What a change did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The job is queued under `job_id`; `created` is false when an earlier submission with
    /// the same idempotency key made it.
    Submitted {
        /// The job's id.
        job_id: String,
        /// Whether this submission made it.
        created: bool,
    },
    /// The job was assigned: its new attempt and epoch.
    Assigned {
        /// The attempt's number.
        attempt: u32,
        /// Its epoch.
        epoch: u64,
        /// The number of the last line of its output stored so far: this attempt's lines
        /// are numbered on from it.
        log_seq: u64,
    },
    /// The attempt ended, and the job with it or not: where the job is now (`Queued` for
    /// another attempt, or its final state).
    Ended {
        /// Its state now.
        state: JobState,
    },
    /// A pause, resume or cancel took: the job's state now, and whether an attempt of it is
    /// on an agent (which the control plane then signals).
    Moved {
        /// Its state now.
        state: JobState,
        /// The epoch of its attempt on an agent, when one is there.
        running: Option<u64>,
    },
    /// Output pruned: the log chunks dropped.
    Pruned {
        /// Chunks dropped.
        chunks: u64,
    },
    /// Lines stored: the number of the last line the store holds for the job.
    Logged {
        /// The highest line number stored.
        acked: u64,
    },
    /// Jobs claimed ([`Change::Claim`]), first by priority then age (without their
    /// attempts: a claim reads one row per job).
    Claimed {
        /// The jobs.
        jobs: Vec<Job>,
    },
    /// Leases renewed: how many jobs.
    Renewed {
        /// Jobs whose lease was renewed.
        jobs: u64,
    },
    /// Jobs whose holder's lease ran out, and where each is now (`Queued` again, or over).
    Reaped {
        /// Each job and its state now.
        jobs: Vec<(String, JobState)>,
    },
    /// The job is held here now: it, with its attempts.
    Adopted {
        /// The job.
        job: Box<Job>,
    },
    /// Done.
    Done,
    /// The epoch is not the job's current one: refused, nothing changed.
    Stale {
        /// The job's current epoch.
        current: u64,
    },
    /// No such job.
    NotFound,
    /// The job is not in a state that allows the change (assigning a running job, ending a
    /// final one): refused, nothing changed.
    Refused {
        /// Its state.
        state: JobState,
    },
}

/// A file a job's attempt uploaded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Artifact {
    /// Its name.
    pub name: String,
    /// The epoch of the attempt that uploaded it.
    pub epoch: u64,
    /// Its size in bytes.
    pub size: u64,
    /// Its BLAKE3 hash, hex.
    pub blake3: String,
}

/// A page of a job's output ([`Store::logs`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LogPage {
    /// NDJSON, one line of output per line.
    pub ndjson: String,
    /// The number to ask from next.
    pub next: u64,
}

/// The pieces a store keeps an artifact's bytes in, and reads them back by
/// ([`Store::file_piece`]).
pub const FILE_PIECE: u64 = 1024 * 1024;

/// A durable store of jobs and their attempts.
pub trait Store: Send + 'static {
    /// Apply `changes` in order in one transaction, durable on disk when this returns
    /// `Ok`, with each change's result in order. On `Err` nothing of the batch happened.
    fn commit(&mut self, changes: &[Change]) -> Result<Vec<Applied>, StoreError>;

    /// The job `job_id`, with its attempts.
    fn job(&mut self, job_id: &str) -> Result<Option<Job>, StoreError>;

    /// Up to `limit` jobs (in `state` when given) whose ids sort after `after`, in id order
    /// (ids sort by submission time: [`crate::job_id`]).
    fn jobs(
        &mut self,
        state: Option<JobState>,
        limit: usize,
        after: Option<&str>,
    ) -> Result<Vec<Job>, StoreError>;

    /// A job's stored output from line `from` on, as NDJSON lines
    /// (`{"seq":N,"stream":"stdout","line":"..."}`), about `max_bytes` at most (whole chunks
    /// as they were stored; at least one when there is one).
    fn logs(&mut self, job_id: &str, from: u64, max_bytes: usize) -> Result<LogPage, StoreError>;

    /// The files the job's attempts uploaded, by name.
    fn artifacts(&mut self, job_id: &str) -> Result<Vec<Artifact>, StoreError>;

    /// The queued jobs a scheduler should consider first: highest priority, then oldest;
    /// at most `limit`.
    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError>;

    /// The jobs with an attempt on an agent (assigned, running, paused) that this store's
    /// control plane holds or nobody holds: what a control plane takes up again when it
    /// starts.
    fn held(&mut self) -> Result<Vec<Job>, StoreError>;

    /// The jobs with an attempt on an agent that this store's control plane holds, by id
    /// and epoch (what it checks against the jobs it knows it dispatched).
    fn holds(&mut self) -> Result<Vec<(String, u64)>, StoreError>;

    /// Keep the bytes of a job's artifact `name` from the file at `path` in the store itself
    /// (a shared store: any control plane serves it), replacing what it held under that
    /// name; `Ok(false)` when the store keeps no files (they stay beside it, on disk).
    fn put_file(
        &mut self,
        job_id: &str,
        name: &str,
        path: &std::path::Path,
    ) -> Result<bool, StoreError> {
        let _ = (job_id, name, path);
        Ok(false)
    }

    /// [`FILE_PIECE`] bytes (fewer at the end) of a job's artifact `name` the store keeps,
    /// from `offset` (a multiple of [`FILE_PIECE`]); none when it keeps no such file.
    fn file_piece(
        &mut self,
        job_id: &str,
        name: &str,
        offset: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (job_id, name, offset);
        Ok(None)
    }

    /// Whether several control planes may share this store (they then claim jobs, renew
    /// leases and reap each other's expired ones).
    fn shared(&self) -> bool {
        false
    }
}
