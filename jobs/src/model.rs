//! The job model: what a job asks for ([`JobSpec`]), where it is ([`JobState`]), and each
//! attempt at running it ([`Attempt`]), as SPEC.md ("Jobs") names them.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a job runs and under which rules: the JSON body of `POST /api/v1/jobs`, and the `spec`
/// of a JOB_REQUEST.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// The program and its arguments (argv; no shell).
    #[serde(default)]
    pub command: Vec<String>,
    /// Environment variables set for it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables: sealed with the control plane's key when stored, shown
    /// as `***`, masked in the job's output ([`crate::secrets`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Its working directory (relative to the agent's work directory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Limits for its cgroup, where the agent's host offers cgroups.
    #[serde(default, skip_serializing_if = "Resources::is_unset")]
    pub resources: Resources,
    /// Time it may run, not counting time paused (0: no limit).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Labels an agent must have to run it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    /// 0–255, higher first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Attempts in all before a failure is final (at least 1).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// The wait before the first retry, in milliseconds (it doubles each retry, to 60 s at
    /// most: the protocol crate's exponential backoff).
    #[serde(default = "default_backoff")]
    pub backoff_ms: u64,
    /// Submitting twice with the same key returns the first job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Its project: under a zero_trust policy, only agents whose identity the policy grants
    /// the project run it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Jobs of one group run one at a time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_group: Option<String>,
    /// Paths the agent uploads when the job ends.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<String>,
    /// A job the agent completes itself without spawning anything (`"noop"`: dispatch
    /// benchmarks and tests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
}

/// What a job may use: the limits of its cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Processes and threads at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
}

impl Resources {
    /// Nothing is limited.
    pub fn is_unset(&self) -> bool {
        *self == Resources::default()
    }
}

fn default_priority() -> u8 {
    128
}

fn default_backoff() -> u64 {
    1000
}

fn default_attempts() -> u32 {
    1
}

impl JobSpec {
    /// The spec with its secrets sealed by `key`.
    pub fn sealed(
        mut self,
        key: &crate::SecretsKey,
    ) -> Result<JobSpec, crate::secrets::SecretError> {
        for v in self.secrets.values_mut() {
            *v = key.seal(v)?;
        }
        Ok(self)
    }

    /// The spec with its secrets opened by `key`.
    pub fn opened(
        mut self,
        key: &crate::SecretsKey,
    ) -> Result<JobSpec, crate::secrets::SecretError> {
        for v in self.secrets.values_mut() {
            *v = key.open(v)?;
        }
        Ok(self)
    }

    /// The spec as shown: secrets' values replaced by `***`.
    pub fn redacted(&self) -> JobSpec {
        let mut s = self.clone();
        for v in s.secrets.values_mut() {
            *v = "***".into();
        }
        s
    }
}

/// Why a spec is refused at submission.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// Neither a command nor a builtin.
    #[error("a job needs a command (argv) or a builtin")]
    Empty,
    /// An unknown builtin.
    #[error("unknown builtin {0:?} (known: noop)")]
    UnknownBuiltin(String),
    /// `max_attempts` of 0.
    #[error("max_attempts must be at least 1")]
    NoAttempts,
}

impl JobSpec {
    /// Check what the spec asks for makes sense.
    pub fn validate(&self) -> Result<(), SpecError> {
        match self.builtin.as_deref() {
            Some("noop") => {}
            Some(other) => return Err(SpecError::UnknownBuiltin(other.to_owned())),
            None if self.command.is_empty() => return Err(SpecError::Empty),
            None => {}
        }
        if self.max_attempts == 0 {
            return Err(SpecError::NoAttempts);
        }
        Ok(())
    }
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for an agent.
    Queued,
    /// Sent to an agent, not yet started.
    Assigned,
    /// Its process runs.
    Running,
    /// Stopped (SIGSTOP) until resumed.
    Paused,
    /// Exited 0.
    Succeeded,
    /// Failed on its last attempt.
    Failed,
    /// Cancelled.
    Cancelled,
    /// Ran past its `timeout_ms`.
    TimedOut,
}

impl JobState {
    /// Every state.
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Paused,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
    ];

    /// The state's name (`"timed_out"`), as the REST API and the store write it.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Paused => "paused",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether the job is over (nothing changes it any more).
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled | JobState::TimedOut
        )
    }
}

/// One attempt at running a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first.
    pub attempt: u32,
    /// The agent it was given to.
    pub agent: String,
    /// Its epoch: results carrying another are refused.
    pub epoch: u64,
    /// Where it is, or how it ended.
    pub state: JobState,
    /// When the agent started it (Unix milliseconds).
    pub started_at: Option<u64>,
    /// When it ended.
    pub ended_at: Option<u64>,
    /// Its exit code, when it exited.
    pub exit_code: Option<i32>,
    /// The signal that ended it, when one did.
    pub signal: Option<i32>,
    /// Why it ended as it did ("agent lost", "timeout", ...).
    pub reason: Option<String>,
}

/// How far a job's attempt says it is (JOB_PROGRESS; a job writes `::progress::PERCENT
/// MESSAGE` on its standard output).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// 0–100.
    pub percent: u8,
    /// What it does now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A job as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    /// Its id.
    pub job_id: String,
    /// What it runs.
    pub spec: JobSpec,
    /// Where it is.
    pub state: JobState,
    /// The epoch of its current (or last) attempt; 0 before any.
    pub epoch: u64,
    /// The exit code of its final attempt, once final.
    pub exit_code: Option<i32>,
    /// When it was submitted (Unix milliseconds).
    pub created_at: u64,
    /// Every attempt, first first.
    pub attempts: Vec<Attempt>,
    /// The latest progress its current (or last) attempt reported.
    pub progress: Option<Progress>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_reads_from_the_specs_json_with_its_defaults() {
        let s: JobSpec = serde_json::from_str(
            r#"{"command": ["make", "-j8"], "env": {"CI": "1"}, "labels": ["linux"],
                "idempotency_key": "build-42", "timeout_ms": 60000}"#,
        )
        .unwrap();
        assert_eq!(s.command, ["make", "-j8"]);
        assert_eq!((s.priority, s.max_attempts), (128, 1));
        assert_eq!(s.validate(), Ok(()));
        let noop: JobSpec = serde_json::from_str(r#"{"builtin": "noop"}"#).unwrap();
        assert_eq!(noop.validate(), Ok(()));
        assert!(serde_json::from_str::<JobSpec>(r#"{"comand": ["x"]}"#).is_err());
        assert_eq!(JobSpec::default().validate(), Err(SpecError::Empty));
    }

    #[test]
    fn states_round_trip_their_names() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap(),
                format!("\"{}\"", s.as_str())
            );
        }
        assert!(JobState::TimedOut.is_final() && !JobState::Paused.is_final());
    }
}
