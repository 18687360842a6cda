//! The agent's executor: a job's command run as a child process in a process group of its
//! own (so that ending the job ends what it started), its stdout and stderr read line by line
//! into a bounded queue (a full queue stops the reading, the pipe fills, and the job's own
//! writes wait: lines are never dropped), its end reported with its exit code or signal.
//! Cancel sends SIGTERM to the group and SIGKILL after a grace period; pause and resume send
//! SIGSTOP and SIGCONT to the group. The built-in `noop` job ends at once without spawning.
//!
//! Lines are numbered by the one who takes them ([`Running::next`]), so numbers follow the
//! order lines are handed out: from 1, no gap, no duplicate. A line longer than
//! [`MAX_LINE`] bytes is cut into pieces of that size.

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::cgroup::JobCgroup;
use crate::model::JobSpec;

/// The longest line handed out whole.
pub const MAX_LINE: usize = 64 * 1024;

/// Which output a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

impl Output {
    /// `"stdout"` or `"stderr"`, as the logs API writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Output::Stdout => "stdout",
            Output::Stderr => "stderr",
        }
    }
}

/// What a running job says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecEvent {
    /// A line of its output, numbered from 1.
    Line {
        /// Its number in the job's output.
        seq: u64,
        /// Where it came from.
        output: Output,
        /// The line, without its newline (invalid UTF-8 replaced).
        line: String,
    },
    /// It ended (every line it wrote has been handed out before this).
    Exited {
        /// Its exit code, when it exited.
        exit_code: Option<i32>,
        /// The signal that ended it, when one did.
        signal: Option<i32>,
        /// How long it ran.
        duration: Duration,
    },
}

enum Raw {
    Line(Output, String),
    Closed,
}

/// A job being run.
pub struct Running {
    child: Option<Child>,
    pgid: Option<i32>,
    lines: Receiver<Raw>,
    open_outputs: u8,
    seq: u64,
    started: Instant,
    done: bool,
    cgroup: Option<Arc<JobCgroup>>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("pgid", &self.pgid)
            .field("seq", &self.seq)
            .finish()
    }
}

/// Start `spec` in `work_dir` (its `cwd` is taken relative to it), with room for
/// `queue` lines waiting to be taken.
pub fn spawn(spec: &JobSpec, work_dir: &Path, queue: usize) -> std::io::Result<Running> {
    spawn_in(spec, work_dir, queue, None)
}

/// The same, in `cgroup` (when given): the process joins it before it runs the command, so
/// that all it starts is in it; it is paused by freezing the cgroup and ended through it.
pub fn spawn_in(
    spec: &JobSpec,
    work_dir: &Path,
    queue: usize,
    cgroup: Option<JobCgroup>,
) -> std::io::Result<Running> {
    let (tx, rx) = crossbeam_channel::bounded(queue.max(1));
    if spec.builtin.as_deref() == Some("noop") {
        return Ok(Running {
            child: None,
            pgid: None,
            lines: rx,
            open_outputs: 0,
            seq: 0,
            started: Instant::now(),
            done: false,
            cgroup: None,
        });
    }
    let Some((program, args)) = spec.command.split_first() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "a job needs a command",
        ));
    };
    let dir = match &spec.cwd {
        Some(cwd) => work_dir.join(cwd),
        None => work_dir.to_path_buf(),
    };
    let mut cmd = match &cgroup {
        None => {
            let mut c = Command::new(program);
            c.args(args);
            c
        }
        Some(cg) => {
            // A shell joins the cgroup, then becomes the command (no unsafe pre_exec).
            let files: Vec<String> = cg
                .procs_files()
                .iter()
                .map(|f| format!("'{}'", f.display().to_string().replace('\'', "")))
                .collect();
            let script = format!(
                "for f in {}; do echo $$ > \"$f\" || exit 125; done; exec \"$@\"",
                files.join(" ")
            );
            let mut c = Command::new("/bin/sh");
            c.arg("-c")
                .arg(script)
                .arg("valkyrie-job")
                .arg(program)
                .args(args);
            c
        }
    };
    let mut child = cmd
        .envs(&spec.env)
        .envs(&spec.secrets)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()?;
    let pgid = child.id() as i32;
    if let Some(out) = child.stdout.take() {
        read_lines(out, Output::Stdout, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        read_lines(err, Output::Stderr, tx);
    }
    Ok(Running {
        child: Some(child),
        pgid: Some(pgid),
        lines: rx,
        open_outputs: 2,
        seq: 0,
        started: Instant::now(),
        done: false,
        cgroup: cgroup.map(Arc::new),
    })
}

/// A thread reading `from` line by line into `tx` (blocking when it is full).
fn read_lines(from: impl Read + Send + 'static, output: Output, tx: Sender<Raw>) {
    std::thread::Builder::new()
        .name(format!("job-{}", output.as_str()))
        .spawn(move || {
            let mut r = BufReader::with_capacity(MAX_LINE, from);
            let mut buf = Vec::with_capacity(1024);
            loop {
                buf.clear();
                // At most MAX_LINE bytes per piece: a line without an end cannot grow the
                // buffer without bound.
                let n = match (&mut r).take(MAX_LINE as u64).read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let end = if buf.ends_with(b"\n") { n - 1 } else { n };
                let line = String::from_utf8_lossy(&buf[..end]).into_owned();
                if tx.send(Raw::Line(output, line)).is_err() {
                    return;
                }
            }
            let _ = tx.send(Raw::Closed);
        })
        .expect("a reader thread starts");
}

impl Running {
    /// The process group's id (None for a builtin).
    pub fn pgid(&self) -> Option<i32> {
        self.pgid
    }

    /// The next thing the job says, waiting up to `timeout`; `None` when nothing came in
    /// time, and after its `Exited`.
    pub fn next(&mut self, timeout: Duration) -> Option<ExecEvent> {
        if self.done {
            return None;
        }
        let deadline = Instant::now() + timeout;
        while self.open_outputs > 0 {
            match self.lines.recv_deadline(deadline) {
                Ok(Raw::Line(output, line)) => {
                    self.seq += 1;
                    return Some(ExecEvent::Line {
                        seq: self.seq,
                        output,
                        line,
                    });
                }
                Ok(Raw::Closed) => self.open_outputs -= 1,
                Err(RecvTimeoutError::Timeout) => {
                    // The job's process is gone but something it started holds its output
                    // open: in a cgroup, that is ended with it.
                    if let (Some(cg), Some(child)) = (&self.cgroup, &mut self.child)
                        && matches!(child.try_wait(), Ok(Some(_)))
                    {
                        cg.kill_all();
                    }
                    return None;
                }
                Err(RecvTimeoutError::Disconnected) => self.open_outputs = 0,
            }
        }
        // Every line is out: wait for the process itself.
        let (exit_code, signal) = match &mut self.child {
            None => (Some(0), None),
            Some(child) => loop {
                match child.try_wait() {
                    Ok(Some(status)) => break (status.code(), status.signal()),
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Ok(None) => return None,
                    Err(_) => break (None, None),
                }
            },
        };
        self.done = true;
        if let Some(cg) = &self.cgroup {
            // What it left running goes with it.
            cg.kill_all();
        }
        Some(ExecEvent::Exited {
            exit_code,
            signal,
            duration: self.started.elapsed(),
        })
    }

    fn signal(&self, sig: Signal) -> bool {
        match (self.pgid, self.done) {
            (Some(pgid), false) => killpg(Pid::from_raw(pgid), sig).is_ok(),
            _ => false,
        }
    }

    /// Stop the job: its cgroup frozen, or its process group stopped (SIGSTOP). Whether it
    /// was.
    pub fn pause(&self) -> bool {
        if let Some(cg) = &self.cgroup
            && !self.done
            && cg.freeze(true)
        {
            return true;
        }
        self.signal(Signal::SIGSTOP)
    }

    /// Let it go on (thawed, SIGCONT).
    pub fn resume(&self) -> bool {
        if let Some(cg) = &self.cgroup {
            cg.freeze(false);
        }
        self.signal(Signal::SIGCONT)
    }

    /// Ask the group to end (SIGTERM, and SIGCONT so that a paused job can), then end it with
    /// SIGKILL if it is still there after `grace`. Returns at once; the end comes as `Exited`.
    pub fn cancel(&self, grace: Duration) {
        if self.done {
            return;
        }
        // Everything in its cgroup hears it too (what left the process group as well).
        if let Some(cg) = &self.cgroup {
            cg.freeze(false);
            cg.signal(Signal::SIGTERM);
        }
        if !self.signal(Signal::SIGTERM) && self.cgroup.is_none() {
            return;
        }
        self.signal(Signal::SIGCONT);
        let (pgid, cg) = (self.pgid, self.cgroup.clone());
        std::thread::spawn(move || {
            std::thread::sleep(grace);
            // A group already gone makes this fail harmlessly.
            if let Some(pgid) = pgid {
                let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
            }
            if let Some(cg) = cg {
                cg.kill_all();
            }
        });
    }

    /// The cgroup it runs in, when it has one.
    pub fn cgroup(&self) -> Option<&JobCgroup> {
        self.cgroup.as_deref()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A job dropped while it runs is ended, group and all, and reaped.
        if !self.done
            && self.signal(Signal::SIGKILL)
            && let Some(c) = &mut self.child
        {
            let _ = c.wait();
        }
    }
}
