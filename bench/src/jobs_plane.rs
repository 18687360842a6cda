//! A control plane and its agents in this process, for the jobs scenarios: a fresh store
//! (SQLite in a directory of its own, or a new database on a PostgreSQL), jobs submitted
//! through it before the control plane starts, agents as nodes of their own, and a
//! keep-alive HTTP client for the REST API.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use valkyrie_jobs::agent::{Agent, AgentConfig};
use valkyrie_jobs::{
    Change, Committer, ControlConfig, ControlPlane, JobSpec, JobState, SqliteStore, job_id,
};
use valkyrie_runtime::Node;

/// A control plane on a fresh store in a directory of its own (removed when dropped).
pub(crate) struct Plane {
    pub(crate) node: Option<Node>,
    pub(crate) cp: ControlPlane,
    pub(crate) store: Arc<Committer>,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
    /// Notices from the other control planes on its database.
    pub(crate) listener: Option<valkyrie_jobs::notice::Listener>,
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.node.take();
        // What the agents' jobs left in cgroups (a job thread still ending as its agent went).
        for i in 0..4 {
            let work = self.dir.join(format!("work-{i}"));
            let cfg = AgentConfig::new(&format!("agent-{i}"), ["tcp://127.0.0.1:1"], work);
            valkyrie_jobs::cgroup::sweep(&cfg.cgroup_prefix());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Which store a round runs on.
#[derive(Clone, Copy)]
pub(crate) enum Backend<'a> {
    Sqlite,
    /// A fresh database on this server for each plane.
    Postgres(&'a valkyrie_jobs::pg_temp::Pg),
}

/// A fresh store of `backend` in `dir` (a new database for PostgreSQL).
pub(crate) fn open_store(backend: Backend<'_>, dir: &std::path::Path) -> Committer {
    match backend {
        Backend::Sqlite => Committer::spawn(
            SqliteStore::open(&dir.join("jobs.db")).expect("store"),
            65_536,
        ),
        Backend::Postgres(pg) => {
            static DB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let url = pg.database(&format!("bench_{n}"));
            Committer::spawn(
                valkyrie_jobs::PgStore::connect(&url).expect("store"),
                65_536,
            )
        }
    }
}

/// `n` jobs of `spec` in a fresh store; a control plane started on it afterwards.
pub(crate) fn plane(tag: &str, spec: &JobSpec, n: usize) -> Plane {
    plane_on(Backend::Sqlite, tag, spec, n)
}

/// The same on `backend`.
pub(crate) fn plane_on(backend: Backend<'_>, tag: &str, spec: &JobSpec, n: usize) -> Plane {
    let dir = fresh_dir(tag);
    let store = Arc::new(open_store(backend, &dir));
    submit_all(&store, spec, n, 0);
    start_plane(dir, store, "control-plane")
}

/// A new, empty directory for `tag`.
pub(crate) fn fresh_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "valkyrie-bench-jobs-{tag}-{}-{}",
        std::process::id(),
        now_ms()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench dir");
    dir
}

/// A control plane `node_id` (one shard) on `store`, listening on a loopback port.
pub(crate) fn start_plane(dir: PathBuf, store: Arc<Committer>, node_id: &str) -> Plane {
    let cp = ControlPlane::new(
        store.clone(),
        ControlConfig {
            node_id: node_id.to_owned(),
            lease: LEASE,
            ..ControlConfig::default()
        },
    );
    let service = cp.clone();
    let node = Node::builder()
        .listen("tcp://127.0.0.1:0")
        .expect("endpoint")
        .shards(1)
        .pin(false)
        .collector(cp.collector())
        .service(move |shard| service.service(shard))
        .start()
        .expect("control plane");
    let port = node
        .url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    Plane {
        node: Some(node),
        cp,
        store,
        dir,
        port,
        listener: None,
    }
}

/// The control planes' lease in the benchmarks (long: a busy host must not lose agents).
pub(crate) const LEASE: Duration = Duration::from_secs(10);

/// Submit `n` jobs of `spec` through the store (pipelined); wait until all are durable.
pub(crate) fn submit_all(store: &Committer, spec: &JobSpec, n: usize, base: u32) {
    let (tx, rx) = crossbeam_channel::unbounded();
    for i in 0..n {
        let tx = tx.clone();
        let change = Change::Submit {
            job_id: job_id(now_ms(), base + i as u32),
            spec: Box::new(spec.clone()),
            at: now_ms(),
        };
        store
            .change(change, move |r| {
                let _ = tx.send(r.is_ok());
            })
            .expect("store");
    }
    for _ in 0..n {
        assert!(rx.recv().expect("reply"), "a submission failed");
    }
}

/// `n` agents of `slots` slots each, connected to `plane` (jobs in cgroups where the host
/// offers them).
pub(crate) fn agents(plane: &Plane, n: usize, slots: u32) -> Vec<Node> {
    agents_with(plane, n, slots, true)
}

/// The same, choosing whether jobs get cgroups.
pub(crate) fn agents_with(plane: &Plane, n: usize, slots: u32, cgroups: bool) -> Vec<Node> {
    agents_at(plane, 0..n, slots, cgroups)
}

/// Agents numbered `ids`, connected to `plane`.
pub(crate) fn agents_at(
    plane: &Plane,
    ids: std::ops::Range<usize>,
    slots: u32,
    cgroups: bool,
) -> Vec<Node> {
    ids.map(|i| {
        let mut cfg = AgentConfig::new(
            &format!("agent-{i}"),
            [format!("tcp://127.0.0.1:{}", plane.port)],
            plane.dir.join(format!("work-{i}")),
        );
        cfg.slots = slots;
        cfg.cgroups = cgroups;
        let agent = Agent::new(cfg);
        Node::builder()
            .without_listeners()
            .shards(1)
            .pin(false)
            .service(move |s| agent.service(s))
            .start()
            .expect("agent")
    })
    .collect()
}

/// Wait until `n` jobs ended `state` (or `limit` passes: then false).
pub(crate) fn wait_for(cp: &ControlPlane, state: JobState, n: u64, limit: Duration) -> bool {
    let t = Instant::now();
    while cp.count(state) < n {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// Wait until `n` jobs ended `state` across `cps` (or `limit` passes: then false).
pub(crate) fn wait_for_all(
    cps: &[&ControlPlane],
    state: JobState,
    n: u64,
    limit: Duration,
) -> bool {
    let t = Instant::now();
    while cps.iter().map(|cp| cp.count(state)).sum::<u64>() < n {
        if t.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    true
}

/// A keep-alive HTTP/1.1 connection.
pub(crate) struct Http {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Http {
    pub(crate) fn connect(port: u16) -> Http {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_nodelay(true).expect("nodelay");
        Http {
            s,
            buf: Vec::with_capacity(64 * 1024),
        }
    }

    /// One request; the status and the body.
    pub(crate) fn call(&mut self, method: &str, path: &str, body: &str) -> (u16, Vec<u8>) {
        write!(
            self.s,
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .expect("write");
        self.buf.clear();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = self.s.read(&mut chunk).expect("read");
            assert!(n > 0, "the control plane closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head)) = resp.parse(&self.buf) {
                let len = resp
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                    .unwrap_or(0usize);
                if self.buf.len() >= head + len {
                    let status = resp.code.unwrap_or(0);
                    return (status, self.buf[head..head + len].to_vec());
                }
            }
        }
    }
}
