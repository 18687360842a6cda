//! The Kubernetes manifests in `deploy/k8s/` (a node; control planes on a shared PostgreSQL;
//! agents): valid against the Kubernetes schemas (offline, `kubernetes-validate --strict`,
//! which `.ci/run` installs; without it the test says so and skips), and what they ask of the
//! binary holds — it takes their args, the probes' paths answer on the port they name, and
//! the agent run with its args joins the control plane run with its own (against a
//! PostgreSQL the test starts) and runs a job.

use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/k8s/node.yaml");

/// `deploy/k8s/NAME`'s path.
fn manifest(name: &str) -> String {
    format!("{}/../deploy/k8s/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The container args of a manifest (`args: [...]` on one line), with `swap` applied to each.
fn args_of(text: &str, swap: &[(&str, &str)]) -> Vec<String> {
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("args:"))
        .expect("the container's args");
    // A flow sequence of double-quoted strings: JSON.
    let list = &line[line.find('[').unwrap()..=line.rfind(']').unwrap()];
    let args: Vec<String> = serde_json::from_str(list).expect("args as a JSON list");
    args.into_iter()
        .map(|mut a| {
            for (from, to) in swap {
                a = a.replace(from, to);
            }
            a
        })
        .collect()
}

fn http_code(port: u16, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn validate(path: &str) -> Option<bool> {
    let out = Command::new("kubernetes-validate")
        .args(["--strict", path])
        .output();
    match out {
        Ok(o) => {
            eprintln!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            Some(o.status.success())
        }
        Err(_) => {
            eprintln!(
                "SKIPPED: kubernetes-validate is not installed (pip install kubernetes-validate)"
            );
            None
        }
    }
}

#[test]
fn the_manifest_fits_the_kubernetes_schemas_and_a_broken_one_does_not() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| format!("{d}/../deploy/k8s/node.yaml"))
        .unwrap_or_else(|_| MANIFEST.to_owned());
    let Some(ok) = validate(&manifest) else {
        return;
    };
    assert!(ok, "deploy/k8s/node.yaml does not validate");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let broken = std::env::temp_dir().join(format!("valkyrie-k8s-{}.yaml", std::process::id()));
    std::fs::write(&broken, text.replace("livenessProbe", "livenesProbe")).unwrap();
    let bad = validate(broken.to_str().unwrap());
    let _ = std::fs::remove_file(&broken);
    assert_eq!(bad, Some(false), "a misspelt field must fail validation");
}

#[test]
fn the_node_runs_with_the_manifests_args_and_answers_its_probes() {
    let manifest = std::env::var("CARGO_MANIFEST_DIR")
        .map(|d| format!("{d}/../deploy/k8s/node.yaml"))
        .unwrap_or_else(|_| MANIFEST.to_owned());
    let text = std::fs::read_to_string(manifest).unwrap();
    let port = free_port();
    // The pod's address, here a free loopback port.
    let args = args_of(
        &text,
        &[("tcp://0.0.0.0:7420", &format!("tcp://127.0.0.1:{port}"))],
    );
    assert_eq!(args[0], "node");
    for path in ["/healthz", "/readyz"] {
        assert!(text.contains(&format!("path: {path}")), "probe {path}");
    }
    let mut node = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the node did not listen"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_code(port, path), "200", "{path}");
    }
    let _ = node.kill();
    let _ = node.wait();
}

#[test]
fn the_control_plane_and_agent_manifests_fit_the_schemas() {
    for name in ["control-plane.yaml", "agent.yaml"] {
        let Some(ok) = validate(&manifest(name)) else {
            return;
        };
        assert!(ok, "deploy/k8s/{name} does not validate");
    }
}

#[test]
fn control_planes_and_agents_run_with_their_manifests_args() {
    let Some(pg) = valkyrie_jobs::pg_temp::Pg::start() else {
        eprintln!("SKIPPED: no PostgreSQL server binaries in /usr/lib/postgresql/*/bin");
        return;
    };
    let url = pg.database("k8s");
    let dir = std::env::temp_dir().join(format!("valkyrie-k8s-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let (listen, data) = (
        format!("tcp://127.0.0.1:{port}"),
        dir.join("data").display().to_string(),
    );
    let cp_text = std::fs::read_to_string(manifest("control-plane.yaml")).unwrap();
    for path in ["/healthz", "/readyz"] {
        assert!(cp_text.contains(&format!("path: {path}")), "probe {path}");
    }
    let cp_args = args_of(
        &cp_text,
        &[
            ("tcp://0.0.0.0:7420", &listen),
            ("/var/lib/valkyrie", &data),
            ("$(VALKYRIE_STORE)", &url),
            ("$(POD_NAME)", "valkyrie-control-plane-0"),
        ],
    );
    assert_eq!(cp_args[0], "control-plane");
    let mut cp = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(&cp_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("control-plane.log")).unwrap())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while http_code(port, "/readyz") != "200" {
        assert!(t.elapsed() < Duration::from_secs(15), "not ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http_code(port, "/healthz"), "200");
    let agent_text = std::fs::read_to_string(manifest("agent.yaml")).unwrap();
    let work = dir.join("work").display().to_string();
    let agent_args = args_of(
        &agent_text,
        &[
            ("tcp://valkyrie-control-plane:7420", &listen),
            ("/var/lib/valkyrie-agent", &work),
            ("$(NODE_NAME)", "worker-1"),
        ],
    );
    assert_eq!(agent_args[0], "agent");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_valkyrie"))
        .args(&agent_args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let job = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-H",
            "content-type: application/json",
        ])
        .args(["-d", r#"{"command": ["echo", "from k8s"]}"#])
        .arg(format!("http://127.0.0.1:{port}/api/v1/jobs"))
        .output()
        .unwrap();
    let job: serde_json::Value = serde_json::from_slice(&job.stdout).unwrap();
    let id = job["job_id"].as_str().unwrap().to_owned();
    let t = Instant::now();
    loop {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{port}/api/v1/jobs/{id}"))
            .output()
            .unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if j["state"] == "succeeded" {
            assert_eq!(j["attempts"][0]["agent"], "worker-1");
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the job did not run: {j} (logs in {})",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for p in [&mut agent, &mut cp] {
        let _ = p.kill();
        let _ = p.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
