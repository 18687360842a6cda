//! A job's cgroup, where the host offers cgroups: the v1 controllers (memory, pids, cpu,
//! freezer — what this kind of VM mounts) or the v2 unified hierarchy. The job's process is
//! placed in it before it runs its program (a shell writes its own pid into the cgroup, then
//! `exec`s the command: nothing it starts can escape, not even a child that calls `setsid`),
//! the limits from the job's `resources` are set on it, it is frozen to pause the job, and
//! the job is ended through it (every process in it, however it left the process group).
//! Created under the agent's own cgroup in each hierarchy, removed when dropped.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Limits for a job's cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Memory in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU in thousandths of a core.
    pub cpu_millis: Option<u32>,
    /// Processes and threads at most.
    pub pids: Option<u32>,
}

const ROOT: &str = "/sys/fs/cgroup";

/// A job's cgroup: one directory per v1 controller, or one v2 directory.
#[derive(Debug)]
pub struct JobCgroup {
    /// v1: (controller, directory).
    v1: Vec<(&'static str, PathBuf)>,
    /// v2: the directory.
    v2: Option<PathBuf>,
}

/// The agent's own cgroup path in `hierarchy` (`memory`, or `""` for v2), from
/// /proc/self/cgroup.
fn own_path(hierarchy: &str) -> String {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (parts.next(), parts.next(), parts.next());
        let (Some(ctrls), Some(path)) = (ctrls, path) else {
            continue;
        };
        let hit = if hierarchy.is_empty() {
            ctrls.is_empty()
        } else {
            ctrls.split(',').any(|c| c == hierarchy)
        };
        if hit {
            return path.trim_start_matches('/').to_owned();
        }
    }
    String::new()
}

fn write(dir: &Path, file: &str, value: &str) -> std::io::Result<()> {
    std::fs::write(dir.join(file), value)
}

impl JobCgroup {
    /// Make `name`'s cgroup with `limits`; `None` where the host offers none this process
    /// may write.
    pub fn create(name: &str, limits: &Limits) -> Option<JobCgroup> {
        let unified = Path::new(ROOT).join("cgroup.controllers");
        if unified.exists() {
            let dir = Path::new(ROOT).join(own_path("")).join(name);
            std::fs::create_dir_all(&dir).ok()?;
            let cg = JobCgroup {
                v1: Vec::new(),
                v2: Some(dir.clone()),
            };
            if let Some(m) = limits.memory_bytes {
                let _ = write(&dir, "memory.max", &m.to_string());
            }
            if let Some(p) = limits.pids {
                let _ = write(&dir, "pids.max", &p.to_string());
            }
            if let Some(c) = limits.cpu_millis {
                let _ = write(&dir, "cpu.max", &format!("{} 100000", u64::from(c) * 100));
            }
            return Some(cg);
        }
        let mut v1 = Vec::new();
        for ctrl in ["memory", "pids", "cpu", "freezer"] {
            let base = Path::new(ROOT).join(ctrl);
            if !base.join("cgroup.procs").exists() {
                continue;
            }
            let dir = base.join(own_path(ctrl)).join(name);
            if std::fs::create_dir_all(&dir).is_err() {
                continue;
            }
            let set = match ctrl {
                "memory" => limits
                    .memory_bytes
                    .map(|m| write(&dir, "memory.limit_in_bytes", &m.to_string())),
                "pids" => limits.pids.map(|p| write(&dir, "pids.max", &p.to_string())),
                "cpu" => limits.cpu_millis.map(|c| {
                    write(&dir, "cpu.cfs_period_us", "100000").and_then(|()| {
                        write(&dir, "cpu.cfs_quota_us", &(u64::from(c) * 100).to_string())
                    })
                }),
                _ => None,
            };
            if let Some(Err(e)) = set {
                tracing::warn!(cgroup = %dir.display(), error = %e, "a job's limit could not be set");
            }
            v1.push((ctrl, dir));
        }
        (!v1.is_empty()).then_some(JobCgroup { v1, v2: None })
    }

    /// The files a process writes its pid into to join the cgroup.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        match &self.v2 {
            Some(d) => vec![d.join("cgroup.procs")],
            None => self
                .v1
                .iter()
                .map(|(_, d)| d.join("cgroup.procs"))
                .collect(),
        }
    }

    /// The processes in it.
    pub fn pids(&self) -> Vec<i32> {
        let dir = match (&self.v2, self.v1.first()) {
            (Some(d), _) => d.clone(),
            (None, Some((_, d))) => d.clone(),
            _ => return Vec::new(),
        };
        std::fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freeze (`true`) or thaw it. Whether the host could.
    pub fn freeze(&self, on: bool) -> bool {
        if let Some(d) = &self.v2 {
            return write(d, "cgroup.freeze", if on { "1" } else { "0" }).is_ok();
        }
        match self.v1.iter().find(|(c, _)| *c == "freezer") {
            Some((_, d)) => write(d, "freezer.state", if on { "FROZEN" } else { "THAWED" }).is_ok(),
            None => false,
        }
    }

    /// Send `sig` to every process in it.
    pub fn signal(&self, sig: Signal) {
        for pid in self.pids() {
            let _ = kill(Pid::from_raw(pid), sig);
        }
    }

    /// End every process in it (frozen first, so that none forks meanwhile), waiting up to a
    /// second for them to go.
    pub fn kill_all(&self) {
        if self.pids().is_empty() {
            return;
        }
        if let Some(d) = &self.v2
            && write(d, "cgroup.kill", "1").is_ok()
        {
            return;
        }
        let frozen = self.freeze(true);
        self.signal(Signal::SIGKILL);
        if frozen {
            self.freeze(false);
        }
        let t = Instant::now();
        while !self.pids().is_empty() && t.elapsed() < Duration::from_secs(1) {
            self.signal(Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// End and remove every cgroup whose name starts with `prefix` (what an agent killed with
/// SIGKILL left: its jobs' processes and their cgroups). How many there were.
pub fn sweep(prefix: &str) -> usize {
    let mut found: Vec<JobCgroup> = Vec::new();
    let mut names = std::collections::BTreeSet::new();
    if Path::new(ROOT).join("cgroup.controllers").exists() {
        let base = Path::new(ROOT).join(own_path(""));
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && e.path().is_dir() {
                found.push(JobCgroup {
                    v1: Vec::new(),
                    v2: Some(e.path()),
                });
            }
        }
        return found.len();
    }
    for ctrl in ["memory", "pids", "cpu", "freezer"] {
        let base = Path::new(ROOT).join(ctrl).join(own_path(ctrl));
        for e in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && e.path().is_dir() {
                names.insert(name);
            }
        }
    }
    for name in &names {
        let v1 = ["memory", "pids", "cpu", "freezer"]
            .into_iter()
            .map(|c| (c, Path::new(ROOT).join(c).join(own_path(c)).join(name)))
            .filter(|(_, d)| d.is_dir())
            .collect();
        found.push(JobCgroup { v1, v2: None });
    }
    // Dropping them ends what is in them and removes them.
    found.len()
}

/// Remove a cgroup's directory: the kernel may hold it busy for a moment after its last
/// process is gone, so a few tries, 100 ms at most.
fn remove(dir: &Path) {
    for _ in 0..20 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(nix::libc::EBUSY) => {
                std::thread::sleep(Duration::from_millis(5));
            }
            _ => return,
        }
    }
    tracing::warn!(cgroup = %dir.display(), "a job's cgroup stayed busy: left in place");
}

impl Drop for JobCgroup {
    fn drop(&mut self) {
        self.kill_all();
        for (_, d) in &self.v1 {
            remove(d);
        }
        if let Some(d) = &self.v2 {
            remove(d);
        }
    }
}
