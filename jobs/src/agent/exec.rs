//! One job on an agent, on a thread of its own: the process run by the executor, its lines
//! handed to the agent's shard through a bounded channel (a full channel stops the reading,
//! and the job's own writes wait: back-pressure, never loss), pause, resume and cancel from
//! the shard, and its timeout counted without the time it spent paused.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender};
use valkyrie_runtime::Nudger;

use crate::executor::{self, ExecEvent};
use crate::model::JobSpec;
use crate::store::LogLine;

/// What the shard asks of a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Control {
    Pause,
    Resume,
    Cancel,
}

/// What a job's thread tells the shard.
#[derive(Debug)]
pub(crate) enum ExecMsg {
    /// The process runs.
    Started,
    /// The process could not be started.
    SpawnFailed(String),
    /// A line of its output.
    Line(LogLine),
    /// The files it left that its spec lists (found, hashed) and those it did not leave.
    Artifacts {
        found: Vec<ArtifactFile>,
        missing: Vec<String>,
    },
    /// It ended; every line came before this.
    Exited {
        exit_code: Option<i32>,
        signal: Option<i32>,
        duration: Duration,
        timed_out: bool,
        cancelled: bool,
    },
}

/// A file a job left for upload.
#[derive(Debug, Clone)]
pub(crate) struct ArtifactFile {
    /// Its name at the control plane (its file name).
    pub(crate) name: String,
    pub(crate) path: PathBuf,
    pub(crate) size: u64,
    /// BLAKE3, hex.
    pub(crate) blake3: String,
}

/// The spec's artifacts as the job left them: each hashed, or named missing.
fn collect(spec: &JobSpec, work: &std::path::Path) -> (Vec<ArtifactFile>, Vec<String>) {
    let dir = match &spec.cwd {
        Some(cwd) => work.join(cwd),
        None => work.to_path_buf(),
    };
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    for a in &spec.artifacts {
        let path = dir.join(a);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let hashed = std::fs::metadata(&path)
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| {
                let mut h = blake3::Hasher::new();
                h.update_reader(std::fs::File::open(&path).ok()?).ok()?;
                Some((m.len(), h.finalize().to_hex().to_string()))
            });
        match hashed {
            Some((size, blake3)) if !name.is_empty() => found.push(ArtifactFile {
                name,
                path,
                size,
                blake3,
            }),
            _ => missing.push(a.clone()),
        }
    }
    (found, missing)
}

/// How often the thread looks at its controls while the job is quiet.
const POLL: Duration = Duration::from_millis(10);

/// What a job's thread needs.
pub(crate) struct JobThread {
    pub(crate) spec: JobSpec,
    pub(crate) work: PathBuf,
    pub(crate) grace: Duration,
    pub(crate) out: Sender<ExecMsg>,
    pub(crate) control: Receiver<Control>,
    pub(crate) nudger: Nudger,
    /// The cgroup's name, when the job gets one.
    pub(crate) cgroup: Option<String>,
}

struct Clock {
    started: Instant,
    paused_since: Option<Instant>,
    paused: Duration,
}

impl Clock {
    /// Time run, not counting time paused.
    fn ran(&self) -> Duration {
        let now = Instant::now();
        let paused = self.paused + self.paused_since.map_or(Duration::ZERO, |p| now - p);
        (now - self.started).saturating_sub(paused)
    }
}

impl JobThread {
    /// Start the thread.
    pub(crate) fn spawn(self, job_id: &str) {
        let name = format!("job-{}", &job_id[job_id.len().saturating_sub(8)..]);
        std::thread::Builder::new()
            .name(name)
            .spawn(move || self.run())
            .expect("a job's thread starts");
    }

    fn tell(&self, msg: ExecMsg) -> bool {
        let ok = self.out.send(msg).is_ok();
        self.nudger.nudge();
        ok
    }

    fn run(self) {
        let r = &self.spec.resources;
        let limits = crate::cgroup::Limits {
            memory_bytes: r.memory_bytes,
            cpu_millis: r.cpu_millis,
            pids: r.pids,
        };
        let cgroup = self
            .cgroup
            .as_deref()
            .and_then(|name| crate::cgroup::JobCgroup::create(name, &limits));
        let mut job = match executor::spawn_in(&self.spec, &self.work, 1024, cgroup) {
            Ok(j) => j,
            Err(e) => {
                self.tell(ExecMsg::SpawnFailed(format!(
                    "{}: {e}",
                    self.spec.command.first().map_or("", String::as_str)
                )));
                return;
            }
        };
        if !self.tell(ExecMsg::Started) {
            return;
        }
        let timeout =
            (self.spec.timeout_ms > 0).then(|| Duration::from_millis(self.spec.timeout_ms));
        let mut clock = Clock {
            started: Instant::now(),
            paused_since: None,
            paused: Duration::ZERO,
        };
        let (mut cancelled, mut timed_out) = (false, false);
        // What no line of its output may carry.
        let secrets: Vec<String> = self.spec.secrets.values().cloned().collect();
        loop {
            while let Ok(c) = self.control.try_recv() {
                match c {
                    Control::Pause if clock.paused_since.is_none() && job.pause() => {
                        clock.paused_since = Some(Instant::now());
                    }
                    Control::Resume => {
                        if let Some(p) = clock.paused_since.take() {
                            job.resume();
                            clock.paused += p.elapsed();
                        }
                    }
                    Control::Cancel if !cancelled => {
                        cancelled = true;
                        job.cancel(self.grace);
                    }
                    _ => {}
                }
            }
            if let Some(t) = timeout
                && !timed_out
                && !cancelled
                && clock.paused_since.is_none()
                && clock.ran() > t
            {
                timed_out = true;
                job.cancel(self.grace);
            }
            let Some(ev) = job.next(POLL) else {
                continue;
            };
            let mut msg = match ev {
                ExecEvent::Line { output, line, .. } => ExecMsg::Line(LogLine {
                    stream: output.as_str().into(),
                    line: if secrets.is_empty() {
                        line
                    } else {
                        crate::secrets::mask(&line, &secrets)
                    },
                }),
                ExecEvent::Exited {
                    exit_code,
                    signal,
                    duration,
                } => {
                    if !cancelled && !self.spec.artifacts.is_empty() {
                        let (found, missing) = collect(&self.spec, &self.work);
                        self.tell(ExecMsg::Artifacts { found, missing });
                    }
                    self.tell(ExecMsg::Exited {
                        exit_code,
                        signal,
                        duration,
                        timed_out,
                        cancelled,
                    });
                    return;
                }
            };
            // Wait while the shard is behind, looking at the controls now and then (a job
            // whose output is held can still be cancelled).
            loop {
                match self.out.send_timeout(msg, POLL) {
                    Ok(()) => {
                        self.nudger.nudge();
                        break;
                    }
                    Err(SendTimeoutError::Timeout(m)) => {
                        msg = m;
                        self.nudger.nudge();
                        if let Ok(Control::Cancel) = self.control.try_recv()
                            && !cancelled
                        {
                            cancelled = true;
                            job.cancel(self.grace);
                        }
                    }
                    // The agent let the job go: dropping it ends its process group.
                    Err(SendTimeoutError::Disconnected(_)) => return,
                }
            }
        }
    }
}
