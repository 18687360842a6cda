//! The control plane and its agents as a user runs them (`valkyrie control-plane`,
//! `valkyrie agent`), driven through the REST API: jobs dispatched by labels, slots and
//! concurrency groups; output complete and in order; retries with backoff, timeouts,
//! cancel, pause and resume; idempotent resubmission; the agents list; a followed log.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

mod common;

use common::jobs::{Cluster, assert_numbered, lines_of};

#[test]
fn jobs_run_on_agents_with_their_output_complete_and_in_order() {
    let c = Cluster::start("jobs-run", 2000);
    let _a = c.agent("a", &["linux"], 2);
    let _b = c.agent("b", &["linux", "gpu"], 2);
    let printer = c.submit(&json!({
        "command": ["sh", "-c", "for i in $(seq 1 500); do echo out $i; echo err $i >&2; done"],
        "labels": ["linux"],
    }));
    let gpu = c.submit(
        &json!({"command": ["sh", "-c", "echo $WHO"], "labels": ["gpu"],
                               "env": {"WHO": "on the gpu box"}}),
    );
    let noop = c.submit(&json!({"builtin": "noop"}));
    // A job says how far it is on its standard output.
    let progressing = c.submit(&json!({
        "command": ["sh", "-c", "echo ::progress::40 compiling; sleep 0.5; echo ::progress::100 linked"],
    }));
    let job = c.wait_state(&printer, "succeeded", 30);
    assert_eq!(job["exit_code"], 0);
    let logs = c.logs(&printer);
    assert_eq!(logs.len(), 1000);
    assert_numbered(&logs);
    let want = |p: &str| (1..=500).map(|i| format!("{p} {i}")).collect::<Vec<_>>();
    assert_eq!(lines_of(&logs, "stdout"), want("out"));
    assert_eq!(lines_of(&logs, "stderr"), want("err"));
    let job = c.wait_state(&gpu, "succeeded", 30);
    assert_eq!(
        job["attempts"][0]["agent"], "b",
        "only b has the gpu label: {job}"
    );
    assert_eq!(lines_of(&c.logs(&gpu), "stdout"), ["on the gpu box"]);
    c.wait_state(&noop, "succeeded", 30);
    let mut seen_40 = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j = c.job(&progressing);
        seen_40 |= j["progress"]["percent"] == 40;
        if j["state"] == "succeeded" {
            break j;
        }
        assert!(Instant::now() < deadline, "{j}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(seen_40, "the first progress was shown while it ran");
    assert_eq!(
        job["progress"],
        json!({"percent": 100, "message": "linked"})
    );
    let attempt = &c.job(&printer)["attempts"][0];
    assert_eq!(attempt["state"], "succeeded");
    assert!(attempt["started_at"].as_u64().is_some() && attempt["ended_at"].as_u64().is_some());
    // The agents list.
    let agents = c.agents();
    let ids: Vec<&str> = agents.iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["a", "b"]);
    assert!(
        agents
            .iter()
            .all(|a| a["connected"] == true && a["slots"] == 2),
        "{agents:?}"
    );
    // A job nobody can run waits, queued.
    let nowhere = c.submit(&json!({"command": ["true"], "labels": ["arm64"]}));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(c.job(&nowhere)["state"], "queued");
    // The control plane's metrics beside the node's.
    let m = c.metrics();
    let value = |series: &str| -> f64 {
        let line = m
            .lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no {series} in\n{m}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value("valkyrie_jobs_total{state=\"queued\"}"), 5.0);
    assert_eq!(value("valkyrie_jobs_total{state=\"succeeded\"}"), 4.0);
    assert_eq!(value("valkyrie_jobs_queued"), 1.0);
    assert_eq!(value("valkyrie_agents_connected"), 2.0);
    assert_eq!(value("valkyrie_log_lines_total"), 1003.0);
    assert_eq!(value("valkyrie_job_assignment_seconds_count"), 4.0);
    assert!(
        m.contains("valkyrie_connections_active"),
        "the node's own are there too"
    );
}

#[test]
fn retries_timeouts_cancel_pause_and_resume() {
    let c = Cluster::start("jobs-ops", 2000);
    let _a = c.agent("a", &[], 4);
    // A job that fails is retried with backoff, up to its attempts.
    let flaky = c.submit(&json!({"command": ["sh", "-c", "echo try; exit 3"],
                                 "max_attempts": 3, "backoff_ms": 100}));
    // A timeout ends it once, not retried.
    let slow = c.submit(&json!({"command": ["sleep", "30"], "timeout_ms": 300, "max_attempts": 3}));
    let job = c.wait_state(&flaky, "failed", 30);
    let attempts = job["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "{job}");
    assert!(
        attempts
            .iter()
            .all(|a| a["exit_code"] == 3 && a["state"] == "failed")
    );
    // Backoff: 100 ms, then 200 ms, between the attempts.
    let gap = |i: usize| {
        attempts[i + 1]["started_at"].as_u64().unwrap() - attempts[i]["ended_at"].as_u64().unwrap()
    };
    assert!(
        gap(0) >= 100 && gap(1) >= 200,
        "gaps {} and {} ms",
        gap(0),
        gap(1)
    );
    assert_eq!(job["exit_code"], 3);
    assert_eq!(lines_of(&c.logs(&flaky), "stdout"), ["try", "try", "try"]);
    let job = c.wait_state(&slow, "timed_out", 30);
    assert_eq!(job["attempts"].as_array().unwrap().len(), 1);

    // Cancel a running job: its process group ends.
    let sleeper = c.submit(&json!({"command": ["sleep", "60"]}));
    c.wait_state(&sleeper, "running", 30);
    let (code, r) = c.post(&sleeper, "cancel");
    assert_eq!(code, 202, "{r}");
    let job = c.wait_state(&sleeper, "cancelled", 30);
    assert_eq!(job["attempts"][0]["state"], "cancelled");

    // Pause and resume: nothing is written while paused, and the paused time is not held
    // against its timeout.
    let ticker = c.submit(&json!({
        "command": ["sh", "-c", "for i in $(seq 1 20); do echo tick $i; sleep 0.05; done"],
        "timeout_ms": 3000,
    }));
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.logs(&ticker).len() < 3 {
        assert!(Instant::now() < deadline, "the ticker did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (code, r) = c.post(&ticker, "pause");
    assert_eq!((code, r["state"].as_str()), (200, Some("paused")), "{r}");
    std::thread::sleep(Duration::from_millis(300));
    let held = c.logs(&ticker).len();
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(c.logs(&ticker).len(), held, "it wrote while paused");
    assert_eq!(c.job(&ticker)["state"], "paused");
    let (code, r) = c.post(&ticker, "resume");
    assert_eq!((code, r["state"].as_str()), (200, Some("running")), "{r}");
    c.wait_state(&ticker, "succeeded", 30);
    let logs = c.logs(&ticker);
    assert_numbered(&logs);
    assert_eq!(logs.len(), 20);
    let (code, _) = c.post(&ticker, "cancel");
    assert_eq!(code, 409, "a job that is over is not cancelled");
}

#[test]
fn slots_groups_and_idempotent_submission() {
    let c = Cluster::start("jobs-groups", 2000);
    let _a = c.agent("a", &[], 3);
    let spec = json!({"command": ["sh", "-c", "sleep 0.2"], "concurrency_group": "deploy-prod"});
    let group: Vec<String> = (0..4).map(|_| c.submit(&spec)).collect();
    let free: Vec<String> = (0..6)
        .map(|_| c.submit(&json!({"command": ["sh", "-c", "sleep 0.2"]})))
        .collect();
    // Submitting with a key twice gives the first job back.
    let keyed = json!({"builtin": "noop", "idempotency_key": "release-7"});
    let first = c.submit(&keyed);
    assert_eq!(c.submit(&keyed), first);
    let span = |id: &String| {
        let j = c.wait_state(id, "succeeded", 60);
        let a = &j["attempts"][0];
        (
            a["started_at"].as_u64().unwrap(),
            a["ended_at"].as_u64().unwrap(),
        )
    };
    let mut spans: Vec<(u64, u64)> = group.iter().map(span).collect();
    spans.sort();
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "two jobs of one group overlapped: {spans:?}"
        );
    }
    // Never more than the agent's three slots at once.
    let mut all: Vec<(u64, u64)> = free.iter().map(span).chain(spans).collect();
    all.sort();
    for (i, (start, _)) in all.iter().enumerate() {
        let running = all[..i].iter().filter(|(_, end)| end > start).count() + 1;
        assert!(running <= 3, "{running} at once: {all:?}");
    }
    assert_eq!(
        c.wait_state(&first, "succeeded", 30)["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[test]
fn a_followed_log_streams_until_the_job_ends() {
    let c = Cluster::start("jobs-follow", 2000);
    let _a = c.agent("a", &[], 1);
    let id = c.submit(&json!({
        "command": ["sh", "-c", "for i in $(seq 1 30); do echo line $i; sleep 0.02; done"],
    }));
    let base = format!("http://127.0.0.1:{}", c.port);
    let out = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["job", "logs", &base, &id, "--follow"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len(),
        30,
        "the follow ended with the job, every line in it"
    );
    assert_numbered(&lines);
    assert_eq!(c.job(&id)["state"], "succeeded");
    // From a line on.
    let out = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["job", "logs", &base, &id, "--from", "28"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
}

#[test]
fn migrate_moves_a_running_job_and_pins_a_queued_one() {
    let c = Cluster::start("jobs-migrate", 2000);
    let _a = c.agent("a", &[], 1);
    let long = |tag: &str| json!({"command": ["sh", "-c", format!("echo {tag}; sleep 60")]});
    let moved = c.submit(&long("moved"));
    let job = c.wait_state(&moved, "running", 30);
    assert_eq!(job["attempts"][0]["agent"], "a");
    let _b = c.agent("b", &[], 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.agents().len() < 2 {
        assert!(Instant::now() < deadline, "b did not come");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Running on a: stopped there, a new attempt on b.
    let (code, r) = curl_post(&c, &moved, "migrate", r#"{"agent": "b"}"#);
    assert_eq!(code, 202, "{r}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let job = loop {
        let j = c.job(&moved);
        if j["attempts"].as_array().unwrap().len() == 2 && j["state"] == "running" {
            break j;
        }
        assert!(Instant::now() < deadline, "not moved: {j}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(job["attempts"][0]["state"], "cancelled");
    assert_eq!(job["attempts"][0]["reason"], "migrated");
    assert_eq!(job["attempts"][1]["agent"], "b");
    // Both agents busy; a queued job pinned to a waits for a, not for the first free slot.
    let other = c.submit(&long("other"));
    c.wait_state(&other, "running", 30);
    let pinned = c.submit(&json!({"command": ["true"]}));
    let (code, r) = curl_post(&c, &pinned, "migrate", r#"{"agent": "a"}"#);
    assert_eq!((code, r["state"].as_str()), (200, Some("queued")), "{r}");
    let on_b = if c.job(&other)["attempts"][0]["agent"] == "b" {
        &other
    } else {
        &moved
    };
    let on_a = if on_b == &other { &moved } else { &other };
    assert_eq!(c.post(on_b, "cancel").0, 202);
    c.wait_state(on_b, "cancelled", 30);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        c.job(&pinned)["state"],
        "queued",
        "b is free, but the job is a's"
    );
    assert_eq!(c.post(on_a, "cancel").0, 202);
    let job = c.wait_state(&pinned, "succeeded", 30);
    assert_eq!(job["attempts"][0]["agent"], "a");
    assert_eq!(
        curl_post(&c, &pinned, "migrate", "").0,
        409,
        "a job that is over stays"
    );
    assert_eq!(curl_post(&c, &pinned, "migrate", "{\"agnet\": 1}").0, 400);
}

/// `POST /api/v1/jobs/{id}/{verb}` with a JSON body.
fn curl_post(c: &Cluster, id: &str, verb: &str, body: &str) -> (u16, serde_json::Value) {
    common::curl(
        c.port,
        &[
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "-d",
            body,
        ],
        &format!("/api/v1/jobs/{id}/{verb}"),
    )
}

#[test]
fn an_agent_fails_over_to_the_next_url() {
    let c = Cluster::start("jobs-failover", 2000);
    let dead = common::free_port();
    let urls = format!("tcp://127.0.0.1:{dead},tcp://127.0.0.1:{}", c.port);
    let _a = c.agent_to("a", &[], 1, &urls);
    let id = c.submit(&json!({"command": ["echo", "reached"]}));
    let job = c.wait_state(&id, "succeeded", 30);
    assert_eq!(job["attempts"][0]["agent"], "a");
    assert_eq!(lines_of(&c.logs(&id), "stdout"), ["reached"]);
}
