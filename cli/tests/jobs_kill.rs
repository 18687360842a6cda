//! Nothing lost when things die, each bounded in time: an agent killed with SIGKILL mid-run
//! (its jobs run again elsewhere, their output complete and in order, the killed attempts
//! recorded); the control plane killed with SIGKILL mid-run and started again on its data
//! (no job lost, no outcome recorded twice, every line once and in order, agents back by
//! themselves); an agent stopped (SIGSTOP) past its lease (its job runs elsewhere, and what
//! it says when it wakes is refused).

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod common;

use common::jobs::{Cluster, assert_numbered, lines_of};

/// A job writing `n` numbered lines tagged `tag`, `pause` seconds apart.
fn writer(tag: usize, n: usize, pause: &str) -> Value {
    json!({
        "command": ["sh", "-c", format!("for i in $(seq 1 {n}); do echo \"$T $i\"; sleep {pause}; done")],
        "env": {"T": format!("job{tag}")},
        "max_attempts": 3,
        "backoff_ms": 50,
    })
}

/// Wait until `n` jobs succeeded (or `secs` pass).
fn wait_succeeded(c: &Cluster, n: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let done = c.count("succeeded");
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {n} succeeded after {secs} s (failed {}, queued {}, running {})",
            c.count("failed"),
            c.count("queued"),
            c.count("running")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The job's last attempt wrote its `n` lines whole and in order, after whatever earlier
/// attempts wrote, all numbered without gap or duplicate.
fn check_output(c: &Cluster, id: &str, tag: usize, n: usize) -> Value {
    let job = c.job(id);
    assert_eq!(job["state"], "succeeded", "{job}");
    let logs = c.logs(id);
    assert_numbered(&logs);
    let out = lines_of(&logs, "stdout");
    let want: Vec<String> = (1..=n).map(|i| format!("job{tag} {i}")).collect();
    assert!(
        out.len() >= n && out[out.len() - n..] == want[..],
        "{id}: {out:?}"
    );
    let attempts = job["attempts"].as_array().unwrap();
    let won = attempts
        .iter()
        .filter(|a| a["state"] == "succeeded")
        .count();
    assert_eq!(won, 1, "one outcome: {job}");
    if attempts.len() == 1 {
        assert_eq!(out, want, "a single attempt's output is exactly its lines");
    }
    job
}

#[test]
fn an_agent_killed_mid_run_loses_nothing() {
    let c = Cluster::start("kill-agent", 1000);
    let _a = c.agent("a", &[], 4);
    let mut b = c.agent("b", &[], 4);
    let _c3 = c.agent("c", &[], 4);
    let ids: Vec<String> = (0..200).map(|i| c.submit(&writer(i, 20, "0.01"))).collect();
    // Kill b while it runs jobs.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.count("succeeded") < 40 {
        assert!(Instant::now() < deadline, "the first jobs did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    b.kill9();
    wait_succeeded(&c, 200, 120);
    let mut killed = 0;
    for (i, id) in ids.iter().enumerate() {
        let job = check_output(&c, id, i, 20);
        killed += job["attempts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| {
                a["agent"] == "b"
                    && a["reason"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("agent lost"))
            })
            .count();
    }
    assert!(killed > 0, "b's attempts at the kill are recorded as lost");
    let agents = c.agents();
    let b = agents.iter().find(|a| a["id"] == "b").unwrap();
    assert_eq!(b["connected"], false, "{agents:?}");
}

#[test]
fn the_control_plane_killed_mid_run_loses_nothing_and_records_each_outcome_once() {
    let mut c = Cluster::start("kill-plane", 1500);
    let _a = c.agent("a", &[], 4);
    let _b = c.agent("b", &[], 4);
    let ids: Vec<String> = (0..100).map(|i| c.submit(&writer(i, 20, "0.01"))).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.count("succeeded") < 20 {
        assert!(Instant::now() < deadline, "the first jobs did not finish");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.kill_plane();
    std::thread::sleep(Duration::from_millis(300));
    c.restart_plane();
    wait_succeeded(&c, 100, 120);
    let mut rerun = 0;
    for (i, id) in ids.iter().enumerate() {
        let job = check_output(&c, id, i, 20);
        rerun += usize::from(job["attempts"].as_array().unwrap().len() > 1);
    }
    eprintln!("{rerun} of 100 jobs ran more than once across the restart");
    // The agents came back by themselves.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !c.agents().iter().all(|a| a["connected"] == true) || c.agents().len() != 2 {
        assert!(
            Instant::now() < deadline,
            "agents not back: {:?}",
            c.agents()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_agent_stopped_past_its_lease_is_replaced_and_its_late_words_refused() {
    let c = Cluster::start("stop-agent", 1000);
    let a = c.agent("a", &[], 1);
    let id = c.submit(&json!({
        "command": ["sh", "-c", "echo start; sleep 2; echo end"],
        "max_attempts": 2,
        "backoff_ms": 10,
    }));
    let job = c.wait_state(&id, "running", 30);
    assert_eq!(job["attempts"][0]["agent"], "a");
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.logs(&id).is_empty() {
        assert!(Instant::now() < deadline, "no output from a");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _b = c.agent("b", &[], 1);
    a.signal("STOP");
    let job = c.wait_state(&id, "succeeded", 30);
    // a wakes: its job had ended meanwhile, and what it reports now is refused.
    a.signal("CONT");
    std::thread::sleep(Duration::from_millis(3000));
    let after = c.job(&id);
    assert_eq!(after["state"], "succeeded");
    assert_eq!(
        after["attempts"], job["attempts"],
        "nothing from a was recorded after"
    );
    let attempts = after["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2, "{after}");
    assert_eq!(attempts[0]["agent"], "a");
    assert_eq!(attempts[0]["reason"], "agent lost");
    assert_eq!(attempts[1]["agent"], "b");
    assert_eq!(attempts[1]["state"], "succeeded");
    let logs = c.logs(&id);
    assert_numbered(&logs);
    assert_eq!(
        lines_of(&logs, "stdout"),
        ["start", "start", "end"],
        "a's late lines refused"
    );
    let agents = c.agents();
    assert!(
        agents
            .iter()
            .any(|x| x["id"] == "a" && x["connected"] == true),
        "{agents:?}"
    );
}

#[test]
fn output_written_while_the_control_plane_is_away_waits_on_disk_and_arrives_whole() {
    let mut c = Cluster::start("away", 5000);
    let url = format!("tcp://127.0.0.1:{}", c.port);
    let _a = c.agent_with("a", &[], 1, &url, &["--log-memory-lines", "500"]);
    let id = c.submit(&json!({"command": ["sh", "-c", "sleep 0.5; seq 1 30000"]}));
    c.wait_state(&id, "running", 30);
    c.kill_plane();
    // The job writes everything while nobody listens: most of it spills to the agent's disk.
    let spool = c.dir.join("work/a/.valkyrie-spool");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_dir(&spool).is_ok_and(|mut d| d.next().is_some()) {
        assert!(Instant::now() < deadline, "nothing spilled");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(1000));
    c.restart_plane();
    c.wait_state(&id, "succeeded", 60);
    let logs = c.logs(&id);
    assert_numbered(&logs);
    let want: Vec<String> = (1..=30000).map(|i| i.to_string()).collect();
    assert_eq!(lines_of(&logs, "stdout"), want);
    assert!(
        std::fs::read_dir(&spool).unwrap().next().is_none(),
        "the spill file goes once drained"
    );
}
