//! The payload schemas, one struct per structured message type.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::b64;

/// A free-form JSON object carried inside a payload.
pub type Object = Map<String, Value>;

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

fn default_priority() -> u8 {
    crate::frame::DEFAULT_PRIORITY
}

/// A security mode name as it appears in HELLO and HELLO_ACK. Unknown names are kept so
/// that a peer offering a newer mode does not break negotiation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SecurityMode {
    /// No authentication or encryption (development only).
    Plaintext,
    /// HMAC-SHA256 challenge–response.
    Token,
    /// Noise XK (Curve25519, ChaCha20-Poly1305).
    NoiseXk,
    /// TLS 1.3 with client and server certificates.
    Mtls,
    /// Hybrid X25519 + ML-KEM-768 with ML-DSA-65 identities.
    PostQuantum,
    /// Mutual authentication plus per-message authorisation and audit.
    ZeroTrust,
    /// A name this version does not know.
    Other(String),
}

impl SecurityMode {
    /// The wire name (`"noise_xk"`).
    pub fn as_str(&self) -> &str {
        match self {
            SecurityMode::Plaintext => "plaintext",
            SecurityMode::Token => "token",
            SecurityMode::NoiseXk => "noise_xk",
            SecurityMode::Mtls => "mtls",
            SecurityMode::PostQuantum => "post_quantum",
            SecurityMode::ZeroTrust => "zero_trust",
            SecurityMode::Other(s) => s,
        }
    }
}

impl From<String> for SecurityMode {
    fn from(s: String) -> Self {
        match s.as_str() {
            "plaintext" => SecurityMode::Plaintext,
            "token" => SecurityMode::Token,
            "noise_xk" => SecurityMode::NoiseXk,
            "mtls" => SecurityMode::Mtls,
            "post_quantum" => SecurityMode::PostQuantum,
            "zero_trust" => SecurityMode::ZeroTrust,
            _ => SecurityMode::Other(s),
        }
    }
}

impl From<SecurityMode> for String {
    fn from(m: SecurityMode) -> String {
        m.as_str().to_owned()
    }
}

impl std::fmt::Display for SecurityMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SecurityMode {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SecurityMode::from(s.to_owned()))
    }
}

/// HELLO (0x00): the connecting side's opening offer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol versions the sender speaks, most preferred first.
    pub versions: Vec<u8>,
    /// The sender's node id.
    pub node_id: String,
    /// Security modes the sender accepts, most preferred first.
    pub security: Vec<SecurityMode>,
    /// Largest payload the sender will accept.
    pub max_frame: u32,
    /// Heartbeat interval the sender proposes (0: none).
    pub heartbeat_ms: u32,
    /// Initial flow-control credit (bytes) the sender grants per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_window: Option<u32>,
    /// Most concurrent streams the sender lets its peer open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    /// Compression algorithms the sender supports (none yet in this version).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compression: Vec<String>,
    /// Where the sender runs (boot and network namespace): a peer with the same can move
    /// the connection to shared memory (UPGRADE).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
    /// Over QUIC: the sender carries Valkyrie streams on QUIC streams of their own when the
    /// peer does too (docs/PROTOCOL.md §6.7).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic_streams: bool,
}

/// The machine and network namespace a side runs in: two processes with the same share a
/// host (and can reach each other's abstract Unix sockets and shared memory).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostId {
    /// The kernel's boot id (`/proc/sys/kernel/random/boot_id`): the same only on one
    /// machine, until it reboots.
    pub boot: String,
    /// The network namespace's inode number (`/proc/self/ns/net`).
    pub netns: u64,
}

impl Hello {
    /// A HELLO offering version 2 with these settings and no optional keys.
    ///
    /// ```
    /// use valkyrie_protocol::message::{Hello, Payload};
    /// use valkyrie_protocol::{Frame, MessageType, SecurityMode};
    ///
    /// let hello = Hello::new("agent-7", vec![SecurityMode::Plaintext], 1 << 20, 5_000);
    /// let frame = Frame::new(MessageType::Hello, 0, hello.to_bytes());
    /// assert_eq!(frame.stream_id(), 0);
    /// ```
    pub fn new(
        node_id: impl Into<String>,
        security: Vec<SecurityMode>,
        max_frame: u32,
        heartbeat_ms: u32,
    ) -> Hello {
        Hello {
            versions: vec![crate::frame::VERSION],
            node_id: node_id.into(),
            security,
            max_frame,
            heartbeat_ms,
            stream_window: None,
            max_streams: None,
            compression: Vec::new(),
            host: None,
            quic_streams: false,
        }
    }
}

/// HELLO_ACK (0x01): the accepting side's choice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    /// The version chosen.
    pub version: u8,
    /// The accepting node's id.
    pub node_id: String,
    /// The security mode chosen.
    pub security: SecurityMode,
    /// Largest payload the accepting side will accept.
    pub max_frame: u32,
    /// Heartbeat interval both sides use (0: none).
    pub heartbeat_ms: u32,
    /// Initial flow-control credit (bytes) the sender grants per stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_window: Option<u32>,
    /// Most concurrent streams the sender lets its peer open.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_streams: Option<u32>,
    /// Compression algorithm chosen, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compression: Option<String>,
    /// Where the accepting side runs (see [`Hello::host`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostId>,
    /// The accepting side agrees to Valkyrie streams on QUIC streams of their own (only when
    /// the HELLO offered it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub quic_streams: bool,
}

/// ERROR (0x04).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorPayload {
    /// The error code (1xx–7xx).
    pub code: u16,
    /// Human-readable detail.
    pub message: String,
}

/// CLOSE (0x05).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// Why (0 = normal close, otherwise an error code).
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

/// UPGRADE (0x06): ask to move to another transport or protocol.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Upgrade {
    /// Target, e.g. `"quic"`, `"shm"`, `"websocket"`.
    pub to: String,
    /// Target-specific parameters (address, segment name...).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Object,
}

/// NEGOTIATE (0x07): capability negotiation after establishment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Negotiate {
    /// Feature names the sender supports.
    #[serde(default)]
    pub features: Vec<String>,
    /// Parameters keyed by name.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub params: Object,
}

/// AUTH_CHALLENGE (0x10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthChallenge {
    /// The mode this challenge belongs to.
    pub mode: SecurityMode,
    /// Server nonce (base64).
    #[serde(with = "b64")]
    pub nonce: Vec<u8>,
    /// When the challenge expires, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Mode-specific data (base64).
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
}

/// AUTH_RESPONSE (0x11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthResponse {
    /// The mode this response belongs to.
    pub mode: SecurityMode,
    /// The identity claimed (node id, token id...).
    pub identity: String,
    /// Client nonce (base64).
    #[serde(default, with = "b64", skip_serializing_if = "Vec::is_empty")]
    pub nonce: Vec<u8>,
    /// The proof (MAC, signature...; base64).
    #[serde(with = "b64")]
    pub proof: Vec<u8>,
    /// Unix milliseconds at which the proof was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_ms: Option<u64>,
}

/// AUTH_SUCCESS (0x12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSuccess {
    /// The authenticated identity.
    pub identity: String,
    /// Session lifetime end, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// Mode-specific data (base64).
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
}

/// AUTH_FAILURE (0x13).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthFailure {
    /// A 2xx or 7xx code.
    pub code: u16,
    /// Human-readable reason.
    pub reason: String,
}

/// KEY_EXCHANGE (0x14): one handshake message of a key-agreement mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyExchange {
    /// The mode.
    pub mode: SecurityMode,
    /// Handshake step, counting from 0.
    pub step: u8,
    /// The handshake message (base64).
    #[serde(with = "b64")]
    pub data: Vec<u8>,
}

/// CERT_REQUEST (0x15).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertRequest {
    /// The mode.
    pub mode: SecurityMode,
    /// Distinguished names or fingerprints of acceptable issuers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accepted_issuers: Vec<String>,
    /// Mode-specific data, e.g. a TLS record (base64).
    #[serde(default, with = "b64::option", skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<u8>>,
}

/// Resources a job asks for.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in thousandths of a core.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u32>,
    /// Memory in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// Disk in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Labels an agent must carry.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// JOB_REQUEST (0x20).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRequest {
    /// Job id, unique in the control plane.
    pub job_id: String,
    /// The job specification (pipeline, steps, environment...), free-form.
    #[serde(default)]
    pub spec: Value,
    /// Resources required.
    #[serde(default, skip_serializing_if = "is_default")]
    pub resources: Resources,
    /// Job priority, 0–255, higher first.
    #[serde(default = "default_priority")]
    pub priority: u8,
    /// Time limit in milliseconds (0: none).
    #[serde(default)]
    pub timeout_ms: u64,
    /// Which attempt at the job this is (1 for the first; 0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub attempt: u32,
    /// The attempt's epoch: every answer about it carries it back, and one carrying an
    /// older epoch is refused (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
    /// The number the attempt's first line of output takes in the job's log (lines of
    /// earlier attempts come before it; 0 or absent: 1).
    #[serde(default, skip_serializing_if = "is_default")]
    pub log_from: u64,
}

/// JOB_ACCEPT (0x21).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobAccept {
    /// The job.
    pub job_id: String,
    /// The accepting agent.
    pub agent_id: String,
    /// The epoch of the JOB_REQUEST it answers (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_REJECT (0x22).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobReject {
    /// The job.
    pub job_id: String,
    /// A 4xx or 5xx code.
    pub code: u16,
    /// Why.
    pub reason: String,
    /// When to try again, if the agent knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The epoch of the JOB_REQUEST it answers (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_START (0x23).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobStart {
    /// The job.
    pub job_id: String,
    /// Start time, Unix milliseconds.
    pub started_at_ms: u64,
    /// The attempt's epoch (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_PROGRESS (0x24).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobProgress {
    /// The job.
    pub job_id: String,
    /// Completion, 0.0–100.0.
    pub percent: f64,
    /// Current stage name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The attempt's epoch (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_COMPLETE (0x25).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobComplete {
    /// The job.
    pub job_id: String,
    /// Process exit code.
    pub exit_code: i32,
    /// Run time in milliseconds.
    pub duration_ms: u64,
    /// Outputs (artifacts, results), free-form.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Object,
    /// The attempt's epoch (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_FAILED (0x26).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobFailed {
    /// The job.
    pub job_id: String,
    /// A 4xx code.
    pub code: u16,
    /// Why.
    pub reason: String,
    /// Whether retrying may help.
    #[serde(default)]
    pub retryable: bool,
    /// The attempt's epoch (0: not said).
    #[serde(default, skip_serializing_if = "is_default")]
    pub epoch: u64,
}

/// JOB_CANCEL (0x27).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCancel {
    /// The job.
    pub job_id: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// JOB_MIGRATE (0x28).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobMigrate {
    /// The job.
    pub job_id: String,
    /// The node that takes the job over.
    pub target_node: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// JOB_PAUSE (0x29).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPause {
    /// The job.
    pub job_id: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// JOB_RESUME (0x2A).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResume {
    /// The job.
    pub job_id: String,
}

/// STREAM_OPEN (0x30): open a stream explicitly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamOpen {
    /// What the stream carries (`"job"`, `"data"`, `"log"`, `"file"`...).
    #[serde(default)]
    pub kind: String,
    /// Receive credit (bytes) the opener grants its peer on this stream; absent: the HELLO value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u32>,
    /// Application metadata.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub metadata: Object,
}

/// STREAM_CLOSE (0x32): the sender will send nothing more on this stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamClose {
    /// Optional reason.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// STREAM_ACK (0x33): acknowledgement and/or flow-control credit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamAck {
    /// New absolute credit limit: the peer may send payload bytes up to this offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_data: Option<u64>,
    /// Payload bytes received so far on the stream (acknowledgement).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received: Option<u64>,
}

/// STREAM_RESET (0x34): abort the stream in both directions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReset {
    /// A 3xx code (or an application code).
    pub code: u16,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// FILE_TRANSFER_START (0x35).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTransferStart {
    /// Transfer id.
    pub transfer_id: String,
    /// File name or path.
    pub name: String,
    /// Total size in bytes.
    pub size: u64,
    /// Chunk size the sender uses.
    pub chunk_size: u32,
    /// BLAKE3 hash of the whole file, hex, when known up front.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// FILE_TRANSFER_COMPLETE (0x37).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileTransferComplete {
    /// Transfer id.
    pub transfer_id: String,
    /// Bytes sent.
    pub size: u64,
    /// BLAKE3 hash of the whole file, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
}

/// One metric sample.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    /// Metric name.
    pub name: String,
    /// `"counter"`, `"gauge"` or `"histogram"`.
    pub kind: String,
    /// The value.
    pub value: f64,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// METRICS_REPORT (0x40).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    /// Reporting node.
    pub node_id: String,
    /// Sample time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Samples.
    pub metrics: Vec<Metric>,
}

/// LOG_ENTRY (0x41).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// `"trace"`, `"debug"`, `"info"`, `"warn"` or `"error"`.
    pub level: String,
    /// The line.
    pub message: String,
    /// Job the line belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_id: Option<String>,
    /// Source (step, process, module).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Structured fields.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub fields: Object,
}

/// TRACE_SPAN (0x42).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceSpan {
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// Parent span id, 16 hex digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    /// Span name.
    pub name: String,
    /// Start, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix nanoseconds.
    pub end_unix_ns: u64,
    /// `"ok"`, `"error"` or `"unset"`.
    #[serde(default)]
    pub status: String,
    /// Attributes.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub attributes: Object,
}

/// HEALTH_CHECK (0x43): a probe (empty map) or, with RESPONSE set, its answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `"serving"`, `"degraded"` or `"not_serving"` in an answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Per-component status.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}

/// STATUS_UPDATE (0x44).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// Reporting node.
    pub node_id: String,
    /// `"ready"`, `"busy"`, `"draining"`, `"offline"`...
    pub state: String,
    /// Load, 0.0–1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Jobs running now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<u32>,
    /// Most jobs the node will run at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// ALERT_NOTIFICATION (0x45).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertNotification {
    /// Alert id.
    pub alert_id: String,
    /// `"info"`, `"warning"` or `"critical"`.
    pub severity: String,
    /// One-line summary.
    pub summary: String,
    /// Time, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Details.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub details: Object,
}
