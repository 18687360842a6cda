//! The store trait: what the control plane asks of its durable store, in batches so that one
//! commit (one fsync) can acknowledge many changes ([`crate::committer`]). The embedded
//! SQLite store is [`crate::sqlite::SqliteStore`]; a PostgreSQL one follows in its own issue.
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
    /// The attempt of `epoch` ended. A final `state` ends the job; `Queued` puts it back in
    /// the queue for another attempt (a failure with attempts left, a lost agent).
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

    /// The queued jobs a scheduler should consider first: highest priority, then oldest;
    /// at most `limit`.
    fn queued(&mut self, limit: usize) -> Result<Vec<Job>, StoreError>;
}
