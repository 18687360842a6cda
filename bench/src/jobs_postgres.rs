//! The `jobs` scenario on PostgreSQL (`--scenario jobs --store postgres`): control planes in
//! this process sharing one database on a PostgreSQL the bench starts (Debian's server
//! binaries), each with its own agent(s), beside the embedded store in the same round and
//! the database's own floor.
//!
//! - `jobs_per_sec`: built-in no-op jobs queued in the database, then the agents connect;
//!   from their start to the last outcome, with one control plane (two agents) and with two
//!   (one agent each: the nodes claim the queue between them).
//! - `assignment_p99`: jobs submitted through `POST /api/v1/jobs` spread over the nodes, at a
//!   tenth of the one-node PostgreSQL no-op rate; submission to the agent's JOB_ACCEPT.
//! - The floor (`postgres`): a no-op job's assignment and end, committed through the
//!   group-commit thread from one client, no agents (as the embedded store's floor).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_jobs::pg_temp::Pg;
use valkyrie_jobs::{Committer, ControlPlane, JobSpec, JobState, PgStore};
use valkyrie_runtime::Node;

use crate::jobs::{assignment_on, dispatch_rate_on, store_jobs_floor};
use crate::jobs_plane::{
    Backend, LEASE, Plane, agents_at, fresh_dir, start_plane, submit_all, wait_for_all,
};
use crate::report::{Report, median, progress};

/// Store connections per control plane (`valkyrie control-plane --store-connections`'s
/// default).
const CONNECTIONS: usize = 2;

/// `nodes` control planes on one new database holding `n` jobs of `spec`, each hearing the
/// others' notices.
fn planes(pg: &Pg, nodes: usize, spec: &JobSpec, n: usize) -> Vec<Plane> {
    static DB: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let k = DB.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let url = pg.database(&format!("bench_nodes_{k}"));
    {
        let store = Committer::spawn(PgStore::connect(&url).expect("store"), 65_536);
        submit_all(&store, spec, n, 0);
    }
    (0..nodes)
        .map(|i| {
            let node_id = format!("cp-{i}");
            let stores = (0..CONNECTIONS)
                .map(|_| {
                    PgStore::connect(&url)
                        .expect("store")
                        .with_holder(&node_id, LEASE)
                })
                .collect();
            let mut p = start_plane(
                fresh_dir(&format!("pg-{i}")),
                Arc::new(Committer::spawn_pool(stores, 65_536)),
                &node_id,
            );
            let cp = p.cp.clone();
            p.listener =
                Some(valkyrie_jobs::notice::listen(&url, move |n| cp.notice(n)).expect("listener"));
            p
        })
        .collect()
}

/// Two agents of `slots` slots spread over `planes` (both on one, or one each).
fn spread_agents(planes: &[Plane], slots: u32) -> Vec<Node> {
    (0..2)
        .flat_map(|i| agents_at(&planes[i % planes.len()], i..i + 1, slots, true))
        .collect()
}

/// No-op jobs per second through `nodes` control planes on one database.
fn rate(pg: &Pg, nodes: usize, n: usize) -> f64 {
    let noop = JobSpec {
        builtin: Some("noop".into()),
        max_attempts: 1,
        ..JobSpec::default()
    };
    let ps = planes(pg, nodes, &noop, n);
    let t = Instant::now();
    let _agents = spread_agents(&ps, 512);
    let cps: Vec<&ControlPlane> = ps.iter().map(|p| &p.cp).collect();
    assert!(
        wait_for_all(
            &cps,
            JobState::Succeeded,
            n as u64,
            Duration::from_secs(300)
        ),
        "{} of {n} jobs done",
        cps.iter()
            .map(|c| c.count(JobState::Succeeded))
            .sum::<u64>()
    );
    n as f64 / t.elapsed().as_secs_f64()
}

/// Assignment p99 (µs) and the rate reached, through `nodes` control planes.
fn assignment(pg: &Pg, nodes: usize, rate: f64, secs: f64) -> (f64, f64) {
    let ps = planes(pg, nodes, &JobSpec::default(), 0);
    let _agents = spread_agents(&ps, 256);
    std::thread::sleep(Duration::from_millis(300));
    let refs: Vec<&Plane> = ps.iter().collect();
    assignment_on(&refs, rate, secs)
}

pub(crate) fn scenario(report: &mut Report, rounds: usize, scale: f64) {
    let Some(pg) = Pg::start() else {
        println!(
            "\njobs --store postgres: SKIPPED (no PostgreSQL server binaries in /usr/lib/postgresql/*/bin)"
        );
        return;
    };
    let n = (5_000.0 * scale) as usize;
    println!(
        "\njobs --store postgres: control planes in this process on one PostgreSQL database (a server of the bench's own on loopback), beside the embedded store; {n} no-op jobs, x {rounds} rounds, medians"
    );
    let noop = JobSpec {
        builtin: Some("noop".into()),
        max_attempts: 1,
        ..JobSpec::default()
    };
    let bar = progress(rounds as u64, "jobs --store postgres");
    let mut m: [Vec<f64>; 10] = Default::default();
    for _ in 0..rounds {
        let one = rate(&pg, 1, n);
        m[0].push(one);
        m[1].push(rate(&pg, 2, n));
        m[2].push(store_jobs_floor(Backend::Postgres(&pg), n));
        m[3].push(dispatch_rate_on(Backend::Sqlite, &noop, n, 512, true));
        let at = one / 10.0;
        let secs = 3.0 * scale.max(1.0);
        let (p1, r1) = assignment(&pg, 1, at, secs);
        let (p2, r2) = assignment(&pg, 2, at, secs);
        m[4].push(p1);
        m[5].push(r1);
        m[6].push(p2);
        m[7].push(r2);
        bar.inc(1);
    }
    bar.finish_and_clear();
    let med: Vec<f64> = m.iter().map(|v| median(v.clone())).collect();
    let p = |store: &str, nodes: usize| json!({"store": store, "nodes": nodes, "agents": 2, "job": "noop"});
    report.add(
        "jobs",
        "valkyrie",
        "jobs_per_sec",
        "jobs/s",
        med[0],
        p("postgres", 1),
    );
    report.add(
        "jobs",
        "valkyrie",
        "jobs_per_sec",
        "jobs/s",
        med[1],
        p("postgres", 2),
    );
    report.add(
        "jobs",
        "postgres",
        "jobs_per_sec",
        "jobs/s",
        med[2],
        p("postgres", 0),
    );
    report.add(
        "jobs",
        "valkyrie",
        "jobs_per_sec",
        "jobs/s",
        med[3],
        p("sqlite", 1),
    );
    for (nodes, p99, reached) in [(1, med[4], med[5]), (2, med[6], med[7])] {
        let mut ap = p("postgres", nodes);
        ap["rate"] = json!(reached.round());
        report.add("jobs", "valkyrie", "assignment_p99", "us", p99, ap);
    }
    println!(
        "  no-op jobs/s, 1 node   {:>8.0}   (database floor {:>8.0}: {:.2} of it)",
        med[0],
        med[2],
        med[0] / med[2]
    );
    println!(
        "  no-op jobs/s, 2 nodes  {:>8.0}   ({:.2} of one node)",
        med[1],
        med[1] / med[0]
    );
    println!(
        "  no-op jobs/s, embedded {:>8.0}   (SQLite, one node, same round)",
        med[3]
    );
    println!(
        "  assignment p99         {:>8.0} us with 1 node, {:.0} us with 2, at {:.0} jobs/s",
        med[4], med[6], med[5]
    );
}
