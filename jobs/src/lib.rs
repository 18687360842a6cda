//! Valkyrie's job control plane: the job model ([`model`]), and its durable store — a
//! [`Store`] trait, the embedded SQLite store ([`SqliteStore`]: WAL, `synchronous=FULL`), the
//! PostgreSQL store that several control planes share ([`PgStore`]: claims, leases, reaping,
//! adoption; [`notice`] for what they tell each other), and the [`Committer`] thread that owns
//! a store and commits what is waiting in one transaction (group commit), telling each
//! change's sender only once its commit is on disk. The control plane on the runtime is
//! [`ControlPlane`]; the agent is [`agent::Agent`].
//!
//! ```
//! use valkyrie_jobs::{Applied, Change, Committer, JobSpec, JobState, SqliteStore, job_id};
//!
//! let dir = std::env::temp_dir().join(format!("valkyrie-jobs-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir)?;
//! let store = SqliteStore::open(&dir.join("jobs.db"))?;
//! let committer = Committer::spawn(store, 1024);
//! let spec: JobSpec = serde_json::from_str(r#"{"command": ["make"], "idempotency_key": "b-1"}"#)?;
//! let id = job_id(1_700_000_000_000, 1);
//! let first = committer.apply(Change::Submit { job_id: id.clone(), spec: Box::new(spec.clone()), at: 1 })?;
//! assert_eq!(first, Applied::Submitted { job_id: id.clone(), created: true });
//! // The same idempotency key again: the first job comes back.
//! let again = committer.apply(Change::Submit { job_id: job_id(1_700_000_000_001, 2), spec: Box::new(spec), at: 2 })?;
//! assert_eq!(again, Applied::Submitted { job_id: id.clone(), created: false });
//! let job = committer.read(move |s| s.job(&id))??.expect("stored");
//! assert_eq!(job.state, JobState::Queued);
//! # drop(committer);
//! # std::fs::remove_dir_all(&dir)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod agent;
pub mod cgroup;
pub mod committer;
pub mod control;
pub mod executor;
mod holding;
pub mod model;
pub mod notice;
pub mod pg;
mod pg_client;
pub mod pg_temp;
mod reads;
pub mod rest;
mod row;
mod rules;
pub mod scheduler;
pub mod secrets;
mod sql;
pub mod sqlite;
pub mod store;
pub mod wire;

pub use committer::Committer;
pub use control::{ControlConfig, ControlPlane, JobsService};
pub use model::{Attempt, Job, JobSpec, JobState, Resources, SpecError};
pub use pg::PgStore;
pub use scheduler::{AgentInfo, Assignment, Policy, Queued, Scheduler};
pub use secrets::SecretsKey;
pub use sqlite::SqliteStore;
pub use store::{Applied, Artifact, Change, LogLine, LogPage, Store, StoreError};

/// A job id from its submission time (Unix milliseconds) and a sequence number: fixed-width
/// hex, so that ids sort in submission order (`GET /api/v1/jobs?after=ID` pages by id).
pub fn job_id(at_ms: u64, seq: u32) -> String {
    format!("j{at_ms:012x}{seq:08x}")
}
