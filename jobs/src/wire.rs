//! How a control plane and its agents talk, on top of the protocol's job messages (written
//! out for other implementations in docs/PROTOCOL.md, "The jobs conversation"):
//!
//! - The agent opens job stream [`JOB_STREAM`] with a STATUS_UPDATE request naming itself
//!   (`node_id`), its `capacity` (slots), `running_jobs` and `labels` (each label a key with
//!   an empty value), answered by a STATUS_UPDATE with RESPONSE. It sends one again every
//!   heartbeat interval: that, and its connection, is its lease.
//! - The control plane sends JOB_REQUEST (`spec` is the [`JobSpec`] as JSON, with `attempt`,
//!   `epoch` and `log_from`); the agent answers JOB_ACCEPT or JOB_REJECT, then sends JOB_START,
//!   its output as LOG_ENTRY batches ([`log_batch`]) and at last JOB_COMPLETE (it exited:
//!   `outputs.signal` when a signal ended it) or JOB_FAILED (`402` timed out, `404` cancelled,
//!   `403` could not run). JOB_START, LOG_ENTRY, JOB_COMPLETE and JOB_FAILED are requests: the
//!   control plane answers each once what it says is on disk (a LOG_ENTRY answer carries
//!   `fields.acked`, the highest line stored), or with ERROR 400 when the attempt is not the
//!   job's current one. The agent keeps what is not answered and sends it again on its next
//!   connection; it sends a job's result only once every line of its output is acknowledged.
//! - The control plane sends JOB_CANCEL, JOB_PAUSE and JOB_RESUME for a job on an agent.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use valkyrie_protocol::message::{LogEntry, StatusUpdate};

use crate::model::JobSpec;
use crate::scheduler::AgentInfo;
use crate::store::LogLine;

/// The job stream an agent opens (job-execution class, odd: the connecting side's).
pub const JOB_STREAM: u32 = 101;

/// Lines one LOG_ENTRY batch carries at most.
pub const MAX_BATCH_LINES: usize = 1024;

/// JOB_FAILED code: the job ran past its `timeout_ms`.
pub const TIMED_OUT: u16 = 402;
/// JOB_FAILED code: the job could not run (spawn failed) — retryable.
pub const COULD_NOT_RUN: u16 = 403;
/// JOB_FAILED code: the job was cancelled.
pub const CANCELLED: u16 = 404;

/// An agent's STATUS_UPDATE.
pub fn status(info: &AgentInfo, running: u32) -> StatusUpdate {
    StatusUpdate {
        node_id: info.id.clone(),
        state: "ready".into(),
        load: Some(f64::from(running) / f64::from(info.slots.max(1))),
        running_jobs: Some(running),
        capacity: Some(info.slots),
        labels: info
            .labels
            .iter()
            .map(|l| (l.clone(), String::new()))
            .collect(),
    }
}

/// The agent a STATUS_UPDATE announces.
pub fn agent_info(s: &StatusUpdate) -> AgentInfo {
    AgentInfo {
        id: s.node_id.clone(),
        labels: s.labels.keys().cloned().collect(),
        slots: s.capacity.unwrap_or(1),
        projects: None,
    }
}

/// The spec a JOB_REQUEST carries, as JSON.
pub fn spec_value(spec: &JobSpec) -> Value {
    serde_json::to_value(spec).expect("a spec converts to JSON")
}

/// A batch of a job's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    /// The job.
    #[serde(skip)]
    pub job_id: String,
    /// The attempt's epoch.
    pub epoch: u64,
    /// The first line's number.
    pub seq: u64,
    /// The lines.
    pub lines: Vec<LogLine>,
}

/// A LOG_ENTRY carrying `batch`: `job_id`, `source` `"job"`, and in `fields` the attempt's
/// `epoch`, the first line's number `seq`, and `lines` (`[{"stream", "line"}]`).
pub fn log_batch(batch: &LogBatch, now_ms: u64) -> LogEntry {
    let Value::Object(fields) = serde_json::to_value(batch).expect("a batch converts") else {
        unreachable!("a struct converts to an object")
    };
    LogEntry {
        timestamp_ms: now_ms,
        level: "info".into(),
        message: String::new(),
        job_id: Some(batch.job_id.clone()),
        source: Some("job".into()),
        fields,
    }
}

/// The batch a LOG_ENTRY carries, or why it is not one.
pub fn parse_log_batch(entry: LogEntry) -> Result<LogBatch, String> {
    let job_id = entry.job_id.ok_or("a job's LOG_ENTRY needs job_id")?;
    let mut batch: LogBatch =
        serde_json::from_value(Value::Object(entry.fields)).map_err(|e| e.to_string())?;
    if batch.lines.len() > MAX_BATCH_LINES {
        return Err(format!(
            "{} lines in one batch, at most {MAX_BATCH_LINES}",
            batch.lines.len()
        ));
    }
    if let Some(l) = batch
        .lines
        .iter()
        .find(|l| l.stream != "stdout" && l.stream != "stderr")
    {
        return Err(format!("unknown output {:?}", l.stream));
    }
    batch.job_id = job_id;
    Ok(batch)
}

/// The control plane's answer to a batch: the highest line stored for the job.
pub fn log_ack(job_id: &str, acked: u64, now_ms: u64) -> LogEntry {
    let mut fields = Map::new();
    fields.insert("acked".into(), json!(acked));
    LogEntry {
        timestamp_ms: now_ms,
        level: "info".into(),
        message: String::new(),
        job_id: Some(job_id.to_owned()),
        source: Some("job".into()),
        fields,
    }
}

/// The acknowledged line an answer to a batch carries.
pub fn parse_log_ack(entry: &LogEntry) -> Option<u64> {
    entry.fields.get("acked").and_then(Value::as_u64)
}

/// An artifact upload's transfer id: `JOB:EPOCH:NAME`.
pub fn transfer_id(job_id: &str, epoch: u64, name: &str) -> String {
    format!("{job_id}:{epoch}:{name}")
}

/// `JOB:EPOCH:NAME` of an artifact upload's transfer id.
pub fn parse_transfer(id: &str) -> Option<(String, u64, String)> {
    let mut parts = id.splitn(3, ':');
    let job = parts.next()?.to_owned();
    let epoch = parts.next()?.parse().ok()?;
    let name = parts.next()?.to_owned();
    Some((job, epoch, name))
}

/// An artifact's name that stays inside its job's directory (a file name, not `.part`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && !name.contains(['/', '\0', '\\'])
        && !name.ends_with(".part")
}

#[cfg(test)]
mod tests {
    use super::*;
    use valkyrie_protocol::message::Payload;

    #[test]
    fn a_batch_round_trips_and_bad_ones_are_refused() {
        let batch = LogBatch {
            job_id: "j1".into(),
            epoch: 3,
            seq: 41,
            lines: vec![
                LogLine {
                    stream: "stdout".into(),
                    line: "compiling".into(),
                },
                LogLine {
                    stream: "stderr".into(),
                    line: "warning: x".into(),
                },
            ],
        };
        let bytes = log_batch(&batch, 7).to_bytes();
        let back = parse_log_batch(LogEntry::from_bytes(&bytes).unwrap()).unwrap();
        assert_eq!(back, batch);
        let mut bad = log_batch(&batch, 7);
        bad.fields["lines"][0]["stream"] = json!("stdin");
        assert!(parse_log_batch(bad).unwrap_err().contains("stdin"));
        let mut anonymous = log_batch(&batch, 7);
        anonymous.job_id = None;
        assert!(parse_log_batch(anonymous).is_err());
        assert_eq!(parse_log_ack(&log_ack("j1", 42, 8)), Some(42));
    }
}
