//! Several control planes on one PostgreSQL (started by the test): three nodes, six agents
//! spread over them (each lists all three, its own first), 1,000 jobs submitted through all
//! three at once. Mid-run one node is killed with SIGKILL — its agents fail over to the
//! others, which adopt their attempts (or, once the dead node's leases run out, reap them and
//! run the jobs again) — and then the database itself is restarted; the nodes reconnect and
//! carry on. In the final record every job succeeded exactly once, with its output. Skipped,
//! saying so, where PostgreSQL's server binaries are not installed (`.ci/run` installs them).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_jobs::{JobState, PgStore, Store};

mod common;

use common::jobs::{Cluster, Proc};

const JOBS: usize = 1000;

/// Jobs the database says succeeded.
fn succeeded(store: &mut PgStore) -> usize {
    let mut n = 0;
    let mut after: Option<String> = None;
    loop {
        let Ok(page) = store.jobs(Some(JobState::Succeeded), 1000, after.as_deref()) else {
            return n;
        };
        n += page.len();
        match page.last() {
            Some(j) if page.len() == 1000 => after = Some(j.job_id.clone()),
            _ => return n,
        }
    }
}

fn wait_for(store: &mut PgStore, at_least: usize, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let n = succeeded(store);
        if n >= at_least {
            return;
        }
        if Instant::now() >= deadline {
            for state in [JobState::Queued, JobState::Assigned, JobState::Running] {
                for j in store.jobs(Some(state), 20, None).unwrap_or_default() {
                    eprintln!("not done: {j:?}");
                }
            }
            panic!("{n} of {at_least} jobs succeeded after {secs} s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Submit job `n` of each of `ns` through the control plane on `port`, on one kept-alive
/// HTTP connection (curl per job would take longer than the jobs).
fn submit_all(port: u16, ns: impl Iterator<Item = usize>) {
    let stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_nodelay(true).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    for n in ns {
        let body = json!({
            "command": ["sh", "-c", format!("sleep 0.2; echo done {n}")],
            "max_attempts": 5,
            "idempotency_key": format!("k{n}"),
        })
        .to_string();
        // One write: a request in pieces waits on Nagle and the server's delayed ACK.
        let request = format!(
            "POST /api/v1/jobs HTTP/1.1\r\nhost: cp\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        w.write_all(request.as_bytes()).unwrap();
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().unwrap();
            }
        }
        let mut answer = vec![0; length];
        reader.read_exact(&mut answer).unwrap();
        assert!(
            status.contains(" 201 ") || status.contains(" 200 "),
            "{status} {}",
            String::from_utf8_lossy(&answer)
        );
    }
}

#[test]
fn three_control_planes_on_one_database_lose_nothing_to_a_kill_or_a_database_restart() {
    let Some(mut pg) = common::jobs::postgres() else {
        return;
    };
    let url = pg.database("scale");
    let planes: Vec<Cluster> = (0..3)
        .map(|i| Cluster::on_postgres(&format!("scale-{i}"), 3000, &url, &format!("cp-{i}")))
        .collect();
    let ports: Vec<u16> = planes.iter().map(|p| p.port).collect();
    let agents: Vec<Proc> = (0..6)
        .map(|k| {
            let urls: Vec<String> = (0..3)
                .map(|i| format!("tcp://127.0.0.1:{}", ports[(k + i) % 3]))
                .collect();
            planes[0].agent_with(
                &format!("agent-{k}"),
                &[],
                4,
                &urls.join(","),
                &["--no-cgroups"],
            )
        })
        .collect();
    let mut store = PgStore::connect(&url).unwrap();

    // 1,000 jobs, a third through each node, at once.
    let started = Instant::now();
    std::thread::scope(|s| {
        for (i, port) in ports.iter().enumerate() {
            s.spawn(move || submit_all(*port, (i..JOBS).step_by(3)));
        }
    });
    eprintln!("1,000 jobs submitted in {:?}", started.elapsed());

    // A quarter done: cp-1 dies.
    wait_for(&mut store, JOBS / 4, 120);
    let mut planes = planes;
    planes[1].kill_plane();
    eprintln!("cp-1 killed at {:?}", started.elapsed());

    // Past half: the database restarts under the two left.
    wait_for(&mut store, JOBS * 11 / 20, 120);
    assert!(pg.restart(), "PostgreSQL starts again");
    let mut store = PgStore::connect(&url).unwrap();
    eprintln!("database restarted at {:?}", started.elapsed());

    wait_for(&mut store, JOBS, 180);
    eprintln!("all succeeded at {:?}", started.elapsed());

    // The final record: each job succeeded exactly once, with its output.
    let mut jobs = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store.jobs(None, 1000, after.as_deref()).unwrap();
        let full = page.len() == 1000;
        after = page.last().map(|j| j.job_id.clone());
        jobs.extend(page);
        if !full {
            break;
        }
    }
    assert_eq!(jobs.len(), JOBS, "no job made twice");
    let mut rerun = 0;
    let mut keys = BTreeSet::new();
    for j in &jobs {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        let wins = j
            .attempts
            .iter()
            .filter(|a| a.state == JobState::Succeeded)
            .count();
        assert_eq!(wins, 1, "one succeeded attempt: {j:?}");
        if j.attempts.len() > 1 {
            rerun += 1;
        }
        let key = j.spec.idempotency_key.clone().unwrap();
        let n = &key[1..];
        let logs = store.logs(&j.job_id, 1, 1 << 20).unwrap().ndjson;
        assert!(
            logs.contains(&format!("\"done {n}\"")),
            "{}'s output: {logs}",
            j.job_id
        );
        keys.insert(key);
    }
    assert_eq!(keys.len(), JOBS);
    let adopted: usize = [0, 2]
        .iter()
        .map(|&i| {
            std::fs::read_to_string(planes[i].dir.join("control-plane.log"))
                .unwrap_or_default()
                .matches("adopted an attempt")
                .count()
        })
        .sum();
    eprintln!("{rerun} jobs ran more than one attempt; {adopted} attempts adopted after the kill");

    // Every agent is served by the two nodes left.
    let mut connected = BTreeSet::new();
    for i in [0, 2] {
        for a in planes[i].agents() {
            if a["connected"] == true {
                connected.insert(a["id"].as_str().unwrap().to_owned());
            }
        }
    }
    assert_eq!(
        connected.len(),
        6,
        "agents on the nodes left: {connected:?}"
    );
    drop(agents);
}
