//! What moves the dispatcher ([`Event`]), from the store's thread (commits done, reads
//! answered) and from the shards (agents' words, REST requests).

use std::time::Instant;

use valkyrie_runtime::ConnRef;

use crate::model::{Job, JobSpec, JobState};
use crate::scheduler::AgentInfo;
use crate::store::{Applied, StoreError};

/// What pause, resume or cancel was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Cancel,
    Pause,
    Resume,
    Migrate,
}

/// What moves the dispatcher.
pub(crate) enum Event {
    /// A job was submitted (its commit is on disk).
    Submitted {
        job_id: String,
        spec: Box<JobSpec>,
        created_at: u64,
        at: Instant,
    },
    /// The jobs on agents and the first queued jobs, read when the control plane starts.
    Recovered(Result<(Vec<Job>, Vec<Job>), StoreError>),
    /// Queued jobs claimed from the store (`limit` were asked for).
    Loaded {
        limit: usize,
        jobs: Result<Vec<Job>, StoreError>,
    },
    /// An adoption's commit (an agent that failed over claimed an attempt).
    Adopted {
        job_id: String,
        agent: String,
        result: Result<Applied, StoreError>,
    },
    /// A renewal of this node's leases: whether the store answered.
    Renewed(bool),
    /// Jobs whose holder's lease ran out, reaped.
    Reaped(Result<Vec<(String, JobState)>, StoreError>),
    /// The jobs the store says this node holds on agents, by id and epoch.
    Holds(Result<Vec<(String, u64)>, StoreError>),
    /// A notice from another control plane.
    Notified(crate::notice::Notice),
    /// The dispatcher lets a job go (another control plane holds it, or it ended otherwise).
    Released { job_id: String },
    /// An assignment's commit.
    Assigned {
        job_id: String,
        agent: String,
        result: Result<Applied, StoreError>,
    },
    /// An attempt ended (its commit is on disk): the job's state now; `rejected_by` when the
    /// agent turned it down.
    Ended {
        job_id: String,
        state: JobState,
        rejected_by: Option<String>,
    },
    /// A pause, resume or cancel was committed.
    Moved {
        job_id: String,
        state: JobState,
        running: Option<u64>,
        op: Op,
        /// A migration's target agent (none: anywhere but where it is).
        target: Option<String>,
    },
    /// An agent announced itself on `conn` (its lease is renewed).
    AgentUp { info: AgentInfo, conn: ConnRef },
    /// An agent's connection ended.
    ConnClosed { conn: ConnRef },
    /// An agent accepted an attempt.
    Accepted { job_id: String, epoch: u64 },
    /// An agent rejected an attempt.
    Rejected {
        job_id: String,
        epoch: u64,
        agent: String,
        reason: String,
    },
    /// An agent says it runs an attempt (first start, or re-attaching).
    Started {
        job_id: String,
        epoch: u64,
        agent: String,
    },
    /// `GET /api/v1/agents` on `conn`.
    ListAgents { conn: ConnRef },
}
