//! The `jobs` scenario: the control plane and its agents in this process, on the durable
//! store (SQLite, WAL, `synchronous=FULL`, in a temporary directory), beside the store's own
//! floor in the same round.
//!
//! - `jobs_per_sec`: built-in no-op jobs queued in the store, then two agents connect; from
//!   their start to the last outcome committed (each job assigned and ended: two commits, and
//!   a JOB_REQUEST, JOB_ACCEPT and JOB_COMPLETE with its answer). Beside it, `true` processes spawned by the agents.
//! - `assignment_p99`: jobs submitted through `POST /api/v1/jobs` (keep-alive, a few
//!   connections) at a tenth of the no-op rate; submission to the agent's JOB_ACCEPT.
//! - `log_lines_per_sec`: one job writing lines as fast as `seq` does; from its submission to
//!   its success, which comes only once every line is stored and acknowledged.
//! - `log_latency_p99`: a job writing its clock every 2 ms; the bench polls
//!   `GET /api/v1/jobs/{id}/logs?from=N` on a keep-alive connection and takes the time from
//!   the line's stamp to the line read back.
//! - The floor (`sqlite`): the same state changes (a no-op job's assignment and end, the jobs
//!   submitted beforehand as the dispatch figure's are) and the same log batches, through the
//!   same group-commit thread, from one client, no network.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::json;
use valkyrie_jobs::{Applied, Change, Committer, JobSpec, JobState, LogLine, SqliteStore, job_id};

use valkyrie_jobs::ControlPlane;

use crate::jobs_plane::{
    Backend, Http, Plane, agents, agents_with, now_ms, open_store, plane, plane_on, submit_all,
    wait_for, wait_for_all,
};
use crate::report::{Report, median, progress};

/// Jobs per second: `n` jobs of `spec` queued, then two agents of `slots` each.
fn dispatch_rate(spec: &JobSpec, n: usize, slots: u32, cgroups: bool) -> f64 {
    dispatch_rate_on(Backend::Sqlite, spec, n, slots, cgroups)
}

/// The same on `backend`.
pub(crate) fn dispatch_rate_on(
    backend: Backend<'_>,
    spec: &JobSpec,
    n: usize,
    slots: u32,
    cgroups: bool,
) -> f64 {
    let p = plane_on(backend, "rate", spec, n);
    let t = Instant::now();
    let _agents = agents_with(&p, 2, slots, cgroups);
    assert!(
        wait_for(
            &p.cp,
            JobState::Succeeded,
            n as u64,
            Duration::from_secs(120)
        ),
        "{} of {n} jobs done",
        p.cp.count(JobState::Succeeded)
    );
    n as f64 / t.elapsed().as_secs_f64()
}

/// Submission → JOB_ACCEPT at `rate` jobs/s for `secs`, over four connections: the p99, µs,
/// and the rate reached.
fn assignment(rate: f64, secs: f64) -> (f64, f64) {
    let p = plane("assign", &JobSpec::default(), 0);
    let _agents = agents(&p, 2, 256);
    std::thread::sleep(Duration::from_millis(200));
    assignment_on(&[&p], rate, secs)
}

/// The same through `planes` (agents connected): the four connections spread over them.
pub(crate) fn assignment_on(planes: &[&Plane], rate: f64, secs: f64) -> (f64, f64) {
    let conns = 4;
    let per = rate / conns as f64;
    let total = (rate * secs) as usize;
    let t = Instant::now();
    std::thread::scope(|s| {
        for c in 0..conns {
            let port = planes[c % planes.len()].port;
            s.spawn(move || {
                let mut h = Http::connect(port);
                let gap = Duration::from_secs_f64(1.0 / per);
                let start = Instant::now() + gap.mul_f64(c as f64 / conns as f64);
                for i in 0..total / conns {
                    let at = start + gap.mul_f64(i as f64);
                    if let Some(d) = at.checked_duration_since(Instant::now()) {
                        std::thread::sleep(d);
                    }
                    let (status, _) = h.call("POST", "/api/v1/jobs", r#"{"builtin":"noop"}"#);
                    assert_eq!(status, 201);
                }
            });
        }
    });
    let n = (total / conns * conns) as u64;
    let cps: Vec<&ControlPlane> = planes.iter().map(|p| &p.cp).collect();
    assert!(wait_for_all(
        &cps,
        JobState::Succeeded,
        n,
        Duration::from_secs(60)
    ));
    let reached = n as f64 / t.elapsed().as_secs_f64();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    for us in cps.iter().flat_map(|cp| cp.assignment_samples()) {
        h.saturating_record(us);
    }
    if std::env::var_os("VALKYRIE_BENCH_VERBOSE").is_some() {
        eprintln!(
            "  assignment ({} nodes): p50 {} p90 {} p99 {} max {} us over {}",
            planes.len(),
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.9),
            h.value_at_quantile(0.99),
            h.max(),
            h.len()
        );
    }
    (h.value_at_quantile(0.99) as f64, reached)
}

/// Lines per second stored from one job writing `n` lines (in a cgroup of its own, or not).
fn log_rate(n: usize, cgroups: bool) -> f64 {
    let spec = JobSpec {
        command: vec!["seq".into(), "1".into(), n.to_string()],
        max_attempts: 1,
        ..JobSpec::default()
    };
    let p = plane("logs", &spec, 1);
    let t = Instant::now();
    let _agents = agents_with(&p, 1, 1, cgroups);
    assert!(wait_for(
        &p.cp,
        JobState::Succeeded,
        1,
        Duration::from_secs(300)
    ));
    assert_eq!(p.cp.log_lines(), n as u64, "every line stored once");
    n as f64 / t.elapsed().as_secs_f64()
}

/// A job writing its clock (ns) every 2 ms, `lines` times; the p99 from a line's stamp to
/// its reading back through the REST API, µs.
fn log_latency(lines: usize) -> f64 {
    let spec = JobSpec {
        command: vec![
            "sh".into(),
            "-c".into(),
            format!("for i in $(seq 1 {lines}); do date +%s%N; sleep 0.002; done"),
        ],
        max_attempts: 1,
        ..JobSpec::default()
    };
    let p = plane("latency", &spec, 1);
    let _agents = agents(&p, 1, 1);
    let id = p
        .store
        .read(|s| s.jobs(None, 1, None))
        .expect("store")
        .expect("read")[0]
        .job_id
        .clone();
    let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
    let mut http = Http::connect(p.port);
    let mut next = 1u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while (next as usize) <= lines && Instant::now() < deadline {
        let (status, body) = http.call("GET", &format!("/api/v1/jobs/{id}/logs?from={next}"), "");
        assert_eq!(status, 200);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for l in String::from_utf8_lossy(&body).lines() {
            let v: serde_json::Value = serde_json::from_str(l).expect("ndjson");
            if let Some(stamp) = v["line"]
                .as_str()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                h.saturating_record(now.saturating_sub(stamp) / 1000);
            }
            next = v["seq"].as_u64().unwrap_or(next) + 1;
        }
    }
    h.value_at_quantile(0.99) as f64
}

/// The store's floor: what a no-op job commits on its way — its claim (512 at a time), its
/// assignment and its end — for `n` jobs already submitted (as the dispatch figure's are),
/// through the group-commit thread from one client, pipelined; jobs per second.
pub(crate) fn store_jobs_floor(backend: Backend<'_>, n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("valkyrie-bench-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = open_store(backend, &dir);
    let noop = JobSpec {
        builtin: Some("noop".into()),
        max_attempts: 1,
        ..JobSpec::default()
    };
    let base = 1u32 << 20;
    submit_all(&store, &noop, n, base);
    let ids: Vec<String> = store
        .read(move |s| s.queued(n))
        .expect("store")
        .expect("read")
        .into_iter()
        .map(|j| j.job_id)
        .collect();
    assert_eq!(ids.len(), n);
    let t = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    let send = |c: Change| {
        let tx = tx.clone();
        store
            .change(c, move |r| {
                let _ = tx.send(r);
            })
            .expect("store");
    };
    // As a control plane does: claim what its agents have room for, then assign and end.
    let mut claims = 0;
    for chunk in ids.chunks(512) {
        send(Change::Claim {
            limit: chunk.len(),
            at: now_ms(),
        });
        claims += 1;
        for id in chunk {
            send(Change::Assign {
                job_id: id.clone(),
                agent: "a".into(),
                at: now_ms(),
            });
            send(Change::End {
                job_id: id.clone(),
                epoch: 1,
                state: JobState::Succeeded,
                exit_code: Some(0),
                signal: None,
                reason: None,
                at: now_ms(),
            });
        }
    }
    for _ in 0..n * 2 + claims {
        let r = rx.recv().expect("reply").expect("commit");
        assert!(
            !matches!(r, Applied::NotFound | Applied::Refused { .. }),
            "{r:?}"
        );
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

/// The store's floor for output: `n` lines in batches of 1,024 for one job; lines per second.
fn store_log_floor(n: usize) -> f64 {
    let dir = std::env::temp_dir().join(format!("valkyrie-bench-lfloor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let store = Committer::spawn(
        SqliteStore::open(&dir.join("jobs.db")).expect("store"),
        65_536,
    );
    let id = job_id(now_ms(), 0);
    let spec = JobSpec {
        command: vec!["seq".into()],
        max_attempts: 1,
        ..JobSpec::default()
    };
    store
        .apply(Change::Submit {
            job_id: id.clone(),
            spec: Box::new(spec),
            at: 0,
        })
        .expect("submit");
    store
        .apply(Change::Assign {
            job_id: id.clone(),
            agent: "a".into(),
            at: 0,
        })
        .expect("assign");
    let t = Instant::now();
    let (tx, rx) = crossbeam_channel::unbounded();
    let mut seq = 1u64;
    let mut batches = 0;
    while (seq as usize) <= n {
        let k = 1024.min(n + 1 - seq as usize);
        let lines = (seq..seq + k as u64)
            .map(|i| LogLine {
                stream: "stdout".into(),
                line: i.to_string(),
            })
            .collect();
        let tx = tx.clone();
        store
            .change(
                Change::Log {
                    job_id: id.clone(),
                    epoch: 1,
                    first_seq: seq,
                    lines,
                },
                move |r| {
                    let _ = tx.send(r);
                },
            )
            .expect("store");
        seq += k as u64;
        batches += 1;
    }
    for _ in 0..batches {
        rx.recv().expect("reply").expect("commit");
    }
    let rate = n as f64 / t.elapsed().as_secs_f64();
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    rate
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, scale: f64) {
    let n = (20_000.0 * scale) as usize;
    let n_true = (500.0 * scale) as usize;
    let lines = (1_000_000.0 * scale) as usize;
    println!(
        "\njobs: control plane + agents in this process on the durable store (SQLite WAL, synchronous=FULL); {n} no-op jobs, {n_true} `true` jobs, {lines} log lines, x {rounds} rounds, medians"
    );
    let bar = progress(rounds as u64, "jobs");
    let noop = JobSpec {
        builtin: Some("noop".into()),
        max_attempts: 1,
        ..JobSpec::default()
    };
    let truth = JobSpec {
        command: vec!["true".into()],
        max_attempts: 1,
        ..JobSpec::default()
    };
    let mut m: [Vec<f64>; 10] = Default::default();
    for _ in 0..rounds {
        let rate = dispatch_rate(&noop, n, 512, true);
        m[0].push(rate);
        m[1].push(store_jobs_floor(Backend::Sqlite, n));
        m[2].push(dispatch_rate(&truth, n_true, 4, true));
        m[8].push(dispatch_rate(&truth, n_true, 4, false));
        let (p99, reached) = assignment(rate / 10.0, 2.0 * scale.max(1.0));
        m[3].push(p99);
        m[4].push(reached);
        m[5].push(log_rate(lines, true));
        m[9].push(log_rate(lines, false));
        m[6].push(store_log_floor(lines));
        m[7].push(log_latency(500));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let med: Vec<f64> = m.iter().map(|v| median(v.clone())).collect();
    let p = |job: &str| json!({"store": "sqlite", "nodes": 1, "agents": 2, "job": job});
    report.add(
        "jobs",
        "valkyrie",
        "jobs_per_sec",
        "jobs/s",
        med[0],
        p("noop"),
    );
    report.add(
        "jobs",
        "sqlite",
        "jobs_per_sec",
        "jobs/s",
        med[1],
        p("noop"),
    );
    report.add(
        "jobs",
        "valkyrie",
        "jobs_per_sec",
        "jobs/s",
        med[2],
        p("true"),
    );
    let mut ap = p("noop");
    ap["rate"] = json!(med[4].round());
    report.add("jobs", "valkyrie", "assignment_p99", "us", med[3], ap);
    let lp = json!({"store": "sqlite", "nodes": 1, "agents": 1, "job": "seq"});
    report.add(
        "jobs",
        "valkyrie",
        "log_lines_per_sec",
        "lines/s",
        med[5],
        lp.clone(),
    );
    report.add(
        "jobs",
        "sqlite",
        "log_lines_per_sec",
        "lines/s",
        med[6],
        lp.clone(),
    );
    report.add("jobs", "valkyrie", "log_latency_p99", "us", med[7], lp);
    println!(
        "  no-op jobs/s      {:>12.0}   (store floor {:>10.0}: {:.2} of it)",
        med[0],
        med[1],
        med[0] / med[1]
    );
    println!(
        "  `true` jobs/s     {:>12.0}   (each in a cgroup of its own; {:.0} without)",
        med[2], med[8]
    );
    println!(
        "  assignment p99    {:>12.0} us at {:.0} jobs/s (a tenth of the no-op rate)",
        med[3], med[4]
    );
    println!(
        "  log lines/s       {:>12.0}   (store floor {:>10.0}: {:.2} of it; {:.0} without a cgroup)",
        med[5],
        med[6],
        med[5] / med[6],
        med[9]
    );
    println!(
        "  log latency p99   {:>12.0} us (written by the job -> read back over REST)",
        med[7]
    );
}
