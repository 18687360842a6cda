//! `valkyrie control-plane --store postgres://...`: the control plane on a real PostgreSQL
//! started by the test — jobs dispatched to an agent and run, the control plane killed with
//! SIGKILL and started again on the same database, nothing lost. Skipped, saying so, where
//! PostgreSQL's server binaries are not installed (`.ci/run` installs them).

use serde_json::json;

mod common;

use common::jobs::{Cluster, assert_numbered, lines_of};

#[test]
fn a_control_plane_on_postgres_runs_jobs_and_survives_kill_9() {
    let Some(pg) = valkyrie_jobs::pg_temp::Pg::start() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
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
