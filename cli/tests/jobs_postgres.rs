//! `valkyrie control-plane --store postgres://...`: the control plane on a real PostgreSQL
//! started by the test — jobs dispatched to an agent and run, the control plane killed with
//! SIGKILL and started again on the same database, nothing lost. Skipped, saying so, where
//! PostgreSQL's server binaries are not installed (`.ci/run` installs them).

use serde_json::json;

mod common;

use common::jobs::{Cluster, assert_numbered, lines_of};

#[test]
fn a_control_plane_on_postgres_runs_jobs_and_survives_kill_9() {
    let Some(pg) = common::jobs::postgres() else {
        return;
    };
    let url = pg.database("plane");
    let mut c = Cluster::start_with("pg-plane", 2000, |_| vec!["--store".into(), url.clone()]);
    let _a = c.agent("a", &[], 2);
    let ids: Vec<String> = (0..10)
        .map(|i| {
            c.submit(
                &json!({"command": ["sh", "-c", format!("echo job {i}; echo done")],
                             "idempotency_key": format!("k{i}")}),
            )
        })
        .collect();
    for id in &ids {
        c.wait_state(id, "succeeded", 30);
    }
    c.kill_plane();
    c.restart_plane();
    for (i, id) in ids.iter().enumerate() {
        let job = c.job(id);
        assert_eq!(job["state"], "succeeded");
        let logs = c.logs(id);
        assert_numbered(&logs);
        assert_eq!(
            lines_of(&logs, "stdout"),
            [format!("job {i}"), "done".into()]
        );
    }
    // The same key after the restart: the first job.
    let again = c.submit(&json!({"command": ["true"], "idempotency_key": "k3"}));
    assert_eq!(again, ids[3]);
    let more = c.submit(&json!({"command": ["echo", "after"]}));
    c.wait_state(&more, "succeeded", 30);
}

#[test]
fn a_job_on_one_control_plane_is_paused_resumed_and_cancelled_through_another() {
    let Some(pg) = common::jobs::postgres() else {
        return;
    };
    let url = pg.database("signals");
    let (c0, c1) = (
        Cluster::on_postgres("signals-0", 2000, &url, "cp-0"),
        Cluster::on_postgres("signals-1", 2000, &url, "cp-1"),
    );
    // The only agent is on cp-0; the API calls go to cp-1, which tells cp-0 (NOTIFY).
    let _a = c0.agent("a", &[], 2);
    let long =
        json!({"command": ["sh", "-c", "for i in $(seq 1 300); do echo $i; sleep 0.1; done"]});
    let (doomed, paused) = (c1.submit(&long), c1.submit(&long));
    c1.wait_state(&doomed, "running", 30);
    c1.wait_state(&paused, "running", 30);
    assert_eq!(c1.post(&paused, "pause").0, 200);
    c1.wait_state(&paused, "paused", 10);
    let lines = c1.logs(&paused).len();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert_eq!(c1.logs(&paused).len(), lines, "no output while paused");
    assert_eq!(c1.post(&paused, "resume").0, 200);
    c1.wait_state(&paused, "running", 10);
    let (code, _) = c1.post(&doomed, "cancel");
    assert!(code == 200 || code == 202, "{code}");
    let j = c1.wait_state(&doomed, "cancelled", 10);
    assert_eq!(j["attempts"][0]["agent"], "a");
    let more = c1.logs(&paused).len();
    std::thread::sleep(std::time::Duration::from_millis(600));
    assert!(
        c1.logs(&paused).len() > more,
        "output again after the resume"
    );
}

#[test]
fn two_control_planes_cannot_share_a_node_id() {
    let Some(pg) = common::jobs::postgres() else {
        return;
    };
    let url = pg.database("same_name");
    let first = Cluster::on_postgres("same-name-0", 2000, &url, "cp-x");
    let second = std::process::Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(["control-plane", "--listen", "tcp://127.0.0.1:0", "--data"])
        .arg(first.dir.join("second"))
        .args(["--store", &url, "--node-id", "cp-x"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another control plane runs as node \"cp-x\""),
        "{err}"
    );
    // The first one is unharmed.
    let id = first.submit(&json!({"command": ["true"]}));
    let _a = first.agent("a", &[], 1);
    first.wait_state(&id, "succeeded", 30);
}
