//! Control planes, their database and agents on separate hosts — network namespaces made by
//! the test, joined by a bridge, with a user-space relay adding 10 ms each way between the
//! control planes and PostgreSQL and 1 ms between agents and control planes, and 2 % of the
//! agents' packets dropped (iptables `statistic`). One control
//! plane is then partitioned from the database (iptables in its namespace): it stops
//! dispatching, leaves /readyz, sends its agents to the other node, and its leases run out
//! and move — its attempts adopted there or reaped and run again — while every job succeeds
//! exactly once. Mended, it is ready again and runs jobs. Skipped, saying so, where
//! namespaces cannot be made or PostgreSQL is not installed (`.ci/run` installs both).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use valkyrie_jobs::{JobState, PgStore, Store};

mod common;

use common::curl_at as curl;
use common::jobs::{Proc, submit_with};
use common::netns::Net;
use common::relay::Relay;
use common::wait_secs as wait;

const LEASE_MS: u64 = 1500;

fn spawn(mut cmd: std::process::Command, log: &Path) -> Proc {
    let out = std::fs::File::create(log).unwrap();
    let child: Child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::from(out))
        .spawn()
        .unwrap();
    Proc(child)
}

fn submit(addr: &str, n: usize) -> String {
    let spec = json!({
        "command": ["sh", "-c", format!("sleep 2; echo done {n}")],
        "max_attempts": 5,
        "idempotency_key": format!("k{n}"),
    });
    submit_with(|args, path| curl(addr, args, path), &spec)
}

fn connected_agents(addr: &str) -> usize {
    let (code, j) = curl(addr, &[], "/api/v1/agents");
    if code != 200 {
        return 0;
    }
    j["agents"]
        .as_array()
        .map_or(0, |a| a.iter().filter(|a| a["connected"] == true).count())
}

#[test]
fn a_control_plane_cut_off_from_its_database_hands_its_jobs_and_agents_over() {
    let Some(net) = Net::create(&["db", "a", "b", "ag"]) else {
        return;
    };
    let Some(pg) = valkyrie_jobs::pg_temp::Pg::start_in(Some(&net.ns("db")), &net.addr("db"))
    else {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    let dir = std::env::temp_dir().join(format!("valkyrie-partition-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let direct = pg.database("part");
    // The control planes reach the database 10 ms away (each way), through a relay here.
    let db_addr: SocketAddr = format!("{}:{}", net.addr("db"), pg.port).parse().unwrap();
    let db_relay = Relay::start(&net.here(), db_addr, Duration::from_millis(10));
    let via_relay = format!(
        "postgres://valkyrie@{}:{}/part",
        net.here(),
        db_relay.addr.port()
    );
    let port = 7420;
    let mut planes = Vec::new();
    let mut agent_urls = Vec::new();
    let mut relays = vec![db_relay];
    for host in ["a", "b"] {
        let listen = format!("{}:{port}", net.addr(host));
        let mut cmd = net.command(host, env!("CARGO_BIN_EXE_valkyrie"));
        let data: PathBuf = dir.join(format!("data-{host}"));
        cmd.args(["control-plane", "--listen"])
            .arg(format!("tcp://{listen}"))
            .arg("--data")
            .arg(&data)
            .args(["--store", &via_relay, "--node-id", &format!("cp-{host}")])
            .args(["--shards", "1", "--lease-ms", &LEASE_MS.to_string()]);
        planes.push(spawn(cmd, &dir.join(format!("cp-{host}.log"))));
        wait(&format!("cp-{host} ready"), 20, || {
            curl(&listen, &[], "/readyz").0 == 200
        });
        // Agents reach each control plane 1 ms away, through a relay here.
        let r = Relay::start(
            &net.here(),
            listen.parse().unwrap(),
            Duration::from_millis(1),
        );
        agent_urls.push(format!("tcp://{}", r.addr));
        relays.push(r);
    }
    let (a, b) = (
        format!("{}:{port}", net.addr("a")),
        format!("{}:{port}", net.addr("b")),
    );
    // Two agents list cp-a first, one cp-b.
    let agents: Vec<Proc> = (0..3)
        .map(|k| {
            let urls = if k < 2 {
                format!("{},{}", agent_urls[0], agent_urls[1])
            } else {
                format!("{},{}", agent_urls[1], agent_urls[0])
            };
            let mut cmd = net.command("ag", env!("CARGO_BIN_EXE_valkyrie"));
            cmd.args(["agent", "--connect", &urls, "--id", &format!("agent-{k}")])
                .args(["--slots", "2", "--heartbeat-ms", "100", "--grace-ms", "500"])
                .arg("--no-cgroups")
                .arg("--work")
                .arg(dir.join(format!("work-{k}")));
            spawn(cmd, &dir.join(format!("agent-{k}.log")))
        })
        .collect();
    wait("agents on both nodes", 20, || {
        connected_agents(&a) == 2 && connected_agents(&b) == 1
    });
    // 2 % of what the agents send is lost on the way, all along.
    net.loss("ag", &net.here(), 2, true);

    // Jobs through both nodes; wait until cp-a holds some on its agents.
    let mut ids: Vec<String> = (0..12)
        .map(|n| submit(if n % 2 == 0 { &a } else { &b }, n))
        .collect();
    let mut db = PgStore::connect(&direct).unwrap();
    let mut as_a = PgStore::connect(&direct)
        .unwrap()
        .with_holder("cp-a", Duration::from_millis(LEASE_MS));
    wait("cp-a to hold running jobs", 20, || {
        as_a.holds().map(|h| h.len()).unwrap_or(0) >= 2
    });
    let held_by_a = as_a.holds().unwrap();

    // Cut cp-a off from the database.
    let cut_at = Instant::now();
    net.partition("a", &net.here(), relays[0].addr.port(), true);
    wait("cp-a to leave /readyz", 15, || {
        curl(&a, &[], "/readyz").0 == 503
    });
    eprintln!("cp-a not ready {:?} after the cut", cut_at.elapsed());
    wait("cp-a's agents on cp-b", 20, || connected_agents(&b) == 3);
    eprintln!(
        "cp-b serves all three agents {:?} after the cut",
        cut_at.elapsed()
    );
    wait("cp-a's leases to move", 20, || {
        as_a.holds().map(|h| h.is_empty()).unwrap_or(false)
    });
    eprintln!("cp-a holds nothing {:?} after the cut", cut_at.elapsed());
    // Jobs submitted meanwhile run on cp-b's agents.
    ids.extend((12..16).map(|n| submit(&b, n)));
    let done = |db: &mut PgStore, ids: &[String]| {
        ids.iter().all(|id| {
            db.job(id)
                .ok()
                .flatten()
                .is_some_and(|j| j.state == JobState::Succeeded)
        })
    };
    wait("every job to succeed", 60, || done(&mut db, &ids));

    // Mended: cp-a is ready again and runs what it is given.
    net.partition("a", &net.here(), relays[0].addr.port(), false);
    // Its old session's id lock goes when the relay finds the old connection dead.
    wait("cp-a ready again", 60, || curl(&a, &[], "/readyz").0 == 200);
    eprintln!("cp-a ready again {:?} after the cut", cut_at.elapsed());
    ids.extend((16..18).map(|n| submit(&a, n)));
    wait("the last jobs to succeed", 60, || done(&mut db, &ids));

    // The final record: each job succeeded once, with its output.
    let mut adopted_or_rerun = 0;
    for (n, id) in ids.iter().enumerate() {
        let j = db.job(id).unwrap().unwrap();
        let wins = j
            .attempts
            .iter()
            .filter(|x| x.state == JobState::Succeeded)
            .count();
        assert_eq!(wins, 1, "{j:?}");
        let out = db.logs(id, 1, 1 << 20).unwrap().ndjson;
        assert!(out.contains(&format!("\"done {n}\"")), "{id}: {out}");
        if held_by_a.iter().any(|(h, _)| h == id) {
            adopted_or_rerun += 1;
            eprintln!(
                "held by cp-a at the cut: {id}, attempts {:?}",
                j.attempts
                    .iter()
                    .map(|x| (x.agent.as_str(), x.state, x.reason.as_deref()))
                    .collect::<Vec<_>>()
            );
        }
    }
    assert_eq!(adopted_or_rerun, held_by_a.len());
    let adopted = std::fs::read_to_string(dir.join("cp-b.log"))
        .unwrap_or_default()
        .matches("adopted an attempt")
        .count();
    eprintln!(
        "{} jobs held by cp-a at the cut; cp-b adopted {adopted} attempts",
        held_by_a.len()
    );
    drop(agents);
    drop(planes);
    let _ = std::fs::remove_dir_all(&dir);
}
