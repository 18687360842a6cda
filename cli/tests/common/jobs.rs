//! A control plane and agents as processes, for the jobs tests: started on loopback, each
//! writing its log to a file in the test's directory, killed with SIGKILL when dropped.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{curl, free_port};

/// A process killed (SIGKILL) and reaped when dropped.
pub struct Proc(pub Child);

impl Proc {
    /// SIGKILL now.
    pub fn kill9(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Send `sig` (SIGSTOP, SIGCONT...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.0.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig}");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(args: &[String], log: &Path) -> Proc {
    let out = File::options().create(true).append(true).open(log).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    Proc(child)
}

/// A test's directory: a control plane's data, agents' work directories, logs. Removed
/// when dropped unless the test failed.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
    pub lease_ms: u64,
    /// More flags for the control plane.
    pub plane_args: Vec<String>,
    /// A bearer token for its HTTP API (a secured control plane).
    pub bearer: Option<String>,
    plane: Option<Proc>,
}

/// Submit `spec` through `curl` (a control plane's, with its address and credentials); the
/// job's id.
pub fn submit_with(curl: impl FnOnce(&[&str], &str) -> (u16, Value), spec: &Value) -> String {
    let body = spec.to_string();
    let (code, r) = curl(
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            &body,
        ],
        "/api/v1/jobs",
    );
    assert!(code == 201 || code == 200, "{code} {r}");
    r["job_id"].as_str().unwrap().to_owned()
}

/// A PostgreSQL started for the test; none (the test says SKIPPED) where its server binaries
/// are not installed (`.ci/run` installs them).
pub fn postgres() -> Option<valkyrie_jobs::pg_temp::Pg> {
    let pg = valkyrie_jobs::pg_temp::Pg::start();
    if pg.is_none() {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
    }
    pg
}

impl Cluster {
    /// A control plane named `node` on the PostgreSQL database at `url`.
    pub fn on_postgres(name: &str, lease_ms: u64, url: &str, node: &str) -> Cluster {
        Cluster::start_with(name, lease_ms, |_| {
            vec![
                "--store".into(),
                url.to_owned(),
                "--node-id".into(),
                node.to_owned(),
            ]
        })
    }

    /// A control plane (two shards) on a free port with `lease_ms`.
    pub fn start(name: &str, lease_ms: u64) -> Cluster {
        Cluster::start_with(name, lease_ms, |_| Vec::new())
    }

    /// The same, with more flags for the control plane, made from the test's directory.
    pub fn start_with(
        name: &str,
        lease_ms: u64,
        args: impl FnOnce(&Path) -> Vec<String>,
    ) -> Cluster {
        let dir = std::env::temp_dir().join(format!("valkyrie-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let plane_args = args(&dir);
        let mut c = Cluster {
            dir,
            port: free_port(),
            lease_ms,
            plane_args,
            bearer: None,
            plane: None,
        };
        c.restart_plane();
        c
    }

    /// Start the control plane (again, on the same data and port) and wait until it is ready.
    pub fn restart_plane(&mut self) {
        let mut args = vec![
            "control-plane".to_owned(),
            "--listen".into(),
            format!("tcp://127.0.0.1:{}", self.port),
            "--data".into(),
            self.dir.join("data").display().to_string(),
            "--shards".into(),
            "2".into(),
            "--lease-ms".into(),
            self.lease_ms.to_string(),
        ];
        args.extend(self.plane_args.iter().cloned());
        self.plane = Some(spawn(&args, &self.dir.join("control-plane.log")));
        let deadline = Instant::now() + Duration::from_secs(15);
        while curl(self.port, &[], "/readyz").0 != 200 {
            assert!(
                Instant::now() < deadline,
                "the control plane did not become ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the control plane.
    pub fn kill_plane(&mut self) {
        if let Some(mut p) = self.plane.take() {
            p.kill9();
        }
    }

    /// An agent `id` with `labels` and `slots`, announcing itself every 100 ms.
    pub fn agent(&self, id: &str, labels: &[&str], slots: u32) -> Proc {
        self.agent_to(id, labels, slots, &format!("tcp://127.0.0.1:{}", self.port))
    }

    /// The same, connecting to `urls` (comma-separated, in order).
    pub fn agent_to(&self, id: &str, labels: &[&str], slots: u32, urls: &str) -> Proc {
        self.agent_with(id, labels, slots, urls, &[])
    }

    /// The same, with more flags.
    pub fn agent_with(
        &self,
        id: &str,
        labels: &[&str],
        slots: u32,
        urls: &str,
        more: &[&str],
    ) -> Proc {
        let work = self.dir.join("work").join(id);
        let args = [
            "agent".to_owned(),
            "--connect".into(),
            urls.to_owned(),
            "--id".into(),
            id.into(),
            "--labels".into(),
            labels.join(","),
            "--slots".into(),
            slots.to_string(),
            "--work".into(),
            work.display().to_string(),
            "--heartbeat-ms".into(),
            "100".into(),
            "--grace-ms".into(),
            "500".into(),
        ];
        let args: Vec<String> = args
            .into_iter()
            .chain(more.iter().map(|s| s.to_string()))
            .collect();
        spawn(&args, &self.dir.join(format!("agent-{id}.log")))
    }

    /// curl with the bearer token, when there is one.
    pub fn curl(&self, args: &[&str], path: &str) -> (u16, Value) {
        let auth = self
            .bearer
            .as_ref()
            .map(|t| format!("authorization: Bearer {t}"));
        let mut all: Vec<&str> = Vec::new();
        if let Some(a) = &auth {
            all.extend(["-H", a.as_str()]);
        }
        all.extend_from_slice(args);
        curl(self.port, &all, path)
    }

    /// The raw body of a GET (with the bearer token).
    fn get_text(&self, path: &str) -> String {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "--max-time", "10"]);
        if let Some(t) = &self.bearer {
            cmd.args(["-H", &format!("authorization: Bearer {t}")]);
        }
        let out = cmd
            .arg(format!("http://127.0.0.1:{}{path}", self.port))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Submit `spec`; its id.
    pub fn submit(&self, spec: &Value) -> String {
        submit_with(|args, path| self.curl(args, path), spec)
    }

    /// `POST /api/v1/jobs/{id}/{verb}`: the status and the answer.
    pub fn post(&self, id: &str, verb: &str) -> (u16, Value) {
        self.curl(&["-X", "POST"], &format!("/api/v1/jobs/{id}/{verb}"))
    }

    /// The job as `GET /api/v1/jobs/{id}` shows it.
    pub fn job(&self, id: &str) -> Value {
        let (code, j) = self.curl(&[], &format!("/api/v1/jobs/{id}"));
        assert_eq!(code, 200, "{j}");
        j
    }

    /// Wait (up to `secs`) until the job's state is `state`; the job then.
    pub fn wait_state(&self, id: &str, state: &str, secs: u64) -> Value {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let (code, j) = self.curl(&[], &format!("/api/v1/jobs/{id}"));
            if code == 200 && j["state"] == state {
                return j;
            }
            assert!(
                Instant::now() < deadline,
                "job {id} is not {state} after {secs} s: {j}"
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// Every job in `state`.
    pub fn count(&self, state: &str) -> usize {
        let (code, j) = self.curl(&[], &format!("/api/v1/jobs?state={state}&limit=1000"));
        assert_eq!(code, 200, "{j}");
        j["jobs"].as_array().unwrap().len()
    }

    /// The job's stored output, parsed.
    pub fn logs(&self, id: &str) -> Vec<Value> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!(
                "http://127.0.0.1:{}/api/v1/jobs/{id}/logs",
                self.port
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    /// The control plane's `/metrics`, as text.
    pub fn metrics(&self) -> String {
        self.get_text("/metrics")
    }

    /// The agents as `GET /api/v1/agents` shows them.
    pub fn agents(&self) -> Vec<Value> {
        let (code, j) = self.curl(&[], "/api/v1/agents");
        assert_eq!(code, 200, "{j}");
        j["agents"].as_array().unwrap().clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kill_plane();
        // The agents were killed: what their jobs left in cgroups goes too.
        for e in std::fs::read_dir(self.dir.join("work"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let mut cfg =
                valkyrie_jobs::agent::AgentConfig::new("", ["tcp://127.0.0.1:1"], e.path());
            cfg.id = e.file_name().to_string_lossy().into_owned();
            valkyrie_jobs::cgroup::sweep(&cfg.cgroup_prefix());
        }
        if std::thread::panicking() {
            eprintln!("logs kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The lines of a job's output that `stream` carried, in order.
pub fn lines_of(logs: &[Value], stream: &str) -> Vec<String> {
    logs.iter()
        .filter(|l| l["stream"] == stream)
        .map(|l| l["line"].as_str().unwrap().to_owned())
        .collect()
}

/// Line numbers run 1, 2, 3... without gap or duplicate.
pub fn assert_numbered(logs: &[Value]) {
    for (i, l) in logs.iter().enumerate() {
        assert_eq!(l["seq"].as_u64(), Some(i as u64 + 1), "line {i}: {l}");
    }
}
